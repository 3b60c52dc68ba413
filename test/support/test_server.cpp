#include "support/test_server.hpp"

#include <asio/co_spawn.hpp>
#include <csignal>
#include <stdexcept>

#include "dispatchd/log.hpp"

namespace dispatchd::test {

app::Options TestServer::default_options() {
  app::Options o;
  o.listen = "127.0.0.1:0";
  o.admin_listen = "127.0.0.1:0";  // a free port: tests run in parallel
  o.insecure = true;
  o.h2.drain_timeout = std::chrono::seconds(2);
  return o;
}

TestServer::TestServer(app::Options options, std::function<void(app::Server&)> setup) {
  std::signal(SIGPIPE, SIG_IGN);  // as dispatchd's main does (TLS writes use write(2))
  if (const char* lvl = std::getenv("DISPATCHD_TEST_LOG")) {
    log::Level l;
    if (log::parse_level(lvl, l)) log::set_level(l);
  } else {
    log::set_level(log::Level::warn);
  }
  std::shared_ptr<net::TlsContext> tls;
  if (!options.insecure) {
    auto ctx = app::prepare_tls(options);
    if (!ctx) throw std::runtime_error("test server TLS: " + ctx.error());
    tls = *ctx;
  }
  server_ = std::make_unique<app::Server>(io_, std::move(options));
  if (tls) server_->set_tls(tls);
  if (setup) setup(*server_);
  auto ep = server_->listen();
  if (!ep) throw std::runtime_error("test server cannot listen: " + ep.error());
  port_ = ep->port();
  server_->dispatcher().set_manager_addr("127.0.0.1:" + std::to_string(port_));
  done_future_ = done_.get_future();
  io_exited_future_ = io_exited_.get_future();
  asio::co_spawn(io_, server_->run(), [this](std::exception_ptr) { done_.set_value(); });
  thread_ = std::thread([this] {
    io_.run();
    io_exited_.set_value();
  });
}

bool TestServer::stop(std::chrono::milliseconds timeout) {
  if (stopped_) return true;
  asio::post(io_, [this] { server_->stop(); });
  auto deadline = std::chrono::steady_clock::now() + timeout;
  auto report = [&](const char* what) {
    // The io thread is still alive: ask it what is left.
    auto state = std::make_shared<std::promise<std::string>>();
    auto fut = state->get_future();
    asio::post(io_, [this, state] {
      state->set_value("connections=" + std::to_string(server_->connection_count()) +
                       " handshakes=" + std::to_string(server_->handshake_count()) +
                       " calls=" + std::to_string(server_->grpc().active_calls()) +
                       " sessions=" + std::to_string(server_->dispatcher().open_sessions()) +
                       " streams=" + std::to_string(server_->dispatcher().open_streams()) +
                       " timers=" + std::to_string(server_->wheel().armed_count()) +
                       " store_watchers=" + std::to_string(server_->store().watcher_count()));
    });
    std::string detail = fut.wait_for(std::chrono::seconds(2)) == std::future_status::ready
                             ? fut.get()
                             : std::string("(io thread unresponsive)");
    std::fprintf(stderr, "TestServer: %s; %s\n", what, detail.c_str());
    return false;
  };
  if (done_future_.wait_until(deadline) != std::future_status::ready) {
    return report("server did not finish");
  }
  if (io_exited_future_.wait_until(deadline) != std::future_status::ready) {
    return report("io_context still has work after the server finished");
  }
  thread_.join();
  stopped_ = true;
  return true;
}

TestServer::~TestServer() {
  if (!stopped_ && !stop()) {
    // A server that does not stop is a bug the test must not hide; do not hang the suite.
    std::fprintf(stderr, "TestServer: server did not stop in time\n");
    std::abort();
  }
}

}  // namespace dispatchd::test
