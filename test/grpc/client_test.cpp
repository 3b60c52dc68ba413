// Our gRPC client (h2::ClientConnection + grpc::ClientCall) against our own server, over h2c and
// mutual TLS, and against the real grpc++ server.

#include "dispatchd/grpc/client.hpp"

#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <asio/co_spawn.hpp>
#include <asio/io_context.hpp>
#include <cstdlib>
#include <optional>
#include <string>

#include "dispatchd/co/timer_wheel.hpp"
#include "dispatchd/h2/client_connection.hpp"
#include "dispatchd/net/tcp_transport.hpp"
#include "dispatchd/net/tls_client.hpp"
#include "dispatcher.pb.h"
#include "support/certs.hpp"
#include "support/drive.hpp"
#include "support/test_server.hpp"
#include "support/test_service.hpp"
#include "test_service.grpc.pb.h"

namespace {

namespace tpb = dispatchd::test;
namespace api = docker::swarmkit::v1;
using dispatchd::grpc::CallOptions;
using dispatchd::grpc::ClientCall;
using dispatchd::grpc::Status;
using dispatchd::grpc::StatusCode;
using dispatchd::test::TestServer;
using dispatchd::test::TestServiceState;
namespace h2 = dispatchd::h2;
namespace net = dispatchd::net;
using namespace std::chrono_literals;

const std::string kService = "/dispatchd.test.TestService/";

const std::string& cert_dir() {
  static const std::string dir = dispatchd::test::make_test_certs("client", "--nodes 1");
  return dir;
}

enum class Transport { h2c, mtls };

// A client io_context driven by the test thread: run() drives it until a coroutine finishes.
class Client {
 public:
  ~Client() { disconnect(); }

  template <class T>
  T run(asio::awaitable<T> a, std::chrono::seconds limit = 20s) {
    return dispatchd::test::drive(io_, std::move(a), limit, "client coroutine did not finish");
  }

  // Connects and starts the connection's reader and writer. "" on success.
  std::string connect(unsigned short port, Transport t, const std::string& cert = "node-1",
                      const std::string& server_name = "swarm-manager") {
    return run(connect_co(port, t, cert, server_name));
  }

  void disconnect() {
    if (!conn_) return;
    conn_->close();
    EXPECT_TRUE(dispatchd::test::drive_until(
        io_, [this] { return run_done_; }, 10s, 100ms));
    conn_.reset();
  }

  h2::ClientConnection& conn() { return *conn_; }
  bool run_done() const { return run_done_; }
  asio::io_context& io() { return io_; }

 private:
  asio::awaitable<std::string> connect_co(unsigned short port, Transport t, std::string cert,
                                          std::string server_name) {
    asio::ip::tcp::endpoint ep(asio::ip::make_address("127.0.0.1"), port);
    auto sock = co_await net::dial(io_.get_executor(), ep);
    if (!sock) co_return "dial: " + sock.error().message();
    std::unique_ptr<net::Transport> tr;
    if (t == Transport::h2c) {
      tr = std::make_unique<net::TcpTransport>(std::move(*sock));
    } else {
      auto ctx = net::TlsClientContext::load(cert_dir() + "/ca.pem");
      if (!ctx) co_return ctx.error();
      std::shared_ptr<net::TlsClientCertificate> c;
      if (!cert.empty()) {
        auto loaded = net::TlsClientCertificate::load(cert_dir() + "/" + cert + ".pem",
                                                      cert_dir() + "/" + cert + ".key");
        if (!loaded) co_return loaded.error();
        c = *loaded;
      }
      auto tls = std::make_unique<net::TlsClientTransport>(std::move(*sock), *ctx, c, server_name);
      if (auto ec = co_await tls->handshake(); ec) co_return "handshake: " + tls->handshake_error();
      tr = std::move(tls);
    }
    conn_ = std::make_shared<h2::ClientConnection>(std::move(tr), wheel_);
    asio::co_spawn(io_, conn_->run(), [this](std::exception_ptr) { run_done_ = true; });
    co_return std::string();
  }

  asio::io_context io_{1};
  dispatchd::co::TimerWheel wheel_{io_};
  std::shared_ptr<h2::ClientConnection> conn_;
  bool run_done_ = false;
};

dispatchd::app::Options server_options(Transport t) {
  auto o = TestServer::default_options();
  if (t == Transport::mtls) {
    o.insecure = false;
    o.tls = {cert_dir() + "/server.pem", cert_dir() + "/server.key", cert_dir() + "/ca.pem"};
  }
  return o;
}

class ClientTest : public ::testing::TestWithParam<Transport> {
 protected:
  ClientTest()
      : server_(server_options(GetParam()),
                [this](dispatchd::app::Server& s) { add_test_service(s.grpc(), state_); }) {
    std::string err = client_.connect(server_.port(), GetParam());
    if (!err.empty()) throw std::runtime_error(err);
  }

  // Drives the client (so that what it queued goes out) until pred() holds on the server.
  template <class Pred>
  bool server_sees(Pred pred) {
    for (int i = 0; i < 200; ++i) {
      client_.io().poll();
      if (server_.eventually(pred, 50ms)) return true;
    }
    return false;
  }

  CallOptions options() {
    CallOptions o;
    if (GetParam() == Transport::mtls) o.scheme = "https";
    return o;
  }

  TestServiceState state_;
  TestServer server_;
  Client client_;
};

TEST_P(ClientTest, UnaryCallWithMetadata) {
  tpb::EchoRequest req;
  req.set_payload("hello");
  req.add_metadata_keys("x-agent");
  req.add_metadata_keys("x-absent");
  auto o = options();
  o.metadata.push_back({"x-agent", "sim-1"});
  tpb::EchoReply reply;
  Status st =
      client_.run(dispatchd::grpc::unary_call(client_.conn(), kService + "Echo", req, reply, o));
  ASSERT_TRUE(st.is_ok()) << st.message();
  EXPECT_EQ(reply.payload(), "hello");
  ASSERT_EQ(reply.metadata_size(), 2);
  EXPECT_EQ(reply.metadata(0), "sim-1");
  EXPECT_EQ(reply.metadata(1), "<absent>");
}

TEST_P(ClientTest, ErrorStatusAndMessageFromTrailersOnly) {
  tpb::FailRequest req;
  req.set_code(static_cast<int>(StatusCode::failed_precondition));
  req.set_message("node is 100% down: ümlaut");
  auto call = ClientCall::start(client_.conn(), kService + "Fail", req, options());
  ASSERT_TRUE(call);
  auto msg = client_.run(call->read());
  EXPECT_FALSE(msg);
  EXPECT_EQ(call->status().code(), StatusCode::failed_precondition);
  EXPECT_EQ(call->status().message(), "node is 100% down: ümlaut");
  EXPECT_TRUE(call->trailers_only());
}

TEST_P(ClientTest, UnknownMethodIsUnimplemented) {
  tpb::Empty req;
  tpb::Empty reply;
  Status st = client_.run(dispatchd::grpc::unary_call(client_.conn(), kService + "NoSuchMethod",
                                                      req, reply, options()));
  EXPECT_EQ(st.code(), StatusCode::unimplemented);
}

TEST_P(ClientTest, ServerStreamingManyMessages) {
  tpb::StreamRequest req;
  req.set_count(2000);
  req.set_size(300);  // 600 KB: more than one flow-control window
  auto call = ClientCall::start(client_.conn(), kService + "Stream", req, options());
  ASSERT_TRUE(call);
  auto chunks = client_.run([&]() -> asio::awaitable<std::vector<std::uint32_t>> {
    std::vector<std::uint32_t> out;
    tpb::Chunk c;
    while (co_await call->read(c)) {
      if (c.data().size() != 300) break;
      out.push_back(c.index());
    }
    co_return out;
  }());
  EXPECT_TRUE(call->status().is_ok()) << call->status().message();
  ASSERT_EQ(chunks.size(), 2000u);
  for (std::uint32_t i = 0; i < chunks.size(); ++i)
    ASSERT_EQ(chunks[i], i);
  EXPECT_FALSE(call->trailers_only());
  EXPECT_TRUE(server_.eventually([&] { return state_.stream_done; }));
}

// Bidi streaming through send(): what a proxy relaying an agent's stream needs.
TEST_P(ClientTest, BidiStreamingWithHalfClose) {
  auto call = ClientCall::start(client_.conn(), kService + "EchoStream", options(), "", false);
  ASSERT_TRUE(call);
  auto replies = client_.run([&]() -> asio::awaitable<std::vector<std::string>> {
    std::vector<std::string> out;
    tpb::EchoReply r;
    for (int i = 0; i < 3; ++i) {
      tpb::EchoRequest req;
      req.set_payload("msg-" + std::to_string(i));
      call->send(req, i == 2);
      if (!co_await call->read(r)) break;
      out.push_back(r.payload());
    }
    if (co_await call->read(r)) out.push_back("unexpected " + r.payload());
    co_return out;
  }());
  EXPECT_EQ(replies, (std::vector<std::string>{"msg-0", "msg-1", "msg-2"}));
  EXPECT_TRUE(call->status().is_ok()) << call->status().message();
  EXPECT_EQ(server_.call([&] { return state_.echo_stream_received; }), 3);
  EXPECT_EQ(server_.call([&] { return state_.echo_stream_read_end; }), StatusCode::ok);
}

TEST_P(ClientTest, CancellationReachesTheServer) {
  tpb::Empty req;
  auto call = ClientCall::start(client_.conn(), kService + "HangStream", req, options());
  ASSERT_TRUE(call);
  tpb::Chunk first;
  ASSERT_TRUE(client_.run(call->read(first)));
  ASSERT_TRUE(server_.eventually([&] { return state_.hang_started == 1; }));
  call->cancel();
  EXPECT_EQ(call->status().code(), StatusCode::cancelled);
  // Drive the client until the RST_STREAM is out; the server sees the cancellation.
  EXPECT_TRUE(server_sees([&] { return state_.hang_cancelled == 1; }));
  EXPECT_EQ(server_.call([&] { return state_.hang_deadline_exceeded; }), 0);
  // The connection is still usable.
  tpb::EchoRequest echo;
  echo.set_payload("after");
  tpb::EchoReply reply;
  EXPECT_TRUE(client_
                  .run(dispatchd::grpc::unary_call(client_.conn(), kService + "Echo", echo, reply,
                                                   options()))
                  .is_ok());
}

TEST_P(ClientTest, DeadlineExceeded) {
  tpb::Empty req, reply;
  auto o = options();
  o.timeout = 200ms;
  auto start = std::chrono::steady_clock::now();
  Status st =
      client_.run(dispatchd::grpc::unary_call(client_.conn(), kService + "Hang", req, reply, o));
  auto took = std::chrono::steady_clock::now() - start;
  EXPECT_EQ(st.code(), StatusCode::deadline_exceeded) << st.message();
  EXPECT_GE(took, 190ms);
  EXPECT_LT(took, 5s);
  // The server learnt of the deadline too (from grpc-timeout or our RST_STREAM).
  EXPECT_TRUE(server_sees([&] { return state_.hang_cancelled == 1; }));
}

TEST_P(ClientTest, ConnectionLossEndsCallsUnavailable) {
  tpb::Empty req;
  auto call = ClientCall::start(client_.conn(), kService + "Hang", req, options());
  ASSERT_TRUE(call);
  ASSERT_TRUE(server_sees([&] { return state_.hang_started == 1; }));
  client_.conn().close();
  EXPECT_FALSE(client_.run(call->read()));
  EXPECT_EQ(call->status().code(), StatusCode::unavailable);
  EXPECT_FALSE(client_.conn().usable());
}

TEST_P(ClientTest, ServerShutdownEndsTheConnection) {
  tpb::EchoRequest req;
  req.set_payload("x");
  tpb::EchoReply reply;
  ASSERT_TRUE(client_
                  .run(dispatchd::grpc::unary_call(client_.conn(), kService + "Echo", req, reply,
                                                   options()))
                  .is_ok());
  ASSERT_TRUE(server_.stop());
  EXPECT_TRUE(dispatchd::test::drive_until(
      client_.io(), [&] { return client_.run_done(); }, 10s, 100ms));
  EXPECT_FALSE(client_.conn().usable());
}

INSTANTIATE_TEST_SUITE_P(Transports, ClientTest, ::testing::Values(Transport::h2c, Transport::mtls),
                         [](const auto& info) {
                           return info.param == Transport::h2c ? std::string("h2c")
                                                               : std::string("mtls");
                         });

// The client certificate is what the server authenticates: without it a Dispatcher call is
// refused PERMISSION_DENIED; with it the call reaches the Dispatcher (which knows no session).
TEST(ClientTls, ClientCertificateIdentifiesTheNode) {
  TestServer server(server_options(Transport::mtls));
  auto heartbeat = [&](const std::string& cert) {
    Client c;
    std::string err = c.connect(server.port(), Transport::mtls, cert);
    EXPECT_EQ(err, "");
    api::HeartbeatRequest req;
    req.set_session_id("no-such-session");
    api::HeartbeatResponse resp;
    CallOptions o;
    o.scheme = "https";
    return c.run(dispatchd::grpc::unary_call(c.conn(), "/docker.swarmkit.v1.Dispatcher/Heartbeat",
                                             req, resp, o));
  };
  EXPECT_EQ(heartbeat("").code(), StatusCode::permission_denied);
  Status with_cert = heartbeat("node-1");
  EXPECT_NE(with_cert.code(), StatusCode::permission_denied) << with_cert.message();
  EXPECT_NE(with_cert.code(), StatusCode::ok);
}

TEST(ClientTls, WrongServerNameFailsTheHandshake) {
  TestServer server(server_options(Transport::mtls));
  Client c;
  std::string err = c.connect(server.port(), Transport::mtls, "node-1", "not-the-manager");
  EXPECT_NE(err.find("handshake"), std::string::npos) << err;
}

// Against the real gRPC C++ server.
class GrpcppTestService final : public tpb::TestService::Service {
  ::grpc::Status Echo(::grpc::ServerContext*, const tpb::EchoRequest* req,
                      tpb::EchoReply* reply) override {
    reply->set_payload(req->payload());
    return ::grpc::Status::OK;
  }
  ::grpc::Status Fail(::grpc::ServerContext*, const tpb::FailRequest* req,
                      tpb::EchoReply*) override {
    return ::grpc::Status(static_cast<::grpc::StatusCode>(req->code()), req->message());
  }
  ::grpc::Status Stream(::grpc::ServerContext*, const tpb::StreamRequest* req,
                        ::grpc::ServerWriter<tpb::Chunk>* writer) override {
    tpb::Chunk c;
    for (std::uint32_t i = 0; i < req->count(); ++i) {
      c.set_index(i);
      c.set_data(std::string(req->size(), 'x'));
      if (!writer->Write(c)) break;
    }
    return ::grpc::Status(::grpc::StatusCode::RESOURCE_EXHAUSTED, "done streaming");
  }
};

TEST(ClientAgainstGrpcpp, UnaryStreamingAndErrors) {
  GrpcppTestService service;
  ::grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort("127.0.0.1:0", ::grpc::InsecureServerCredentials(), &port);
  builder.RegisterService(&service);
  auto server = builder.BuildAndStart();
  ASSERT_TRUE(server);
  Client c;
  ASSERT_EQ(c.connect(static_cast<unsigned short>(port), Transport::h2c), "");

  tpb::EchoRequest echo;
  echo.set_payload("to grpc++");
  tpb::EchoReply reply;
  Status st = c.run(dispatchd::grpc::unary_call(c.conn(), kService + "Echo", echo, reply));
  ASSERT_TRUE(st.is_ok()) << st.message();
  EXPECT_EQ(reply.payload(), "to grpc++");

  tpb::FailRequest fail;
  fail.set_code(static_cast<int>(StatusCode::not_found));
  fail.set_message("no such node");
  st = c.run(dispatchd::grpc::unary_call(c.conn(), kService + "Fail", fail, reply));
  EXPECT_EQ(st.code(), StatusCode::not_found);
  EXPECT_EQ(st.message(), "no such node");

  tpb::StreamRequest sreq;
  sreq.set_count(500);
  sreq.set_size(1000);
  auto call = ClientCall::start(c.conn(), kService + "Stream", sreq);
  ASSERT_TRUE(call);
  int n = c.run([&]() -> asio::awaitable<int> {
    int count = 0;
    tpb::Chunk chunk;
    while (co_await call->read(chunk))
      ++count;
    co_return count;
  }());
  EXPECT_EQ(n, 500);
  EXPECT_EQ(call->status().code(), StatusCode::resource_exhausted);
  EXPECT_EQ(call->status().message(), "done streaming");
  c.disconnect();
  server->Shutdown();
}

}  // namespace
