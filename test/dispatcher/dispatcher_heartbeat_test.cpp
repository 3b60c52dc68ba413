// Heartbeats, their period and expiry, and what follows a node going down
// (docs/behaviour.md §5, §2, §0.9).
// Over the wire, judged by the real gRPC C++ client (test/support/agent.hpp).

#include <gtest/gtest.h>

#include <array>
#include <set>

#include "support/agent.hpp"

namespace {

using namespace dispatchd::test;  // the agent and the setup helpers (support/agent.hpp)

std::chrono::nanoseconds as_duration(const google::protobuf::Duration& d) {
  return std::chrono::seconds(d.seconds()) + std::chrono::nanoseconds(d.nanos());
}

// =============================================================================================
// Heartbeat (docs/behaviour.md §5)

TEST(DispatcherSessionTest, HeartbeatReturnsPeriodWithinEpsilon) {
  TestServer server(options_with([](auto& o) {
    o.dispatcher.heartbeat_period = 1s;
    o.dispatcher.heartbeat_epsilon = 250ms;
  }));
  Agent agent(server);
  auto r = register_node(agent, as_node("node-a"));
  ASSERT_TRUE(r.ok) << r.status.error_message();
  for (int i = 0; i < 50; ++i) {
    api::HeartbeatResponse resp;
    grpc::Status st = agent.heartbeat(as_node("node-a"), r.first.session_id(), &resp);
    ASSERT_TRUE(st.ok()) << st.error_message();
    auto period = as_duration(resp.period());
    EXPECT_GE(period, 750ms);
    EXPECT_LT(period, 1250ms);
  }
}

// The range alone would pass a server that ignores the jitter (every period exactly 1 s): the
// periods must differ and cover the whole of period ± epsilon. The jitter is drawn uniformly
// from [-ε, ε) in nanoseconds, so with 200 heartbeats the bounds below are far from the
// expectation: fewer than 10 of 200 in one quarter (expected 50) or more than a handful of equal
// draws among 500 million values has a probability below 1e-12.
TEST(DispatcherSessionTest, HeartbeatPeriodsAreSpreadOverTheWholeJitterRange) {
  TestServer server(options_with([](auto& o) {
    o.dispatcher.heartbeat_period = 1s;
    o.dispatcher.heartbeat_epsilon = 250ms;
  }));
  Agent agent(server);
  auto r = register_node(agent, as_node("node-a"));
  ASSERT_TRUE(r.ok) << r.status.error_message();
  constexpr int kBeats = 200;
  std::set<std::chrono::nanoseconds> distinct;
  std::array<int, 4> per_quarter{};  // [750, 875), [875, 1000), [1000, 1125), [1125, 1250) ms
  for (int i = 0; i < kBeats; ++i) {
    api::HeartbeatResponse resp;
    grpc::Status st = agent.heartbeat(as_node("node-a"), r.first.session_id(), &resp);
    ASSERT_TRUE(st.ok()) << st.error_message();
    auto period = as_duration(resp.period());
    ASSERT_GE(period, 750ms);
    ASSERT_LT(period, 1250ms);
    distinct.insert(period);
    ++per_quarter[static_cast<std::size_t>((period - 750ms) / 125ms)];
  }
  EXPECT_GE(distinct.size(), static_cast<std::size_t>(kBeats - 5))
      << "heartbeat periods repeat: the jitter is not drawn per heartbeat";
  for (std::size_t q = 0; q < per_quarter.size(); ++q) {
    EXPECT_GE(per_quarter[q], 10) << "quarter " << q << " of period ± epsilon: " << per_quarter[q]
                                  << " of " << kBeats << " periods";
  }
}

TEST(DispatcherSessionTest, HeartbeatWithEmptySessionIdIsSessionInvalid) {
  TestServer server;
  Agent agent(server);
  auto r = register_node(agent, as_node("node-a"));
  ASSERT_TRUE(r.ok) << r.status.error_message();
  grpc::Status st = agent.heartbeat(as_node("node-a"), "");
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(st.error_message(), "session invalid");
}

TEST(DispatcherSessionTest, HeartbeatOfNeverRegisteredNodeIsNodeNotRegistered) {
  TestServer server;
  Agent agent(server);
  grpc::Status st = agent.heartbeat(as_node("nobody"), "0123456789abcdefghijklmno");
  EXPECT_EQ(st.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(st.error_message(), "node not registered");
}

TEST(DispatcherSessionTest, HeartbeatOfPreloadedUnknownNodeIsSessionInvalid) {
  TestServer server(TestServer::default_options(), [](dispatchd::app::Server& s) {
    s.store().update(
        [](store::WriteTx& tx) { return tx.create(node_object("pre-1", api::NodeStatus::READY)); });
  });
  Agent agent(server);
  for (const std::string session_id : {"", "0123456789abcdefghijklmno"}) {
    grpc::Status st = agent.heartbeat(as_node("pre-1"), session_id);
    EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << "'" << session_id << "'";
    EXPECT_EQ(st.error_message(), "session invalid");
  }
}

TEST(DispatcherSessionTest, HeartbeatExpiryMarksNodeDownAndEndsSession) {
  TestServer server(options_with([](auto& o) {
    o.dispatcher.heartbeat_period = 100ms;
    o.dispatcher.heartbeat_epsilon = 0ns;
  }));
  Agent agent(server);
  auto r = register_node(agent, as_node("node-a"));
  ASSERT_TRUE(r.ok) << r.status.error_message();

  // No heartbeat: after 3 × 100 ms the node is marked down and the stream says so once.
  api::SessionMessage down;
  ASSERT_TRUE(r.stream->read(down));
  EXPECT_EQ(down.session_id(), r.first.session_id());
  EXPECT_EQ(down.node().status().state(), api::NodeStatus::DOWN);
  EXPECT_EQ(down.node().status().message(), "heartbeat failure");
  grpc::Status st = r.stream->finish();
  EXPECT_TRUE(r.stream->rest().empty()) << r.stream->rest().size() << " more messages";
  EXPECT_EQ(st.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(st.error_message(), "node not registered");

  auto n = stored_node(server, "node-a");
  ASSERT_TRUE(n);
  EXPECT_EQ(n->status().state(), api::NodeStatus::DOWN);
  EXPECT_EQ(n->status().message(), "heartbeat failure");
  EXPECT_EQ(server.call([&] { return server.server().dispatcher().registered_nodes(); }), 0u);
  st = agent.heartbeat(as_node("node-a"), r.first.session_id());
  EXPECT_EQ(st.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(st.error_message(), "node not registered");
}

TEST(DispatcherSessionTest, TasksOfANodeDownForTheNodeDownPeriodAreOrphaned) {
  TestServer server(options_with([](auto& o) {
    o.dispatcher.heartbeat_period = 100ms;
    o.dispatcher.heartbeat_epsilon = 0ns;
    o.dispatcher.node_down_period = 300ms;
  }));
  Agent agent(server);
  auto r = register_node(agent, as_node("node-o"));
  ASSERT_TRUE(r.ok) << r.status.error_message();
  write(server, [](store::WriteTx& tx) {
    for (auto [id, state] : {std::pair{"t-assigned", api::ASSIGNED},
                             {"t-running", api::RUNNING},
                             {"t-pending", api::PENDING},
                             {"t-complete", api::COMPLETE}}) {
      if (auto st = tx.create(task_object(id, "node-o", state)); !st.is_ok()) return st;
    }
    return tx.create(task_object("t-elsewhere", "node-z", api::RUNNING));
  });
  // No heartbeats: DOWN after 3 periods, then orphaned after the node-down period.
  api::SessionMessage down;
  ASSERT_TRUE(r.stream->read(down));
  EXPECT_EQ(down.node().status().state(), api::NodeStatus::DOWN);
  ASSERT_TRUE(server.eventually([&] {
    auto t =
        server.server().store().view([](const store::ReadTx& tx) { return tx.task("t-running"); });
    return t && t->status().state() == api::ORPHANED;
  }));
  EXPECT_EQ(stored_task(server, "t-assigned")->status().state(), api::ORPHANED);
  EXPECT_EQ(stored_task(server, "t-pending")->status().state(), api::PENDING);
  EXPECT_EQ(stored_task(server, "t-complete")->status().state(), api::COMPLETE);
  EXPECT_EQ(stored_task(server, "t-elsewhere")->status().state(), api::RUNNING);
  EXPECT_EQ(server.call([&] { return server.server().dispatcher().down_nodes(); }), 0u);
}

TEST(DispatcherSessionTest, RegisteringAgainCancelsTheOrphaning) {
  TestServer server(options_with([](auto& o) {
    o.dispatcher.heartbeat_period = 100ms;
    o.dispatcher.heartbeat_epsilon = 0ns;
    o.dispatcher.node_down_period = 1s;
  }));
  Agent agent(server);
  auto r = register_node(agent, as_node("node-p"));
  ASSERT_TRUE(r.ok) << r.status.error_message();
  write(server,
        [](store::WriteTx& tx) { return tx.create(task_object("t-p", "node-p", api::RUNNING)); });
  api::SessionMessage down;
  ASSERT_TRUE(r.stream->read(down));
  ASSERT_EQ(down.node().status().state(), api::NodeStatus::DOWN);
  EXPECT_EQ(server.call([&] { return server.server().dispatcher().down_nodes(); }), 1u);
  r.stream->finish();
  auto again = register_node(agent, as_node("node-p"));
  ASSERT_TRUE(again.ok) << again.status.error_message();
  EXPECT_EQ(server.call([&] { return server.server().dispatcher().down_nodes(); }), 0u);
  EXPECT_EQ(stored_task(server, "t-p")->status().state(), api::RUNNING);
}

TEST(DispatcherSessionTest, RegularHeartbeatsKeepNodeReady) {
  TestServer server(options_with([](auto& o) {
    o.dispatcher.heartbeat_period = 100ms;
    o.dispatcher.heartbeat_epsilon = 0ns;
  }));
  Agent agent(server);
  auto r = register_node(agent, as_node("node-a"));
  ASSERT_TRUE(r.ok) << r.status.error_message();

  // Behave like an agent: the next heartbeat is due one period after the previous reply.
  const auto until = Clock::now() + 1s;  // 10 periods, 3+ expiry timeouts
  int beats = 0;
  while (Clock::now() < until) {
    api::HeartbeatResponse resp;
    grpc::Status st = agent.heartbeat(as_node("node-a"), r.first.session_id(), &resp);
    ASSERT_TRUE(st.ok()) << "heartbeat " << beats << ": " << st.error_message();
    EXPECT_EQ(as_duration(resp.period()), 100ms);
    ++beats;
    std::this_thread::sleep_for(as_duration(resp.period()));
  }
  EXPECT_GE(beats, 5);
  EXPECT_EQ(stored_node(server, "node-a")->status().state(), api::NodeStatus::READY);
  EXPECT_EQ(server.call([&] { return server.server().dispatcher().registered_nodes(); }), 1u);
  EXPECT_EQ(server.call([&] { return server.server().dispatcher().stats().heartbeat_expiries; }),
            0u);
}

TEST(DispatcherSessionTest, ExpiredNodeRegistersAgain) {
  TestServer server(options_with([](auto& o) {
    o.dispatcher.heartbeat_period = 100ms;
    o.dispatcher.heartbeat_epsilon = 0ns;
  }));
  Agent agent(server);
  auto r = register_node(agent, as_node("node-a"));
  ASSERT_TRUE(r.ok) << r.status.error_message();
  EXPECT_EQ(r.stream->finish().error_code(), grpc::StatusCode::NOT_FOUND);  // expired
  EXPECT_EQ(server.call([&] { return server.server().dispatcher().down_nodes(); }), 1u);

  auto again = register_node(agent, as_node("node-a"), r.first.session_id());
  ASSERT_TRUE(again.ok) << again.status.error_message();
  EXPECT_NE(again.first.session_id(), r.first.session_id());
  EXPECT_EQ(again.first.node().status().state(), api::NodeStatus::READY);
  EXPECT_EQ(again.first.node().status().message(), "");
  EXPECT_EQ(server.call([&] { return server.server().dispatcher().down_nodes(); }), 0u);
  EXPECT_TRUE(agent.heartbeat(as_node("node-a"), again.first.session_id()).ok());
}

TEST(DispatcherSessionTest, ClusterHeartbeatPeriodChangeAppliesToNextHeartbeat) {
  TestServer server(options_with([](auto& o) { o.dispatcher.heartbeat_epsilon = 0ns; }));
  Agent agent(server);
  auto r = register_node(agent, as_node("node-a"));
  ASSERT_TRUE(r.ok) << r.status.error_message();
  api::HeartbeatResponse resp;
  ASSERT_TRUE(agent.heartbeat(as_node("node-a"), r.first.session_id(), &resp).ok());
  EXPECT_EQ(as_duration(resp.period()), 5s);
  write(server, [](store::WriteTx& tx) {
    api::Cluster c = *tx.cluster();
    c.mutable_spec()->mutable_dispatcher()->mutable_heartbeat_period()->set_seconds(2);
    return tx.update(std::move(c));
  });
  ASSERT_TRUE(agent.heartbeat(as_node("node-a"), r.first.session_id(), &resp).ok());
  EXPECT_EQ(as_duration(resp.period()), 2s);
}

TEST(DispatcherSessionTest, ClusterHeartbeatPeriodAtStartOverridesConfiguration) {
  TestServer server(
      options_with([](auto& o) { o.dispatcher.heartbeat_epsilon = 0ns; }),
      [](dispatchd::app::Server& s) {
        s.store().update([](store::WriteTx& tx) {
          api::Cluster c = *tx.cluster();
          c.mutable_spec()->mutable_dispatcher()->mutable_heartbeat_period()->set_seconds(3);
          return tx.update(std::move(c));
        });
      });
  Agent agent(server);
  auto r = register_node(agent, as_node("node-a"));
  ASSERT_TRUE(r.ok) << r.status.error_message();
  api::HeartbeatResponse resp;
  ASSERT_TRUE(agent.heartbeat(as_node("node-a"), r.first.session_id(), &resp).ok());
  EXPECT_EQ(as_duration(resp.period()), 3s);
}

TEST(DispatcherSessionTest, DefaultClusterCarriesConfiguredHeartbeatPeriod) {
  TestServer server(options_with([](auto& o) { o.dispatcher.heartbeat_period = 7s; }));
  auto c = server.call([&] {
    return *server.server().store().view([](const store::ReadTx& tx) { return tx.cluster(); });
  });
  EXPECT_EQ(c.id(), "dispatchd");
  EXPECT_EQ(c.spec().annotations().name(), "default");
  ASSERT_TRUE(c.spec().dispatcher().has_heartbeat_period()) << "docs/behaviour.md §0.9";
  EXPECT_EQ(as_duration(c.spec().dispatcher().heartbeat_period()), 7s);
}

}  // namespace
