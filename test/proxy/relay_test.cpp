// The follower's relay on its own terms, with the test service forwarded as the Dispatcher is:
// flow-control backpressure in both directions (a slow agent holds the leader back, a slow
// leader holds the agent back, and the follower buffers neither), statuses and metadata passed
// unchanged, deadlines and cancellation carried upstream. grpc++ is the agent.

#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <future>
#include <memory>
#include <string>
#include <thread>

#include "dispatchd/grpc/metadata.hpp"
#include "dispatchd/proxy/forwarder.hpp"
#include "support/test_server.hpp"
#include "support/test_service.hpp"
#include "test_service.grpc.pb.h"

namespace {

namespace pb = dispatchd::test;
using dispatchd::test::TestServer;
using dispatchd::test::TestServiceState;
using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

const std::vector<dispatchd::proxy::ForwardedMethod> kTestMethods = {
    {"/dispatchd.test.TestService/Echo", dispatchd::proxy::CallShape::unary},
    {"/dispatchd.test.TestService/Fail", dispatchd::proxy::CallShape::unary},
    {"/dispatchd.test.TestService/Hang", dispatchd::proxy::CallShape::unary},
    {"/dispatchd.test.TestService/Stream", dispatchd::proxy::CallShape::server_stream},
    {"/dispatchd.test.TestService/HangStream", dispatchd::proxy::CallShape::server_stream},
    {"/dispatchd.test.TestService/Stall", dispatchd::proxy::CallShape::client_stream},
};

dispatchd::app::Options named(const std::string& node_id) {
  auto o = TestServer::default_options();
  o.dispatcher.manager_node_id = node_id;
  return o;
}

class RelayTest : public ::testing::Test {
 protected:
  RelayTest()
      : leader_(named("manager-a"),
                [this](dispatchd::app::Server& s) { add_test_service(s.grpc(), leader_state_); }),
        follower_(named("manager-b"), [this](dispatchd::app::Server& s) {
          add_test_service(s.grpc(), follower_state_);
          s.forwarder().add_to(s.grpc(), kTestMethods);
        }) {
    follower_.call([&] {
      follower_.server().forwarder().set_forwarding(true);
      follower_.server().forwarder().set_leader(leader_.address());
      return 0;
    });
    grpc::ChannelArguments args;
    args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
    args.SetInt(GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH, -1);
    stub_ = pb::TestService::NewStub(
        grpc::CreateCustomChannel(follower_.address(), grpc::InsecureChannelCredentials(), args));
  }

  std::unique_ptr<grpc::ClientContext> ctx(std::chrono::seconds timeout = 30s) {
    auto c = std::make_unique<grpc::ClientContext>();
    c->set_deadline(std::chrono::system_clock::now() + timeout);
    c->AddMetadata("node-id", "node-1");
    return c;
  }

  TestServiceState leader_state_;
  TestServiceState follower_state_;
  TestServer leader_;
  TestServer follower_;
  std::unique_ptr<pb::TestService::Stub> stub_;
};

TEST_F(RelayTest, StatusAndMessageOfTheLeaderReachTheAgentUnchanged) {
  pb::FailRequest req;
  req.set_code(9);
  req.set_message("precondition: ünïcode % and\nnewline");
  pb::EchoReply reply;
  auto st = stub_->Fail(ctx().get(), req, &reply);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_EQ(st.error_message(), req.message());
}

TEST_F(RelayTest, LeaderSeesTheAgentsMetadataAndTheForwardedIdentity) {
  auto c = ctx();
  c->AddMetadata("x-custom", "kept");
  c->AddMetadata("node-role", "swarm-worker");
  pb::EchoRequest req;
  req.set_payload("hello");
  for (const char* k :
       {"x-custom", "node-id", "node-role", "forwarded_cert", "forwarded_cert_cn",
        "forwarded_cert_ou", "forwarded_cert_org", "remote_addr", "redirect", "grpc-timeout"}) {
    req.add_metadata_keys(k);
  }
  pb::EchoReply reply;
  auto st = stub_->Echo(c.get(), req, &reply);
  ASSERT_TRUE(st.ok()) << st.error_message();
  EXPECT_EQ(reply.payload(), "hello");
  ASSERT_EQ(reply.metadata_size(), 10);
  EXPECT_EQ(reply.metadata(0), "kept");
  EXPECT_EQ(reply.metadata(1), "manager-b");      // the forwarder speaks for itself
  EXPECT_EQ(reply.metadata(2), "swarm-manager");  // as a manager
  EXPECT_EQ(reply.metadata(3), "true");
  EXPECT_EQ(reply.metadata(4), "node-1");  // the agent, forwarded
  EXPECT_EQ(reply.metadata(5), "swarm-worker");
  EXPECT_EQ(reply.metadata(6), "dispatchd");
  EXPECT_TRUE(reply.metadata(7).starts_with("127.0.0.1:"));
  EXPECT_EQ(reply.metadata(8), reply.metadata(7));
  EXPECT_NE(reply.metadata(9), "<absent>");  // the deadline travels upstream
}

TEST_F(RelayTest, SlowAgentHoldsTheLeaderBackAndTheFollowerBuffersNothingMore) {
  constexpr std::uint32_t kCount = 1000, kSize = 64 * 1024;  // 64 MiB in all
  auto c = ctx(120s);
  pb::StreamRequest req;
  req.set_count(kCount);
  req.set_size(kSize);
  auto reader = stub_->Stream(c.get(), req);
  pb::Chunk chunk;
  ASSERT_TRUE(reader->Read(&chunk));

  // The agent reads nothing more: the leader's writer must come to a stop, with everything it
  // wrote held by windows and socket buffers (grpc++'s, the follower's two, the kernel's), not
  // all 64 MiB taken in by the follower.
  ASSERT_TRUE(leader_.eventually([&] { return leader_state_.stream_blocked; }));
  std::uint32_t before = 0, after = 0;
  for (int settled = 0; settled < 3;) {
    before = leader_.call([&] { return leader_state_.stream_written; });
    std::this_thread::sleep_for(300ms);  // looking for the absence of progress
    after = leader_.call([&] { return leader_state_.stream_written; });
    settled = after == before ? settled + 1 : 0;
  }
  EXPECT_LT(after, kCount / 2) << "the leader wrote " << after << " of " << kCount;
  EXPECT_FALSE(leader_.call([&] { return leader_state_.stream_done; }));

  // Reading again lets everything through, in order.
  std::uint32_t n = 1;
  while (reader->Read(&chunk)) {
    ASSERT_EQ(chunk.index(), n);
    ASSERT_EQ(chunk.data().size(), kSize);
    ++n;
  }
  auto st = reader->Finish();
  EXPECT_TRUE(st.ok()) << st.error_message();
  EXPECT_EQ(n, kCount);
  EXPECT_TRUE(leader_.call([&] { return leader_state_.stream_done; }));
}

TEST_F(RelayTest, SlowLeaderHoldsTheAgentBack) {
  constexpr int kCount = 1000;  // 64 KiB each: 64 MiB in all
  auto c = ctx(120s);
  pb::EchoReply reply;
  auto writer = stub_->Stall(c.get(), &reply);
  std::atomic<int> written{0};
  auto writes = std::async(std::launch::async, [&] {
    pb::Empty e;
    grpc::WriteOptions o;
    for (int i = 0; i < kCount; ++i) {
      // Empty messages are small: pad them with unknown fields the leader skips over.
      std::string bytes(64 * 1024, '\0');
      bytes[0] = static_cast<char>((15 << 3) | 2);  // field 15, length-delimited
      // A varint length that covers the rest of the buffer.
      const std::size_t len = bytes.size() - 4;
      bytes[1] = static_cast<char>((len & 0x7f) | 0x80);
      bytes[2] = static_cast<char>(((len >> 7) & 0x7f) | 0x80);
      bytes[3] = static_cast<char>(len >> 14);
      e.Clear();
      if (!e.ParseFromString(bytes)) return false;
      if (!writer->Write(e, o)) return false;
      ++written;
    }
    return writer->WritesDone();
  });

  // The leader reads nothing: the agent's writes must stop.
  ASSERT_TRUE(leader_.eventually([&] { return leader_state_.stall_started == 1; }));
  int before = 0, after = 0;
  for (int settled = 0; settled < 3;) {
    before = written.load();
    std::this_thread::sleep_for(300ms);  // looking for the absence of progress
    after = written.load();
    settled = after == before ? settled + 1 : 0;
  }
  EXPECT_LT(after, kCount / 2) << "the agent wrote " << after << " of " << kCount;
  EXPECT_EQ(leader_.call([&] { return leader_state_.stall_read; }), 0);

  leader_.call([&] {
    leader_state_.stall_release.set();
    return 0;
  });
  EXPECT_TRUE(writes.get());
  auto st = writer->Finish();
  ASSERT_TRUE(st.ok()) << st.error_message();
  EXPECT_EQ(reply.payload(), std::to_string(kCount));
  EXPECT_EQ(leader_.call([&] { return leader_state_.stall_read; }), kCount);
}

TEST_F(RelayTest, AgentsCancelEndsTheUpstreamCall) {
  auto c = ctx();
  auto reader = stub_->HangStream(c.get(), pb::Empty());
  pb::Chunk chunk;
  ASSERT_TRUE(reader->Read(&chunk));
  EXPECT_EQ(leader_.call([&] { return leader_state_.hang_started; }), 1);
  c->TryCancel();
  EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::CANCELLED);
  EXPECT_TRUE(leader_.eventually([&] { return leader_state_.hang_cancelled == 1; }));
  EXPECT_TRUE(
      follower_.eventually([&] { return follower_.server().forwarder().active_calls() == 0; }));
}

TEST_F(RelayTest, DeadlineTravelsUpstream) {
  // The leader gets what is left of the agent's deadline as its own grpc-timeout.
  auto c = ctx(5s);
  pb::EchoRequest req;
  req.add_metadata_keys("grpc-timeout");
  pb::EchoReply reply;
  auto st = stub_->Echo(c.get(), req, &reply);
  ASSERT_TRUE(st.ok()) << st.error_message();
  ASSERT_EQ(reply.metadata_size(), 1);
  auto timeout = dispatchd::grpc::parse_grpc_timeout(reply.metadata(0));
  ASSERT_TRUE(timeout.has_value()) << reply.metadata(0);
  EXPECT_GT(*timeout, 4s);
  EXPECT_LE(*timeout, 5s);

  // A call past its deadline ends DEADLINE_EXCEEDED for the agent, and ends at the leader.
  auto h = ctx(1s);
  pb::Empty out;
  auto hst = stub_->Hang(h.get(), pb::Empty(), &out);
  EXPECT_EQ(hst.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  EXPECT_TRUE(leader_.eventually([&] { return leader_state_.hang_cancelled == 1; }));
}

}  // namespace
