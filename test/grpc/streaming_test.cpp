// Client- and bidi-streaming calls in our gRPC layer: message framing across and within DATA
// frames, half-close, truncation, cancellation and the bound on unread messages. Raw HTTP/2
// where the byte layout matters; the gRPC C++ client where a real peer should be satisfied.

#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <condition_variable>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
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

// Flow control instead of a bound on unread messages (docs/architecture.md, "Flow control of
// requests"): a peer ahead of its handler is held back by the stream's window, never failed.

// DATA frames of at most the default SETTINGS_MAX_FRAME_SIZE.
void send_chunked(RawClient& c, std::int32_t id, const std::string& bytes, bool end) {
  std::size_t at = 0;
  do {
    std::size_t n = std::min<std::size_t>(16384, bytes.size() - at);
    bool last = at + n == bytes.size();
    c.send_raw(frames::data(static_cast<std::uint32_t>(id), bytes.substr(at, n), end && last));
    at += n;
  } while (at < bytes.size());
}

std::string empty_messages(std::size_t n) {
  std::string bytes;
  for (std::size_t i = 0; i < n; ++i)
    bytes += grpc_frame("");
  return bytes;
}

constexpr std::size_t kStreamWindow = 65535;  // the server's SETTINGS_INITIAL_WINDOW_SIZE

TEST_F(StreamingTest, ThousandsOfUnreadMessagesWaitForTheHandler) {
  RawClient c(server_.port());
  c.start();
  auto id = open_call(c, kStall);
  // 13,000 messages of 5 bytes: within the window, far more than a call used to buffer (32).
  send_chunked(c, id, empty_messages(13000), true);
  round_trip(c);
  ASSERT_TRUE(server_.eventually([&] { return state_.stall_started == 1; }));
  server_.call([&] { state_.stall_release.set(); });
  ASSERT_EQ(wait_status(c, id), 0) << c.response(id).grpc_message();
  EXPECT_EQ(echo_replies(c.response(id).data), std::vector<std::string>{"13000"});
}

TEST_F(StreamingTest, TheStreamWindowHoldsAPeerAheadOfItsHandler) {
  RawClient c(server_.port());
  c.start();
  auto id = open_call(c, kStall);
  ASSERT_TRUE(server_.eventually([&] { return state_.stall_started == 1; }));
  // One whole window of messages the handler does not read yet.
  send_chunked(c, id, empty_messages(kStreamWindow / 5), false);
  round_trip(c);  // the server has processed all of it
  EXPECT_EQ(c.window_increments(id), 0) << "the stream's window was given back before a read";
  EXPECT_GE(c.window_increments(0), static_cast<std::int64_t>(kStreamWindow / 2))
      << "the connection's window must come back as DATA is read";
  // The connection is not blocked by the stalled stream: another call completes.
  auto other = c.grpc_call("/dispatchd.test.TestService/Echo", echo_request("beside"));
  const auto& r = c.wait(other);
  ASSERT_EQ(r.grpc_status(), 0) << r.grpc_message();
  EXPECT_EQ(echo_replies(r.data), std::vector<std::string>{"beside"});
  EXPECT_EQ(c.window_increments(id), 0);

  // The handler reads: the window opens again and the peer finishes.
  server_.call([&] { state_.stall_release.set(); });
  ASSERT_TRUE(c.pump_until([&] { return c.window_increments(id) > 0; }));
  send_chunked(c, id, empty_messages(100), true);
  ASSERT_EQ(wait_status(c, id), 0) << c.response(id).grpc_message();
  EXPECT_EQ(echo_replies(c.response(id).data),
            std::vector<std::string>{std::to_string(kStreamWindow / 5 + 100)});
}

TEST_F(StreamingTest, APeerThatIgnoresTheWindowIsStopped) {
  RawClient c(server_.port());
  c.start();
  auto id = open_call(c, kStall);
  ASSERT_TRUE(server_.eventually([&] { return state_.stall_started == 1; }));
  send_chunked(c, id, empty_messages(kStreamWindow / 5 + 1), false);  // 5 bytes too many
  ASSERT_TRUE(c.pump_until([&] { return c.response(id).closed || c.goaway_received(); }));
  if (c.goaway_received()) {
    EXPECT_EQ(c.goaway_code(), static_cast<std::uint32_t>(NGHTTP2_FLOW_CONTROL_ERROR));
  } else {
    EXPECT_EQ(c.response(id).close_code, static_cast<std::uint32_t>(NGHTTP2_FLOW_CONTROL_ERROR));
  }
  ASSERT_TRUE(server_.eventually([&] { return state_.stall_ended; }));
}

TEST_F(StreamingTest, DataOfEndedCallsStillReturnsTheConnectionWindow) {
  RawClient c(server_.port());
  c.start();
  // Three windows' worth of request DATA that no handler reads: each call is answered after its
  // first message while the client goes on sending. All of it must come back to the connection.
  for (int i = 0; i < 6; ++i) {
    auto id = open_call(c, "/dispatchd.test.TestService/Echo");
    send_data(c, id, echo_request("x"), false);
    ASSERT_EQ(wait_status(c, id), 0);
    send_chunked(c, id, empty_messages(kStreamWindow / 10), false);
    round_trip(c);
  }
  auto last = c.grpc_call("/dispatchd.test.TestService/Echo", echo_request("still"));
  const auto& r = c.wait(last);
  ASSERT_EQ(r.grpc_status(), 0) << r.grpc_message();
  EXPECT_EQ(echo_replies(r.data), std::vector<std::string>{"still"});
  EXPECT_FALSE(c.goaway_received());
  EXPECT_GE(c.window_increments(0), static_cast<std::int64_t>(kStreamWindow))
      << "the ignored DATA never came back to the connection's window";
}

TEST_F(StreamingTest, PaddingComesBackToBothWindows) {
  RawClient c(server_.port());
  c.start();
  auto id = open_call(c, kStall);
  ASSERT_TRUE(server_.eventually([&] { return state_.stall_started == 1; }));
  server_.call([&] { state_.stall_release.set(); });
  // Seven windows' worth of DATA frames that are mostly padding (255 bytes, the most a frame
  // carries), with one 5-byte message each.
  // Sent in rounds under one window each: the padding must have come back before the next.
  constexpr int kRound = 200, kFrames = 7 * kRound;  // 7 x 52 KB
  std::string payload(1, static_cast<char>(255));    // Pad Length
  payload += grpc_frame("");
  payload += std::string(255, '\0');
  const std::string padded =
      frames::frame(frames::kData, 0x8 /* PADDED */, static_cast<std::uint32_t>(id), payload);
  for (int round = 0; round < kFrames / kRound; ++round) {
    std::string out;
    for (int i = 0; i < kRound; ++i)
      out += padded;
    c.send_raw(out);
    round_trip(c);
    ASSERT_TRUE(server_.eventually([&] { return state_.stall_read == (round + 1) * kRound; }));
  }
  send_data(c, id, "", true);
  ASSERT_EQ(wait_status(c, id), 0) << c.response(id).grpc_message();
  EXPECT_EQ(echo_replies(c.response(id).data), std::vector<std::string>{std::to_string(kFrames)});
  EXPECT_FALSE(c.goaway_received());
}

TEST_F(StreamingTest, ARealClientStreamingFarAheadOfASlowHandlerCompletes) {
  auto channel = grpc::CreateChannel(server_.address(), grpc::InsecureChannelCredentials());
  auto stub = tpb::TestService::NewStub(channel);
  grpc::ClientContext ctx;
  tpb::EchoReply reply;
  auto writer = stub->Stall(&ctx, &reply);
  constexpr int kMessages = 30000;  // 150 KB of messages: more than two stream windows
  std::mutex m;
  std::condition_variable cv;
  int written = 0;
  std::thread client([&] {
    tpb::Empty e;
    for (int i = 0; i < kMessages && writer->Write(e); ++i) {
      std::lock_guard lock(m);
      ++written;
      cv.notify_all();
    }
    writer->WritesDone();
  });
  {
    // Well past the old bound of 32 unread messages before the handler reads anything.
    std::unique_lock lock(m);
    EXPECT_TRUE(cv.wait_for(lock, std::chrono::seconds(20), [&] { return written >= 1000; }));
  }
  server_.call([&] { state_.stall_release.set(); });
  client.join();
  grpc::Status st = writer->Finish();
  ASSERT_TRUE(st.ok()) << st.error_code() << " " << st.error_message();
  EXPECT_EQ(written, kMessages);
  EXPECT_EQ(reply.payload(), std::to_string(kMessages));
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
