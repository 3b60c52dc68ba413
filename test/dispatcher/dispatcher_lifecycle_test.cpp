// The session check of every call, nodes known before start and a client going away
// (docs/behaviour.md §2, §3, §4.8).
// Over the wire, judged by the real gRPC C++ client (test/support/agent.hpp).

#include <gtest/gtest.h>

#include "support/agent.hpp"

namespace {

using namespace dispatchd::test;  // the agent and the setup helpers (support/agent.hpp)

const char kUnknownStateMessage[] =
    "Node moved to \"unknown\" state due to leadership change in cluster";

// =============================================================================================
// Session checks of the other calls (docs/behaviour.md §3, session check)

void expect_every_call_fails(Agent& agent, const Metadata& md, const std::string& session_id,
                             grpc::StatusCode code, const std::string& message) {
  auto expect = [&](const grpc::Status& st) {
    EXPECT_EQ(st.error_code(), code) << st.error_message();
    EXPECT_EQ(st.error_message(), message);
  };
  {
    SCOPED_TRACE("Heartbeat");
    expect(agent.heartbeat(md, session_id));
  }
  {
    SCOPED_TRACE("UpdateTaskStatus");
    api::UpdateTaskStatusRequest req;
    req.set_session_id(session_id);
    expect(agent.update_task_status(md, req));
  }
  {
    SCOPED_TRACE("UpdateVolumeStatus");
    api::UpdateVolumeStatusRequest req;
    req.set_session_id(session_id);
    expect(agent.update_volume_status(md, req));
  }
  {
    SCOPED_TRACE("Assignments");
    auto ctx = context(md);
    api::AssignmentsRequest req;
    req.set_session_id(session_id);
    auto reader = agent.stub().Assignments(ctx.get(), req);
    api::AssignmentsMessage m;
    EXPECT_FALSE(reader->Read(&m));
    expect(reader->Finish());
  }
  {
    SCOPED_TRACE("Tasks");
    auto ctx = context(md);
    api::TasksRequest req;
    req.set_session_id(session_id);
    auto reader = agent.stub().Tasks(ctx.get(), req);
    api::TasksMessage m;
    EXPECT_FALSE(reader->Read(&m));
    expect(reader->Finish());
  }
}

TEST(DispatcherSessionTest, CallsWithAnotherSessionIdAreSessionInvalid) {
  TestServer server;
  Agent agent(server);
  auto r = register_node(agent, as_node("node-a"));
  ASSERT_TRUE(r.ok) << r.status.error_message();
  expect_every_call_fails(agent, as_node("node-a"), "0123456789abcdefghijklmno",
                          grpc::StatusCode::INVALID_ARGUMENT, "session invalid");
  expect_every_call_fails(agent, as_node("node-a"), "", grpc::StatusCode::INVALID_ARGUMENT,
                          "session invalid");
}

TEST(DispatcherSessionTest, CallsOfUnregisteredNodeAreNodeNotRegistered) {
  TestServer server;
  Agent agent(server);
  auto r = register_node(agent, as_node("node-a"));
  ASSERT_TRUE(r.ok) << r.status.error_message();
  // Another node presenting node-a's session.
  expect_every_call_fails(agent, as_node("node-b"), r.first.session_id(),
                          grpc::StatusCode::NOT_FOUND, "node not registered");
}

// =============================================================================================
// Nodes known before start (docs/behaviour.md §2, at start)

TEST(DispatcherSessionTest, PreloadedNodesAreMarkedUnknownAtStart) {
  TestServer server(TestServer::default_options(), [](dispatchd::app::Server& s) {
    s.store().update([](store::WriteTx& tx) {
      auto n = node_object("pre-1", api::NodeStatus::READY);
      n.mutable_status()->set_message("was ready");
      return tx.create(std::move(n));
    });
  });
  auto n = stored_node(server, "pre-1");
  ASSERT_TRUE(n);
  EXPECT_EQ(n->status().state(), api::NodeStatus::UNKNOWN);
  EXPECT_EQ(n->status().message(), kUnknownStateMessage);
  EXPECT_EQ(server.call([&] { return server.server().dispatcher().registered_nodes(); }), 1u);
}

TEST(DispatcherSessionTest, PreloadedDownNodeIsLeftDown) {
  TestServer server(TestServer::default_options(), [](dispatchd::app::Server& s) {
    s.store().update([](store::WriteTx& tx) {
      auto n = node_object("gone", api::NodeStatus::DOWN);
      n.mutable_status()->set_message("heartbeat failure");
      return tx.create(std::move(n));
    });
  });
  auto n = stored_node(server, "gone");
  ASSERT_TRUE(n);
  EXPECT_EQ(n->status().state(), api::NodeStatus::DOWN);
  EXPECT_EQ(n->status().message(), "heartbeat failure");
  EXPECT_EQ(server.call([&] { return server.server().dispatcher().registered_nodes(); }), 0u);
  EXPECT_EQ(server.call([&] { return server.server().dispatcher().down_nodes(); }), 1u);
  Agent agent(server);
  grpc::Status st = agent.heartbeat(as_node("gone"), "");
  EXPECT_EQ(st.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(st.error_message(), "node not registered");
}

TEST(DispatcherSessionTest, PreloadedNodeThatNeverRegistersIsDownAfterSixPeriods) {
  const auto t0 = Clock::now();
  TestServer server(options_with([](auto& o) {
                      o.dispatcher.heartbeat_period = 100ms;
                      o.dispatcher.heartbeat_epsilon = 0ns;
                    }),
                    [](dispatchd::app::Server& s) {
                      s.store().update([](store::WriteTx& tx) {
                        return tx.create(node_object("pre-1", api::NodeStatus::READY));
                      });
                    });
  ASSERT_TRUE(
      server.eventually([&] { return node_state(server, "pre-1") == api::NodeStatus::DOWN; }, 5s));
  // Measured from before the server started, so this is an upper bound of the real delay.
  auto elapsed = Clock::now() - t0;
  EXPECT_GE(elapsed, 600ms - 10ms) << "expired after 6 periods, not 3";
  auto n = stored_node(server, "pre-1");
  EXPECT_EQ(n->status().message(), "heartbeat failure for node in \"unknown\" state");
  EXPECT_EQ(server.call([&] { return server.server().dispatcher().registered_nodes(); }), 0u);
}

// =============================================================================================
// Client going away (docs/behaviour.md §4.8, §14)

TEST(DispatcherSessionTest, ClientCancelReleasesSubscriptionsButKeepsRegistration) {
  TestServer server;
  Agent agent(server);
  const auto baseline = server.call([&] { return server.server().store().watcher_count(); });
  auto r = register_node(agent, as_node("node-a"));
  ASSERT_TRUE(r.ok) << r.status.error_message();
  EXPECT_EQ(server.call([&] { return server.server().dispatcher().open_sessions(); }), 1u);
  EXPECT_GT(server.call([&] { return server.server().store().watcher_count(); }), baseline);

  r.stream->cancel();
  EXPECT_EQ(r.stream->finish().error_code(), grpc::StatusCode::CANCELLED);
  EXPECT_TRUE(server.eventually([&] {
    return server.server().dispatcher().open_sessions() == 0 &&
           server.server().store().watcher_count() == baseline &&
           server.server().dispatcher().cluster_watchers() == 0;
  }));
  // Closing the stream is not a failure of the node: it stays registered and READY.
  EXPECT_EQ(server.call([&] { return server.server().dispatcher().registered_nodes(); }), 1u);
  EXPECT_EQ(stored_node(server, "node-a")->status().state(), api::NodeStatus::READY);
  EXPECT_TRUE(agent.heartbeat(as_node("node-a"), r.first.session_id()).ok());
}

}  // namespace
