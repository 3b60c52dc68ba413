#include "dispatchd/admin/http_server.hpp"

#include <algorithm>
#include <array>
#include <asio/co_spawn.hpp>
#include <asio/experimental/as_tuple.hpp>
#include <asio/experimental/awaitable_operators.hpp>
#include <asio/use_awaitable.hpp>
#include <asio/write.hpp>
#include <exception>

#include "dispatchd/log.hpp"

namespace dispatchd::admin {

namespace {

using asio::experimental::as_tuple;
using Clock = std::chrono::steady_clock;

// Responses to pipelined requests are written together, up to about this much at a time.
constexpr std::size_t kMaxBatchBytes = 64 * 1024;
// After a response that ends the connection, input is discarded for at most this long and this
// much before closing (see serve()).
constexpr std::chrono::seconds kMaxLinger{2};
constexpr std::size_t kMaxLingerBytes = 1024 * 1024;

}  // namespace

HttpServer::Connection::Connection(asio::ip::tcp::socket s)
    : socket(std::move(s)), timer(socket.get_executor()) {}

HttpServer::HttpServer(asio::io_context& io, HttpOptions opt)
    : io_(io), opt_(std::move(opt)), acceptor_(io) {
  if (opt_.max_request_bytes < 64) opt_.max_request_bytes = 64;
}

HttpServer::~HttpServer() = default;

void HttpServer::route(std::string path, Handler h) {
  routes_[std::move(path)] = std::move(h);
}

std::expected<asio::ip::tcp::endpoint, std::string> HttpServer::listen() {
  auto ep = net::resolve_listen_address(opt_.listen);
  if (!ep) return std::unexpected("admin listen " + opt_.listen + ": " + ep.error());
  auto bound = acceptor_.listen(*ep, 128);
  if (!bound) return std::unexpected("admin: " + bound.error());
  return bound;
}

asio::awaitable<void> HttpServer::run() {
  co_await acceptor_.run([this](asio::ip::tcp::socket s) { on_accept(std::move(s)); });
  stopping_ = true;
  while (!connections_.empty())
    co_await drained_.async_park();
}

void HttpServer::stop() {
  stopping_ = true;
  acceptor_.close();
  // Pending reads and writes complete with an error; each connection's coroutine then ends
  // and removes itself.
  for (auto& c : connections_) {
    std::error_code ec;
    c.socket.close(ec);
  }
}

void HttpServer::on_accept(asio::ip::tcp::socket socket) {
  std::error_code ec;
  if (stopping_) {
    socket.close(ec);
    return;
  }
  if (connections_.size() >= opt_.max_connections) {
    // Refusing is the whole defence; log the first refusal of a burst, not every one.
    ++rejected_;
    if (!cap_warned_) {
      log::warn("admin: {} connections open (the maximum); closing new ones", connections_.size());
      cap_warned_ = true;
    }
    socket.close(ec);
    return;
  }
  if (connections_.size() < opt_.max_connections / 2) cap_warned_ = false;
  socket.set_option(asio::ip::tcp::no_delay(true), ec);
  connections_.emplace_front(std::move(socket));
  asio::co_spawn(io_, serve(connections_.begin()), [](std::exception_ptr e) {
    // serve() catches what it can; this is only reached for exceptions it could not.
    if (!e) return;
    try {
      std::rethrow_exception(e);
    } catch (const std::exception& x) {
      log::error("admin: connection coroutine failed: {}", x.what());
    } catch (...) {
      log::error("admin: connection coroutine failed");
    }
  });
}

asio::awaitable<void> HttpServer::serve(ConnectionIt it) {
  using namespace asio::experimental::awaitable_operators;
  Connection& c = *it;
  c.deadline = Clock::now() + opt_.read_timeout;
  bool send_408 = false;
  try {
    // The session and its watchdog live and die together: whichever ends first cancels the
    // other, and both have finished when this returns.
    co_await (session(c) || watchdog(c));
    send_408 = c.timed_out && c.partial_request;
    if (c.linger && !c.timed_out && !stopping_) {
      // Closing a socket with unread input makes the kernel send RST, which can destroy the
      // response before the peer reads it (e.g. after a 413, the body still in flight). So
      // half-close, then discard input until the peer closes too, briefly.
      std::error_code ec;
      c.socket.shutdown(asio::ip::tcp::socket::shutdown_send, ec);
      c.deadline = Clock::now() + std::min<Clock::duration>(opt_.read_timeout, kMaxLinger);
      if (!ec) co_await (drain(c) || watchdog(c));
    }
  } catch (const std::exception& e) {
    log::warn("admin: connection ended by an error: {}", e.what());
  }
  std::error_code ec;
  if (send_408) {
    // Best effort, without waiting: the peer is slow, not necessarily gone.
    static constexpr std::string_view kTimeout =
        "HTTP/1.1 408 Request Timeout\r\nContent-Type: text/plain; charset=utf-8\r\n"
        "Content-Length: 16\r\nConnection: close\r\n\r\nrequest timeout\n";
    c.socket.non_blocking(true, ec);
    c.socket.write_some(asio::buffer(kTimeout), ec);
  }
  c.socket.close(ec);
  connections_.erase(it);
  if (connections_.empty()) drained_.notify();
}

asio::awaitable<void> HttpServer::watchdog(Connection& c) {
  // The session moves c.deadline; the timer catches up with it when it fires early.
  for (;;) {
    if (c.deadline <= Clock::now()) {
      c.timed_out = true;
      co_return;
    }
    c.timer.expires_at(c.deadline);
    auto [ec] = co_await c.timer.async_wait(as_tuple(asio::use_awaitable));
    if (ec) co_return;  // cancelled: the session ended first
  }
}

asio::awaitable<void> HttpServer::session(Connection& c) {
  std::string in;
  std::string out;
  std::array<char, 4096> chunk;
  for (;;) {
    // Answer every complete request already buffered, in order (pipelining), in one write.
    bool close = false;
    std::size_t consumed = 0;
    std::string date;
    out.clear();
    while (!close && out.size() < kMaxBatchBytes) {
      auto p = parse_head(std::string_view(in).substr(consumed), opt_.max_request_bytes);
      if (p.state == ParsedHead::State::incomplete) break;
      if (date.empty()) date = http_date();
      if (p.state == ParsedHead::State::error) {
        log::debug("admin: {} for a malformed request", p.error_status);
        close = true;  // the framing of what follows cannot be trusted
        append_response(out, error_response(p.error_status, p.error_body), date, false, true,
                        false);
        break;
      }
      consumed += p.consumed;
      close = !p.keep_alive;
      bool head_only = p.req.method == "HEAD";
      append_response(out, dispatch(p.req), date, head_only, close,
                      !close && p.req.version_minor == 0);
    }
    in.erase(0, consumed);
    if (!out.empty()) {
      c.deadline = Clock::now() + opt_.read_timeout;
      auto [ec, n] =
          co_await asio::async_write(c.socket, asio::buffer(out), as_tuple(asio::use_awaitable));
      if (ec) co_return;
      if (close) {
        c.linger = true;
        co_return;
      }
      c.deadline = Clock::now() + opt_.read_timeout;  // the next request's budget starts now
      continue;
    }
    c.partial_request = in.find_first_not_of("\r\n") != std::string::npos;
    auto [ec, n] =
        co_await c.socket.async_read_some(asio::buffer(chunk), as_tuple(asio::use_awaitable));
    if (ec) co_return;  // EOF, reset, stop(), or cancelled by the watchdog
    in.append(chunk.data(), n);
  }
}

asio::awaitable<void> HttpServer::drain(Connection& c) {
  std::array<char, 4096> sink;
  for (std::size_t total = 0; total < kMaxLingerBytes;) {
    auto [ec, n] =
        co_await c.socket.async_read_some(asio::buffer(sink), as_tuple(asio::use_awaitable));
    if (ec) co_return;  // the peer closed (what we wait for), reset, or the watchdog fired
    total += n;
  }
}

Response HttpServer::dispatch(const Request& req) {
  auto it = routes_.find(req.path);
  if (it == routes_.end()) return error_response(404, "not found\n");
  if (req.method != "GET" && req.method != "HEAD") {
    return error_response(405, "method not allowed\n");
  }
  try {
    return it->second(req);
  } catch (const std::exception& e) {
    log::error("admin: handler for {} failed: {}", req.path, e.what());
  } catch (...) {
    log::error("admin: handler for {} failed with a non-standard exception", req.path);
  }
  return error_response(500, "internal server error\n");
}

}  // namespace dispatchd::admin
