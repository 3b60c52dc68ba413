// The node registry on its own (docs/behaviour.md §3): sessions, the registration rate limit,
// heartbeats with jitter, expiry to DOWN, and Disconnect.

#include "dispatchd/dispatcher/node_registry.hpp"

#include <gtest/gtest.h>

#include <asio/io_context.hpp>
#include <set>

#include "support/drive.hpp"

namespace dispatchd::dispatcher {
namespace {

using namespace std::chrono_literals;

class NodeRegistryTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(store_
                    .update([](store::WriteTx& tx) {
                      api::Node n;
                      n.set_id("node-1");
                      n.mutable_status()->set_state(api::NodeStatus::READY);
                      return tx.create(std::move(n));
                    })
                    .is_ok());
  }
  api::NodeStatus::State state() {
    return store_.view([](const store::ReadTx& tx) { return tx.node("node-1")->status().state(); });
  }
  // Runs the io_context until `done` or `for_at_most`.
  template <class F>
  bool run_until(F done, std::chrono::milliseconds for_at_most = 5s) {
    return dispatchd::test::drive_until(io_, done, for_at_most, 10ms);
  }

  asio::io_context io_;
  co::TimerWheel wheel_{io_, 1ms};
  store::Store store_{"org"};
  StatusBatcher batcher_{io_, store_, "manager-1", 100};
  Config config_;
};

TEST_F(NodeRegistryTest, ACallNeedsTheNodesCurrentSession) {
  NodeRegistry reg(wheel_, store_, batcher_, config_);
  EXPECT_EQ(reg.check_session("node-1", "x").error(),
            Status(StatusCode::not_found, "node not registered"));
  auto& r = reg.register_node("node-1");
  EXPECT_EQ(r.session_id.size(), 25u);
  EXPECT_TRUE(reg.check_session("node-1", r.session_id));
  EXPECT_EQ(reg.check_session("node-1", "other").error(),
            Status(StatusCode::invalid_argument, "session invalid"));
  EXPECT_EQ(reg.check_session("node-1", "").error(),
            Status(StatusCode::invalid_argument, "session invalid"));
}

TEST_F(NodeRegistryTest, ANewRegistrationSupersedesTheOldOne) {
  NodeRegistry reg(wheel_, store_, batcher_, config_);
  auto& first = reg.register_node("node-1");
  auto superseded = first.superseded;
  std::string old_id = first.session_id;
  auto& second = reg.register_node("node-1");
  EXPECT_TRUE(superseded->is_set());
  EXPECT_NE(second.session_id, old_id);
  EXPECT_FALSE(reg.check_session("node-1", old_id));
  EXPECT_EQ(reg.registered(), 1u);
}

TEST_F(NodeRegistryTest, AtMostRateLimitCountRegistrationsPerPeriod) {
  NodeRegistry reg(wheel_, store_, batcher_, config_);
  // The first registration has nothing to count on yet; then rate_limit_count more attempts
  // within the period pass, and the next is refused.
  for (int i = 0; i <= config_.rate_limit_count; ++i) {
    ASSERT_TRUE(reg.check_rate_limit("node-1").is_ok()) << i;
    reg.register_node("node-1");
  }
  EXPECT_EQ(
      reg.check_rate_limit("node-1"),
      Status(StatusCode::unavailable, "node node-1 exceeded rate limit count of registrations"));
  EXPECT_EQ(reg.stats().rate_limited, 1u);
  EXPECT_TRUE(reg.check_rate_limit("node-2").is_ok()) << "the limit is per node";
}

TEST_F(NodeRegistryTest, HeartbeatPeriodsAreJitteredWithinEpsilon) {
  config_.heartbeat_period = 5s;
  config_.heartbeat_epsilon = 500ms;
  NodeRegistry reg(wheel_, store_, batcher_, config_);
  auto& r = reg.register_node("node-1");
  std::set<std::int64_t> seen;
  for (int i = 0; i < 50; ++i) {
    auto p = reg.heartbeat(r);
    EXPECT_GE(p, 4500ms);
    EXPECT_LT(p, 5500ms);
    seen.insert(p.count());
  }
  EXPECT_GT(seen.size(), 40u) << "the jitter is drawn per heartbeat";
  auto deadline = reg.view("node-1")->deadline;
  EXPECT_GT(deadline, std::chrono::steady_clock::now() + 3 * 4500ms - 100ms);
}

TEST_F(NodeRegistryTest, ANodeWithoutHeartbeatsGoesDownAndLosesItsRegistration) {
  config_.heartbeat_period = 20ms;
  config_.heartbeat_epsilon = 0ms;
  config_.grace_multiplier = 1;
  NodeRegistry reg(wheel_, store_, batcher_, config_);
  reg.register_node("node-1");
  ASSERT_TRUE(run_until([&] { return state() == api::NodeStatus::DOWN; }));
  EXPECT_EQ(reg.registered(), 0u);
  EXPECT_EQ(reg.down(), 1u);
  EXPECT_EQ(reg.stats().heartbeat_expiries, 1u);
  auto msg =
      store_.view([](const store::ReadTx& tx) { return tx.node("node-1")->status().message(); });
  EXPECT_EQ(msg, "heartbeat failure");
  reg.node_ready("node-1");
  EXPECT_EQ(reg.down(), 0u);
}

TEST_F(NodeRegistryTest, DisconnectRaisesTheSignalAndStopsTheDeadline) {
  config_.heartbeat_period = 20ms;
  config_.heartbeat_epsilon = 0ms;
  config_.grace_multiplier = 1;
  NodeRegistry reg(wheel_, store_, batcher_, config_);
  EXPECT_FALSE(reg.disconnect("node-1"));
  auto& r = reg.register_node("node-1");
  auto signal = r.disconnect;
  EXPECT_TRUE(reg.disconnect("node-1"));
  EXPECT_TRUE(signal->is_set());
  // No expiry comes (ten times the grace): the session marks the node itself when it ends.
  bool expired = run_until([&] { return reg.stats().heartbeat_expiries > 0; }, 200ms);
  EXPECT_FALSE(expired);
}

TEST_F(NodeRegistryTest, NothingIsMarkedOnceClosed) {
  NodeRegistry reg(wheel_, store_, batcher_, config_);
  reg.register_node("node-1");
  reg.close();
  EXPECT_EQ(reg.registered(), 0u);
  reg.mark_not_ready("node-1", api::NodeStatus::DOWN, "x");
  io_.restart();
  io_.poll();
  EXPECT_EQ(state(), api::NodeStatus::READY);
}

}  // namespace
}  // namespace dispatchd::dispatcher
