#pragma once
// An in-process dispatchd on its own io_context thread, listening on 127.0.0.1:<free port>.
// Tests talk to it over real sockets (grpc++, h2load, the raw client) and inspect its state
// through call(), which runs a function on the server's thread.

#include <asio/io_context.hpp>
#include <asio/post.hpp>
#include <chrono>
#include <functional>
#include <future>
#include <memory>
#include <string>
#include <thread>

#include "dispatchd/app/server.hpp"

namespace dispatchd::test {

class TestServer {
 public:
  static app::Options default_options();

  explicit TestServer(app::Options options = default_options(),
                      std::function<void(app::Server&)> setup = {});
  TestServer(const TestServer&) = delete;
  TestServer& operator=(const TestServer&) = delete;
  // Stops the server if still running and checks that it shut down completely.
  ~TestServer();

  unsigned short port() const { return port_; }
  std::string address() const { return "127.0.0.1:" + std::to_string(port_); }

  // Runs f on the server thread and returns its result.
  template <class F>
  auto call(F&& f) -> decltype(f()) {
    using R = decltype(f());
    std::packaged_task<R()> task(std::forward<F>(f));
    auto fut = task.get_future();
    asio::post(io_, [&task] { task(); });
    return fut.get();
  }

  // Polls pred() on the server thread until it is true or the timeout passes (a condition
  // wait with a deadline, not a sleep standing in for synchronisation).
  template <class Pred>
  bool eventually(Pred pred, std::chrono::milliseconds timeout = std::chrono::seconds(10)) {
    auto deadline = std::chrono::steady_clock::now() + timeout;
    for (;;) {
      if (call([&] { return static_cast<bool>(pred()); })) return true;
      if (std::chrono::steady_clock::now() >= deadline) return false;
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
  }

  // Graceful stop (as SIGTERM does); true when the server finished and its io_context ran out
  // of work within `timeout` — i.e. every coroutine, timer and socket it had is gone.
  bool stop(std::chrono::milliseconds timeout = std::chrono::seconds(20));
  bool stopped() const { return stopped_; }
  app::Server& server() { return *server_; }

 private:
  asio::io_context io_{1};
  std::unique_ptr<app::Server> server_;
  std::thread thread_;
  std::promise<void> done_;
  std::future<void> done_future_;
  std::promise<void> io_exited_;
  std::future<void> io_exited_future_;
  unsigned short port_ = 0;
  bool stopped_ = false;
};

}  // namespace dispatchd::test
