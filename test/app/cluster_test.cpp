// Three dispatchd managers on a real three-member etcd cluster (issue 16), driven by the real
// gRPC C++ client as agents and operators: one leader runs the Dispatcher, the followers forward
// agents to it, every Session carries the live manager list; SIGKILL the leader under load and
// the agents have a session again with nothing acknowledged lost and the dead manager dropped
// from their list; a leader paused past its lease is fenced off when it wakes.

#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <signal.h>

#include <asio/co_spawn.hpp>
#include <asio/io_context.hpp>
#include <asio/use_future.hpp>
#include <atomic>
#include <chrono>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "control.grpc.pb.h"
#include "dispatchd/cluster/etcd_store.hpp"
#include "dispatchd/cluster/manager_keys.hpp"
#include "dispatchd/co/timer_wheel.hpp"
#include "dispatchd/etcd/client.hpp"
#include "dispatcher.grpc.pb.h"
#include "support/child_process.hpp"
#include "support/drive.hpp"
#include "support/etcd_cluster.hpp"
#include "support/grpc_client.hpp"
#include "support/managers.hpp"

namespace {

namespace api = docker::swarmkit::v1;
namespace pb = dispatchd::control::v1;
using dispatchd::test::ChildProcess;
using dispatchd::test::EtcdCluster;
using dispatchd::test::EtcdTls;
namespace etcd = dispatchd::etcd;
namespace cluster = dispatchd::cluster;
using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

std::unique_ptr<grpc::ClientContext> as(const std::string& node_id, const std::string& role = {},
                                        std::chrono::seconds timeout = 10s) {
  return dispatchd::test::client_context(dispatchd::test::as_node(node_id, role), timeout);
}

std::string task_id(int i) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "t-%03d", i);
  return buf;
}

using Manager = dispatchd::test::ManagerProcess;

// A manager on etcd at `store`, insecure for its agents.
void start_insecure_manager(Manager& m, const std::string& node_id, const std::string& store,
                            const std::vector<std::string>& extra = {}) {
  std::vector<std::string> flags{"--insecure", "--node-id", node_id};
  flags.insert(flags.end(), extra.begin(), extra.end());
  dispatchd::test::start_manager(m, node_id, store, flags);
}

class ClusterTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!EtcdCluster::available()) GTEST_SKIP() << EtcdCluster::kBinary << " is not installed";
    etcd_ = std::make_unique<EtcdCluster>(3);
    ASSERT_TRUE(etcd_->started()) << etcd_->error();
    managers_.resize(3);
    for (int i = 0; i < 3; ++i) {
      ASSERT_NO_FATAL_FAILURE(start_insecure_manager(
          managers_[i], "manager-" + std::to_string(i + 1), etcd_->store_url()));
    }
  }

  Manager* wait_leader(std::chrono::milliseconds timeout, const Manager* not_this = nullptr) {
    return dispatchd::test::wait_leader(managers_, timeout, not_this);
  }
  Manager* wait_cluster(std::chrono::milliseconds timeout, const Manager* not_this = nullptr) {
    return dispatchd::test::wait_cluster(managers_, timeout, not_this);
  }

  std::unique_ptr<EtcdCluster> etcd_;
  std::vector<Manager> managers_;
};

std::unique_ptr<api::Dispatcher::Stub> dispatcher_at(const std::string& address) {
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  return api::Dispatcher::NewStub(
      grpc::CreateCustomChannel(address, grpc::InsecureChannelCredentials(), args));
}
std::unique_ptr<pb::Control::Stub> control_at(const std::string& address) {
  return pb::Control::NewStub(grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
}

// An agent's Session through one manager.
struct Session {
  std::unique_ptr<api::Dispatcher::Stub> stub;
  std::unique_ptr<grpc::ClientContext> ctx;
  std::unique_ptr<grpc::ClientReader<api::SessionMessage>> reader;
  api::SessionMessage first;
  grpc::Status status;
  bool ok = false;

  Session(const std::string& address, const std::string& node_id,
          std::chrono::seconds timeout = 60s) {
    stub = dispatcher_at(address);
    ctx = as(node_id, {}, timeout);
    reader = stub->Session(ctx.get(), api::SessionRequest{});
    ok = reader->Read(&first);
    if (!ok) status = reader->Finish();
  }
  ~Session() {
    if (ok) {
      ctx->TryCancel();
      api::SessionMessage m;
      while (reader->Read(&m)) {
      }
      reader->Finish();
    }
  }
};

std::set<std::string> manager_ids(const api::SessionMessage& m) {
  std::set<std::string> ids;
  for (const auto& p : m.managers())
    ids.insert(p.peer().node_id());
  return ids;
}

// What an agent does after losing its manager: try the managers it knows, one after another,
// until one gives it a session (bounded by `timeout`).
std::unique_ptr<Session> reconnect(const std::vector<std::string>& addresses,
                                   const std::string& node_id, std::chrono::seconds timeout) {
  const auto deadline = Clock::now() + timeout;
  for (std::size_t i = 0; Clock::now() < deadline; ++i) {
    auto s = std::make_unique<Session>(addresses[i % addresses.size()], node_id, 5s);
    if (s->ok) return s;
  }
  return nullptr;
}

// etcd's whole history of the cluster's keys (dispatchd's default prefix): every event from
// revision 1 to now, read with our etcd client through one watch (the test etcd never compacts).
// `o`: its TLS files, if any.
std::vector<mvccpb::Event> etcd_history(const EtcdCluster& etcd, etcd::ClientOptions o = {}) {
  asio::io_context io(1);
  dispatchd::co::TimerWheel wheel(io);
  o.endpoints = etcd.endpoints();
  auto client = etcd::Client::create(wheel, std::move(o));
  if (!client) {
    ADD_FAILURE() << client.error().message();
    return {};
  }
  // (Every argument named: GCC 12 destroys some temporaries of a co_await expression twice.)
  auto read = [](etcd::Client& c) -> asio::awaitable<std::vector<mvccpb::Event>> {
    const std::string prefix = "/dispatchd/";
    const std::string end = etcd::prefix_end(prefix);
    auto now = co_await c.range(prefix, end);
    if (!now) throw std::runtime_error(now.error().message());
    etcd::WatchOptions from_start;
    from_start.key = prefix;
    from_start.range_end = end;
    from_start.start_revision = 1;
    auto w = co_await c.watch(from_start);
    if (!w) throw std::runtime_error(w.error().message());
    std::vector<mvccpb::Event> events;
    while (events.empty() || events.back().kv().mod_revision() < now->header().revision()) {
      auto r = co_await (*w)->next();
      if (!r) throw std::runtime_error(r.error().message());
      events.insert(events.end(), r->events().begin(), r->events().end());
    }
    (*w)->cancel();
    co_return events;
  };
  auto done = asio::co_spawn(io, read(**client), asio::use_future);
  if (!dispatchd::test::drive_until(
          io, [&] { return done.wait_for(0s) == std::future_status::ready; }, 20s)) {
    ADD_FAILURE() << "etcd's history was not read within 20 s";
    return {};
  }
  // Close the connection and let its reader see it before the io_context goes.
  client->reset();
  io.run_for(100ms);
  try {
    return done.get();
  } catch (const std::exception& e) {
    ADD_FAILURE() << "reading etcd's history: " << e.what();
    return {};
  }
}

// What the leader's fence promises, checked against etcd's history rather than taken from the
// managers: every store commit (a revision writing `P o/...` or `P index`) happened while some
// manager held `P leader`, and commits never overlap: the store index each one records grows
// strictly from one to the next. A deposed leader that still wrote would commit under another
// manager's leadership (or under none) with an index its successor had already used, since
// the successor continues from the index of the revision it won at. Returns each violation,
// and counts the commits and the leadership terms.
struct History {
  std::vector<std::string> violations;
  std::map<std::string, std::size_t> commits_by_leader;
  std::size_t terms = 0;
};
History check_leadership(const std::vector<mvccpb::Event>& events) {
  const std::string prefix = "/dispatchd/";
  const std::string leader_key = cluster::leader_key(prefix);
  const std::string managers = cluster::managers_prefix(prefix);
  History h;
  std::optional<std::string> leader;  // who holds `P leader` at the revision being read
  std::optional<std::uint64_t> last_index;
  for (const auto& e : events) {
    const auto& kv = e.kv();
    const std::int64_t rev = kv.mod_revision();
    if (kv.key() == leader_key) {
      if (e.type() == mvccpb::Event::DELETE) {
        leader.reset();
      } else {
        h.terms += kv.create_revision() == rev;
        leader = kv.value();
      }
      continue;
    }
    if (kv.key().starts_with(managers)) continue;
    auto key = cluster::parse_key(prefix, kv.key());
    if (!key || key->kind == cluster::StoredKey::other) {
      h.violations.push_back("revision " + std::to_string(rev) + ": unexpected key " + kv.key());
      continue;
    }
    if (!leader) {
      h.violations.push_back("revision " + std::to_string(rev) + " wrote " + kv.key() +
                             " while no manager held the leadership");
      continue;
    }
    if (key->kind != cluster::StoredKey::index) continue;
    const std::uint64_t index = std::stoull(kv.value());
    if (last_index && index <= *last_index) {
      h.violations.push_back("revision " + std::to_string(rev) + " (leader " + *leader +
                             ") committed store index " + kv.value() + " after index " +
                             std::to_string(*last_index) + ": two leaders committed");
    }
    last_index = std::max(last_index.value_or(0), index);
    ++h.commits_by_leader[*leader];
  }
  return h;
}

std::string lines(const std::vector<std::string>& v) {
  std::string out;
  for (const auto& l : v)
    out += l + "\n";
  return out;
}

// The check itself, on made-up histories: it must see a deposed leader's commit.
mvccpb::Event event(const std::string& key, const std::string& value, std::int64_t rev,
                    std::int64_t created, bool put = true) {
  mvccpb::Event e;
  e.set_type(put ? mvccpb::Event::PUT : mvccpb::Event::DELETE);
  e.mutable_kv()->set_key("/dispatchd/" + key);
  e.mutable_kv()->set_value(value);
  e.mutable_kv()->set_mod_revision(rev);
  e.mutable_kv()->set_create_revision(created);
  return e;
}

TEST(LeaderHistoryCheck, SeesCommitsWithoutALeaderAndTwoLeadersCommitting) {
  // manager-1 leads and commits, its lease ends, manager-2 leads and commits: fine.
  std::vector<mvccpb::Event> h{event("leader", "manager-1", 2, 2), event("o/task/t", "x", 3, 3),
                               event("index", "5", 3, 3),          event("leader", "", 4, 0, false),
                               event("leader", "manager-2", 5, 5), event("index", "6", 6, 3)};
  History ok = check_leadership(h);
  EXPECT_TRUE(ok.violations.empty()) << lines(ok.violations);
  EXPECT_EQ(ok.terms, 2u);
  EXPECT_EQ(ok.commits_by_leader["manager-1"], 1u);
  // manager-1, deposed, still commits its next index after manager-2 did.
  h.push_back(event("index", "6", 7, 3));
  EXPECT_EQ(check_leadership(h).violations.size(), 1u);
  // A commit while nobody leads.
  h.push_back(event("leader", "", 8, 0, false));
  h.push_back(event("o/task/t", "y", 9, 3));
  EXPECT_EQ(check_leadership(h).violations.size(), 2u);
}

TEST_F(ClusterTest, OneLeaderRunsTheDispatcherAndFollowersForwardAgentsToIt) {
  Manager* leader = wait_cluster(30s);
  ASSERT_NE(leader, nullptr) << managers_[0].process->output();
  Manager* follower = &managers_[leader == &managers_[0] ? 1 : 0];

  // An agent on a follower gets the leader's session, with the three live managers listed.
  Session s(follower->address, "node-a");
  ASSERT_TRUE(s.ok) << s.status.error_message() << "\n" << follower->process->output();
  EXPECT_EQ(s.first.node().id(), "node-a");
  EXPECT_FALSE(s.first.session_id().empty());
  std::set<std::string> want = {"manager-1", "manager-2", "manager-3"};
  api::SessionMessage m = s.first;
  while (manager_ids(m) != want && s.reader->Read(&m)) {
  }
  EXPECT_EQ(manager_ids(m), want);

  // The leader registered it: the node is READY there, and its heartbeat through the follower
  // works on that session.
  api::HeartbeatRequest hb;
  hb.set_session_id(s.first.session_id());
  api::HeartbeatResponse hbr;
  auto hctx = as("node-a");
  auto st = dispatcher_at(follower->address)->Heartbeat(hctx.get(), hb, &hbr);
  EXPECT_TRUE(st.ok()) << st.error_message();
  pb::GetNodeRequest get;
  get.set_node_id("node-a");
  pb::GetNodeResponse node;
  auto gctx = as("ops", "swarm-manager");
  st = control_at(leader->address)->GetNode(gctx.get(), get, &node);
  ASSERT_TRUE(st.ok()) << st.error_message();
  EXPECT_EQ(node.node().status().state(), api::NodeStatus::READY);

  // Operator calls go to the leader: a follower names it.
  pb::ListNodesResponse nodes;
  auto lctx = as("ops", "swarm-manager");
  st = control_at(follower->address)->ListNodes(lctx.get(), pb::ListNodesRequest{}, &nodes);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_NE(st.error_message().find(leader->node_id + " at " + leader->address), std::string::npos)
      << st.error_message();
}

// Reporters for node-a through one manager, one update per call, until every task is reported
// or a call fails. Records what was acknowledged.
class Reporters {
 public:
  Reporters(const std::string& address, const std::string& session_id, int first, int last)
      : thread_([=, this] {
          auto stub = dispatcher_at(address);
          for (int i = first; i < last && !stop_; ++i) {
            api::UpdateTaskStatusRequest req;
            req.set_session_id(session_id);
            auto* u = req.add_updates();
            u->set_task_id(task_id(i));
            u->mutable_status()->set_state(api::RUNNING);
            u->mutable_status()->set_message("reported " + task_id(i));
            api::UpdateTaskStatusResponse resp;
            auto ctx = as("node-a");
            if (!stub->UpdateTaskStatus(ctx.get(), req, &resp).ok()) return;
            std::lock_guard lock(mu_);
            acknowledged_.insert(task_id(i));
          }
        }) {}
  ~Reporters() { join(); }
  std::size_t acks() {
    std::lock_guard lock(mu_);
    return acknowledged_.size();
  }
  bool wait_for_acks(std::size_t n) {
    const auto deadline = Clock::now() + 30s;
    while (acks() < n && Clock::now() < deadline)
      std::this_thread::yield();
    return acks() >= n;
  }
  void join() {
    stop_ = true;
    if (thread_.joinable()) thread_.join();
  }
  std::set<std::string> acknowledged() {
    std::lock_guard lock(mu_);
    return acknowledged_;
  }

 private:
  std::mutex mu_;
  std::set<std::string> acknowledged_;
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

TEST_F(ClusterTest, KillingTheLeaderUnderLoadMovesAgentsAndLosesNoAcknowledgedStatus) {
  Manager* leader = wait_cluster(30s);
  ASSERT_NE(leader, nullptr) << managers_[0].process->output();
  std::vector<std::string> survivors;
  for (auto& m : managers_)
    if (&m != leader) survivors.push_back(m.address);
  // node-a's session through a follower (which also admits the node).
  auto s = std::make_unique<Session>(survivors[0], "node-a");
  ASSERT_TRUE(s->ok) << s->status.error_message();

  constexpr int kTasks = 400;
  auto control = control_at(leader->address);
  for (int i = 0; i < kTasks; ++i) {
    pb::CreateTaskRequest req;
    req.mutable_task()->set_id(task_id(i));
    req.mutable_task()->set_node_id("node-a");
    pb::CreateTaskResponse resp;
    auto ctx = as("ops", "swarm-manager");
    auto st = control->CreateTask(ctx.get(), req, &resp);
    ASSERT_TRUE(st.ok()) << st.error_message();
  }
  // Reporters through the follower and straight to the leader.
  Reporters via_follower(survivors[0], s->first.session_id(), 0, kTasks / 2);
  Reporters via_leader(leader->address, s->first.session_id(), kTasks / 2, kTasks);
  ASSERT_TRUE(via_follower.wait_for_acks(20));
  ASSERT_TRUE(via_leader.wait_for_acks(20));

  leader->process->signal(SIGKILL);
  const auto killed_at = Clock::now();
  leader->killed = true;
  leader->process->wait(10s);
  via_follower.join();
  via_leader.join();
  std::set<std::string> acknowledged = via_follower.acknowledged();
  for (const auto& id : via_leader.acknowledged())
    acknowledged.insert(id);

  // The session ends (the leader it was forwarded to is gone); the agent finds a session on the
  // managers it knows, within the lease TTL and its backoff.
  api::SessionMessage m;
  while (s->reader->Read(&m)) {
  }
  s->ok = false;
  s->reader->Finish();
  auto again = reconnect(survivors, "node-a", 30s);
  ASSERT_NE(again, nullptr);
  const auto back_after = Clock::now() - killed_at;
  Manager* next = wait_leader(10s, leader);
  ASSERT_NE(next, nullptr);
  RecordProperty(
      "agent_back_after_ms",
      std::to_string(std::chrono::duration_cast<std::chrono::milliseconds>(back_after).count()));

  // The dead manager leaves every session's manager list.
  m = again->first;
  while (manager_ids(m).contains(leader->node_id) && again->reader->Read(&m)) {
  }
  EXPECT_FALSE(manager_ids(m).contains(leader->node_id));
  EXPECT_EQ(manager_ids(m).size(), 2u);

  // Every acknowledged status is in the new leader's store.
  pb::ListTasksRequest list;
  list.set_node_id("node-a");
  pb::ListTasksResponse tasks;
  auto ctx = as("ops", "swarm-manager");
  auto st = control_at(next->address)->ListTasks(ctx.get(), list, &tasks);
  ASSERT_TRUE(st.ok()) << st.error_message();
  ASSERT_EQ(tasks.tasks_size(), kTasks);
  std::size_t found = 0;
  for (const auto& t : tasks.tasks()) {
    if (!acknowledged.contains(t.id())) continue;
    EXPECT_EQ(t.status().state(), api::RUNNING) << t.id() << " was acknowledged but is lost";
    EXPECT_EQ(t.status().message(), "reported " + t.id());
    ++found;
  }
  EXPECT_EQ(found, acknowledged.size());
  EXPECT_GE(acknowledged.size(), 40u);

  // etcd's record agrees: two terms, each leader committed only while it held the leadership,
  // and the two never both committed.
  History h = check_leadership(etcd_history(*etcd_));
  EXPECT_TRUE(h.violations.empty()) << lines(h.violations);
  EXPECT_EQ(h.terms, 2u);
  EXPECT_GT(h.commits_by_leader[leader->node_id], 0u);
  EXPECT_GT(h.commits_by_leader[next->node_id], 0u);
}

TEST_F(ClusterTest, ALeaderPausedPastItsLeaseIsFencedOffWhenItWakes) {
  Manager* leader = wait_leader(30s);
  ASSERT_NE(leader, nullptr) << managers_[0].process->output();
  pb::CreateNodeRequest node;
  node.set_node_id("node-a");
  pb::CreateNodeResponse created;
  auto nctx = as("ops", "swarm-manager");
  auto nst = control_at(leader->address)->CreateNode(nctx.get(), node, &created);
  ASSERT_TRUE(nst.ok()) << nst.error_message();
  pb::CreateTaskRequest req;
  req.mutable_task()->set_id("t-old");
  req.mutable_task()->set_node_id("node-a");
  pb::CreateTaskResponse resp;
  auto ctx = as("ops", "swarm-manager");
  ASSERT_TRUE(control_at(leader->address)->CreateTask(ctx.get(), req, &resp).ok());

  // Frozen: its lease runs out, another manager is elected and writes.
  leader->process->signal(SIGSTOP);
  Manager* next = wait_leader(30s, leader);
  ASSERT_NE(next, nullptr);
  req.mutable_task()->set_id("t-new");
  auto ctx2 = as("ops", "swarm-manager");
  auto st = control_at(next->address)->CreateTask(ctx2.get(), req, &resp);
  ASSERT_TRUE(st.ok()) << st.error_message();

  // A write sent to the old leader while it sleeps: when it wakes, it must not be acknowledged.
  std::optional<grpc::Status> late;
  std::thread writer([&] {
    pb::UpdateTaskRequest up;
    up.set_task_id("t-old");
    up.set_desired_state(api::SHUTDOWN);
    pb::UpdateTaskResponse r;
    auto c = as("ops", "swarm-manager", 20s);
    late = control_at(leader->address)->UpdateTask(c.get(), up, &r);
  });
  leader->process->signal(SIGCONT);
  writer.join();
  ASSERT_TRUE(late.has_value());
  EXPECT_FALSE(late->ok()) << "a deposed leader acknowledged a write";

  // It steps down and exits non-zero, saying why.
  auto rc = leader->process->wait(30s);
  leader->killed = true;
  ASSERT_TRUE(rc.has_value()) << leader->process->output();
  EXPECT_NE(*rc, 0);
  const std::string out = leader->process->output();
  EXPECT_TRUE(out.find("lost the leadership") != std::string::npos ||
              out.find("etcd lease is lost") != std::string::npos ||
              out.find("no longer the leader") != std::string::npos)
      << out;

  // The new leader's store has the new task, and t-old as it was.
  pb::ListTasksRequest list;
  list.set_node_id("node-a");
  pb::ListTasksResponse tasks;
  auto lctx = as("ops", "swarm-manager");
  st = control_at(next->address)->ListTasks(lctx.get(), list, &tasks);
  ASSERT_TRUE(st.ok()) << st.error_message();
  std::set<std::string> ids;
  for (const auto& t : tasks.tasks()) {
    ids.insert(t.id());
    if (t.id() == "t-old") {
      EXPECT_NE(t.desired_state(), api::SHUTDOWN);
    }
  }
  EXPECT_EQ(ids, (std::set<std::string>{"t-new", "t-old"}));

  // etcd's record: no commit outside a leadership, none overlapping, and the late write never
  // reached etcd (t-old was never stored with desired state SHUTDOWN).
  const auto events = etcd_history(*etcd_);
  History h = check_leadership(events);
  EXPECT_TRUE(h.violations.empty()) << lines(h.violations);
  EXPECT_EQ(h.terms, 2u);
  EXPECT_GT(h.commits_by_leader[next->node_id], 0u);
  const std::string t_old =
      cluster::object_key("/dispatchd/", dispatchd::store::ObjectType::task, "t-old");
  for (const auto& e : events) {
    if (e.kv().key() != t_old || e.type() != mvccpb::Event::PUT) continue;
    api::Task t;
    ASSERT_TRUE(t.ParseFromString(e.kv().value()));
    EXPECT_NE(t.desired_state(), api::SHUTDOWN)
        << "revision " << e.kv().mod_revision() << ": the deposed leader's write is in etcd";
  }
}

// TLS to etcd: members that serve their clients over mutual TLS only. `etcd://HOST:PORT` with
// --etcd-ca is https; --etcd-cert/--etcd-key are the manager's client certificate.
class EtcdTlsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!EtcdCluster::available()) GTEST_SKIP() << EtcdCluster::kBinary << " is not installed";
    tls_ = EtcdTls::make();
    etcd_ = std::make_unique<EtcdCluster>(1, 30s, tls_);
    ASSERT_TRUE(etcd_->started()) << etcd_->error();
  }
  std::vector<std::string> flags(const std::string& ca, const std::string& client) const {
    std::vector<std::string> f{"--etcd-ca", ca};
    if (!client.empty()) {
      f.insert(f.end(), {"--etcd-cert", tls_.dir + "/" + client + ".pem", "--etcd-key",
                         tls_.dir + "/" + client + ".key"});
    }
    return f;
  }

  EtcdTls tls_;
  std::unique_ptr<EtcdCluster> etcd_;
};

TEST_F(EtcdTlsTest, AManagerWithItsClientCertificateLeadsAndServesAnAgent) {
  Manager m;
  ASSERT_NO_FATAL_FAILURE(
      start_insecure_manager(m, "manager-1", etcd_->store_url(), flags(tls_.ca, "node-1")));
  ASSERT_TRUE(m.process->wait_for_output("leading the cluster", 15s)) << m.process->output();
  Session s(m.address, "node-a", 10s);
  ASSERT_TRUE(s.ok) << s.status.error_message() << "\n" << m.process->output();
  EXPECT_EQ(s.first.node().id(), "node-a");
  // Its registration is in etcd, read back over TLS.
  History h = check_leadership(etcd_history(*etcd_, {.ca_file = tls_.ca,
                                                     .cert_file = tls_.dir + "/node-1.pem",
                                                     .key_file = tls_.dir + "/node-1.key"}));
  EXPECT_TRUE(h.violations.empty()) << lines(h.violations);
  EXPECT_GT(h.commits_by_leader["manager-1"], 0u);
}

// A manager that etcd refuses says so at once, naming the endpoint and what TLS found wrong,
// and never leads.
TEST_F(EtcdTlsTest, AWrongCaOrAMissingClientCertificateIsReportedNamingTheEndpoint) {
  const std::string url = "https://" + etcd_->endpoint(0);
  // A refused client certificate shows after the TLS 1.3 handshake, as the member's alert or,
  // when the reset loses it, as a connection that ended before etcd sent anything.
  struct Case {
    std::string what, ca, client, says;
  };
  for (const Case& c :
       {Case{"wrong CA", tls_.dir + "/other-ca.pem", "node-1",
             url + ": TLS handshake: server certificate: unable to get local issuer certificate"},
        Case{"no client certificate", tls_.ca, "", url + ": connection"},
        Case{"client certificate of another CA", tls_.ca, "untrusted", url + ": connection"}}) {
    SCOPED_TRACE(c.what);
    Manager m;
    ASSERT_NO_FATAL_FAILURE(
        start_insecure_manager(m, "manager-1", etcd_->store_url(), flags(c.ca, c.client)));
    auto line = m.process->wait_for_line("cannot use etcd at " + url, 10s);
    ASSERT_TRUE(line) << m.process->output();
    EXPECT_NE(line->find(c.says), std::string::npos) << *line;
    EXPECT_NE(line->find("certificate"), std::string::npos) << *line;
    EXPECT_EQ(m.process->output().find("leading the cluster"), std::string::npos);
    m.process->signal(SIGTERM);
    EXPECT_TRUE(m.process->wait(10s).has_value()) << m.process->output();
  }
}

}  // namespace
