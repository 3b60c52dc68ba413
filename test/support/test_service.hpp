#pragma once
// dispatchd.test.TestService served by our gRPC layer, with counters the tests read (on the
// server thread, through TestServer::call).

#include <cstddef>
#include <cstdint>

#include "dispatchd/grpc/server.hpp"

namespace dispatchd::test {

struct TestServiceState {
  int hang_started = 0;
  int hang_cancelled = 0;
  int hang_deadline_exceeded = 0;
  std::uint32_t stream_written = 0;  // Chunks the current Stream call has fully handed over
  bool stream_blocked = false;       // it is waiting for the peer's flow-control window
  bool stream_done = false;
  bool stream_aborted = false;  // a write returned false (call over)
};

void add_test_service(grpc::Server& server, TestServiceState& state);

}  // namespace dispatchd::test
