#pragma once
// Forwarder: a follower manager serves agents by relaying every Dispatcher call (and the
// LogBroker calls agents make) to the leader, with the agent's identity as forwarded metadata
// (docs/behaviour.md §9.4, SwarmKit's raftProxyDispatcherServer). The follower authorizes
// nothing itself: the leader checks the forwarder (a manager) and the forwarded agent.
//
// It is a grpc::CallDiverter: the gRPC server asks it per call whether to divert, so the
// daemon switches between serving locally (leader) and forwarding (follower) at runtime with
// set_forwarding, and the leader's own path costs one pointer test and one virtual call.
//
// One shared HTTP/2 connection to the current leader, made on first use and made again when it
// fails or the leader's address changes; calls relayed on an old connection end with what that
// leader answers (UNAVAILABLE when the connection drops). While no leader is known or it cannot
// be reached, unary calls wait until their deadline, trying again every leader_poll and at once
// when set_leader is called, then fail UNAVAILABLE; streams fail UNAVAILABLE at once (agents back
// off and retry). Everything runs on the io thread.

#include <asio/awaitable.hpp>
#include <asio/steady_timer.hpp>
#include <chrono>
#include <cstdint>
#include <expected>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "dispatchd/co/intrusive_list.hpp"
#include "dispatchd/co/scope.hpp"
#include "dispatchd/co/timer_wheel.hpp"
#include "dispatchd/co/wakeup.hpp"
#include "dispatchd/grpc/server.hpp"
#include "dispatchd/h2/client_connection.hpp"
#include "dispatchd/net/tls.hpp"
#include "dispatchd/net/tls_client.hpp"
#include "dispatchd/status.hpp"

namespace dispatchd::proxy {

// How a forwarded method's messages flow: the request is read whole before the leader is asked
// (unary, server streaming) or relayed message by message (client streaming). Unary calls wait
// for a leader and are retried on connection errors; streams are not.
enum class CallShape { unary, server_stream, client_stream };
struct ForwardedMethod {
  std::string_view path;
  CallShape shape;
};

// The methods a follower forwards: the Dispatcher's, and the LogBroker methods agents call.
const std::vector<ForwardedMethod>& forwarded_methods();

struct ForwarderOptions {
  // This manager's node ID and organisation. In insecure (h2c) mode the forwarder identifies
  // itself to the leader with node-id = node_id, node-role = swarm-manager, node-org = org;
  // over TLS its certificate does.
  std::string node_id;
  std::string org;
  // Mutual TLS to the leader with this manager's own certificate (null tls: h2c).
  std::shared_ptr<net::TlsClientContext> tls;
  std::shared_ptr<const net::TlsClientCertificate> cert;
  std::string server_name = "swarm-manager";  // SNI and the name checked, as agents dial
  // How often a waiting unary call looks for a reachable leader again (SwarmKit: 500 ms).
  std::chrono::milliseconds leader_poll{500};
  // How long a stream (Session, Assignments, ...) waits for a reachable leader before it fails
  // UNAVAILABLE: during a leader change the agent's Session then gets its first message from
  // the new leader instead of failing at once and backing off (under the agent's 5 s wait for
  // that first message). 0: fail at once.
  std::chrono::milliseconds stream_leader_wait{3000};
  // Connecting to the leader (TCP, TLS) gives up after this.
  std::chrono::milliseconds dial_timeout{5000};
  // Per relayed stream, each direction: what waits at the follower at most.
  std::uint32_t stream_window = 1 << 20;
  // Set when the forwarder cannot work (its TLS files did not load): every forwarded call
  // fails UNAVAILABLE with this.
  std::string unusable;
};

// The TLS part of ForwarderOptions from the server's own files (certificate, key, CA bundle).
// Reads files: at start-up or off the io thread.
std::expected<void, std::string> load_tls(ForwarderOptions& options, const net::TlsFiles& files);

struct ForwarderStats {
  std::uint64_t calls = 0;     // calls diverted to the forwarder
  std::uint64_t connects = 0;  // connections made to a leader
  std::uint64_t dial_failures = 0;
  std::uint64_t retries = 0;  // unary calls sent again after their connection failed
  std::uint64_t redirect_loops = 0;
};

class Forwarder final : public grpc::CallDiverter {
 public:
  Forwarder(co::TimerWheel& wheel, ForwarderOptions options);
  Forwarder(const Forwarder&) = delete;
  Forwarder& operator=(const Forwarder&) = delete;
  ~Forwarder();

  // Diverts `methods` of `server` (added to it already) to this forwarder, while forwarding().
  void add_to(grpc::Server& server,
              const std::vector<ForwardedMethod>& methods = forwarded_methods());

  // Follower (true): calls are relayed to the leader; leader (false, the default): served
  // locally.
  void set_forwarding(bool on) noexcept { forwarding_ = on; }
  bool forwarding() const noexcept { return forwarding_; }
  // The leader's "host:port" (nullopt: unknown). A change drops the connection to the old
  // leader for new calls (calls on it run to their end) and wakes waiting calls.
  void set_leader(std::optional<std::string> address);
  const std::optional<std::string>& leader() const noexcept { return leader_; }
  // A reloaded certificate, key and CA bundle (SIGHUP): new calls go over a new connection
  // that presents them (calls relayed on the old connection run to their end). Also makes a
  // forwarder usable again whose TLS files did not load at start.
  void set_tls(std::shared_ptr<net::TlsClientContext> tls,
               std::shared_ptr<const net::TlsClientCertificate> cert);

  // Stops forwarding for good: closes the connection (calls relayed on it end UNAVAILABLE),
  // cancels a dial in progress and fails waiting calls. join() then waits for the connection's
  // coroutines.
  void stop();
  asio::awaitable<void> join();

  // Calls being relayed or waiting for a leader now.
  std::size_t active_calls() const noexcept { return active_calls_; }
  // A connection to the leader is open and usable.
  bool connected() const noexcept { return conn_ && conn_->usable(); }
  const ForwarderStats& stats() const noexcept { return stats_; }

  // grpc::CallDiverter
  bool diverting() const noexcept override { return forwarding_; }
  asio::awaitable<Status> serve(grpc::ServerCall& call) override;

 private:
  struct Waiter : co::ListHook {
    explicit Waiter(co::Wakeup& w) : wakeup(w) {}
    co::Wakeup& wakeup;
  };

  // The connection to the current leader: waits for a dial in progress (or starts one); with
  // `wait`, also waits for a leader to be known and reachable, until the call is cancelled.
  asio::awaitable<std::expected<std::shared_ptr<h2::ClientConnection>, Status>> connection(
      grpc::ServerCall& call, bool wait,
      co::TimerWheel::Clock::time_point wait_until = co::TimerWheel::Clock::time_point::max());
  // Starts a dial to `address` unless one runs, or the last one to it failed under leader_poll
  // ago. True when a dial is (now) in progress.
  bool maybe_dial(const std::string& address);
  asio::awaitable<void> dial(std::string address);
  asio::awaitable<std::expected<std::unique_ptr<net::Transport>, Status>> connect_transport(
      std::string address);
  asio::awaitable<void> run_connection(std::shared_ptr<h2::ClientConnection> c);
  void drop_connection();
  void notify_waiters();
  // The request headers for the leader: the caller's metadata and §9.4's additions.
  std::vector<h2::Header> upstream_headers(grpc::ServerCall& call) const;

  co::TimerWheel& wheel_;
  ForwarderOptions options_;
  std::map<std::string, CallShape, std::less<>> shapes_;
  co::Scope scope_;
  std::optional<std::string> leader_;
  bool forwarding_ = false;
  bool stopped_ = false;
  std::shared_ptr<h2::ClientConnection> conn_;
  std::string conn_address_;
  // Every connection still running: the current one and dropped ones whose calls go on.
  std::vector<std::shared_ptr<h2::ClientConnection>> live_;
  bool dialing_ = false;
  std::string dialing_address_;
  asio::steady_timer* dial_timer_ = nullptr;  // the dial in progress, cancelled by stop()
  std::string last_failed_address_;
  co::TimerWheel::Clock::time_point last_failure_{};
  Status last_error_;
  co::IntrusiveList<Waiter> waiters_;
  std::size_t active_calls_ = 0;
  ForwarderStats stats_;
};

}  // namespace dispatchd::proxy
