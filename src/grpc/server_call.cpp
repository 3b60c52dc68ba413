#include "dispatchd/grpc/server_call.hpp"

#include <nghttp2/nghttp2.h>

#include "dispatchd/grpc/metadata.hpp"
#include "dispatchd/h2/connection.hpp"

namespace dispatchd::grpc {

namespace {
const std::vector<h2::Header>& response_headers() {
  static const std::vector<h2::Header> h = {{":status", "200"},
                                            {"content-type", "application/grpc"}};
  return h;
}

std::vector<h2::Header> status_headers(const Status& st, bool trailers_only) {
  std::vector<h2::Header> h;
  h.reserve(4);
  if (trailers_only) {
    h.push_back({":status", "200"});
    h.push_back({"content-type", "application/grpc"});
  }
  h.push_back({"grpc-status", std::to_string(static_cast<int>(st.code()))});
  if (!st.message().empty()) h.push_back({"grpc-message", percent_encode(st.message())});
  return h;
}
}  // namespace

const net::PeerIdentity* ServerContext::peer_identity() const noexcept {
  return stream_->connection().transport().identity();
}

std::optional<std::string_view> ServerContext::metadata(std::string_view key) const noexcept {
  for (const auto& h : stream_->headers()) {
    if (h.name == key) return std::string_view(h.value);
  }
  return std::nullopt;
}

std::vector<std::string_view> ServerContext::metadata_all(std::string_view key) const {
  std::vector<std::string_view> out;
  for (const auto& h : stream_->headers()) {
    if (h.name == key) out.emplace_back(h.value);
  }
  return out;
}

std::optional<std::string> ServerContext::binary_metadata(std::string_view key) const {
  auto v = metadata(key);
  if (!v) return std::nullopt;
  return base64_decode(*v);
}

ServerCall::ServerCall(h2::StreamRef stream, co::TimerWheel& wheel, std::size_t max_message_size)
    : ServerContext(std::move(stream)), wheel_(wheel), decoder_(max_message_size) {
  stream_->set_listener(this);
  stream_->set_drain_waiter(&wakeup_);
  if (stream_->closed()) cancelled_.set();
}

ServerCall::~ServerCall() {
  return_held();
  wheel_.disarm(deadline_entry_);
  stream_->set_listener(nullptr);
  stream_->set_drain_waiter(nullptr);
}

void ServerCall::set_timeout(std::chrono::nanoseconds d) {
  // Beyond a century a deadline is no deadline (and now + d must not overflow).
  if (d > std::chrono::hours(24 * 365 * 100)) return;
  const auto deadline = Clock::now() + std::chrono::duration_cast<Clock::duration>(d);
  wheel_.arm(deadline_entry_, deadline);
  stream_->set_deadline(deadline);
}

void ServerCall::on_deadline() {
  deadline_exceeded_ = true;
  finish(Status(StatusCode::deadline_exceeded, "context deadline exceeded"));
  // The client may still be sending; the status is final, so stop the stream.
  cancelled_.set();
  wakeup_.notify();
}

void ServerCall::on_data(std::span<const std::uint8_t> data) {
  const std::size_t n = data.size();
  decode(data);
  // Flow control: while the handler has messages it has not read, what arrives stays counted
  // against the stream's window, so a peer ahead of its handler stops at the window's end.
  // Otherwise (a message still incomplete, DATA ignored after the request or an error) the
  // bytes go back at once: a message larger than the window can always arrive whole.
  if (has_unread()) {
    held_ += static_cast<std::uint32_t>(n);
  } else {
    stream_->return_window(n);
  }
}

void ServerCall::decode(std::span<const std::uint8_t> data) {
  while (!data.empty()) {
    if (single_message_ || !error_.is_ok()) return;
    switch (decoder_.feed(data)) {
      case MessageDecoder::Result::need_more:
        break;
      case MessageDecoder::Result::message:
        messages_.push_back(decoder_.take());
        wakeup_.notify();
        break;
      case MessageDecoder::Result::error:
        error_ = decoder_.status();
        wakeup_.notify();
        return;
    }
  }
}

void ServerCall::return_held() {
  if (held_ == 0) return;
  stream_->return_window(held_);
  held_ = 0;
}

void ServerCall::on_end_stream() {
  end_stream_ = true;
  wakeup_.notify();
}

void ServerCall::on_close(std::uint32_t) {
  cancelled_.set();
  wakeup_.notify();
}

std::string ServerCall::take_unread() {
  std::string m = std::move(messages_[next_message_++]);
  if (next_message_ == messages_.size()) {
    messages_.clear();  // keeps the capacity: a streaming call reuses it for the next batch
    next_message_ = 0;
    return_held();  // everything read: the peer may send a window's worth again
  }
  return m;
}

asio::awaitable<std::expected<std::string, Status>> ServerCall::read_request() {
  for (;;) {
    // A message that arrived before an error (or before a flood of extra messages) is the
    // request: what follows it is not read.
    if (has_unread()) {
      std::string m = take_unread();
      single_message_ = true;
      std::vector<std::string>().swap(messages_);  // long-lived calls keep no buffer
      next_message_ = 0;
      return_held();
      co_return m;
    }
    if (!error_.is_ok()) co_return std::unexpected(error_);
    if (cancelled_.is_set()) {
      co_return std::unexpected(Status(StatusCode::cancelled, "context canceled"));
    }
    if (end_stream_) {
      co_return std::unexpected(
          decoder_.mid_message()
              ? Status(StatusCode::internal, "grpc: request message truncated at end of stream")
              : Status(StatusCode::internal, "grpc: request stream ended without a message"));
    }
    co_await wakeup_.async_park();
  }
}

asio::awaitable<std::expected<std::optional<std::string>, Status>> ServerCall::read_message() {
  for (;;) {
    // Cancellation wins over buffered messages: the handler should stop, not drain them.
    if (cancelled_.is_set()) {
      co_return std::unexpected(Status(StatusCode::cancelled, "context canceled"));
    }
    if (has_unread()) co_return take_unread();
    if (!error_.is_ok()) co_return std::unexpected(error_);
    if (end_stream_) {
      if (decoder_.mid_message()) {
        co_return std::unexpected(
            Status(StatusCode::internal, "grpc: request message truncated at end of stream"));
      }
      co_return std::nullopt;
    }
    co_await wakeup_.async_park();
  }
}

void ServerCall::start_response() {
  if (!stream_->response_started()) stream_->submit_headers(response_headers());
}

void ServerCall::send(h2::Segment framed) {
  if (finished_ || cancelled_.is_set()) return;
  start_response();
  stream_->enqueue(std::move(framed));
}

asio::awaitable<bool> ServerCall::write(h2::Segment framed) {
  if (finished_ || cancelled_.is_set() || stream_->closed()) co_return false;
  start_response();
  stream_->enqueue(std::move(framed));
  co_return co_await drained();
}

asio::awaitable<bool> ServerCall::write(std::vector<h2::Segment> pieces) {
  if (finished_ || cancelled_.is_set() || stream_->closed()) co_return false;
  start_response();
  stream_->enqueue(std::move(pieces));
  co_return co_await drained();
}

asio::awaitable<bool> ServerCall::drained() {
  while (stream_->pending_bytes() > 0 && !cancelled_.is_set() && !stream_->closed()) {
    co_await wakeup_.async_park();
  }
  co_return !cancelled_.is_set() && !stream_->closed();
}

void ServerCall::finish(const Status& status) {
  if (finished_) return;
  finished_ = true;
  wheel_.disarm(deadline_entry_);
  if (stream_->closed()) return;
  if (!stream_->response_started()) {
    stream_->submit_trailers_only(status_headers(status, true));
  } else {
    stream_->finish(status_headers(status, false));
  }
}

}  // namespace dispatchd::grpc
