// dispatchd-agentsim: N simulated SwarmKit agents in one process, each with its own connection
// (mutual TLS with its own certificate, or h2c with node-id metadata), a Session, Heartbeats at
// the period the server returns, an Assignments stream and task status reports, reconnecting with
// SwarmKit's backoff. See bench/agentsim/README.md.

#include <sys/resource.h>
#include <sys/time.h>

#include <algorithm>
#include <asio/co_spawn.hpp>
#include <asio/detached.hpp>
#include <asio/experimental/as_tuple.hpp>
#include <asio/io_context.hpp>
#include <asio/ip/tcp.hpp>
#include <asio/signal_set.hpp>
#include <asio/steady_timer.hpp>
#include <asio/use_awaitable.hpp>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <unordered_set>
#include <vector>

#include "dispatchd/app/duration.hpp"
#include "dispatchd/app/flags.hpp"
#include "dispatchd/co/scope.hpp"
#include "dispatchd/co/timer_wheel.hpp"
#include "dispatchd/co/wakeup.hpp"
#include "dispatchd/grpc/client.hpp"
#include "dispatchd/h2/client_connection.hpp"
#include "dispatchd/log.hpp"
#include "dispatchd/net/tcp_transport.hpp"
#include "dispatchd/net/tls_client.hpp"
#include "dispatcher.pb.h"

namespace {

namespace api = docker::swarmkit::v1;
namespace grpc = dispatchd::grpc;
namespace h2 = dispatchd::h2;
namespace net = dispatchd::net;
namespace co = dispatchd::co;
using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;
using asio::experimental::as_tuple;

constexpr std::string_view kSession = "/docker.swarmkit.v1.Dispatcher/Session";
constexpr std::string_view kHeartbeat = "/docker.swarmkit.v1.Dispatcher/Heartbeat";
constexpr std::string_view kAssignments = "/docker.swarmkit.v1.Dispatcher/Assignments";
constexpr std::string_view kUpdateTaskStatus = "/docker.swarmkit.v1.Dispatcher/UpdateTaskStatus";

// SwarmKit agent constants (agent/agent.go, agent/session.go).
constexpr auto kInitialBackoff = 100ms;
constexpr auto kMaxBackoff = 8s;
constexpr auto kSessionInitTimeout = 5s;
constexpr auto kHeartbeatTimeout = 5s;
constexpr std::size_t kAgentsPerSourceAddress = 20000;

struct Config {
  std::string addr = "127.0.0.1:4242";
  int agents = 100;
  std::string certs;
  bool insecure = false;
  std::chrono::nanoseconds run_for = 10s;
  bool json = false;
  std::string server_name = "swarm-manager";
  int max_connecting = 256;
  int source_addrs = 0;  // 0: one per 20k agents on loopback
  bool ignore_managers = false;
};

// Peak RSS of this process in KiB (getrusage: needs no file descriptor, which a run at the
// descriptor limit may not have).
long self_rss_kb() {
  rusage ru{};
  if (getrusage(RUSAGE_SELF, &ru) != 0) return 0;
  return ru.ru_maxrss;
}

double ms(Clock::duration d) {
  return std::chrono::duration<double, std::milli>(d).count();
}

double percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::size_t k =
      std::min(v.size() - 1, static_cast<std::size_t>(p * static_cast<double>(v.size())));
  std::nth_element(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(k), v.end());
  return v[k];
}

// Latency samples: all of them up to a bound, then a uniform sample (reservoir), so that a long
// run of 100k agents keeps a few MB of samples, not one double per heartbeat.
class Samples {
 public:
  static constexpr std::size_t kMax = 1 << 20;
  void add(double v) {
    ++seen_;
    if (v_.size() < kMax) {
      v_.push_back(v);
      return;
    }
    std::uniform_int_distribution<std::uint64_t> d(0, seen_ - 1);
    if (std::uint64_t i = d(rng_); i < kMax) v_[i] = v;
  }
  const std::vector<double>& values() const noexcept { return v_; }

 private:
  std::vector<double> v_;
  std::uint64_t seen_ = 0;
  std::mt19937_64 rng_{42};
};

struct Stats {
  std::uint64_t connected = 0;  // open connections now
  std::uint64_t sessions = 0;   // sessions open now
  std::uint64_t sessions_established = 0;
  std::uint64_t agents_with_session = 0;  // agents that got at least one session
  std::uint64_t heartbeats = 0;
  std::uint64_t tasks_running = 0;
  std::map<std::string, std::uint64_t> errors;
  Samples registration_ms;
  Samples heartbeat_ms;
  std::optional<Clock::duration> all_sessions_after;
};

// Bounds the connection attempts in flight (a SYN flood of 100k would overflow the backlog).
class Gate {
 public:
  explicit Gate(int n) : available_(n) {}
  asio::awaitable<void> acquire() {
    while (available_ == 0 && !open_all_) {
      co::Wakeup w;
      waiters_.push_back(&w);
      co_await w.async_park();
    }
    if (!open_all_) --available_;
  }
  void release() {
    ++available_;
    if (!waiters_.empty()) {
      co::Wakeup* w = waiters_.front();
      waiters_.pop_front();
      w->notify();
    }
  }
  void open_all() {
    open_all_ = true;
    while (!waiters_.empty()) {
      waiters_.front()->notify();
      waiters_.pop_front();
    }
  }

 private:
  int available_;
  bool open_all_ = false;
  std::deque<co::Wakeup*> waiters_;
};

struct Agent {
  int index = 0;
  std::string node_id;  // insecure mode
  std::string session_id;
  std::shared_ptr<net::TlsClientCertificate> cert;
  std::optional<asio::ip::address> source;
  std::unordered_set<std::string> reporting;  // tasks with status updates in flight or done
  bool ever_session = false;
  // The manager list from the last SessionMessage; dialled (at random) instead of --addr.
  std::vector<asio::ip::tcp::endpoint> managers;
  std::mt19937_64 rng;
  std::shared_ptr<h2::ClientConnection> conn;
  asio::steady_timer* sleep = nullptr;  // the backoff wait, cancelled on stop
};

// One connection's life: shared by the agent's coroutines.
struct Attempt {
  explicit Attempt(asio::io_context& io) : heartbeat_timer(io) {}
  std::shared_ptr<h2::ClientConnection> conn;
  asio::steady_timer heartbeat_timer;
  bool failed = false;
};

class Sim {
 public:
  Sim(asio::io_context& io, Config cfg)
      : io_(io), wheel_(io), cfg_(std::move(cfg)), gate_(cfg_.max_connecting) {}

  std::optional<std::string> prepare() {
    auto colon = cfg_.addr.rfind(':');
    if (colon == std::string::npos) return "--addr: want HOST:PORT";
    std::string host = cfg_.addr.substr(0, colon);
    if (host.starts_with('[') && host.ends_with(']')) host = host.substr(1, host.size() - 2);
    std::error_code ec;
    asio::ip::tcp::resolver resolver(io_);
    auto results = resolver.resolve(host, cfg_.addr.substr(colon + 1), ec);
    if (ec || results.empty()) return "--addr " + cfg_.addr + ": " + ec.message();
    target_ = results.begin()->endpoint();

    if (!cfg_.insecure) {
      if (cfg_.certs.empty()) return "either --certs DIR or --insecure is required";
      auto ctx = net::TlsClientContext::load(cfg_.certs + "/ca.pem");
      if (!ctx) return ctx.error();
      tls_ = *ctx;
    }
    int nsrc = cfg_.source_addrs;
    bool loopback = target_.address().is_v4() && target_.address().is_loopback();
    if (nsrc == 0 && loopback) {
      nsrc =
          static_cast<int>((static_cast<std::size_t>(cfg_.agents) + kAgentsPerSourceAddress - 1) /
                           kAgentsPerSourceAddress);
      if (nsrc <= 1) nsrc = 0;  // a few agents: let the kernel choose
    }
    if (nsrc > 0 && !loopback) return "--source-addrs needs a 127.x.x.x --addr";
    agents_.resize(static_cast<std::size_t>(cfg_.agents));
    for (int i = 0; i < cfg_.agents; ++i) {
      Agent& a = agents_[static_cast<std::size_t>(i)];
      a.index = i + 1;
      a.node_id = "agentsim-" + std::to_string(i + 1);
      a.rng.seed(static_cast<std::uint64_t>(i + 1) * 0x9E3779B97F4A7C15ull);
      if (nsrc > 0) {
        a.source = asio::ip::address_v4(0x7f000002u + static_cast<std::uint32_t>(i % nsrc));
      }
      if (!cfg_.insecure) {
        std::string base = cfg_.certs + "/node-" + std::to_string(i + 1);
        auto c = net::TlsClientCertificate::load(base + ".pem", base + ".key");
        if (!c) {
          return c.error() + " (scripts/gen-certs.sh --out " + cfg_.certs + " --nodes " +
                 std::to_string(cfg_.agents) + " makes them)";
        }
        a.cert = *c;
      }
    }
    return std::nullopt;
  }

  asio::awaitable<void> run() {
    start_ = Clock::now();
    co::Scope agents(io_.get_executor());
    for (auto& a : agents_)
      agents.spawn(agent_loop(a));
    asio::steady_timer tick(io_);
    asio::signal_set signals(io_, SIGINT, SIGTERM);
    bool interrupted = false;
    signals.async_wait([&](std::error_code ec, int) {
      if (!ec) {
        interrupted = true;
        tick.cancel();
      }
    });
    auto end = start_ + std::chrono::duration_cast<Clock::duration>(cfg_.run_for);
    std::uint64_t last_heartbeats = 0;
    while (!interrupted && Clock::now() < end) {
      tick.expires_after(std::min<Clock::duration>(1s, end - Clock::now()));
      co_await tick.async_wait(as_tuple(asio::use_awaitable));
      progress(stats_.heartbeats - last_heartbeats);
      last_heartbeats = stats_.heartbeats;
    }
    elapsed_ = Clock::now() - start_;
    rss_kb_ = self_rss_kb();
    signals.cancel();
    stop();
    co_await agents.join();
  }

  void report() const;

 private:
  void stop() {
    stopping_ = true;
    gate_.open_all();
    for (auto& a : agents_) {
      if (a.conn) a.conn->close();
      if (a.sleep) a.sleep->cancel();
    }
  }

  void error(const std::string& what) { ++stats_.errors[what]; }
  void fail(Attempt& at, const grpc::Status& st) {
    if (at.failed) return;
    at.failed = true;
    if (!stopping_) error(grpc::status_code_name(st.code()));
    at.conn->close();
    at.heartbeat_timer.cancel();
  }

  void progress(std::uint64_t heartbeats_last_second) const {
    std::string errs;
    for (const auto& [k, v] : stats_.errors)
      errs += " " + k + "=" + std::to_string(v);
    std::fprintf(
        stderr,
        "agentsim: %5.1fs connected=%lu sessions=%lu heartbeats/s=%lu tasks=%lu errors:%s\n",
        std::chrono::duration<double>(Clock::now() - start_).count(),
        static_cast<unsigned long>(stats_.connected), static_cast<unsigned long>(stats_.sessions),
        static_cast<unsigned long>(heartbeats_last_second),
        static_cast<unsigned long>(stats_.tasks_running), errs.empty() ? " none" : errs.c_str());
  }

  grpc::CallOptions options(const Agent& a) const {
    grpc::CallOptions o;
    o.authority = cfg_.server_name;
    if (cfg_.insecure) {
      o.metadata.push_back({"node-id", a.node_id});
    } else {
      o.scheme = "https";
    }
    return o;
  }

  asio::awaitable<void> agent_loop(Agent& a) {
    std::chrono::nanoseconds backoff{0};
    while (!stopping_) {
      if (backoff.count() > 0) {
        // SwarmKit waits a random part of the current backoff before it dials again.
        std::uniform_int_distribution<std::int64_t> d(0, backoff.count());
        asio::steady_timer t(io_);
        a.sleep = &t;
        t.expires_after(std::chrono::nanoseconds(d(a.rng)));
        co_await t.async_wait(as_tuple(asio::use_awaitable));
        a.sleep = nullptr;
        if (stopping_) break;
      }
      bool registered = co_await attempt(a);
      backoff = registered ? std::chrono::nanoseconds(kInitialBackoff)
                           : std::min<std::chrono::nanoseconds>(kMaxBackoff,
                                                                kInitialBackoff + 2 * backoff);
    }
  }

  asio::awaitable<std::expected<std::shared_ptr<h2::ClientConnection>, std::string>> connect(
      Agent& a) {
    asio::ip::tcp::endpoint to = target_;
    if (!a.managers.empty()) {
      std::uniform_int_distribution<std::size_t> pick(0, a.managers.size() - 1);
      to = a.managers[pick(a.rng)];
    }
    std::optional<asio::ip::address> from;
    if (to.address().is_v4() && to.address().is_loopback()) from = a.source;
    auto sock = co_await net::dial(io_.get_executor(), to, from);
    if (!sock) co_return std::unexpected("connect: " + sock.error().message());
    std::unique_ptr<net::Transport> tr;
    if (cfg_.insecure) {
      tr = std::make_unique<net::TcpTransport>(std::move(*sock));
    } else {
      auto tls = std::make_unique<net::TlsClientTransport>(std::move(*sock), tls_, a.cert,
                                                           cfg_.server_name);
      if (auto ec = co_await tls->handshake(); ec) {
        co_return std::unexpected("TLS handshake: " + tls->handshake_error());
      }
      tr = std::move(tls);
    }
    co_return std::make_shared<h2::ClientConnection>(std::move(tr), wheel_);
  }

  // One connection and session; returns whether a session was established.
  asio::awaitable<bool> attempt(Agent& a) {
    co_await gate_.acquire();
    if (stopping_) co_return false;
    auto t0 = Clock::now();
    auto conn = co_await connect(a);
    gate_.release();
    if (!conn) {
      if (!stopping_) error("Unavailable");
      dispatchd::log::debug("agent {}: {}", a.index, conn.error());
      co_return false;
    }
    Attempt at(io_);
    at.conn = *conn;
    a.conn = at.conn;
    if (stopping_) at.conn->close();
    ++stats_.connected;
    co::Scope scope(io_.get_executor());
    scope.spawn(at.conn->run());
    bool registered = co_await session(a, at, t0, scope);
    at.conn->close();
    at.heartbeat_timer.cancel();
    co_await scope.join();
    a.conn.reset();
    --stats_.connected;
    co_return registered;
  }

  asio::awaitable<bool> session(Agent& a, Attempt& at, Clock::time_point t0, co::Scope& scope) {
    api::SessionRequest req;
    auto* d = req.mutable_description();
    d->set_hostname("agentsim-" + std::to_string(a.index));
    d->mutable_platform()->set_architecture("x86_64");
    d->mutable_platform()->set_os("linux");
    d->mutable_resources()->set_nano_cpus(2'000'000'000);
    d->mutable_resources()->set_memory_bytes(std::int64_t{4} << 30);
    d->mutable_engine()->set_engine_version("agentsim");
    req.set_session_id(a.session_id);
    auto call = grpc::ClientCall::start(*at.conn, kSession, req, options(a));
    if (!call) {
      fail(at, call.error());
      co_return false;
    }
    // The first SessionMessage must come within 5 s.
    bool first = false;
    auto init_timeout = [&] {
      if (!first)
        fail(at, grpc::Status(grpc::StatusCode::deadline_exceeded, "session initiation timed out"));
    };
    co::TimerCallback<decltype(init_timeout)> init_timer(init_timeout);
    wheel_.arm_after(init_timer, kSessionInitTimeout);
    api::SessionMessage msg;
    bool ok = co_await call->read(msg);
    first = true;
    wheel_.disarm(init_timer);
    if (!ok) {
      fail(at, call->status());
      co_return false;
    }
    stats_.registration_ms.add(ms(Clock::now() - t0));
    a.session_id = msg.session_id();
    follow_managers(a, msg);
    ++stats_.sessions;
    ++stats_.sessions_established;
    if (!a.ever_session) {
      a.ever_session = true;
      if (++stats_.agents_with_session == agents_.size())
        stats_.all_sessions_after = Clock::now() - start_;
    }
    scope.spawn(heartbeats(a, at));
    scope.spawn(assignments(a, at, scope));
    while (co_await call->read(msg)) {
      // Further SessionMessages: node updates and keys mean nothing to a fake node.
      follow_managers(a, msg);
    }
    grpc::Status st = call->status();
    if (st.is_ok()) st = grpc::Status(grpc::StatusCode::unavailable, "session ended");
    fail(at, st);
    --stats_.sessions;
    co_return true;
  }

  // As the agent does: the next dial goes to one of the managers listed (IP:port addresses).
  void follow_managers(Agent& a, const api::SessionMessage& msg) const {
    if (cfg_.ignore_managers) return;
    std::vector<asio::ip::tcp::endpoint> eps;
    for (const auto& wp : msg.managers()) {
      const std::string& addr = wp.peer().addr();
      auto colon = addr.rfind(':');
      if (colon == std::string::npos) continue;
      std::string host = addr.substr(0, colon);
      if (host.starts_with('[') && host.ends_with(']')) host = host.substr(1, host.size() - 2);
      std::error_code ec;
      auto ip = asio::ip::make_address(host, ec);
      int port = std::atoi(addr.c_str() + colon + 1);
      if (ec || port <= 0 || port > 65535) continue;
      eps.emplace_back(ip, static_cast<unsigned short>(port));
    }
    if (!eps.empty()) a.managers = std::move(eps);
  }

  asio::awaitable<void> heartbeats(Agent& a, Attempt& at) {
    for (;;) {
      if (at.failed || stopping_) co_return;
      api::HeartbeatRequest req;
      req.set_session_id(a.session_id);
      api::HeartbeatResponse resp;
      auto o = options(a);
      o.timeout = kHeartbeatTimeout;
      auto t0 = Clock::now();
      grpc::Status st = co_await grpc::unary_call(*at.conn, kHeartbeat, req, resp, o);
      if (at.failed) co_return;
      if (!st.is_ok()) {
        fail(at, st);
        co_return;
      }
      stats_.heartbeat_ms.add(ms(Clock::now() - t0));
      ++stats_.heartbeats;
      auto period = std::chrono::seconds(resp.period().seconds()) +
                    std::chrono::nanoseconds(resp.period().nanos());
      if (period <= std::chrono::nanoseconds(0)) period = 5s;
      at.heartbeat_timer.expires_after(period);
      co_await at.heartbeat_timer.async_wait(as_tuple(asio::use_awaitable));
    }
  }

  asio::awaitable<void> assignments(Agent& a, Attempt& at, co::Scope& scope) {
    api::AssignmentsRequest req;
    req.set_session_id(a.session_id);
    auto call = grpc::ClientCall::start(*at.conn, kAssignments, req, options(a));
    if (!call) {
      fail(at, call.error());
      co_return;
    }
    api::AssignmentsMessage msg;
    while (co_await call->read(msg)) {
      for (const auto& change : msg.changes()) {
        if (change.action() != api::AssignmentChange::UPDATE || !change.assignment().has_task()) {
          continue;
        }
        const api::Task& t = change.assignment().task();
        if (t.status().state() >= api::RUNNING || t.desired_state() > api::RUNNING) continue;
        if (!a.reporting.insert(t.id()).second) continue;
        scope.spawn(run_task(a, at, t.id()));
      }
    }
    if (!at.failed)
      fail(at, call->status().is_ok()
                   ? grpc::Status(grpc::StatusCode::unavailable, "assignments ended")
                   : call->status());
  }

  // ASSIGNED -> ACCEPTED -> RUNNING, one UpdateTaskStatus per change as the agent sends them.
  asio::awaitable<void> run_task(Agent& a, Attempt& at, std::string task_id) {
    for (api::TaskState state : {api::ACCEPTED, api::RUNNING}) {
      api::UpdateTaskStatusRequest req;
      req.set_session_id(a.session_id);
      auto* u = req.add_updates();
      u->set_task_id(task_id);
      auto now = std::chrono::system_clock::now().time_since_epoch();
      u->mutable_status()->mutable_timestamp()->set_seconds(
          std::chrono::duration_cast<std::chrono::seconds>(now).count());
      u->mutable_status()->set_state(state);
      u->mutable_status()->set_message(state == api::ACCEPTED ? "accepted" : "started");
      api::UpdateTaskStatusResponse resp;
      grpc::Status st =
          co_await grpc::unary_call(*at.conn, kUpdateTaskStatus, req, resp, options(a));
      if (!st.is_ok()) {
        a.reporting.erase(task_id);  // reported again after the next registration
        if (!at.failed) fail(at, st);
        co_return;
      }
    }
    ++stats_.tasks_running;
  }

  asio::io_context& io_;
  co::TimerWheel wheel_;
  Config cfg_;
  Gate gate_;
  asio::ip::tcp::endpoint target_;
  std::shared_ptr<net::TlsClientContext> tls_;
  std::vector<Agent> agents_;
  Stats stats_;
  Clock::time_point start_;
  Clock::duration elapsed_{};
  long rss_kb_ = 0;  // the simulator's own peak RSS, taken at the end of the run
  bool stopping_ = false;
};

void Sim::report() const {
  double secs = std::chrono::duration<double>(elapsed_).count();
  double all_after = stats_.all_sessions_after
                         ? std::chrono::duration<double>(*stats_.all_sessions_after).count()
                         : -1;
  double rate = all_after > 0 ? static_cast<double>(agents_.size()) / all_after : 0;
  double reg50 = percentile(stats_.registration_ms.values(), 0.50),
         reg99 = percentile(stats_.registration_ms.values(), 0.99);
  double hb50 = percentile(stats_.heartbeat_ms.values(), 0.50),
         hb99 = percentile(stats_.heartbeat_ms.values(), 0.99);
  std::uint64_t errors = 0;
  for (const auto& [k, v] : stats_.errors)
    errors += v;
  if (cfg_.json) {
    std::string errs;
    for (const auto& [k, v] : stats_.errors)
      errs += (errs.empty() ? "" : ",") + ("\"" + k + "\":" + std::to_string(v));
    std::printf(
        "{\"agents\":%zu,\"duration_s\":%.3f,\"agents_with_session\":%lu,"
        "\"sessions_established\":%lu,\"time_to_all_sessions_s\":%.3f,"
        "\"sessions_per_second\":%.1f,\"registration_ms\":{\"p50\":%.3f,\"p99\":%.3f},"
        "\"heartbeats\":%lu,\"heartbeat_rtt_ms\":{\"p50\":%.3f,\"p99\":%.3f},"
        "\"tasks_running\":%lu,\"errors_total\":%lu,\"errors\":{%s},"
        "\"simulator_peak_rss_kb\":%ld}\n",
        agents_.size(), secs, static_cast<unsigned long>(stats_.agents_with_session),
        static_cast<unsigned long>(stats_.sessions_established), all_after, rate, reg50, reg99,
        static_cast<unsigned long>(stats_.heartbeats), hb50, hb99,
        static_cast<unsigned long>(stats_.tasks_running), static_cast<unsigned long>(errors),
        errs.c_str(), rss_kb_);
    return;
  }
  std::printf("agents                     %zu\n", agents_.size());
  std::printf("duration                   %.1f s\n", secs);
  std::printf("agents with a session      %lu\n",
              static_cast<unsigned long>(stats_.agents_with_session));
  std::printf("sessions established       %lu\n",
              static_cast<unsigned long>(stats_.sessions_established));
  if (all_after > 0) {
    std::printf("all sessions after         %.3f s (%.0f sessions/s)\n", all_after, rate);
  } else {
    std::printf("all sessions after         never\n");
  }
  std::printf("registration latency       p50 %.2f ms  p99 %.2f ms\n", reg50, reg99);
  std::printf("heartbeats                 %lu\n", static_cast<unsigned long>(stats_.heartbeats));
  std::printf("heartbeat RTT              p50 %.2f ms  p99 %.2f ms\n", hb50, hb99);
  std::printf("tasks brought to RUNNING   %lu\n", static_cast<unsigned long>(stats_.tasks_running));
  std::printf(
      "simulator peak RSS         %ld KiB (%.1f KiB per agent)\n", rss_kb_,
      agents_.empty() ? 0.0 : static_cast<double>(rss_kb_) / static_cast<double>(agents_.size()));
  std::printf("errors                     %lu\n", static_cast<unsigned long>(errors));
  for (const auto& [k, v] : stats_.errors)
    std::printf("  %-24s %lu\n", k.c_str(), static_cast<unsigned long>(v));
}

void raise_nofile(int agents) {
  rlimit rl{};
  if (getrlimit(RLIMIT_NOFILE, &rl) != 0) return;
  rlim_t want = static_cast<rlim_t>(agents) + 1024;
  if (rl.rlim_cur >= want) return;
  if (rl.rlim_max < want) {
    rlimit r2{want, want};
    if (setrlimit(RLIMIT_NOFILE, &r2) == 0) return;
  }
  rl.rlim_cur = std::min(want, rl.rlim_max);
  setrlimit(RLIMIT_NOFILE, &rl);
  if (rl.rlim_cur < want) {
    std::fprintf(stderr,
                 "dispatchd-agentsim: warning: open files limited to %lu (hard limit), %lu wanted "
                 "for %d agents: agents beyond it will fail to connect\n",
                 static_cast<unsigned long>(rl.rlim_cur), static_cast<unsigned long>(want), agents);
  }
}

}  // namespace

int main(int argc, char** argv) {
  Config cfg;
  dispatchd::app::Flags flags;
  auto duration = [](std::chrono::nanoseconds& target) {
    return [&target](std::string_view v) -> std::optional<std::string> {
      auto d = dispatchd::app::parse_duration(v);
      if (!d || d->count() < 0) return "want a duration such as 300ms, 10s or 1m30s";
      target = *d;
      return std::nullopt;
    };
  };
  auto positive = [](int& target) {
    return [&target](std::string_view v) -> std::optional<std::string> {
      try {
        std::size_t used = 0;
        int n = std::stoi(std::string(v), &used);
        if (used != v.size() || n < 0) return "want a non-negative integer";
        target = n;
        return std::nullopt;
      } catch (...) {
        return "want a non-negative integer";
      }
    };
  };
  auto text = [](std::string& target) {
    return [&target](std::string_view v) -> std::optional<std::string> {
      target = v;
      return std::nullopt;
    };
  };
  flags.add("addr", "HOST:PORT", cfg.addr, "the dispatcher to connect to", text(cfg.addr));
  flags.add("agents", "N", std::to_string(cfg.agents),
            "agents to simulate, each its own connection", positive(cfg.agents));
  flags.add("certs", "DIR", "",
            "ca.pem and node-<i>.pem/.key for every agent i (scripts/gen-certs.sh --nodes N)",
            text(cfg.certs));
  flags.add_bool("insecure", "h2c without TLS; agents name themselves with node-id metadata",
                 cfg.insecure);
  flags.add("for", "DURATION", "10s", "how long to run", duration(cfg.run_for));
  flags.add_bool("json", "print the final report as one JSON object", cfg.json);
  flags.add("server-name", "NAME", cfg.server_name, "TLS server name agents dial",
            text(cfg.server_name));
  flags.add("max-connecting", "N", std::to_string(cfg.max_connecting),
            "connection attempts (TCP + TLS handshake) in flight at once",
            positive(cfg.max_connecting));
  flags.add("source-addrs", "N", "auto",
            "spread connections over 127.0.0.2 .. 127.0.0.(N+1) (auto: one per 20k agents)",
            positive(cfg.source_addrs));
  flags.add_bool("ignore-managers",
                 "always dial --addr (default: dial the managers the last SessionMessage listed)",
                 cfg.ignore_managers);
  bool help = false;
  if (auto err = flags.parse(argc, argv, help)) {
    std::fprintf(stderr, "dispatchd-agentsim: %s\n", err->c_str());
    return 2;
  }
  if (help) {
    std::printf(
        "%s", flags.usage("dispatchd-agentsim", "simulates N SwarmKit agents against a dispatcher")
                  .c_str());
    return 0;
  }
  if (cfg.max_connecting < 1) cfg.max_connecting = 1;
  std::signal(SIGPIPE, SIG_IGN);
  dispatchd::log::set_level(dispatchd::log::Level::warn);
  raise_nofile(cfg.agents);
  asio::io_context io(1);
  Sim sim(io, cfg);
  if (auto err = sim.prepare()) {
    std::fprintf(stderr, "dispatchd-agentsim: %s\n", err->c_str());
    return 2;
  }
  asio::co_spawn(io, sim.run(), asio::detached);
  io.run();
  sim.report();
  return 0;
}
