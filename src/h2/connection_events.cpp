// What the peer sends, as nghttp2 reports it (the `on_<event>` callbacks, which record state
// and wake coroutines but never call back into nghttp2), and the flow-control windows returned
// after it (docs/architecture.md, "Flow control of requests"). The reader, the writer and the
// timers are in connection.cpp.

#include <string_view>

#include "dispatchd/h2/connection.hpp"
#include "dispatchd/log.hpp"

namespace dispatchd::h2 {

// nghttp2 ignores HEADERS on a client stream ID below the highest one opened (it cannot tell a
// never-used ID from a stream it has forgotten, and a late trailer is not an attack). We can for
// the usual case: clients open IDs in order, so the IDs a client skipped are a few ranges, and
// HEADERS on one of those can only open a stream the client already implicitly closed.
int Connection::on_begin_frame(const nghttp2_frame_hd& hd) {
  if (hd.type != NGHTTP2_HEADERS || hd.stream_id <= 0 || hd.stream_id % 2 == 0) return 0;
  const std::int32_t id = hd.stream_id;
  if (id > highest_stream_id_) {
    if (id > highest_stream_id_ + 2) {
      // Bounded: a client that keeps skipping loses the oldest ranges (those IDs are then
      // left to nghttp2, which ignores them).
      if (skipped_stream_ids_.size() == 8) skipped_stream_ids_.erase(skipped_stream_ids_.begin());
      skipped_stream_ids_.emplace_back(highest_stream_id_ + 2, id - 2);
    }
    highest_stream_id_ = id;
    return 0;
  }
  for (const auto& [first, last] : skipped_stream_ids_) {
    if (id >= first && id <= last) {
      unexpected_stream_id_ = id;
      return NGHTTP2_ERR_CALLBACK_FAILURE;
    }
  }
  return 0;
}

int Connection::on_begin_headers(const nghttp2_frame* frame) {
  if (frame->hd.type != NGHTTP2_HEADERS || frame->headers.cat != NGHTTP2_HCAT_REQUEST) return 0;
  auto* s = new Stream(shared_from_this(), frame->hd.stream_id);
  s->head_->headers.reserve(4);  // content-type, te, user-agent, grpc-timeout: one allocation
  s->add_ref();  // the connection's reference, dropped when nghttp2 closes the stream
  streams_.push_back(*s);
  ++open_streams_;
  ++stats_.streams;
  nghttp2_session_set_stream_user_data(session_, frame->hd.stream_id, s);
  return 0;
}

int Connection::on_header(const nghttp2_frame* frame, const std::uint8_t* name, std::size_t namelen,
                          const std::uint8_t* value, std::size_t valuelen) {
  if (frame->hd.type != NGHTTP2_HEADERS || frame->headers.cat != NGHTTP2_HCAT_REQUEST) return 0;
  auto* s =
      static_cast<Stream*>(nghttp2_session_get_stream_user_data(session_, frame->hd.stream_id));
  if (!s || !s->head_) return 0;
  RequestHead& head = *s->head_;
  // HPACK lets a small frame expand into a large header list: count the decoded size.
  head.header_bytes += namelen + valuelen + 32;
  if (head.header_bytes > settings_.max_header_list_size) {
    log::debug("{}: stream {}: header list over {} bytes", peer(), s->id_,
               settings_.max_header_list_size);
    return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
  }
  std::string_view n(reinterpret_cast<const char*>(name), namelen);
  std::string_view v(reinterpret_cast<const char*>(value), valuelen);
  if (n == ":method") {
    head.method = v;
  } else if (n == ":path") {
    s->path_ = v;
  } else if (!n.empty() && n[0] == ':') {
    // :scheme, :authority: validated by nghttp2, not needed above.
  } else {
    if (n == "content-type") head.content_type = v;
    head.headers.push_back(Header{std::string(n), std::string(v)});
  }
  return 0;
}

int Connection::on_frame_recv(const nghttp2_frame* frame) {
  auto now = std::chrono::steady_clock::now();
  switch (frame->hd.type) {
    // Over a limit: stop nghttp2 at once (CALLBACK_FAILURE) so that nothing more of the buffer is
    // processed, and answer with a single GOAWAY ENHANCE_YOUR_CALM from the read loop.
    case NGHTTP2_RST_STREAM: {
      // Rapid reset (CVE-2023-44487) makes the server start streams for nothing: each is reset
      // before it is answered. A reset of a stream already answered or already closed — a client
      // cancelling a watch, or giving up on a call at its deadline, hundreds of times a second in
      // a busy grpc-go client — cost no more than the call itself and is not counted (nghttp2's
      // backstop, set in the constructor, still bounds them).
      //
      // Nor is a reset at the deadline the client declared, when the server is too far behind to
      // have answered by then: the time since it saw the request plus how late its timer wheel
      // runs reaches the deadline. The client then sent HEADERS and RST_STREAM a deadline apart,
      // but both waited in the socket and arrive in one read. A deadline reached only by the
      // server's lag is one the client could have let the server enforce anyway (answering
      // DEADLINE_EXCEEDED): not counting its reset frees no stream that the client could not have
      // had for the same cost.
      auto* s =
          static_cast<Stream*>(nghttp2_session_get_stream_user_data(session_, frame->hd.stream_id));
      bool unanswered = s && !s->response_started();
      if (auto deadline = unanswered ? s->deadline() : std::nullopt;
          deadline && now + wheel_.lag(now) >= *deadline) {
        ++stats_.resets_at_deadline;
        unanswered = false;
      }
      if (unanswered && !resets_.take(settings_.reset_burst, settings_.reset_rate, now)) {
        calm_down("stream resets");
        return NGHTTP2_ERR_CALLBACK_FAILURE;
      }
      break;
    }
    case NGHTTP2_PING:
      if (frame->hd.flags & NGHTTP2_FLAG_ACK) break;
      ++stats_.pings_in;
      if (!control_frame_allowed(ping_mark_, now)) {
        calm_down("PING frames");
        return NGHTTP2_ERR_CALLBACK_FAILURE;
      }
      break;
    case NGHTTP2_SETTINGS:
      if (!(frame->hd.flags & NGHTTP2_FLAG_ACK) && !control_frame_allowed(settings_mark_, now)) {
        calm_down("SETTINGS frames");
        return NGHTTP2_ERR_CALLBACK_FAILURE;
      }
      if (!preface_seen_) {
        preface_seen_ = true;
        if (!shutting_down_) wheel_.disarm(deadline_);
      }
      break;
    case NGHTTP2_HEADERS: {
      auto* s =
          static_cast<Stream*>(nghttp2_session_get_stream_user_data(session_, frame->hd.stream_id));
      if (!s) break;
      if (frame->headers.cat == NGHTTP2_HCAT_REQUEST)
        handlers_.spawn(sink_.on_request(StreamRef(s)));
      if ((frame->hd.flags & NGHTTP2_FLAG_END_STREAM) && s->listener_)
        s->listener_->on_end_stream();
      break;
    }
    case NGHTTP2_DATA: {
      if (!(frame->hd.flags & NGHTTP2_FLAG_END_STREAM)) break;
      auto* s =
          static_cast<Stream*>(nghttp2_session_get_stream_user_data(session_, frame->hd.stream_id));
      if (s && s->listener_) s->listener_->on_end_stream();
      break;
    }
    default:
      break;
  }
  return 0;
}

int Connection::on_data_chunk(std::int32_t stream_id, const std::uint8_t* data, std::size_t len) {
  connection_window_to_return_ += len;
  auto* s = static_cast<Stream*>(nghttp2_session_get_stream_user_data(session_, stream_id));
  if (s && s->listener_) {
    s->listener_->on_data({data, len});  // the listener returns the stream's window
  } else {
    return_stream_window(stream_id, len);  // nobody will read it
  }
  return 0;
}

void Connection::return_stream_window(std::int32_t stream_id, std::size_t n) {
  if (!session_ || n == 0) return;
  if (receiving_) {
    stream_windows_to_return_.emplace_back(stream_id, n);
    return;
  }
  nghttp2_session_consume_stream(session_, stream_id, n);
  writer_wakeup_.notify();  // a WINDOW_UPDATE may be due
}

void Connection::return_windows() {
  if (connection_window_to_return_ == 0 && stream_windows_to_return_.empty()) return;
  if (connection_window_to_return_ > 0) {
    nghttp2_session_consume_connection(session_, connection_window_to_return_);
    connection_window_to_return_ = 0;
  }
  for (auto [id, n] : stream_windows_to_return_)
    nghttp2_session_consume_stream(session_, id, n);
  // Freed, not kept: an idle connection holds no buffer (this one is rarely needed).
  std::vector<std::pair<std::int32_t, std::size_t>>().swap(stream_windows_to_return_);
  writer_wakeup_.notify();
}

int Connection::on_stream_close(std::int32_t stream_id, std::uint32_t error_code) {
  auto* s = static_cast<Stream*>(nghttp2_session_get_stream_user_data(session_, stream_id));
  if (!s) return 0;
  nghttp2_session_set_stream_user_data(session_, stream_id, nullptr);
  if (error_code != NGHTTP2_NO_ERROR) {
    log::debug("{}: stream {} closed with {}", peer(), stream_id,
               nghttp2_http2_strerror(error_code));
  }
  --open_streams_;
  s->on_closed(error_code);
  return 0;
}

}  // namespace dispatchd::h2
