#include "dispatchd/grpc/client.hpp"

#include <charconv>

#include "dispatchd/grpc/metadata.hpp"

namespace dispatchd::grpc {

namespace {

std::string_view find(const std::vector<h2::Header>& hs, std::string_view name) {
  for (const auto& h : hs)
    if (h.name == name) return h.value;
  return {};
}

bool has(const std::vector<h2::Header>& hs, std::string_view name) {
  for (const auto& h : hs)
    if (h.name == name) return true;
  return false;
}

// gRPC's mapping of HTTP statuses for responses that are not gRPC (doc/http-grpc-status-mapping).
StatusCode from_http(int http) {
  switch (http) {
    case 400:
      return StatusCode::internal;
    case 401:
      return StatusCode::unauthenticated;
    case 403:
      return StatusCode::permission_denied;
    case 404:
      return StatusCode::unimplemented;
    case 429:
    case 502:
    case 503:
    case 504:
      return StatusCode::unavailable;
    default:
      return StatusCode::unknown;
  }
}

Status from_reset(std::uint32_t code) {
  switch (code) {
    case h2::kConnectionLost:
      return {StatusCode::unavailable, "connection lost"};
    case NGHTTP2_NO_ERROR:
      return {StatusCode::internal, "stream closed without a status"};
    case NGHTTP2_REFUSED_STREAM:
      return {StatusCode::unavailable, "stream refused by the server"};
    case NGHTTP2_CANCEL:
      return {StatusCode::cancelled, "stream cancelled by the server"};
    case NGHTTP2_ENHANCE_YOUR_CALM:
      return {StatusCode::resource_exhausted, "server said ENHANCE_YOUR_CALM"};
    case NGHTTP2_INADEQUATE_SECURITY:
      return {StatusCode::permission_denied, "inadequate security"};
    default:
      return {StatusCode::internal, std::string("stream reset: ") + nghttp2_http2_strerror(code)};
  }
}

const std::vector<h2::Header> kNoHeaders;

}  // namespace

ClientCall::~ClientCall() {
  if (stream_ && !done_ && !stream_->closed()) stream_->reset(NGHTTP2_CANCEL);
}

std::expected<ClientCall, Status> ClientCall::start(h2::ClientConnection& conn,
                                                    std::string_view path,
                                                    const CallOptions& options, std::string first,
                                                    bool half_close) {
  std::vector<h2::Header> headers;
  headers.reserve(7 + options.metadata.size());
  headers.push_back({":method", "POST"});
  headers.push_back({":scheme", options.scheme});
  headers.push_back({":path", std::string(path)});
  headers.push_back({":authority", options.authority});
  headers.push_back({"content-type", "application/grpc"});
  headers.push_back({"te", "trailers"});
  if (options.timeout) {
    headers.push_back({"grpc-timeout", format_grpc_timeout(*options.timeout)});
  }
  for (const auto& m : options.metadata)
    headers.push_back(m);
  auto s = conn.open(headers, std::move(first), half_close);
  if (!s) return std::unexpected(Status(StatusCode::unavailable, s.error()));
  ClientCall call;
  call.stream_ = std::move(*s);
  call.decoder_ = MessageDecoder(options.max_message_size);
  if (options.timeout) {
    call.stream_->set_deadline(
        co::TimerWheel::Clock::now() +
        std::chrono::duration_cast<co::TimerWheel::Clock::duration>(*options.timeout));
  }
  return call;
}

std::expected<ClientCall, Status> ClientCall::start(h2::ClientConnection& conn,
                                                    std::string_view path,
                                                    const google::protobuf::MessageLite& request,
                                                    const CallOptions& options) {
  return start(conn, path, options, encode_message(request), true);
}

void ClientCall::send(const google::protobuf::MessageLite& msg, bool half_close) {
  if (done_ || !stream_) return;
  stream_->send(encode_message(msg), half_close);
}

void ClientCall::cancel() {
  if (done_ || !stream_) return;
  stream_->reset(NGHTTP2_CANCEL);
  finish(Status(StatusCode::cancelled, "call cancelled by the client"));
  // A reader parked in read() (another coroutine cancels, e.g. a watchdog) sees the end now.
  stream_->wakeup().notify();
}

const std::vector<h2::Header>& ClientCall::initial_metadata() const noexcept {
  return stream_ ? stream_->headers() : kNoHeaders;
}

const std::vector<h2::Header>& ClientCall::trailing_metadata() const noexcept {
  if (!stream_) return kNoHeaders;
  // Trailers-only: the headers are the trailers.
  return stream_->trailers().empty() && stream_->ended() ? stream_->headers() : stream_->trailers();
}

Status ClientCall::status_from_response() const {
  const auto& hs = stream_->headers();
  std::string_view http = find(hs, ":status");
  int http_status = 0;
  std::from_chars(http.data(), http.data() + http.size(), http_status);
  const auto& md = trailing_metadata();
  if (http_status != 200 && !has(md, "grpc-status")) {
    return {from_http(http_status), "unexpected HTTP status " + std::string(http)};
  }
  std::string_view content_type = find(hs, "content-type");
  if (!content_type.starts_with("application/grpc")) {
    return {StatusCode::unknown,
            "response is not gRPC (content-type \"" + std::string(content_type) + "\")"};
  }
  if (decoder_.mid_message()) return {StatusCode::internal, "response ended inside a message"};
  std::string_view code = find(md, "grpc-status");
  if (code.empty()) return {StatusCode::internal, "response without grpc-status"};
  int c = -1;
  auto [p, ec] = std::from_chars(code.data(), code.data() + code.size(), c);
  if (ec != std::errc() || p != code.data() + code.size() || c < 0) {
    return {StatusCode::internal, "invalid grpc-status \"" + std::string(code) + "\""};
  }
  return {static_cast<StatusCode>(c), percent_decode(find(md, "grpc-message"))};
}

asio::awaitable<std::optional<std::string>> ClientCall::read() {
  if (!stream_ && !done_) finish(Status(StatusCode::internal, "call not started"));
  for (;;) {
    if (done_) co_return std::nullopt;
    std::string& in = stream_->input();
    if (!in.empty()) {
      std::span<const std::uint8_t> data(reinterpret_cast<const std::uint8_t*>(in.data()),
                                         in.size());
      auto r = decoder_.feed(data);
      std::size_t taken = in.size() - data.size();
      in.erase(0, taken);
      stream_->consume(taken);
      if (r == MessageDecoder::Result::message) co_return decoder_.take();
      if (r == MessageDecoder::Result::error) {
        stream_->reset(NGHTTP2_CANCEL);
        finish(decoder_.status());
        co_return std::nullopt;
      }
    }
    if (stream_->expired()) {
      stream_->reset(NGHTTP2_CANCEL);
      finish(Status(StatusCode::deadline_exceeded, "context deadline exceeded"));
      co_return std::nullopt;
    }
    if (stream_->ended()) {
      finish(status_from_response());
      co_return std::nullopt;
    }
    if (stream_->closed()) {
      Status st = from_reset(stream_->close_code());
      const std::string& why = stream_->connection().failure();
      if (stream_->close_code() == h2::kConnectionLost && !why.empty()) {
        st = Status(st.code(), st.message() + ": " + why);
      }
      finish(std::move(st));
      co_return std::nullopt;
    }
    co_await stream_->wakeup().async_park();
  }
}

asio::awaitable<bool> ClientCall::read(google::protobuf::MessageLite& msg) {
  auto bytes = co_await read();
  if (!bytes) co_return false;
  if (!msg.ParseFromString(*bytes)) {
    cancel();
    status_ = Status(StatusCode::internal, "grpc: failed to unmarshal the received message");
    co_return false;
  }
  co_return true;
}

asio::awaitable<Status> unary_call(h2::ClientConnection& conn, std::string_view path,
                                   const google::protobuf::MessageLite& request,
                                   google::protobuf::MessageLite& response,
                                   const CallOptions& options) {
  auto call = ClientCall::start(conn, path, request, options);
  if (!call) co_return call.error();
  bool got = co_await call->read(response);
  if (!got)
    co_return call->status().is_ok()
        ? Status(StatusCode::unimplemented, "grpc: no response message in a unary call")
        : call->status();
  auto more = co_await call->read();
  if (more) {
    call->cancel();
    co_return Status(StatusCode::internal, "grpc: more than one response in a unary call");
  }
  co_return call->status();
}

}  // namespace dispatchd::grpc
