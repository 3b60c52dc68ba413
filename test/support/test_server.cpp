#include "support/test_server.hpp"

#include <asio/co_spawn.hpp>
#include <stdexcept>

#include "dispatchd/log.hpp"

namespace dispatchd::test {

app::Options TestServer::default_options() {
  app::Options o;
  o.listen = "127.0.0.1:0";
  o.insecure = true;
  o.h2.drain_timeout = std::chrono::seconds(2);
  return o;
}

TestServer::TestServer(app::Options options, std::function<void(app::Server&)> setup) {
  if (const char* lvl = std::getenv("DISPATCHD_TEST_LOG")) {
    log::Level l;
    if (log::parse_level(lvl, l)) log::set_level(l);
  } else {
    log::set_level(log::Level::warn);
  }
  server_ = std::make_unique<app::Server>(io_, std::move(options));
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
  if (done_future_.wait_until(deadline) != std::future_status::ready) return false;
  if (io_exited_future_.wait_until(deadline) != std::future_status::ready) return false;
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
