#include "dispatchd/app/server.hpp"

#include <google/protobuf/stubs/logging.h>

#include <fstream>
#include <iterator>
#include <mutex>

#include "dispatchd/log.hpp"
#include "dispatchd/net/tcp_transport.hpp"

namespace dispatchd::app {

std::expected<std::shared_ptr<net::TlsContext>, std::string> prepare_tls(Options& opt) {
  if (opt.tls.cert.empty() || opt.tls.key.empty() || opt.tls.ca.empty()) {
    return std::unexpected(
        "TLS needs --tls-cert, --tls-key and --tls-ca (scripts/gen-certs.sh makes a throw-away "
        "set); --insecure serves plaintext for tests and benchmarks");
  }
  auto ctx = net::TlsContext::load(opt.tls);
  if (!ctx) return std::unexpected(ctx.error());
  if ((*ctx)->common_name().empty() || (*ctx)->organization().empty()) {
    return std::unexpected(
        "the server certificate needs a CN (this manager's node ID) and an O (the cluster "
        "organisation)");
  }
  opt.dispatcher.manager_node_id = (*ctx)->common_name();
  opt.dispatcher.cluster_id = (*ctx)->organization();
  std::ifstream ca(opt.tls.ca, std::ios::binary);
  opt.dispatcher.root_ca_pem.assign(std::istreambuf_iterator<char>(ca), {});
  return *ctx;
}

std::expected<ReloadedTls, std::string> ReloadedTls::load(const net::TlsFiles& files) {
  auto server = net::TlsContext::load(files);
  if (!server) return std::unexpected(server.error());
  proxy::ForwarderOptions client;
  if (auto loaded = proxy::load_tls(client, files); !loaded) return std::unexpected(loaded.error());
  return ReloadedTls{std::move(*server), std::move(client.tls), std::move(client.cert)};
}

void Server::reload_tls(ReloadedTls tls) {
  set_tls(std::move(tls.server));
  forwarder_.set_tls(std::move(tls.client), std::move(tls.client_cert));
}

namespace {
proxy::ForwarderOptions forwarder_options(const Options& o) {
  proxy::ForwarderOptions f;
  f.node_id = o.dispatcher.manager_node_id;
  f.org = o.dispatcher.cluster_id;
  f.stream_leader_wait = o.forward_stream_wait;
  if (!o.insecure && !o.tls.ca.empty()) {
    // Over mutual TLS the forwarder presents this manager's own certificate to the leader.
    if (auto loaded = proxy::load_tls(f, o.tls); !loaded) {
      log::error("{}", loaded.error());
      f.unusable = loaded.error();
    }
  }
  return f;
}

// protobuf reports bad input (e.g. a non-UTF-8 string field in a request) on stderr itself; a
// client must not be able to flood the log, so those lines become debug lines of ours.
void route_protobuf_logs() {
  static std::once_flag once;
  std::call_once(once, [] {
    google::protobuf::SetLogHandler(
        [](google::protobuf::LogLevel level, const char*, int, const std::string& message) {
          if (level >= google::protobuf::LOGLEVEL_FATAL) {
            log::error("protobuf: {}", message);
          } else {
            log::debug("protobuf: {}", message);
          }
        });
  });
}
}  // namespace

std::optional<control::AgentSession> Server::AgentDirectory::session_of(
    const std::string& node_id) const {
  auto v = dispatcher_.session_view(node_id);
  if (!v) return std::nullopt;
  return control::AgentSession{.session_id = v->session_id,
                               .registered_at = v->registered_at,
                               .last_heartbeat = v->last_heartbeat,
                               .deadline = v->deadline,
                               .streaming = v->streaming};
}

Server::Server(asio::io_context& io, Options options)
    : options_(std::move(options)),
      wheel_(io),
      grpc_(wheel_, options_.grpc),
      reflection_({"docker.swarmkit.v1.Dispatcher", "docker.swarmkit.v1.Logs",
                   "docker.swarmkit.v1.LogBroker", "grpc.health.v1.Health", control::kServiceName}),
      store_(options_.dispatcher.cluster_id),
      dispatcher_(wheel_, store_, options_.dispatcher),
      control_(store_, dispatcher_.authorizer(), agents_, options_.dispatcher.manager_node_id),
      log_broker_(store_, dispatcher_.authorizer(), options_.logs),
      forwarder_(wheel_, forwarder_options(options_)),
      acceptor_(io),
      connections_scope_(io.get_executor()),
      admin_(io, admin::HttpOptions{.listen = options_.admin_listen}),
      admin_scope_(io.get_executor()) {
  route_protobuf_logs();
  health_.add_to(grpc_);
  health_.set_status("docker.swarmkit.v1.Dispatcher", grpc::HealthService::serving);
  dispatcher_.add_to(grpc_);
  reflection_.add_to(grpc_);
  health_.set_status(control::kServiceName, grpc::HealthService::serving);
  control_.add_to(grpc_);
  log_broker_.add_to(grpc_);
  forwarder_.add_to(grpc_);
  admin_.route("/metrics", [this](const admin::Request&) {
    return admin::Response{.content_type = "text/plain; version=0.0.4; charset=utf-8",
                           .body = render_metrics()};
  });
  admin_.route("/healthz", [](const admin::Request&) { return admin::Response{.body = "ok\n"}; });
  admin_.route("/readyz", [this](const admin::Request&) {
    if (ready()) return admin::Response{.body = "ready\n"};
    return admin::Response{.status = 503, .body = stopping_ ? "draining\n" : "starting\n"};
  });
}

// A TLS handshake in progress: closed by its deadline or by stop(). (Its list hook, its place
// in the admission lists and its timer entry are separate objects: one hook, one list.)
struct Server::HandshakeSlot final : co::ListHook {
  explicit HandshakeSlot(Handshake& h) : h(h) {}
  Handshake& h;
};

struct Server::Handshake final : co::ListHook {
  explicit Handshake(net::TlsTransport& t) : transport(t), deadline(*this), slot(*this) {}
  struct Deadline final : co::TimerWheel::Entry {
    explicit Deadline(Handshake& h) : h(h) {}
    Handshake& h;

   private:
    void on_expire() override {
      h.timed_out = true;
      h.close();
    }
  };
  enum class State { arriving, waiting, admitted, left };
  // Closes the socket and wakes the coroutine if it waits for a place.
  void close() noexcept {
    transport.close();
    wakeup.notify();
  }
  net::TlsTransport& transport;
  bool timed_out = false;
  bool evicted = false;
  State state = State::arriving;
  std::chrono::steady_clock::time_point queued_at{};
  std::chrono::steady_clock::time_point admitted_at{};
  co::Wakeup wakeup;
  Deadline deadline;
  HandshakeSlot slot;
};

Server::~Server() = default;

std::expected<asio::ip::tcp::endpoint, std::string> Server::listen() {
  auto ep = net::resolve_listen_address(options_.listen);
  if (!ep) return ep;
  auto bound = acceptor_.listen(*ep);
  if (!bound) return bound;
  if (!options_.admin_listen.empty()) {
    auto admin = admin_.listen();
    if (!admin) return std::unexpected(admin.error());
    admin_endpoint_ = *admin;
  }
  return bound;
}

asio::awaitable<void> Server::run() {
  if (!stopping_ && !options_.defer_dispatcher) dispatcher_.start();
  running_ = true;
  if (admin_endpoint_) admin_scope_.spawn(admin_.run());
  if (tls_ && options_.tls_handshake_threads > 0 && !handshake_pool_) {
    handshake_pool_ = std::make_unique<net::HandshakePool>(options_.tls_handshake_threads);
  }
  co_await acceptor_.run([this](asio::ip::tcp::socket socket) {
    if (stopping_) return;
    ++stats_.accepted;
    if (connection_count_ + handshake_count_ >= options_.max_connections) {
      ++stats_.refused;
      log::warn("refusing connection: {} connections open (--max-connections)", connection_count_);
      std::error_code ec;
      socket.close(ec);
      return;
    }
    if (tls_) {
      connections_scope_.spawn(
          serve_tls(std::make_unique<net::TlsTransport>(std::move(socket), tls_)));
      return;
    }
    auto transport = std::make_unique<net::TcpTransport>(std::move(socket));
    auto c = std::make_shared<h2::Connection>(std::move(transport), grpc_, options_.h2, wheel_);
    connections_scope_.spawn(serve_connection(std::move(c)));
  });
  co_await connections_scope_.join();
  co_await forwarder_.join();
  // The admin endpoint answers (/readyz: 503) until the last connection has drained.
  admin_.stop();
  co_await admin_scope_.join();
}

asio::awaitable<void> Server::serve_tls(std::unique_ptr<net::TlsTransport> t) {
  std::error_code ec;
  bool timed_out = false;
  bool evicted = false;
  bool gone = false;
  {
    Handshake hs(*t);
    handshakes_.push_back(hs);
    ++handshake_count_;
    wheel_.arm_after(hs.deadline, options_.tls_handshake_timeout);
    ec = co_await admit(hs);
    gone = ec == asio::error::connection_reset;
    if (!ec) ec = co_await t->handshake(handshake_pool_.get());
    leave(hs);
    wheel_.disarm(hs.deadline);
    timed_out = hs.timed_out;
    evicted = hs.evicted;
    --handshake_count_;
  }
  if (ec || stopping_) {
    if (timed_out) {
      ++stats_.tls_handshake_timeouts;
      log::info("{}: closing connection: TLS handshake not finished within {} ms", t->peer(),
                options_.tls_handshake_timeout.count());
    } else if (evicted) {
      ++stats_.tls_handshakes_shed_slow;
      log::info(
          "{}: closing connection: TLS handshake held its place for {} ms while others "
          "waited (--max-handshakes {})",
          t->peer(), options_.handshake_slot_timeout.count(), options_.max_handshakes);
    } else if (gone) {
      ++stats_.tls_handshakes_shed_gone;
      log::debug("{}: client gone before its TLS handshake began", t->peer());
    } else if (!stopping_) {
      ++stats_.tls_handshake_failures;
      log::info("{}: TLS handshake failed: {}", t->peer(),
                t->handshake_error().empty() ? ec.message() : t->handshake_error());
    }
    t->close();
    co_return;
  }
  ++(t->own_records() ? stats_.tls_own_records : stats_.tls_openssl_records);
  auto c = std::make_shared<h2::Connection>(std::move(t), grpc_, options_.h2, wheel_);
  co_await serve_connection(std::move(c));
}

// Handshake admission. A reconnecting herd can bring more handshakes than one core finishes
// before the clients' own timeouts; started all at once, every one of them is slowed past that
// point and the CPU goes to handshakes nobody waits for any more. So only --max-handshakes run
// past their ClientHello at a time; the rest wait (in arrival order, newest first once the
// queue stops moving), and a waiter whose client has closed meanwhile is dropped without any
// cryptography. A connection that sends nothing takes no place (it only holds its socket until
// --tls-handshake-timeout), and one that stalls mid-handshake loses its place after
// handshake_slot_timeout once others wait, so idle or slow peers cannot keep the places from
// agents (docs/operations.md, "Handshake admission").
asio::awaitable<std::error_code> Server::admit(Handshake& hs) {
  if (options_.max_handshakes == 0) co_return std::error_code{};
  if (auto ec = co_await hs.transport.wait(net::Transport::Direction::read)) co_return ec;
  if (!hs.transport.is_open() || stopping_) co_return asio::error::operation_aborted;
  if (hs.transport.peer_closed()) co_return asio::error::connection_reset;
  hs.state = Handshake::State::waiting;
  hs.queued_at = std::chrono::steady_clock::now();
  handshake_queue_.push_back(hs.slot);
  ++handshakes_waiting_;
  admit_waiting();
  while (hs.state == Handshake::State::waiting && hs.transport.is_open() && !stopping_) {
    co_await hs.wakeup.async_park();
  }
  if (hs.state != Handshake::State::admitted) co_return asio::error::operation_aborted;
  // It may have waited long: its client may be gone.
  if (hs.transport.peer_closed()) co_return asio::error::connection_reset;
  co_return std::error_code{};
}

void Server::leave(Handshake& hs) {
  if (hs.state == Handshake::State::waiting) {
    hs.slot.unlink();
    --handshakes_waiting_;
  } else if (hs.state == Handshake::State::admitted) {
    hs.slot.unlink();
    --handshakes_admitted_;
    admit_waiting();
  }
  hs.state = Handshake::State::left;
}

void Server::admit_waiting() {
  const auto now = std::chrono::steady_clock::now();
  while (!handshake_queue_.empty()) {
    if (handshakes_admitted_ < options_.max_handshakes) {
      // Oldest first while the queue moves; newest first once its oldest has waited past
      // handshake_queue_lifo_after: the server is behind, the oldest clients are closest to
      // giving up, and the newest have the most time left to finish (adaptive LIFO).
      const bool behind =
          handshake_queue_.front()->h.queued_at + options_.handshake_queue_lifo_after <= now;
      Handshake& next = (behind ? handshake_queue_.pop_back() : handshake_queue_.pop_front())->h;
      --handshakes_waiting_;
      next.state = Handshake::State::admitted;
      next.admitted_at = now;
      handshake_holders_.push_back(next.slot);
      ++handshakes_admitted_;
      next.wakeup.notify();
      continue;
    }
    Handshake& oldest = handshake_holders_.front()->h;
    auto since = oldest.admitted_at + options_.handshake_slot_timeout;
    if (since > now) {
      if (!admission_check_.armed() || admission_check_.deadline() != since) {
        wheel_.arm(admission_check_, since);
      }
      return;
    }
    // Its place goes to the next waiter now; its coroutine sees the closed socket.
    oldest.slot.unlink();
    --handshakes_admitted_;
    oldest.state = Handshake::State::left;
    oldest.evicted = true;
    oldest.close();
  }
  wheel_.disarm(admission_check_);
}

asio::awaitable<void> Server::serve_connection(std::shared_ptr<h2::Connection> c) {
  connections_.push_back(*c);
  ++connection_count_;
  log::debug("{}: connection opened", c->peer());
  if (stopping_) c->shutdown();
  co_await c->run();
  --connection_count_;
  c->unlink();
  ++stats_.closed_connections;
  if (c->calmed()) ++stats_.calmed_connections;
  stats_.of_closed_connections += c->stats();
  log::debug("{}: connection closed ({} bytes in, {} bytes out, {} streams)", c->peer(),
             c->stats().bytes_in, c->stats().bytes_out, c->stats().streams);
}

h2::ConnectionStats Server::connection_totals() const noexcept {
  h2::ConnectionStats n = stats_.of_closed_connections;
  connections_.for_each([&](const h2::Connection& c) { n += c.stats(); });
  return n;
}

std::size_t Server::retained_streams() const {
  std::size_t n = 0;
  connections_.for_each([&](const h2::Connection& c) { n += c.retained_streams(); });
  return n;
}

void Server::start_dispatcher() {
  if (stopping_) return;
  set_forwarding(false);
  dispatcher_.start();
}

void Server::stop() {
  if (stopping_) return;
  stopping_ = true;
  log::info("stopping: {} connections, {} sessions", connection_count_,
            dispatcher_.open_sessions());
  acceptor_.close();
  health_.shutdown();
  // Sessions send their final message and end before the connections go away.
  dispatcher_.stop();
  log_broker_.stop();
  // Calls relayed to the leader end (UNAVAILABLE): their agents reconnect elsewhere.
  forwarder_.stop();
  connections_.for_each([](h2::Connection& c) { c.shutdown(); });
  handshakes_.for_each([](Handshake& h) { h.close(); });
  wheel_.disarm(admission_check_);
}

}  // namespace dispatchd::app
