#pragma once
// An etcd v3 client on our own gRPC client (grpc::ClientCall over h2::ClientConnection): the
// building block of issue 16's replicated store, where several managers share their state and
// elect a leader through etcd.
//
// One Client keeps at most one HTTP/2 connection, to one of its endpoints at a time; when that
// connection fails (or cannot be made) the next call connects to the next endpoint, round robin.
// Every call has a deadline (the request timeout unless given): it bounds connecting as well as
// the call itself and travels to etcd as grpc-timeout. A call that found no endpoint answering
// fails UNAVAILABLE; reads (range) move on to the next endpoint within their deadline, writes are
// never retried (etcd may have applied them).
//
// Streams: a Watcher is one Watch stream with one watch on it; a LeaseKeeper renews one lease
// over a LeaseKeepAlive stream. The connection runs with reader_flow_control, so a watcher whose
// consumer is slow holds at most one HTTP/2 stream window of responses here and etcd keeps the
// rest (its slow-watcher path replays from its history): no event is lost or reordered, and
// other calls on the connection keep flowing.
//
// Everything runs on the io_context of the TimerWheel given to create(); a Client, Watcher and
// LeaseKeeper must outlive the coroutines that use them.

#include <asio/awaitable.hpp>
#include <chrono>
#include <cstdint>
#include <expected>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "dispatchd/co/timer_wheel.hpp"
#include "dispatchd/co/wakeup.hpp"
#include "dispatchd/etcd/endpoint.hpp"
#include "dispatchd/grpc/client.hpp"
#include "dispatchd/status.hpp"
#include "etcd/etcdserver/etcdserverpb/rpc.pb.h"

namespace dispatchd::net {
class TlsClientContext;
class TlsClientCertificate;
}  // namespace dispatchd::net

namespace dispatchd::etcd {

namespace pb = ::etcdserverpb;
template <class T>
using Result = std::expected<T, Status>;
using Clock = co::TimerWheel::Clock;
using Timeout = std::optional<std::chrono::milliseconds>;

struct ClientOptions {
  // "HOST:PORT" or "http://HOST:PORT" (h2c), "https://HOST:PORT" (TLS; needs ca_file).
  std::vector<std::string> endpoints;
  // Bounds one connection attempt (TCP, and TLS handshake) within the call's deadline.
  std::chrono::milliseconds dial_timeout{2000};
  // The deadline of calls that do not give one.
  std::chrono::milliseconds request_timeout{5000};
  // TLS: the CA the servers' certificates chain to, and optionally our client certificate.
  std::string ca_file, cert_file, key_file;
  // Checked against the server certificate; the endpoint's host when empty.
  std::string server_name;
  // Largest response accepted (a range over many keys, a large watch batch).
  std::size_t max_message_size = 64u << 20;
  // Per-stream HTTP/2 window: at most this many response bytes wait here for a slow reader.
  std::uint32_t stream_window = 1u << 20;
};

// The range_end that selects every key starting with `prefix` (etcd's "prefix end": the prefix
// with its last byte below 0xff incremented; "\0" — every key — when there is none).
std::string prefix_end(std::string_view prefix);

// Transaction building blocks.
pb::Compare compare_mod_revision(std::string key, pb::Compare::CompareResult result,
                                 std::int64_t revision);
pb::Compare compare_create_revision(std::string key, pb::Compare::CompareResult result,
                                    std::int64_t revision);
pb::Compare compare_version(std::string key, pb::Compare::CompareResult result,
                            std::int64_t version);
pb::Compare compare_value(std::string key, pb::Compare::CompareResult result, std::string value);
pb::Compare compare_lease(std::string key, pb::Compare::CompareResult result, std::int64_t lease);
pb::RequestOp op_put(std::string key, std::string value, std::int64_t lease = 0);
pb::RequestOp op_range(std::string key, std::string range_end = {});
pb::RequestOp op_delete(std::string key, std::string range_end = {});

struct WatchOptions {
  std::string key;
  // Empty: just `key`; prefix_end(key): every key under it; "\0": every key from `key` on.
  std::string range_end;
  // The first revision to deliver (inclusive); 0: from now on.
  std::int64_t start_revision = 0;
  // Deliver each event's previous key-value (DELETE events carry the deleted value).
  bool prev_kv = false;
  // Ask etcd for periodic empty responses carrying the current revision; next() returns them.
  bool progress_notify = false;
  // Bounds opening the stream and etcd's "created" answer.
  Timeout create_timeout;
};

class Client;

// One Watch stream with one watch. Pulled by one coroutine through next().
class Watcher {
 public:
  Watcher(const Watcher&) = delete;
  Watcher& operator=(const Watcher&) = delete;
  ~Watcher();

  std::int64_t id() const noexcept { return id_; }
  // The store revision when etcd created the watch.
  std::int64_t created_revision() const noexcept { return created_revision_; }

  // The next response carrying events (every event exactly once, in revision order), or a
  // progress notification when asked for. Errors end the watch:
  //  - OUT_OF_RANGE: the history from start_revision was compacted; compact_revision() is the
  //    oldest revision still available (watch again from it, after a fresh range);
  //  - CANCELLED: etcd cancelled the watch (the message says why) or cancel() was called;
  //  - UNAVAILABLE, DEADLINE_EXCEEDED, ...: the stream failed (connection lost).
  asio::awaitable<Result<pb::WatchResponse>> next();
  // Ends the watch from this side; a parked next() returns CANCELLED.
  void cancel();

  std::int64_t compact_revision() const noexcept { return compact_revision_; }
  // Response bytes received and not read yet (bounded by ClientOptions::stream_window).
  std::size_t buffered_bytes() const noexcept { return call_.buffered_bytes(); }

 private:
  friend class Client;
  explicit Watcher(grpc::ClientCall call, bool progress_notify)
      : call_(std::move(call)), progress_notify_(progress_notify) {}

  grpc::ClientCall call_;
  bool progress_notify_ = false;
  std::int64_t id_ = -1;
  std::int64_t created_revision_ = 0;
  std::int64_t compact_revision_ = 0;
  std::optional<Status> ended_;
};

// Keeps one lease alive: a renewal every third of its TTL over a LeaseKeepAlive stream, which is
// reopened (through the client, so on another endpoint if need be) when it fails.
class LeaseKeeper {
 public:
  LeaseKeeper(Client& client, std::int64_t lease_id, std::chrono::seconds ttl);
  LeaseKeeper(const LeaseKeeper&) = delete;
  LeaseKeeper& operator=(const LeaseKeeper&) = delete;
  ~LeaseKeeper();

  // Runs until stop() (OK) or until the lease is lost:
  //  - NOT_FOUND: etcd answered that the lease no longer exists (expired or revoked);
  //  - DEADLINE_EXCEEDED: no renewal succeeded before the TTL of the last one ran out, so the
  //    lease must be presumed expired (etcd unreachable).
  asio::awaitable<Status> run();
  void stop();

  std::int64_t id() const noexcept { return id_; }
  // The TTL etcd granted at the last renewal.
  std::chrono::seconds ttl() const noexcept { return ttl_; }
  std::uint64_t renewals() const noexcept { return renewals_; }
  // When the lease expires at the latest unless renewed (measured from when the last successful
  // renewal was sent, so it errs early).
  Clock::time_point expiry() const noexcept { return expiry_; }

 private:
  asio::awaitable<Status> renew_once(Clock::time_point deadline);
  asio::awaitable<void> pause_until(Clock::time_point t);

  Client& client_;
  std::int64_t id_;
  std::chrono::seconds ttl_;
  Clock::time_point expiry_;
  std::uint64_t renewals_ = 0;
  bool stopping_ = false;
  std::optional<grpc::ClientCall> stream_;
  co::Wakeup wakeup_;
  co::TimerCallback<std::function<void()>> timer_;
  co::TimerCallback<std::function<void()>> watchdog_;
};

class Client {
 public:
  static Result<std::unique_ptr<Client>> create(co::TimerWheel& wheel, ClientOptions options);
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;
  // Closes the connection.
  ~Client();

  // KV. `range_end` as in WatchOptions; `revision` 0 reads the latest.
  asio::awaitable<Result<pb::RangeResponse>> range(std::string key, std::string range_end = {},
                                                   std::int64_t revision = 0, Timeout timeout = {});
  asio::awaitable<Result<pb::RangeResponse>> range(const pb::RangeRequest& request,
                                                   Timeout timeout = {});
  asio::awaitable<Result<pb::PutResponse>> put(std::string key, std::string value,
                                               std::int64_t lease = 0, Timeout timeout = {});
  asio::awaitable<Result<pb::DeleteRangeResponse>> delete_range(std::string key,
                                                                std::string range_end = {},
                                                                bool prev_kv = false,
                                                                Timeout timeout = {});
  asio::awaitable<Result<pb::TxnResponse>> txn(std::vector<pb::Compare> compare,
                                               std::vector<pb::RequestOp> success,
                                               std::vector<pb::RequestOp> failure = {},
                                               Timeout timeout = {});
  // Writes `key` only if its mod revision is still `mod_revision` (0: only if it does not
  // exist) — the fencing write. succeeded() says whether it was written; when it was not, the
  // response holds the key's current state (a range of it) in responses(0).
  asio::awaitable<Result<pb::TxnResponse>> put_if_mod_revision(std::string key, std::string value,
                                                               std::int64_t mod_revision,
                                                               std::int64_t lease = 0,
                                                               Timeout timeout = {});
  // Discards the history before `revision` (watches from before it then report compaction).
  asio::awaitable<Result<pb::CompactionResponse>> compact(std::int64_t revision,
                                                          bool physical = true,
                                                          Timeout timeout = {});

  // Leases. `id` 0 lets etcd choose.
  asio::awaitable<Result<pb::LeaseGrantResponse>> lease_grant(std::chrono::seconds ttl,
                                                              std::int64_t id = 0,
                                                              Timeout timeout = {});
  asio::awaitable<Result<pb::LeaseRevokeResponse>> lease_revoke(std::int64_t id,
                                                                Timeout timeout = {});
  asio::awaitable<Result<pb::LeaseTimeToLiveResponse>> lease_time_to_live(std::int64_t id,
                                                                          bool keys = false,
                                                                          Timeout timeout = {});

  // Opens a Watch stream and creates the watch; fails when etcd refuses it.
  asio::awaitable<Result<std::unique_ptr<Watcher>>> watch(WatchOptions options);

  // Any other unary etcd RPC ("/etcdserverpb.Maintenance/Status", ...). Reads
  // (`idempotent`) move on to the next endpoint when one is unavailable.
  asio::awaitable<Status> call(std::string_view path, const google::protobuf::MessageLite& request,
                               google::protobuf::MessageLite& response, Timeout timeout = {},
                               bool idempotent = false);
  // Opens a streaming call on the current connection (connecting first, by `deadline`).
  asio::awaitable<Result<grpc::ClientCall>> open_stream(std::string_view path,
                                                        Clock::time_point deadline);

  const std::vector<Endpoint>& endpoints() const noexcept { return endpoints_; }
  // The endpoint the current (or next) connection goes to.
  const Endpoint& current_endpoint() const noexcept { return endpoints_[current_]; }
  // Connections made so far.
  std::uint64_t connects() const noexcept { return connects_; }
  co::TimerWheel& wheel() noexcept { return wheel_; }
  const ClientOptions& options() const noexcept { return options_; }

 private:
  Client(co::TimerWheel& wheel, ClientOptions options, std::vector<Endpoint> endpoints);
  template <class Response>
  asio::awaitable<Result<Response>> unary(std::string_view path,
                                          const google::protobuf::MessageLite& request,
                                          Timeout timeout, bool idempotent = false);
  // The current connection, or a new one to the first endpoint (from current_) that answers.
  asio::awaitable<Result<std::shared_ptr<h2::ClientConnection>>> connection(
      Clock::time_point deadline);
  asio::awaitable<Result<std::shared_ptr<h2::ClientConnection>>> dial(const Endpoint& ep,
                                                                      Clock::time_point deadline);
  asio::awaitable<Result<std::unique_ptr<net::Transport>>> connect_transport(const Endpoint& ep);
  // Gives up the current connection; the next one starts at the next endpoint.
  void drop_connection();
  grpc::CallOptions call_options(Clock::time_point deadline) const;

  co::TimerWheel& wheel_;
  ClientOptions options_;
  std::vector<Endpoint> endpoints_;
  std::size_t current_ = 0;
  std::uint64_t connects_ = 0;
  std::shared_ptr<h2::ClientConnection> conn_;
  std::shared_ptr<net::TlsClientContext> tls_;
  std::shared_ptr<net::TlsClientCertificate> tls_cert_;
};

}  // namespace dispatchd::etcd
