#pragma once
// dispatchd.test.TestService served by our gRPC layer, with counters the tests read (on the
// server thread, through TestServer::call).

#include <cstddef>
#include <cstdint>

#include "dispatchd/co/event.hpp"
#include "dispatchd/grpc/server.hpp"
#include "dispatchd/grpc/status.hpp"

namespace dispatchd::test {

struct TestServiceState {
  int hang_started = 0;
  int hang_cancelled = 0;
  int hang_deadline_exceeded = 0;
  std::uint32_t stream_written = 0;  // Chunks the current Stream call has fully handed over
  bool stream_blocked = false;       // it is waiting for the peer's flow-control window
  bool stream_done = false;
  bool stream_aborted = false;  // a write returned false (call over)

  // EchoStream and Concat: requests read, and how reading ended (ok: the client half-closed).
  int echo_stream_received = 0;
  int echo_stream_ended = 0;
  int echo_stream_write_failed = 0;
  bool echo_stream_reading = false;  // EchoStream waits for its next request
  grpc::StatusCode echo_stream_read_end = grpc::StatusCode::ok;

  // Stall: set to let the handler read; what it read then and how reading ended.
  co::Event stall_release;
  int stall_started = 0;
  int stall_read = 0;
  bool stall_ended = false;
  grpc::StatusCode stall_read_end = grpc::StatusCode::ok;
};

void add_test_service(grpc::Server& server, TestServiceState& state);

}  // namespace dispatchd::test
