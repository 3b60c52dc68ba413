// SwarmKit's Logs and LogBroker services (docs/behaviour.md §15, §0.11), judged over the wire by
// the real gRPC C++ client: an operator's subscription reaches the listening nodes, what the
// agents publish reaches the subscriber, and bad input, slow readers and cancellations get
// SwarmKit's answers (or ours, where §0.11 says so).

#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "logbroker.grpc.pb.h"
#include "support/agent.hpp"
#include "support/grpc_client.hpp"
#include "support/http_get.hpp"
#include "support/test_server.hpp"

namespace {

namespace api = docker::swarmkit::v1;
using dispatchd::test::as_node;
using dispatchd::test::context;
using dispatchd::test::describe;
using dispatchd::test::Metadata;
using dispatchd::test::TestServer;
using namespace std::chrono_literals;

const Metadata kOperator = {{"node-id", "ops-1"}, {"node-role", "swarm-manager"}};

api::LogMessage log_line(const std::string& node, const std::string& task, const std::string& data,
                         api::LogStream stream = api::LOG_STREAM_STDOUT) {
  api::LogMessage m;
  m.mutable_context()->set_node_id(node);
  m.mutable_context()->set_task_id(task);
  m.set_stream(stream);
  m.set_data(data);
  return m;
}

// An agent's ListenSubscriptions stream.
struct Listening {
  std::unique_ptr<grpc::ClientContext> ctx;
  std::unique_ptr<grpc::ClientReader<api::SubscriptionMessage>> reader;
  ~Listening() {
    ctx->TryCancel();
    reader->Finish();
  }
  api::SubscriptionMessage next() {
    api::SubscriptionMessage m;
    EXPECT_TRUE(reader->Read(&m)) << "the listener's stream ended";
    return m;
  }
};

// An operator's SubscribeLogs stream.
struct Subscribed {
  std::unique_ptr<grpc::ClientContext> ctx;
  std::unique_ptr<grpc::ClientReader<api::SubscribeLogsMessage>> reader;
  bool finished = false;
  ~Subscribed() {
    if (finished) return;
    ctx->TryCancel();
    reader->Finish();
  }
  // Reads until `n` log messages arrived (fails the test if the stream ends first).
  std::vector<api::LogMessage> read(std::size_t n) {
    std::vector<api::LogMessage> out;
    api::SubscribeLogsMessage m;
    while (out.size() < n && reader->Read(&m))
      for (const auto& lm : m.messages())
        out.push_back(lm);
    EXPECT_EQ(out.size(), n);
    return out;
  }
  // What is left, and the status.
  grpc::Status finish(std::vector<api::LogMessage>* rest = nullptr) {
    api::SubscribeLogsMessage m;
    while (reader->Read(&m))
      if (rest)
        for (const auto& lm : m.messages())
          rest->push_back(lm);
    finished = true;
    return reader->Finish();
  }
};

class LogBrokerTest : public ::testing::Test {
 protected:
  explicit LogBrokerTest(dispatchd::app::Options o = TestServer::default_options())
      : server_(std::move(o)),
        channel_(dispatchd::test::channel_to(server_)),
        logs_(api::Logs::NewStub(channel_)),
        broker_(api::LogBroker::NewStub(channel_)) {
    dispatchd::test::write(server_, [](dispatchd::store::WriteTx& tx) {
      for (const char* n : {"node-a", "node-b", "node-z"}) {
        if (auto st = tx.create(dispatchd::test::node_object(n, api::NodeStatus::READY));
            !st.is_ok()) {
          return st;
        }
      }
      return tx.create(dispatchd::test::task_object("task-a", "node-a", api::RUNNING));
    });
  }

  std::unique_ptr<Listening> listen(const std::string& node) {
    auto l = std::make_unique<Listening>();
    l->ctx = context(as_node(node));
    l->reader = broker_->ListenSubscriptions(l->ctx.get(), api::ListenSubscriptionsRequest{});
    return l;
  }
  // Opens a listener and waits until the server counts it (a listener opened later would get
  // the subscription as an active one instead, which another test covers).
  std::unique_ptr<Listening> listen_now(const std::string& node) {
    auto before = listeners();
    auto l = listen(node);
    EXPECT_TRUE(server_.eventually([&] { return broker().listeners() > before; }));
    return l;
  }
  // On the server thread only (server_.call, server_.eventually).
  dispatchd::logbroker::LogBroker& broker() { return server_.server().log_broker(); }
  std::size_t listeners() {
    return server_.call([&] { return server_.server().log_broker().listeners(); });
  }
  std::size_t active() {
    return server_.call([&] { return server_.server().log_broker().active_subscriptions(); });
  }
  dispatchd::logbroker::LogBrokerStats stats() {
    return server_.call([&] { return server_.server().log_broker().stats(); });
  }

  std::unique_ptr<Subscribed> subscribe(const api::SubscribeLogsRequest& req,
                                        const Metadata& md = kOperator) {
    auto s = std::make_unique<Subscribed>();
    s->ctx = context(md);
    s->reader = logs_->SubscribeLogs(s->ctx.get(), req);
    return s;
  }
  static api::SubscribeLogsRequest of_tasks(std::vector<std::string> tasks, bool follow = false) {
    api::SubscribeLogsRequest req;
    for (const auto& t : tasks)
      req.mutable_selector()->add_task_ids(t);
    req.mutable_options()->set_follow(follow);
    return req;
  }

  // One PublishLogs stream: the messages, then `close` as its last message if asked; returns
  // the stream's status.
  grpc::Status publish(const std::string& node, const std::vector<api::PublishLogsMessage>& msgs) {
    auto ctx = context(as_node(node));
    api::PublishLogsResponse resp;
    auto w = broker_->PublishLogs(ctx.get(), &resp);
    for (const auto& m : msgs)
      if (!w->Write(m)) break;
    w->WritesDone();
    return w->Finish();
  }
  static api::PublishLogsMessage batch(const std::string& sub,
                                       std::vector<api::LogMessage> lines = {},
                                       bool close = false) {
    api::PublishLogsMessage m;
    m.set_subscription_id(sub);
    for (auto& l : lines)
      *m.add_messages() = std::move(l);
    m.set_close(close);
    return m;
  }

  TestServer server_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<api::Logs::Stub> logs_;
  std::unique_ptr<api::LogBroker::Stub> broker_;
};

TEST_F(LogBrokerTest, SubscriptionReachesTheNodeAndPublishedLogsReachTheSubscriberUntilClose) {
  auto a = listen_now("node-a");
  auto b = listen_now("node-b");
  auto sub = subscribe(of_tasks({"task-a"}));
  auto m = a->next();
  EXPECT_EQ(m.id().size(), 25u);
  EXPECT_FALSE(m.close());
  ASSERT_EQ(m.selector().task_ids_size(), 1);
  EXPECT_EQ(m.selector().task_ids(0), "task-a");
  EXPECT_FALSE(m.options().follow());
  EXPECT_EQ(active(), 1u);

  // A listener that opens while the subscription is active gets it too.
  auto a2 = listen("node-a");
  EXPECT_EQ(a2->next().id(), m.id());

  ASSERT_TRUE(
      publish("node-a",
              {batch(m.id(), {log_line("node-a", "task-a", "one\n"),
                              log_line("node-a", "task-a", "two\n", api::LOG_STREAM_STDERR)}),
               batch(m.id(), {log_line("node-a", "task-a", "three\n")}),
               batch(m.id(), {}, /*close=*/true)})
          .ok());
  auto got = sub->read(3);
  ASSERT_EQ(got.size(), 3u);
  EXPECT_EQ(got[0].data(), "one\n");
  EXPECT_EQ(got[0].context().node_id(), "node-a");
  EXPECT_EQ(got[0].context().task_id(), "task-a");
  EXPECT_EQ(got[1].stream(), api::LOG_STREAM_STDERR);
  EXPECT_EQ(got[2].data(), "three\n");
  // Without follow, the close of the only node involved ends the subscription: OK, and nothing
  // is sent to node-b, which is not involved.
  std::vector<api::LogMessage> rest;
  auto st = sub->finish(&rest);
  EXPECT_TRUE(st.ok()) << describe(st);
  EXPECT_TRUE(rest.empty());
  EXPECT_TRUE(server_.eventually([&] { return broker().active_subscriptions() == 0; }));
  EXPECT_EQ(stats().messages_published, 3u);
  EXPECT_EQ(stats().messages_delivered, 3u);
  EXPECT_EQ(stats().subscriptions, 1u);

  // The next subscription is the next message node-b sees: it never heard of the first.
  api::SubscribeLogsRequest by_node;
  by_node.mutable_selector()->add_node_ids("node-b");
  auto sub2 = subscribe(by_node);
  auto mb = b->next();
  EXPECT_NE(mb.id(), m.id());
  ASSERT_EQ(mb.selector().node_ids_size(), 1);
  ASSERT_TRUE(publish("node-b", {batch(mb.id(), {log_line("node-b", "task-b", "b")}),
                                 batch(mb.id(), {}, true)})
                  .ok());
  EXPECT_EQ(sub2->read(1).at(0).data(), "b");
  st = sub2->finish();
  EXPECT_TRUE(st.ok()) << describe(st);
}

TEST_F(LogBrokerTest, FollowLastsUntilCancelAndThenTheNodesAreToldToClose) {
  auto a = listen_now("node-a");
  auto b = listen_now("node-b");
  auto sub = subscribe(of_tasks({"task-a", "task-later"}, /*follow=*/true));
  auto m = a->next();
  EXPECT_TRUE(m.options().follow());

  // A node's close does not end a follow subscription: messages published afterwards arrive.
  ASSERT_TRUE(publish("node-a", {batch(m.id(), {log_line("node-a", "task-a", "before")}),
                                 batch(m.id(), {}, true)})
                  .ok());
  ASSERT_TRUE(publish("node-a", {batch(m.id(), {log_line("node-a", "task-a", "after")})}).ok());
  auto got = sub->read(2);
  ASSERT_EQ(got.size(), 2u);
  EXPECT_EQ(got[1].data(), "after");

  // A selected task assigned later brings its node into the subscription.
  dispatchd::test::write(server_, [](dispatchd::store::WriteTx& tx) {
    return tx.create(dispatchd::test::task_object("task-later", "node-b", api::ASSIGNED));
  });
  auto mb = b->next();
  EXPECT_EQ(mb.id(), m.id());
  EXPECT_FALSE(mb.close());

  // A stream that is publishing when the operator goes away.
  auto pctx = context(as_node("node-a"));
  api::PublishLogsResponse presp;
  auto publishing = broker_->PublishLogs(pctx.get(), &presp);
  ASSERT_TRUE(publishing->Write(batch(m.id(), {log_line("node-a", "task-a", "in time")})));
  EXPECT_EQ(sub->read(1).at(0).data(), "in time");

  // The operator goes away: both nodes are told to stop publishing.
  sub->ctx->TryCancel();
  EXPECT_EQ(sub->finish().error_code(), grpc::StatusCode::CANCELLED);
  auto closed_a = a->next();
  EXPECT_EQ(closed_a.id(), m.id());
  EXPECT_TRUE(closed_a.close());
  auto closed_b = b->next();
  EXPECT_EQ(closed_b.id(), m.id());
  EXPECT_TRUE(closed_b.close());
  EXPECT_TRUE(server_.eventually([&] { return broker().active_subscriptions() == 0; }));

  // What the open stream still sends for the ended subscription is counted, not delivered; a
  // new stream for it is refused (SwarmKit's NOT_FOUND).
  ASSERT_TRUE(publishing->Write(batch(m.id(), {log_line("node-a", "task-a", "late")})));
  publishing->WritesDone();
  auto st = publishing->Finish();
  EXPECT_TRUE(st.ok()) << describe(st);
  EXPECT_EQ(stats().messages_discarded, 1u);
  EXPECT_EQ(stats().messages_delivered, 3u);
  st = publish("node-a", {batch(m.id(), {log_line("node-a", "task-a", "later")})});
  EXPECT_EQ(st.error_code(), grpc::StatusCode::NOT_FOUND);
}

TEST_F(LogBrokerTest, AServiceWithoutFollowInvolvesOnlyTheNodesOfItsStartedTasks) {
  dispatchd::test::write(server_, [](dispatchd::store::WriteTx& tx) {
    auto running = dispatchd::test::task_object("web-1", "node-a", api::RUNNING);
    running.set_service_id("web");
    auto starting = dispatchd::test::task_object("web-2", "node-b", api::ASSIGNED);
    starting.set_service_id("web");
    auto st = tx.create(running);
    if (!st.is_ok()) return st;
    return tx.create(starting);
  });
  auto a = listen_now("node-a");
  auto b = listen_now("node-b");
  api::SubscribeLogsRequest req;
  req.mutable_selector()->add_service_ids("web");
  auto sub = subscribe(req);
  auto m = a->next();
  ASSERT_EQ(m.selector().service_ids_size(), 1);
  ASSERT_TRUE(publish("node-a",
                      {batch(m.id(), {log_line("node-a", "web-1", "up")}), batch(m.id(), {}, true)})
                  .ok());
  EXPECT_EQ(sub->read(1).at(0).data(), "up");
  auto st = sub->finish();
  EXPECT_TRUE(st.ok()) << describe(st);  // node-b (its task not started) was never waited for

  // With follow, the ASSIGNED task's node takes part too.
  req.mutable_options()->set_follow(true);
  auto followed = subscribe(req);
  auto ma = a->next();
  auto mb = b->next();  // node-b's first message: it never got the first subscription
  EXPECT_EQ(mb.id(), ma.id());
  EXPECT_NE(mb.id(), m.id());
}

TEST_F(LogBrokerTest, NodesWithoutListenerAndUnscheduledTasksEndTheStreamWithSwarmKitsWarning) {
  dispatchd::test::write(server_, [](dispatchd::store::WriteTx& tx) {
    auto st = tx.create(dispatchd::test::task_object("task-z", "node-z", api::RUNNING));
    if (!st.is_ok()) return st;
    return tx.create(dispatchd::test::task_object("task-unassigned", "", api::PENDING));
  });
  auto sub = subscribe(of_tasks({"task-z", "task-unassigned", "no-such-task"}));
  auto st = sub->finish();
  EXPECT_EQ(st.error_code(), grpc::StatusCode::UNKNOWN);
  EXPECT_EQ(st.error_message(),
            "warning: incomplete log stream. some logs could not be retrieved for the following "
            "reasons: node node-z is not available, task task-unassigned has not been scheduled");

  // A node whose listener goes away before it finished.
  auto a = listen_now("node-a");
  auto sub2 = subscribe(of_tasks({"task-a"}));
  a->next();
  a.reset();
  st = sub2->finish();
  EXPECT_EQ(st.error_code(), grpc::StatusCode::UNKNOWN);
  EXPECT_EQ(st.error_message(),
            "warning: incomplete log stream. some logs could not be retrieved for the following "
            "reasons: node node-a disconnected unexpectedly");
}

TEST_F(LogBrokerTest, BadInputGetsAPreciseStatusAndChangesNothing) {
  auto a = listen_now("node-a");
  // The operator side.
  api::SubscribeLogsRequest none;
  auto st = subscribe(none)->finish();
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(st.error_message(), "log selector must be provided");
  api::SubscribeLogsRequest empty;
  empty.mutable_selector();
  st = subscribe(empty)->finish();
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(st.error_message(), "log selector must not be empty");
  st = subscribe(of_tasks({"task-a"}), as_node("node-a"))->finish();
  EXPECT_EQ(st.error_code(), grpc::StatusCode::PERMISSION_DENIED) << describe(st);
  EXPECT_EQ(stats().subscriptions, 0u);
  EXPECT_EQ(active(), 0u);

  // The agent side.
  st = publish("node-a", {batch("nonexistent", {log_line("node-a", "task-a", "x")})});
  EXPECT_EQ(st.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(st.error_message(), "unknown subscription ID");
  st = publish("node-a", {batch("", {log_line("node-a", "task-a", "x")})});
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(st.error_message(), "missing subscription ID");
  EXPECT_EQ(stats().messages_published, 0u);

  auto sub = subscribe(of_tasks({"task-a"}));
  auto m = a->next();
  auto other = subscribe(of_tasks({"task-a"}, true));
  auto m2 = a->next();
  st = publish("node-a", {batch(m.id(), {log_line("node-a", "task-a", "fine")}),
                          batch(m2.id(), {log_line("node-a", "task-a", "x")})});
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(st.error_message(), "different subscription IDs in the same session");
  // A node may not publish in another node's name: the batch is refused whole.
  st = publish("node-a", {batch(m2.id(), {log_line("node-a", "task-a", "mine"),
                                          log_line("node-b", "task-a", "impostor")})});
  EXPECT_EQ(st.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_EQ(st.error_message(), "invalid NodeID: expected=node-a;received=node-b");
  EXPECT_EQ(stats().messages_published, 1u);  // "fine" only

  // What ended node-a's publishing for the first subscription is why its stream is incomplete.
  std::vector<api::LogMessage> got;
  st = sub->finish(&got);
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].data(), "fine");
  EXPECT_EQ(st.error_code(), grpc::StatusCode::UNKNOWN);
  EXPECT_EQ(st.error_message(),
            "warning: incomplete log stream. some logs could not be retrieved for the following "
            "reasons: rpc error: code = InvalidArgument desc = different subscription IDs in the "
            "same session");
}

class LogBrokerSlowSubscriberTest : public LogBrokerTest {
 protected:
  static dispatchd::app::Options small_buffer() {
    auto o = TestServer::default_options();
    o.logs.subscriber_buffer = 64 * 1024;
    return o;
  }
  LogBrokerSlowSubscriberTest() : LogBrokerTest(small_buffer()) {}
};

TEST_F(LogBrokerSlowSubscriberTest, ASubscriberThatDoesNotReadIsCutOffAndThePublisherNeverWaits) {
  auto a = listen_now("node-a");
  // The subscriber's client takes little before it must read: a small window, no bandwidth
  // probing to grow it.
  grpc::ChannelArguments args;
  args.SetInt("grpc.http2.lookahead_bytes", 16 * 1024);
  args.SetInt("grpc.http2.bdp_probe", 0);
  auto slow_channel = dispatchd::test::channel_to(server_, /*own_connection=*/true, args);
  auto slow_logs = api::Logs::NewStub(slow_channel);
  Subscribed sub;
  sub.ctx = context(kOperator);
  sub.reader = slow_logs->SubscribeLogs(sub.ctx.get(), of_tasks({"task-a"}, true));
  auto m = a->next();

  // 4 MiB published while the subscriber reads nothing: the publisher's stream completes.
  const std::string kb4(4096, 'x');
  std::vector<api::PublishLogsMessage> msgs;
  for (int i = 0; i < 1024; ++i)
    msgs.push_back(batch(m.id(), {log_line("node-a", "task-a", kb4)}));
  auto st = publish("node-a", msgs);
  EXPECT_TRUE(st.ok()) << describe(st);

  // The subscriber was cut off: the node is told to stop, the drops are counted, and the
  // subscriber learns it with RESOURCE_EXHAUSTED after what had been sent before.
  auto closed = a->next();
  EXPECT_EQ(closed.id(), m.id());
  EXPECT_TRUE(closed.close());
  auto s = stats();
  EXPECT_EQ(s.subscribers_cut_off, 1u);
  EXPECT_EQ(s.messages_published, 1024u);
  EXPECT_GT(s.messages_dropped, 0u);
  EXPECT_GT(s.messages_discarded, 0u);  // the rest of the stream, after the cut-off
  // Nothing is unaccounted for: the cut-off emptied the queue.
  EXPECT_EQ(s.messages_delivered + s.messages_dropped + s.messages_discarded, 1024u)
      << s.messages_delivered << " " << s.messages_dropped << " " << s.messages_discarded;
  std::vector<api::LogMessage> got;
  st = sub.finish(&got);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << describe(st);
  EXPECT_EQ(st.error_message(),
            "log subscriber fell behind: more than 65536 bytes of log messages waiting "
            "(--log-subscriber-buffer); the messages after the last one received were dropped");
  EXPECT_EQ(got.size(), s.messages_delivered);
  EXPECT_LT(got.size(), 1024u);
  EXPECT_EQ(active(), 0u);

  auto metrics = dispatchd::test::http_get(
      "127.0.0.1", server_.call([&] { return server_.server().admin_endpoint()->port(); }),
      "/metrics");
  EXPECT_NE(metrics.body.find("dispatchd_log_subscribers_cut_off_total 1\n"), std::string::npos)
      << metrics.body;
  EXPECT_NE(metrics.body.find("dispatchd_log_listeners 1\n"), std::string::npos);
  EXPECT_NE(metrics.body.find("dispatchd_log_messages_total{outcome=\"dropped\"} " +
                              std::to_string(s.messages_dropped) + "\n"),
            std::string::npos);
}

}  // namespace
