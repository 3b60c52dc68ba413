// Our own TLS 1.3 record layer (Tls13Records): after the handshake the server frees OpenSSL's
// SSL object and protects records itself. Judged by real OpenSSL clients against the real server
// transport (TlsTransport on its own io thread), and by grpc++ against the whole server.

#include "dispatchd/net/tls13_records.hpp"

#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <array>
#include <asio/co_spawn.hpp>
#include <asio/detached.hpp>
#include <asio/experimental/as_tuple.hpp>
#include <asio/io_context.hpp>
#include <asio/ip/tcp.hpp>
#include <asio/use_awaitable.hpp>
#include <atomic>
#include <csignal>
#include <cstring>
#include <functional>
#include <future>
#include <mutex>
#include <optional>
#include <set>
#include <thread>
#include <vector>

#include "dispatchd/net/handshake_pool.hpp"
#include "dispatchd/net/tls.hpp"
#include "dispatcher.grpc.pb.h"
#include "support/certs.hpp"
#include "support/test_server.hpp"

namespace {

using dispatchd::net::TlsContext;
using dispatchd::net::TlsTransport;
using dispatchd::net::Transport;
using dispatchd::test::read_file;
namespace api = docker::swarmkit::v1;

const std::string& cert_dir() {
  static const std::string dir =
      dispatchd::test::make_test_certs("tls13rec", "--org myorg --nodes 2 --manager-id mgr-0");
  return dir;
}

dispatchd::net::TlsFiles files(bool openssl_records = false) {
  return {cert_dir() + "/server.pem", cert_dir() + "/server.key", cert_dir() + "/ca.pem",
          openssl_records};
}

std::shared_ptr<TlsContext> context(bool openssl_records = false) {
  auto ctx = TlsContext::load(files(openssl_records));
  if (!ctx) throw std::runtime_error(ctx.error());
  return *ctx;
}

// What the server saw on one connection.
struct Served {
  std::error_code handshake;
  std::error_code end;  // what ended the body (eof after close_notify)
  bool own_records = false;
  dispatchd::net::PeerIdentity identity;
  std::uint64_t bytes = 0;
  std::uint32_t key_updates = 0;
  std::uint64_t write_sequence = 0;
  bool buffers_at_end = false;
  std::string failure;  // Tls13Records::failure()
};

using Body = std::function<asio::awaitable<void>(TlsTransport&, Served&)>;

std::vector<std::uint8_t> pattern(std::size_t n, unsigned seed = 1) {
  std::vector<std::uint8_t> v(n);
  std::uint32_t x = seed * 2654435761u;
  for (auto& b : v) {
    x = x * 1103515245u + 12345u;
    b = static_cast<std::uint8_t>(x >> 16);
  }
  return v;
}

void note_records(const TlsTransport& t, Served& r) {
  if (const auto* rec = t.records()) {
    r.key_updates = rec->key_updates_received();
    r.write_sequence = rec->write_sequence();
    r.buffers_at_end = rec->holds_buffers();
    if (rec->failure()) r.failure = rec->failure();
  }
}

// Echoes what it reads, `read_size` bytes at most per read_some, until the stream ends.
Body echo(std::size_t read_size = 64 * 1024) {
  return [read_size](TlsTransport& t, Served& r) -> asio::awaitable<void> {
    std::vector<std::uint8_t> buf(read_size);
    for (;;) {
      std::error_code ec;
      std::size_t n = t.read_some(buf, ec);
      if (ec == asio::error::would_block) {
        note_records(t, r);  // idle here
        if (auto wec = co_await t.wait(t.read_blocked_on()); wec) {
          r.end = wec;
          co_return;
        }
        continue;
      }
      if (ec) {
        r.end = ec;
        note_records(t, r);
        co_return;
      }
      r.bytes += n;
      std::uint64_t written = 0;
      if (auto wec = co_await dispatchd::net::write_all(t, {buf.data(), n}, written); wec) {
        r.end = wec;
        co_return;
      }
    }
  };
}

// Sends `n` bytes of pattern(n), then closes (close_notify).
Body send_then_close(std::size_t n) {
  return [n](TlsTransport& t, Served& r) -> asio::awaitable<void> {
    auto data = pattern(n);
    std::uint64_t written = 0;
    r.end = co_await dispatchd::net::write_all(t, data, written);
    r.bytes = written;
    note_records(t, r);
  };
}

// A server of TlsTransports on its own io thread: every accepted connection handshakes and then
// runs `body`; result(i) is what the i-th connection saw.
class TransportServer {
 public:
  explicit TransportServer(Body body, std::shared_ptr<TlsContext> ctx = context(),
                           dispatchd::net::HandshakePool* pool = nullptr)
      : ctx_(std::move(ctx)), body_(std::move(body)), pool_(pool) {
    acceptor_.open(asio::ip::tcp::v4());
    acceptor_.bind({asio::ip::address_v4::loopback(), 0});
    acceptor_.listen();
    port_ = acceptor_.local_endpoint().port();
    for (auto& p : results_)
      futures_.push_back(p.get_future());
    asio::co_spawn(io_, accept_loop(), asio::detached);
    thread_ = std::thread([this] { io_.run(); });
  }
  ~TransportServer() {
    io_.stop();
    thread_.join();
  }
  unsigned short port() const { return port_; }
  std::thread::id io_thread() const { return thread_.get_id(); }
  Served result(int i) {
    if (futures_[i].wait_for(std::chrono::seconds(30)) != std::future_status::ready) {
      ADD_FAILURE() << "connection " << i << " did not finish";
      return {};
    }
    return futures_[i].get();
  }

 private:
  asio::awaitable<void> accept_loop() {
    for (std::size_t i = 0; i < results_.size(); ++i) {
      auto [ec, socket] =
          co_await acceptor_.async_accept(asio::experimental::as_tuple(asio::use_awaitable));
      if (ec) co_return;
      asio::co_spawn(io_, serve(std::move(socket), i), asio::detached);
    }
  }
  asio::awaitable<void> serve(asio::ip::tcp::socket socket, std::size_t i) {
    auto t = std::make_unique<TlsTransport>(std::move(socket), ctx_);
    Served r;
    r.handshake = co_await t->handshake(pool_);
    if (!r.handshake) {
      r.own_records = t->own_records();
      r.identity = *t->identity();
      co_await body_(*t, r);
    }
    t->close();
    results_[i].set_value(std::move(r));
  }

  asio::io_context io_{1};
  asio::ip::tcp::acceptor acceptor_{io_};
  std::shared_ptr<TlsContext> ctx_;
  Body body_;
  dispatchd::net::HandshakePool* pool_;
  std::array<std::promise<Served>, 16> results_;
  std::vector<std::future<Served>> futures_;
  std::thread thread_;
  unsigned short port_ = 0;
};

// A blocking OpenSSL client with node-1's certificate.
struct Client {
  int fd = -1;
  SSL_CTX* ctx = nullptr;
  SSL* ssl = nullptr;
  BIO* mem = nullptr;  // after capture(): records written go here instead of the socket

  explicit Client(unsigned short port, int max_version = TLS1_3_VERSION,
                  const char* suites = nullptr, int rcvbuf = 0) {
    const std::string cert = "node-1";
    ctx = SSL_CTX_new(TLS_client_method());
    SSL_CTX_set_max_proto_version(ctx, max_version);
    if (suites) SSL_CTX_set_ciphersuites(ctx, suites);
    SSL_CTX_use_certificate_file(ctx, (cert_dir() + "/" + cert + ".pem").c_str(), SSL_FILETYPE_PEM);
    SSL_CTX_use_PrivateKey_file(ctx, (cert_dir() + "/" + cert + ".key").c_str(), SSL_FILETYPE_PEM);
    SSL_CTX_load_verify_locations(ctx, (cert_dir() + "/ca.pem").c_str(), nullptr);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, nullptr);
    fd = ::socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    timeval tv{20, 0};  // a broken server fails the test instead of hanging it
    ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    // A small receive window: the server's sends stop in the middle of records.
    if (rcvbuf) ::setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
    ssl = SSL_new(ctx);
    SSL_set_fd(ssl, fd);
    static const unsigned char kAlpn[] = {2, 'h', '2'};
    SSL_set_alpn_protos(ssl, kAlpn, sizeof kAlpn);
    SSL_set_tlsext_host_name(ssl, "swarm-manager");
  }
  ~Client() {
    if (ssl) SSL_free(ssl);
    if (ctx) SSL_CTX_free(ctx);
    if (fd >= 0) ::close(fd);
  }
  bool handshake() { return SSL_connect(ssl) == 1; }
  bool write(std::span<const std::uint8_t> d) {
    std::size_t off = 0;
    while (off < d.size()) {
      int n = SSL_write(ssl, d.data() + off, static_cast<int>(d.size() - off));
      if (n <= 0) return false;
      off += static_cast<std::size_t>(n);
    }
    return true;
  }
  bool write(const std::string& s) {
    return write({reinterpret_cast<const std::uint8_t*>(s.data()), s.size()});
  }
  // Exactly n bytes, or what arrived before the stream ended.
  std::vector<std::uint8_t> read(std::size_t n) {
    std::vector<std::uint8_t> out(n);
    std::size_t got = 0;
    while (got < n) {
      int r = SSL_read(ssl, out.data() + got, static_cast<int>(n - got));
      if (r <= 0) break;
      got += static_cast<std::size_t>(r);
    }
    out.resize(got);
    return out;
  }
  // Records from now on are written into memory; send_raw() puts bytes on the wire.
  void capture() {
    mem = BIO_new(BIO_s_mem());
    SSL_set0_wbio(ssl, mem);
  }
  std::string take_captured() {
    char* p = nullptr;
    long n = BIO_get_mem_data(mem, &p);
    std::string s(p, static_cast<std::size_t>(n));
    (void)BIO_reset(mem);
    return s;
  }
  bool send_raw(const std::string& bytes) {
    return ::send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL) ==
           static_cast<ssize_t>(bytes.size());
  }
  // The alert the server sent, as OpenSSL reports it on the next read ("" if the read worked).
  std::string read_error() {
    ERR_clear_error();
    char c;
    int r = SSL_read(ssl, &c, 1);
    if (r > 0) return "";
    unsigned long e = ERR_peek_error();
    if (!e) return "no OpenSSL error (" + std::to_string(SSL_get_error(ssl, r)) + ")";
    char buf[256];
    ERR_error_string_n(e, buf, sizeof buf);
    return buf;
  }
};

void expect_echo(Client& c, std::size_t total, std::size_t chunk, unsigned seed = 7) {
  auto data = pattern(total, seed);
  for (std::size_t off = 0; off < total; off += chunk) {
    std::size_t n = std::min(chunk, total - off);
    ASSERT_TRUE(c.write({data.data() + off, n}));
    auto back = c.read(n);
    ASSERT_EQ(back.size(), n);
    ASSERT_EQ(std::memcmp(back.data(), data.data() + off, n), 0) << "at " << off;
  }
}

TEST(Tls13RecordsTest, SslIsFreedAfterTheHandshakeAndTheIdentityKept) {
  TransportServer server(echo());
  {
    Client c(server.port());
    ASSERT_TRUE(c.handshake());
    EXPECT_EQ(SSL_version(c.ssl), TLS1_3_VERSION);
    expect_echo(c, 1000, 1000);
  }
  Served r = server.result(0);
  EXPECT_FALSE(r.handshake);
  EXPECT_TRUE(r.own_records);  // the SSL object is gone: ssl_ freed, records ours
  EXPECT_TRUE(r.identity.has_certificate);
  EXPECT_EQ(r.identity.common_name, "node-1");
  EXPECT_EQ(r.identity.organizational_units, std::vector<std::string>{"swarm-worker"});
  EXPECT_EQ(r.identity.organization, "myorg");
  EXPECT_FALSE(r.buffers_at_end);  // waiting for data, no buffer held
}

class Tls13SuiteTest : public ::testing::TestWithParam<const char*> {};

TEST_P(Tls13SuiteTest, LargeTransfersBothWays) {
  TransportServer echo_server(echo());
  {
    Client c(echo_server.port(), TLS1_3_VERSION, GetParam());
    ASSERT_TRUE(c.handshake());
    EXPECT_STREQ(SSL_CIPHER_get_name(SSL_get_current_cipher(c.ssl)), GetParam());
    expect_echo(c, 8 << 20, 40000);
    // A second connection at the same time: the thread's shared AEAD contexts change keys.
    Client d(echo_server.port(), TLS1_3_VERSION, GetParam());
    ASSERT_TRUE(d.handshake());
    for (int i = 0; i < 50; ++i) {
      expect_echo(c, 3000, 3000, i);
      expect_echo(d, 20000, 20000, i);
    }
  }
  Served r = echo_server.result(0);
  EXPECT_TRUE(r.own_records);
  EXPECT_EQ(r.end, asio::error::eof);
  EXPECT_EQ(r.bytes, (8u << 20) + 50 * 3000);

  const std::size_t n = 6 << 20;
  TransportServer sender(send_then_close(n));
  Client c(sender.port(), TLS1_3_VERSION, GetParam(), 4096);
  ASSERT_TRUE(c.handshake());
  auto got = c.read(n + 1);
  EXPECT_EQ(got, pattern(n));
  EXPECT_EQ(SSL_get_error(c.ssl, 0), SSL_ERROR_ZERO_RETURN);  // the server's close_notify
  Served s = sender.result(0);
  EXPECT_TRUE(s.own_records);
  EXPECT_FALSE(s.end);
  EXPECT_EQ(s.bytes, n);
  EXPECT_EQ(s.write_sequence, (n + 16383) / 16384);  // full records, no empty ones
}

// Writes until the socket takes no more, then closes at once.
Body write_until_blocked(const std::vector<std::uint8_t>& data) {
  return [&data](TlsTransport& t, Served& r) -> asio::awaitable<void> {
    std::size_t off = 0;
    while (off < data.size()) {
      std::error_code ec;
      std::size_t n =
          t.write_some({data.data() + off, std::min<std::size_t>(65536, data.size() - off)}, ec);
      if (ec) {
        r.end = ec;
        break;
      }
      off += n;
    }
    r.bytes = off;
    note_records(t, r);
    co_return;
  };
}

// Bytes write_some reported written are on their way even when the connection is closed right
// after: a record the socket took only part of is not reported written until all of it is out.
TEST(Tls13RecordsTest, WrittenBytesSurviveACloseRightAfterWritesBlock) {
  const auto data = pattern(32 << 20);
  TransportServer server(write_until_blocked(data));
  Client c(server.port(), TLS1_3_VERSION, nullptr, 4096);
  ASSERT_TRUE(c.handshake());
  Served r = server.result(0);  // the server blocked and closed before we read anything
  ASSERT_TRUE(r.own_records);
  EXPECT_EQ(r.end, asio::error::would_block);
  ASSERT_GT(r.bytes, 0u);
  ASSERT_LT(r.bytes, data.size());
  auto got = c.read(r.bytes + 1);
  ASSERT_EQ(got.size(), r.bytes);
  EXPECT_EQ(std::memcmp(got.data(), data.data(), got.size()), 0);
}

INSTANTIATE_TEST_SUITE_P(Suites, Tls13SuiteTest,
                         ::testing::Values("TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384",
                                           "TLS_CHACHA20_POLY1305_SHA256"));

TEST(Tls13RecordsTest, ReadsSmallerThanARecordAndRecordsInPieces) {
  for (std::size_t read_size : {1, 100, 16385}) {
    TransportServer server(echo(read_size));
    Client c(server.port());
    ASSERT_TRUE(c.handshake());
    expect_echo(c, 100000, 50000);
  }
  TransportServer server(echo());
  Client c(server.port());
  ASSERT_TRUE(c.handshake());
  c.capture();
  auto data = pattern(3000, 3);
  ASSERT_TRUE(c.write(data));
  std::string wire = c.take_captured();
  // One byte per segment (TCP_NODELAY): records arrive split across many reads.
  for (char b : wire)
    ASSERT_TRUE(c.send_raw(std::string(1, b)));
  EXPECT_EQ(c.read(data.size()), data);
  // Many records in one segment: 200 small records with one send.
  std::vector<std::uint8_t> all;
  for (int i = 0; i < 200; ++i) {
    auto piece = pattern(37, i);
    ASSERT_TRUE(c.write(piece));
    all.insert(all.end(), piece.begin(), piece.end());
  }
  wire = c.take_captured();
  ASSERT_TRUE(c.send_raw(wire));
  EXPECT_EQ(c.read(all.size()), all);
  // Records split at odd places: 1.5 records, then the rest.
  ASSERT_TRUE(c.write(pattern(20000, 9)));  // two records
  wire = c.take_captured();
  ASSERT_TRUE(c.send_raw(wire.substr(0, 16384 + 22 + 3000)));
  ASSERT_TRUE(c.send_raw(wire.substr(16384 + 22 + 3000)));
  EXPECT_EQ(c.read(20000), pattern(20000, 9));
}

TEST(Tls13RecordsTest, KeyUpdatesRequestedOrNotAndDataContinuesBothWays) {
  TransportServer server(echo());
  {
    Client c(server.port());
    ASSERT_TRUE(c.handshake());
    expect_echo(c, 100000, 50000);
    // Not requested: only the client's key changes.
    ASSERT_EQ(SSL_key_update(c.ssl, SSL_KEY_UPDATE_NOT_REQUESTED), 1);
    expect_echo(c, 100000, 50000);
    // Requested: the server answers with its own KeyUpdate before its next record.
    ASSERT_EQ(SSL_key_update(c.ssl, SSL_KEY_UPDATE_REQUESTED), 1);
    expect_echo(c, 100000, 50000);
    // Several in a row, without data between them.
    for (int i = 0; i < 5; ++i) {
      ASSERT_EQ(
          SSL_key_update(c.ssl, i % 2 ? SSL_KEY_UPDATE_REQUESTED : SSL_KEY_UPDATE_NOT_REQUESTED),
          1);
      ASSERT_EQ(SSL_do_handshake(c.ssl), 1);  // sends it
    }
    expect_echo(c, 1000, 1000);
  }
  Served r = server.result(0);
  EXPECT_TRUE(r.own_records);
  EXPECT_EQ(r.end, asio::error::eof);
  EXPECT_EQ(r.key_updates, 7u);
  // The server updated its write key after the last request: one echo record since.
  EXPECT_EQ(r.write_sequence, 1u);
}

TEST(Tls13RecordsTest, EndlessKeyUpdatesWithoutDataAreRefused) {
  TransportServer server(echo());
  Client c(server.port());
  ASSERT_TRUE(c.handshake());
  for (int i = 0; i < dispatchd::net::Tls13Records::kMaxEmptyRecords + 1; ++i) {
    ASSERT_EQ(SSL_key_update(c.ssl, SSL_KEY_UPDATE_NOT_REQUESTED), 1);
    ASSERT_EQ(SSL_do_handshake(c.ssl), 1);
  }
  EXPECT_NE(c.read_error().find("unexpected message"), std::string::npos);
  EXPECT_EQ(server.result(0).end, asio::error::connection_aborted);
}

TEST(Tls13RecordsTest, ClientCloseNotifyIsEofAndTheServerAnswersWithItsOwn) {
  TransportServer server(echo());
  Client c(server.port());
  ASSERT_TRUE(c.handshake());
  expect_echo(c, 5000, 5000);
  ASSERT_EQ(SSL_shutdown(c.ssl), 0);  // close_notify sent; the TCP connection stays open
  Served r = server.result(0);
  EXPECT_EQ(r.end, asio::error::eof);
  EXPECT_EQ(SSL_shutdown(c.ssl), 1);  // the server's close_notify arrived and decrypted
}

TEST(Tls13RecordsTest, AFlippedCiphertextByteIsBadRecordMacAndOthersAreUnaffected) {
  TransportServer server(echo());
  Client good(server.port());
  ASSERT_TRUE(good.handshake());
  Client bad(server.port());
  ASSERT_TRUE(bad.handshake());
  expect_echo(bad, 5000, 5000);
  bad.capture();
  ASSERT_TRUE(bad.write(std::string(100, 'x')));
  std::string wire = bad.take_captured();
  wire[20] = static_cast<char>(wire[20] ^ 0x01);
  ASSERT_TRUE(bad.send_raw(wire));
  EXPECT_NE(bad.read_error().find("bad record mac"), std::string::npos);
  Served r = server.result(1);
  EXPECT_EQ(r.end, asio::error::connection_aborted);
  EXPECT_NE(r.failure.find("bad_record_mac"), std::string::npos) << r.failure;
  expect_echo(good, 100000, 50000);
}

TEST(Tls13RecordsTest, OversizedRecordsAndOtherRecordTypesAreRefused) {
  TransportServer server(echo());
  {
    Client c(server.port());
    ASSERT_TRUE(c.handshake());
    expect_echo(c, 100, 100);
    // 2^14 + 256 + 1 bytes announced.
    ASSERT_TRUE(c.send_raw(std::string("\x17\x03\x03\x41\x01", 5) + std::string(100, 'a')));
    EXPECT_NE(c.read_error().find("record overflow"), std::string::npos);
  }
  Served r = server.result(0);
  EXPECT_EQ(r.end, asio::error::connection_aborted);
  EXPECT_NE(r.failure.find("record_overflow"), std::string::npos) << r.failure;
  {
    Client c(server.port());
    ASSERT_TRUE(c.handshake());
    // change_cipher_spec after the handshake.
    ASSERT_TRUE(c.send_raw(std::string("\x14\x03\x03\x00\x01\x01", 6)));
    EXPECT_NE(c.read_error().find("unexpected message"), std::string::npos);
  }
  EXPECT_EQ(server.result(1).end, asio::error::connection_aborted);
}

TEST(Tls13RecordsTest, Tls12StaysOnOpenSsl) {
  TransportServer server(echo());
  {
    Client c(server.port(), TLS1_2_VERSION);
    ASSERT_TRUE(c.handshake());
    EXPECT_EQ(SSL_version(c.ssl), TLS1_2_VERSION);
    expect_echo(c, 200000, 50000);
  }
  Served r = server.result(0);
  EXPECT_FALSE(r.own_records);
  EXPECT_EQ(r.identity.common_name, "node-1");
  EXPECT_EQ(r.bytes, 200000u);
}

TEST(Tls13RecordsTest, WithOpenSslRecordsTls13StaysOnOpenSsl) {
  TransportServer server(echo(), context(/*openssl_records=*/true));
  {
    Client c(server.port());
    ASSERT_TRUE(c.handshake());
    expect_echo(c, 200000, 50000);
    ASSERT_EQ(SSL_key_update(c.ssl, SSL_KEY_UPDATE_REQUESTED), 1);
    expect_echo(c, 1000, 1000);
    ASSERT_EQ(SSL_shutdown(c.ssl), 0);
    EXPECT_EQ(SSL_shutdown(c.ssl), 1);
  }
  Served r = server.result(0);
  EXPECT_FALSE(r.handshake);
  EXPECT_FALSE(r.own_records);
  EXPECT_EQ(r.identity.common_name, "node-1");
  EXPECT_EQ(r.end, asio::error::eof);
}

// The whole server with grpc++: Session and Heartbeat over our records, counted in /metrics.
void grpc_session(bool openssl_records) {
  auto o = dispatchd::test::TestServer::default_options();
  o.insecure = false;
  o.tls = files(openssl_records);
  dispatchd::test::TestServer server(o);
  grpc::SslCredentialsOptions so;
  so.pem_root_certs = read_file(cert_dir() + "/ca.pem");
  so.pem_private_key = read_file(cert_dir() + "/node-1.key");
  so.pem_cert_chain = read_file(cert_dir() + "/node-1.pem");
  grpc::ChannelArguments args;
  args.SetSslTargetNameOverride("swarm-manager");
  auto stub = api::Dispatcher::NewStub(
      grpc::CreateCustomChannel(server.address(), grpc::SslCredentials(so), args));
  grpc::ClientContext ctx;
  auto session = stub->Session(&ctx, api::SessionRequest());
  api::SessionMessage first;
  ASSERT_TRUE(session->Read(&first));
  EXPECT_EQ(first.node().id(), "node-1");
  for (int i = 0; i < 20; ++i) {
    grpc::ClientContext hctx;
    api::HeartbeatRequest req;
    req.set_session_id(first.session_id());
    api::HeartbeatResponse resp;
    EXPECT_TRUE(stub->Heartbeat(&hctx, req, &resp).ok());
  }
  ctx.TryCancel();
  session->Finish();
  auto [own, openssl] = server.call([&] {
    return std::pair(server.server().stats().tls_own_records,
                     server.server().stats().tls_openssl_records);
  });
  EXPECT_EQ(own, openssl_records ? 0u : 1u);
  EXPECT_EQ(openssl, openssl_records ? 1u : 0u);
}

TEST(Tls13RecordsTest, GrpcppSessionOverOwnRecords) {
  grpc_session(false);
}
TEST(Tls13RecordsTest, GrpcppSessionWithOpenSslRecords) {
  grpc_session(true);
}

// --tls-handshake-threads: each SSL_do_handshake step runs on a pool thread, the rest of the
// connection on the io thread.
TEST(HandshakePool, HandshakesRunOnPoolThreadsAndTheConnectionsWork) {
  dispatchd::net::HandshakePool pool(2);
  std::mutex m;
  std::set<std::thread::id> step_threads;
  pool.before_step = [&] {
    std::lock_guard lock(m);
    step_threads.insert(std::this_thread::get_id());
  };
  constexpr int kClients = 8;
  TransportServer server(echo(), context(), &pool);
  std::vector<std::thread> clients;
  for (int i = 0; i < kClients; ++i) {
    clients.emplace_back([&, i] {
      Client c(server.port());
      ASSERT_TRUE(c.handshake()) << "client " << i;
      expect_echo(c, 100000, 7000, static_cast<unsigned>(i + 1));
    });
  }
  for (auto& t : clients)
    t.join();
  for (int i = 0; i < kClients; ++i) {
    Served r = server.result(i);
    EXPECT_FALSE(r.handshake) << r.handshake.message();
    EXPECT_TRUE(r.own_records);
    EXPECT_EQ(r.identity.common_name, "node-1");
    EXPECT_EQ(r.bytes, 100000u);
  }
  std::lock_guard lock(m);
  EXPECT_FALSE(step_threads.empty());
  EXPECT_EQ(step_threads.count(server.io_thread()), 0u);
  EXPECT_LE(step_threads.size(), 2u);
}

// A close (a deadline, shutdown, eviction) while a step runs on a pool thread must not close the
// socket under that thread: it waits for the step, and the handshake ends aborted.
TEST(HandshakePool, CloseDuringAStepWaitsForTheStep) {
  // The client may write its Finished after the server has closed (as dispatchd, which ignores
  // SIGPIPE, would see it).
  std::signal(SIGPIPE, SIG_IGN);
  dispatchd::net::HandshakePool pool(1);
  std::promise<void> entered, release;
  auto released = release.get_future().share();
  std::atomic<bool> first{true};
  pool.before_step = [&] {
    if (first.exchange(false)) {
      entered.set_value();
      released.wait();
    }
  };
  asio::io_context io{1};
  asio::ip::tcp::acceptor acceptor(io, {asio::ip::address_v4::loopback(), 0});
  std::unique_ptr<TlsTransport> t;
  std::optional<std::error_code> result;
  asio::co_spawn(
      io,
      [&]() -> asio::awaitable<void> {
        auto socket = co_await acceptor.async_accept(asio::use_awaitable);
        t = std::make_unique<TlsTransport>(std::move(socket), context());
        result = co_await t->handshake(&pool);
      },
      asio::detached);
  std::thread client([port = acceptor.local_endpoint().port()] {
    Client c(port);
    // A TLS 1.3 client may finish before the server has read its Finished; either way the
    // server closes the connection.
    if (c.handshake()) {
      EXPECT_TRUE(c.read(1).empty());
    }
  });
  auto in_step = entered.get_future();
  for (int i = 0;
       i < 2000 && in_step.wait_for(std::chrono::seconds(0)) != std::future_status::ready; ++i) {
    io.run_one_for(std::chrono::milliseconds(10));
  }
  ASSERT_EQ(in_step.wait_for(std::chrono::seconds(0)), std::future_status::ready);
  ASSERT_TRUE(t);
  t->close();
  EXPECT_TRUE(t->is_open()) << "the socket was closed while a pool thread used it";
  release.set_value();
  for (int i = 0; i < 2000 && !result; ++i)
    io.run_one_for(std::chrono::milliseconds(10));
  ASSERT_TRUE(result);
  EXPECT_EQ(*result, asio::error::operation_aborted);
  EXPECT_FALSE(t->is_open());
  client.join();
}

}  // namespace
