#include "dispatchd/proxy/forwarder.hpp"

#include <asio/experimental/as_tuple.hpp>
#include <asio/experimental/awaitable_operators.hpp>
#include <asio/ip/tcp.hpp>
#include <asio/this_coro.hpp>
#include <asio/use_awaitable.hpp>
#include <variant>

#include "dispatchd/co/event.hpp"
#include "dispatchd/grpc/metadata.hpp"
#include "dispatchd/log.hpp"
#include "dispatchd/net/tcp_transport.hpp"

namespace dispatchd::proxy {

namespace {

// Request headers that are not the caller's to pass on: HTTP/2 and gRPC framing (set again for
// the upstream call), and every identity key, which only the forwarder may set (§9.4: an agent
// must not be able to impersonate the forwarder or forward for someone else).
bool dropped(std::string_view name) {
  static constexpr std::string_view kDropped[] = {"content-type",      "te",
                                                  "grpc-timeout",      "host",
                                                  "connection",        "content-length",
                                                  "keep-alive",        "proxy-connection",
                                                  "transfer-encoding", "upgrade",
                                                  "node-id",           "node-role",
                                                  "node-org",          "forwarded_cert",
                                                  "forwarded_cert_cn", "forwarded_cert_org",
                                                  "forwarded_cert_ou", "remote_addr",
                                                  "redirect"};
  if (name.starts_with(':')) return true;
  for (auto d : kDropped)
    if (name == d) return true;
  return false;
}

// A waiting unary call gives up this long before its deadline, so that the agent gets
// UNAVAILABLE (no leader) before its own deadline passes, across a busy loop and the network,
// rather than DEADLINE_EXCEEDED.
constexpr auto kDeadlineMargin = std::chrono::milliseconds(100);

// "host:port" or "[v6]:port".
std::optional<std::pair<std::string, std::string>> split_host_port(std::string_view a) {
  if (a.starts_with('[')) {
    auto close = a.find(']');
    if (close == std::string_view::npos || close + 2 > a.size() || a[close + 1] != ':') {
      return std::nullopt;
    }
    return std::pair{std::string(a.substr(1, close - 1)), std::string(a.substr(close + 2))};
  }
  auto colon = a.rfind(':');
  if (colon == std::string_view::npos || colon == 0 || colon + 1 == a.size()) return std::nullopt;
  return std::pair{std::string(a.substr(0, colon)), std::string(a.substr(colon + 1))};
}

}  // namespace

const std::vector<ForwardedMethod>& forwarded_methods() {
  static const std::vector<ForwardedMethod> methods = {
      {"/docker.swarmkit.v1.Dispatcher/Session", CallShape::server_stream},
      {"/docker.swarmkit.v1.Dispatcher/Heartbeat", CallShape::unary},
      {"/docker.swarmkit.v1.Dispatcher/UpdateTaskStatus", CallShape::unary},
      {"/docker.swarmkit.v1.Dispatcher/UpdateVolumeStatus", CallShape::unary},
      {"/docker.swarmkit.v1.Dispatcher/Tasks", CallShape::server_stream},
      {"/docker.swarmkit.v1.Dispatcher/Assignments", CallShape::server_stream},
      {"/docker.swarmkit.v1.LogBroker/ListenSubscriptions", CallShape::server_stream},
      {"/docker.swarmkit.v1.LogBroker/PublishLogs", CallShape::client_stream},
  };
  return methods;
}

std::expected<void, std::string> load_tls(ForwarderOptions& options, const net::TlsFiles& files) {
  auto ctx = net::TlsClientContext::load(files.ca);
  if (!ctx) return std::unexpected("forwarding to the leader: " + ctx.error());
  auto cert = net::TlsClientCertificate::load(files.cert, files.key);
  if (!cert) return std::unexpected("forwarding to the leader: " + cert.error());
  options.tls = std::move(*ctx);
  options.cert = std::move(*cert);
  return {};
}

Forwarder::Forwarder(co::TimerWheel& wheel, ForwarderOptions options)
    : wheel_(wheel), options_(std::move(options)), scope_(wheel.io().get_executor()) {}

Forwarder::~Forwarder() {
  for (auto& c : live_)
    c->close();
}

void Forwarder::add_to(grpc::Server& server, const std::vector<ForwardedMethod>& methods) {
  std::vector<std::string_view> paths;
  for (const auto& m : methods) {
    shapes_[std::string(m.path)] = m.shape;
    paths.push_back(m.path);
  }
  server.divert(paths, this);
}

void Forwarder::set_leader(std::optional<std::string> address) {
  if (address && address->empty()) address.reset();
  if (address == leader_) return;
  log::info("forwarder: leader is now {}", address ? *address : std::string("unknown"));
  leader_ = std::move(address);
  // New calls go to the new leader; calls relayed on the old connection run to their end.
  if (conn_ && (!leader_ || conn_address_ != *leader_)) drop_connection();
  if (dial_timer_ && (!leader_ || dialing_address_ != *leader_)) dial_timer_->cancel();
  notify_waiters();
}

void Forwarder::set_tls(std::shared_ptr<net::TlsClientContext> tls,
                        std::shared_ptr<const net::TlsClientCertificate> cert) {
  options_.tls = std::move(tls);
  options_.cert = std::move(cert);
  options_.unusable.clear();
  // The next call dials again with the new certificate. A dial already in progress finishes
  // with the old one (cancelling it would count as a failure and hold calls back).
  drop_connection();
  notify_waiters();
}

void Forwarder::stop() {
  if (stopped_) return;
  stopped_ = true;
  if (dial_timer_) dial_timer_->cancel();
  conn_.reset();
  for (auto& c : live_)
    c->close();
  notify_waiters();
}

asio::awaitable<void> Forwarder::join() {
  co_await scope_.join();
}

void Forwarder::notify_waiters() {
  waiters_.for_each([](Waiter& w) { w.wakeup.notify(); });
}

void Forwarder::drop_connection() {
  if (!conn_) return;
  conn_->shutdown();  // GOAWAY; it closes once the calls on it have ended
  conn_.reset();
}

bool Forwarder::maybe_dial(const std::string& address) {
  if (dialing_) return true;
  if (address == last_failed_address_ &&
      co::TimerWheel::Clock::now() - last_failure_ < options_.leader_poll) {
    return false;
  }
  dialing_ = true;
  dialing_address_ = address;
  scope_.spawn(dial(address));
  return true;
}

asio::awaitable<std::expected<std::unique_ptr<net::Transport>, Status>>
Forwarder::connect_transport(std::string address) {
  auto hp = split_host_port(address);
  if (!hp) {
    co_return std::unexpected(
        Status(StatusCode::unavailable, "leader address \"" + address + "\" is not host:port"));
  }
  auto t = co_await net::connect(co_await asio::this_coro::executor, hp->first, hp->second,
                                 options_.tls, options_.cert, options_.server_name);
  if (!t) co_return std::unexpected(Status(StatusCode::unavailable, t.error()));
  co_return std::move(*t);
}

asio::awaitable<void> Forwarder::dial(std::string address) {
  using namespace asio::experimental::awaitable_operators;
  asio::steady_timer timer(co_await asio::this_coro::executor, options_.dial_timeout);
  dial_timer_ = &timer;
  // Whichever ends first cancels the other: a silent leader costs at most the dial timeout,
  // and stop() or a new leader cancels the timer.
  auto r = co_await (connect_transport(address) ||
                     timer.async_wait(asio::experimental::as_tuple(asio::use_awaitable)));
  dial_timer_ = nullptr;
  dialing_ = false;
  std::expected<std::unique_ptr<net::Transport>, Status> tr =
      r.index() == 0 ? std::move(std::get<0>(r))
                     : std::unexpected(Status(StatusCode::unavailable, "no answer in time"));
  if (!tr) {
    ++stats_.dial_failures;
    last_failed_address_ = address;
    last_failure_ = co::TimerWheel::Clock::now();
    last_error_ = tr.error();
    log::info("forwarder: cannot reach the leader at {}: {}", address, tr.error().message());
    notify_waiters();
    co_return;
  }
  if (stopped_ || leader_ != address) {
    (*tr)->close();
    notify_waiters();
    co_return;
  }
  h2::ClientSettings settings;
  settings.reader_flow_control = true;
  settings.initial_window_size = options_.stream_window;
  // Room for many streams' windows: a stalled relay never holds up the others.
  settings.connection_window_size = std::max<std::uint32_t>(options_.stream_window, 16u << 20);
  conn_ = std::make_shared<h2::ClientConnection>(std::move(*tr), wheel_, settings);
  conn_address_ = address;
  ++stats_.connects;
  log::info("forwarder: connected to the leader at {}", address);
  scope_.spawn(run_connection(conn_));
  notify_waiters();
}

asio::awaitable<void> Forwarder::run_connection(std::shared_ptr<h2::ClientConnection> c) {
  live_.push_back(c);
  co_await c->run();
  std::erase(live_, c);
  if (conn_ == c) conn_.reset();
  notify_waiters();
}

asio::awaitable<std::expected<std::shared_ptr<h2::ClientConnection>, Status>> Forwarder::connection(
    grpc::ServerCall& call, bool wait, co::TimerWheel::Clock::time_point wait_until) {
  for (;;) {
    if (call.is_cancelled()) {
      co_return std::unexpected(Status(StatusCode::cancelled, "context canceled"));
    }
    if (stopped_) {
      co_return std::unexpected(Status(StatusCode::unavailable, "this manager is stopping"));
    }
    if (leader_) {
      if (conn_ && conn_address_ == *leader_ && conn_->usable()) co_return conn_;
      if (conn_) drop_connection();
      if (!maybe_dial(*leader_) && !wait) {
        co_return std::unexpected(
            Status(StatusCode::unavailable,
                   "cannot reach the leader at " + *leader_ + ": " + last_error_.message()));
      }
    } else if (!wait) {
      co_return std::unexpected(Status(StatusCode::unavailable, "no leader is known"));
    }
    // Until a dial ends, the leader changes, the call ends or (waiting) the next poll.
    co::Wakeup w;
    Waiter waiter(w);
    waiters_.push_back(waiter);
    co::Event::Listener cancelled(call.cancelled(), w);
    co::TimerCallback poll([&w] { w.notify(); });
    if (wait) {
      auto at = co::TimerWheel::Clock::now() + options_.leader_poll;
      auto end = wait_until;
      if (auto deadline = call.deadline()) end = std::min(end, *deadline - kDeadlineMargin);
      if (end != co::TimerWheel::Clock::time_point::max()) {
        if (end <= co::TimerWheel::Clock::now()) {
          co_return std::unexpected(Status(
              StatusCode::unavailable,
              leader_ ? "cannot reach the leader at " + *leader_ + ": " + last_error_.message()
                      : std::string("no leader is known")));
        }
        at = std::min(at, end);
      }
      wheel_.arm(poll, at);
    }
    co_await w.async_park();
    wheel_.disarm(poll);
  }
}

std::vector<h2::Header> Forwarder::upstream_headers(grpc::ServerCall& call) const {
  const auto& in = call.raw_metadata();
  std::vector<h2::Header> h;
  h.reserve(in.size() + 16);
  h.push_back({":method", "POST"});
  h.push_back({":scheme", options_.tls ? "https" : "http"});
  h.push_back({":path", std::string(call.method_path())});
  h.push_back({":authority", options_.server_name});
  std::string_view ct = call.stream().content_type();
  h.push_back({"content-type", ct.empty() ? "application/grpc" : std::string(ct)});
  h.push_back({"te", "trailers"});
  for (const auto& m : in) {
    if (!dropped(m.name)) h.push_back(m);
  }

  // Who the agent is: its verified certificate, or in insecure mode the metadata standing in
  // for one. Blank values are sent all the same when it has neither.
  std::string cn, org;
  std::vector<std::string> ous;
  if (const net::PeerIdentity* id = call.peer_identity()) {
    if (id->has_certificate) {
      cn = id->common_name;
      ous = id->organizational_units;
      org = id->organization;
    }
  } else if (auto n = call.metadata("node-id"); n && !n->empty()) {
    cn = std::string(*n);
    auto r = call.metadata("node-role");
    ous.emplace_back(r && !r->empty() ? std::string(*r) : std::string("swarm-worker"));
    org = std::string(call.metadata("node-org").value_or(options_.org));
  }
  h.push_back({"redirect", call.peer()});
  h.push_back({"forwarded_cert", "true"});
  h.push_back({"forwarded_cert_cn", std::move(cn)});
  h.push_back({"forwarded_cert_org", std::move(org)});
  if (ous.empty()) h.push_back({"forwarded_cert_ou", ""});
  for (auto& ou : ous)
    h.push_back({"forwarded_cert_ou", std::move(ou)});
  h.push_back({"remote_addr", call.peer()});
  if (!options_.tls) {
    // Insecure mode: the forwarder's own identity, as a manager.
    h.push_back({"node-id", options_.node_id});
    h.push_back({"node-role", "swarm-manager"});
    if (!options_.org.empty()) h.push_back({"node-org", options_.org});
  }
  return h;
}

asio::awaitable<Status> Forwarder::serve(grpc::ServerCall& call) {
  ++stats_.calls;
  ++active_calls_;
  struct Leave {
    std::size_t& n;
    ~Leave() { --n; }
  } leave{active_calls_};

  if (!options_.unusable.empty()) co_return Status(StatusCode::unavailable, options_.unusable);
  if (auto redirects = call.metadata_all("redirect"); !redirects.empty()) {
    ++stats_.redirect_loops;
    std::string list = "[";
    for (std::size_t i = 0; i < redirects.size(); ++i)
      list += (i ? " " : "") + std::string(redirects[i]);
    co_return Status(StatusCode::resource_exhausted,
                     "more than one redirect to leader from: " + list + "]");
  }
  if (call.peer().empty()) {
    co_return Status(StatusCode::invalid_argument, "remote addr is not found in context");
  }
  auto shape = shapes_.find(call.method_path());
  if (shape == shapes_.end()) co_return Status(StatusCode::unimplemented, "not forwarded");
  const bool unary = shape->second == CallShape::unary;
  const bool stream_requests = shape->second == CallShape::client_stream;

  std::string first;
  if (!stream_requests) {
    auto request = co_await call.read_request();
    if (!request) co_return request.error();
    first = grpc::frame_payload(*request);
  }
  std::vector<h2::Header> headers = upstream_headers(call);
  for (;;) {
    // A unary call waits for a leader until its deadline; a stream for stream_leader_wait.
    auto conn =
        co_await connection(call, unary || options_.stream_leader_wait.count() > 0,
                            unary ? co::TimerWheel::Clock::time_point::max()
                                  : co::TimerWheel::Clock::now() + options_.stream_leader_wait);
    if (!conn) co_return conn.error();
    const std::string address = conn_address_;
    if (auto deadline = call.deadline()) {
      auto left = std::max<co::TimerWheel::Clock::duration>(
          *deadline - co::TimerWheel::Clock::now(), std::chrono::milliseconds(1));
      std::string timeout = grpc::format_grpc_timeout(left);
      if (headers.back().name == "grpc-timeout") {
        headers.back().value = std::move(timeout);
      } else {
        headers.push_back({"grpc-timeout", std::move(timeout)});
      }
    }
    // A unary call keeps its request for a retry; a stream sends it once.
    auto stream = (*conn)->open(headers, unary ? first : std::move(first), !stream_requests);
    if (!stream) {
      if (conn_ == *conn) drop_connection();
      if (unary) continue;
      co_return Status(StatusCode::unavailable,
                       "cannot open a stream to the leader: " + stream.error());
    }
    grpc::RelayOutcome out = co_await call.relay(**stream, stream_requests, unary);
    if (!out.retryable) co_return out.status;
    // The connection failed before the leader answered: look for a healthy leader again, no
    // sooner than the next poll (SwarmKit retries such unary calls the same way).
    ++stats_.retries;
    if (conn_ == *conn) drop_connection();
    last_failed_address_ = address;
    last_failure_ = co::TimerWheel::Clock::now();
    last_error_ = out.status;
  }
}

}  // namespace dispatchd::proxy
