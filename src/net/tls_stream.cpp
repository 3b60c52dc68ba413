#include "dispatchd/net/tls_stream.hpp"

#include <openssl/err.h>
#include <poll.h>

#include <algorithm>
#include <asio/experimental/as_tuple.hpp>
#include <asio/use_awaitable.hpp>
#include <cerrno>
#include <cstring>

#include "dispatchd/log.hpp"
#include "dispatchd/net/handshake_pool.hpp"
#include "dispatchd/net/tcp_transport.hpp"
#include "dispatchd/net/tls13_records.hpp"

namespace dispatchd::net {

std::string openssl_errors() {
  std::string out;
  while (unsigned long e = ERR_get_error()) {
    char buf[256];
    ERR_error_string_n(e, buf, sizeof buf);
    if (!out.empty()) out += "; ";
    out += buf;
  }
  return out.empty() ? "unknown OpenSSL error" : out;
}

TlsStream::TlsStream(asio::ip::tcp::socket socket, SSL_CTX* ctx) : socket_(std::move(socket)) {
  std::error_code ec;
  socket_.non_blocking(true, ec);
  socket_.set_option(asio::ip::tcp::no_delay(true), ec);
  auto ep = socket_.remote_endpoint(ec);
  if (!ec) peer_ = endpoint_string(ep);
  ssl_ = SSL_new(ctx);
  if (ssl_) SSL_set_fd(ssl_, static_cast<int>(socket_.native_handle()));
}

TlsStream::~TlsStream() {
  if (ssl_) SSL_free(ssl_);
}

std::error_code TlsStream::map_error(int ret, Direction& blocked) {
  return map_step(HandshakeStep::capture(ssl_, ret), blocked);
}

std::error_code TlsStream::map_step(const HandshakeStep& step, Direction& blocked) {
  switch (step.ssl_error) {
    case SSL_ERROR_WANT_READ:
      blocked = Direction::read;
      return asio::error::would_block;
    case SSL_ERROR_WANT_WRITE:
      blocked = Direction::write;
      return asio::error::would_block;
    case SSL_ERROR_ZERO_RETURN:
      return asio::error::eof;
    case SSL_ERROR_SYSCALL:
      return step.sys_errno == 0 ? std::error_code(asio::error::eof)
                                 : std::error_code(step.sys_errno, std::system_category());
    default:
      error_ = step.errors;
      return asio::error::connection_aborted;
  }
}

asio::awaitable<std::error_code> TlsStream::run_handshake(const char* alpn_refused,
                                                          HandshakePool* pool) {
  if (!ssl_) {
    if (error_.empty()) error_ = "SSL_new failed";
    co_return asio::error::no_memory;
  }
  for (;;) {
    if (!socket_.is_open()) co_return asio::error::operation_aborted;
    HandshakeStep step;
    if (pool) {
      stepping_ = true;
      step = co_await pool->step(ssl_);
      stepping_ = false;
      if (close_deferred_) {
        close_now();
        co_return asio::error::operation_aborted;
      }
    } else {
      step = HandshakeStep::run(ssl_);
    }
    if (step.ret == 1) break;
    Direction d = Direction::read;
    std::error_code ec = map_step(step, d);
    if (ec != asio::error::would_block) {
      if (error_.empty()) error_ = ec.message();
      co_return ec;
    }
    if (auto wec = co_await wait(d); wec) co_return wec;
  }
  const unsigned char* alpn = nullptr;
  unsigned int alpn_len = 0;
  SSL_get0_alpn_selected(ssl_, &alpn, &alpn_len);
  if (alpn_len != 2 || std::memcmp(alpn, "h2", 2) != 0) {
    error_ = alpn_refused;
    co_return asio::error::connection_refused;
  }
  co_return std::error_code();
}

bool TlsStream::has_buffered_input() const noexcept {
  if (records_) return records_->has_buffered_input();
  return ssl_ && SSL_pending(ssl_) > 0;
}

bool TlsStream::peer_closed() const noexcept {
  if (!socket_.is_open()) return true;
  pollfd p{.fd = const_cast<asio::ip::tcp::socket&>(socket_).native_handle(),
           .events = POLLRDHUP,
           .revents = 0};
  return ::poll(&p, 1, 0) == 1 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR)) != 0;
}

std::size_t TlsStream::read_some(std::span<std::uint8_t> buf, std::error_code& ec) {
  if (records_) {
    std::size_t n =
        records_->read(static_cast<int>(socket_.native_handle()), buf, ec, read_blocked_);
    if (ec && ec != asio::error::would_block && ec != asio::error::eof && records_->failure()) {
      log::debug("{}: TLS: {}", peer_, records_->failure());
    }
    return n;
  }
  ERR_clear_error();
  int n = SSL_read(ssl_, buf.data(), static_cast<int>(std::min<std::size_t>(buf.size(), 1 << 30)));
  if (n > 0) {
    ec.clear();
    return static_cast<std::size_t>(n);
  }
  ec = map_error(n, read_blocked_);
  return 0;
}

std::size_t TlsStream::write_some(std::span<const std::uint8_t> buf, std::error_code& ec) {
  if (records_) {
    return records_->write(static_cast<int>(socket_.native_handle()), buf, ec, write_blocked_);
  }
  ERR_clear_error();
  int n = SSL_write(ssl_, buf.data(), static_cast<int>(std::min<std::size_t>(buf.size(), 1 << 30)));
  if (n > 0) {
    ec.clear();
    return static_cast<std::size_t>(n);
  }
  ec = map_error(n, write_blocked_);
  return 0;
}

asio::awaitable<std::error_code> TlsStream::wait(Direction d) {
  auto [ec] = co_await socket_.async_wait(
      d == Direction::read ? asio::ip::tcp::socket::wait_read : asio::ip::tcp::socket::wait_write,
      asio::experimental::as_tuple(asio::use_awaitable));
  if (!ec && !socket_.is_open()) ec = asio::error::operation_aborted;
  co_return ec;
}

void TlsStream::close() noexcept {
  if (stepping_) {
    close_deferred_ = true;
    return;
  }
  close_now();
}

void TlsStream::close_now() noexcept {
  if (!socket_.is_open()) return;
  if (records_) {
    records_->close_notify(static_cast<int>(socket_.native_handle()));
  } else if (ssl_ && SSL_is_init_finished(ssl_)) {
    ERR_clear_error();
    SSL_shutdown(ssl_);  // best effort close_notify; never waits
  }
  std::error_code ec;
  socket_.shutdown(asio::ip::tcp::socket::shutdown_both, ec);
  socket_.close(ec);
}

}  // namespace dispatchd::net
