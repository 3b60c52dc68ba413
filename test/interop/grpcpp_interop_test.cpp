// Our server judged by a real peer: the gRPC C++ client (Debian libgrpc++).

#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <thread>

#include "dispatcher.grpc.pb.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "support/agent.hpp"
#include "support/test_server.hpp"
#include "support/test_service.hpp"
#include "test_service.grpc.pb.h"

namespace {

namespace api = docker::swarmkit::v1;
namespace hv1 = grpc::health::v1;
namespace tpb = dispatchd::test;
using dispatchd::test::TestServer;
using dispatchd::test::TestServiceState;

class InteropTest : public ::testing::Test {
 protected:
  InteropTest()
      : server_(TestServer::default_options(),
                [this](dispatchd::app::Server& s) { add_test_service(s.grpc(), state_); }) {
    grpc::ChannelArguments args;
    // A fixed, small receive window makes flow control observable (no BDP growth).
    args.SetInt(GRPC_ARG_HTTP2_BDP_PROBE, 0);
    args.SetInt(GRPC_ARG_HTTP2_STREAM_LOOKAHEAD_BYTES, 64 * 1024);
    args.SetInt(GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH, -1);
    channel_ =
        grpc::CreateCustomChannel(server_.address(), grpc::InsecureChannelCredentials(), args);
    test_ = tpb::TestService::NewStub(channel_);
    dispatcher_ = api::Dispatcher::NewStub(channel_);
    health_ = hv1::Health::NewStub(channel_);
  }

  TestServiceState state_;
  TestServer server_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<tpb::TestService::Stub> test_;
  std::unique_ptr<api::Dispatcher::Stub> dispatcher_;
  std::unique_ptr<hv1::Health::Stub> health_;
};

TEST_F(InteropTest, UnaryCallReturnsTheResponse) {
  grpc::ClientContext ctx;
  tpb::EchoRequest req;
  req.set_payload(std::string("hello\0world", 11));
  tpb::EchoReply reply;
  grpc::Status st = test_->Echo(&ctx, req, &reply);
  ASSERT_TRUE(st.ok()) << st.error_message();
  EXPECT_EQ(reply.payload(), std::string("hello\0world", 11));
}

TEST_F(InteropTest, HandlerReadsCustomAndBinaryMetadata) {
  grpc::ClientContext ctx;
  const std::string binary("\x00\x01\xfe\xff bin", 8);
  ctx.AddMetadata("x-custom", "value-1");
  ctx.AddMetadata("x-blob-bin", binary);
  tpb::EchoRequest req;
  req.add_metadata_keys("x-custom");
  req.add_metadata_keys("x-blob-bin");
  req.add_metadata_keys("x-missing");
  tpb::EchoReply reply;
  grpc::Status st = test_->Echo(&ctx, req, &reply);
  ASSERT_TRUE(st.ok()) << st.error_message();
  ASSERT_EQ(reply.metadata_size(), 3);
  EXPECT_EQ(reply.metadata(0), "value-1");
  EXPECT_EQ(reply.metadata(1), binary);
  EXPECT_EQ(reply.metadata(2), "<absent>");
}

TEST_F(InteropTest, UnaryErrorCarriesCodeAndPercentEncodedMessage) {
  grpc::ClientContext ctx;
  tpb::FailRequest req;
  req.set_code(grpc::StatusCode::NOT_FOUND);
  const std::string message = "nöde \"x\" is 100% gone\nline two";
  req.set_message(message);
  tpb::EchoReply reply;
  grpc::Status st = test_->Fail(&ctx, req, &reply);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(st.error_message(), message);
}

// A unary call by method name through grpc++'s generic stub.
grpc::Status generic_call(const std::shared_ptr<grpc::Channel>& channel,
                          const std::string& method) {
  grpc::GenericStub generic(channel);
  grpc::ClientContext ctx;
  grpc::Slice empty("");
  grpc::ByteBuffer request(&empty, 1), response;
  grpc::Status result;
  bool done = false;
  std::mutex mu;
  std::condition_variable cv;
  generic.UnaryCall(&ctx, method, grpc::StubOptions(), &request, &response, [&](grpc::Status s) {
    std::lock_guard lk(mu);
    result = s;
    done = true;
    cv.notify_one();
  });
  std::unique_lock lk(mu);
  if (!cv.wait_for(lk, std::chrono::seconds(10), [&] { return done; })) {
    return grpc::Status(grpc::StatusCode::INTERNAL, "test: no answer");
  }
  return result;
}

TEST_F(InteropTest, UnknownMethodOfKnownServiceIsUnimplemented) {
  grpc::Status st = generic_call(channel_, "/grpc.health.v1.Health/Nope");
  EXPECT_EQ(st.error_code(), grpc::StatusCode::UNIMPLEMENTED);
  EXPECT_EQ(st.error_message(), "unknown method Nope for service grpc.health.v1.Health");
}

TEST_F(InteropTest, UnknownServiceIsUnimplemented) {
  grpc::Status st = generic_call(channel_, "/no.such.Service/Method");
  EXPECT_EQ(st.error_code(), grpc::StatusCode::UNIMPLEMENTED);
  EXPECT_EQ(st.error_message(), "unknown service no.such.Service");
}

TEST_F(InteropTest, OversizedRequestIsResourceExhausted) {
  grpc::ClientContext ctx;
  tpb::EchoRequest req;
  req.set_payload(std::string(5 * 1024 * 1024, 'x'));
  tpb::EchoReply reply;
  grpc::Status st = test_->Echo(&ctx, req, &reply);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_NE(st.error_message().find("larger than max"), std::string::npos) << st.error_message();
  // The connection stays usable.
  grpc::ClientContext ctx2;
  req.set_payload("small");
  EXPECT_TRUE(test_->Echo(&ctx2, req, &reply).ok());
}

// A configured limit, not the 4 MiB default: a request exactly at it is served, one byte more
// is RESOURCE_EXHAUSTED naming the configured limit (a server ignoring the option would serve
// both).
TEST(InteropMaxRecvMsgSizeTest, ConfiguredLimitIsEnforcedToTheByte) {
  constexpr std::size_t kLimit = 64 * 1024;
  TestServiceState state;
  auto options = TestServer::default_options();
  options.grpc.max_receive_message_size = kLimit;
  TestServer server(options, [&](dispatchd::app::Server& s) { add_test_service(s.grpc(), state); });
  auto stub = tpb::TestService::NewStub(
      grpc::CreateChannel(server.address(), grpc::InsecureChannelCredentials()));

  // A payload whose encoded request is `size` bytes long (tag, length varint, payload).
  auto request_of_size = [](std::size_t size) {
    tpb::EchoRequest req;
    req.set_payload(std::string(size - 4, 'x'));  // a 3-byte length varint below 2 MiB
    EXPECT_EQ(req.ByteSizeLong(), size);
    return req;
  };
  {
    grpc::ClientContext ctx;
    tpb::EchoReply reply;
    grpc::Status st = stub->Echo(&ctx, request_of_size(kLimit + 1), &reply);
    EXPECT_EQ(st.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << st.error_message();
    EXPECT_NE(st.error_message().find("(65537 vs. 65536)"), std::string::npos)
        << st.error_message();
  }
  {
    grpc::ClientContext ctx;
    tpb::EchoReply reply;
    auto req = request_of_size(kLimit);
    grpc::Status st = stub->Echo(&ctx, req, &reply);
    ASSERT_TRUE(st.ok()) << st.error_message();
    EXPECT_EQ(reply.payload(), req.payload());
  }
}

TEST_F(InteropTest, StreamLargerThanWindowWaitsForSlowReader) {
  constexpr std::uint32_t kCount = 400;
  constexpr std::uint32_t kSize = 64 * 1024;  // 25 MiB in all, far beyond any window
  grpc::ClientContext ctx;
  tpb::StreamRequest req;
  req.set_count(kCount);
  req.set_size(kSize);
  auto reader = test_->Stream(&ctx, req);
  tpb::Chunk chunk;
  ASSERT_TRUE(reader->Read(&chunk));
  EXPECT_EQ(chunk.index(), 0u);
  // The reader stops; the handler must end up suspended on the window, not run ahead.
  ASSERT_TRUE(
      server_.eventually([&] { return state_.stream_blocked && state_.stream_written > 0; }));
  // Let it settle: the handler stays blocked and its count stops moving for 50 polls in a row.
  std::uint32_t written = 0;
  int stable = 0;
  ASSERT_TRUE(server_.eventually([&] {
    std::uint32_t now = state_.stream_written;
    stable = (state_.stream_blocked && now == written) ? stable + 1 : 0;
    written = now;
    return stable >= 50;
  }));
  // What left the handler fits in the windows (client stream window + connection window +
  // socket buffers): far less than the whole stream.
  EXPECT_LT(static_cast<std::uint64_t>(written) * kSize, 8ull * 1024 * 1024)
      << "the server ran ahead of a stalled reader";
  EXPECT_FALSE(server_.call([&] { return state_.stream_done; }));

  std::uint32_t expected = 1;
  while (reader->Read(&chunk)) {
    ASSERT_EQ(chunk.index(), expected);
    ASSERT_EQ(chunk.data().size(), kSize);
    ASSERT_EQ(chunk.data()[0], static_cast<char>('a' + expected % 26));
    ++expected;
  }
  EXPECT_EQ(expected, kCount);
  grpc::Status st = reader->Finish();
  EXPECT_TRUE(st.ok()) << st.error_message();
  EXPECT_TRUE(server_.call([&] { return state_.stream_done; }));
}

TEST_F(InteropTest, ClientCancelReachesTheHandler) {
  grpc::ClientContext ctx;
  tpb::Empty req;
  auto reader = test_->HangStream(&ctx, req);
  tpb::Chunk chunk;
  ASSERT_TRUE(reader->Read(&chunk));
  ASSERT_TRUE(server_.eventually([&] { return state_.hang_started == 1; }));
  ctx.TryCancel();
  EXPECT_TRUE(server_.eventually([&] { return state_.hang_cancelled == 1; }));
  EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::CANCELLED);
  EXPECT_EQ(server_.call([&] { return state_.hang_deadline_exceeded; }), 0);
  EXPECT_TRUE(server_.eventually([&] { return server_.server().grpc().active_calls() == 0; }));
}

TEST_F(InteropTest, DeadlineEndsTheCallWithDeadlineExceeded) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(300));
  tpb::Empty req, reply;
  grpc::Status st = test_->Hang(&ctx, req, &reply);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  // Client and server deadlines pass together; whichever acts first, the handler is cancelled.
  // (RawH2Test.EveryGrpcTimeoutUnitBecomesADeadline checks the server's own verdict.)
  EXPECT_TRUE(server_.eventually([&] { return state_.hang_cancelled == 1; }));
  EXPECT_TRUE(server_.eventually([&] { return server_.server().grpc().active_calls() == 0; }));
}

TEST_F(InteropTest, ManyConcurrentCallsOnOneConnection) {
  constexpr int kCalls = 200;
  grpc::CompletionQueue cq;
  struct Call {
    grpc::ClientContext ctx;
    tpb::EchoReply reply;
    grpc::Status status;
    std::unique_ptr<grpc::ClientAsyncResponseReader<tpb::EchoReply>> rpc;
  };
  std::vector<Call> calls(kCalls);
  for (int i = 0; i < kCalls; ++i) {
    tpb::EchoRequest req;
    req.set_payload("call-" + std::to_string(i));
    calls[i].rpc = test_->AsyncEcho(&calls[i].ctx, req, &cq);
    calls[i].rpc->Finish(&calls[i].reply, &calls[i].status,
                         reinterpret_cast<void*>(static_cast<intptr_t>(i)));
  }
  for (int n = 0; n < kCalls; ++n) {
    void* tag;
    bool ok;
    ASSERT_TRUE(cq.Next(&tag, &ok));
    ASSERT_TRUE(ok);
  }
  for (int i = 0; i < kCalls; ++i) {
    ASSERT_TRUE(calls[i].status.ok()) << calls[i].status.error_message();
    EXPECT_EQ(calls[i].reply.payload(), "call-" + std::to_string(i));
  }
  cq.Shutdown();
}

TEST_F(InteropTest, HealthCheckReportsServingAndUnknownServices) {
  hv1::HealthCheckRequest req;
  hv1::HealthCheckResponse resp;
  {
    grpc::ClientContext ctx;
    ASSERT_TRUE(health_->Check(&ctx, req, &resp).ok());
    EXPECT_EQ(resp.status(), hv1::HealthCheckResponse::SERVING);
  }
  {
    grpc::ClientContext ctx;
    req.set_service("docker.swarmkit.v1.Dispatcher");
    ASSERT_TRUE(health_->Check(&ctx, req, &resp).ok());
    EXPECT_EQ(resp.status(), hv1::HealthCheckResponse::SERVING);
  }
  {
    grpc::ClientContext ctx;
    req.set_service("no.such.Service");
    EXPECT_EQ(health_->Check(&ctx, req, &resp).error_code(), grpc::StatusCode::NOT_FOUND);
  }
}

TEST_F(InteropTest, HealthWatchStreamsStatusChanges) {
  grpc::ClientContext ctx;
  hv1::HealthCheckRequest req;
  req.set_service("docker.swarmkit.v1.Dispatcher");
  auto reader = health_->Watch(&ctx, req);
  hv1::HealthCheckResponse resp;
  ASSERT_TRUE(reader->Read(&resp));
  EXPECT_EQ(resp.status(), hv1::HealthCheckResponse::SERVING);
  server_.call([&] {
    server_.server().health().set_status("docker.swarmkit.v1.Dispatcher",
                                         dispatchd::grpc::HealthService::not_serving);
    return 0;
  });
  ASSERT_TRUE(reader->Read(&resp));
  EXPECT_EQ(resp.status(), hv1::HealthCheckResponse::NOT_SERVING);
  ctx.TryCancel();
  reader->Finish();
}

TEST_F(InteropTest, SessionSendsFirstMessageAndHeartbeatAnswersWithPeriod) {
  grpc::ClientContext sctx;
  sctx.AddMetadata("node-id", "node-a");
  api::SessionRequest sreq;
  sreq.mutable_description()->set_hostname("host-a");
  auto session = dispatcher_->Session(&sctx, sreq);
  api::SessionMessage first;
  ASSERT_TRUE(session->Read(&first));
  EXPECT_EQ(first.session_id().size(), 25u);
  EXPECT_EQ(first.node().id(), "node-a");
  EXPECT_EQ(first.node().description().hostname(), "host-a");
  ASSERT_EQ(first.managers_size(), 1);
  EXPECT_EQ(first.managers(0).peer().addr(), server_.address());
  EXPECT_EQ(first.managers(0).weight(), 10);

  grpc::ClientContext hctx;
  hctx.AddMetadata("node-id", "node-a");
  api::HeartbeatRequest hreq;
  hreq.set_session_id(first.session_id());
  api::HeartbeatResponse hresp;
  grpc::Status st = dispatcher_->Heartbeat(&hctx, hreq, &hresp);
  ASSERT_TRUE(st.ok()) << st.error_message();
  auto ns = hresp.period().seconds() * 1000000000LL + hresp.period().nanos();
  EXPECT_GE(ns, 4500000000LL);
  EXPECT_LT(ns, 5500000000LL);

  grpc::ClientContext bad;
  bad.AddMetadata("node-id", "node-a");
  hreq.set_session_id("not-the-session");
  st = dispatcher_->Heartbeat(&bad, hreq, &hresp);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(st.error_message(), "session invalid");

  sctx.TryCancel();
  session->Finish();
}

TEST_F(InteropTest, GracefulStopSendsFinalSessionMessageThenAborted) {
  auto session = dispatchd::test::open_session(*dispatcher_, "node-b");
  ASSERT_TRUE(session->ok);
  std::thread stopper([&] { EXPECT_TRUE(server_.stop()); });
  api::SessionMessage last;
  EXPECT_TRUE(session->stream->read(last));
  EXPECT_EQ(last.session_id(), session->id());
  EXPECT_FALSE(session->stream->read(last));
  grpc::Status st = session->stream->finish();
  EXPECT_EQ(st.error_code(), grpc::StatusCode::ABORTED);
  EXPECT_EQ(st.error_message(), "node must disconnect");
  stopper.join();
}

}  // namespace
