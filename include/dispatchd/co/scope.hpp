#pragma once
// Scope: structured concurrency for a group of coroutines. spawn() starts one and counts it;
// join() waits until all have finished. An owner joins its scope before it is destroyed, so no
// coroutine outlives the objects it points to.

#include <asio/co_spawn.hpp>
#include <asio/io_context.hpp>
#include <cstddef>
#include <exception>

#include "dispatchd/co/wakeup.hpp"
#include "dispatchd/log.hpp"

namespace dispatchd::co {

class Scope {
 public:
  explicit Scope(asio::io_context::executor_type ex) : ex_(ex) {}
  Scope(const Scope&) = delete;
  Scope& operator=(const Scope&) = delete;

  void spawn(asio::awaitable<void> a) {
    ++count_;
    asio::co_spawn(ex_, std::move(a), [this](std::exception_ptr e) {
      if (e) {
        try {
          std::rethrow_exception(e);
        } catch (const std::exception& ex) {
          log::error("coroutine ended with exception: {}", ex.what());
        } catch (...) {
          log::error("coroutine ended with unknown exception");
        }
      }
      if (--count_ == 0) joined_.notify();
    });
  }

  asio::awaitable<void> join() {
    while (count_ != 0)
      co_await joined_.async_park();
  }

  std::size_t size() const noexcept { return count_; }
  asio::io_context::executor_type executor() const noexcept { return ex_; }

 private:
  asio::io_context::executor_type ex_;
  std::size_t count_ = 0;
  Wakeup joined_;
};

}  // namespace dispatchd::co
