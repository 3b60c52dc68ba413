#pragma once
// The client side of our gRPC layer, over h2::ClientConnection: unary and server-streaming calls
// (and, for a proxy, client and bidi streaming through send()), request metadata, deadlines sent
// as grpc-timeout and enforced locally, cancellation by RST_STREAM, and the final Status from
// the trailers (or from the headers of a trailers-only response).
//
// A ClientCall is driven by one coroutine: read() parks on the call's stream until a message,
// the end of the call, or the deadline.

#include <google/protobuf/message_lite.h>

#include <asio/awaitable.hpp>
#include <chrono>
#include <expected>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "dispatchd/grpc/codec.hpp"
#include "dispatchd/grpc/status.hpp"
#include "dispatchd/h2/client_connection.hpp"
#include "dispatchd/h2/stream.hpp"

namespace dispatchd::grpc {

struct CallOptions {
  // Request metadata (lower-case names; "-bin" values are sent as given, already base64).
  std::vector<h2::Header> metadata;
  // Sent as grpc-timeout; the call ends DEADLINE_EXCEEDED locally when it passes.
  std::optional<std::chrono::nanoseconds> timeout;
  std::string authority = "swarm-manager";
  std::string scheme = "http";  // "https" over TLS (informative for the server)
  std::size_t max_message_size = kDefaultMaxMessageSize;
};

class ClientCall {
 public:
  ClientCall() = default;
  ClientCall(ClientCall&&) noexcept = default;
  ClientCall& operator=(ClientCall&&) noexcept = default;
  // An unfinished call is cancelled (RST_STREAM CANCEL).
  ~ClientCall();

  // Starts `path` ("/pkg.Service/Method") with `first` (an encoded message, see
  // encode_message; empty for none) and half-closes when `half_close`.
  static std::expected<ClientCall, Status> start(h2::ClientConnection& conn, std::string_view path,
                                                 const CallOptions& options, std::string first,
                                                 bool half_close);
  // Starts a call with one request message and half-closes (unary and server streaming).
  static std::expected<ClientCall, Status> start(h2::ClientConnection& conn, std::string_view path,
                                                 const google::protobuf::MessageLite& request,
                                                 const CallOptions& options = {});

  // More request messages (client and bidi streaming); `half_close` ends the request.
  void send(const google::protobuf::MessageLite& msg, bool half_close = false);

  // The next response message's bytes, or nullopt when the call is over: status() says how.
  asio::awaitable<std::optional<std::string>> read();
  // read() and parse into `msg`; false when the call is over (or the message did not parse:
  // status() is then INTERNAL).
  asio::awaitable<bool> read(google::protobuf::MessageLite& msg);

  // RST_STREAM CANCEL; the call ends CANCELLED, and a read() parked in another coroutine returns.
  void cancel();

  bool done() const noexcept { return done_; }
  // Response bytes received and not yet read (bounded by the stream window when the connection
  // has reader_flow_control).
  std::size_t buffered_bytes() const noexcept { return stream_ ? stream_->input().size() : 0; }
  const Status& status() const noexcept { return status_; }
  // Response headers and trailers (empty until received).
  const std::vector<h2::Header>& initial_metadata() const noexcept;
  const std::vector<h2::Header>& trailing_metadata() const noexcept;
  // The response was a single HEADERS frame with END_STREAM (gRPC "trailers-only").
  bool trailers_only() const noexcept {
    return stream_ && stream_->ended() && stream_->trailers().empty() &&
           stream_->headers_received();
  }

 private:
  void finish(Status st) {
    done_ = true;
    status_ = std::move(st);
  }
  Status status_from_response() const;

  std::shared_ptr<h2::ClientStream> stream_;
  MessageDecoder decoder_;
  Status status_;
  bool done_ = false;
};

// One request, one response.
asio::awaitable<Status> unary_call(h2::ClientConnection& conn, std::string_view path,
                                   const google::protobuf::MessageLite& request,
                                   google::protobuf::MessageLite& response,
                                   const CallOptions& options = {});

}  // namespace dispatchd::grpc
