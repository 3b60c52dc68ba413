#pragma once
// ServerCall: the gRPC state of one stream — the request decoder, the deadline, the response —
// and the ServerContext its handler sees. It lives in the coroutine that serves the stream.

#include <cstdint>
#include <expected>
#include <optional>
#include <string>
#include <vector>

#include "dispatchd/co/intrusive_list.hpp"
#include "dispatchd/co/timer_wheel.hpp"
#include "dispatchd/co/wakeup.hpp"
#include "dispatchd/grpc/codec.hpp"
#include "dispatchd/grpc/server_context.hpp"
#include "dispatchd/grpc/status.hpp"
#include "dispatchd/h2/stream.hpp"

namespace dispatchd::h2 {
class ClientStream;
}

namespace dispatchd::grpc {

// How a relayed call ended (ServerCall::relay).
struct RelayOutcome {
  Status status;  // the upstream's status as the client got it, or why the relay ended
  // The upstream failed before answering (connection lost, stream refused) and nothing was
  // sent to the client: the call may be tried again elsewhere. The call is not finished.
  bool retryable = false;
};

class ServerCall final : public ServerContext, public co::ListHook, private h2::StreamListener {
 public:
  ServerCall(h2::StreamRef stream, co::TimerWheel& wheel, std::size_t max_message_size);
  ~ServerCall() override;

  ServerContext& context() noexcept { return *this; }
  h2::Stream& stream() noexcept { return *stream_; }

  // Arms the deadline (grpc-timeout).
  void set_timeout(std::chrono::nanoseconds d);

  // The single request message of a unary or server-streaming call. Any later DATA is ignored.
  asio::awaitable<std::expected<std::string, Status>> read_request();

  // The next message of a client- or bidi-streaming call; nullopt once the client has half-closed
  // on a message boundary. Errors: CANCELLED once the call is cancelled (client reset, deadline,
  // shutdown), INTERNAL for a message cut by END_STREAM or malformed framing. A peer that sends
  // faster than the handler reads is held back by HTTP/2 flow control: the bytes of messages
  // not yet read keep the stream's window closed. Reads and writes of one call come from one
  // coroutine at a time.
  asio::awaitable<std::expected<std::optional<std::string>, Status>> read_message();

  // Sends one framed message (prefix included) and waits until nghttp2 has taken all of it,
  // which happens only as fast as the peer's flow-control window allows: a writer never runs
  // ahead of its reader by more than one message. False when the call is over.
  asio::awaitable<bool> write(h2::Segment framed);
  // One message given in pieces (prefix first), e.g. a per-stream head and a part shared by
  // every stream: the pieces go to nghttp2 without being joined.
  asio::awaitable<bool> write(std::vector<h2::Segment> pieces);
  // Enqueues without waiting (unary responses, which finish right after).
  void send(h2::Segment framed);

  // Ends the call with a status: trailers, or a trailers-only response if nothing was sent.
  // Later calls do nothing.
  void finish(const Status& status);
  bool finished() const noexcept { return finished_; }

  // Ends the call from the server side (shutdown): cancels the handler.
  void cancel() noexcept { cancelled_.set(); }

  // Relays this call to `upstream`, the same call opened on another server (a proxy to the
  // leader), until either side ends it (src/grpc/relay.cpp). Bytes pass unchanged: the
  // upstream's response headers, DATA and trailers reach the client as they came, and with
  // `stream_requests` every request message (read as read_message does) goes upstream as it
  // is read, then the half-close; otherwise the request was read and sent already. Each
  // direction holds at most one flow-control window: upstream DATA is taken only once the
  // client has taken the last batch, and the next request message only once nghttp2 has taken
  // the previous one. Cancellation (client reset, deadline, shutdown) resets the upstream.
  // The call is finished on return unless the outcome is retryable (and `allow_retry`).
  asio::awaitable<RelayOutcome> relay(h2::ClientStream& upstream, bool stream_requests,
                                      bool allow_retry);

 private:
  // Waits until nghttp2 has taken everything queued; false when the call is over.
  asio::awaitable<bool> drained();
  class DeadlineEntry final : public co::TimerWheel::Entry {
   public:
    explicit DeadlineEntry(ServerCall& c) : call_(c) {}

   private:
    void on_expire() override { call_.on_deadline(); }
    ServerCall& call_;
  };

  void on_data(std::span<const std::uint8_t> data) override;
  void decode(std::span<const std::uint8_t> data);
  // Gives the stream's window back for the bytes held while messages were unread.
  void return_held();
  void on_end_stream() override;
  void on_close(std::uint32_t error_code) override;
  void on_deadline();
  void start_response();

  co::TimerWheel& wheel_;
  DeadlineEntry deadline_entry_{*this};
  bool has_unread() const noexcept { return next_message_ < messages_.size(); }
  std::string take_unread();

  MessageDecoder decoder_;
  co::Wakeup wakeup_;
  // Decoded, not yet read; empty (no allocation) for most calls, which read one message.
  std::vector<std::string> messages_;
  Status error_;
  std::uint32_t next_message_ = 0;  // index of the first unread entry of messages_
  std::uint32_t held_ = 0;          // DATA bytes received while messages were unread
  bool single_message_ = false;     // read_request took its message: ignore further DATA
  bool end_stream_ = false;
  bool finished_ = false;
};

}  // namespace dispatchd::grpc
