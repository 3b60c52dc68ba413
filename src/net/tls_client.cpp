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

constexpr unsigned char kAlpnH2[] = {2, 'h', '2'};

}  // namespace

std::expected<std::shared_ptr<TlsClientContext>, std::string> TlsClientContext::load(
    const std::string& ca) {
  std::shared_ptr<TlsClientContext> t(new TlsClientContext());
  SSL_CTX* ctx = SSL_CTX_new(TLS_client_method());
  if (!ctx) return std::unexpected("SSL_CTX_new: " + openssl_errors());
  t->ctx_ = ctx;
  SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
  SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET | SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION);
  SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
  SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS | SSL_MODE_ENABLE_PARTIAL_WRITE |
                            SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
  if (SSL_CTX_load_verify_locations(ctx, ca.c_str(), nullptr) != 1) {
    return std::unexpected("cannot load CA bundle " + ca + ": " + openssl_errors());
  }
  SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, nullptr);
  if (SSL_CTX_set_alpn_protos(ctx, kAlpnH2, sizeof kAlpnH2) != 0) {
    return std::unexpected("ALPN: " + openssl_errors());
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
  if (!c->key_) return std::unexpected("cannot load key " + key + ": " + openssl_errors());
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
    : TlsStream(std::move(socket), ctx->get()), ctx_(std::move(ctx)), cert_(std::move(cert)) {
  if (!ssl_) return;
  SSL_set_connect_state(ssl_);
  if (!server_name.empty()) {
    SSL_set_tlsext_host_name(ssl_, server_name.c_str());
    SSL_set1_host(ssl_, server_name.c_str());
  }
  if (cert_ && !cert_->apply(ssl_)) {
    error_ = "cannot use the client certificate: " + openssl_errors();
    SSL_free(ssl_);
    ssl_ = nullptr;
  }
}

asio::awaitable<std::error_code> TlsClientTransport::handshake() {
  auto ec = co_await run_handshake("server did not negotiate ALPN h2");
  if (ec && ssl_ && SSL_get_verify_result(ssl_) != X509_V_OK) {
    error_ = std::string("server certificate: ") +
             X509_verify_cert_error_string(SSL_get_verify_result(ssl_));
  }
  co_return ec;
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

asio::awaitable<std::expected<std::unique_ptr<Transport>, std::string>> connect(
    asio::any_io_executor ex, const std::string& host, const std::string& port,
    std::shared_ptr<TlsClientContext> tls, std::shared_ptr<const TlsClientCertificate> cert,
    const std::string& server_name) {
  asio::ip::tcp::resolver resolver(ex);
  auto [rec, results] = co_await resolver.async_resolve(
      host, port, asio::experimental::as_tuple(asio::use_awaitable));
  if (rec) co_return std::unexpected("resolve: " + rec.message());
  std::string last = "no address";
  for (const auto& r : results) {
    auto sock = co_await dial(ex, r.endpoint());
    if (!sock) {
      last = sock.error().message();
      continue;
    }
    sock->set_option(asio::ip::tcp::no_delay(true));
    if (!tls) co_return std::make_unique<TcpTransport>(std::move(*sock));
    auto t = std::make_unique<TlsClientTransport>(std::move(*sock), tls, cert, server_name);
    if (auto ec = co_await t->handshake(); ec) {
      co_return std::unexpected("TLS handshake: " + t->handshake_error());
    }
    co_return std::unique_ptr<Transport>(std::move(t));
  }
  co_return std::unexpected(last);
}

}  // namespace dispatchd::net
