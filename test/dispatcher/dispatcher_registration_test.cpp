// Registration, re-registration, resume and the rate limit (docs/behaviour.md §3, §4.3,
// §4.7, §0.1, §0.2, §0.7, §0.9).
// Over the wire, judged by the real gRPC C++ client (test/support/agent.hpp).

#include <google/protobuf/util/message_differencer.h>
#include <gtest/gtest.h>

#include <algorithm>

#include "support/agent.hpp"

namespace {

using namespace dispatchd::test;  // the agent and the setup helpers (support/agent.hpp)

// =============================================================================================
// Registration (docs/behaviour.md §4, §0.2)

TEST(DispatcherSessionTest, FirstMessageCarriesSessionIdReadyNodeAndManagers) {
  TestServer server;
  Agent agent(server);
  api::NodeDescription description;
  description.set_hostname("host-a");
  description.mutable_platform()->set_os("linux");
  description.mutable_platform()->set_architecture("x86_64");
  description.mutable_resources()->set_nano_cpus(4000000000);
  description.mutable_resources()->set_memory_bytes(8LL << 30);
  description.mutable_engine()->set_engine_version("24.0.7");
  (*description.mutable_engine()->mutable_labels())["zone"] = "a";
  auto r = register_node(agent, as_node("node-a"), {}, &description);
  ASSERT_TRUE(r.ok) << r.status.error_message();

  const std::string& id = r.first.session_id();
  EXPECT_EQ(id.size(), 25u) << id;
  EXPECT_TRUE(std::all_of(id.begin(), id.end(), [](char c) {
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z');
  })) << id;
  EXPECT_EQ(r.first.node().id(), "node-a");
  EXPECT_EQ(r.first.node().status().state(), api::NodeStatus::READY);
  EXPECT_EQ(r.first.node().status().addr(), "127.0.0.1");
  EXPECT_TRUE(
      google::protobuf::util::MessageDifferencer::Equals(r.first.node().description(), description))
      << r.first.node().description().DebugString();
  ASSERT_EQ(r.first.managers_size(), 1);
  EXPECT_EQ(r.first.managers(0).peer().node_id(), "manager-1");
  EXPECT_EQ(r.first.managers(0).peer().addr(), server.address());
  EXPECT_EQ(r.first.managers(0).weight(), 10);
}

TEST(DispatcherSessionTest, RegistrationAdmitsUnknownWorkerAsAcceptedNode) {
  TestServer server;
  Agent agent(server);
  ASSERT_FALSE(stored_node(server, "node-a"));
  auto r = register_node(agent, as_node("node-a"));
  ASSERT_TRUE(r.ok) << r.status.error_message();

  auto n = stored_node(server, "node-a");
  ASSERT_TRUE(n);
  EXPECT_EQ(n->spec().membership(), api::NodeSpec::ACCEPTED);
  EXPECT_EQ(n->role(), api::WORKER);
  EXPECT_EQ(n->spec().desired_role(), api::WORKER);
  EXPECT_EQ(n->status().state(), api::NodeStatus::READY);
  EXPECT_EQ(n->status().addr(), "127.0.0.1");
  EXPECT_EQ(server.call([&] { return server.server().dispatcher().registered_nodes(); }), 1u);
}

TEST(DispatcherSessionTest, RegistrationAdmitsManagerCertificateAsManagerNode) {
  TestServer server;
  Agent agent(server);
  auto r = register_node(agent, as_node("node-m", "swarm-manager"));
  ASSERT_TRUE(r.ok) << r.status.error_message();

  auto n = stored_node(server, "node-m");
  ASSERT_TRUE(n);
  EXPECT_EQ(n->spec().membership(), api::NodeSpec::ACCEPTED);
  EXPECT_EQ(n->role(), api::MANAGER);
  EXPECT_EQ(n->spec().desired_role(), api::MANAGER);
  EXPECT_EQ(r.first.node().role(), api::MANAGER);
}

TEST(DispatcherSessionTest, RequireKnownNodesRejectsNodeNotFound) {
  TestServer server(options_with([](auto& o) { o.dispatcher.require_known_nodes = true; }));
  Agent agent(server);
  auto r = register_node(agent, as_node("stranger"));
  ASSERT_FALSE(r.ok);
  EXPECT_EQ(r.status.error_code(), grpc::StatusCode::UNKNOWN);
  EXPECT_EQ(r.status.error_message(), "node not found");
  EXPECT_FALSE(stored_node(server, "stranger"));
  EXPECT_EQ(server.call([&] { return server.server().dispatcher().registered_nodes(); }), 0u);
}

TEST(DispatcherSessionTest, RequireKnownNodesAcceptsNodeCreatedInStore) {
  TestServer server(options_with([](auto& o) { o.dispatcher.require_known_nodes = true; }));
  write(server, [](store::WriteTx& tx) {
    return tx.create(node_object("known", api::NodeStatus::UNKNOWN));
  });
  Agent agent(server);
  auto r = register_node(agent, as_node("known"));
  ASSERT_TRUE(r.ok) << r.status.error_message();
  EXPECT_EQ(r.first.node().id(), "known");
  EXPECT_EQ(r.first.node().status().state(), api::NodeStatus::READY);
}

// =============================================================================================
// Re-registration and resume (docs/behaviour.md §3, §4.3, §0.7)

TEST(DispatcherSessionTest, ReRegisterDisconnectsPreviousSession) {
  TestServer server;
  Agent agent(server);
  auto old_session = register_node(agent, as_node("node-a"));
  ASSERT_TRUE(old_session.ok) << old_session.status.error_message();
  auto new_session = register_node(agent, as_node("node-a"));
  ASSERT_TRUE(new_session.ok) << new_session.status.error_message();
  EXPECT_NE(new_session.first.session_id(), old_session.first.session_id());

  // The heartbeat period is 5 s: ending well before that is "at once", not at a timeout.
  auto t0 = Clock::now();
  grpc::Status st = old_session.stream->finish();
  EXPECT_LT(Clock::now() - t0, 2s);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(st.error_message(), "session invalid");

  st = agent.heartbeat(as_node("node-a"), old_session.first.session_id());
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(st.error_message(), "session invalid");
  st = agent.heartbeat(as_node("node-a"), new_session.first.session_id());
  EXPECT_TRUE(st.ok()) << st.error_message();
  EXPECT_TRUE(server.eventually([&] { return server.server().dispatcher().open_sessions() == 1; }));
}

TEST(DispatcherSessionTest, StaleSessionIdRegistersNewSession) {
  TestServer server;
  Agent agent(server);
  auto old_session = register_node(agent, as_node("node-a"));
  ASSERT_TRUE(old_session.ok) << old_session.status.error_message();
  auto new_session = register_node(agent, as_node("node-a"), "0000000000000000000000000");
  ASSERT_TRUE(new_session.ok) << new_session.status.error_message();
  EXPECT_NE(new_session.first.session_id(), old_session.first.session_id());
  EXPECT_NE(new_session.first.session_id(), "0000000000000000000000000");

  grpc::Status st = old_session.stream->finish();
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(st.error_message(), "session invalid");
  EXPECT_TRUE(agent.heartbeat(as_node("node-a"), new_session.first.session_id()).ok());
}

TEST(DispatcherSessionTest, ResumeKeepsSessionIdAndDoesNotCountTowardRateLimit) {
  TestServer server;
  Agent agent(server);
  auto first = register_node(agent, as_node("node-a"));  // registration 1 (no record yet)
  ASSERT_TRUE(first.ok) << first.status.error_message();
  const std::string id = first.first.session_id();
  first.stream->cancel();
  first.stream->finish();
  for (int i = 0; i < 6; ++i) {
    auto resumed = register_node(agent, as_node("node-a"), id);
    ASSERT_TRUE(resumed.ok) << "resume " << i << ": " << resumed.status.error_message();
    EXPECT_EQ(resumed.first.session_id(), id);
    EXPECT_EQ(resumed.first.node().status().state(), api::NodeStatus::READY);
    resumed.stream->cancel();
    resumed.stream->finish();
  }
  EXPECT_TRUE(agent.heartbeat(as_node("node-a"), id).ok());
  // Had the resumes counted, the window would be exhausted: three more registrations fit in it
  // (attempts 1..3), the fourth is refused.
  std::vector<Registered> keep;
  for (int i = 0; i < 3; ++i) {
    keep.push_back(register_node(agent, as_node("node-a")));
    ASSERT_TRUE(keep.back().ok) << "registration " << i + 2 << ": "
                                << keep.back().status.error_message();
  }
  auto refused = register_node(agent, as_node("node-a"));
  ASSERT_FALSE(refused.ok);
  EXPECT_EQ(refused.status.error_code(), grpc::StatusCode::UNAVAILABLE);
}

TEST(DispatcherSessionTest, ResumeUpdatesNodeDescription) {
  TestServer server;
  Agent agent(server);
  api::NodeDescription d1;
  d1.set_hostname("before");
  auto first = register_node(agent, as_node("node-a"), {}, &d1);
  ASSERT_TRUE(first.ok) << first.status.error_message();
  api::NodeDescription d2;
  d2.set_hostname("after");
  auto resumed = register_node(agent, as_node("node-a"), first.first.session_id(), &d2);
  ASSERT_TRUE(resumed.ok) << resumed.status.error_message();
  EXPECT_EQ(resumed.first.session_id(), first.first.session_id());
  EXPECT_EQ(resumed.first.node().description().hostname(), "after");
  EXPECT_EQ(stored_node(server, "node-a")->description().hostname(), "after");
}

TEST(DispatcherSessionTest, ResumeWithoutDescriptionKeepsDescription) {
  TestServer server;
  Agent agent(server);
  api::NodeDescription d1;
  d1.set_hostname("kept");
  auto first = register_node(agent, as_node("node-a"), {}, &d1);
  ASSERT_TRUE(first.ok) << first.status.error_message();
  auto resumed = register_node(agent, as_node("node-a"), first.first.session_id());
  ASSERT_TRUE(resumed.ok) << resumed.status.error_message();
  EXPECT_EQ(resumed.first.session_id(), first.first.session_id());
  EXPECT_EQ(resumed.first.node().description().hostname(), "kept");
  EXPECT_EQ(stored_node(server, "node-a")->description().hostname(), "kept");
}

// =============================================================================================
// Rate limit (docs/behaviour.md §3)

TEST(DispatcherSessionTest, AdmittedNodeFifthQuickRegistrationExceedsRateLimit) {
  TestServer server;
  Agent agent(server);
  std::vector<Registered> keep;
  for (int i = 0; i < 4; ++i) {
    keep.push_back(register_node(agent, as_node("node-a")));
    ASSERT_TRUE(keep.back().ok) << "registration " << i + 1 << ": "
                                << keep.back().status.error_message();
  }
  auto fifth = register_node(agent, as_node("node-a"));
  ASSERT_FALSE(fifth.ok);
  EXPECT_EQ(fifth.status.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_EQ(fifth.status.error_message(), "node node-a exceeded rate limit count of registrations");
  // The current session (the 4th) is untouched by the refused attempt.
  EXPECT_TRUE(agent.heartbeat(as_node("node-a"), keep.back().first.session_id()).ok());
}

TEST(DispatcherSessionTest, PreloadedNodeFourthQuickRegistrationExceedsRateLimit) {
  TestServer server(TestServer::default_options(), [](dispatchd::app::Server& s) {
    s.store().update(
        [](store::WriteTx& tx) { return tx.create(node_object("pre-1", api::NodeStatus::READY)); });
  });
  Agent agent(server);
  std::vector<Registered> keep;
  for (int i = 0; i < 3; ++i) {
    keep.push_back(register_node(agent, as_node("pre-1")));
    ASSERT_TRUE(keep.back().ok) << "registration " << i + 1 << ": "
                                << keep.back().status.error_message();
  }
  auto fourth = register_node(agent, as_node("pre-1"));
  ASSERT_FALSE(fourth.ok);
  EXPECT_EQ(fourth.status.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_EQ(fourth.status.error_message(), "node pre-1 exceeded rate limit count of registrations");
}

TEST(DispatcherSessionTest, RefusedRegistrationDoesNotExtendRateLimitWindow) {
  TestServer server(options_with([](auto& o) { o.dispatcher.rate_limit_period = 500ms; }));
  Agent agent(server);
  std::vector<Registered> keep;
  for (int i = 0; i < 4; ++i) {
    keep.push_back(register_node(agent, as_node("node-a")));
    ASSERT_TRUE(keep.back().ok) << "registration " << i + 1 << ": "
                                << keep.back().status.error_message();
  }
  // The window is measured from the last accepted registration; time passing is what is
  // tested here, so the test waits for it.
  const auto last_accepted = Clock::now();
  auto refused = register_node(agent, as_node("node-a"));
  ASSERT_FALSE(refused.ok);
  EXPECT_EQ(refused.status.error_code(), grpc::StatusCode::UNAVAILABLE);
  std::this_thread::sleep_until(last_accepted + 250ms);
  refused = register_node(agent, as_node("node-a"));
  ASSERT_FALSE(refused.ok) << "attempts keep counting within the window";
  EXPECT_EQ(refused.status.error_code(), grpc::StatusCode::UNAVAILABLE);
  ASSERT_LT(Clock::now() - last_accepted, 450ms) << "machine too slow for this test's timing";
  std::this_thread::sleep_until(last_accepted + 600ms);
  auto accepted = register_node(agent, as_node("node-a"));
  EXPECT_TRUE(accepted.ok) << "refusals must not move the window: "
                           << accepted.status.error_message();
}

TEST(DispatcherSessionTest, ZeroRateLimitPeriodDisablesRateLimit) {
  TestServer server(options_with([](auto& o) { o.dispatcher.rate_limit_period = 0ns; }));
  Agent agent(server);
  for (int i = 0; i < 10; ++i) {
    auto r = register_node(agent, as_node("node-a"));
    ASSERT_TRUE(r.ok) << "registration " << i + 1 << ": " << r.status.error_message();
  }
  EXPECT_EQ(server.call([&] { return server.server().dispatcher().stats().rate_limited; }), 0u);
}

}  // namespace
