#include "dispatchd/net/tls_client.hpp"

#include <netinet/in.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>

#include <asio/experimental/as_tuple.hpp>
#include <asio/use_awaitable.hpp>
#include <cerrno>
#include <cstdio>
#include <cstring>

#include "dispatchd/net/tcp_transport.hpp"

namespace dispatchd::net {

namespace {

std::string ssl_errors() {
  std::string out;
  while (unsigned long e = ERR_get_error()) {
    char buf[256];
    ERR_error_string_n(e, buf, sizeof buf);
    if (!out.empty()) out += "; ";
    out += buf;
  }
  return out.empty() ? "unknown OpenSSL error" : out;
}

constexpr unsigned char kAlpnH2[] = {2, 'h', '2'};

}  // namespace

std::expected<std::shared_ptr<TlsClientContext>, std::string> TlsClientContext::load(
    const std::string& ca) {
  std::shared_ptr<TlsClientContext> t(new TlsClientContext());
  SSL_CTX* ctx = SSL_CTX_new(TLS_client_method());
  if (!ctx) return std::unexpected("SSL_CTX_new: " + ssl_errors());
  t->ctx_ = ctx;
  SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
  SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET | SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION);
  SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
  SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS | SSL_MODE_ENABLE_PARTIAL_WRITE |
                            SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
  if (SSL_CTX_load_verify_locations(ctx, ca.c_str(), nullptr) != 1) {
    return std::unexpected("cannot load CA bundle " + ca + ": " + ssl_errors());
  }
  SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, nullptr);
  if (SSL_CTX_set_alpn_protos(ctx, kAlpnH2, sizeof kAlpnH2) != 0) {
    return std::unexpected("ALPN: " + ssl_errors());
  }
  return t;
}

TlsClientContext::~TlsClientContext() {
  if (ctx_) SSL_CTX_free(ctx_);
}

std::expected<std::shared_ptr<TlsClientCertificate>, std::string> TlsClientCertificate::load(
    const std::string& cert, const std::string& key) {
  std::shared_ptr<TlsClientCertificate> c(new TlsClientCertificate());
  FILE* f = std::fopen(cert.c_str(), "r");
  if (!f) return std::unexpected("cannot open certificate " + cert + ": " + std::strerror(errno));
  c->leaf_ = PEM_read_X509(f, nullptr, nullptr, nullptr);
  if (c->leaf_) {
    c->chain_ = sk_X509_new_null();
    while (X509* x = PEM_read_X509(f, nullptr, nullptr, nullptr))
      sk_X509_push(c->chain_, x);
  }
  std::fclose(f);
  ERR_clear_error();  // the chain loop ends on "no start line"
  if (!c->leaf_) return std::unexpected("no certificate in " + cert);
  f = std::fopen(key.c_str(), "r");
  if (!f) return std::unexpected("cannot open key " + key + ": " + std::strerror(errno));
  c->key_ = PEM_read_PrivateKey(f, nullptr, nullptr, nullptr);
  std::fclose(f);
  if (!c->key_) return std::unexpected("cannot load key " + key + ": " + ssl_errors());
  if (X509_check_private_key(c->leaf_, c->key_) != 1) {
    ERR_clear_error();
    return std::unexpected("key " + key + " does not match certificate " + cert);
  }
  return c;
}

TlsClientCertificate::~TlsClientCertificate() {
  if (leaf_) X509_free(leaf_);
  if (chain_) sk_X509_pop_free(chain_, X509_free);
  if (key_) EVP_PKEY_free(key_);
}

bool TlsClientCertificate::apply(SSL* ssl) const {
  // SSL_use_cert_and_key takes its own references to everything it is given.
  return SSL_use_cert_and_key(ssl, leaf_, key_, chain_, 1) == 1;
}

TlsClientTransport::TlsClientTransport(asio::ip::tcp::socket socket,
                                       std::shared_ptr<TlsClientContext> ctx,
                                       std::shared_ptr<const TlsClientCertificate> cert,
                                       const std::string& server_name)
    : socket_(std::move(socket)), ctx_(std::move(ctx)), cert_(std::move(cert)) {
  std::error_code ec;
  socket_.non_blocking(true, ec);
  socket_.set_option(asio::ip::tcp::no_delay(true), ec);
  auto ep = socket_.remote_endpoint(ec);
  if (!ec) peer_ = endpoint_string(ep);
  ssl_ = SSL_new(ctx_->get());
  if (!ssl_) return;
  SSL_set_fd(ssl_, static_cast<int>(socket_.native_handle()));
  SSL_set_connect_state(ssl_);
  if (!server_name.empty()) {
    SSL_set_tlsext_host_name(ssl_, server_name.c_str());
    SSL_set1_host(ssl_, server_name.c_str());
  }
  if (cert_ && !cert_->apply(ssl_)) {
    error_ = "cannot use the client certificate: " + ssl_errors();
    SSL_free(ssl_);
    ssl_ = nullptr;
  }
}

TlsClientTransport::~TlsClientTransport() {
  if (ssl_) SSL_free(ssl_);
}

std::error_code TlsClientTransport::map_error(int ret, Direction& blocked) {
  switch (SSL_get_error(ssl_, ret)) {
    case SSL_ERROR_WANT_READ:
      blocked = Direction::read;
      return asio::error::would_block;
    case SSL_ERROR_WANT_WRITE:
      blocked = Direction::write;
      return asio::error::would_block;
    case SSL_ERROR_ZERO_RETURN:
      return asio::error::eof;
    case SSL_ERROR_SYSCALL:
      ERR_clear_error();
      return errno == 0 ? std::error_code(asio::error::eof)
                        : std::error_code(errno, std::system_category());
    default:
      error_ = ssl_errors();
      return asio::error::connection_aborted;
  }
}

asio::awaitable<std::error_code> TlsClientTransport::handshake() {
  if (!ssl_) {
    if (error_.empty()) error_ = "SSL_new failed";
    co_return asio::error::no_memory;
  }
  for (;;) {
    ERR_clear_error();
    int r = SSL_do_handshake(ssl_);
    if (r == 1) break;
    Direction d = Direction::read;
    std::error_code ec = map_error(r, d);
    if (ec != asio::error::would_block) {
      if (SSL_get_verify_result(ssl_) != X509_V_OK) {
        error_ = std::string("server certificate: ") +
                 X509_verify_cert_error_string(SSL_get_verify_result(ssl_));
      }
      if (error_.empty()) error_ = ec.message();
      co_return ec;
    }
    if (auto wec = co_await wait(d); wec) co_return wec;
  }
  const unsigned char* alpn = nullptr;
  unsigned int alpn_len = 0;
  SSL_get0_alpn_selected(ssl_, &alpn, &alpn_len);
  if (alpn_len != 2 || std::memcmp(alpn, "h2", 2) != 0) {
    error_ = "server did not negotiate ALPN h2";
    co_return asio::error::connection_refused;
  }
  co_return std::error_code();
}

std::size_t TlsClientTransport::read_some(std::span<std::uint8_t> buf, std::error_code& ec) {
  ERR_clear_error();
  int n = SSL_read(ssl_, buf.data(), static_cast<int>(std::min<std::size_t>(buf.size(), 1 << 30)));
  if (n > 0) {
    ec.clear();
    return static_cast<std::size_t>(n);
  }
  ec = map_error(n, read_blocked_);
  return 0;
}

std::size_t TlsClientTransport::write_some(std::span<const std::uint8_t> buf, std::error_code& ec) {
  ERR_clear_error();
  int n = SSL_write(ssl_, buf.data(), static_cast<int>(std::min<std::size_t>(buf.size(), 1 << 30)));
  if (n > 0) {
    ec.clear();
    return static_cast<std::size_t>(n);
  }
  ec = map_error(n, write_blocked_);
  return 0;
}

asio::awaitable<std::error_code> TlsClientTransport::wait(Direction d) {
  auto [ec] = co_await socket_.async_wait(
      d == Direction::read ? asio::ip::tcp::socket::wait_read : asio::ip::tcp::socket::wait_write,
      asio::experimental::as_tuple(asio::use_awaitable));
  if (!ec && !socket_.is_open()) ec = asio::error::operation_aborted;
  co_return ec;
}

void TlsClientTransport::close() noexcept {
  if (!socket_.is_open()) return;
  if (ssl_ && SSL_is_init_finished(ssl_)) {
    ERR_clear_error();
    SSL_shutdown(ssl_);  // best effort close_notify; never waits
  }
  std::error_code ec;
  socket_.shutdown(asio::ip::tcp::socket::shutdown_both, ec);
  socket_.close(ec);
}

asio::awaitable<std::expected<asio::ip::tcp::socket, std::error_code>> dial(
    asio::any_io_executor ex, asio::ip::tcp::endpoint to, std::optional<asio::ip::address> from) {
  asio::ip::tcp::socket s(ex);
  std::error_code ec;
  s.open(to.protocol(), ec);
  if (ec) co_return std::unexpected(ec);
  if (from) {
#ifdef IP_BIND_ADDRESS_NO_PORT
    int one = 1;
    ::setsockopt(s.native_handle(), IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
#endif
    s.bind(asio::ip::tcp::endpoint(*from, 0), ec);
    if (ec) co_return std::unexpected(ec);
  }
  auto [cec] = co_await s.async_connect(to, asio::experimental::as_tuple(asio::use_awaitable));
  if (cec) co_return std::unexpected(cec);
  co_return s;
}

}  // namespace dispatchd::net
