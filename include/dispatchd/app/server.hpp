#pragma once
// The whole server: listener, HTTP/2 connections, the gRPC router with the Dispatcher, the
// health and reflection services, and the order in which they stop.

#include <asio/io_context.hpp>
#include <chrono>
#include <expected>
#include <functional>
#include <string>
#include <vector>

#include "dispatchd/admin/http_server.hpp"
#include "dispatchd/co/intrusive_list.hpp"
#include "dispatchd/co/scope.hpp"
#include "dispatchd/co/timer_wheel.hpp"
#include "dispatchd/control/control.hpp"
#include "dispatchd/dispatcher/dispatcher.hpp"
#include "dispatchd/grpc/health.hpp"
#include "dispatchd/grpc/reflection.hpp"
#include "dispatchd/grpc/server.hpp"
#include "dispatchd/h2/connection.hpp"
#include "dispatchd/logbroker/logbroker.hpp"
#include "dispatchd/metrics.hpp"
#include "dispatchd/net/acceptor.hpp"
#include "dispatchd/net/handshake_pool.hpp"
#include "dispatchd/net/tls.hpp"
#include "dispatchd/proxy/forwarder.hpp"
#include "dispatchd/store/store.hpp"

namespace dispatchd::app {

struct Options {
  std::string listen = "127.0.0.1:4242";
  // Operators' HTTP endpoint (/metrics, /healthz, /readyz); empty: none.
  std::string admin_listen = "127.0.0.1:9242";
  bool insecure = false;
  // TLS (the default): the server's certificate, key and the CA bundle for client certificates.
  net::TlsFiles tls;
  std::chrono::milliseconds tls_handshake_timeout{10000};
  // TLS handshakes past their ClientHello at once (0: no limit). The rest wait, so that under a
  // reconnecting herd the CPU finishes handshakes instead of starting ones whose clients give up
  // before they end (docs/operations.md, "Handshake admission").
  std::size_t max_handshakes = 256;
  // Threads for the handshakes' cryptography (0: on the io thread); by default one less than the
  // CPUs the process may use, at most 4 (net::default_handshake_threads).
  unsigned tls_handshake_threads = net::default_handshake_threads();
  // While handshakes wait, one that has held its place this long without finishing loses it.
  std::chrono::milliseconds handshake_slot_timeout{2000};
  // Once the oldest waiting handshake has waited this long, the newest is admitted first.
  std::chrono::milliseconds handshake_queue_lifo_after{1000};
  std::size_t max_connections = 200000;
  // Several managers (--store etcd): the Dispatcher does not start with run() but when this
  // manager becomes the leader (start_dispatcher()); until then agents' calls are forwarded.
  bool defer_dispatcher = false;
  // A follower's streams wait this long for a reachable leader (proxy::ForwarderOptions).
  std::chrono::milliseconds forward_stream_wait{3000};
  h2::Settings h2;
  grpc::ServerOptions grpc;
  dispatcher::Config dispatcher;
  logbroker::Config logs;
};

// Loads the TLS files of `options` and adopts the server certificate's CN as this manager's node
// ID, its O as the cluster organisation and the CA bundle as the cluster root CA
// (docs/behaviour.md §0.1, §0.9). Reads files: call it at start-up or off the io thread.
std::expected<std::shared_ptr<net::TlsContext>, std::string> prepare_tls(Options& options);

// Counters of the server's own (Prometheus /metrics).
struct ServerStats {
  std::uint64_t accepted = 0;
  std::uint64_t refused = 0;  // over --max-connections
  std::uint64_t tls_handshake_failures = 0;
  std::uint64_t tls_handshake_timeouts = 0;
  // Handshakes dropped before they finished: the client had already gone when its turn came,
  // or it held a place too long while others waited.
  std::uint64_t tls_handshakes_shed_gone = 0;
  std::uint64_t tls_handshakes_shed_slow = 0;
  // TLS handshakes done, by record layer: ours (TLS 1.3, SSL freed) or OpenSSL's.
  std::uint64_t tls_own_records = 0;
  std::uint64_t tls_openssl_records = 0;
  std::uint64_t closed_connections = 0;
  std::uint64_t calmed_connections = 0;  // closed with GOAWAY ENHANCE_YOUR_CALM
  // The counters of connections already closed (Server::connection_totals adds the open ones).
  h2::ConnectionStats of_closed_connections;
};

// Everything SIGHUP reloads from the --tls-cert, --tls-key and --tls-ca files: the server's
// context and the client side a follower dials the leader with (the same certificate).
struct ReloadedTls {
  std::shared_ptr<net::TlsContext> server;
  std::shared_ptr<net::TlsClientContext> client;
  std::shared_ptr<const net::TlsClientCertificate> client_cert;
  // Reads the files: off the io thread. The error names what did not load.
  static std::expected<ReloadedTls, std::string> load(const net::TlsFiles& files);
};

class Server {
 public:
  Server(asio::io_context& io, Options options);
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;
  ~Server();

  // Binds the listening socket (and the admin endpoint's); returns the bound agent address
  // (port 0 picks a free one).
  std::expected<asio::ip::tcp::endpoint, std::string> listen();
  // The admin endpoint's bound address, when there is one.
  std::optional<asio::ip::tcp::endpoint> admin_endpoint() const { return admin_endpoint_; }
  // Serves until stop() and everything has drained.
  asio::awaitable<void> run();
  // Replaces the TLS context for new connections; live ones keep theirs. (SIGHUP goes through
  // reload_tls, which also reaches the forwarder.)
  void set_tls(std::shared_ptr<net::TlsContext> ctx) { tls_ = std::move(ctx); }
  // A SIGHUP reload (ReloadedTls::load, off the io thread): the listener's context for new
  // connections, and the certificate a follower presents to the leader for new calls.
  void reload_tls(ReloadedTls tls);
  bool tls_enabled() const noexcept { return tls_ != nullptr; }
  // Graceful stop: no new connections, every Session gets its final message, GOAWAY to every
  // connection, in-flight calls finish within the drain timeout.
  void stop();
  // With defer_dispatcher: this manager became the leader; the Dispatcher starts (nodes are
  // marked UNKNOWN with the start-up grace, docs/behaviour.md §2).
  void start_dispatcher();
  // With defer_dispatcher: whether this manager serves agents as a follower (forwarding their
  // calls to a known leader), which makes it ready (/readyz) without a running Dispatcher.
  void set_forwarding(bool forwarding) noexcept {
    forwarding_ = forwarding;
    forwarder_.set_forwarding(forwarding);
  }

  grpc::Server& grpc() noexcept { return grpc_; }
  grpc::HealthService& health() noexcept { return health_; }
  // A service added to grpc() shows in reflection once named here (add_service).
  grpc::ReflectionService& reflection() noexcept { return reflection_; }
  dispatcher::Dispatcher& dispatcher() noexcept { return dispatcher_; }
  logbroker::LogBroker& log_broker() noexcept { return log_broker_; }
  control::ControlService& control() noexcept { return control_; }
  // The follower's proxy (issue 16): off until set_forwarding(true); then the Dispatcher's and
  // the agents' LogBroker calls go to the leader set with set_leader.
  proxy::Forwarder& forwarder() noexcept { return forwarder_; }
  store::Store& store() noexcept { return store_; }
  co::TimerWheel& wheel() noexcept { return wheel_; }
  std::size_t connection_count() const noexcept { return connection_count_; }
  // TLS handshakes not finished yet: of them, those waiting for a place, and those in one.
  std::size_t handshake_count() const noexcept { return handshake_count_; }
  std::size_t handshakes_waiting() const noexcept { return handshakes_waiting_; }
  std::size_t handshakes_admitted() const noexcept { return handshakes_admitted_; }
  // The pool running handshake cryptography (null: the io thread does it; set once run() began).
  net::HandshakePool* handshake_pool() noexcept { return handshake_pool_.get(); }
  const ServerStats& stats() const noexcept { return stats_; }
  // The counters of every connection, open and closed, added up (bytes, streams, PINGs
  // received, resets at their deadline, ...).
  h2::ConnectionStats connection_totals() const noexcept;
  // Stream objects nghttp2 holds on the open connections (open streams, and closed ones if kept).
  std::size_t retained_streams() const;
  // Serving and not draining (/readyz).
  bool ready() const noexcept {
    return running_ && !stopping_ && (dispatcher_.running() || forwarding_);
  }
  // The Prometheus text exposition of everything above (/metrics).
  std::string render_metrics() const;
  // Families of a part the daemon adds (the write-ahead log), written after the store's.
  void add_metrics(std::function<void(metrics::Writer&)> f) {
    extra_metrics_.push_back(std::move(f));
  }

 private:
  asio::awaitable<void> serve_connection(std::shared_ptr<h2::Connection> c);
  asio::awaitable<void> serve_tls(std::unique_ptr<net::TlsTransport> t);
  struct Handshake;
  struct HandshakeSlot;
  // Waits for the client's first bytes, then for a place among --max-handshakes.
  asio::awaitable<std::error_code> admit(Handshake& hs);
  void leave(Handshake& hs);
  // Gives free places to waiting handshakes (oldest first, newest first once the oldest waited
  // past handshake_queue_lifo_after); takes the place of a handshake that has held one past
  // handshake_slot_timeout while others wait.
  void admit_waiting();

  Options options_;
  co::TimerWheel wheel_;
  grpc::Server grpc_;
  grpc::HealthService health_;
  grpc::ReflectionService reflection_;
  store::Store store_;
  dispatcher::Dispatcher dispatcher_;
  // Control's view of the Dispatcher's registrations.
  class AgentDirectory final : public control::AgentDirectory {
   public:
    explicit AgentDirectory(const dispatcher::Dispatcher& d) : dispatcher_(d) {}
    std::optional<control::AgentSession> session_of(const std::string& node_id) const override;

   private:
    const dispatcher::Dispatcher& dispatcher_;
  } agents_{dispatcher_};
  control::ControlService control_;
  logbroker::LogBroker log_broker_;
  proxy::Forwarder forwarder_;
  net::Acceptor acceptor_;
  co::Scope connections_scope_;
  co::IntrusiveList<h2::Connection> connections_;
  std::size_t connection_count_ = 0;
  std::shared_ptr<net::TlsContext> tls_;
  co::IntrusiveList<Handshake> handshakes_;
  std::size_t handshake_count_ = 0;
  co::IntrusiveList<HandshakeSlot> handshake_queue_;    // waiting, in arrival order
  co::IntrusiveList<HandshakeSlot> handshake_holders_;  // admitted, oldest first
  std::size_t handshakes_waiting_ = 0;
  std::size_t handshakes_admitted_ = 0;
  co::TimerCallback<std::function<void()>> admission_check_{[this] { admit_waiting(); }};
  ServerStats stats_;
  std::vector<std::function<void(metrics::Writer&)>> extra_metrics_;
  admin::HttpServer admin_;
  std::optional<asio::ip::tcp::endpoint> admin_endpoint_;
  co::Scope admin_scope_;
  bool running_ = false;
  bool stopping_ = false;
  bool forwarding_ = false;
  // Last, so destroyed first: its threads are joined while every handshake is still alive.
  std::unique_ptr<net::HandshakePool> handshake_pool_;
};

}  // namespace dispatchd::app
