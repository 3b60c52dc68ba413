// Raw HTTP/2 at our server: what a well-behaved gRPC client never sends.

#include <gtest/gtest.h>

#include <thread>

#include "grpc/health/v1/health.pb.h"
#include "support/frames.hpp"
#include "support/raw_client.hpp"
#include "support/test_server.hpp"
#include "support/test_service.hpp"

namespace {

namespace frames = dispatchd::test::frames;
using dispatchd::test::grpc_frame;
using dispatchd::test::RawClient;
using dispatchd::test::TestServer;
using dispatchd::test::TestServiceState;

const std::string kCheck = "/grpc.health.v1.Health/Check";

std::string health_request(const std::string& service = "") {
  grpc::health::v1::HealthCheckRequest req;
  req.set_service(service);
  return grpc_frame(req.SerializeAsString());
}

class RawH2Test : public ::testing::Test {
 protected:
  RawH2Test()
      : server_(TestServer::default_options(),
                [this](dispatchd::app::Server& s) { add_test_service(s.grpc(), state_); }) {}

  TestServiceState state_;
  TestServer server_;
};

// The SERVING answer, framed: status = 1.
const std::string kServing = grpc_frame(std::string("\x08\x01", 2));

TEST_F(RawH2Test, HealthCheckOverRawHttp2) {
  RawClient c(server_.port());
  c.start();
  auto id = c.grpc_call(kCheck, health_request());
  const auto& r = c.wait(id);
  ASSERT_TRUE(r.closed);
  EXPECT_EQ(r.header(":status"), "200");
  EXPECT_EQ(r.header("content-type"), "application/grpc");
  EXPECT_EQ(r.grpc_status(), 0);
  EXPECT_EQ(r.data, kServing);
}

// nghttp2 keeps a server's closed streams (up to MAX_CONCURRENT_STREAMS per connection) for RFC
// 7540 priorities unless told not to: one per Heartbeat on an agent's connection, for hours.
TEST_F(RawH2Test, AnsweredStreamsAreNotRetained) {
  RawClient c(server_.port());
  c.start();
  for (int i = 0; i < 50; ++i) {
    auto id = c.grpc_call(kCheck, health_request());
    const auto& r = c.wait(id);
    ASSERT_TRUE(r.closed);
    ASSERT_EQ(r.grpc_status(), 0);
  }
  EXPECT_EQ(server_.call([&] { return server_.server().retained_streams(); }), 0u);
}

TEST_F(RawH2Test, RequestSplitAtEveryByteBoundaryIsServed) {
  std::string bytes;
  {
    RawClient probe(server_.port());
    probe.start();
    probe.grpc_call(kCheck, health_request());
    bytes = probe.take_output();
  }
  ASSERT_GT(bytes.size(), 24u);
  for (std::size_t cut = 1; cut < bytes.size(); ++cut) {
    RawClient c(server_.port());
    c.start();
    auto id = c.grpc_call(kCheck, health_request());
    (void)c.take_output();  // same bytes as `bytes`; we send them ourselves, in two pieces
    c.send_raw(bytes.substr(0, cut));
    c.send_raw(bytes.substr(cut));
    const auto& r = c.wait(id);
    ASSERT_TRUE(r.closed) << "cut at " << cut;
    ASSERT_EQ(r.grpc_status(), 0) << "cut at " << cut;
    ASSERT_EQ(r.data, kServing) << "cut at " << cut;
  }
}

TEST_F(RawH2Test, RequestSentOneByteAtATimeIsServed) {
  RawClient c(server_.port());
  c.start();
  auto id = c.grpc_call(kCheck, health_request("docker.swarmkit.v1.Dispatcher"));
  std::string bytes = c.take_output();
  for (char b : bytes)
    c.send_raw(std::string(1, b));
  const auto& r = c.wait(id);
  EXPECT_EQ(r.grpc_status(), 0);
  EXPECT_EQ(r.data, kServing);
}

TEST_F(RawH2Test, InvalidCompressionFlagIsInternal) {
  RawClient c(server_.port());
  c.start();
  auto id = c.grpc_call(kCheck, grpc_frame("", 2));
  const auto& r = c.wait(id);
  EXPECT_EQ(r.grpc_status(), 13);
}

TEST_F(RawH2Test, CompressedMessageWithoutEncodingIsUnimplemented) {
  RawClient c(server_.port());
  c.start();
  auto id = c.grpc_call(kCheck, grpc_frame("\x0a\x00", 1));
  const auto& r = c.wait(id);
  EXPECT_EQ(r.grpc_status(), 12);
}

TEST_F(RawH2Test, UnsupportedGrpcEncodingIsUnimplemented) {
  RawClient c(server_.port());
  c.start();
  auto id = c.grpc_call(kCheck, health_request(), {{"grpc-encoding", "gzip"}});
  const auto& r = c.wait(id);
  EXPECT_EQ(r.grpc_status(), 12);
  EXPECT_NE(r.grpc_message().find("gzip"), std::string::npos);
}

TEST_F(RawH2Test, MessageTruncatedAtEndOfStreamIsInternal) {
  RawClient c(server_.port());
  c.start();
  std::string framed = health_request("some-service");
  auto id = c.grpc_call(kCheck, framed.substr(0, framed.size() - 3));
  const auto& r = c.wait(id);
  EXPECT_EQ(r.grpc_status(), 13);
  EXPECT_NE(r.grpc_message().find("truncated"), std::string::npos) << r.grpc_message();
}

TEST_F(RawH2Test, PrefixCutShortIsInternal) {
  RawClient c(server_.port());
  c.start();
  auto id = c.grpc_call(kCheck, std::string("\x00\x00", 2));
  EXPECT_EQ(c.wait(id).grpc_status(), 13);
}

TEST_F(RawH2Test, EmptyRequestStreamIsInternal) {
  RawClient c(server_.port());
  c.start();
  auto id = c.grpc_call(kCheck, "");
  EXPECT_EQ(c.wait(id).grpc_status(), 13);
}

TEST_F(RawH2Test, UnparsableProtobufIsInternal) {
  RawClient c(server_.port());
  c.start();
  auto id = c.grpc_call(kCheck, grpc_frame("\xff\xff\xff\xff"));
  const auto& r = c.wait(id);
  EXPECT_EQ(r.grpc_status(), 13);
  EXPECT_NE(r.grpc_message().find("unmarshal"), std::string::npos);
}

TEST_F(RawH2Test, OversizedPrefixIsRejectedBeforeThePayloadArrives) {
  RawClient c(server_.port());
  c.start();
  // Announce 64 MiB, send 10 bytes: the answer must not wait for the rest.
  std::string prefix("\x00\x04\x00\x00\x00", 5);
  auto id = c.grpc_call(kCheck, prefix + std::string(10, 'x'));
  const auto& r = c.wait(id);
  EXPECT_EQ(r.grpc_status(), 8);
}

TEST_F(RawH2Test, NonUtf8NodeIdentityIsRefused) {
  // Node IDs travel in proto3 string fields: they must be UTF-8 (found by connection_fuzz).
  RawClient c(server_.port());
  c.start();
  auto id = c.grpc_call("/docker.swarmkit.v1.Dispatcher/Session", grpc_frame(""),
                        {{"node-id", "node-\xff"}});
  const auto& r = c.wait(id);
  EXPECT_EQ(r.grpc_status(), 7);
  EXPECT_NE(r.grpc_message().find("not valid UTF-8"), std::string::npos) << r.grpc_message();
  EXPECT_EQ(server_.call([&] { return server_.server().dispatcher().registered_nodes(); }), 0u);
}

TEST_F(RawH2Test, WrongContentTypeIs415) {
  RawClient c(server_.port());
  c.start();
  auto id = c.grpc_call(kCheck, health_request(), {{"content-type", "application/json"}});
  const auto& r = c.wait(id);
  EXPECT_EQ(r.header(":status"), "415");
  EXPECT_NE(r.grpc_message().find("application/json"), std::string::npos);
  // A body a generic HTTP client can show, as grpc-go's answer has.
  EXPECT_EQ(r.header("content-type"), "text/plain; charset=utf-8");
  EXPECT_EQ(r.data, "invalid gRPC request content-type \"application/json\"\n");
}

TEST_F(RawH2Test, NonPostMethodIs415) {
  RawClient c(server_.port());
  c.start();
  auto id = c.request({{":method", "GET"},
                       {":scheme", "http"},
                       {":authority", "localhost"},
                       {":path", kCheck},
                       {"content-type", "application/grpc"}},
                      std::nullopt);
  const auto& r = c.wait(id);
  EXPECT_EQ(r.header(":status"), "415");
  EXPECT_EQ(r.data, "invalid gRPC request method \"GET\"\n");
}

TEST_F(RawH2Test, AHalfClosedStreamTakesWindowUpdateAndPriorityWhileItsAnswerIsSent) {
  // A generic HTTP/2 client: GET / with END_STREAM, then WINDOW_UPDATE and PRIORITY on the
  // half-closed stream. They are legal there (RFC 9113 §5.1); the answer still arrives whole
  // and the connection stays usable.
  RawClient c(server_.port());
  c.start();
  auto id = c.request(
      {{":method", "GET"}, {":scheme", "http"}, {":authority", "localhost"}, {":path", "/"}},
      std::nullopt);
  c.flush();
  c.send_raw(frames::window_update(static_cast<std::uint32_t>(id), 1000) +
             frames::priority(static_cast<std::uint32_t>(id), 0, 16));
  const auto& r = c.wait(id);
  EXPECT_EQ(r.header(":status"), "415");
  EXPECT_FALSE(r.data.empty());
  EXPECT_FALSE(c.goaway_received());
  auto next = c.grpc_call(kCheck, health_request());
  EXPECT_EQ(c.wait(next).grpc_status(), 0);
}

TEST_F(RawH2Test, UnknownMethodGetsTrailersOnlyResponse) {
  RawClient c(server_.port());
  c.start();
  auto id = c.grpc_call("/grpc.health.v1.Health/Nope", health_request());
  const auto& r = c.wait(id);
  EXPECT_EQ(r.header(":status"), "200");
  EXPECT_EQ(r.header("grpc-status"), "12");  // in the one and only HEADERS frame
  EXPECT_TRUE(r.trailers.empty());
  EXPECT_TRUE(r.data.empty());
  EXPECT_EQ(r.grpc_message(), "unknown method Nope for service grpc.health.v1.Health");
}

TEST_F(RawH2Test, MalformedMethodPathIsUnimplemented) {
  RawClient c(server_.port());
  c.start();
  auto id = c.grpc_call("/only-one-segment", health_request());
  const auto& r = c.wait(id);
  EXPECT_EQ(r.grpc_status(), 12);
  EXPECT_NE(r.grpc_message().find("malformed method name"), std::string::npos);
}

TEST_F(RawH2Test, PathWithoutLeadingSlashIsAProtocolError) {
  RawClient c(server_.port());
  c.start();
  auto id = c.grpc_call("nopath", health_request());
  const auto& r = c.wait(id);
  EXPECT_TRUE(r.closed);
  EXPECT_FALSE(r.grpc_status().has_value());
  EXPECT_EQ(r.close_code, 1u);  // RST_STREAM PROTOCOL_ERROR
}

TEST_F(RawH2Test, MalformedGrpcTimeoutIsInternal) {
  RawClient c(server_.port());
  c.start();
  auto id = c.grpc_call(kCheck, health_request(), {{"grpc-timeout", "12x"}});
  EXPECT_EQ(c.wait(id).grpc_status(), 13);
}

TEST_F(RawH2Test, EveryGrpcTimeoutUnitBecomesADeadline) {
  for (const char* t : {"1n", "1u", "5m", "0S"}) {
    RawClient c(server_.port());
    c.start();
    auto id =
        c.grpc_call("/dispatchd.test.TestService/Hang", grpc_frame(""), {{"grpc-timeout", t}});
    const auto& r = c.wait(id);
    EXPECT_EQ(r.grpc_status(), 4) << t;
  }
  EXPECT_TRUE(server_.eventually([&] { return state_.hang_deadline_exceeded == 4; }));
  // Long units parse too: the call is still running when we cancel it.
  for (const char* t : {"1H", "1M", "30S"}) {
    RawClient c(server_.port());
    c.start();
    int before = server_.call([&] { return state_.hang_started; });
    auto id =
        c.grpc_call("/dispatchd.test.TestService/Hang", grpc_frame(""), {{"grpc-timeout", t}});
    c.flush();
    ASSERT_TRUE(server_.eventually([&] { return state_.hang_started == before + 1; })) << t;
    EXPECT_FALSE(c.response(id).closed) << t;
    c.rst_stream(id);
    c.flush();
  }
}

TEST_F(RawH2Test, RstStreamCancelsTheHandler) {
  RawClient c(server_.port());
  c.start();
  auto id = c.grpc_call("/dispatchd.test.TestService/HangStream", grpc_frame(""));
  ASSERT_TRUE(c.pump_until([&] { return !c.response(id).data.empty(); }));
  c.rst_stream(id);
  c.flush();
  EXPECT_TRUE(server_.eventually([&] { return state_.hang_cancelled == 1; }));
  EXPECT_TRUE(server_.eventually([&] { return server_.server().grpc().active_calls() == 0; }));
}

TEST_F(RawH2Test, ConnectionLossCancelsEveryHandler) {
  {
    RawClient c(server_.port());
    c.start();
    for (int i = 0; i < 10; ++i)
      c.grpc_call("/dispatchd.test.TestService/HangStream", grpc_frame(""));
    c.flush();
    ASSERT_TRUE(server_.eventually([&] { return state_.hang_started == 10; }));
  }  // socket closed
  EXPECT_TRUE(server_.eventually([&] { return state_.hang_cancelled == 10; }));
  EXPECT_TRUE(server_.eventually([&] { return server_.server().connection_count() == 0; }));
}

TEST_F(RawH2Test, PingIsAnswered) {
  RawClient c(server_.port());
  c.start();
  c.ping();
  EXPECT_TRUE(c.pump_until([&] { return c.ping_acks() == 1; }));
}

TEST_F(RawH2Test, Http11RequestGetsAClearErrorAndIsClosed) {
  RawClient c(server_.port());
  c.send_raw("GET / HTTP/1.1\r\nHost: localhost\r\n\r\n");
  std::string reply = c.read_raw_until_eof();
  EXPECT_TRUE(reply.starts_with("HTTP/1.1 505")) << reply;
  EXPECT_NE(reply.find("HTTP/2"), std::string::npos);
  EXPECT_TRUE(c.eof());
}

TEST_F(RawH2Test, GarbagePrefaceClosesTheConnection) {
  RawClient c(server_.port());
  c.send_raw(std::string("\x16\x03\x01\x02\x00garbage that is not HTTP/2 at all", 38));
  c.read_raw_until_eof();
  EXPECT_TRUE(c.eof());
  // Others are unaffected.
  RawClient ok(server_.port());
  ok.start();
  auto id = ok.grpc_call(kCheck, health_request());
  EXPECT_EQ(ok.wait(id).grpc_status(), 0);
}

TEST_F(RawH2Test, ShutdownSendsGoawayAndLetsInFlightStreamsFinish) {
  RawClient c(server_.port());
  c.start();
  auto id = c.grpc_call("/dispatchd.test.TestService/Stream", [] {
    std::string req;
    req += '\x08';  // count = 3
    req += '\x03';
    req += '\x10';  // size = 1
    req += '\x01';
    return grpc_frame(req);
  }());
  c.flush();
  auto hang = c.grpc_call("/dispatchd.test.TestService/HangStream", grpc_frame(""));
  ASSERT_TRUE(c.pump_until([&] { return !c.response(hang).data.empty(); }));
  std::thread stopper([&] { EXPECT_TRUE(server_.stop()); });
  EXPECT_TRUE(c.pump_until([&] { return c.goaway_received(); }));
  EXPECT_EQ(c.goaway_code(), 0u);
  EXPECT_GE(c.goaway_last_stream(), hang);
  const auto& r = c.wait(id);
  EXPECT_EQ(r.grpc_status(), 0);
  // The hanging stream is cut when the drain timeout passes; the connection then closes.
  EXPECT_TRUE(c.pump_until([&] { return c.eof(); }, std::chrono::seconds(10)));
  stopper.join();
}

}  // namespace
