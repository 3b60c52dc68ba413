#include "dispatchd/admin/http_server.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <asio/co_spawn.hpp>
#include <asio/experimental/as_tuple.hpp>
#include <asio/experimental/awaitable_operators.hpp>
#include <asio/use_awaitable.hpp>
#include <asio/write.hpp>
#include <charconv>
#include <ctime>
#include <exception>
#include <iterator>

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

bool is_digit(char c) {
  return c >= '0' && c <= '9';
}

bool is_tchar(unsigned char c) {
  if ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')) return true;
  return std::string_view("!#$%&'*+-.^_`|~").find(static_cast<char>(c)) != std::string_view::npos;
}

bool is_token(std::string_view s) {
  return !s.empty() && std::all_of(s.begin(), s.end(),
                                   [](char c) { return is_tchar(static_cast<unsigned char>(c)); });
}

// Field values: visible ASCII, obs-text, space and tab. CR, LF, NUL and other controls are
// rejected (a bare CR is how request smuggling starts).
bool is_field_value(std::string_view s) {
  return std::all_of(s.begin(), s.end(), [](char ch) {
    auto c = static_cast<unsigned char>(ch);
    return c == '\t' || (c >= 0x20 && c != 0x7f);
  });
}

char ascii_lower(char c) {
  return c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : c;
}

bool iequals(std::string_view a, std::string_view b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
           return ascii_lower(x) == ascii_lower(y);
         });
}

std::string_view trim(std::string_view s) {
  auto b = s.find_first_not_of(" \t");
  if (b == std::string_view::npos) return {};
  auto e = s.find_last_not_of(" \t");
  return s.substr(b, e - b + 1);
}

// Calls f(element) for each non-empty element of a comma-separated list.
template <class F>
void for_each_list_element(std::string_view s, F&& f) {
  while (!s.empty()) {
    auto comma = s.find(',');
    auto elem = trim(s.substr(0, comma));
    if (!elem.empty()) f(elem);
    if (comma == std::string_view::npos) break;
    s.remove_prefix(comma + 1);
  }
}

struct ParsedHead {
  enum class State { incomplete, complete, error } state = State::incomplete;
  std::size_t consumed = 0;  // bytes of this request head, terminator included
  Request req;
  bool keep_alive = true;
  int error_status = 0;
  std::string_view error_body;
};

ParsedHead fail(int status, std::string_view body) {
  ParsedHead p;
  p.state = ParsedHead::State::error;
  p.error_status = status;
  p.error_body = body;
  return p;
}

// Splits "origin-form" or "absolute-form" into path and query.
bool parse_target(std::string_view target, Request& req) {
  if (target == "*") {
    req.path = "*";
    return true;
  }
  if (target.front() != '/') {
    // absolute-form: servers must accept it (RFC 9112 3.2.2); the authority is ignored.
    std::string_view rest;
    if (target.size() > 7 && iequals(target.substr(0, 7), "http://")) {
      rest = target.substr(7);
    } else if (target.size() > 8 && iequals(target.substr(0, 8), "https://")) {
      rest = target.substr(8);
    } else {
      return false;
    }
    auto slash = rest.find_first_of("/?");
    if (slash == 0) return false;  // no authority
    target = slash == std::string_view::npos ? std::string_view("/") : rest.substr(slash);
    if (target.front() == '?') {
      req.path = "/";
      req.query = target.substr(1);
      return true;
    }
  }
  if (target.find('#') != std::string_view::npos) return false;  // fragments are never sent
  auto q = target.find('?');
  req.path = target.substr(0, q);
  if (q != std::string_view::npos) req.query = target.substr(q + 1);
  return true;
}

// Parses one request head at the start of `buf`. Nothing is consumed until the whole head
// (request line, fields, empty line) is there; a head that does not fit in `max_bytes` is an
// error, so the caller never buffers more than that for one request.
ParsedHead parse_head(std::string_view buf, std::size_t max_bytes) {
  constexpr auto npos = std::string_view::npos;
  // RFC 9112 2.2: empty lines before the request line are ignored (some clients send CRLF
  // after a request); they count toward the limit.
  std::size_t begin = 0;
  for (;;) {
    if (begin < buf.size() && buf[begin] == '\n') {
      ++begin;
    } else if (begin + 1 < buf.size() && buf[begin] == '\r' && buf[begin + 1] == '\n') {
      begin += 2;
    } else {
      break;
    }
  }
  // Find the empty line that ends the head. LF alone is accepted as a line end (RFC 9112 2.2).
  std::vector<std::string_view> lines;
  std::size_t end = npos;
  for (std::size_t pos = begin;;) {
    auto nl = buf.find('\n', pos);
    if (nl == npos || nl >= max_bytes) break;
    auto line = buf.substr(pos, nl - pos);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (line.empty()) {
      end = nl + 1;
      break;
    }
    lines.push_back(line);
    pos = nl + 1;
  }
  if (end == npos) {
    if (buf.size() >= max_bytes) return fail(431, "request header too large\n");
    return {};
  }
  if (end > max_bytes) return fail(431, "request header too large\n");

  ParsedHead p;
  p.state = ParsedHead::State::complete;
  p.consumed = end;
  Request& req = p.req;

  // request-line = method SP request-target SP HTTP-version
  std::string_view rl = lines.front();
  auto sp1 = rl.find(' ');
  auto sp2 = sp1 == npos ? npos : rl.find(' ', sp1 + 1);
  if (sp2 == npos || rl.find(' ', sp2 + 1) != npos) return fail(400, "bad request line\n");
  auto method = rl.substr(0, sp1);
  auto target = rl.substr(sp1 + 1, sp2 - sp1 - 1);
  auto version = rl.substr(sp2 + 1);
  if (!is_token(method) || target.empty()) return fail(400, "bad request line\n");
  for (char ch : target) {
    auto c = static_cast<unsigned char>(ch);
    if (c <= 0x20 || c >= 0x7f) return fail(400, "bad request target\n");
  }
  if (version == "HTTP/1.1") {
    req.version_minor = 1;
  } else if (version == "HTTP/1.0") {
    req.version_minor = 0;
  } else if (version.size() == 8 && version.starts_with("HTTP/") && is_digit(version[5]) &&
             version[6] == '.' && is_digit(version[7])) {
    return fail(505, "HTTP version not supported\n");
  } else {
    return fail(400, "bad request line\n");
  }
  req.method = method;
  if (!parse_target(target, req)) return fail(400, "bad request target\n");

  // field-line = field-name ":" OWS field-value OWS; no obs-fold, no space before the colon.
  int hosts = 0;
  bool has_length = false;
  std::uint64_t length = 0;
  bool connection_close = false;
  bool connection_keep_alive = false;
  for (std::size_t i = 1; i < lines.size(); ++i) {
    std::string_view line = lines[i];
    auto colon = line.find(':');
    if (colon == npos || !is_token(line.substr(0, colon))) return fail(400, "bad header field\n");
    auto value = trim(line.substr(colon + 1));
    if (!is_field_value(value)) return fail(400, "bad header field\n");
    std::string name(line.substr(0, colon));
    std::transform(name.begin(), name.end(), name.begin(), ascii_lower);
    if (name == "host") {
      ++hosts;
    } else if (name == "content-length") {
      // A list of identical values is tolerated (RFC 9112 6.3); anything else is an error.
      bool bad = false;
      for_each_list_element(value, [&](std::string_view v) {
        std::uint64_t n = 0;
        auto [ptr, ec] = std::from_chars(v.data(), v.data() + v.size(), n);
        if (ec == std::errc::result_out_of_range && std::all_of(v.begin(), v.end(), is_digit)) {
          n = UINT64_MAX;
        } else if (ec != std::errc() || ptr != v.data() + v.size()) {
          bad = true;
          return;
        }
        if (has_length && n != length) bad = true;
        has_length = true;
        length = n;
      });
      if (bad || !has_length) return fail(400, "bad Content-Length\n");
    } else if (name == "transfer-encoding") {
      return fail(400, "request bodies are not accepted\n");
    } else if (name == "connection") {
      for_each_list_element(value, [&](std::string_view v) {
        if (iequals(v, "close")) connection_close = true;
        if (iequals(v, "keep-alive")) connection_keep_alive = true;
      });
    }
    req.headers.emplace_back(std::move(name), value);
  }
  if (hosts > 1 || (req.version_minor == 1 && hosts == 0)) return fail(400, "bad Host\n");
  if (length > 0) return fail(413, "request bodies are not accepted\n");
  p.keep_alive =
      req.version_minor == 1 ? !connection_close : connection_keep_alive && !connection_close;
  return p;
}

std::string_view reason_phrase(int status) {
  switch (status) {
    case 200:
      return "OK";
    case 201:
      return "Created";
    case 202:
      return "Accepted";
    case 204:
      return "No Content";
    case 301:
      return "Moved Permanently";
    case 302:
      return "Found";
    case 304:
      return "Not Modified";
    case 400:
      return "Bad Request";
    case 401:
      return "Unauthorized";
    case 403:
      return "Forbidden";
    case 404:
      return "Not Found";
    case 405:
      return "Method Not Allowed";
    case 408:
      return "Request Timeout";
    case 413:
      return "Content Too Large";
    case 429:
      return "Too Many Requests";
    case 431:
      return "Request Header Fields Too Large";
    case 500:
      return "Internal Server Error";
    case 501:
      return "Not Implemented";
    case 503:
      return "Service Unavailable";
    case 505:
      return "HTTP Version Not Supported";
    default:
      return "";  // the reason phrase is optional; the space before it is not
  }
}

std::string http_date() {
  std::time_t t = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[64];
  auto n = std::strftime(buf, sizeof buf, "%a, %d %b %Y %H:%M:%S GMT", &tm);
  return std::string(buf, n);
}

Response error_response(int status, std::string_view body) {
  Response r;
  r.status = status;
  r.body = body;
  return r;
}

// Serialises one response. `head_only`: HEAD, the same fields but no body. `close`: the
// connection ends after it. `keep_alive`: an HTTP/1.0 client asked to keep it open.
void append_response(std::string& out, Response r, std::string_view date, bool head_only,
                     bool close, bool keep_alive) {
  if (r.status < 200 || r.status > 599) {
    log::warn("admin: handler returned status {}; sending 500", r.status);
    r = error_response(500, "internal server error\n");
  }
  if (!is_field_value(r.content_type) || r.content_type.empty()) {
    log::warn("admin: invalid Content-Type from handler; sending application/octet-stream");
    r.content_type = "application/octet-stream";
  }
  auto o = std::back_inserter(out);
  fmt::format_to(o, "HTTP/1.1 {} {}\r\nDate: {}\r\n", r.status, reason_phrase(r.status), date);
  if (r.status == 405) out += "Allow: GET, HEAD\r\n";
  bool no_content = r.status == 204;  // must carry neither body nor Content-Length
  if (!no_content) {
    fmt::format_to(o, "Content-Type: {}\r\nContent-Length: {}\r\n", r.content_type, r.body.size());
  }
  if (close) {
    out += "Connection: close\r\n";
  } else if (keep_alive) {
    out += "Connection: keep-alive\r\n";
  }
  out += "\r\n";
  if (!head_only && !no_content) out += r.body;
}

}  // namespace

std::string_view Request::header(std::string_view name) const noexcept {
  for (const auto& [k, v] : headers)
    if (k == name) return v;
  return {};
}

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
