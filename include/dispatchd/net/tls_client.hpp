#pragma once
// TLS client side, driven directly on the non-blocking socket like the server's TlsTransport
// (SSL_MODE_RELEASE_BUFFERS: an idle connection holds no record buffers). One TlsClientContext
// (trusted CA, ALPN "h2", TLS 1.2+) serves any number of connections; each connection may present
// its own client certificate, loaded once into a TlsClientCertificate and shared by reference.

#include <openssl/ssl.h>

#include <asio/awaitable.hpp>
#include <asio/ip/tcp.hpp>
#include <expected>
#include <memory>
#include <optional>
#include <string>

#include "dispatchd/net/tls_stream.hpp"

namespace dispatchd::net {

class TlsClientContext {
 public:
  // `ca`: PEM bundle the server certificate must chain to.
  static std::expected<std::shared_ptr<TlsClientContext>, std::string> load(const std::string& ca);
  TlsClientContext(const TlsClientContext&) = delete;
  TlsClientContext& operator=(const TlsClientContext&) = delete;
  ~TlsClientContext();
  SSL_CTX* get() const noexcept { return ctx_; }

 private:
  TlsClientContext() = default;
  SSL_CTX* ctx_ = nullptr;
};

// A client certificate chain (leaf first) and its private key.
class TlsClientCertificate {
 public:
  static std::expected<std::shared_ptr<TlsClientCertificate>, std::string> load(
      const std::string& cert, const std::string& key);
  TlsClientCertificate(const TlsClientCertificate&) = delete;
  TlsClientCertificate& operator=(const TlsClientCertificate&) = delete;
  ~TlsClientCertificate();
  // Installs the certificate, chain and key on `ssl`; false on failure.
  bool apply(SSL* ssl) const;

 private:
  TlsClientCertificate() = default;
  X509* leaf_ = nullptr;
  STACK_OF(X509) * chain_ = nullptr;
  EVP_PKEY* key_ = nullptr;
};

class TlsClientTransport final : public TlsStream {
 public:
  // `server_name`: sent as SNI and checked against the server certificate's names.
  TlsClientTransport(asio::ip::tcp::socket socket, std::shared_ptr<TlsClientContext> ctx,
                     std::shared_ptr<const TlsClientCertificate> cert,
                     const std::string& server_name);

  // Runs the client handshake; fails unless the server verified and ALPN chose "h2".
  asio::awaitable<std::error_code> handshake();

 private:
  std::shared_ptr<TlsClientContext> ctx_;
  std::shared_ptr<const TlsClientCertificate> cert_;
};

// Connects a TCP socket to `to`, from `from` when given (port chosen at connect time, so many
// connections can share one source address: IP_BIND_ADDRESS_NO_PORT).
asio::awaitable<std::expected<asio::ip::tcp::socket, std::error_code>> dial(
    asio::any_io_executor ex, asio::ip::tcp::endpoint to,
    std::optional<asio::ip::address> from = std::nullopt);

// A client transport to HOST:PORT: resolves `host`, dials its addresses in turn (TCP_NODELAY)
// and, with `tls`, runs the client handshake verifying `server_name`. The error says what
// failed: "resolve: …", the last connect error, or "TLS handshake: …". Bounded by the caller
// (cancel it with a timer).
asio::awaitable<std::expected<std::unique_ptr<Transport>, std::string>> connect(
    asio::any_io_executor ex, const std::string& host, const std::string& port,
    std::shared_ptr<TlsClientContext> tls, std::shared_ptr<const TlsClientCertificate> cert,
    const std::string& server_name);

}  // namespace dispatchd::net
