#pragma once
// A small HTTP/1.1 server for operators' endpoints (/metrics, /healthz, /readyz). It serves
// GET and HEAD on exact paths registered with route(), never reads a request body, and assumes
// hostile peers: the request head is bounded, every connection has one deadline covering the
// head it is reading or the response it is writing, and the number of connections is capped.
//
// Everything runs on the io_context's thread: route(), listen(), stop() and connection_count()
// must be called there (or before run() starts); handlers are called there and must not block.

#include <asio/awaitable.hpp>
#include <asio/io_context.hpp>
#include <asio/ip/tcp.hpp>
#include <asio/steady_timer.hpp>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <expected>
#include <functional>
#include <list>
#include <map>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "dispatchd/admin/http_parser.hpp"
#include "dispatchd/admin/http_response.hpp"
#include "dispatchd/co/wakeup.hpp"
#include "dispatchd/net/acceptor.hpp"

namespace dispatchd::admin {

struct HttpOptions {
  std::string listen = "127.0.0.1:9090";
  std::size_t max_connections = 64;
  // Deadline for reading one request head (from the moment the connection starts waiting for
  // it; trickling bytes do not extend it) and, separately, for writing one response.
  std::chrono::milliseconds read_timeout{10000};
  std::size_t max_request_bytes = 8192;  // request line + header fields
};

class HttpServer {
 public:
  using Handler = std::function<Response(const Request&)>;

  HttpServer(asio::io_context& io, HttpOptions opt);
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;
  // Must not be destroyed while run() is still running.
  ~HttpServer();

  // Exact path match; the query string is ignored for matching. A later route for the same
  // path replaces the earlier one.
  void route(std::string path, Handler h);
  // Port 0 picks a free port; returns the bound endpoint or an error naming the address.
  std::expected<asio::ip::tcp::endpoint, std::string> listen();
  // Serves until stop(); returns after every connection has closed.
  asio::awaitable<void> run();
  // Closes the listener and every connection. Idempotent.
  void stop();

  std::size_t connection_count() const noexcept { return connections_.size(); }
  // Connections closed on arrival because max_connections were open.
  std::uint64_t rejected_connections() const noexcept { return rejected_; }

 private:
  struct Connection {
    explicit Connection(asio::ip::tcp::socket s);
    asio::ip::tcp::socket socket;
    asio::steady_timer timer;
    std::chrono::steady_clock::time_point deadline;
    bool timed_out = false;
    bool partial_request = false;  // part of a request head was buffered when it timed out
    bool linger = false;           // the session ended by answering; half-close, then drain
  };
  using ConnectionIt = std::list<Connection>::iterator;

  void on_accept(asio::ip::tcp::socket socket);
  asio::awaitable<void> serve(ConnectionIt it);
  asio::awaitable<void> session(Connection& c);
  asio::awaitable<void> watchdog(Connection& c);
  asio::awaitable<void> drain(Connection& c);
  Response dispatch(const Request& req);

  asio::io_context& io_;
  HttpOptions opt_;
  std::map<std::string, Handler, std::less<>> routes_;
  net::Acceptor acceptor_;
  std::list<Connection> connections_;
  co::Wakeup drained_;  // run() parks here until connections_ is empty
  bool stopping_ = false;
  bool cap_warned_ = false;
  std::uint64_t rejected_ = 0;
};

}  // namespace dispatchd::admin
