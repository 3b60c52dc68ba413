// SwarmKit's own worker agents (../shared/peers/realagent: SwarmKit's agent package, unmodified,
// each agent with its own certificate and mutual-TLS connection) against the real dispatchd
// binary, driven by the real dispatchctl: what a real node does, end to end.

#include <gtest/gtest.h>
#include <signal.h>
#include <stdlib.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <iostream>
#include <optional>
#include <regex>
#include <string>
#include <thread>
#include <vector>

#include "support/child_process.hpp"
#include "support/etcd_cluster.hpp"
#include "support/http_get.hpp"
#include "support/managers.hpp"
#include "support/process.hpp"

namespace {

using dispatchd::test::ChildProcess;
using dispatchd::test::EtcdCluster;
using dispatchd::test::ManagerProcess;
using namespace std::chrono_literals;

const std::string kRealagent =
    std::string(DISPATCHD_SOURCE_DIR) + "/../shared/peers/realagent/realagent";

struct TempDir {
  TempDir() {
    char tmpl[] = "/tmp/dispatchd-realagent-XXXXXX";
    path = ::mkdtemp(tmpl);
  }
  ~TempDir() { std::filesystem::remove_all(path); }
  std::string path;
};

std::size_t count(const std::string& text, const std::string& needle) {
  std::size_t n = 0;
  for (auto at = text.find(needle); at != std::string::npos; at = text.find(needle, at + 1))
    ++n;
  return n;
}

// Waits until `needle` has appeared `n` times in the child's output (bounded).
bool wait_count(ChildProcess& p, const std::string& needle, std::size_t n,
                std::chrono::milliseconds timeout) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    if (count(p.output(), needle) >= n) return true;
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    if (left <= 0ms) return false;
    // Returns at the next matching line (or after a short while): a wait, not a sleep.
    p.wait_for_line(needle, std::min<std::chrono::milliseconds>(left, 200ms));
  }
}

class RealAgentTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (::access(kRealagent.c_str(), X_OK) != 0) {
      GTEST_SKIP() << "SwarmKit's agent not found at " << kRealagent;
    }
    certs_ = dir_.path + "/certs";
    std::string cmd = std::string(DISPATCHD_SOURCE_DIR) + "/scripts/gen-certs.sh --out " + certs_ +
                      " --org myorg --nodes 2 --manager-id mgr-0 >/dev/null";
    ASSERT_EQ(std::system(cmd.c_str()), 0);
  }

  // dispatchd with mutual TLS and a state directory; `listen` 127.0.0.1:0 the first time. With
  // `admin`, its admin endpoint on a free port (admin_port_).
  std::unique_ptr<ChildProcess> start_server(const std::string& listen, bool admin = false) {
    auto p = std::make_unique<ChildProcess>(std::vector<std::string>{
        DISPATCHD_BIN, "--listen", listen,
        // (Another loopback address: the same "127.0.0.1:0" as --listen is refused.)
        admin ? "--admin-listen=127.0.0.2:0" : "--admin-listen=", "--tls-cert",
        certs_ + "/server.pem", "--tls-key", certs_ + "/server.key", "--tls-ca", certs_ + "/ca.pem",
        "--state-dir", dir_.path + "/state", "--drain-timeout", "5s"});
    auto line = p->wait_for_line("dispatchd listening on ", 30s);
    if (!line) return p;
    auto at = line->find("listening on ") + 13;
    address_ = line->substr(at, line->find(' ', at) - at);
    if (admin) {
      auto a = p->wait_for_line("admin endpoint on http://127.0.0.2:", 30s);
      if (a) admin_port_ = static_cast<unsigned short>(std::stoi(a->substr(a->rfind(':') + 1)));
    }
    return p;
  }

  // Polls /metrics until it has the line `sample` (bounded); the last body read.
  std::string metrics_with(const std::string& sample, std::chrono::milliseconds timeout) {
    auto deadline = std::chrono::steady_clock::now() + timeout;
    std::string body;
    for (;;) {
      body = dispatchd::test::http_get("127.0.0.2", admin_port_, "/metrics").body;
      if (body.find("\n" + sample + "\n") != std::string::npos) return body;
      if (std::chrono::steady_clock::now() >= deadline) return body;
      // Each poll is a whole HTTP request; no tighter loop is needed.
      std::this_thread::sleep_for(100ms);
    }
  }

  dispatchd::test::ProcessResult ctl(std::vector<std::string> args) {
    std::vector<std::string> argv = {DISPATCHCTL_BIN,     "--addr",           address_,
                                     "--tls-ca",          certs_ + "/ca.pem", "--tls-cert",
                                     certs_ + "/ctl.pem", "--tls-key",        certs_ + "/ctl.key"};
    argv.insert(argv.end(), args.begin(), args.end());
    return dispatchd::test::run_process(argv, {}, 30s, {"DISPATCHCTL_"});
  }

  // The state the server holds for `task_id` ("" if it is not listed), from `task ls --json`.
  std::string task_state(const std::string& task_id) {
    auto r = ctl({"--json", "task", "ls"});
    if (r.exit_status != 0) return "";
    std::smatch m;
    std::regex re("\"id\":\\s*\"" + task_id + "\"[^]*?\"state\":\\s*\"([A-Z_]+)\"");
    if (!std::regex_search(r.out, m, re)) return "";
    return m[1];
  }

  // Polls until the task is in one of `states`; returns the state it was last seen in.
  std::string task_reaches_one_of(const std::string& task_id,
                                  const std::vector<std::string>& states,
                                  std::chrono::milliseconds timeout) {
    auto deadline = std::chrono::steady_clock::now() + timeout;
    auto reached = [&](const std::string& s) {
      return std::find(states.begin(), states.end(), s) != states.end();
    };
    std::string state = task_state(task_id);
    while (!reached(state) && std::chrono::steady_clock::now() < deadline) {
      // Each poll is a whole dispatchctl process; no tighter loop is needed.
      std::this_thread::sleep_for(100ms);
      state = task_state(task_id);
    }
    return state;
  }

  bool task_reaches(const std::string& task_id, const std::string& state,
                    std::chrono::milliseconds timeout) {
    return task_reaches_one_of(task_id, {state}, timeout) == state;
  }

  TempDir dir_;
  std::string certs_;
  std::string address_;
  unsigned short admin_port_ = 0;
};

TEST_F(RealAgentTest, RegistersRunsATaskFollowsADrainAndComesBackAfterARestart) {
  auto server = start_server("127.0.0.1:0");
  ASSERT_FALSE(address_.empty()) << server->output();

  // Two of SwarmKit's agents, stdout (their events) into the pipe the test reads.
  ChildProcess agents({"/bin/sh", "-c", "exec \"$0\" \"$@\" 1>&2", kRealagent, "--addr", address_,
                       "--certs", certs_, "--nodes", "node-1,node-2", "--for", "150s"});
  ASSERT_TRUE(wait_count(agents, "node-1 session-established", 1, 30s)) << agents.output();
  ASSERT_TRUE(wait_count(agents, "node-2 session-established", 1, 30s)) << agents.output();

  // A task for node-1 goes all the way to RUNNING through the agent's own executor.
  auto created = ctl({"task", "create", "--node", "node-1", "--id", "task-real-1"});
  ASSERT_EQ(created.exit_status, 0) << created.err;
  EXPECT_TRUE(task_reaches("task-real-1", "RUNNING", 60s))
      << "state " << task_state("task-real-1") << "\n"
      << agents.output();

  // Stopping a task (issue 15): its desired state moves to SHUTDOWN through the Control API and
  // the agent's own executor ends it.
  created = ctl({"task", "create", "--node", "node-2", "--id", "task-real-2"});
  ASSERT_EQ(created.exit_status, 0) << created.err;
  EXPECT_TRUE(task_reaches("task-real-2", "RUNNING", 60s)) << agents.output();
  auto stopped = ctl({"task", "update", "task-real-2", "--desired-state", "shutdown"});
  ASSERT_EQ(stopped.exit_status, 0) << stopped.err;
  std::string end_state = task_reaches_one_of("task-real-2", {"SHUTDOWN", "COMPLETE"}, 60s);
  std::cout << "[ info ] task-real-2 ended " << end_state << " after its desired SHUTDOWN\n";
  EXPECT_TRUE(end_state == "SHUTDOWN" || end_state == "COMPLETE") << "state " << end_state << "\n"
                                                                  << agents.output();

  // A root CA rotation (a bundle of the cluster's CA and a new one) reaches both agents.
  const std::string other = dir_.path + "/other";
  std::string cmd = std::string(DISPATCHD_SOURCE_DIR) + "/scripts/gen-certs.sh --out " + other +
                    " --org myorg --nodes 0 >/dev/null";
  ASSERT_EQ(std::system(cmd.c_str()), 0);
  cmd = "cat " + certs_ + "/ca.pem " + other + "/ca.pem > " + other + "/bundle.pem";
  ASSERT_EQ(std::system(cmd.c_str()), 0);
  auto rotated = ctl({"cluster", "set-root-ca", other + "/bundle.pem"});
  ASSERT_EQ(rotated.exit_status, 0) << rotated.err;
  EXPECT_TRUE(wait_count(agents, "node-1 rootca-change", 1, 30s)) << agents.output();
  EXPECT_TRUE(wait_count(agents, "node-2 rootca-change", 1, 30s)) << agents.output();

  // A drain reaches the agent's Session as a node change.
  auto drained = ctl({"node", "update", "--availability", "drain", "node-1"});
  ASSERT_EQ(drained.exit_status, 0) << drained.err;
  EXPECT_TRUE(wait_count(agents, "node-1 node-change state=READY availability=DRAIN", 1, 30s))
      << agents.output();

  // A graceful restart on the same address and state: both agents are back with a new session,
  // the task is still RUNNING and node-1 still drained.
  server->signal(SIGTERM);
  auto status = server->wait(30s);
  ASSERT_TRUE(status.has_value());
  EXPECT_EQ(*status, 0) << server->output();
  auto restarted = start_server(address_);
  ASSERT_TRUE(restarted->started());
  auto before = std::chrono::steady_clock::now();
  EXPECT_TRUE(wait_count(agents, "node-1 session-established", 2, 60s)) << agents.output();
  EXPECT_TRUE(wait_count(agents, "node-2 session-established", 2, 60s)) << agents.output();
  auto back_in = std::chrono::duration_cast<std::chrono::milliseconds>(
      std::chrono::steady_clock::now() - before);
  std::cout << "[ info ] both agents back " << back_in.count() << " ms after the restart\n";
  EXPECT_EQ(task_state("task-real-1"), "RUNNING");
  auto node = ctl({"--json", "node", "inspect", "node-1"});
  EXPECT_NE(node.out.find("DRAIN"), std::string::npos) << node.out << node.err;
  EXPECT_EQ(count(agents.output(), "panic"), 0u) << agents.output();
}

// Task logs (issue 15): SwarmKit's agents find a LogBroker and keep a ListenSubscriptions stream
// open; a subscription from dispatchctl reaches them, and since their test executor has no logs
// to give, each agent closes its part at once, which ends dispatchctl's read.
TEST_F(RealAgentTest, AgentsListenForLogSubscriptionsAndAnswerTheOperatorsLogs) {
  auto server = start_server("127.0.0.1:0", /*admin=*/true);
  ASSERT_FALSE(address_.empty()) << server->output();
  ASSERT_NE(admin_port_, 0) << server->output();

  // -v: SwarmKit's own log (on stderr, with its events), where an UNIMPLEMENTED LogBroker would
  // show as "manager does not support log subscriptions".
  ChildProcess agents({"/bin/sh", "-c", "exec \"$0\" \"$@\" 1>&2", kRealagent, "--addr", address_,
                       "--certs", certs_, "--nodes", "node-1,node-2", "--for", "120s", "-v"});
  ASSERT_TRUE(wait_count(agents, "node-1 session-established", 1, 30s)) << agents.output();
  ASSERT_TRUE(wait_count(agents, "node-2 session-established", 1, 30s)) << agents.output();
  auto metrics = metrics_with("dispatchd_log_listeners 2", 30s);
  EXPECT_NE(metrics.find("\ndispatchd_log_listeners 2\n"), std::string::npos) << metrics;

  auto created = ctl({"task", "create", "--node", "node-1", "--id", "task-logs-1"});
  ASSERT_EQ(created.exit_status, 0) << created.err;
  ASSERT_TRUE(task_reaches("task-logs-1", "RUNNING", 60s)) << agents.output();

  // A task's logs: node-1 is asked and says it is done.
  auto logs = ctl({"logs", "--task", "task-logs-1"});
  EXPECT_EQ(logs.exit_status, 0) << logs.out << logs.err << "\n" << server->output();
  EXPECT_EQ(logs.out, "");
  // Two nodes' logs: both are asked, both finish.
  logs = ctl({"logs", "--node", "node-1", "--node", "node-2"});
  EXPECT_EQ(logs.exit_status, 0) << logs.out << logs.err << "\n" << server->output();
  EXPECT_TRUE(wait_count(agents, "Received subscription", 3, 30s)) << agents.output();

  metrics = metrics_with("dispatchd_log_subscriptions 0", 30s);
  EXPECT_NE(metrics.find("\ndispatchd_log_subscriptions_total 2\n"), std::string::npos) << metrics;
  EXPECT_NE(metrics.find("\ndispatchd_log_listeners 2\n"), std::string::npos) << metrics;
  EXPECT_EQ(count(agents.output(), "does not support log subscriptions"), 0u) << agents.output();
  EXPECT_EQ(count(agents.output(), "panic"), 0u) << agents.output();
}

// Several managers on etcd (issue 16): SwarmKit's agent dials a follower, whose forwarder relays
// its calls to the leader over mutual TLS with the follower's own certificate (each manager has
// one, CN = its node ID). A task created through the leader runs; when the leader is killed the
// agent has a session again, registered by the newly elected leader, and the task still runs.
TEST_F(RealAgentTest, ThroughAFollowerRunsATaskAndStaysAfterTheLeaderIsKilled) {
  if (!EtcdCluster::available()) GTEST_SKIP() << EtcdCluster::kBinary << " is not installed";
  EtcdCluster etcd(3);
  ASSERT_TRUE(etcd.started()) << etcd.error();
  // Three managers' certificates from the CA SetUp made (gen-certs.sh keeps an existing CA).
  std::string cmd = "cd " + certs_ + " && for id in mgr-1 mgr-2 mgr-3; do " + DISPATCHD_SOURCE_DIR +
                    "/scripts/gen-certs.sh --out . --org myorg --nodes 0 --manager-id $id " +
                    ">/dev/null && mv server.pem $id.pem && mv server.key $id.key || exit 1; done";
  ASSERT_EQ(std::system(cmd.c_str()), 0);
  std::vector<ManagerProcess> managers(3);
  for (int i = 0; i < 3; ++i) {
    const std::string id = "mgr-" + std::to_string(i + 1);
    ASSERT_NO_FATAL_FAILURE(dispatchd::test::start_manager(
        managers[i], id, etcd.store_url(),
        {"--tls-cert", certs_ + "/" + id + ".pem", "--tls-key", certs_ + "/" + id + ".key",
         "--tls-ca", certs_ + "/ca.pem"}));
  }
  ManagerProcess* leader = dispatchd::test::wait_cluster(managers, 30s);
  ASSERT_NE(leader, nullptr) << managers[0].process->output();
  ManagerProcess* follower = &managers[leader == &managers[0] ? 1 : 0];
  address_ = leader->address;  // dispatchctl's calls go to the leader

  ChildProcess agent({"/bin/sh", "-c", "exec \"$0\" \"$@\" 1>&2", kRealagent, "--addr",
                      follower->address, "--certs", certs_, "--nodes", "node-1", "--for", "60s"});
  ASSERT_TRUE(wait_count(agent, "node-1 session-established", 1, 20s))
      << agent.output() << "\n"
      << follower->process->output();
  EXPECT_TRUE(leader->process->wait_for_output("session started node=node-1", 5s))
      << leader->process->output();
  auto created = ctl({"task", "create", "--node", "node-1", "--id", "task-via-follower"});
  ASSERT_EQ(created.exit_status, 0) << created.err;
  ASSERT_TRUE(task_reaches("task-via-follower", "RUNNING", 20s))
      << "state " << task_state("task-via-follower") << "\n"
      << agent.output();

  leader->process->signal(SIGKILL);
  leader->killed = true;
  leader->process->wait(10s);
  ManagerProcess* next = dispatchd::test::wait_leader(managers, 15s, leader);
  ASSERT_NE(next, nullptr) << follower->process->output();
  address_ = next->address;
  // The agent's session ended with the old leader; it finds one again through the managers it
  // was told about, and the new leader registers it.
  EXPECT_TRUE(wait_count(agent, "node-1 session-established", 2, 20s)) << agent.output();
  EXPECT_TRUE(next->process->wait_for_output("session started node=node-1", 5s))
      << next->process->output();
  EXPECT_EQ(task_state("task-via-follower"), "RUNNING");
  auto node = ctl({"--json", "node", "inspect", "node-1"});
  EXPECT_NE(node.out.find("READY"), std::string::npos) << node.out << node.err;
  EXPECT_EQ(count(agent.output(), "panic"), 0u) << agent.output();
}

}  // namespace
