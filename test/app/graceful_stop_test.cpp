// The real dispatchd binary, stopped with SIGTERM or killed with SIGKILL while agents report task
// status: every update the server acknowledged is in the store it restarts from (the write-ahead
// log, docs/architecture.md "Durability"); on SIGTERM every Session is sent away with the manager
// list and the process exits 0. Also: what a damaged state directory does at start.

#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <stdlib.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "control.grpc.pb.h"
#include "dispatcher.grpc.pb.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "support/agent.hpp"
#include "support/child_process.hpp"
#include "support/grpc_client.hpp"

namespace {

namespace api = docker::swarmkit::v1;
namespace pb = dispatchd::control::v1;
using dispatchd::test::ChildProcess;
using namespace std::chrono_literals;

struct TempDir {
  TempDir() {
    char tmpl[] = "/tmp/dispatchd-state-XXXXXX";
    path = ::mkdtemp(tmpl);
  }
  ~TempDir() { std::filesystem::remove_all(path); }
  std::string path;
};

struct Running {
  std::unique_ptr<ChildProcess> process;
  std::string address;
};

Running start_server(const std::string& state_dir, const std::vector<std::string>& extra = {}) {
  Running r;
  std::vector<std::string> argv = {DISPATCHD_BIN, "--insecure",      "--listen",
                                   "127.0.0.1:0", "--admin-listen=", "--state-dir",
                                   state_dir,     "--drain-timeout", "10s"};
  argv.insert(argv.end(), extra.begin(), extra.end());
  r.process = std::make_unique<ChildProcess>(argv);
  auto line = r.process->wait_for_line("dispatchd listening on ", 30s);
  if (!line) return r;
  auto at = line->find("listening on ") + 13;
  r.address = line->substr(at, line->find(' ', at) - at);
  return r;
}

std::unique_ptr<grpc::ClientContext> as(const std::string& node_id, const std::string& role = {}) {
  return dispatchd::test::client_context(dispatchd::test::as_node(node_id, role), 30s);
}

std::string task_id(int i) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "t-%03d", i);
  return buf;
}

// Tasks t-000 … for `node_id`, through the operator API as dispatchctl would create them.
::testing::AssertionResult create_tasks(pb::Control::Stub& control, const std::string& node_id,
                                        int n) {
  for (int i = 0; i < n; ++i) {
    pb::CreateTaskRequest req;
    req.mutable_task()->set_id(task_id(i));
    req.mutable_task()->set_node_id(node_id);
    pb::CreateTaskResponse resp;
    auto ctx = as("ops", "swarm-manager");
    auto st = control.CreateTask(ctx.get(), req, &resp);
    if (!st.ok()) return ::testing::AssertionFailure() << task_id(i) << ": " << st.error_message();
  }
  return ::testing::AssertionSuccess();
}

// A server on `state_dir` with operator and dispatcher stubs, and node-a's Session open.
struct Agent {
  explicit Agent(const std::string& state_dir, const std::vector<std::string>& extra = {}) {
    Running r = start_server(state_dir, extra);
    process = std::move(r.process);
    address = r.address;
    if (address.empty()) return;
    channel = grpc::CreateChannel(address, grpc::InsecureChannelCredentials());
    dispatcher = api::Dispatcher::NewStub(channel);
    control = pb::Control::NewStub(channel);
    session = dispatchd::test::open_session(*dispatcher, "node-a");
  }
  bool up() const { return session && session->ok; }

  std::unique_ptr<ChildProcess> process;
  std::string address;
  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<api::Dispatcher::Stub> dispatcher;
  std::unique_ptr<pb::Control::Stub> control;
  std::unique_ptr<dispatchd::test::Registered> session;
};

// Reporters for one node, each on its own connection, one update per call, until every task is
// reported or a call fails (the server went away). Records the tasks whose update was answered OK.
class Reporters {
 public:
  Reporters(const std::string& address, const std::string& session_id, int tasks,
            int reporters = 4) {
    for (int w = 0; w < reporters; ++w) {
      threads_.emplace_back([=, this] { run(address, session_id, tasks, w, reporters); });
    }
  }
  ~Reporters() { join(); }

  // Not a sleep: until `n` updates are acknowledged (bounded).
  bool wait_for_acks(int n) {
    auto deadline = std::chrono::steady_clock::now() + 30s;
    while (acks_.load() < n && std::chrono::steady_clock::now() < deadline)
      std::this_thread::yield();
    return acks_.load() >= n;
  }
  void join() {
    for (auto& t : threads_)
      if (t.joinable()) t.join();
  }
  std::set<std::string> acknowledged() {
    std::lock_guard lock(mu_);
    return acknowledged_;
  }

 private:
  void run(const std::string& address, const std::string& session_id, int tasks, int first,
           int step) {
    grpc::ChannelArguments args;
    args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
    auto ch = grpc::CreateCustomChannel(address, grpc::InsecureChannelCredentials(), args);
    auto stub = api::Dispatcher::NewStub(ch);
    for (int i = first; i < tasks; i += step) {
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
      ++acks_;
    }
  }

  std::mutex mu_;
  std::set<std::string> acknowledged_;
  std::atomic<int> acks_{0};
  std::vector<std::thread> threads_;
};

// Every acknowledged task is RUNNING with its message in `tasks`; returns how many are RUNNING.
std::size_t expect_acknowledged_in(const pb::ListTasksResponse& tasks,
                                   const std::set<std::string>& acknowledged) {
  std::size_t running = 0;
  for (const auto& t : tasks.tasks()) {
    if (acknowledged.contains(t.id())) {
      EXPECT_EQ(t.status().state(), api::RUNNING) << t.id() << " was acknowledged but is lost";
      EXPECT_EQ(t.status().message(), "reported " + t.id());
    }
    if (t.status().state() == api::RUNNING) ++running;
  }
  return running;
}

std::size_t wal_segments(const std::string& dir) {
  std::size_t n = 0;
  for (const auto& e : std::filesystem::directory_iterator(dir))
    if (e.path().filename().string().starts_with("wal-")) ++n;
  return n;
}

// Every task of node-a, from the operator API of the server at `address`.
pb::ListTasksResponse list_tasks(const std::string& address) {
  auto control =
      pb::Control::NewStub(grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
  pb::ListTasksRequest list;
  list.set_node_id("node-a");
  pb::ListTasksResponse tasks;
  auto ctx = as("ops", "swarm-manager");
  auto st = control->ListTasks(ctx.get(), list, &tasks);
  EXPECT_TRUE(st.ok()) << st.error_message();
  return tasks;
}

TEST(GracefulStopTest, NoAcknowledgedTaskStatusIsLostAcrossARestart) {
  TempDir dir;
  Agent first(dir.path);
  ASSERT_TRUE(first.up()) << first.process->output();
  auto& session = first.session;
  auto& control = first.control;
  const std::string session_id = session->id();

  constexpr int kTasks = 2000;
  ASSERT_TRUE(create_tasks(*control, "node-a", kTasks));

  // Four agents' worth of reporters; SIGTERM arrives while they are still reporting.
  Reporters reporters(first.address, session_id, kTasks);
  ASSERT_TRUE(reporters.wait_for_acks(40));
  first.process->signal(SIGTERM);

  // The Session is sent away: its last message carries the manager list, then ABORTED.
  api::SessionMessage m, last;
  bool got_final = false;
  while (session->stream->read(m)) {
    last = m;
    got_final = true;
  }
  auto st = session->stream->finish();
  EXPECT_TRUE(got_final);
  EXPECT_GT(last.managers_size(), 0);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::ABORTED) << st.error_message();
  EXPECT_EQ(st.error_message(), "node must disconnect");

  reporters.join();
  const auto acknowledged = reporters.acknowledged();
  auto status = first.process->wait(30s);
  ASSERT_TRUE(status.has_value()) << first.process->output();
  EXPECT_EQ(*status, 0) << first.process->output();
  EXPECT_NE(first.process->output().find("state saved to"), std::string::npos)
      << first.process->output();
  EXPECT_NE(first.process->output().find("reason=dispatcher-stopped"), std::string::npos)
      << first.process->output();
  EXPECT_EQ(wal_segments(dir.path), 0u) << "the final snapshot covers the whole log";
  std::size_t acked = acknowledged.size();
  EXPECT_LT(acked, static_cast<std::size_t>(kTasks)) << "the stop came after every update";

  // A new server on the same state directory has every acknowledged update.
  auto second = start_server(dir.path);
  ASSERT_FALSE(second.address.empty()) << second.process->output();
  auto tasks = list_tasks(second.address);
  ASSERT_EQ(tasks.tasks_size(), kTasks);
  EXPECT_GE(expect_acknowledged_in(tasks, acknowledged), acked);
  pb::GetNodeRequest get;
  get.set_node_id("node-a");
  pb::GetNodeResponse node;
  auto gctx = as("ops", "swarm-manager");
  auto control2 =
      pb::Control::NewStub(grpc::CreateChannel(second.address, grpc::InsecureChannelCredentials()));
  EXPECT_TRUE(control2->GetNode(gctx.get(), get, &node).ok());

  second.process->signal(SIGTERM);
  EXPECT_EQ(second.process->wait(30s), 0) << second.process->output();
}

TEST(GracefulStopTest, AKilledServerRestartsFromItsLastPeriodicSync) {
  TempDir dir;
  Agent first(dir.path, {"--state-sync-interval", "50ms", "--log-level", "debug"});
  ASSERT_TRUE(first.up()) << first.process->output();
  auto& control = first.control;
  ASSERT_TRUE(create_tasks(*control, "node-a", 10));
  // The writer thread reports each sync; wait for one that has every task, then crash.
  ASSERT_TRUE(first.process->wait_for_line(", 10 tasks,", 30s)) << first.process->output();
  first.process->signal(SIGKILL);
  ASSERT_EQ(first.process->wait(30s), 128 + SIGKILL);

  auto second = start_server(dir.path);
  ASSERT_FALSE(second.address.empty()) << second.process->output();
  EXPECT_EQ(list_tasks(second.address).tasks_size(), 10);
  second.process->signal(SIGTERM);
  EXPECT_EQ(second.process->wait(30s), 0) << second.process->output();
}

// SIGKILL in the middle of the reports, long before any periodic snapshot (30 s): the
// write-ahead log alone holds every acknowledged update.
TEST(GracefulStopTest, AKilledServerLosesNoAcknowledgedTaskStatus) {
  TempDir dir;
  Agent first(dir.path);
  ASSERT_TRUE(first.up()) << first.process->output();
  constexpr int kTasks = 2000;
  ASSERT_TRUE(create_tasks(*first.control, "node-a", kTasks));

  Reporters reporters(first.address, first.session->id(), kTasks);
  ASSERT_TRUE(reporters.wait_for_acks(200));
  first.process->signal(SIGKILL);
  ASSERT_EQ(first.process->wait(30s), 128 + SIGKILL);
  reporters.join();
  const auto acknowledged = reporters.acknowledged();
  EXPECT_LT(acknowledged.size(), static_cast<std::size_t>(kTasks)) << "killed after every update";
  EXPECT_FALSE(std::filesystem::exists(dir.path + "/store.pb")) << "no snapshot was written";

  auto second = start_server(dir.path);
  ASSERT_FALSE(second.address.empty()) << second.process->output();
  EXPECT_NE(second.process->output().find("write-ahead log: "), std::string::npos)
      << second.process->output();
  auto tasks = list_tasks(second.address);
  ASSERT_EQ(tasks.tasks_size(), kTasks);
  EXPECT_GE(expect_acknowledged_in(tasks, acknowledged), acknowledged.size());
  second.process->signal(SIGTERM);
  EXPECT_EQ(second.process->wait(30s), 0) << second.process->output();
}

// A crash in the middle of a write leaves part of a record: the start cuts it, says so, and
// keeps every whole record before it.
TEST(GracefulStopTest, ATornLogTailIsCutWithALogLine) {
  TempDir dir;
  Agent first(dir.path);
  ASSERT_TRUE(first.up()) << first.process->output();
  ASSERT_TRUE(create_tasks(*first.control, "node-a", 3));
  first.process->signal(SIGKILL);
  ASSERT_EQ(first.process->wait(30s), 128 + SIGKILL);

  ASSERT_EQ(wal_segments(dir.path), 1u);
  std::filesystem::path segment;
  for (const auto& e : std::filesystem::directory_iterator(dir.path))
    if (e.path().filename().string().starts_with("wal-")) segment = e.path();
  const auto whole = std::filesystem::file_size(segment);
  {
    // The start of a record that claims 100 bytes, of which 5 made it to disk.
    std::ofstream out(segment, std::ios::binary | std::ios::app);
    const char torn[] = {100, 0, 0, 0, 1, 2, 3, 4, 'a', 'b', 'c', 'd', 'e'};
    out.write(torn, sizeof torn);
  }

  auto second = start_server(dir.path);
  ASSERT_FALSE(second.address.empty()) << second.process->output();
  EXPECT_NE(second.process->output().find("write-ahead log: cut 13 bytes at offset " +
                                          std::to_string(whole)),
            std::string::npos)
      << second.process->output();
  EXPECT_NE(second.process->output().find("(torn record)"), std::string::npos)
      << second.process->output();
  EXPECT_EQ(list_tasks(second.address).tasks_size(), 3);
  second.process->signal(SIGTERM);
  EXPECT_EQ(second.process->wait(30s), 0) << second.process->output();
}

TEST(GracefulStopTest, ALogOfAnotherFormatVersionIsRefused) {
  TempDir dir;
  {
    std::ofstream out(dir.path + "/wal-0000000000000001.log", std::ios::binary);
    const char header[] = {'D', 'S', 'P', 'D', 'W', 'A', 'L', '\n', 2, 0, 0, 0};
    out.write(header, sizeof header);
  }
  ChildProcess p({DISPATCHD_BIN, "--insecure", "--listen", "127.0.0.1:0",
                  "--admin-listen=", "--state-dir", dir.path});
  auto status = p.wait(30s);
  ASSERT_TRUE(status.has_value());
  EXPECT_EQ(*status, 2) << p.output();
  EXPECT_NE(p.output().find("is write-ahead log format 2; this build reads format 1"),
            std::string::npos)
      << p.output();
  // Nothing was changed: the segment is still there.
  EXPECT_EQ(wal_segments(dir.path), 1u);
}

TEST(GracefulStopTest, AStateFileFromAnotherClusterIsRefusedAtStart) {
  TempDir dir;
  auto first = start_server(dir.path);
  ASSERT_FALSE(first.address.empty()) << first.process->output();
  first.process->signal(SIGTERM);
  ASSERT_EQ(first.process->wait(30s), 0) << first.process->output();

  ChildProcess other({DISPATCHD_BIN, "--insecure", "--listen", "127.0.0.1:0",
                      "--admin-listen=", "--state-dir", dir.path, "--cluster-id", "another-org"});
  auto status = other.wait(30s);
  ASSERT_TRUE(status.has_value());
  EXPECT_EQ(*status, 2);
  EXPECT_NE(other.output().find("belongs to cluster \"dispatchd\""), std::string::npos)
      << other.output();
}

// --max-recv-msg-size reaches the server: with 2KiB, a request of 2048 bytes is served (the
// health check answers NOT_FOUND for the unknown service it names) and one of 2049 bytes is
// RESOURCE_EXHAUSTED. With the flag ignored both would be served under the 4 MiB default.
TEST(GracefulStopTest, MaxRecvMsgSizeFlagLimitsRequests) {
  TempDir dir;
  auto server = start_server(dir.path, {"--max-recv-msg-size", "2KiB"});
  ASSERT_FALSE(server.address.empty()) << server.process->output();
  auto health = grpc::health::v1::Health::NewStub(
      grpc::CreateChannel(server.address, grpc::InsecureChannelCredentials()));
  auto check = [&](std::size_t size) {
    grpc::health::v1::HealthCheckRequest req;
    req.set_service(std::string(size - 3, 's'));  // tag and a 2-byte length varint
    EXPECT_EQ(req.ByteSizeLong(), size);
    grpc::health::v1::HealthCheckResponse resp;
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + 30s);
    return health->Check(&ctx, req, &resp);
  };
  grpc::Status at_limit = check(2048);
  EXPECT_EQ(at_limit.error_code(), grpc::StatusCode::NOT_FOUND) << at_limit.error_message();
  EXPECT_EQ(at_limit.error_message(), "unknown service");
  grpc::Status over = check(2049);
  EXPECT_EQ(over.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << over.error_message();
  EXPECT_NE(over.error_message().find("(2049 vs. 2048)"), std::string::npos)
      << over.error_message();
  server.process->signal(SIGTERM);
  EXPECT_EQ(server.process->wait(30s), 0) << server.process->output();
}

TEST(GracefulStopTest, BadConfigurationIsRefusedWithTheFlagsName) {
  struct Case {
    std::vector<std::string> args;
    std::vector<std::string> env;
    std::string expect;
  };
  std::vector<Case> cases = {
      {{"--heartbeat-period", "soon"}, {}, "--heartbeat-period"},
      {{"--heartbeat-period", "1s", "--heartbeat-epsilon", "1s"}, {}, "--heartbeat-epsilon"},
      {{"--max-connections", "0"}, {}, "--max-connections"},
      {{"--listen", "127.0.0.1:4300", "--admin-listen", "127.0.0.1:4300"}, {}, "own port"},
      {{"--tls-cert", "/x.pem"}, {}, "choose one"},
      {{"--tls-openssl-records"}, {}, "--tls-openssl-records has no effect with --insecure"},
      {{"--log-buffer", "lots"}, {}, "--log-buffer"},
      {{}, {"DISPATCHD_GRACE_MULTIPLIER=zero"}, "DISPATCHD_GRACE_MULTIPLIER"},
      {{"--no-such-flag"}, {}, "unknown flag --no-such-flag"},
  };
  for (const auto& c : cases) {
    std::vector<std::string> argv = {DISPATCHD_BIN, "--insecure", "--admin-listen=", "--in-memory"};
    argv.insert(argv.end(), c.args.begin(), c.args.end());
    std::vector<std::string> env = c.env;
    env.push_back("PATH=/usr/bin:/bin");
    ChildProcess p(argv, env);
    auto status = p.wait(30s);
    ASSERT_TRUE(status.has_value()) << c.expect;
    EXPECT_EQ(*status, 2) << c.expect << "\n" << p.output();
    EXPECT_NE(p.output().find(c.expect), std::string::npos) << p.output();
  }
}

}  // namespace
