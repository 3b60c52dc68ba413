// The Assignments and Tasks streams (docs/behaviour.md §8), the Session select rule
// (docs/architecture.md, "The select rule"), slow consumers (docs/behaviour.md §0.3) and
// abandoned sessions, judged over the wire by the real gRPC C++ client. The store is written on
// the server thread (server.call) the way the orchestrator and scheduler would write it;
// everything the dispatcher does is observed through grpc++ streams, plus a few counters read
// on the server thread.

#include <google/protobuf/util/message_differencer.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <future>
#include <latch>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "dispatcher.grpc.pb.h"
#include "support/agent.hpp"
#include "support/test_server.hpp"

namespace {

namespace api = docker::swarmkit::v1;
using dispatchd::store::WriteTx;
using namespace dispatchd::test;  // the agent and the setup helpers (support/agent.hpp)
using StoreStatus = dispatchd::grpc::Status;
using StoreCode = dispatchd::grpc::StatusCode;
using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

// Bounds every stream of a test, so that a missing message fails the test instead of hanging it.
constexpr auto kStreamDeadline = 60s;

dispatchd::app::Options options_with_batch_wait(std::chrono::milliseconds wait) {
  auto o = TestServer::default_options();
  o.dispatcher.assignment_batch_wait = wait;
  return o;
}

// A channel with a connection of its own (grpc++ otherwise shares one between channels whose
// arguments are equal).
std::shared_ptr<grpc::Channel> make_channel(const TestServer& server,
                                            grpc::ChannelArguments args = {}) {
  return channel_to(server, /*own_connection=*/true, std::move(args));
}

// ---- the store, written on the server thread -------------------------------------------------

template <class F>
::testing::AssertionResult write_store(TestServer& server, F&& f) {
  StoreStatus st = server.call([&] {
    return server.server().store().update([&](WriteTx& tx) -> StoreStatus { return f(tx); });
  });
  if (st.is_ok()) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "store update failed: " << st.message();
}

// All of them, in order; the first failure wins.
StoreStatus all_ok(std::initializer_list<StoreStatus> results) {
  for (const auto& st : results) {
    if (!st.is_ok()) return st;
  }
  return StoreStatus::ok();
}

template <class F>
::testing::AssertionResult modify_task(TestServer& server, const std::string& id, F&& change) {
  return write_store(server, [&](WriteTx& tx) {
    auto t = tx.task(id);
    if (!t) return StoreStatus(StoreCode::not_found, "no task " + id);
    api::Task copy = *t;
    change(copy);
    return tx.update(std::move(copy));
  });
}

::testing::AssertionResult set_desired_state(TestServer& server, const std::string& id,
                                             api::TaskState desired) {
  return modify_task(server, id, [&](api::Task& t) { t.set_desired_state(desired); });
}

api::Task make_task(const std::string& id, const std::string& node_id, api::TaskState state) {
  api::Task t;
  t.set_id(id);
  t.set_node_id(node_id);
  t.set_service_id("service-1");
  t.set_slot(1);
  t.set_desired_state(api::RUNNING);
  t.mutable_status()->set_state(state);
  t.mutable_spec()->mutable_container()->set_image("busybox:latest");
  return t;
}

// ---- reading AssignmentsMessages -------------------------------------------------------------

std::string key_of(const api::AssignmentChange& c) {
  const auto& a = c.assignment();
  switch (a.item_case()) {
    case api::Assignment::kTask:
      return "task/" + a.task().id();
    case api::Assignment::kSecret:
      return "secret/" + a.secret().id();
    case api::Assignment::kConfig:
      return "config/" + a.config().id();
    case api::Assignment::kVolume:
      return "volume/" + a.volume().id();
    default:
      return "empty/";
  }
}

std::map<std::string, api::AssignmentChange> changes_by_key(const api::AssignmentsMessage& m) {
  std::map<std::string, api::AssignmentChange> out;
  for (const auto& c : m.changes())
    out.emplace(key_of(c), c);
  return out;
}

std::set<std::string> keys_of(const api::AssignmentsMessage& m) {
  std::set<std::string> out;
  for (const auto& c : m.changes())
    out.insert(key_of(c));
  return out;
}

std::string summary(const api::AssignmentsMessage& m) {
  std::string s = api::AssignmentsMessage::Type_Name(m.type()) + " \"" + m.applies_to() + "\"->\"" +
                  m.results_in() + "\" [";
  for (const auto& c : m.changes()) {
    s += (c.action() == api::AssignmentChange::REMOVE ? " -" : " +") + key_of(c);
  }
  return s + " ]";
}

template <class Msg>
::testing::AssertionResult equal_ignoring_meta(const Msg& expected, const Msg& actual) {
  google::protobuf::util::MessageDifferencer d;
  d.IgnoreField(Msg::descriptor()->FindFieldByName("meta"));
  std::string diff;
  d.ReportDifferencesToString(&diff);
  if (d.Compare(expected, actual)) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << diff;
}

// A REMOVE carries the object's ID and nothing else.
template <class Msg>
::testing::AssertionResult id_only(const Msg& m) {
  Msg expected;
  expected.set_id(m.id());
  if (google::protobuf::util::MessageDifferencer::Equals(expected, m)) {
    return ::testing::AssertionSuccess();
  }
  return ::testing::AssertionFailure() << "more than the ID: " << m.ShortDebugString();
}

std::set<std::string> task_ids(const api::TasksMessage& m) {
  std::set<std::string> out;
  for (const auto& t : m.tasks())
    out.insert(t.id());
  return out;
}

using Keys = std::set<std::string>;

// ---- fixture ---------------------------------------------------------------------------------

class DispatcherAssignmentsTest : public ::testing::Test {
 protected:
  // A short quiet period keeps the tests fast; DispatcherAssignmentsDefaultTimingTest keeps
  // SwarmKit's 100 ms.
  DispatcherAssignmentsTest() : DispatcherAssignmentsTest(options_with_batch_wait(20ms)) {}
  explicit DispatcherAssignmentsTest(dispatchd::app::Options options)
      : server_(std::move(options)),
        channel_(make_channel(server_)),
        stub_(api::Dispatcher::NewStub(channel_)) {}

  // Opens the node's session and its Assignments stream, and reads the COMPLETE message.
  std::unique_ptr<ClientStream<api::AssignmentsMessage>> follow(const std::string& node_id,
                                                                api::AssignmentsMessage& first) {
    sessions_.push_back(open_session(*stub_, node_id, kStreamDeadline));
    auto stream = open_assignments(*stub_, node_id, sessions_.back()->id(), kStreamDeadline);
    if (!stream->read(first)) {
      ADD_FAILURE() << "no first AssignmentsMessage for " << node_id << ": "
                    << describe(stream->finish());
    }
    return stream;
  }

  TestServer server_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<api::Dispatcher::Stub> stub_;
  std::vector<std::unique_ptr<Registered>> sessions_;
};

class DispatcherAssignmentsDefaultTimingTest : public DispatcherAssignmentsTest {
 protected:
  DispatcherAssignmentsDefaultTimingTest()
      : DispatcherAssignmentsTest(TestServer::default_options()) {}
};

using DispatcherTasksTest = DispatcherAssignmentsTest;

// ---- Assignments: the first message ----------------------------------------------------------

TEST_F(DispatcherAssignmentsTest, NodeWithoutTasksGetsAnEmptyCompleteMessageFirst) {
  api::AssignmentsMessage m;
  auto stream = follow("node-empty", m);
  EXPECT_EQ(m.type(), api::AssignmentsMessage::COMPLETE);
  EXPECT_EQ(m.applies_to(), "");
  EXPECT_EQ(m.results_in(), "1");
  EXPECT_EQ(m.changes_size(), 0) << summary(m);
}

TEST_F(DispatcherAssignmentsTest, CompleteMessageCarriesTheNodesTasksWithTheirSecretsAndConfigs) {
  const std::string node = "node-a";
  api::Secret secret;
  secret.set_id("secret-1");
  secret.mutable_spec()->mutable_annotations()->set_name("db-password");
  secret.mutable_spec()->set_data("hunter2");
  api::Config config;
  config.set_id("config-1");
  config.mutable_spec()->mutable_annotations()->set_name("app.conf");
  config.mutable_spec()->set_data("listen = 8080\n");

  api::Task with_deps = make_task("task-deps", node, api::ASSIGNED);
  auto* container = with_deps.mutable_spec()->mutable_container();
  auto* sref = container->add_secrets();
  sref->set_secret_id("secret-1");
  sref->set_secret_name("db-password");
  sref->mutable_file()->set_name("/run/secrets/db-password");
  auto* cref = container->add_configs();
  cref->set_config_id("config-1");
  cref->set_config_name("app.conf");
  cref->mutable_file()->set_name("/etc/app.conf");
  const api::Task running = make_task("task-running", node, api::RUNNING);
  const api::Task pending = make_task("task-pending", node, api::PENDING);  // not the node's yet
  const api::Task foreign = make_task("task-foreign", "node-b", api::ASSIGNED);
  ASSERT_TRUE(write_store(server_, [&](WriteTx& tx) {
    return all_ok({tx.create(secret), tx.create(config), tx.create(with_deps), tx.create(running),
                   tx.create(pending), tx.create(foreign)});
  }));

  api::AssignmentsMessage m;
  auto stream = follow(node, m);
  EXPECT_EQ(m.type(), api::AssignmentsMessage::COMPLETE);
  EXPECT_EQ(m.applies_to(), "");
  EXPECT_EQ(m.results_in(), "1");
  auto changes = changes_by_key(m);
  EXPECT_EQ(changes.size(), static_cast<std::size_t>(m.changes_size())) << summary(m);
  EXPECT_EQ(keys_of(m),
            (Keys{"secret/secret-1", "config/config-1", "task/task-deps", "task/task-running"}))
      << summary(m);
  for (const auto& c : m.changes()) {
    EXPECT_EQ(c.action(), api::AssignmentChange::UPDATE) << key_of(c);
  }
  if (changes.contains("secret/secret-1")) {
    EXPECT_TRUE(equal_ignoring_meta(secret, changes["secret/secret-1"].assignment().secret()));
  }
  if (changes.contains("config/config-1")) {
    EXPECT_TRUE(equal_ignoring_meta(config, changes["config/config-1"].assignment().config()));
  }
  if (changes.contains("task/task-deps")) {
    EXPECT_TRUE(equal_ignoring_meta(with_deps, changes["task/task-deps"].assignment().task()));
  }
  if (changes.contains("task/task-running")) {
    EXPECT_TRUE(equal_ignoring_meta(running, changes["task/task-running"].assignment().task()));
  }
}

// ---- Assignments: incremental messages -------------------------------------------------------

TEST_F(DispatcherAssignmentsTest, StoreChangesArriveAsChainedIncrementalMessages) {
  const std::string node = "node-chain";
  api::Secret secret;
  secret.set_id("secret-chain");
  secret.mutable_spec()->mutable_annotations()->set_name("token");
  secret.mutable_spec()->set_data("s3cr3t");
  api::Task task1 = make_task("task-1", node, api::ASSIGNED);
  task1.mutable_spec()->mutable_container()->add_secrets()->set_secret_id("secret-chain");
  const api::Task task2 = make_task("task-2", node, api::ASSIGNED);
  ASSERT_TRUE(write_store(server_, [&](WriteTx& tx) {
    return all_ok({tx.create(secret), tx.create(task1), tx.create(task2)});
  }));

  api::AssignmentsMessage m;
  auto stream = follow(node, m);
  ASSERT_EQ(keys_of(m), (Keys{"secret/secret-chain", "task/task-1", "task/task-2"})) << summary(m);

  // A desired-state change re-sends the whole task, and only that task.
  ASSERT_TRUE(set_desired_state(server_, "task-1", api::SHUTDOWN));
  ASSERT_TRUE(stream->read(m));
  EXPECT_EQ(m.type(), api::AssignmentsMessage::INCREMENTAL);
  EXPECT_EQ(m.applies_to(), "1");
  EXPECT_EQ(m.results_in(), "2");
  ASSERT_EQ(keys_of(m), (Keys{"task/task-1"})) << summary(m);
  EXPECT_EQ(m.changes(0).action(), api::AssignmentChange::UPDATE);
  api::Task expected = task1;
  expected.set_desired_state(api::SHUTDOWN);
  EXPECT_TRUE(equal_ignoring_meta(expected, m.changes(0).assignment().task()));

  // The next message applies to the previous one's result.
  ASSERT_TRUE(set_desired_state(server_, "task-1", api::REMOVE));
  ASSERT_TRUE(stream->read(m));
  EXPECT_EQ(m.type(), api::AssignmentsMessage::INCREMENTAL);
  EXPECT_EQ(m.applies_to(), "2");
  EXPECT_EQ(m.results_in(), "3");
  ASSERT_EQ(keys_of(m), (Keys{"task/task-1"})) << summary(m);
  EXPECT_EQ(m.changes(0).action(), api::AssignmentChange::UPDATE);
  EXPECT_EQ(m.changes(0).assignment().task().desired_state(), api::REMOVE);

  // A deleted task is removed by ID alone; its last user gone, so is its secret.
  ASSERT_TRUE(write_store(server_, [&](WriteTx& tx) { return tx.remove_task("task-1"); }));
  ASSERT_TRUE(stream->read(m));
  EXPECT_EQ(m.type(), api::AssignmentsMessage::INCREMENTAL);
  EXPECT_EQ(m.applies_to(), "3");
  EXPECT_EQ(m.results_in(), "4");
  EXPECT_EQ(keys_of(m), (Keys{"task/task-1", "secret/secret-chain"})) << summary(m);
  for (const auto& c : m.changes()) {
    EXPECT_EQ(c.action(), api::AssignmentChange::REMOVE) << key_of(c);
    if (c.assignment().has_task()) {
      EXPECT_TRUE(id_only(c.assignment().task()));
    }
    if (c.assignment().has_secret()) {
      EXPECT_TRUE(id_only(c.assignment().secret()));
    }
  }

  ASSERT_TRUE(write_store(server_, [&](WriteTx& tx) { return tx.remove_task("task-2"); }));
  ASSERT_TRUE(stream->read(m));
  EXPECT_EQ(m.applies_to(), "4");
  EXPECT_EQ(m.results_in(), "5");
  ASSERT_EQ(keys_of(m), (Keys{"task/task-2"})) << summary(m);
  EXPECT_EQ(m.changes(0).action(), api::AssignmentChange::REMOVE);
  EXPECT_TRUE(id_only(m.changes(0).assignment().task()));
}

TEST_F(DispatcherAssignmentsTest, TaskCreatedForTheNodeIsNotSentUntilItsNextUpdate) {
  const std::string node = "node-create";
  ASSERT_TRUE(write_store(
      server_, [&](WriteTx& tx) { return tx.create(make_task("task-old", node, api::ASSIGNED)); }));
  api::AssignmentsMessage m;
  auto stream = follow(node, m);
  ASSERT_EQ(keys_of(m), (Keys{"task/task-old"})) << summary(m);

  // Creations are not watched (docs/behaviour.md §8.1): the scheduler assigns tasks by an update.
  ASSERT_TRUE(write_store(
      server_, [&](WriteTx& tx) { return tx.create(make_task("task-new", node, api::ASSIGNED)); }));
  ASSERT_TRUE(set_desired_state(server_, "task-old", api::SHUTDOWN));
  ASSERT_TRUE(stream->read(m));
  EXPECT_EQ(m.applies_to(), "1");
  EXPECT_EQ(m.results_in(), "2");
  EXPECT_EQ(keys_of(m), (Keys{"task/task-old"})) << summary(m);

  ASSERT_TRUE(set_desired_state(server_, "task-new", api::SHUTDOWN));
  ASSERT_TRUE(stream->read(m));
  EXPECT_EQ(m.applies_to(), "2");
  EXPECT_EQ(m.results_in(), "3");
  ASSERT_EQ(keys_of(m), (Keys{"task/task-new"})) << summary(m);
  EXPECT_EQ(m.changes(0).action(), api::AssignmentChange::UPDATE);
  EXPECT_EQ(m.changes(0).assignment().task().desired_state(), api::SHUTDOWN);
}

TEST_F(DispatcherAssignmentsTest, StatusOnlyChangeOfARunningTaskSendsNothing) {
  const std::string node = "node-status";
  ASSERT_TRUE(write_store(server_, [&](WriteTx& tx) {
    return all_ok({tx.create(make_task("task-running", node, api::RUNNING)),
                   tx.create(make_task("task-assigned", node, api::ASSIGNED))});
  }));
  api::AssignmentsMessage m;
  auto stream = follow(node, m);
  ASSERT_EQ(keys_of(m), (Keys{"task/task-running", "task/task-assigned"})) << summary(m);

  // What the agent reports about its own task is not echoed back to it.
  for (int i = 1; i <= 3; ++i) {
    ASSERT_TRUE(modify_task(server_, "task-running", [&](api::Task& t) {
      t.mutable_status()->set_message("still running " + std::to_string(i));
      t.mutable_status()->mutable_timestamp()->set_seconds(1700000000 + i);
    }));
  }
  ASSERT_TRUE(set_desired_state(server_, "task-assigned", api::SHUTDOWN));
  ASSERT_TRUE(stream->read(m));
  EXPECT_EQ(m.applies_to(), "1");
  EXPECT_EQ(m.results_in(), "2");
  EXPECT_EQ(keys_of(m), (Keys{"task/task-assigned"})) << summary(m);
}

TEST_F(DispatcherAssignmentsTest, ManyModificationsAreSplitIntoMessagesOfAtMostOneHundred) {
  const std::string node = "node-bulk";
  constexpr int kTasks = 250;
  auto id_of = [](int i) {
    std::string n = std::to_string(i);
    return "bulk-" + std::string(3 - n.size(), '0') + n;
  };
  ASSERT_TRUE(write_store(server_, [&](WriteTx& tx) {
    for (int i = 0; i < kTasks; ++i) {
      if (auto st = tx.create(make_task(id_of(i), node, api::ASSIGNED)); !st.is_ok()) return st;
    }
    return StoreStatus::ok();
  }));
  api::AssignmentsMessage m;
  auto stream = follow(node, m);
  EXPECT_EQ(m.changes_size(), kTasks);  // the COMPLETE message is not split

  std::uint64_t sequence = 1;
  // Reads until every task has arrived with `desired`; returns the sizes of the messages.
  auto read_all = [&](api::TaskState desired) {
    std::set<std::string> seen;
    std::vector<int> sizes;
    api::AssignmentsMessage msg;
    while (seen.size() < static_cast<std::size_t>(kTasks)) {
      if (!stream->read(msg)) {
        ADD_FAILURE() << "stream ended after " << seen.size() << " of " << kTasks << " tasks";
        break;
      }
      EXPECT_EQ(msg.type(), api::AssignmentsMessage::INCREMENTAL);
      EXPECT_EQ(msg.applies_to(), std::to_string(sequence));
      EXPECT_EQ(msg.results_in(), std::to_string(sequence + 1));
      ++sequence;
      EXPECT_LE(msg.changes_size(), 100) << "modificationBatchLimit";
      sizes.push_back(msg.changes_size());
      for (const auto& c : msg.changes()) {
        EXPECT_TRUE(c.assignment().has_task()) << key_of(c);
        EXPECT_EQ(c.action(), api::AssignmentChange::UPDATE);
        EXPECT_EQ(c.assignment().task().desired_state(), desired) << key_of(c);
        EXPECT_TRUE(seen.insert(c.assignment().task().id()).second) << key_of(c) << " sent twice";
      }
    }
    return sizes;
  };

  // 250 changes committed at once: 100, 100, then the rest after the quiet period.
  ASSERT_TRUE(write_store(server_, [&](WriteTx& tx) {
    for (int i = 0; i < kTasks; ++i) {
      api::Task t = *tx.task(id_of(i));
      t.set_desired_state(api::SHUTDOWN);
      if (auto st = tx.update(std::move(t)); !st.is_ok()) return st;
    }
    return StoreStatus::ok();
  }));
  EXPECT_EQ(read_all(api::SHUTDOWN), (std::vector<int>{100, 100, 50}));

  // 250 transactions in quick succession: however they are batched, every one arrives.
  for (int i = 0; i < kTasks; ++i)
    ASSERT_TRUE(set_desired_state(server_, id_of(i), api::REMOVE));
  auto sizes = read_all(api::REMOVE);
  EXPECT_GE(sizes.size(), 3u);
}

TEST_F(DispatcherAssignmentsDefaultTimingTest, ModificationsWithinTheQuietPeriodShareOneMessage) {
  ASSERT_EQ(
      server_.call([&] { return server_.server().dispatcher().config().assignment_batch_wait; }),
      std::chrono::nanoseconds(100ms));
  const std::string node = "node-quiet";
  ASSERT_TRUE(write_store(server_, [&](WriteTx& tx) {
    return all_ok({tx.create(make_task("quiet-1", node, api::ASSIGNED)),
                   tx.create(make_task("quiet-2", node, api::ASSIGNED)),
                   tx.create(make_task("quiet-3", node, api::ASSIGNED))});
  }));
  api::AssignmentsMessage m;
  auto stream = follow(node, m);
  ASSERT_EQ(m.changes_size(), 3) << summary(m);

  // Three modifications 30 ms apart: each restarts the 100 ms quiet period, so one message
  // carries all three, sent no sooner than 100 ms after the last one.
  std::vector<Clock::time_point> begin, end;
  for (int i = 1; i <= 3; ++i) {
    if (i > 1) std::this_thread::sleep_for(30ms);  // spacing the stimulus, not synchronisation
    begin.push_back(Clock::now());
    ASSERT_TRUE(set_desired_state(server_, "quiet-" + std::to_string(i), api::SHUTDOWN));
    end.push_back(Clock::now());
  }
  ASSERT_TRUE(stream->read(m));
  const auto received = Clock::now();
  // Only if the machine kept the spacing under the quiet period is one message required.
  const bool spaced_within = end[1] - begin[0] < 100ms && end[2] - begin[1] < 100ms;
  if (spaced_within) {
    EXPECT_EQ(m.applies_to(), "1");
    EXPECT_EQ(m.results_in(), "2");
    EXPECT_EQ(keys_of(m), (Keys{"task/quiet-1", "task/quiet-2", "task/quiet-3"})) << summary(m);
    EXPECT_GE(received - begin[2], 100ms) << "sent before the quiet period had passed";
  } else {
    std::set<std::string> seen = keys_of(m);
    while (seen.size() < 3 && stream->read(m)) {
      for (const auto& k : keys_of(m))
        seen.insert(k);
    }
    EXPECT_EQ(seen.size(), 3u);
    std::printf("note: modifications were not spaced within 100 ms; batching not judged\n");
  }

  // A modification after a quiet period starts the next message.
  ASSERT_TRUE(set_desired_state(server_, "quiet-1", api::REMOVE));
  const auto written = Clock::now();
  ASSERT_TRUE(stream->read(m));
  EXPECT_GE(Clock::now() - written, 95ms);
  EXPECT_EQ(keys_of(m), (Keys{"task/quiet-1"})) << summary(m);
  if (spaced_within) {
    EXPECT_EQ(m.applies_to(), "2");
    EXPECT_EQ(m.results_in(), "3");
  }
}

// ---- Assignments: errors ---------------------------------------------------------------------

TEST_F(DispatcherAssignmentsTest, AssignmentsWithoutTheCurrentSessionIsInvalidArgument) {
  const std::string node = "node-session";
  auto first = open_session(*stub_, node, kStreamDeadline);
  ASSERT_FALSE(first->id().empty());
  // Registering again supersedes the first session ID.
  auto second = open_session(*stub_, node, kStreamDeadline);
  ASSERT_FALSE(second->id().empty());
  ASSERT_NE(first->id(), second->id());

  for (const std::string& sid : {std::string(), std::string("not-a-session"), first->id()}) {
    SCOPED_TRACE("session_id \"" + sid + "\"");
    auto stream = open_assignments(*stub_, node, sid, kStreamDeadline);
    api::AssignmentsMessage m;
    EXPECT_FALSE(stream->read(m)) << "a message before the error: " << summary(m);
    auto st = stream->finish();
    EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << describe(st);
    EXPECT_EQ(st.error_message(), "session invalid");

    auto tasks = open_tasks(*stub_, node, sid, kStreamDeadline);
    api::TasksMessage tm;
    EXPECT_FALSE(tasks->read(tm)) << "a Tasks message before the error";
    st = tasks->finish();
    EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << describe(st);
    EXPECT_EQ(st.error_message(), "session invalid");
  }
  // The current session still works.
  auto stream = open_assignments(*stub_, node, second->id(), kStreamDeadline);
  api::AssignmentsMessage m;
  EXPECT_TRUE(stream->read(m));
  EXPECT_EQ(m.type(), api::AssignmentsMessage::COMPLETE);
}

TEST_F(DispatcherAssignmentsTest, AssignmentsForAnUnregisteredNodeIsNotFound) {
  for (const std::string& sid : {std::string(), std::string("some-session")}) {
    SCOPED_TRACE("session_id \"" + sid + "\"");
    auto stream = open_assignments(*stub_, "node-never-registered", sid, kStreamDeadline);
    api::AssignmentsMessage m;
    EXPECT_FALSE(stream->read(m)) << "a message before the error: " << summary(m);
    auto st = stream->finish();
    EXPECT_EQ(st.error_code(), grpc::StatusCode::NOT_FOUND) << describe(st);
    EXPECT_EQ(st.error_message(), "node not registered");
  }
}

TEST_F(DispatcherAssignmentsTest, AssignmentsAndTasksEndWithCanceledWhenTheDispatcherStops) {
  const std::string node = "node-stop";
  ASSERT_TRUE(write_store(server_, [&](WriteTx& tx) {
    return tx.create(make_task("task-stop", node, api::ASSIGNED));
  }));
  api::AssignmentsMessage m;
  auto assignments = follow(node, m);
  ASSERT_EQ(m.changes_size(), 1);
  auto tasks = open_tasks(*stub_, node, sessions_.back()->id(), kStreamDeadline);
  api::TasksMessage tm;
  ASSERT_TRUE(tasks->read(tm));

  std::promise<bool> stopped;
  std::thread stopper([&] { stopped.set_value(server_.stop()); });
  const bool more = assignments->read(m);
  const auto st = assignments->finish();
  const bool more_tasks = tasks->read(tm);
  const auto tasks_st = tasks->finish();
  stopper.join();

  EXPECT_FALSE(more) << "unexpected message: " << summary(m);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::CANCELLED) << describe(st);
  EXPECT_EQ(st.error_message(), "context canceled");
  EXPECT_FALSE(more_tasks);
  EXPECT_EQ(tasks_st.error_code(), grpc::StatusCode::CANCELLED) << describe(tasks_st);
  EXPECT_EQ(tasks_st.error_message(), "context canceled");
  EXPECT_TRUE(stopped.get_future().get()) << "the server did not stop completely";
}

// ---- Tasks (deprecated) ----------------------------------------------------------------------

TEST_F(DispatcherTasksTest, ListsTheNodesAssignedTasksThenTheFullListAfterEachChange) {
  const std::string node = "node-tasks";
  ASSERT_TRUE(write_store(server_, [&](WriteTx& tx) {
    return all_ok({tx.create(make_task("tk-assigned", node, api::ASSIGNED)),
                   tx.create(make_task("tk-running", node, api::RUNNING)),
                   tx.create(make_task("tk-pending", node, api::PENDING)),
                   tx.create(make_task("tk-foreign", "node-other", api::ASSIGNED))});
  }));
  auto session = open_session(*stub_, node, kStreamDeadline);
  ASSERT_FALSE(session->id().empty());
  auto stream = open_tasks(*stub_, node, session->id(), kStreamDeadline);

  api::TasksMessage m;
  ASSERT_TRUE(stream->read(m));
  EXPECT_EQ(task_ids(m), (Keys{"tk-assigned", "tk-running"}));

  ASSERT_TRUE(set_desired_state(server_, "tk-assigned", api::SHUTDOWN));
  ASSERT_TRUE(stream->read(m));
  EXPECT_EQ(task_ids(m), (Keys{"tk-assigned", "tk-running"}));
  for (const auto& t : m.tasks()) {
    if (t.id() == "tk-assigned") {
      EXPECT_EQ(t.desired_state(), api::SHUTDOWN);
    }
  }

  // Unlike Assignments, Tasks watches creations.
  ASSERT_TRUE(write_store(
      server_, [&](WriteTx& tx) { return tx.create(make_task("tk-new", node, api::ASSIGNED)); }));
  ASSERT_TRUE(stream->read(m));
  EXPECT_EQ(task_ids(m), (Keys{"tk-assigned", "tk-new", "tk-running"}));

  ASSERT_TRUE(write_store(server_, [&](WriteTx& tx) { return tx.remove_task("tk-running"); }));
  ASSERT_TRUE(stream->read(m));
  EXPECT_EQ(task_ids(m), (Keys{"tk-assigned", "tk-new"}));
}

// ---- Session: the select rule ----------------------------------------------------------------

std::uint64_t round_in(const std::string& s, const std::string& prefix) {
  if (!s.starts_with(prefix)) return 0;
  return std::stoull(s.substr(prefix.size()));
}

// Every round makes the node, the manager list and the cluster keys change in the same turn of
// the server's loop; the session must lose none of them and always deliver the last.
TEST(DispatcherSelectRuleTest, SessionLosesNothingWhenEverySourceIsReadyAtOnce) {
  auto options = TestServer::default_options();
  options.dispatcher.watch_buffer = 1 << 20;  // about select, not about slow consumers
  TestServer server(options);
  auto channel = make_channel(server);
  auto stub = api::Dispatcher::NewStub(channel);
  const std::string node = "node-select";
  auto session = open_session(*stub, node, kStreamDeadline);
  ASSERT_FALSE(session->id().empty());

  constexpr std::uint64_t kRounds = 2000;
  struct Values {
    std::uint64_t node = 0, managers = 0, keys = 0;
  };
  auto values_of = [](const api::SessionMessage& m) {
    Values v;
    v.node = round_in(m.node().spec().annotations().name(), "round-");
    if (m.managers_size() == 1)
      v.managers = round_in(m.managers(0).peer().node_id(), "manager-round-");
    if (m.network_bootstrap_keys_size() == 1) v.keys = m.network_bootstrap_keys(0).lamport_time();
    return v;
  };

  // The agent reads on its own thread while the rounds are written.
  std::vector<char> node_seen(kRounds + 1), managers_seen(kRounds + 1), keys_seen(kRounds + 1);
  std::vector<std::string> violations;
  Values last = values_of(session->first);
  std::uint64_t messages = 0;
  std::promise<void> reader_done;
  auto reader_finished = reader_done.get_future();
  std::thread reader([&] {
    api::SessionMessage m;
    while (session->stream->read(m)) {
      ++messages;
      Values v = values_of(m);
      if (v.node < last.node || v.managers < last.managers || v.keys < last.keys) {
        if (violations.size() < 10) {
          violations.push_back("message " + std::to_string(messages) + ": node " +
                               std::to_string(last.node) + "->" + std::to_string(v.node) +
                               " managers " + std::to_string(last.managers) + "->" +
                               std::to_string(v.managers) + " keys " + std::to_string(last.keys) +
                               "->" + std::to_string(v.keys));
        }
      }
      if (v.node <= kRounds) node_seen[v.node] = 1;
      if (v.managers <= kRounds) managers_seen[v.managers] = 1;
      if (v.keys <= kRounds) keys_seen[v.keys] = 1;
      last = v;
      if (v.node == kRounds && v.managers == kRounds && v.keys == kRounds) break;
    }
    reader_done.set_value();
  });
  struct JoinReader {
    std::thread& t;
    ClientStream<api::SessionMessage>& s;
    std::future<void>& done;
    ~JoinReader() {
      if (done.wait_for(0s) != std::future_status::ready) s.ctx->TryCancel();
      t.join();
    }
  } join_reader{reader, *session->stream, reader_finished};

  for (std::uint64_t r = 1; r <= kRounds; ++r) {
    bool ok = server.call([&] {
      auto change_node = [&](WriteTx& tx) {
        auto n = tx.node(node);
        if (!n) return StoreStatus(StoreCode::not_found, "no node");
        api::Node copy = *n;
        copy.mutable_spec()->mutable_annotations()->set_name("round-" + std::to_string(r));
        return tx.update(std::move(copy));
      };
      auto change_managers = [&](WriteTx& tx) {
        api::WeightedPeer p;
        p.mutable_peer()->set_node_id("manager-round-" + std::to_string(r));
        p.mutable_peer()->set_addr("10.0.0.1:4242");
        p.set_weight(10);
        tx.set_managers({p});
        return StoreStatus::ok();
      };
      auto change_keys = [&](WriteTx& tx) {
        api::Cluster c = *tx.cluster();
        c.clear_network_bootstrap_keys();
        auto* k = c.add_network_bootstrap_keys();
        k->set_subsystem("networking:gossip");
        k->set_key("key-" + std::to_string(r));
        k->set_lamport_time(r);
        return tx.update(std::move(c));
      };
      auto& store = server.server().store();
      if (r % 2 == 0) {  // one transaction
        return store
            .update([&](WriteTx& tx) {
              return all_ok({change_node(tx), change_managers(tx), change_keys(tx)});
            })
            .is_ok();
      }
      // three transactions, in the other order
      return store.update(change_keys).is_ok() && store.update(change_managers).is_ok() &&
             store.update(change_node).is_ok();
    });
    ASSERT_TRUE(ok) << "round " << r;
  }
  ASSERT_EQ(reader_finished.wait_for(30s), std::future_status::ready)
      << "final state not seen; last message: node " << last.node << " managers " << last.managers
      << " keys " << last.keys;

  EXPECT_TRUE(violations.empty()) << violations.size()
                                  << " went backwards, first: " << violations.front();
  EXPECT_EQ(last.node, kRounds);
  EXPECT_EQ(last.managers, kRounds);
  EXPECT_EQ(last.keys, kRounds);
  // Every node update and every cluster update produces a message (docs/behaviour.md §4.8): no
  // round's value may be skipped for any source.
  auto missing = [&](const std::vector<char>& seen) {
    std::string out;
    int n = 0;
    for (std::uint64_t r = 1; r <= kRounds; ++r) {
      if (!seen[r] && n++ < 5) {
        out += ' ';
        out += std::to_string(r);
      }
    }
    return n == 0 ? std::string() : std::to_string(n) + " rounds missing:" + out;
  };
  EXPECT_EQ(missing(node_seen), "") << "node";
  EXPECT_EQ(missing(managers_seen), "") << "managers";
  EXPECT_EQ(missing(keys_seen), "") << "network bootstrap keys";
  EXPECT_GE(messages, 3 * kRounds - 1);
}

// ---- Session: a consumer that stops reading (docs/behaviour.md §0.3) --------------------------

TEST(DispatcherSlowConsumerTest, StalledSessionIsCutOffWhileAnotherKeepsReceivingEveryUpdate) {
  auto options = TestServer::default_options();
  options.dispatcher.watch_buffer = 8;
  TestServer server(options);
  // Big messages: every SessionMessage carries the root CA, far larger than the stalled
  // client's window.
  std::string root_ca = "-----BEGIN CERTIFICATE-----\n";
  while (root_ca.size() < 384 * 1024)
    root_ca += std::string(64, 'M') + "\n";
  root_ca += "-----END CERTIFICATE-----\n";
  auto set_keys = [&](std::uint64_t lamport) {
    return write_store(server, [&](WriteTx& tx) {
      api::Cluster c = *tx.cluster();
      c.mutable_root_ca()->set_ca_cert(root_ca);
      c.clear_network_bootstrap_keys();
      auto* k = c.add_network_bootstrap_keys();
      k->set_subsystem("networking:gossip");
      k->set_key("key");
      k->set_lamport_time(lamport);
      return tx.update(std::move(c));
    });
  };
  ASSERT_TRUE(set_keys(0));

  auto fast_channel = make_channel(server);
  auto fast_stub = api::Dispatcher::NewStub(fast_channel);
  grpc::ChannelArguments small_window;
  small_window.SetInt(GRPC_ARG_HTTP2_BDP_PROBE, 0);
  small_window.SetInt(GRPC_ARG_HTTP2_STREAM_LOOKAHEAD_BYTES, 16 * 1024);
  auto slow_channel = make_channel(server, small_window);
  auto slow_stub = api::Dispatcher::NewStub(slow_channel);

  auto fast = open_session(*fast_stub, "node-fast", kStreamDeadline);
  ASSERT_FALSE(fast->id().empty());
  EXPECT_EQ(fast->first.rootca(), root_ca);
  // The stalled agent opens its session and never reads.
  ClientStream<api::SessionMessage> stalled;
  stalled.ctx = context(as_node("node-stalled"), kStreamDeadline);
  stalled.reader = slow_stub->Session(stalled.ctx.get(), api::SessionRequest{});
  auto& dispatcher = server.server().dispatcher();
  ASSERT_TRUE(server.eventually(
      [&] { return dispatcher.open_sessions() == 2 && dispatcher.cluster_watchers() == 2; }));
  const auto overflows_before = server.call([&] { return dispatcher.stats().watch_overflows; });

  constexpr std::uint64_t kUpdates = 100;
  for (std::uint64_t i = 1; i <= kUpdates; ++i) {
    ASSERT_TRUE(set_keys(i));
    api::SessionMessage m;
    ASSERT_TRUE(fast->stream->read(m))
        << "the reading session ended at update " << i << ": " << describe(fast->stream->finish());
    ASSERT_EQ(m.network_bootstrap_keys_size(), 1);
    EXPECT_EQ(m.network_bootstrap_keys(0).lamport_time(), i) << "every update, in order";
    EXPECT_EQ(m.rootca().size(), root_ca.size());
  }
  // The stalled subscription was cut off, so nothing is kept for it; the reader's is intact.
  EXPECT_TRUE(server.eventually([&] { return dispatcher.cluster_watchers() == 1; }))
      << server.call([&] { return dispatcher.cluster_watchers(); }) << " cluster watchers";

  // When the stalled agent reads at last, it gets what was in flight, then UNAVAILABLE.
  int received = 0;
  const auto st = stalled.finish(&received);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::UNAVAILABLE) << describe(st);
  EXPECT_LE(received, 1 + 8) << "more than the buffer's worth reached the stalled agent";
  EXPECT_TRUE(
      server.eventually([&] { return dispatcher.stats().watch_overflows > overflows_before; }));
  EXPECT_TRUE(server.eventually([&] { return dispatcher.open_sessions() == 1; }));

  // The reader was never disturbed.
  ASSERT_TRUE(set_keys(kUpdates + 1));
  api::SessionMessage m;
  ASSERT_TRUE(fast->stream->read(m));
  ASSERT_EQ(m.network_bootstrap_keys_size(), 1);
  EXPECT_EQ(m.network_bootstrap_keys(0).lamport_time(), kUpdates + 1);
}

// ---- Session: thousands of abandoned sessions ------------------------------------------------

// One channel's worth of sessions, driven with the async API: open them all, read the first
// message of each, wait for `go`, then cancel them all.
struct LeakChannel {
  enum Op : std::uintptr_t { kStart = 0, kRead = 1, kFinish = 2 };
  enum class State { starting, reading, open, finishing, done };
  struct Call {
    grpc::ClientContext ctx;
    std::unique_ptr<grpc::ClientAsyncReader<api::SessionMessage>> reader;
    api::SessionMessage first;
    grpc::Status status;
    State state = State::starting;
  };

  static void* tag(std::size_t i, Op op) {
    return reinterpret_cast<void*>(((static_cast<std::uintptr_t>(i) + 1) << 2) | op);
  }

  static void run(TestServer& server, int channel_index, int streams, std::atomic<int>& opened,
                  std::atomic<int>& failures, std::latch& ready, std::latch& go) {
    grpc::ChannelArguments args;
    args.SetInt("dispatchd.test.channel", channel_index);
    auto channel = make_channel(server, args);
    auto stub = api::Dispatcher::NewStub(channel);
    grpc::CompletionQueue cq;
    std::vector<std::unique_ptr<Call>> calls;
    for (int i = 0; i < streams; ++i) {
      auto call = std::make_unique<Call>();
      call->ctx.AddMetadata("node-id",
                            "leak-" + std::to_string(channel_index) + "-" + std::to_string(i));
      call->reader = stub->PrepareAsyncSession(&call->ctx, api::SessionRequest{}, &cq);
      call->reader->StartCall(tag(calls.size(), kStart));
      calls.push_back(std::move(call));
    }
    std::size_t busy = calls.size();  // starting or reading
    std::size_t finishing = 0;
    auto finish = [&](std::size_t i) {
      calls[i]->state = State::finishing;
      ++finishing;
      calls[i]->reader->Finish(&calls[i]->status, tag(i, kFinish));
    };
    auto handle = [&](void* t, bool ok) {
      auto v = reinterpret_cast<std::uintptr_t>(t);
      std::size_t i = (v >> 2) - 1;
      Call& call = *calls[i];
      switch (static_cast<Op>(v & 3)) {
        case kStart:
          if (ok) {
            call.state = State::reading;
            call.reader->Read(&call.first, tag(i, kRead));
          } else {
            ++failures;
            --busy;
            finish(i);
          }
          break;
        case kRead:
          --busy;
          if (ok && !call.first.session_id().empty()) {
            call.state = State::open;
            ++opened;
          } else {
            ++failures;
            finish(i);
          }
          break;
        case kFinish:
          call.state = State::done;
          --finishing;
          break;
      }
    };

    auto deadline = std::chrono::system_clock::now() + 60s;
    while (busy > 0) {
      void* t;
      bool ok;
      auto r = cq.AsyncNext(&t, &ok, deadline);
      if (r == grpc::CompletionQueue::TIMEOUT) {
        ++failures;  // give up on what has not opened yet
        for (auto& c : calls) {
          if (c->state == State::starting || c->state == State::reading) c->ctx.TryCancel();
        }
        deadline = std::chrono::system_clock::now() + 60s;
        continue;
      }
      if (r != grpc::CompletionQueue::GOT_EVENT) break;
      handle(t, ok);
    }
    ready.count_down();
    go.wait();

    // Abruptly: RST_STREAM for every session, then the channel goes away.
    for (std::size_t i = 0; i < calls.size(); ++i) {
      if (calls[i]->state == State::open) {
        calls[i]->ctx.TryCancel();
        finish(i);
      }
    }
    while (finishing > 0) {
      void* t;
      bool ok;
      if (!cq.Next(&t, &ok)) break;
      handle(t, ok);
    }
    calls.clear();
    stub.reset();
    channel.reset();
    cq.Shutdown();
    void* t;
    bool ok;
    while (cq.Next(&t, &ok)) {
    }
  }
};

TEST(DispatcherSessionLeakTest, TenThousandAbandonedSessionsLeaveNothingBehind) {
  constexpr int kChannels = 20;
  constexpr int kStreamsPerChannel = 500;
  constexpr int kSessions = kChannels * kStreamsPerChannel;
  auto options = TestServer::default_options();
  // Registrations expire 3 × 5 s after they were made, after the sessions are dropped (opening
  // them took up to 11.5 s under ASan with another test on the second core); the DOWN nodes'
  // orphaning timers then run out quickly too.
  options.dispatcher.heartbeat_period = 5s;
  options.dispatcher.heartbeat_epsilon = 0ns;
  options.dispatcher.node_down_period = 200ms;
  TestServer server(options);
  auto& srv = server.server();
  struct Baseline {
    std::size_t watchers, armed;
  };
  const auto baseline = server.call([&] {
    return Baseline{srv.store().watcher_count(), srv.wheel().armed_count()};
  });

  std::atomic<int> opened{0}, failures{0};
  std::latch ready(kChannels), go(1);
  const auto started = Clock::now();
  std::vector<std::thread> workers;
  for (int c = 0; c < kChannels; ++c) {
    workers.emplace_back(
        [&, c] { LeakChannel::run(server, c, kStreamsPerChannel, opened, failures, ready, go); });
  }
  ready.wait();
  const auto open_time = Clock::now() - started;
  struct Open {
    std::size_t sessions, registered;
  };
  const auto open = server.call([&] {
    return Open{srv.dispatcher().open_sessions(), srv.dispatcher().registered_nodes()};
  });
  go.count_down();
  for (auto& w : workers)
    w.join();
  const auto dropped = Clock::now();
  std::printf("%d sessions opened in %lld ms, dropped in %lld ms\n", opened.load(),
              static_cast<long long>(
                  std::chrono::duration_cast<std::chrono::milliseconds>(open_time).count()),
              static_cast<long long>(std::chrono::duration_cast<std::chrono::milliseconds>(
                                         dropped - started - open_time)
                                         .count()));
  EXPECT_EQ(opened.load(), kSessions);
  EXPECT_EQ(failures.load(), 0);
  EXPECT_EQ(open.sessions, static_cast<std::size_t>(kSessions));
  EXPECT_EQ(open.registered, static_cast<std::size_t>(kSessions));

  // Everything a session held is gone once its stream is.
  EXPECT_TRUE(server.eventually([&] { return srv.dispatcher().open_sessions() == 0; }, 30s))
      << server.call([&] { return srv.dispatcher().open_sessions(); }) << " sessions open";
  EXPECT_TRUE(server.eventually([&] { return srv.grpc().active_calls() == 0; }, 30s))
      << server.call([&] { return srv.grpc().active_calls(); }) << " calls active";
  EXPECT_TRUE(server.eventually([&] { return srv.store().watcher_count() == baseline.watchers; }))
      << server.call([&] { return srv.store().watcher_count(); }) << " store watchers, baseline "
      << baseline.watchers;
  EXPECT_TRUE(server.eventually([&] { return srv.connection_count() == 0; }, 30s))
      << server.call([&] { return srv.connection_count(); }) << " connections";

  // Registration outlives the stream: only heartbeat expiry ends it. A registration the stream's
  // end had dropped would be neither registered nor expired, so the sum below catches it however
  // many have expired by now (on a slow machine, some may have).
  struct Registered {
    std::size_t nodes;
    std::uint64_t expiries;
  };
  const auto registered = server.call([&] {
    return Registered{srv.dispatcher().registered_nodes(),
                      srv.dispatcher().stats().heartbeat_expiries};
  });
  EXPECT_EQ(registered.nodes + registered.expiries, static_cast<std::size_t>(kSessions))
      << registered.nodes << " registered, " << registered.expiries << " expired";

  EXPECT_TRUE(server.eventually([&] { return srv.dispatcher().registered_nodes() == 0; }, 30s))
      << server.call([&] { return srv.dispatcher().registered_nodes(); }) << " still registered";
  EXPECT_TRUE(server.eventually(
      [&] {
        return srv.dispatcher().down_nodes() == 0 && srv.wheel().armed_count() == baseline.armed;
      },
      30s))
      << server.call([&] { return srv.wheel().armed_count(); }) << " timers armed, baseline "
      << baseline.armed << ", " << server.call([&] { return srv.dispatcher().down_nodes(); })
      << " down nodes";
  EXPECT_EQ(server.call([&] { return srv.dispatcher().stats().heartbeat_expiries; }),
            static_cast<std::uint64_t>(kSessions));
}

}  // namespace
