#include "dispatchd/admin/http_server.hpp"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <asio/co_spawn.hpp>
#include <asio/post.hpp>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <future>
#include <map>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>

#include "dispatchd/log.hpp"

namespace dispatchd::admin {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

// An HttpServer on its own io_context thread, listening on 127.0.0.1:<free port>.
class AdminServer {
 public:
  explicit AdminServer(HttpOptions opt = {}, std::function<void(HttpServer&)> setup = {}) {
    std::signal(SIGPIPE, SIG_IGN);
    log::set_level(log::Level::warn);
    opt.listen = "127.0.0.1:0";
    server_ = std::make_unique<HttpServer>(io_, std::move(opt));
    server_->route("/hello", [this](const Request& r) {
      ++hello_calls_;
      last_query_ = r.query;
      last_method_ = r.method;
      return Response{.body = "hello\n"};
    });
    if (setup) setup(*server_);
    auto ep = server_->listen();
    if (!ep) throw std::runtime_error(ep.error());
    port_ = ep->port();
    run_done_ = run_promise_.get_future();
    io_exited_ = io_promise_.get_future();
    asio::co_spawn(io_, server_->run(), [this](std::exception_ptr e) {
      run_error_ = e;
      run_promise_.set_value();
    });
    thread_ = std::thread([this] {
      io_.run();
      io_promise_.set_value();
    });
  }
  AdminServer(const AdminServer&) = delete;
  AdminServer& operator=(const AdminServer&) = delete;

  ~AdminServer() {
    if (!stopped_ && !stop()) {
      std::fprintf(stderr, "AdminServer: did not stop in time\n");
      std::abort();  // a hanging server is a bug the test must not hide
    }
  }

  unsigned short port() const { return port_; }

  // Runs f on the server thread and returns its result.
  template <class F>
  auto call(F&& f) -> decltype(f()) {
    std::packaged_task<decltype(f())()> task(std::forward<F>(f));
    auto fut = task.get_future();
    asio::post(io_, [&task] { task(); });
    return fut.get();
  }

  // Polls pred() on the server thread until true or the timeout passes.
  template <class Pred>
  bool eventually(Pred pred, std::chrono::milliseconds timeout = 5s) {
    auto deadline = Clock::now() + timeout;
    for (;;) {
      if (call([&] { return static_cast<bool>(pred()); })) return true;
      if (Clock::now() >= deadline) return false;
      std::this_thread::sleep_for(1ms);
    }
  }

  std::size_t connections() {
    return call([this] { return server_->connection_count(); });
  }

  // stop() on the server thread; true when run() returned and the io_context ran out of work
  // (every connection, timer and coroutine gone) within the timeout.
  bool stop(std::chrono::milliseconds timeout = 5s) {
    if (stopped_) return true;
    asio::post(io_, [this] { server_->stop(); });
    auto deadline = Clock::now() + timeout;
    if (run_done_.wait_until(deadline) != std::future_status::ready) return false;
    if (io_exited_.wait_until(deadline) != std::future_status::ready) return false;
    thread_.join();
    stopped_ = true;
    return run_error_ == nullptr;
  }

  HttpServer& server() { return *server_; }
  int hello_calls() {
    return call([this] { return hello_calls_; });
  }
  std::string last_query() {
    return call([this] { return last_query_; });
  }
  std::string last_method() {
    return call([this] { return last_method_; });
  }

 private:
  asio::io_context io_{1};
  std::unique_ptr<HttpServer> server_;
  std::thread thread_;
  std::promise<void> run_promise_;
  std::future<void> run_done_;
  std::promise<void> io_promise_;
  std::future<void> io_exited_;
  std::exception_ptr run_error_;
  unsigned short port_ = 0;
  bool stopped_ = false;
  int hello_calls_ = 0;
  std::string last_query_;
  std::string last_method_;
};

struct HttpResponse {
  int status = 0;
  std::string head;                            // status line and fields, as received
  std::map<std::string, std::string> headers;  // names lower-cased
  std::string body;
  std::string header(const std::string& name) const {
    auto it = headers.find(name);
    return it == headers.end() ? std::string() : it->second;
  }
};

// A blocking POSIX client; every wait is a poll() with a deadline.
class Client {
 public:
  explicit Client(unsigned short port) {
    fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd_ < 0) throw std::runtime_error("socket");
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (::connect(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
      connect_errno_ = errno;
      ::close(fd_);
      fd_ = -1;
    }
  }
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;
  ~Client() {
    if (fd_ >= 0) ::close(fd_);
  }

  bool connected() const { return fd_ >= 0; }
  void close() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }
  int connect_errno() const { return connect_errno_; }

  bool send(std::string_view s) {
    while (!s.empty()) {
      ssize_t n = ::send(fd_, s.data(), s.size(), MSG_NOSIGNAL);
      if (n <= 0) return false;
      s.remove_prefix(static_cast<std::size_t>(n));
    }
    return true;
  }

  // Reads one response (HEAD: no body expected). nullopt on EOF or timeout.
  std::optional<HttpResponse> read_response(bool head = false, std::chrono::milliseconds t = 5s) {
    auto deadline = Clock::now() + t;
    std::size_t end;
    while ((end = buf_.find("\r\n\r\n")) == std::string::npos) {
      if (!fill(deadline)) return std::nullopt;
    }
    HttpResponse r;
    r.head = buf_.substr(0, end + 2);
    std::string_view h = r.head;
    if (!h.starts_with("HTTP/1.1 ") || h.size() < 12) return std::nullopt;
    r.status = std::stoi(std::string(h.substr(9, 3)));
    auto pos = h.find("\r\n") + 2;
    while (pos < h.size()) {
      auto eol = h.find("\r\n", pos);
      auto line = h.substr(pos, eol - pos);
      auto colon = line.find(':');
      std::string name(line.substr(0, colon));
      for (auto& c : name)
        c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
      auto value = line.substr(colon + 1);
      while (!value.empty() && value.front() == ' ')
        value.remove_prefix(1);
      r.headers[name] = std::string(value);
      pos = eol + 2;
    }
    buf_.erase(0, end + 4);
    std::size_t len = head || r.headers.count("content-length") == 0
                          ? 0
                          : std::stoul(r.headers["content-length"]);
    while (buf_.size() < len) {
      if (!fill(deadline)) return std::nullopt;
    }
    r.body = buf_.substr(0, len);
    buf_.erase(0, len);
    return r;
  }

  // Waits for the server to close the connection (EOF or reset), discarding what arrives.
  bool wait_closed(std::chrono::milliseconds t = 5s) {
    auto deadline = Clock::now() + t;
    while (fill(deadline)) {
    }
    return eof_;
  }

  // Bytes received and not yet consumed by read_response().
  const std::string& pending() const { return buf_; }

 private:
  // One read; false on EOF, error or deadline.
  bool fill(Clock::time_point deadline) {
    if (eof_) return false;
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
    if (left.count() < 0) return false;
    pollfd p{fd_, POLLIN, 0};
    int rc = ::poll(&p, 1, static_cast<int>(left.count()));
    if (rc <= 0) return false;
    char tmp[4096];
    ssize_t n = ::recv(fd_, tmp, sizeof tmp, 0);
    if (n <= 0) {
      eof_ = true;
      return false;
    }
    buf_.append(tmp, static_cast<std::size_t>(n));
    return true;
  }

  int fd_ = -1;
  int connect_errno_ = 0;
  std::string buf_;
  bool eof_ = false;
};

std::string get(std::string_view path, std::string_view extra = {}) {
  return "GET " + std::string(path) + " HTTP/1.1\r\nHost: test\r\n" + std::string(extra) + "\r\n";
}

// ---------------------------------------------------------------------------------------------

TEST(HttpServerTest, GetReturnsHandlerBodyWithLengthAndType) {
  AdminServer s;
  Client c(s.port());
  ASSERT_TRUE(c.send(get("/hello?x=1&y=2")));
  auto r = c.read_response();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
  EXPECT_EQ(r->body, "hello\n");
  EXPECT_EQ(r->header("content-length"), "6");
  EXPECT_EQ(r->header("content-type"), "text/plain; charset=utf-8");
  EXPECT_FALSE(r->header("date").empty());
  EXPECT_EQ(s.last_query(), "x=1&y=2");
  EXPECT_EQ(s.last_method(), "GET");
}

TEST(HttpServerTest, ExactResponseBytes) {
  AdminServer s({}, [](HttpServer& srv) {
    srv.route("/ready", [](const Request&) {
      return Response{.status = 503, .content_type = "application/json", .body = "{}"};
    });
  });
  Client c(s.port());
  ASSERT_TRUE(c.send(get("/ready")));
  auto r = c.read_response();
  ASSERT_TRUE(r);
  // Everything but the Date value is fixed.
  auto date_begin = r->head.find("Date: ");
  ASSERT_NE(date_begin, std::string::npos);
  std::string head = r->head;
  head.erase(date_begin, head.find("\r\n", date_begin) + 2 - date_begin);
  EXPECT_EQ(head,
            "HTTP/1.1 503 Service Unavailable\r\n"
            "Content-Type: application/json\r\n"
            "Content-Length: 2\r\n");
  EXPECT_EQ(r->body, "{}");
}

TEST(HttpServerTest, HeadSendsHeadersOnlyWithGetsLength) {
  AdminServer s;
  Client c(s.port());
  ASSERT_TRUE(c.send("HEAD /hello HTTP/1.1\r\nHost: test\r\n\r\n" + get("/hello")));
  auto head = c.read_response(/*head=*/true);
  ASSERT_TRUE(head);
  EXPECT_EQ(head->status, 200);
  EXPECT_EQ(head->header("content-length"), "6");
  EXPECT_EQ(head->body, "");
  // No body bytes followed the HEAD response: the next response starts right there.
  ASSERT_TRUE(c.pending().empty() || c.pending().starts_with("HTTP/1.1 200"));
  auto r = c.read_response();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->body, "hello\n");
  EXPECT_EQ(s.hello_calls(), 2);
}

TEST(HttpServerTest, UnknownPathIs404) {
  AdminServer s;
  Client c(s.port());
  ASSERT_TRUE(c.send(get("/nope") + get("/hello/") + get("/hello")));
  auto r1 = c.read_response();
  auto r2 = c.read_response();
  auto r3 = c.read_response();
  ASSERT_TRUE(r1 && r2 && r3);
  EXPECT_EQ(r1->status, 404);
  EXPECT_EQ(r2->status, 404);
  EXPECT_EQ(r3->status, 200);  // still open
  EXPECT_EQ(s.hello_calls(), 1);
}

TEST(HttpServerTest, OtherMethodsAre405WithAllow) {
  AdminServer s;
  Client c(s.port());
  for (const char* method : {"POST", "PUT", "DELETE", "OPTIONS", "BREW"}) {
    ASSERT_TRUE(c.send(std::string(method) + " /hello HTTP/1.1\r\nHost: test\r\n\r\n"));
    auto r = c.read_response();
    ASSERT_TRUE(r) << method;
    EXPECT_EQ(r->status, 405) << method;
    EXPECT_EQ(r->header("allow"), "GET, HEAD") << method;
  }
  EXPECT_EQ(s.hello_calls(), 0);
}

TEST(HttpServerTest, GarbageIs400ThenClose) {
  AdminServer s;
  Client c(s.port());
  ASSERT_TRUE(c.send("\x16\x03\x01 hello there\r\n\r\n"));
  auto r = c.read_response();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 400);
  EXPECT_EQ(r->header("connection"), "close");
  EXPECT_TRUE(c.wait_closed());
}

TEST(HttpServerTest, MalformedHeadsAre400) {
  AdminServer s;
  const char* cases[] = {
      "GET /hello\r\nHost: test\r\n\r\n",                       // no version
      "GET  /hello HTTP/1.1\r\nHost: test\r\n\r\n",             // two spaces
      "GET /hello HTTP/1.1 \r\nHost: test\r\n\r\n",             // trailing space
      "GET hello HTTP/1.1\r\nHost: test\r\n\r\n",               // not origin-form
      "GET /hel\x01lo HTTP/1.1\r\nHost: test\r\n\r\n",          // control in target
      "GET /hello HTTP/1.1\r\n\r\n",                            // HTTP/1.1 without Host
      "GET /hello HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",      // two Hosts
      "GET /hello HTTP/1.1\r\nHost : test\r\n\r\n",             // space before colon
      "GET /hello HTTP/1.1\r\nHost: test\r\n folded\r\n\r\n",   // obs-fold
      "GET /hello HTTP/1.1\r\nHost: test\r\nX: a\rb\r\n\r\n",   // bare CR
      "GET /hello HTTP/1.1\r\nHost: test\r\nno colon\r\n\r\n",  // not a field
      "GET /hello HTTP/1.1\r\nHost: test\r\nContent-Length: x\r\n\r\n",
      "GET /hello HTTP/1.1\r\nHost: test\r\nContent-Length: 0, 1\r\n\r\n",
      "G(T /hello HTTP/1.1\r\nHost: test\r\n\r\n",  // not a token
  };
  for (const char* req : cases) {
    Client c(s.port());
    ASSERT_TRUE(c.send(req));
    auto r = c.read_response();
    ASSERT_TRUE(r) << req;
    EXPECT_EQ(r->status, 400) << req;
    EXPECT_TRUE(c.wait_closed()) << req;
  }
  EXPECT_EQ(s.hello_calls(), 0);
}

TEST(HttpServerTest, UnsupportedVersionIs505) {
  AdminServer s;
  Client c(s.port());
  ASSERT_TRUE(c.send("GET /hello HTTP/2.0\r\nHost: test\r\n\r\n"));
  auto r = c.read_response();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 505);
}

TEST(HttpServerTest, AcceptsBareLfAbsoluteFormAndLeadingEmptyLines) {
  AdminServer s;
  Client c(s.port());
  ASSERT_TRUE(
      c.send("GET /hello?a HTTP/1.1\nHost: test\n\n"
             "\r\nGET http://test:9090/hello?b HTTP/1.1\r\nHost: test\r\n\r\n"));
  auto r1 = c.read_response();
  auto r2 = c.read_response();
  ASSERT_TRUE(r1 && r2);
  EXPECT_EQ(r1->status, 200);
  EXPECT_EQ(r2->status, 200);
  EXPECT_EQ(s.last_query(), "b");
}

TEST(HttpServerTest, HugeHeaderIs431) {
  HttpOptions o;
  o.max_request_bytes = 1024;
  AdminServer s(o);
  {
    Client c(s.port());
    ASSERT_TRUE(c.send(get("/hello", "X-Big: " + std::string(2000, 'a') + "\r\n")));
    auto r = c.read_response();
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 431);
    EXPECT_TRUE(c.wait_closed());
  }
  {
    // An endless head is refused as soon as the limit is passed, not when it ends.
    Client c(s.port());
    ASSERT_TRUE(c.send("GET /hello HTTP/1.1\r\nX-Big: " + std::string(2000, 'a')));
    auto r = c.read_response();
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 431);
    EXPECT_TRUE(c.wait_closed());
  }
  {
    // Just under the limit is fine.
    Client c(s.port());
    std::string req = get("/hello", "X-Big: \r\n");
    req.insert(req.size() - 4, std::string(1024 - req.size(), 'a'));
    ASSERT_EQ(req.size(), 1024u);
    ASSERT_TRUE(c.send(req));
    auto r = c.read_response();
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 200);
  }
}

TEST(HttpServerTest, RequestBodyIsRefusedThenClose) {
  AdminServer s;
  {
    Client c(s.port());
    ASSERT_TRUE(c.send(get("/hello", "Content-Length: 5\r\n") + "hello"));
    auto r = c.read_response();
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 413);
    EXPECT_TRUE(c.wait_closed());
  }
  {
    Client c(s.port());
    ASSERT_TRUE(
        c.send(get("/hello", "Transfer-Encoding: chunked\r\n") + "5\r\nhello\r\n0\r\n\r\n"));
    auto r = c.read_response();
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 400);
    EXPECT_TRUE(c.wait_closed());
  }
  {
    // Content-Length: 0 is no body.
    Client c(s.port());
    ASSERT_TRUE(c.send(get("/hello", "Content-Length: 0\r\n")));
    auto r = c.read_response();
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 200);
  }
  EXPECT_EQ(s.hello_calls(), 1);
}

TEST(HttpServerTest, KeepAliveServesTwoRequestsOnOneConnection) {
  AdminServer s;
  Client c(s.port());
  ASSERT_TRUE(c.send(get("/hello")));
  auto r1 = c.read_response();
  ASSERT_TRUE(r1);
  EXPECT_EQ(r1->header("connection"), "");
  EXPECT_EQ(s.connections(), 1u);
  ASSERT_TRUE(c.send(get("/hello")));
  auto r2 = c.read_response();
  ASSERT_TRUE(r2);
  EXPECT_EQ(r2->status, 200);
  EXPECT_EQ(s.hello_calls(), 2);
  EXPECT_EQ(s.connections(), 1u);
}

TEST(HttpServerTest, PipelinedRequestsAnsweredInOrder) {
  AdminServer s({}, [](HttpServer& srv) {
    srv.route("/a", [](const Request&) { return Response{.body = "A"}; });
    srv.route("/b", [](const Request&) { return Response{.body = "BB"}; });
  });
  Client c(s.port());
  std::string burst;
  for (int i = 0; i < 50; ++i)
    burst += get("/a") + get("/b") + get("/missing");
  ASSERT_TRUE(c.send(burst));
  for (int i = 0; i < 50; ++i) {
    auto a = c.read_response();
    auto b = c.read_response();
    auto m = c.read_response();
    ASSERT_TRUE(a && b && m) << i;
    EXPECT_EQ(a->body, "A");
    EXPECT_EQ(b->body, "BB");
    EXPECT_EQ(m->status, 404);
  }
}

TEST(HttpServerTest, ConnectionCloseIsHonoured) {
  AdminServer s;
  Client c(s.port());
  ASSERT_TRUE(c.send(get("/hello", "Connection: close\r\n") + get("/hello")));
  auto r = c.read_response();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
  EXPECT_EQ(r->header("connection"), "close");
  EXPECT_TRUE(c.wait_closed());
  EXPECT_TRUE(c.pending().empty());  // the request after "close" was not answered
  EXPECT_EQ(s.hello_calls(), 1);
  c.close();  // the server waits for this before it lets go (lingering close)
  EXPECT_TRUE(s.eventually([&] { return s.server().connection_count() == 0; }));
}

TEST(HttpServerTest, LingeringCloseIsBounded) {
  HttpOptions o;
  o.read_timeout = 300ms;
  AdminServer s(o);
  Client c(s.port());
  ASSERT_TRUE(c.send(get("/hello", "Connection: close\r\n")));
  ASSERT_TRUE(c.read_response());
  EXPECT_TRUE(c.wait_closed());
  // The client keeps its end open and keeps talking; the server lets go anyway.
  ASSERT_TRUE(c.send("more input that nobody reads"));
  EXPECT_TRUE(s.eventually([&] { return s.server().connection_count() == 0; }, 3s));
}

TEST(HttpServerTest, Http10ClosesUnlessKeepAlive) {
  AdminServer s;
  {
    Client c(s.port());
    ASSERT_TRUE(c.send("GET /hello HTTP/1.0\r\n\r\n"));
    auto r = c.read_response();
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 200);
    EXPECT_EQ(r->body, "hello\n");
    EXPECT_TRUE(c.wait_closed());
  }
  {
    Client c(s.port());
    ASSERT_TRUE(c.send("GET /hello HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n"));
    auto r1 = c.read_response();
    ASSERT_TRUE(r1);
    EXPECT_EQ(r1->header("connection"), "keep-alive");
    ASSERT_TRUE(c.send("GET /hello HTTP/1.0\r\n\r\n"));
    auto r2 = c.read_response();
    ASSERT_TRUE(r2);
    EXPECT_EQ(r2->status, 200);
    EXPECT_TRUE(c.wait_closed());
  }
}

TEST(HttpServerTest, SlowClientGets408AndIsClosedAfterReadTimeout) {
  HttpOptions o;
  o.read_timeout = 200ms;
  AdminServer s(o);
  Client c(s.port());
  auto start = Clock::now();
  ASSERT_TRUE(c.send("GET /hello HTTP/1.1\r\nHost: te"));
  auto r = c.read_response({}, 5s);
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 408);
  EXPECT_TRUE(c.wait_closed(5s));
  EXPECT_GE(Clock::now() - start, 200ms);
  EXPECT_EQ(s.hello_calls(), 0);
}

TEST(HttpServerTest, IdleConnectionClosedSilentlyAfterReadTimeout) {
  HttpOptions o;
  o.read_timeout = 200ms;
  AdminServer s(o);
  Client c(s.port());
  ASSERT_TRUE(c.send(get("/hello")));
  ASSERT_TRUE(c.read_response());
  auto idle_since = Clock::now();
  EXPECT_TRUE(c.wait_closed(5s));
  EXPECT_GE(Clock::now() - idle_since, 150ms);
  EXPECT_TRUE(c.pending().empty());
  EXPECT_TRUE(s.eventually([&] { return s.server().connection_count() == 0; }));
}

TEST(HttpServerTest, TricklingBytesDoNotExtendTheDeadline) {
  HttpOptions o;
  o.read_timeout = 300ms;
  AdminServer s(o);
  Client c(s.port());
  ASSERT_TRUE(c.send("GET /hello HTTP/1.1\r\n"));
  // A slowloris: one header byte every 20ms. A per-read timeout would never fire.
  auto start = Clock::now();
  bool closed = false;
  while (Clock::now() - start < 5s) {
    if (!c.send("X") || c.wait_closed(20ms)) {
      closed = true;
      break;
    }
  }
  EXPECT_TRUE(closed);
  EXPECT_LT(Clock::now() - start, 3s);
}

TEST(HttpServerTest, ConnectionsBeyondTheCapAreClosed) {
  HttpOptions o;
  o.max_connections = 2;
  AdminServer s(o);
  Client c1(s.port());
  Client c2(s.port());
  ASSERT_TRUE(s.eventually([&] { return s.server().connection_count() == 2; }));
  Client c3(s.port());
  ASSERT_TRUE(c3.connected());
  EXPECT_TRUE(c3.wait_closed());
  EXPECT_TRUE(c3.pending().empty());
  EXPECT_EQ(s.call([&] { return s.server().rejected_connections(); }), 1u);
  // The ones admitted still work; a slot freed is a slot available.
  ASSERT_TRUE(c1.send(get("/hello")));
  ASSERT_TRUE(c1.read_response());
  ASSERT_TRUE(c2.send(get("/hello", "Connection: close\r\n")));
  ASSERT_TRUE(c2.read_response());
  ASSERT_TRUE(c2.wait_closed());
  c2.close();
  ASSERT_TRUE(s.eventually([&] { return s.server().connection_count() == 1; }));
  Client c4(s.port());
  ASSERT_TRUE(c4.send(get("/hello")));
  auto r = c4.read_response();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
}

TEST(HttpServerTest, HandlerExceptionIs500AndServerKeepsServing) {
  AdminServer s({}, [](HttpServer& srv) {
    srv.route("/boom", [](const Request&) -> Response { throw std::runtime_error("kaput"); });
    srv.route("/weird", [](const Request&) -> Response { throw 42; });
  });
  Client c(s.port());
  ASSERT_TRUE(c.send(get("/boom") + get("/weird") + get("/hello")));
  auto r1 = c.read_response();
  auto r2 = c.read_response();
  auto r3 = c.read_response();
  ASSERT_TRUE(r1 && r2 && r3);
  EXPECT_EQ(r1->status, 500);
  EXPECT_EQ(r2->status, 500);
  EXPECT_EQ(r3->status, 200);
}

TEST(HttpServerTest, StopClosesEveryConnectionAndRunReturns) {
  AdminServer s;
  Client idle(s.port());
  Client partial(s.port());
  Client served(s.port());
  ASSERT_TRUE(partial.send("GET /hello HTTP/1.1\r\n"));
  ASSERT_TRUE(served.send(get("/hello")));
  ASSERT_TRUE(served.read_response());
  ASSERT_TRUE(s.eventually([&] { return s.server().connection_count() == 3; }));
  auto port = s.port();
  ASSERT_TRUE(s.stop());  // run() returned and the io_context has no work left
  EXPECT_TRUE(idle.wait_closed());
  EXPECT_TRUE(partial.wait_closed());
  EXPECT_TRUE(served.wait_closed());
  Client late(port);
  EXPECT_FALSE(late.connected());
  EXPECT_EQ(late.connect_errno(), ECONNREFUSED);
}

TEST(HttpServerTest, ListenErrorsNameTheAddress) {
  asio::io_context io;
  HttpOptions o;
  o.listen = "127.0.0.1:0";
  HttpServer first(io, o);
  auto ep = first.listen();
  ASSERT_TRUE(ep) << ep.error();
  o.listen = "127.0.0.1:" + std::to_string(ep->port());
  HttpServer second(io, o);
  auto err = second.listen();
  ASSERT_FALSE(err);
  EXPECT_NE(err.error().find("admin"), std::string::npos) << err.error();
  EXPECT_NE(err.error().find(o.listen), std::string::npos) << err.error();
  EXPECT_NE(err.error().find("Address already in use"), std::string::npos) << err.error();

  o.listen = "no-port-here";
  HttpServer third(io, o);
  auto bad = third.listen();
  ASSERT_FALSE(bad);
  EXPECT_NE(bad.error().find("no-port-here"), std::string::npos) << bad.error();
}

TEST(HttpServerTest, ListensOnIpv6Loopback) {
  asio::io_context io;
  HttpOptions o;
  o.listen = "[::1]:0";
  HttpServer srv(io, o);
  auto ep = srv.listen();
  if (!ep) GTEST_SKIP() << "no IPv6 loopback: " << ep.error();
  EXPECT_TRUE(ep->address().is_v6());
  EXPECT_NE(ep->port(), 0);
}

// curl is a real HTTP/1.1 peer: it judges framing, keep-alive and HEAD independently.
TEST(HttpServerTest, CurlTalksToIt) {
  std::string curl = CURL_PATH;
  if (curl.empty() || curl.ends_with("NOTFOUND") || ::access(curl.c_str(), X_OK) != 0) {
    GTEST_SKIP() << "curl not installed";
  }
  AdminServer s;
  auto run = [&](const std::string& args, std::string& out) {
    std::string cmd = curl + " -sS --max-time 10 " + args + " 2>&1";
    FILE* p = ::popen(cmd.c_str(), "r");
    if (!p) return -1;
    char buf[4096];
    std::size_t n;
    out.clear();
    while ((n = std::fread(buf, 1, sizeof buf, p)) > 0)
      out.append(buf, n);
    int status = ::pclose(p);
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  };
  std::string base = "http://127.0.0.1:" + std::to_string(s.port());
  std::string out;
  EXPECT_EQ(run("-f " + base + "/hello?from=curl", out), 0) << out;
  EXPECT_EQ(out, "hello\n");
  EXPECT_EQ(s.last_query(), "from=curl");
  // Two URLs: curl reuses the connection when the server keeps it alive.
  EXPECT_EQ(run("-f -v " + base + "/hello " + base + "/hello", out), 0) << out;
  EXPECT_NE(out.find("Re-using existing connection"), std::string::npos) << out;
  EXPECT_EQ(run("-f -I " + base + "/hello", out), 0) << out;
  EXPECT_NE(out.find("Content-Length: 6"), std::string::npos) << out;
  EXPECT_EQ(s.last_method(), "HEAD");
  EXPECT_EQ(run("-f " + base + "/missing", out), 22) << out;  // HTTP error >= 400
  EXPECT_EQ(run("-f -X POST " + base + "/hello", out), 22) << out;
  EXPECT_EQ(run("-o /dev/null -w %{http_code} -X POST " + base + "/hello", out), 0) << out;
  EXPECT_EQ(out, "405");
}

}  // namespace
}  // namespace dispatchd::admin
