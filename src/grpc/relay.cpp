// ServerCall::relay: one call passed through to another server (the follower's proxy to the
// leader, docs/behaviour.md §9.4), byte for byte, in both directions at once.
//
// One coroutine drives both directions. The upstream stream's notifications are redirected to
// this call's wakeup, so every source (client DATA and reset, downstream drain, upstream
// headers, DATA, trailers, output drain and close) wakes the same coroutine, which re-scans all
// of them before it parks: nothing announced while it was busy is missed (the select rule of
// docs/architecture.md).
//
// Backpressure: upstream DATA is taken out of the client stream's buffer only when the
// downstream queue is empty, and the upstream window is reopened (ClientStream::consume, with
// reader_flow_control) only once the client has taken those bytes. So a slow agent stops the
// leader at one stream window, and the follower holds at most one window per direction.

#include <nghttp2/nghttp2.h>

#include <charconv>

#include "dispatchd/grpc/metadata.hpp"
#include "dispatchd/grpc/server_call.hpp"
#include "dispatchd/h2/client_connection.hpp"

namespace dispatchd::grpc {

namespace {

// A status for statistics and logs from the gRPC trailers (or trailers-only headers).
Status status_of(const std::vector<h2::Header>& md) {
  std::string_view code, message;
  for (const auto& h : md) {
    if (h.name == "grpc-status") code = h.value;
    if (h.name == "grpc-message") message = h.value;
  }
  int c = -1;
  auto [p, ec] = std::from_chars(code.data(), code.data() + code.size(), c);
  if (code.empty() || ec != std::errc() || p != code.data() + code.size() || c < 0 || c > 16) {
    return Status(StatusCode::unknown, "upstream response without a valid grpc-status");
  }
  return Status(static_cast<StatusCode>(c), percent_decode(message));
}

// Why an upstream stream closed without a response end.
Status status_of_reset(std::uint32_t code) {
  switch (code) {
    case h2::kConnectionLost:
      return {StatusCode::unavailable, "connection to the leader lost"};
    case NGHTTP2_REFUSED_STREAM:
      return {StatusCode::unavailable, "stream refused by the leader"};
    case NGHTTP2_CANCEL:
      return {StatusCode::cancelled, "stream cancelled by the leader"};
    case NGHTTP2_ENHANCE_YOUR_CALM:
      return {StatusCode::resource_exhausted, "leader said ENHANCE_YOUR_CALM"};
    default:
      return {StatusCode::internal,
              std::string("leader reset the stream: ") + nghttp2_http2_strerror(code)};
  }
}

}  // namespace

asio::awaitable<RelayOutcome> ServerCall::relay(h2::ClientStream& up, bool stream_requests,
                                                bool allow_retry) {
  up.set_waiter(&wakeup_);
  struct Restore {
    h2::ClientStream& s;
    ~Restore() { s.set_waiter(nullptr); }
  } restore{up};

  bool half_closed = !stream_requests;
  std::size_t owed = 0;  // upstream bytes handed downstream, their window not yet reopened
  for (;;) {
    if (cancelled_.is_set()) {
      // The client reset the stream, the deadline passed or the server is shutting down.
      up.reset(NGHTTP2_CANCEL);
      co_return RelayOutcome{
          deadline_exceeded_ ? Status(StatusCode::deadline_exceeded, "context deadline exceeded")
                             : Status(StatusCode::cancelled, "context canceled")};
    }
    if (owed > 0 && stream_->pending_bytes() == 0) {
      up.consume(owed);
      owed = 0;
    }

    // Client to upstream: one message in flight at a time.
    if (!half_closed && !up.closed() && up.pending_output() == 0) {
      if (has_unread()) {
        up.send(frame_payload(take_unread()), false);
      } else if (!error_.is_ok()) {
        up.reset(NGHTTP2_CANCEL);
        Status st = error_;
        finish(st);
        co_return RelayOutcome{std::move(st)};
      } else if (end_stream_) {
        if (decoder_.mid_message()) {
          up.reset(NGHTTP2_CANCEL);
          Status st(StatusCode::internal, "grpc: request message truncated at end of stream");
          finish(st);
          co_return RelayOutcome{std::move(st)};
        }
        up.send(std::string(), true);
        half_closed = true;
      }
    }

    // Upstream to client.
    // A response that is one HEADERS frame with END_STREAM goes on as one (gRPC trailers-only).
    const bool trailers_only =
        up.ended() && up.trailers().empty() && up.input().empty() && !stream_->response_started();
    if (up.headers_received() && !stream_->response_started() && !trailers_only) {
      stream_->submit_headers(up.headers());
    }
    if (!up.input().empty() && stream_->response_started() && stream_->pending_bytes() == 0 &&
        owed == 0) {
      std::string bytes = std::move(up.input());
      up.input().clear();
      owed = bytes.size();
      stream_->enqueue(h2::Segment::own(std::move(bytes)));
      continue;  // the drain may already be due: scan again before parking
    }
    if (up.ended() && up.input().empty() && stream_->pending_bytes() == 0) {
      finished_ = true;
      wheel_.disarm(deadline_entry_);
      if (trailers_only) {
        stream_->submit_trailers_only(up.headers());
        co_return RelayOutcome{status_of(up.headers())};
      }
      stream_->finish(up.trailers());
      co_return RelayOutcome{status_of(up.trailers())};
    }
    if (up.closed() && !up.ended()) {
      Status st = status_of_reset(up.close_code());
      const bool lost =
          up.close_code() == h2::kConnectionLost || up.close_code() == NGHTTP2_REFUSED_STREAM;
      if (allow_retry && lost && !up.headers_received() && !stream_->response_started()) {
        co_return RelayOutcome{std::move(st), true};
      }
      finish(st);
      co_return RelayOutcome{std::move(st)};
    }
    co_await wakeup_.async_park();
  }
}

}  // namespace dispatchd::grpc
