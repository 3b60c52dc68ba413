// Client- and bidi-streaming calls in our gRPC layer: message framing across and within DATA
// frames, half-close, truncation, cancellation and the bound on unread messages. Raw HTTP/2
// where the byte layout matters; the gRPC C++ client where a real peer should be satisfied.

#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <optional>
#include <string>
#include <vector>

#include "dispatchd/grpc/server_call.hpp"
#include "support/frames.hpp"
#include "support/raw_client.hpp"
#include "support/test_server.hpp"
#include "support/test_service.hpp"
#include "test_service.grpc.pb.h"

namespace {

namespace frames = dispatchd::test::frames;
namespace tpb = dispatchd::test;
using dispatchd::grpc::ServerCall;
using dispatchd::grpc::StatusCode;
using dispatchd::test::grpc_frame;
using dispatchd::test::RawClient;
using dispatchd::test::TestServer;
using dispatchd::test::TestServiceState;

const std::string kEchoStream = "/dispatchd.test.TestService/EchoStream";
const std::string kStall = "/dispatchd.test.TestService/Stall";

std::string echo_request(const std::string& payload) {
  tpb::EchoRequest r;
  r.set_payload(payload);
  return grpc_frame(r.SerializeAsString());
}

// The payloads of the EchoReply messages framed in `data`.
std::vector<std::string> echo_replies(const std::string& data) {
  std::vector<std::string> out;
  std::size_t off = 0;
  while (data.size() - off >= 5) {
    std::size_t len = frames::get_u32(data, off + 1);
    if (data.size() - off - 5 < len) break;
    tpb::EchoReply r;
    EXPECT_TRUE(r.ParseFromString(data.substr(off + 5, len)));
    out.push_back(r.payload());
    off += 5 + len;
  }
  EXPECT_EQ(off, data.size()) << "a partial message at the end of the response";
  return out;
}

class StreamingTest : public ::testing::Test {
 protected:
  StreamingTest()
      : server_(TestServer::default_options(),
                [this](dispatchd::app::Server& s) { add_test_service(s.grpc(), state_); }) {}

  // Opens a call whose DATA the test writes itself, frame by frame.
  static std::int32_t open_call(RawClient& c, const std::string& path) {
    auto id = c.request({{":method", "POST"},
                         {":scheme", "http"},
                         {":authority", "localhost"},
                         {":path", path},
                         {"content-type", "application/grpc"},
                         {"te", "trailers"}},
                        std::nullopt, false);
    c.flush();
    return id;
  }
  static void send_data(RawClient& c, std::int32_t id, const std::string& bytes, bool end) {
    c.send_raw(frames::data(static_cast<std::uint32_t>(id), bytes, end));
  }
  // The call's status once the server has ended it (the client's own side may still be open).
  static std::optional<int> wait_status(RawClient& c, std::int32_t id) {
    c.pump_until([&] { return c.response(id).grpc_status().has_value(); });
    return c.response(id).grpc_status();
  }
  // Every frame sent before it has been processed by the server once the PING is answered.
  static void round_trip(RawClient& c) {
    int before = c.ping_acks();
    c.ping();
    ASSERT_TRUE(c.pump_until([&] { return c.ping_acks() > before; }));
  }

  TestServiceState state_;
  TestServer server_;
};

TEST_F(StreamingTest, BidiCallAnswersEachMessageInOrderWithARealClient) {
  auto channel = grpc::CreateChannel(server_.address(), grpc::InsecureChannelCredentials());
  auto stub = tpb::TestService::NewStub(channel);
  grpc::ClientContext ctx;
  auto stream = stub->EchoStream(&ctx);
  for (int i = 0; i < 100; ++i) {
    tpb::EchoRequest req;
    req.set_payload("message " + std::to_string(i));
    ASSERT_TRUE(stream->Write(req));
    tpb::EchoReply reply;
    ASSERT_TRUE(stream->Read(&reply));
    EXPECT_EQ(reply.payload(), "message " + std::to_string(i));
  }
  ASSERT_TRUE(stream->WritesDone());
  tpb::EchoReply extra;
  EXPECT_FALSE(stream->Read(&extra));
  grpc::Status st = stream->Finish();
  EXPECT_TRUE(st.ok()) << st.error_message();
  EXPECT_EQ(server_.call([&] { return state_.echo_stream_received; }), 100);
  EXPECT_EQ(server_.call([&] { return state_.echo_stream_read_end; }), StatusCode::ok);
}

TEST_F(StreamingTest, ClientStreamingCallAnswersOnceAfterHalfClose) {
  auto channel = grpc::CreateChannel(server_.address(), grpc::InsecureChannelCredentials());
  auto stub = tpb::TestService::NewStub(channel);
  grpc::ClientContext ctx;
  tpb::EchoReply reply;
  auto writer = stub->Concat(&ctx, &reply);
  for (const char* part : {"a", "bc", "", "def"}) {
    tpb::EchoRequest req;
    req.set_payload(part);
    ASSERT_TRUE(writer->Write(req));
  }
  ASSERT_TRUE(writer->WritesDone());
  grpc::Status st = writer->Finish();
  ASSERT_TRUE(st.ok()) << st.error_message();
  EXPECT_EQ(reply.payload(), "abcdef");
  EXPECT_EQ(server_.call([&] { return state_.echo_stream_received; }), 4);
}

TEST_F(StreamingTest, MessagesSplitAcrossDataFramesAreReassembled) {
  RawClient c(server_.port());
  c.start();
  auto id = open_call(c, kEchoStream);
  std::string bytes =
      echo_request("first") + echo_request(std::string(40000, 'x')) + echo_request("third");
  // Cuts inside the first prefix, inside a payload (twice: frames hold at most 16384 bytes), and
  // between the last prefix and its payload.
  const std::size_t cuts[] = {2, 9, 16000, 30000, bytes.size() - 5 - 7};
  std::size_t at = 0;
  for (std::size_t cut : cuts) {
    send_data(c, id, bytes.substr(at, cut - at), false);
    at = cut;
  }
  send_data(c, id, bytes.substr(at), true);
  ASSERT_EQ(wait_status(c, id), 0) << c.response(id).grpc_message();
  EXPECT_EQ(echo_replies(c.response(id).data),
            (std::vector<std::string>{"first", std::string(40000, 'x'), "third"}));
}

TEST_F(StreamingTest, ManyMessagesInOneDataFrameAreAllRead) {
  RawClient c(server_.port());
  c.start();
  auto id = open_call(c, kEchoStream);
  std::string bytes;
  std::vector<std::string> expected;
  for (int i = 0; i < 20; ++i) {
    expected.push_back(std::to_string(i));
    bytes += echo_request(expected.back());
  }
  send_data(c, id, bytes, true);
  ASSERT_EQ(wait_status(c, id), 0) << c.response(id).grpc_message();
  EXPECT_EQ(echo_replies(c.response(id).data), expected);
}

TEST_F(StreamingTest, EndStreamInsideAMessageEndsTheCallWithInternal) {
  RawClient c(server_.port());
  c.start();
  auto id = open_call(c, kEchoStream);
  std::string second = echo_request("cut short");
  send_data(c, id, echo_request("whole") + second.substr(0, second.size() - 3), true);
  ASSERT_EQ(wait_status(c, id), static_cast<int>(StatusCode::internal));
  EXPECT_NE(c.response(id).grpc_message().find("truncated"), std::string::npos)
      << c.response(id).grpc_message();
  EXPECT_EQ(echo_replies(c.response(id).data), std::vector<std::string>{"whole"});
  EXPECT_EQ(server_.call([&] { return state_.echo_stream_read_end; }), StatusCode::internal);
}

TEST_F(StreamingTest, MalformedRequestInAStreamIsAnUnmarshalError) {
  RawClient c(server_.port());
  c.start();
  auto id = open_call(c, kEchoStream);
  send_data(c, id, echo_request("fine") + grpc_frame("\xff\xff\xff"), true);
  ASSERT_EQ(wait_status(c, id), static_cast<int>(StatusCode::internal));
  EXPECT_EQ(c.response(id).grpc_message(), "grpc: error unmarshalling request: invalid protobuf");
  EXPECT_EQ(echo_replies(c.response(id).data), std::vector<std::string>{"fine"});
}

TEST_F(StreamingTest, ClientResetCancelsAHandlerWaitingForTheNextMessage) {
  RawClient c(server_.port());
  c.start();
  auto id = open_call(c, kEchoStream);
  send_data(c, id, echo_request("one"), false);
  ASSERT_TRUE(c.pump_until([&] { return !c.response(id).data.empty(); }));
  EXPECT_EQ(echo_replies(c.response(id).data), std::vector<std::string>{"one"});
  // The reply reaches us before the handler has returned from its write: wait until it reads.
  ASSERT_TRUE(server_.eventually([&] { return state_.echo_stream_reading; }));
  c.rst_stream(id);
  c.flush();
  ASSERT_TRUE(server_.eventually([&] { return state_.echo_stream_ended == 1; }))
      << "write failures: " << server_.call([&] { return state_.echo_stream_write_failed; });
  EXPECT_EQ(server_.call([&] { return state_.echo_stream_read_end; }), StatusCode::cancelled);
  EXPECT_TRUE(server_.eventually([&] { return server_.server().grpc().active_calls() == 0; }));
}

TEST_F(StreamingTest, UnreadMessagesUpToTheBoundWaitForTheHandler) {
  RawClient c(server_.port());
  c.start();
  auto id = open_call(c, kStall);
  std::string bytes;
  for (std::size_t i = 0; i < ServerCall::kMaxUnreadMessages; ++i)
    bytes += grpc_frame("");
  send_data(c, id, bytes, true);
  round_trip(c);
  ASSERT_TRUE(server_.eventually([&] { return state_.stall_started == 1; }));
  server_.call([&] { state_.stall_release.set(); });
  ASSERT_EQ(wait_status(c, id), 0) << c.response(id).grpc_message();
  EXPECT_EQ(echo_replies(c.response(id).data),
            std::vector<std::string>{std::to_string(ServerCall::kMaxUnreadMessages)});
}

TEST_F(StreamingTest, OneMessageBeyondTheBoundEndsTheCallWithResourceExhausted) {
  RawClient c(server_.port());
  c.start();
  auto id = open_call(c, kStall);
  std::string bytes;
  for (std::size_t i = 0; i <= ServerCall::kMaxUnreadMessages; ++i)
    bytes += grpc_frame("");
  send_data(c, id, bytes, false);
  ASSERT_EQ(wait_status(c, id), static_cast<int>(StatusCode::resource_exhausted));
  EXPECT_TRUE(c.response(id).data.empty());
  // The handler was woken by the cancellation and its read saw why.
  ASSERT_TRUE(server_.eventually([&] { return state_.stall_ended; }));
  EXPECT_EQ(server_.call([&] { return state_.stall_read_end; }), StatusCode::resource_exhausted);
}

TEST_F(StreamingTest, UnaryCallReadsOnlyTheFirstOfSeveralMessages) {
  RawClient c(server_.port());
  c.start();
  auto id = c.grpc_call("/dispatchd.test.TestService/Echo",
                        echo_request("first") + echo_request("second"));
  const auto& r = c.wait(id);
  ASSERT_EQ(r.grpc_status(), 0) << r.grpc_message();
  EXPECT_EQ(echo_replies(r.data), std::vector<std::string>{"first"});
}

}  // namespace
