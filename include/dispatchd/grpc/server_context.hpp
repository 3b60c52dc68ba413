#pragma once
// ServerContext: what a handler knows about its call — deadline, cancellation, peer, metadata.

#include <chrono>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "dispatchd/co/event.hpp"
#include "dispatchd/h2/stream.hpp"
#include "dispatchd/net/identity.hpp"

namespace dispatchd::grpc {

class ServerContext {
 public:
  using Clock = std::chrono::steady_clock;

  ServerContext(const ServerContext&) = delete;
  ServerContext& operator=(const ServerContext&) = delete;

  // Set when the client cancels (RST_STREAM), the connection is lost, the deadline passes or
  // the server shuts the call down. Handlers select on it.
  co::Event& cancelled() noexcept { return cancelled_; }
  bool is_cancelled() const noexcept { return cancelled_.is_set(); }
  bool deadline_exceeded() const noexcept { return deadline_exceeded_; }
  std::optional<Clock::time_point> deadline() const noexcept { return stream_->deadline(); }

  // "ip:port" of the client.
  const std::string& peer() const noexcept { return stream_->peer(); }
  // What TLS proved about the client; nullptr on a plaintext connection.
  const net::PeerIdentity* peer_identity() const noexcept;
  std::string_view method_path() const noexcept { return stream_->path(); }

  // First value of an ASCII metadata key (lower case), or nullopt.
  std::optional<std::string_view> metadata(std::string_view key) const noexcept;
  // Every value of a key, in order.
  std::vector<std::string_view> metadata_all(std::string_view key) const;
  // A "-bin" key, base64-decoded; nullopt when absent or not valid base64.
  std::optional<std::string> binary_metadata(std::string_view key) const;
  const std::vector<h2::Header>& raw_metadata() const noexcept { return stream_->headers(); }
  // Frees the request's metadata once the handler has read what it needs: a long-lived stream
  // (Session, Assignments) need not keep it, ~400 B each. metadata() finds none afterwards.
  void release_metadata() noexcept { stream_->release_headers(); }

 protected:
  explicit ServerContext(h2::StreamRef stream) : stream_(std::move(stream)) {}
  ~ServerContext() = default;

  h2::StreamRef stream_;
  co::Event cancelled_;
  bool deadline_exceeded_ = false;
};

}  // namespace dispatchd::grpc
