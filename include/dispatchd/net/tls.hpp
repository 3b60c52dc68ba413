#pragma once
// TLS without asio::ssl::stream: the SSL object is driven directly on the non-blocking socket,
// with SSL_MODE_RELEASE_BUFFERS, so an idle connection holds no record buffers (asio's stream
// keeps ~100 KB of buffers per connection; see DESIGN.md "Memory per agent").

#include <openssl/ssl.h>

#include <asio/awaitable.hpp>
#include <asio/ip/tcp.hpp>
#include <chrono>
#include <expected>
#include <memory>
#include <string>

#include "dispatchd/net/identity.hpp"
#include "dispatchd/net/transport.hpp"

namespace dispatchd::net {

struct TlsFiles {
  std::string cert;  // PEM chain, leaf first
  std::string key;   // PEM private key
  std::string ca;    // PEM bundle trusted for client certificates
};

// An SSL_CTX configured the SwarmKit way (spec §9.1): TLS 1.2 and 1.3, ECDHE with AEAD ciphers
// only, ALPN "h2" required, client certificates requested and verified when given but not
// required, no session cache or tickets (memory per agent).
class TlsContext {
 public:
  static std::expected<std::shared_ptr<TlsContext>, std::string> load(const TlsFiles& files);
  ~TlsContext();
  SSL_CTX* get() const noexcept { return ctx_; }
  // The server certificate's subject (CN and first O).
  const std::string& common_name() const noexcept { return cn_; }
  const std::string& organization() const noexcept { return org_; }

 private:
  TlsContext() = default;
  SSL_CTX* ctx_ = nullptr;
  std::string cn_, org_;
};

class TlsTransport final : public Transport {
 public:
  TlsTransport(asio::ip::tcp::socket socket, std::shared_ptr<TlsContext> ctx);
  ~TlsTransport() override;

  // Runs the server handshake. On success identity() describes the peer.
  asio::awaitable<std::error_code> handshake();

  std::size_t read_some(std::span<std::uint8_t> buf, std::error_code& ec) override;
  std::size_t write_some(std::span<const std::uint8_t> buf, std::error_code& ec) override;
  Direction read_blocked_on() const noexcept override { return read_blocked_; }
  Direction write_blocked_on() const noexcept override { return write_blocked_; }
  asio::awaitable<std::error_code> wait(Direction d) override;
  void close() noexcept override;
  bool is_open() const noexcept override { return socket_.is_open(); }
  const std::string& peer() const noexcept override { return peer_; }
  const PeerIdentity* identity() const noexcept override { return &identity_; }
  bool has_buffered_input() const noexcept override { return ssl_ && SSL_pending(ssl_) > 0; }
  const std::string& handshake_error() const noexcept { return error_; }

 private:
  std::error_code map_error(int ret, Direction& blocked);
  void extract_identity();

  asio::ip::tcp::socket socket_;
  std::shared_ptr<TlsContext> ctx_;
  SSL* ssl_ = nullptr;
  std::string peer_;
  PeerIdentity identity_;
  Direction read_blocked_ = Direction::read;
  Direction write_blocked_ = Direction::write;
  std::string error_;
};

}  // namespace dispatchd::net
