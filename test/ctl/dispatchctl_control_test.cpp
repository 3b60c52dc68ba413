// The real dispatchctl binary against an in-process dispatchd's Control service: nodes with live
// sessions (real grpc++ agents) and nodes written to the store, tasks, managers, network keys,
// authorization and usage errors. What dispatchctl changes is observed both through dispatchctl
// and through what agents receive.

#include <google/protobuf/util/json_util.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>

#include "control.pb.h"
#include "dispatcher.grpc.pb.h"
#include "support/certs.hpp"
#include "support/process.hpp"
#include "support/test_server.hpp"

namespace {

namespace api = docker::swarmkit::v1;
namespace cv1 = dispatchd::control::v1;
using dispatchd::test::ProcessResult;
using dispatchd::test::run_process;
using dispatchd::test::TestServer;
using namespace std::chrono_literals;

ProcessResult run_ctl(std::vector<std::string> args) {
  args.insert(args.begin(), DISPATCHCTL_PATH);
  return run_process(args, {}, 60s, {"DISPATCHCTL_", "GRPC_"});
}

using dispatchd::test::show;

std::vector<std::string> lines(const std::string& s) {
  std::vector<std::string> out;
  std::istringstream in(s);
  for (std::string l; std::getline(in, l);)
    out.push_back(l);
  return out;
}

// The whitespace-separated fields of a table line.
std::vector<std::string> fields(const std::string& line) {
  std::vector<std::string> out;
  std::istringstream in(line);
  for (std::string f; in >> f;)
    out.push_back(f);
  return out;
}

// The table row whose first column is `id` ("" if none).
std::string row(const std::string& table, const std::string& id) {
  for (const auto& l : lines(table))
    if (l.starts_with(id + " ")) return l;
  return "";
}

template <class M>
M parse_json(const std::string& s) {
  M m;
  auto st = google::protobuf::util::JsonStringToMessage(s, &m);
  EXPECT_TRUE(st.ok()) << st.ToString() << "\n" << s;
  return m;
}

// An agent with an open Session (insecure mode: metadata names it).
class Agent {
 public:
  Agent(const TestServer& server, const std::string& id, const std::string& hostname) {
    stub_ = api::Dispatcher::NewStub(
        grpc::CreateChannel(server.address(), grpc::InsecureChannelCredentials()));
    ctx_.AddMetadata("node-id", id);
    ctx_.set_deadline(std::chrono::system_clock::now() + 60s);
    api::SessionRequest req;
    req.mutable_description()->set_hostname(hostname);
    stream_ = stub_->Session(&ctx_, req);
    if (!stream_->Read(&first_)) throw std::runtime_error("no first SessionMessage for " + id);
  }
  ~Agent() {
    ctx_.TryCancel();
    stream_->Finish();
  }
  const api::SessionMessage& first() const { return first_; }
  // Reads SessionMessages until one satisfies pred; false when the stream ends first.
  template <class Pred>
  bool wait_for(Pred pred) {
    api::SessionMessage m;
    while (stream_->Read(&m))
      if (pred(m)) return true;
    return false;
  }

 private:
  std::unique_ptr<api::Dispatcher::Stub> stub_;
  grpc::ClientContext ctx_;
  std::unique_ptr<grpc::ClientReader<api::SessionMessage>> stream_;
  api::SessionMessage first_;
};

api::Node stored_node(const std::string& id, const std::string& hostname,
                      api::NodeStatus::State state,
                      api::NodeSpec::Availability avail = api::NodeSpec::ACTIVE) {
  api::Node n;
  n.set_id(id);
  n.mutable_description()->set_hostname(hostname);
  n.mutable_status()->set_state(state);
  n.mutable_spec()->set_availability(avail);
  n.mutable_spec()->mutable_annotations()->set_name(hostname);
  return n;
}

class DispatchctlControl : public ::testing::Test {
 protected:
  DispatchctlControl() {
    server_.call([&] {
      return server_.server().store().update([](dispatchd::store::WriteTx& tx) {
        return tx.create(stored_node("node-down", "gone-host", api::NodeStatus::DOWN));
      });
    });
    a_ = std::make_unique<Agent>(server_, "node-a", "host-a");
    b_ = std::make_unique<Agent>(server_, "node-b", "host-b");
  }

  ProcessResult ctl(std::vector<std::string> args) {
    args.insert(args.begin(), {"--insecure", "--addr", server_.address()});
    return run_ctl(std::move(args));
  }

  TestServer server_;
  std::unique_ptr<Agent> a_, b_;
};

TEST_F(DispatchctlControl, NodeLsTable) {
  auto r = ctl({"node", "ls"});
  ASSERT_EQ(r.exit_status, 0) << show(r);
  auto ls = lines(r.out);
  ASSERT_EQ(ls.size(), 4u) << r.out;
  EXPECT_EQ(fields(ls[0]),
            (std::vector<std::string>{"ID", "HOSTNAME", "STATUS", "AVAILABILITY", "ROLE", "ADDR",
                                      "SESSION", "LAST", "HEARTBEAT", "TASKS"}));
  // Sorted by ID, columns aligned: every column starts where its header does.
  EXPECT_TRUE(ls[1].starts_with("node-a ")) << r.out;
  EXPECT_TRUE(ls[2].starts_with("node-b ")) << r.out;
  EXPECT_TRUE(ls[3].starts_with("node-down ")) << r.out;
  for (const char* col : {"HOSTNAME", "STATUS", "AVAILABILITY", "ROLE", "TASKS"}) {
    auto at = ls[0].find(col);
    for (std::size_t i = 1; i < ls.size(); ++i) {
      ASSERT_GT(ls[i].size(), at) << r.out;
      EXPECT_NE(ls[i][at], ' ') << col << " misaligned:\n" << r.out;
      EXPECT_EQ(ls[i][at - 1], ' ') << col << " misaligned:\n" << r.out;
    }
  }
  auto a = fields(ls[1]);
  ASSERT_EQ(a.size(), 10u) << ls[1];
  EXPECT_EQ(a[1], "host-a");
  EXPECT_EQ(a[2], "Ready");
  EXPECT_EQ(a[3], "Active");
  EXPECT_EQ(a[4], "Worker");
  EXPECT_EQ(a[6], a_->first().session_id());
  EXPECT_TRUE(a[8] == "ago" && a[7].ends_with("s")) << ls[1];  // "0s ago"
  auto down = fields(ls[3]);
  EXPECT_EQ(down[1], "gone-host");
  EXPECT_EQ(down[2], "Down");
  EXPECT_EQ(down[6], "-");  // no session
}

TEST_F(DispatchctlControl, NodeLsJsonQuietAndFilters) {
  auto r = ctl({"--json", "node", "ls"});
  ASSERT_EQ(r.exit_status, 0) << show(r);
  auto resp = parse_json<cv1::ListNodesResponse>(r.out);
  ASSERT_EQ(resp.nodes_size(), 3);
  EXPECT_EQ(resp.nodes(0).id(), "node-a");
  EXPECT_EQ(resp.nodes(0).session().session_id(), a_->first().session_id());
  EXPECT_EQ(resp.nodes(2).state(), api::NodeStatus::DOWN);
  EXPECT_EQ(std::count(r.out.begin(), r.out.end(), '\n'), 1) << "one document, one line";

  r = ctl({"node", "ls", "-q"});
  ASSERT_EQ(r.exit_status, 0) << show(r);
  EXPECT_EQ(r.out, "node-a\nnode-b\nnode-down\n");

  r = ctl({"node", "ls", "--quiet", "--state=DOWN"});
  ASSERT_EQ(r.exit_status, 0) << show(r);
  EXPECT_EQ(r.out, "node-down\n");

  r = ctl({"node", "ls", "-q", "--state", "ready", "--role", "worker"});
  ASSERT_EQ(r.exit_status, 0) << show(r);
  EXPECT_EQ(r.out, "node-a\nnode-b\n");

  r = ctl({"node", "ls", "-q", "--role", "manager"});
  ASSERT_EQ(r.exit_status, 0) << show(r);
  EXPECT_EQ(r.out, "");
}

TEST_F(DispatchctlControl, DrainShowsInInspectAndReachesTheAgent) {
  auto r = ctl({"node", "drain", "node-a"});
  ASSERT_EQ(r.exit_status, 0) << show(r);
  EXPECT_EQ(r.out, "node-a\n");
  EXPECT_TRUE(a_->wait_for([](const api::SessionMessage& m) {
    return m.node().spec().availability() == api::NodeSpec::DRAIN;
  }));

  r = ctl({"node", "inspect", "node-a"});
  ASSERT_EQ(r.exit_status, 0) << show(r);
  auto details = lines(r.out);
  auto value = [&](const std::string& key) {
    for (const auto& l : details)
      if (l.starts_with(key + ":")) {
        auto v = l.substr(key.size() + 1);
        return v.substr(v.find_first_not_of(' '));
      }
    return std::string("(missing)");
  };
  EXPECT_EQ(value("ID"), "node-a") << r.out;
  EXPECT_EQ(value("Hostname"), "host-a") << r.out;
  EXPECT_EQ(value("Availability"), "Drain") << r.out;
  EXPECT_EQ(value("Status"), "Ready") << r.out;
  EXPECT_EQ(value("Session"), a_->first().session_id()) << r.out;
  EXPECT_EQ(value("  Streaming"), "yes") << r.out;

  r = ctl({"--json", "node", "inspect", "node-a"});
  ASSERT_EQ(r.exit_status, 0) << show(r);
  auto got = parse_json<cv1::GetNodeResponse>(r.out);
  EXPECT_EQ(got.summary().availability(), api::NodeSpec::DRAIN);
  EXPECT_EQ(got.node().spec().availability(), api::NodeSpec::DRAIN);

  r = ctl({"node", "pause", "node-a"});
  ASSERT_EQ(r.exit_status, 0) << show(r);
  r = ctl({"node", "ls", "-q", "--availability", "pause"});
  EXPECT_EQ(r.out, "node-a\n") << show(r);
  r = ctl({"node", "activate", "node-a"});
  ASSERT_EQ(r.exit_status, 0) << show(r);
  r = ctl({"node", "ls", "-q", "--availability", "active"});
  EXPECT_EQ(r.out, "node-a\nnode-b\nnode-down\n") << show(r);

  r = ctl({"--json", "node", "update", "node-b", "--availability=drain", "--role", "manager"});
  ASSERT_EQ(r.exit_status, 0) << show(r);
  auto updated = parse_json<cv1::UpdateNodeResponse>(r.out);
  EXPECT_EQ(updated.node().spec().availability(), api::NodeSpec::DRAIN);
  EXPECT_EQ(updated.node().spec().desired_role(), api::MANAGER);

  r = ctl({"node", "drain", "no-such-node"});
  EXPECT_EQ(r.exit_status, 1) << show(r);
  EXPECT_TRUE(r.err.starts_with("dispatchctl: NOT_FOUND: ")) << r.err;
}

TEST_F(DispatchctlControl, NodeRmNeedsForceForALiveNode) {
  auto r = ctl({"node", "rm", "node-a"});
  EXPECT_EQ(r.exit_status, 1) << show(r);
  EXPECT_TRUE(r.err.starts_with("dispatchctl: FAILED_PRECONDITION: ")) << r.err;
  EXPECT_EQ(r.out, "");

  r = ctl({"node", "rm", "node-down"});  // down: no --force needed
  ASSERT_EQ(r.exit_status, 0) << show(r);
  EXPECT_EQ(r.out, "node-down\n");

  r = ctl({"node", "rm", "--force", "node-a"});
  ASSERT_EQ(r.exit_status, 0) << show(r);
  EXPECT_EQ(r.out, "node-a\n");
  // The removed node's Session ends.
  EXPECT_FALSE(a_->wait_for([](const api::SessionMessage&) { return false; }));

  r = ctl({"node", "ls", "-q"});
  ASSERT_EQ(r.exit_status, 0) << show(r);
  EXPECT_EQ(r.out, "node-b\n");

  r = ctl({"node", "rm", "node-a"});
  EXPECT_EQ(r.exit_status, 1) << show(r);
  EXPECT_TRUE(r.err.starts_with("dispatchctl: NOT_FOUND: ")) << r.err;
}

TEST_F(DispatchctlControl, TaskCreateLsRm) {
  auto r = ctl({"task", "create", "--node", "node-a", "--id", "task-1", "--service", "svc-1"});
  ASSERT_EQ(r.exit_status, 0) << show(r);
  EXPECT_EQ(r.out, "task-1\n");

  r = ctl({"--json", "task", "create", "--node=node-b"});
  ASSERT_EQ(r.exit_status, 0) << show(r);
  auto created = parse_json<cv1::CreateTaskResponse>(r.out);
  const std::string generated = created.task().id();
  EXPECT_FALSE(generated.empty());
  EXPECT_EQ(created.task().node_id(), "node-b");
  EXPECT_EQ(created.task().desired_state(), api::RUNNING);
  EXPECT_EQ(created.task().status().state(), api::ASSIGNED);

  r = ctl({"task", "ls"});
  ASSERT_EQ(r.exit_status, 0) << show(r);
  auto ls = lines(r.out);
  ASSERT_EQ(ls.size(), 3u) << r.out;
  EXPECT_EQ(fields(ls[0]),
            (std::vector<std::string>{"ID", "NODE", "SERVICE", "DESIRED", "STATE", "MESSAGE"}));
  auto t1 = fields(row(r.out, "task-1"));
  ASSERT_GE(t1.size(), 5u) << r.out;
  EXPECT_EQ(t1[1], "node-a");
  EXPECT_EQ(t1[2], "svc-1");
  EXPECT_EQ(t1[3], "Running");
  EXPECT_EQ(t1[4], "Assigned");
  EXPECT_FALSE(row(r.out, generated).empty()) << r.out;

  r = ctl({"--json", "task", "ls", "--node", "node-a"});
  ASSERT_EQ(r.exit_status, 0) << show(r);
  auto only_a = parse_json<cv1::ListTasksResponse>(r.out);
  ASSERT_EQ(only_a.tasks_size(), 1);
  EXPECT_EQ(only_a.tasks(0).id(), "task-1");

  // node ls counts them.
  r = ctl({"--json", "node", "ls", "--state", "ready"});
  auto nodes = parse_json<cv1::ListNodesResponse>(r.out);
  ASSERT_EQ(nodes.nodes_size(), 2) << r.out;
  EXPECT_EQ(nodes.nodes(0).tasks(), 1u);

  r = ctl({"task", "rm", "task-1"});
  ASSERT_EQ(r.exit_status, 0) << show(r);
  EXPECT_EQ(r.out, "task-1\n");
  r = ctl({"task", "ls"});
  EXPECT_TRUE(row(r.out, "task-1").empty()) << r.out;
  EXPECT_FALSE(row(r.out, generated).empty()) << r.out;
  r = ctl({"task", "rm", "task-1"});
  EXPECT_EQ(r.exit_status, 1) << show(r);
  EXPECT_TRUE(r.err.starts_with("dispatchctl: NOT_FOUND: ")) << r.err;

  r = ctl(
      {"task", "create", "--node", "node-a", "--desired-state", "shutdown", "--state", "bogus"});
  EXPECT_EQ(r.exit_status, 2) << show(r);
}

TEST_F(DispatchctlControl, ManagersSetAndLs) {
  auto r = ctl({"managers", "set", "mgr-1=10.0.0.1:4242@5", "mgr-2=10.0.0.2:4242"});
  ASSERT_EQ(r.exit_status, 0) << show(r);
  EXPECT_EQ(r.out, "");
  EXPECT_TRUE(a_->wait_for([](const api::SessionMessage& m) {
    return m.managers_size() == 2 && m.managers(0).peer().node_id() == "mgr-1";
  }));

  r = ctl({"managers", "ls"});
  ASSERT_EQ(r.exit_status, 0) << show(r);
  auto ls = lines(r.out);
  ASSERT_EQ(ls.size(), 3u) << r.out;
  EXPECT_EQ(fields(ls[0]), (std::vector<std::string>{"NODE", "ADDR", "WEIGHT"}));
  EXPECT_EQ(fields(ls[1]), (std::vector<std::string>{"mgr-1", "10.0.0.1:4242", "5"}));
  EXPECT_EQ(fields(ls[2]), (std::vector<std::string>{"mgr-2", "10.0.0.2:4242", "10"}));

  r = ctl({"--json", "managers", "ls"});
  auto got = parse_json<cv1::GetManagersResponse>(r.out);
  ASSERT_EQ(got.managers_size(), 2) << show(r);
  EXPECT_EQ(got.managers(1).weight(), 10);

  r = ctl({"managers", "set", "mgr-1"});
  EXPECT_EQ(r.exit_status, 2) << show(r);
  EXPECT_NE(r.err.find("NODE_ID=ADDR"), std::string::npos) << r.err;
}

TEST_F(DispatchctlControl, KeysSetAndLs) {
  const std::string key = "AAECAwQFBgcICQoLDA0ODw==";
  auto r = ctl({"keys", "set", "networking:gossip:" + key + ":3",
                "networking:ipsec:EBESExQVFhcYGRobHB0eHw==:4"});
  ASSERT_EQ(r.exit_status, 0) << show(r);
  EXPECT_TRUE(a_->wait_for(
      [](const api::SessionMessage& m) { return m.network_bootstrap_keys_size() == 2; }));

  r = ctl({"keys", "ls"});
  ASSERT_EQ(r.exit_status, 0) << show(r);
  auto ls = lines(r.out);
  ASSERT_EQ(ls.size(), 3u) << r.out;
  EXPECT_EQ(fields(ls[0]), (std::vector<std::string>{"SUBSYSTEM", "ALGORITHM", "KEY", "LAMPORT"}));
  EXPECT_EQ(fields(row(r.out, "networking:gossip")),
            (std::vector<std::string>{"networking:gossip", "AES_128_GCM", key, "3"}));

  r = ctl({"--json", "keys", "ls"});
  auto got = parse_json<cv1::GetNetworkKeysResponse>(r.out);
  ASSERT_EQ(got.keys_size(), 2) << show(r);
  EXPECT_EQ(got.keys(0).key().size(), 16u);
}

TEST_F(DispatchctlControl, UsageErrorsExitTwo) {
  for (const std::vector<std::string>& args :
       std::vector<std::vector<std::string>>{{},
                                             {"node"},
                                             {"node", "drain"},
                                             {"node", "ls", "--state", "sleepy"},
                                             {"node", "update", "node-a"},
                                             {"task", "create"},
                                             {"keys", "set", "nonsense"},
                                             {"bogus"}}) {
    auto r = ctl(args);
    EXPECT_EQ(r.exit_status, 2) << show(r);
    EXPECT_TRUE(r.err.starts_with("dispatchctl: ")) << r.err;
    EXPECT_EQ(r.out, "");
  }
  // Nothing changed.
  auto r = ctl({"node", "ls", "-q", "--availability", "active"});
  EXPECT_EQ(r.out, "node-a\nnode-b\nnode-down\n") << show(r);
}

TEST_F(DispatchctlControl, NodeCreateAndLabels) {
  auto r = ctl({"node", "create", "node-new", "--availability", "drain", "--label", "rack=r1",
                "--label=empty="});
  ASSERT_EQ(r.exit_status, 0) << show(r);
  EXPECT_EQ(r.out, "node-new\n");
  r = ctl({"--json", "node", "inspect", "node-new"});
  ASSERT_EQ(r.exit_status, 0) << show(r);
  auto got = parse_json<cv1::GetNodeResponse>(r.out);
  EXPECT_EQ(got.node().spec().availability(), api::NodeSpec::DRAIN);
  EXPECT_EQ(got.node().spec().annotations().labels().at("rack"), "r1");
  EXPECT_EQ(got.node().spec().annotations().labels().at("empty"), "");
  EXPECT_EQ(got.node().status().state(), api::NodeStatus::UNKNOWN);

  r = ctl({"node", "create", "node-a"});
  EXPECT_EQ(r.exit_status, 1) << show(r);
  EXPECT_EQ(r.err, "dispatchctl: ALREADY_EXISTS: node node-a already exists\n");
  r = ctl({"node", "create", "node-x", "--label", "novalue"});
  EXPECT_EQ(r.exit_status, 2) << show(r);
  EXPECT_EQ(r.err.find("want KEY=VALUE") == std::string::npos, false) << r.err;

  r = ctl({"node", "update", "node-a", "--label-add", "zone=eu-1", "--label-rm", "absent"});
  ASSERT_EQ(r.exit_status, 0) << show(r);
  EXPECT_TRUE(a_->wait_for([](const api::SessionMessage& m) {
    const auto& l = m.node().spec().annotations().labels();
    return l.count("zone") == 1 && l.at("zone") == "eu-1";
  }));
  r = ctl({"node", "update", "node-a", "--label-rm", "zone"});
  ASSERT_EQ(r.exit_status, 0) << show(r);
  EXPECT_TRUE(a_->wait_for([](const api::SessionMessage& m) {
    return m.node().spec().annotations().labels().count("zone") == 0;
  }));
}

TEST_F(DispatchctlControl, TaskUpdateStopsATask) {
  auto r = ctl({"task", "create", "--node", "node-a", "--id", "task-1"});
  ASSERT_EQ(r.exit_status, 0) << show(r);
  r = ctl({"task", "update", "task-1", "--desired-state", "shutdown"});
  ASSERT_EQ(r.exit_status, 0) << show(r);
  EXPECT_EQ(r.out, "task-1\n");
  r = ctl({"--json", "task", "ls", "--node", "node-a"});
  auto tasks = parse_json<cv1::ListTasksResponse>(r.out);
  ASSERT_EQ(tasks.tasks_size(), 1) << show(r);
  EXPECT_EQ(tasks.tasks(0).desired_state(), api::SHUTDOWN);

  r = ctl({"task", "update", "task-1", "--desired-state", "running"});
  EXPECT_EQ(r.exit_status, 1) << show(r);
  EXPECT_TRUE(r.err.starts_with("dispatchctl: FAILED_PRECONDITION: ")) << r.err;
  r = ctl({"task", "update", "task-1", "--state", "failed", "--message", "host lost"});
  ASSERT_EQ(r.exit_status, 0) << show(r);
  r = ctl({"task", "ls"});
  EXPECT_NE(row(r.out, "task-1").find("host lost"), std::string::npos) << r.out;
  for (const std::vector<std::string>& args : std::vector<std::vector<std::string>>{
           {"task", "update", "task-1"},
           {"task", "update", "task-1", "--message", "m"},
           {"task", "update", "task-1", "--desired-state", "sleepy"}}) {
    r = ctl(args);
    EXPECT_EQ(r.exit_status, 2) << show(r);
  }
}

TEST_F(DispatchctlControl, RootCAFromAFileReachesEverySession) {
  const std::string dir = dispatchd::test::make_test_certs("ctl-rootca", "--nodes 0");
  const std::string ca = dispatchd::test::read_file(dir + "/ca.pem");
  auto r = ctl({"cluster", "set-root-ca", dir + "/ca.pem"});
  ASSERT_EQ(r.exit_status, 0) << show(r);
  EXPECT_EQ(r.out, "");
  for (auto* agent : {a_.get(), b_.get()}) {
    EXPECT_TRUE(agent->wait_for([&](const api::SessionMessage& m) { return m.rootca() == ca; }));
  }
  r = ctl({"cluster", "root-ca"});
  ASSERT_EQ(r.exit_status, 0) << show(r);
  EXPECT_EQ(r.out, ca);

  r = ctl({"cluster", "set-root-ca", dir + "/missing.pem"});
  EXPECT_EQ(r.exit_status, 1) << show(r);
  EXPECT_TRUE(r.err.starts_with("dispatchctl: cannot read root CA " + dir + "/missing.pem"))
      << r.err;
  r = ctl({"cluster", "set-root-ca", dir + "/server.key"});
  EXPECT_EQ(r.exit_status, 1) << show(r);
  EXPECT_EQ(r.err, "dispatchctl: INVALID_ARGUMENT: no PEM certificate in the root CA\n");
  r = ctl({"cluster", "root-ca"});
  EXPECT_EQ(r.out, ca);
}

TEST_F(DispatchctlControl, SecretsAndConfigsGiveATaskItsFiles) {
  const std::string dir = dispatchd::test::make_test_certs("ctl-objects", "--nodes 0");
  {
    std::ofstream(dir + "/pass.txt") << "hunter2";
    std::ofstream(dir + "/app.conf") << "port=80\n";
  }
  auto r = ctl({"secret", "create", "db-pass", dir + "/pass.txt", "--label", "owner=db"});
  ASSERT_EQ(r.exit_status, 0) << show(r);
  const std::string secret_id = lines(r.out).at(0);
  r = ctl({"config", "create", "app.conf", dir + "/app.conf"});
  ASSERT_EQ(r.exit_status, 0) << show(r);

  r = ctl({"secret", "ls"});
  ASSERT_EQ(r.exit_status, 0) << show(r);
  auto row_fields = fields(row(r.out, secret_id));
  ASSERT_GE(row_fields.size(), 2u) << r.out;
  EXPECT_EQ(row_fields[1], "db-pass");
  EXPECT_EQ(row_fields.back(), "owner=db");
  r = ctl({"secret", "inspect", "db-pass"});
  ASSERT_EQ(r.exit_status, 0) << show(r);
  EXPECT_NE(r.out.find("ID: " + secret_id), std::string::npos) << r.out;
  EXPECT_EQ(r.out.find("hunter2"), std::string::npos) << "a secret's data is never printed";
  r = ctl({"config", "inspect", "--data", "app.conf"});
  ASSERT_EQ(r.exit_status, 0) << show(r);
  EXPECT_EQ(r.out, "port=80\n");

  r = ctl({"task", "create", "--node", "node-a", "--id", "task-s", "--secret", "db-pass:password",
           "--config", "app.conf"});
  ASSERT_EQ(r.exit_status, 0) << show(r);
  r = ctl({"--json", "task", "ls", "--node", "node-a"});
  auto tasks = parse_json<cv1::ListTasksResponse>(r.out);
  ASSERT_EQ(tasks.tasks_size(), 1) << show(r);
  const auto& c = tasks.tasks(0).spec().container();
  ASSERT_EQ(c.secrets_size(), 1);
  EXPECT_EQ(c.secrets(0).secret_id(), secret_id);
  EXPECT_EQ(c.secrets(0).file().name(), "password");
  EXPECT_EQ(c.secrets(0).file().mode(), 0444u);
  ASSERT_EQ(c.configs_size(), 1);
  EXPECT_EQ(c.configs(0).file().name(), "app.conf");

  r = ctl({"task", "create", "--node", "node-a", "--secret", "nope"});
  EXPECT_EQ(r.exit_status, 1) << show(r);
  EXPECT_EQ(r.err, "dispatchctl: INVALID_ARGUMENT: secret nope not found\n");
  r = ctl({"secret", "rm", "db-pass"});
  EXPECT_EQ(r.exit_status, 1) << show(r);
  EXPECT_EQ(r.err,
            "dispatchctl: FAILED_PRECONDITION: secret 'db-pass' is in use by the following task: "
            "task-s\n");
  ASSERT_EQ(ctl({"task", "rm", "task-s"}).exit_status, 0);
  r = ctl({"secret", "rm", "db-pass"});
  EXPECT_EQ(r.exit_status, 0) << show(r);
  r = ctl({"config", "rm", "app.conf"});
  EXPECT_EQ(r.exit_status, 0) << show(r);
  r = ctl({"--json", "secret", "ls"});
  EXPECT_EQ(parse_json<cv1::ListSecretsResponse>(r.out).secrets_size(), 0) << show(r);
}

TEST_F(DispatchctlControl, VolumesArePublishedToANodeAndTakenAway) {
  auto r = ctl({"volume", "create", "data", "--driver", "csi.example", "--csi-id", "csi-7",
                "--label", "tier=gold"});
  ASSERT_EQ(r.exit_status, 0) << show(r);
  const std::string id = lines(r.out).at(0);
  r = ctl({"volume", "create", "nodriver"});
  EXPECT_EQ(r.exit_status, 1) << show(r);
  EXPECT_EQ(r.err, "dispatchctl: INVALID_ARGUMENT: driver must be specified\n");

  r = ctl({"task", "create", "--node", "node-a", "--id", "task-v", "--volume", "data:/srv"});
  ASSERT_EQ(r.exit_status, 0) << show(r);
  r = ctl({"task", "create", "--node", "node-a", "--volume", "nope"});
  EXPECT_EQ(r.exit_status, 1) << show(r);
  EXPECT_EQ(r.err, "dispatchctl: INVALID_ARGUMENT: volume nope not found\n");
  r = ctl({"--json", "task", "ls", "--node", "node-a"});
  auto tasks = parse_json<cv1::ListTasksResponse>(r.out);
  ASSERT_EQ(tasks.tasks_size(), 1) << show(r);
  ASSERT_EQ(tasks.tasks(0).volumes_size(), 1);
  EXPECT_EQ(tasks.tasks(0).volumes(0).id(), id);
  EXPECT_EQ(tasks.tasks(0).volumes(0).target(), "/srv");

  r = ctl({"volume", "publish", "data", "node-a", "--context", "device=/dev/xvdf"});
  ASSERT_EQ(r.exit_status, 0) << show(r);
  r = ctl({"volume", "ls"});
  ASSERT_EQ(r.exit_status, 0) << show(r);
  EXPECT_EQ(fields(lines(r.out).at(0)),
            (std::vector<std::string>{"ID", "NAME", "DRIVER", "AVAILABILITY", "PUBLISHED"}));
  EXPECT_EQ(fields(row(r.out, id)),
            (std::vector<std::string>{id, "data", "csi.example", "Active", "node-a:Published"}));
  r = ctl({"volume", "update", "data", "--availability", "drain"});
  ASSERT_EQ(r.exit_status, 0) << show(r);
  r = ctl({"volume", "inspect", id});
  ASSERT_EQ(r.exit_status, 0) << show(r);
  EXPECT_NE(r.out.find("Availability: Drain\n"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("Label tier: gold\n"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("CSI ID: csi-7\n"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("Node node-a: Published\n"), std::string::npos) << r.out;

  r = ctl({"volume", "rm", "data"});
  EXPECT_EQ(r.exit_status, 1) << show(r);
  EXPECT_EQ(r.err,
            "dispatchctl: FAILED_PRECONDITION: volume 'data' is in use by the following task: "
            "task-v\n");
  ASSERT_EQ(ctl({"task", "rm", "task-v"}).exit_status, 0);
  r = ctl({"volume", "unpublish", "data", "node-a"});
  ASSERT_EQ(r.exit_status, 0) << show(r);
  r = ctl({"--json", "volume", "inspect", "data"});
  auto v = parse_json<cv1::GetVolumeResponse>(r.out);
  ASSERT_EQ(v.volume().publish_status_size(), 1) << show(r);
  EXPECT_EQ(v.volume().publish_status(0).state(), api::VolumePublishStatus::PENDING_NODE_UNPUBLISH);
  r = ctl({"volume", "rm", "data"});
  EXPECT_EQ(r.exit_status, 1) << show(r);
  r = ctl({"volume", "rm", "--force", "data"});
  EXPECT_EQ(r.exit_status, 0) << show(r);
  r = ctl({"--json", "volume", "ls"});
  EXPECT_EQ(parse_json<cv1::ListVolumesResponse>(r.out).volumes_size(), 0) << show(r);
}

TEST(DispatchctlScale, TenThousandNodesInOneCall) {
  TestServer server;
  constexpr int kNodes = 10000;
  server.call([&] {
    return server.server().store().update([](dispatchd::store::WriteTx& tx) {
      for (int i = 0; i < kNodes; ++i) {
        char id[32], host[32];
        std::snprintf(id, sizeof id, "node-%05d", i);
        std::snprintf(host, sizeof host, "worker-%05d.example", i);
        auto st = tx.create(
            stored_node(id, host, i % 3 ? api::NodeStatus::READY : api::NodeStatus::DOWN));
        if (!st.is_ok()) return st;
      }
      return dispatchd::grpc::Status();
    });
  });
  auto time_ctl = [&](std::vector<std::string> args) {
    args.insert(args.begin(), {"--insecure", "--addr", server.address()});
    auto t0 = std::chrono::steady_clock::now();
    auto r = run_ctl(std::move(args));
    auto ms =
        std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0)
            .count();
    return std::pair(r, ms);
  };
  auto [table, table_ms] = time_ctl({"node", "ls"});
  ASSERT_EQ(table.exit_status, 0) << table.err;
  auto ls = lines(table.out);
  ASSERT_EQ(ls.size(), kNodes + 1u);
  EXPECT_TRUE(ls[1].starts_with("node-00000 ")) << ls[1];
  EXPECT_EQ(fields(ls[kNodes])[0], "node-09999");
  EXPECT_EQ(fields(ls[kNodes])[2], "Down");

  auto [json, json_ms] = time_ctl({"--json", "node", "ls"});
  ASSERT_EQ(json.exit_status, 0) << json.err;
  EXPECT_EQ(parse_json<cv1::ListNodesResponse>(json.out).nodes_size(), kNodes);

  auto [quiet, quiet_ms] = time_ctl({"node", "ls", "-q", "--state", "down"});
  ASSERT_EQ(quiet.exit_status, 0) << quiet.err;
  EXPECT_EQ(lines(quiet.out).size(), (kNodes + 2u) / 3);

  std::printf(
      "dispatchctl node ls, %d nodes (whole process): table %lld ms, --json %lld ms, "
      "-q --state down %lld ms\n",
      kNodes, static_cast<long long>(table_ms), static_cast<long long>(json_ms),
      static_cast<long long>(quiet_ms));
  ::testing::Test::RecordProperty("node_ls_10000_ms", std::to_string(table_ms));
  EXPECT_LT(table_ms, 5000);
}

TEST(DispatchctlScale, ResponsesLargerThanGrpcsDefaultLimit) {
  // gRPC clients refuse messages over 4 MiB by default; dispatchctl raises its limit so one
  // ListNodes response for a big cluster (here about 6 MB) still arrives.
  TestServer server;
  server.call([&] {
    return server.server().store().update([](dispatchd::store::WriteTx& tx) {
      for (int i = 0; i < 2000; ++i) {
        char id[32];
        std::snprintf(id, sizeof id, "node-%05d", i);
        auto st = tx.create(
            stored_node(id, std::string(id) + "." + std::string(3000, 'h'), api::NodeStatus::DOWN));
        if (!st.is_ok()) return st;
      }
      return dispatchd::grpc::Status();
    });
  });
  auto r = run_ctl({"--insecure", "--addr", server.address(), "node", "ls", "-q"});
  ASSERT_EQ(r.exit_status, 0) << r.err;
  EXPECT_EQ(lines(r.out).size(), 2000u);
}

class DispatchctlTls : public ::testing::Test {
 protected:
  static const std::string& certs() {
    static const std::string dir = [] {
      std::string d = ::testing::TempDir() + "/dispatchctl-ctl-" + std::to_string(::getpid());
      std::string cmd = std::string(DISPATCHD_SOURCE_DIR) + "/scripts/gen-certs.sh --out " + d +
                        " --nodes 1 --test-variants >/dev/null";
      if (std::system(cmd.c_str()) != 0) throw std::runtime_error("gen-certs.sh failed");
      return d;
    }();
    return dir;
  }
  static dispatchd::app::Options options() {
    auto o = TestServer::default_options();
    o.insecure = false;
    o.tls = {certs() + "/server.pem", certs() + "/server.key", certs() + "/ca.pem"};
    return o;
  }
  DispatchctlTls() : server_(options()) {}

  ProcessResult ctl_as(const std::string& cert, std::vector<std::string> args) {
    std::vector<std::string> global = {"--addr", server_.address(), "--tls-ca",
                                       certs() + "/ca.pem"};
    if (!cert.empty()) {
      global.insert(global.end(), {"--tls-cert", certs() + "/" + cert + ".pem", "--tls-key",
                                   certs() + "/" + cert + ".key"});
    }
    args.insert(args.begin(), global.begin(), global.end());
    return run_ctl(std::move(args));
  }

  TestServer server_;
};

TEST_F(DispatchctlTls, OperatorCertificateIsAllowed) {
  auto r = ctl_as("ctl", {"node", "ls"});
  EXPECT_EQ(r.exit_status, 0) << show(r);
  EXPECT_TRUE(r.out.starts_with("ID ")) << r.out;
  r = ctl_as("ctl", {"managers", "ls"});
  EXPECT_EQ(r.exit_status, 0) << show(r);
}

TEST_F(DispatchctlTls, WorkerCertificateIsPermissionDenied) {
  auto r = ctl_as("node-1", {"node", "ls"});
  EXPECT_EQ(r.exit_status, 1) << show(r);
  EXPECT_EQ(r.out, "");
  EXPECT_TRUE(r.err.starts_with("dispatchctl: PERMISSION_DENIED: ")) << r.err;

  r = ctl_as("node-1", {"managers", "set", "m=1.2.3.4:1"});
  EXPECT_EQ(r.exit_status, 1) << show(r);
  EXPECT_TRUE(r.err.starts_with("dispatchctl: PERMISSION_DENIED: ")) << r.err;

  r = ctl_as("", {"node", "ls"});  // no certificate at all
  EXPECT_EQ(r.exit_status, 1) << show(r);
  EXPECT_TRUE(r.err.starts_with("dispatchctl: PERMISSION_DENIED: ")) << r.err;
}

}  // namespace
