#pragma once
// TLS without asio::ssl::stream: the SSL object is driven directly on the non-blocking socket,
// with SSL_MODE_RELEASE_BUFFERS, so an idle connection holds no record buffers (asio's stream
// keeps ~100 KB of buffers per connection; see docs/architecture.md, "Memory per agent").

#include <openssl/ssl.h>

#include <asio/awaitable.hpp>
#include <asio/ip/tcp.hpp>
#include <chrono>
#include <expected>
#include <memory>
#include <string>

#include "dispatchd/net/identity.hpp"
#include "dispatchd/net/tls_stream.hpp"

namespace dispatchd::net {

struct TlsFiles {
  std::string cert;  // PEM chain, leaf first
  std::string key;   // PEM private key
  std::string ca;    // PEM bundle trusted for client certificates
  // Keep OpenSSL's record layer (and its SSL object) for every connection. Off: TLS 1.3
  // connections hand their traffic secrets to Tls13Records after the handshake and the SSL
  // object is freed (~20 KB less per connection); TLS 1.2 keeps OpenSSL either way.
  bool openssl_records = false;
};

// An SSL_CTX configured the SwarmKit way (docs/behaviour.md §9.1): TLS 1.2 and 1.3, ECDHE with
// AEAD ciphers only, ALPN "h2" required, client certificates requested and verified when given
// but not required, no session cache or tickets (memory per agent).
class TlsContext {
 public:
  static std::expected<std::shared_ptr<TlsContext>, std::string> load(const TlsFiles& files);
  ~TlsContext();
  SSL_CTX* get() const noexcept { return ctx_; }
  // Whether TLS 1.3 connections get our own record layer (TlsFiles::openssl_records off).
  bool own_records() const noexcept { return own_records_; }
  // The server certificate's subject (CN and first O).
  const std::string& common_name() const noexcept { return cn_; }
  const std::string& organization() const noexcept { return org_; }

 private:
  TlsContext() = default;
  SSL_CTX* ctx_ = nullptr;
  bool own_records_ = false;
  std::string cn_, org_;
};

class TlsTransport final : public TlsStream {
 public:
  TlsTransport(asio::ip::tcp::socket socket, std::shared_ptr<TlsContext> ctx);

  ~TlsTransport() override;

  // Runs the server handshake, its cryptography on `pool`'s threads when given. On success
  // identity() describes the peer. A TLS 1.3 connection then moves to our own record layer
  // (own_records()) unless the context keeps OpenSSL's.
  asio::awaitable<std::error_code> handshake(HandshakePool* pool = nullptr);

  const PeerIdentity* identity() const noexcept override { return &identity_; }

 private:
  friend class TlsContext;
  struct Secrets;
  // SSL_CTX_set_keylog_callback: keeps the two application traffic secrets.
  static void on_keylog(const SSL* ssl, const char* line);
  void extract_identity();
  // After a TLS 1.3 handshake: Tls13Records from the secrets, then SSL_free. False (OpenSSL
  // keeps the connection) when that is not safe.
  bool hand_off();

  std::shared_ptr<TlsContext> ctx_;
  std::unique_ptr<Secrets> secrets_;  // only during the handshake
  PeerIdentity identity_;
};

}  // namespace dispatchd::net
