#pragma once
// Shared by the co/ tests: record how a spawned coroutine ended, and run an io_context until
// it has no work left.

#include <gtest/gtest.h>

#include <asio/io_context.hpp>
#include <chrono>
#include <cstddef>
#include <exception>
#include <numeric>
#include <vector>

namespace dispatchd::co::testing {

// What a spawned coroutine did: whether it finished and how.
struct Outcome {
  bool done = false;
  std::exception_ptr error;
};

// A co_spawn completion handler that fills `o`.
inline auto record(Outcome& o) {
  return [&o](std::exception_ptr e) {
    o.done = true;
    o.error = e;
  };
}

// A parked coroutine keeps work alive, so a stopped io_context proves every coroutine finished.
inline void run_to_completion(asio::io_context& io,
                              std::chrono::seconds limit = std::chrono::seconds(10)) {
  io.run_for(limit);
  EXPECT_TRUE(io.stopped()) << "io_context still had work: a coroutine never finished";
}

// from, from + 1, ..., to - 1
inline std::vector<int> iota(int from, int to) {
  std::vector<int> v(static_cast<std::size_t>(to - from));
  std::iota(v.begin(), v.end(), from);
  return v;
}

}  // namespace dispatchd::co::testing
