#pragma once
// Transport: a connected byte stream driven without blocking. Readers and writers call
// read_some/write_some until they get would_block, then wait for readiness. No buffer is held
// between calls, so an idle connection costs only its socket (and, with TLS, the SSL object or,
// for TLS 1.3, Tls13Records' few hundred bytes).

#include <asio/awaitable.hpp>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <system_error>

#include "dispatchd/net/identity.hpp"

namespace dispatchd::net {

class Transport {
 public:
  enum class Direction { read, write };

  virtual ~Transport() = default;

  // Non-blocking. ec == asio::error::would_block: wait(blocked_on()) and try again;
  // ec == asio::error::eof: the peer closed the connection.
  virtual std::size_t read_some(std::span<std::uint8_t> buf, std::error_code& ec) = 0;
  virtual std::size_t write_some(std::span<const std::uint8_t> buf, std::error_code& ec) = 0;
  // The readiness a would_block from the last read_some/write_some waits for. A TLS read may
  // need the socket to be writable, and a TLS write readable.
  virtual Direction read_blocked_on() const noexcept { return Direction::read; }
  virtual Direction write_blocked_on() const noexcept { return Direction::write; }
  // Completes when the socket is ready in that direction, or with operation_aborted after
  // close(). One wait per direction may be outstanding.
  virtual asio::awaitable<std::error_code> wait(Direction d) = 0;
  // Closes the socket; outstanding waits complete with operation_aborted.
  virtual void close() noexcept = 0;
  virtual bool is_open() const noexcept = 0;
  // "ip:port" of the peer.
  virtual const std::string& peer() const noexcept = 0;
  // Bytes already received and decoded but not yet returned by read_some (TLS records).
  virtual bool has_buffered_input() const noexcept { return false; }
  // What the transport proved about the peer; nullptr for plaintext.
  virtual const PeerIdentity* identity() const noexcept { return nullptr; }
};

// Writes all of `bytes`, waiting for readiness whenever the transport would block. `written`
// grows with every write, so a stall check sees progress in the middle of a large batch. Returns
// what stopped it short: a write error, or the wait's (operation_aborted after close()).
asio::awaitable<std::error_code> write_all(Transport& t, std::span<const std::uint8_t> bytes,
                                           std::uint64_t& written);

}  // namespace dispatchd::net
