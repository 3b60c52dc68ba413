#pragma once
// TlsStream: what the server's and the client's TLS transports share. OpenSSL is driven directly
// on the non-blocking socket (SSL_set_fd; no BIO pairs and no buffers of our own): read_some and
// write_some are one SSL_read / SSL_write each, and a WANT_READ / WANT_WRITE says which readiness
// to wait for before trying again, whichever direction the caller was going. Once records_ is set
// (a server's TLS 1.3 connection after its handshake) the SSL object is gone and read_some,
// write_some and close go to Tls13Records instead.

#include <openssl/ssl.h>

#include <asio/awaitable.hpp>
#include <asio/ip/tcp.hpp>
#include <memory>
#include <string>

#include "dispatchd/net/transport.hpp"

namespace dispatchd::net {

// Every error OpenSSL has queued, as one line ("unknown OpenSSL error" if none).
std::string openssl_errors();

class Tls13Records;
class HandshakePool;
struct HandshakeStep;

class TlsStream : public Transport {
 public:
  ~TlsStream() override;
  TlsStream(const TlsStream&) = delete;
  TlsStream& operator=(const TlsStream&) = delete;

  std::size_t read_some(std::span<std::uint8_t> buf, std::error_code& ec) override;
  std::size_t write_some(std::span<const std::uint8_t> buf, std::error_code& ec) override;
  Direction read_blocked_on() const noexcept override { return read_blocked_; }
  Direction write_blocked_on() const noexcept override { return write_blocked_; }
  asio::awaitable<std::error_code> wait(Direction d) override;
  // Best-effort close_notify (never waits), then the socket is closed. While a handshake step
  // runs on a HandshakePool thread, the close waits for the step to return (the pool thread is
  // using the socket) and the handshake then ends with operation_aborted.
  void close() noexcept override;
  bool is_open() const noexcept override { return socket_.is_open(); }
  const std::string& peer() const noexcept override { return peer_; }
  bool has_buffered_input() const noexcept override;
  // The peer has closed or reset the connection (POLLRDHUP, POLLHUP or POLLERR); never waits.
  // What it sent before closing may still be unread.
  bool peer_closed() const noexcept;
  // Why the handshake failed, or later why a read or write failed (OpenSSL's account, such as
  // the peer's alert); "" if nothing failed.
  const std::string& handshake_error() const noexcept { return error_; }
  // True once a TLS 1.3 connection's SSL object has been freed and its records are protected by
  // Tls13Records (server side; see TlsTransport::handshake).
  bool own_records() const noexcept { return records_ != nullptr; }
  const Tls13Records* records() const noexcept { return records_.get(); }

 protected:
  // Makes the socket non-blocking with TCP_NODELAY and an SSL object of `ctx` on it (ssl_ stays
  // null if SSL_new fails; the handshake then reports it).
  TlsStream(asio::ip::tcp::socket socket, SSL_CTX* ctx);

  // Runs SSL_do_handshake to its end, waiting as OpenSSL asks; then requires ALPN "h2". With a
  // pool, each SSL_do_handshake step runs on one of its threads. On failure handshake_error()
  // says why, unless the caller already set error_.
  asio::awaitable<std::error_code> run_handshake(const char* alpn_refused,
                                                 HandshakePool* pool = nullptr);

  std::error_code map_error(int ret, Direction& blocked);
  std::error_code map_step(const HandshakeStep& step, Direction& blocked);

  asio::ip::tcp::socket socket_;
  SSL* ssl_ = nullptr;
  // Set, and ssl_ freed, when the record layer is ours.
  std::unique_ptr<Tls13Records> records_;
  std::string peer_;
  std::string error_;

 private:
  void close_now() noexcept;

  Direction read_blocked_ = Direction::read;
  Direction write_blocked_ = Direction::write;
  bool stepping_ = false;        // a handshake step runs on a pool thread
  bool close_deferred_ = false;  // close() came during it
};

}  // namespace dispatchd::net
