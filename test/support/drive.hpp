#pragma once
// Driving a test's io_context from the test's own thread: until a condition holds, or until a
// coroutine finishes, bounded in time.
//
// An io_context that runs out of work stops, and a stopped one returns from run_one_for() at
// once without running anything posted later; so it is restarted before each step. (Without
// that, a test whose earlier call left the context idle for a moment saw its next coroutine
// never start, and spun until its limit.)

#include <asio/awaitable.hpp>
#include <asio/co_spawn.hpp>
#include <asio/io_context.hpp>
#include <chrono>
#include <exception>
#include <memory>
#include <optional>
#include <stdexcept>
#include <utility>

namespace dispatchd::test {

// Runs `io` until `done()` holds or `limit` has passed; returns done().
template <class Done>
bool drive_until(asio::io_context& io, Done&& done, std::chrono::milliseconds limit,
                 std::chrono::milliseconds step = std::chrono::milliseconds(20)) {
  const auto deadline = std::chrono::steady_clock::now() + limit;
  while (!done() && std::chrono::steady_clock::now() < deadline) {
    if (io.stopped()) io.restart();
    io.run_one_for(step);
  }
  return done();
}

// Spawns `a` on `io` and runs `io` until it finishes: its result, or its exception rethrown.
// Throws std::runtime_error naming `what` when it does not finish within `limit`.
template <class T>
T drive(asio::io_context& io, asio::awaitable<T> a, std::chrono::milliseconds limit,
        const char* what = "coroutine did not finish in time") {
  // Shared with the completion handler: a coroutine that ends after the limit writes here, not
  // into a gone stack frame.
  struct Result {
    std::optional<T> out;
    std::exception_ptr err;
  };
  auto r = std::make_shared<Result>();
  asio::co_spawn(io, std::move(a), [r](std::exception_ptr e, T v) {
    r->err = e;
    if (!e) r->out = std::move(v);
  });
  drive_until(
      io, [&] { return r->out.has_value() || r->err != nullptr; }, limit);
  if (r->err) std::rethrow_exception(r->err);
  if (!r->out) throw std::runtime_error(what);
  return std::move(*r->out);
}

}  // namespace dispatchd::test
