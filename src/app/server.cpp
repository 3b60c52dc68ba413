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

namespace {
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

Server::Server(asio::io_context& io, Options options)
    : options_(std::move(options)),
      wheel_(io),
      grpc_(wheel_, options_.grpc),
      reflection_(
          {"docker.swarmkit.v1.Dispatcher", "grpc.health.v1.Health", control::kServiceName}),
      store_(options_.dispatcher.cluster_id),
      dispatcher_(wheel_, store_, options_.dispatcher),
      control_(store_, dispatcher_),
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

// A TLS handshake in progress: closed by its deadline or by stop(). (Its list hook and its
// timer entry are separate objects: one hook can be in only one list.)
struct Server::Handshake final : co::ListHook {
  explicit Handshake(net::TlsTransport& t) : transport(t), deadline(*this) {}
  struct Deadline final : co::TimerWheel::Entry {
    explicit Deadline(Handshake& h) : h(h) {}
    Handshake& h;

   private:
    void on_expire() override {
      h.timed_out = true;
      h.transport.close();
    }
  };
  net::TlsTransport& transport;
  bool timed_out = false;
  Deadline deadline;
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
  if (!stopping_) dispatcher_.start();
  running_ = true;
  if (admin_endpoint_) admin_scope_.spawn(admin_.run());
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
  // The admin endpoint answers (/readyz: 503) until the last connection has drained.
  admin_.stop();
  co_await admin_scope_.join();
}

asio::awaitable<void> Server::serve_tls(std::unique_ptr<net::TlsTransport> t) {
  std::error_code ec;
  bool timed_out = false;
  {
    Handshake hs(*t);
    handshakes_.push_back(hs);
    ++handshake_count_;
    wheel_.arm_after(hs.deadline, options_.tls_handshake_timeout);
    ec = co_await t->handshake();
    wheel_.disarm(hs.deadline);
    timed_out = hs.timed_out;
    --handshake_count_;
  }
  if (ec || stopping_) {
    if (timed_out) {
      ++stats_.tls_handshake_timeouts;
      log::info("{}: closing connection: TLS handshake not finished within {} ms", t->peer(),
                options_.tls_handshake_timeout.count());
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
  stats_.closed_bytes_in += c->stats().bytes_in;
  stats_.closed_bytes_out += c->stats().bytes_out;
  stats_.closed_streams += c->stats().streams;
  stats_.closed_pings_in += c->stats().pings_in;
  log::debug("{}: connection closed ({} bytes in, {} bytes out, {} streams)", c->peer(),
             c->stats().bytes_in, c->stats().bytes_out, c->stats().streams);
}

std::uint64_t Server::pings_received() const noexcept {
  std::uint64_t n = stats_.closed_pings_in;
  connections_.for_each([&](const h2::Connection& c) { n += c.stats().pings_in; });
  return n;
}

std::size_t Server::retained_streams() const {
  std::size_t n = 0;
  connections_.for_each([&](const h2::Connection& c) { n += c.retained_streams(); });
  return n;
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
  connections_.for_each([](h2::Connection& c) { c.shutdown(); });
  handshakes_.for_each([](Handshake& h) { h.transport.close(); });
}

}  // namespace dispatchd::app
