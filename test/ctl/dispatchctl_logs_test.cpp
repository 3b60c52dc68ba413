// The real dispatchctl binary's `logs` against an in-process dispatchd: a grpc++ agent listens
// for the subscription dispatchctl starts and publishes lines for it; what dispatchctl prints,
// how it ends, and what the agent is told when a follower goes away.

#include <google/protobuf/util/json_util.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <signal.h>

#include <chrono>
#include <future>
#include <sstream>

#include "logbroker.grpc.pb.h"
#include "support/agent.hpp"
#include "support/child_process.hpp"
#include "support/process.hpp"
#include "support/test_server.hpp"

namespace {

namespace api = docker::swarmkit::v1;
using dispatchd::test::as_node;
using dispatchd::test::ChildProcess;
using dispatchd::test::ProcessResult;
using dispatchd::test::run_process;
using dispatchd::test::TestServer;
using namespace std::chrono_literals;

using dispatchd::test::show;

class DispatchctlLogs : public ::testing::Test {
 protected:
  DispatchctlLogs() : broker_(api::LogBroker::NewStub(dispatchd::test::channel_to(server_))) {
    dispatchd::test::write(server_, [](dispatchd::store::WriteTx& tx) {
      auto st = tx.create(dispatchd::test::node_object("node-a", api::NodeStatus::READY));
      if (!st.is_ok()) return st;
      return tx.create(dispatchd::test::task_object("task-a", "node-a", api::RUNNING));
    });
    listen_ctx_ = dispatchd::test::context(as_node("node-a"), 60s);
    listener_ = broker_->ListenSubscriptions(listen_ctx_.get(), {});
    EXPECT_TRUE(server_.eventually([&] { return server_.server().log_broker().listeners() == 1; }));
  }
  ~DispatchctlLogs() override {
    listen_ctx_->TryCancel();
    listener_->Finish();
  }

  std::vector<std::string> ctl_args(std::vector<std::string> args) {
    args.insert(args.begin(), {DISPATCHCTL_PATH, "--insecure", "--addr", server_.address()});
    return args;
  }
  // dispatchctl run to its end in the background.
  std::future<ProcessResult> start_ctl(std::vector<std::string> args) {
    return std::async(std::launch::async, [argv = ctl_args(std::move(args))] {
      return run_process(argv, {}, 60s, {"DISPATCHCTL_", "GRPC_"});
    });
  }
  api::SubscriptionMessage next_subscription() {
    api::SubscriptionMessage m;
    EXPECT_TRUE(listener_->Read(&m));
    return m;
  }
  void publish(const std::string& sub, const std::vector<std::pair<std::string, bool>>& lines,
               bool close) {
    auto ctx = dispatchd::test::context(as_node("node-a"));
    api::PublishLogsResponse resp;
    auto w = broker_->PublishLogs(ctx.get(), &resp);
    for (const auto& [data, err] : lines) {
      api::PublishLogsMessage m;
      m.set_subscription_id(sub);
      auto* l = m.add_messages();
      l->mutable_context()->set_node_id("node-a");
      l->mutable_context()->set_task_id("task-a");
      l->set_stream(err ? api::LOG_STREAM_STDERR : api::LOG_STREAM_STDOUT);
      l->set_data(data);
      w->Write(m);
    }
    if (close) {
      api::PublishLogsMessage m;
      m.set_subscription_id(sub);
      m.set_close(true);
      w->Write(m);
    }
    w->WritesDone();
    auto st = w->Finish();
    EXPECT_TRUE(st.ok()) << st.error_message();
  }

  TestServer server_;
  std::unique_ptr<api::LogBroker::Stub> broker_;
  std::unique_ptr<grpc::ClientContext> listen_ctx_;
  std::unique_ptr<grpc::ClientReader<api::SubscriptionMessage>> listener_;
};

TEST_F(DispatchctlLogs, PrintsEachLineWithItsOriginAndEndsWhenTheNodeIsDone) {
  auto run = start_ctl({"logs", "--task", "task-a"});
  auto sub = next_subscription();
  ASSERT_EQ(sub.selector().task_ids_size(), 1);
  EXPECT_EQ(sub.selector().task_ids(0), "task-a");
  EXPECT_FALSE(sub.options().follow());
  publish(sub.id(), {{"hello\n", false}, {"oops", true}}, /*close=*/true);
  auto r = run.get();
  ASSERT_EQ(r.exit_status, 0) << show(r);
  EXPECT_EQ(r.out, "node-a task-a stdout: hello\nnode-a task-a stderr: oops\n");

  // --json: one LogMessage per line; --tail N asks for the last N (SwarmKit's -(N+1)).
  run = start_ctl({"--json", "logs", "--node", "node-a", "--tail", "5"});
  sub = next_subscription();
  EXPECT_EQ(sub.options().tail(), -6);
  ASSERT_EQ(sub.selector().node_ids_size(), 1);
  publish(sub.id(), {{"one", false}, {"two", false}}, true);
  r = run.get();
  ASSERT_EQ(r.exit_status, 0) << show(r);
  std::istringstream in(r.out);
  std::vector<api::LogMessage> got;
  for (std::string line; std::getline(in, line);) {
    api::LogMessage m;
    auto st = google::protobuf::util::JsonStringToMessage(line, &m);
    ASSERT_TRUE(st.ok()) << st.ToString() << "\n" << r.out;
    got.push_back(m);
  }
  ASSERT_EQ(got.size(), 2u) << r.out;
  EXPECT_EQ(got[0].context().node_id(), "node-a");
  EXPECT_EQ(got[1].data(), "two");
}

TEST_F(DispatchctlLogs, FollowPrintsAsLinesArriveAndItsEndClosesTheNodesSubscription) {
  ChildProcess follower({"/bin/sh", "-c", "exec \"$0\" \"$@\" 1>&2", std::string(DISPATCHCTL_PATH),
                         "--insecure", "--addr", server_.address(), "logs", "--follow", "--task",
                         "task-a"});
  auto sub = next_subscription();
  EXPECT_TRUE(sub.options().follow());
  publish(sub.id(), {{"first", false}}, false);
  // Printed while dispatchctl still runs.
  EXPECT_TRUE(follower.wait_for_line("node-a task-a stdout: first", 20s)) << follower.output();
  publish(sub.id(), {{"second", false}}, true);  // a node's close does not end following
  EXPECT_TRUE(follower.wait_for_line("node-a task-a stdout: second", 20s)) << follower.output();
  follower.signal(SIGINT);
  EXPECT_TRUE(follower.wait(20s).has_value());
  auto closed = next_subscription();
  EXPECT_EQ(closed.id(), sub.id());
  EXPECT_TRUE(closed.close());
}

TEST_F(DispatchctlLogs, UsageAndErrors) {
  auto r = run_process(ctl_args({"logs"}), {}, 30s, {"DISPATCHCTL_", "GRPC_"});
  EXPECT_EQ(r.exit_status, 2) << show(r);
  EXPECT_NE(r.err.find("logs needs at least one --task, --node or --service"), std::string::npos)
      << show(r);
  r = run_process(ctl_args({"logs", "--task", "t", "--tail=-3"}), {}, 30s, {"DISPATCHCTL_"});
  EXPECT_EQ(r.exit_status, 2) << show(r);
  EXPECT_NE(r.err.find("invalid --tail -3"), std::string::npos) << show(r);
  r = run_process(ctl_args({"logs", "--help"}), {}, 30s, {"DISPATCHCTL_"});
  EXPECT_EQ(r.exit_status, 0) << show(r);
  EXPECT_NE(r.out.find("--follow"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("NODE TASK STREAM: DATA"), std::string::npos) << r.out;
  // The server's answer is printed as every command prints one: a task on a node with no
  // listener gives SwarmKit's incomplete-stream warning at once.
  dispatchd::test::write(server_, [](dispatchd::store::WriteTx& tx) {
    auto st = tx.create(dispatchd::test::node_object("node-z", api::NodeStatus::DOWN));
    if (!st.is_ok()) return st;
    return tx.create(dispatchd::test::task_object("task-z", "node-z", api::RUNNING));
  });
  r = run_process(ctl_args({"logs", "--task", "task-z"}), {}, 30s, {"DISPATCHCTL_"});
  EXPECT_EQ(r.exit_status, 1) << show(r);
  EXPECT_EQ(r.err,
            "dispatchctl: UNKNOWN: warning: incomplete log stream. some logs could not be "
            "retrieved for the following reasons: node node-z is not available\n");
}

}  // namespace
