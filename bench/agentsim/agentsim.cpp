// dispatchd-agentsim: N simulated SwarmKit agents in one process, each with its own connection
// (mutual TLS with its own certificate, or h2c with node-id metadata), a Session, Heartbeats at
// the period the server returns, an Assignments stream and task status reports, reconnecting with
// SwarmKit's backoff. See bench/agentsim/README.md.

#include <fcntl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

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
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <unordered_map>
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
#include "mint.hpp"

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
  // Minting (--ca-cert/--ca-key): per-agent certificates cached in cert_cache.
  std::string ca_cert, ca_key, org = "dispatchd", cert_cache;
  unsigned mint_threads = 0;  // 0: hardware concurrency
  // Server sampling: a PID, or a file holding it (re-read every second: a restarted server).
  int server_pid = 0;
  std::string server_pid_file;
  std::string fanout_after;  // UNIX_NS or @FILE holding it (read at the end)
  double churn_pct = 0;
  std::chrono::nanoseconds churn_for = 60s;
  std::optional<std::chrono::nanoseconds> churn_after;  // default: all sessions up + 2 s
  std::chrono::nanoseconds steady_delay = 2s;
};

std::int64_t unix_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// The server's RSS and CPU from /proc, through descriptors opened once (a run at the descriptor
// limit may not be able to open new ones).
class ProcSampler {
 public:
  ~ProcSampler() { close_fds(); }
  bool open_pid(int pid) {
    if (pid == pid_ && status_fd_ >= 0) return true;
    close_fds();
    pid_ = pid;
    std::string base = "/proc/" + std::to_string(pid);
    status_fd_ = ::open((base + "/status").c_str(), O_RDONLY | O_CLOEXEC);
    stat_fd_ = ::open((base + "/stat").c_str(), O_RDONLY | O_CLOEXEC);
    sched_fd_ = ::open((base + "/schedstat").c_str(), O_RDONLY | O_CLOEXEC);
    return status_fd_ >= 0 && stat_fd_ >= 0;
  }
  // Seconds the process's main thread waited on a run queue (/proc/PID/schedstat, field 2): CPU
  // it wanted and did not get, e.g. on a core shared with other work. -1: unknown.
  double run_delay_s() const { return read_run_delay(sched_fd_); }
  static double read_run_delay(int fd) {
    if (fd < 0) return -1;
    char buf[128];
    ssize_t n = ::pread(fd, buf, sizeof buf - 1, 0);
    if (n <= 0) return -1;
    buf[n] = '\0';
    char* end = nullptr;
    std::strtoull(buf, &end, 10);
    return static_cast<double>(std::strtoull(end, nullptr, 10)) / 1e9;
  }
  int pid() const noexcept { return pid_; }
  // RSS in KiB and CPU (user + system) in seconds; false when the process is gone.
  bool sample(long& rss_kb, double& cpu_s) {
    if (status_fd_ < 0 || stat_fd_ < 0) return false;
    char buf[4096];
    ssize_t n = ::pread(status_fd_, buf, sizeof buf - 1, 0);
    if (n <= 0) return false;
    buf[n] = '\0';
    const char* r = std::strstr(buf, "VmRSS:");
    if (r == nullptr) return false;
    rss_kb = std::strtol(r + 6, nullptr, 10);
    n = ::pread(stat_fd_, buf, sizeof buf - 1, 0);
    if (n <= 0) return false;
    buf[n] = '\0';
    const char* p = std::strrchr(buf, ')');
    if (p == nullptr) return false;
    // Fields after "pid (comm)": state is field 3, utime 14, stime 15.
    char* q = const_cast<char*>(p + 2);
    unsigned long long ut = 0, st = 0;
    for (int field = 3; field <= 15 && *q != '\0'; ++field) {
      char* end = nullptr;
      unsigned long long v = std::strtoull(q, &end, 10);
      if (field == 14) ut = v;
      if (field == 15) st = v;
      q = std::strchr(q, ' ');
      if (q == nullptr) break;
      ++q;
    }
    cpu_s = static_cast<double>(ut + st) / static_cast<double>(sysconf(_SC_CLK_TCK));
    return true;
  }

 private:
  void close_fds() {
    if (status_fd_ >= 0) ::close(status_fd_);
    if (stat_fd_ >= 0) ::close(stat_fd_);
    if (sched_fd_ >= 0) ::close(sched_fd_);
    status_fd_ = stat_fd_ = sched_fd_ = -1;
  }
  int pid_ = 0;
  int status_fd_ = -1, stat_fd_ = -1, sched_fd_ = -1;
};

// One line of the time series (every second).
struct Sample {
  double t = 0;  // seconds since the start
  std::int64_t unix_ns = 0;
  std::uint64_t connected = 0, sessions = 0, heartbeats = 0;
  int server_pid = 0;
  long server_rss_kb = -1;  // -1: not sampled
  double server_cpu_s = -1;
  double sim_cpu_s = 0;  // this process (user + system): is the simulator the bottleneck?
  // Run-queue waits (schedstat) of the server's and the simulator's main threads.
  double server_run_delay_s = -1, sim_run_delay_s = -1;
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
  Samples steady_heartbeat_ms;  // heartbeats answered in the steady window
  std::optional<Clock::duration> all_sessions_after;
  Samples reconnect_ms;  // from losing a session to having a new one
  double reconnect_max_ms = 0;
  std::uint64_t tasks_rereported = 0;
  // Churn: abrupt drops, and what agents that were never dropped suffered.
  std::uint64_t churn_drops = 0;
  std::uint64_t healthy_heartbeat_errors = 0;  // a failed Heartbeat of a never-dropped agent
  std::uint64_t healthy_not_registered = 0;    // NotFound on any call of a never-dropped agent
  std::uint64_t healthy_sessions_lost = 0;
  // The mass loss of sessions (a server restart): from the first session lost after the fleet
  // was whole, once fewer than half remain, until every agent has a session again.
  std::optional<Clock::duration> last_full_at, first_loss_after_full;
  std::optional<Clock::duration> outage_start, outage_end;
  std::map<std::string, std::uint64_t> errors_at_outage_start, errors_at_outage_end;
  Samples outage_reconnect_ms;
  double outage_reconnect_max_ms = 0;
  std::uint64_t outage_reconnects = 0;
};

struct FanoutEvent {
  std::uint64_t list = 0;  // hash of the manager list
  int agent = 0;
  std::int64_t unix_ns = 0;
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
  std::unordered_set<std::string> reporting;    // tasks with status updates in flight or done
  std::map<std::string, api::TaskState> tasks;  // the last state the server acknowledged
  bool ever_session = false;
  bool in_session = false;
  bool churned = false;       // dropped by --churn at least once
  bool churn_drop = false;    // the current connection is being dropped by --churn
  bool init_expired = false;  // the current attempt's 5 s ran out before its TLS handshake ended
  std::optional<Clock::time_point> lost_at;  // when the last session ended
  int fd = -1;                               // the current connection's socket
  // The managers from the SessionMessages, with SwarmKit's observed weights (remotes.go):
  // dialled by weighted random choice instead of --addr.
  struct Remote {
    std::string node_id, addr;
    asio::ip::tcp::endpoint ep;
    int weight = 0;
  };
  std::vector<Remote> managers;
  int dialled = -1;  // index into managers of the current connection's peer, -1: --addr
  std::vector<std::uint64_t> lists_seen;
  std::mt19937_64 rng;
  std::shared_ptr<h2::ClientConnection> conn;
  asio::steady_timer* sleep = nullptr;  // the backoff wait, cancelled on stop
};

// One connection's life: shared by the agent's coroutines.
struct Attempt {
  explicit Attempt(asio::io_context& io) : heartbeat_timer(io) {}
  Agent* agent = nullptr;
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

    std::string cert_dir = cfg_.certs;
    if (!cfg_.insecure) {
      std::string ca = cfg_.certs + "/ca.pem";
      if (!cfg_.ca_cert.empty()) {
        if (cfg_.ca_key.empty()) return "--ca-cert needs --ca-key";
        ca = cfg_.ca_cert;
        if (cfg_.cert_cache.empty()) {
          auto d = agentsim::default_cache_dir(cfg_.ca_cert, cfg_.org);
          if (!d) return d.error();
          cfg_.cert_cache = *d;
        }
        cert_dir = cfg_.cert_cache;
        unsigned threads = cfg_.mint_threads > 0
                               ? cfg_.mint_threads
                               : std::max(1u, std::thread::hardware_concurrency());
        auto st = agentsim::ensure_certs(cfg_.ca_cert, cfg_.ca_key, cfg_.org, cert_dir,
                                         static_cast<std::size_t>(cfg_.agents), threads);
        if (!st) return st.error();
        mint_ = *st;
        if (st->minted > 0) {
          std::fprintf(
              stderr,
              "agentsim: minted %zu certificates (O=%s, OU=swarm-worker, CN=node-<i>) in "
              "%.2f s on %u threads (%.0f/s), %zu cached, in %s\n",
              st->minted, cfg_.org.c_str(), st->mint_seconds, threads,
              st->mint_seconds > 0 ? static_cast<double>(st->minted) / st->mint_seconds : 0.0,
              st->cached, cert_dir.c_str());
        } else {
          std::fprintf(stderr, "agentsim: %zu certificates from the cache %s\n", st->cached,
                       cert_dir.c_str());
        }
      } else if (cfg_.certs.empty()) {
        return "one of --ca-cert/--ca-key, --certs DIR or --insecure is required";
      }
      auto ctx = net::TlsClientContext::load(ca);
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
        std::string base = cert_dir + "/node-" + std::to_string(i + 1);
        auto c = net::TlsClientCertificate::load(base + ".pem", base + ".key");
        if (!c) {
          return c.error() + " (scripts/gen-certs.sh --out " + cert_dir + " --nodes " +
                 std::to_string(cfg_.agents) + " makes them, or use --ca-cert/--ca-key)";
        }
        a.cert = *c;
      }
    }
    if (cfg_.server_pid > 0 || !cfg_.server_pid_file.empty()) {
      sampling_server_ = true;
      int pid = current_server_pid();
      if (pid <= 0 || !proc_.open_pid(pid)) {
        return "--server-pid: cannot read /proc/" + std::to_string(pid) + "/status and stat";
      }
    }
    return std::nullopt;
  }

  asio::awaitable<void> run() {
    start_ = Clock::now();
    take_sample();
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
    auto next_tick = start_ + 1s;
    while (!interrupted && Clock::now() < end) {
      tick.expires_at(std::min(next_tick, end));
      co_await tick.async_wait(as_tuple(asio::use_awaitable));
      if (Clock::now() < next_tick && !interrupted && Clock::now() < end) continue;
      next_tick += 1s;
      take_sample();
      churn_tick();
      progress(stats_.heartbeats - last_heartbeats);
      last_heartbeats = stats_.heartbeats;
    }
    take_sample();
    elapsed_ = Clock::now() - start_;
    sessions_at_end_ = stats_.sessions;
    rss_kb_ = self_rss_kb();
    signals.cancel();
    stop();
    co_await agents.join();
  }

  void report() const;

 private:
  int current_server_pid() const {
    if (cfg_.server_pid_file.empty()) return cfg_.server_pid;
    std::ifstream f(cfg_.server_pid_file);
    int pid = 0;
    f >> pid;
    return pid;
  }

  void take_sample() {
    Sample s;
    s.t = std::chrono::duration<double>(Clock::now() - start_).count();
    s.unix_ns = unix_ns();
    s.connected = stats_.connected;
    s.sessions = stats_.sessions;
    s.heartbeats = stats_.heartbeats;
    rusage ru{};
    if (getrusage(RUSAGE_SELF, &ru) == 0) {
      auto tv = [](const timeval& t) {
        return static_cast<double>(t.tv_sec) + static_cast<double>(t.tv_usec) / 1e6;
      };
      s.sim_cpu_s = tv(ru.ru_utime) + tv(ru.ru_stime);
    }
    s.sim_run_delay_s = ProcSampler::read_run_delay(self_sched_fd_);
    if (sampling_server_) {
      int pid = current_server_pid();
      if (pid > 0 && pid != proc_.pid()) proc_.open_pid(pid);
      long rss = 0;
      double cpu = 0;
      if (pid > 0 && proc_.sample(rss, cpu)) {
        s.server_pid = pid;
        s.server_rss_kb = rss;
        s.server_cpu_s = cpu;
        s.server_run_delay_s = proc_.run_delay_s();
      }
    }
    samples_.push_back(s);
  }

  // --churn: PCT % of the agents, picked at random among those with a session, lose their
  // connection abruptly (RST: SO_LINGER 0) once a second for --churn-for, and reconnect with
  // the agent's usual backoff.
  void churn_tick() {
    if (cfg_.churn_pct <= 0 || stopping_) return;
    auto now = Clock::now() - start_;
    if (!churn_start_) {
      if (cfg_.churn_after) {
        if (now < *cfg_.churn_after) return;
      } else if (!stats_.all_sessions_after ||
                 now < *stats_.all_sessions_after + cfg_.steady_delay) {
        return;
      }
      churn_start_ = now;
      churn_end_ = now + std::chrono::duration_cast<Clock::duration>(cfg_.churn_for);
      std::fprintf(stderr, "agentsim: churn %.2f%%/s for %.0f s starts\n", cfg_.churn_pct,
                   std::chrono::duration<double>(cfg_.churn_for).count());
    }
    if (now >= *churn_end_) return;
    auto want = static_cast<std::size_t>(
        std::llround(cfg_.churn_pct / 100.0 * static_cast<double>(agents_.size())));
    want = std::max<std::size_t>(want, 1);
    std::uniform_int_distribution<std::size_t> pick(0, agents_.size() - 1);
    std::size_t dropped = 0;
    for (std::size_t tries = 0; dropped < want && tries < want * 20; ++tries) {
      Agent& a = agents_[pick(churn_rng_)];
      if (!a.in_session || !a.conn || a.churn_drop || a.fd < 0) continue;
      a.churned = true;
      a.churn_drop = true;
      linger lg{1, 0};
      ::setsockopt(a.fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
      a.conn->close();
      ++dropped;
      ++stats_.churn_drops;
    }
  }

  // `at`: when the session was established or lost.
  void sessions_changed(bool lost, Clock::time_point at) {
    if (stopping_) return;
    auto now = at - start_;
    if (stats_.sessions == agents_.size()) {
      stats_.last_full_at = now;
      stats_.first_loss_after_full.reset();
      if (stats_.outage_start && !stats_.outage_end) {
        stats_.outage_end = now;
        stats_.errors_at_outage_end = stats_.errors;
      }
      return;
    }
    if (!lost || !stats_.last_full_at) return;
    if (!stats_.first_loss_after_full) {
      stats_.first_loss_after_full = now;
      errors_at_first_loss_ = stats_.errors;
    }
    if (!stats_.outage_start && stats_.sessions * 2 < agents_.size()) {
      stats_.outage_start = *stats_.first_loss_after_full;
      stats_.errors_at_outage_start = errors_at_first_loss_;
      std::fprintf(stderr, "agentsim: %.1fs: the fleet lost its sessions (server restart?)\n",
                   std::chrono::duration<double>(now).count());
    }
  }

  void stop() {
    stopping_ = true;
    gate_.open_all();
    for (auto& a : agents_) {
      if (a.conn) a.conn->close();
      if (a.sleep) a.sleep->cancel();
    }
  }

  void error(const std::string& what) { ++stats_.errors[what]; }
  // Errors by gRPC code; the registration rate limit's UNAVAILABLE answer is told apart
  // ("Unavailable/rate-limit"), and so are failed dials and handshakes (connect, handshake).
  static std::string error_key(const grpc::Status& st) {
    std::string k(grpc::status_code_name(st.code()));
    if (st.code() == grpc::StatusCode::unavailable &&
        st.message().find("rate limit") != std::string::npos)
      k += "/rate-limit";
    return k;
  }
  void fail(Attempt& at, const grpc::Status& st) {
    if (at.failed) return;
    at.failed = true;
    Agent& a = *at.agent;
    if (!stopping_ && !a.churn_drop) {
      error(error_key(st));
      if (!a.churned && st.code() == grpc::StatusCode::not_found) ++stats_.healthy_not_registered;
    }
    at.conn->close();
    at.heartbeat_timer.cancel();
  }

  // SwarmKit's remotes.Observe: weights are smoothed (α = 0.5) and clipped to ±256.
  static void observe(Agent::Remote& r, int weight) {
    auto clip = [](double w) { return std::clamp(w, -256.0, 256.0); };
    double wn = clip(0.5 * clip(weight) + 0.5 * static_cast<double>(r.weight));
    r.weight = static_cast<int>(std::ceil(wn));
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
    a.dialled = -1;
    if (!a.managers.empty()) {
      // remotes.Select: weighted random over the known managers, negative weights counted as
      // zero, plus a small bias so that all-zero weights still choose.
      constexpr double kBias = 0.001;
      double total = 0;
      for (const auto& r : a.managers)
        total += std::max(0, r.weight) + kBias;
      double x = std::uniform_real_distribution<double>(0, total)(a.rng);
      std::size_t i = 0;
      for (; i + 1 < a.managers.size(); ++i) {
        x -= std::max(0, a.managers[i].weight) + kBias;
        if (x < 0) break;
      }
      a.dialled = static_cast<int>(i);
      to = a.managers[i].ep;
    }
    std::optional<asio::ip::address> from;
    if (to.address().is_v4() && to.address().is_loopback()) from = a.source;
    auto sock = co_await net::dial(io_.get_executor(), to, from);
    if (!sock) co_return std::unexpected("connect: " + sock.error().message());
    if (a.init_expired) co_return std::unexpected(std::string("connect: timed out"));
    a.fd = sock->native_handle();
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
    // SwarmKit's agent gives the whole session start 5 s (dispatcherRPCTimeout), dial and TLS
    // handshake of a new connection included, then closes the connection and backs off. (The
    // TCP connect itself is left to the kernel's SYN retries here.)
    a.init_expired = false;
    auto connect_timeout = [&] {
      a.init_expired = true;
      if (a.fd >= 0) ::shutdown(a.fd, SHUT_RDWR);
    };
    co::TimerCallback<decltype(connect_timeout)> connect_timer(connect_timeout);
    wheel_.arm_after(connect_timer, kSessionInitTimeout);
    auto conn = co_await connect(a);
    wheel_.disarm(connect_timer);
    gate_.release();
    if (conn && a.init_expired) {
      (*conn)->close();
      conn = std::unexpected(std::string("handshake: session initiation timed out"));
    }
    if (!conn) {
      a.fd = -1;
      if (a.dialled >= 0 && static_cast<std::size_t>(a.dialled) < a.managers.size())
        observe(a.managers[static_cast<std::size_t>(a.dialled)], -10);
      if (!stopping_) {
        error(a.init_expired                        ? "DeadlineExceeded/handshake"
              : conn.error().starts_with("connect") ? "connect"
                                                    : "handshake");
      }
      dispatchd::log::debug("agent {}: {}", a.index, conn.error());
      co_return false;
    }
    Attempt at(io_);
    at.agent = &a;
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
    a.fd = -1;
    // A failed session or connection costs the manager dialled some weight (connectionbroker:
    // Close(false) observes -DefaultObservationWeight).
    if (a.dialled >= 0 && static_cast<std::size_t>(a.dialled) < a.managers.size())
      observe(a.managers[static_cast<std::size_t>(a.dialled)], -10);
    a.churn_drop = false;
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
    wheel_.arm(init_timer, t0 + kSessionInitTimeout);
    api::SessionMessage msg;
    bool ok = co_await call->read(msg);
    first = true;
    wheel_.disarm(init_timer);
    if (!ok) {
      fail(at, call->status());
      co_return false;
    }
    auto now = Clock::now();
    stats_.registration_ms.add(ms(now - t0));
    a.session_id = msg.session_id();
    follow_managers(a, msg);
    ++stats_.sessions;
    ++stats_.sessions_established;
    a.in_session = true;
    if (a.lost_at) {
      double d = ms(now - *a.lost_at);
      stats_.reconnect_ms.add(d);
      stats_.reconnect_max_ms = std::max(stats_.reconnect_max_ms, d);
      if (stats_.outage_start && !stats_.outage_end &&
          *a.lost_at - start_ >= *stats_.outage_start) {
        stats_.outage_reconnect_ms.add(d);
        stats_.outage_reconnect_max_ms = std::max(stats_.outage_reconnect_max_ms, d);
        ++stats_.outage_reconnects;
      }
      a.lost_at.reset();
    }
    if (!a.ever_session) {
      a.ever_session = true;
      if (++stats_.agents_with_session == agents_.size()) stats_.all_sessions_after = now - start_;
    }
    sessions_changed(false, now);
    scope.spawn(heartbeats(a, at));
    scope.spawn(assignments(a, at, scope));
    // After a (re-)registration the agent reports the status of every task it holds again
    // (docs/behaviour.md §12.5).
    for (const auto& [id, state] : a.tasks)
      scope.spawn(rereport(a, at, id, state));
    while (co_await call->read(msg)) {
      // Further SessionMessages: node updates and keys mean nothing to a fake node.
      follow_managers(a, msg);
    }
    grpc::Status st = call->status();
    if (st.is_ok()) st = grpc::Status(grpc::StatusCode::unavailable, "session ended");
    fail(at, st);
    a.in_session = false;
    a.lost_at = Clock::now();
    if (!a.churned && !stopping_) ++stats_.healthy_sessions_lost;
    --stats_.sessions;
    sessions_changed(true, *a.lost_at);
    co_return true;
  }

  // As the agent does: the next dial goes to one of the managers listed (IP:port addresses).
  // Also records when this agent first saw each distinct list (the fan-out measurement).
  void follow_managers(Agent& a, const api::SessionMessage& msg) {
    std::vector<std::string> keys;
    for (const auto& wp : msg.managers())
      keys.push_back(wp.peer().node_id() + "|" + wp.peer().addr() + "|" +
                     std::to_string(wp.weight()));
    std::sort(keys.begin(), keys.end());
    std::uint64_t h = 1469598103934665603ull;  // FNV-1a over the sorted entries
    for (const auto& k : keys) {
      for (unsigned char c : k)
        h = (h ^ c) * 1099511628211ull;
      h = (h ^ 0xff) * 1099511628211ull;
    }
    if (std::find(a.lists_seen.begin(), a.lists_seen.end(), h) == a.lists_seen.end()) {
      a.lists_seen.push_back(h);
      fanout_.push_back({h, a.index, unix_ns()});
    }
    if (cfg_.ignore_managers) return;
    // agent.go: every listed manager with an address is observed with its weight; managers no
    // longer listed are removed.
    std::vector<Agent::Remote> next;
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
      Agent::Remote r;
      r.node_id = wp.peer().node_id();
      r.addr = addr;
      r.ep = asio::ip::tcp::endpoint(ip, static_cast<unsigned short>(port));
      for (const auto& old : a.managers)
        if (old.node_id == r.node_id && old.addr == r.addr) r.weight = old.weight;
      observe(r, static_cast<int>(std::clamp<std::int64_t>(wp.weight(), -256, 256)));
      next.push_back(std::move(r));
    }
    if (next.empty()) return;
    // Keep the index of the connection's peer valid for the observation when it ends.
    int dialled = -1;
    if (a.dialled >= 0 && static_cast<std::size_t>(a.dialled) < a.managers.size()) {
      const auto& cur = a.managers[static_cast<std::size_t>(a.dialled)];
      for (std::size_t i = 0; i < next.size(); ++i)
        if (next[i].node_id == cur.node_id && next[i].addr == cur.addr)
          dialled = static_cast<int>(i);
    }
    a.managers = std::move(next);
    a.dialled = dialled;
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
        if (!a.churned && !stopping_) ++stats_.healthy_heartbeat_errors;
        fail(at, st);
        co_return;
      }
      auto done = Clock::now();
      stats_.heartbeat_ms.add(ms(done - t0));
      if (stats_.all_sessions_after &&
          t0 - start_ >= *stats_.all_sessions_after + cfg_.steady_delay)
        stats_.steady_heartbeat_ms.add(ms(done - t0));
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
      if (!co_await report_status(a, at, task_id, state, false)) {
        a.reporting.erase(task_id);  // reported again after the next registration
        co_return;
      }
    }
    ++stats_.tasks_running;
  }

  asio::awaitable<void> rereport(Agent& a, Attempt& at, std::string task_id, api::TaskState state) {
    co_await report_status(a, at, std::move(task_id), state, true);
  }

  // One UpdateTaskStatus; NotFound is ignored as the agent does (docs/behaviour.md §11), other
  // errors end the session.
  asio::awaitable<bool> report_status(Agent& a, Attempt& at, std::string task_id,
                                      api::TaskState state, bool again) {
    {
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
        if (st.code() == grpc::StatusCode::not_found) {
          if (!stopping_) error("NotFound");
          if (!a.churned && !stopping_) ++stats_.healthy_not_registered;
          co_return false;
        }
        if (!at.failed) fail(at, st);
        co_return false;
      }
    }
    a.tasks[task_id] = state;
    if (again) ++stats_.tasks_rereported;
    co_return true;
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
  std::uint64_t sessions_at_end_ = 0;
  bool stopping_ = false;
  agentsim::MintStats mint_;
  bool sampling_server_ = false;
  ProcSampler proc_;
  int self_sched_fd_ = ::open("/proc/thread-self/schedstat", O_RDONLY | O_CLOEXEC);
  std::vector<Sample> samples_;
  std::mt19937_64 churn_rng_{7};
  std::optional<Clock::duration> churn_start_, churn_end_;
  std::map<std::string, std::uint64_t> errors_at_first_loss_;
  std::vector<FanoutEvent> fanout_;
};

namespace {

template <typename... A>
void appendf(std::string& out, const char* fmt, A... args) {
  char buf[512];
  int n = std::snprintf(buf, sizeof buf, fmt, args...);
  if (n > 0) out.append(buf, std::min<std::size_t>(static_cast<std::size_t>(n), sizeof buf - 1));
}

std::string json_errors(const std::map<std::string, std::uint64_t>& m) {
  std::string s = "{";
  for (const auto& [k, v] : m)
    s += (s.size() > 1 ? "," : "") + ("\"" + k + "\":" + std::to_string(v));
  return s + "}";
}

std::map<std::string, std::uint64_t> diff(const std::map<std::string, std::uint64_t>& to,
                                          const std::map<std::string, std::uint64_t>& from) {
  std::map<std::string, std::uint64_t> d;
  for (const auto& [k, v] : to) {
    auto it = from.find(k);
    std::uint64_t before = it == from.end() ? 0 : it->second;
    if (v > before) d[k] = v - before;
  }
  return d;
}

// --fanout-after: UNIX_NS, or @FILE holding it (written by fleet.sh just before the change).
std::int64_t parse_instant(const std::string& v) {
  std::string text = v;
  if (v.starts_with('@')) {
    std::ifstream f(v.substr(1));
    if (!f) return 0;
    f >> text;
  }
  try {
    return std::stoll(text);
  } catch (...) {
    return 0;
  }
}

}  // namespace

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
  double shb50 = percentile(stats_.steady_heartbeat_ms.values(), 0.50),
         shb99 = percentile(stats_.steady_heartbeat_ms.values(), 0.99);
  double rc50 = percentile(stats_.reconnect_ms.values(), 0.50),
         rc99 = percentile(stats_.reconnect_ms.values(), 0.99);
  std::uint64_t errors = 0;
  for (const auto& [k, v] : stats_.errors)
    errors += v;
  double n = static_cast<double>(agents_.size());

  // Server: RSS at the start (before any agent) and at the end; CPU per heartbeat in the steady
  // window, from every agent having had a session + --steady-delay to the end (same process).
  bool server = sampling_server_ && !samples_.empty() && samples_.front().server_rss_kb >= 0;
  long rss0 = server ? samples_.front().server_rss_kb : -1;
  long rss1 = -1;
  for (const auto& s : samples_)
    if (s.server_rss_kb >= 0) rss1 = s.server_rss_kb;
  // Per agent holding a session at the end (a fleet that never came up whole must not look lean).
  double holding = static_cast<double>(sessions_at_end_);
  double growth_kib =
      server && rss1 >= 0 && holding > 0 ? static_cast<double>(rss1 - rss0) / holding : 0;
  double steady_from = -1, steady_to = -1, steady_cpu = -1, cpu_per_hb_us = -1, hb_per_s = -1;
  std::uint64_t steady_hb = 0;
  if (server && stats_.all_sessions_after) {
    double from =
        std::chrono::duration<double>(*stats_.all_sessions_after + cfg_.steady_delay).count();
    const Sample* a = nullptr;
    for (const auto& s : samples_)
      if (s.t >= from && s.server_rss_kb >= 0) {
        a = &s;
        break;
      }
    const Sample* b = nullptr;
    for (const auto& s : samples_)
      if (s.server_rss_kb >= 0 && a != nullptr && s.server_pid == a->server_pid) b = &s;
    if (a != nullptr && b != nullptr && b->t > a->t && b->heartbeats > a->heartbeats) {
      steady_from = a->t;
      steady_to = b->t;
      steady_cpu = b->server_cpu_s - a->server_cpu_s;
      steady_hb = b->heartbeats - a->heartbeats;
      cpu_per_hb_us = steady_cpu * 1e6 / static_cast<double>(steady_hb);
      hb_per_s = static_cast<double>(steady_hb) / (b->t - a->t);
    }
  }

  // Fan-out: lists nobody had seen before --fanout-after.
  struct ListFanout {
    std::uint64_t hash;
    std::vector<double> ms;
  };
  std::vector<ListFanout> lists;
  std::int64_t after = cfg_.fanout_after.empty() ? 0 : parse_instant(cfg_.fanout_after);
  if (after > 0) {
    std::unordered_map<std::uint64_t, std::int64_t> first;
    for (const auto& e : fanout_) {
      auto [it, fresh] = first.emplace(e.list, e.unix_ns);
      if (!fresh) it->second = std::min(it->second, e.unix_ns);
    }
    for (const auto& [h, t] : first) {
      if (t < after) continue;
      ListFanout l{h, {}};
      for (const auto& e : fanout_)
        if (e.list == h) l.ms.push_back(static_cast<double>(e.unix_ns - after) / 1e6);
      std::sort(l.ms.begin(), l.ms.end());
      lists.push_back(std::move(l));
    }
    std::sort(lists.begin(), lists.end(),
              [](const auto& x, const auto& y) { return x.ms.size() > y.ms.size(); });
  }

  // Churn: server RSS before (the last sample before it started), at most during, at the end.
  long churn_rss_before = -1, churn_rss_during = -1, churn_rss_after = rss1;
  if (churn_start_ && churn_end_) {
    double cs = std::chrono::duration<double>(*churn_start_).count(),
           ce = std::chrono::duration<double>(*churn_end_).count();
    for (const auto& s : samples_) {
      if (s.server_rss_kb < 0) continue;
      if (s.t <= cs) churn_rss_before = s.server_rss_kb;
      if (s.t > cs && s.t <= ce + 1) churn_rss_during = std::max(churn_rss_during, s.server_rss_kb);
    }
  }

  double out_start =
      stats_.outage_start ? std::chrono::duration<double>(*stats_.outage_start).count() : -1;
  double out_back =
      stats_.outage_end && stats_.outage_start
          ? std::chrono::duration<double>(*stats_.outage_end - *stats_.outage_start).count()
          : -1;
  auto out_errors = diff(stats_.outage_end ? stats_.errors_at_outage_end : stats_.errors,
                         stats_.errors_at_outage_start);
  std::uint64_t without_session = agents_.size() - sessions_at_end_;

  if (cfg_.json) {
    std::string j;
    appendf(j,
            "{\"agents\":%zu,\"duration_s\":%.3f,\"agents_with_session\":%lu,"
            "\"sessions_established\":%lu,\"time_to_all_sessions_s\":%.3f,"
            "\"sessions_per_second\":%.1f,\"registration_ms\":{\"p50\":%.3f,\"p99\":%.3f},",
            agents_.size(), secs, static_cast<unsigned long>(stats_.agents_with_session),
            static_cast<unsigned long>(stats_.sessions_established), all_after, rate, reg50, reg99);
    appendf(j,
            "\"heartbeats\":%lu,\"heartbeat_rtt_ms\":{\"p50\":%.3f,\"p99\":%.3f},"
            "\"heartbeat_rtt_steady_ms\":{\"p50\":%.3f,\"p99\":%.3f},"
            "\"tasks_running\":%lu,\"tasks_rereported\":%lu,\"errors_total\":%lu,",
            static_cast<unsigned long>(stats_.heartbeats), hb50, hb99, shb50, shb99,
            static_cast<unsigned long>(stats_.tasks_running),
            static_cast<unsigned long>(stats_.tasks_rereported),
            static_cast<unsigned long>(errors));
    j += "\"errors\":" + json_errors(stats_.errors) + ",";
    appendf(j, "\"simulator_peak_rss_kb\":%ld,\"agents_without_session_at_end\":%lu,", rss_kb_,
            static_cast<unsigned long>(without_session));
    appendf(j, "\"certs\":{\"minted\":%zu,\"cached\":%zu,\"mint_s\":%.3f,\"mint_per_s\":%.1f},",
            mint_.minted, mint_.cached, mint_.mint_seconds,
            mint_.mint_seconds > 0 ? static_cast<double>(mint_.minted) / mint_.mint_seconds : 0);
    appendf(j, "\"reconnects\":{\"count\":%zu,\"p50_ms\":%.1f,\"p99_ms\":%.1f,\"max_ms\":%.1f},",
            stats_.reconnect_ms.values().size(), rc50, rc99, stats_.reconnect_max_ms);
    if (server) {
      appendf(j,
              "\"server\":{\"rss_start_kb\":%ld,\"rss_end_kb\":%ld,\"rss_growth_per_agent_kib\":"
              "%.2f,\"steady\":{\"from_s\":%.1f,\"to_s\":%.1f,\"cpu_s\":%.3f,\"heartbeats\":%lu,"
              "\"heartbeats_per_s\":%.1f,\"cpu_per_heartbeat_us\":%.2f}},",
              rss0, rss1, growth_kib, steady_from, steady_to, steady_cpu,
              static_cast<unsigned long>(steady_hb), hb_per_s, cpu_per_hb_us);
    }
    if (after > 0) {
      appendf(j, "\"fanout\":{\"after_ns\":%lld,\"lists\":[", static_cast<long long>(after));
      for (std::size_t i = 0; i < lists.size(); ++i) {
        const auto& l = lists[i];
        appendf(j,
                "%s{\"hash\":\"%016llx\",\"agents\":%zu,\"p50_ms\":%.2f,\"p99_ms\":%.2f,"
                "\"max_ms\":%.2f,\"latencies_ms\":[",
                i ? "," : "", static_cast<unsigned long long>(l.hash), l.ms.size(),
                percentile(l.ms, 0.5), percentile(l.ms, 0.99), l.ms.empty() ? 0.0 : l.ms.back());
        for (std::size_t k = 0; k < l.ms.size(); ++k)
          appendf(j, "%s%.2f", k ? "," : "", l.ms[k]);
        j += "]}";
      }
      j += "]},";
    }
    if (churn_start_) {
      appendf(j,
              "\"churn\":{\"pct_per_s\":%.3f,\"from_s\":%.1f,\"to_s\":%.1f,\"drops\":%lu,"
              "\"healthy_heartbeat_errors\":%lu,\"healthy_not_registered\":%lu,"
              "\"healthy_sessions_lost\":%lu,\"server_rss_before_kb\":%ld,"
              "\"server_rss_during_max_kb\":%ld,\"server_rss_after_kb\":%ld},",
              cfg_.churn_pct, std::chrono::duration<double>(*churn_start_).count(),
              std::chrono::duration<double>(*churn_end_).count(),
              static_cast<unsigned long>(stats_.churn_drops),
              static_cast<unsigned long>(stats_.healthy_heartbeat_errors),
              static_cast<unsigned long>(stats_.healthy_not_registered),
              static_cast<unsigned long>(stats_.healthy_sessions_lost), churn_rss_before,
              churn_rss_during, churn_rss_after);
    }
    if (stats_.outage_start) {
      appendf(j,
              "\"restart\":{\"lost_at_s\":%.3f,\"all_back_after_s\":%.3f,\"reconnects\":%lu,"
              "\"reconnect_p50_ms\":%.1f,\"reconnect_p99_ms\":%.1f,\"reconnect_max_ms\":%.1f,",
              out_start, out_back, static_cast<unsigned long>(stats_.outage_reconnects),
              percentile(stats_.outage_reconnect_ms.values(), 0.5),
              percentile(stats_.outage_reconnect_ms.values(), 0.99),
              stats_.outage_reconnect_max_ms);
      j += "\"errors\":" + json_errors(out_errors) + "},";
    }
    j += "\"samples\":[";
    for (std::size_t i = 0; i < samples_.size(); ++i) {
      const auto& s = samples_[i];
      appendf(j,
              "%s{\"t\":%.3f,\"unix_ns\":%lld,\"connected\":%lu,\"sessions\":%lu,"
              "\"heartbeats\":%lu,\"server_pid\":%d,\"server_rss_kb\":%ld,\"server_cpu_s\":%.2f,"
              "\"sim_cpu_s\":%.2f,\"server_run_delay_s\":%.3f,\"sim_run_delay_s\":%.3f}",
              i ? "," : "", s.t, static_cast<long long>(s.unix_ns),
              static_cast<unsigned long>(s.connected), static_cast<unsigned long>(s.sessions),
              static_cast<unsigned long>(s.heartbeats), s.server_pid, s.server_rss_kb,
              s.server_cpu_s, s.sim_cpu_s, s.server_run_delay_s, s.sim_run_delay_s);
    }
    j += "]}\n";
    std::fwrite(j.data(), 1, j.size(), stdout);
    return;
  }
  std::printf("agents                     %zu\n", agents_.size());
  std::printf("duration                   %.1f s\n", secs);
  if (mint_.minted + mint_.cached > 0) {
    std::printf(
        "certificates               %zu minted (%.0f/s), %zu from the cache\n", mint_.minted,
        mint_.mint_seconds > 0 ? static_cast<double>(mint_.minted) / mint_.mint_seconds : 0.0,
        mint_.cached);
  }
  std::printf("agents with a session      %lu (%lu without one at the end)\n",
              static_cast<unsigned long>(stats_.agents_with_session),
              static_cast<unsigned long>(without_session));
  std::printf("sessions established       %lu\n",
              static_cast<unsigned long>(stats_.sessions_established));
  if (all_after > 0) {
    std::printf("all sessions after         %.3f s (%.0f sessions/s)\n", all_after, rate);
  } else {
    std::printf("all sessions after         never\n");
  }
  std::printf("registration latency       p50 %.2f ms  p99 %.2f ms\n", reg50, reg99);
  std::printf("heartbeats                 %lu\n", static_cast<unsigned long>(stats_.heartbeats));
  std::printf(
      "heartbeat RTT              p50 %.2f ms  p99 %.2f ms (steady window: p50 %.2f ms  "
      "p99 %.2f ms)\n",
      hb50, hb99, shb50, shb99);
  std::printf(
      "reconnects                 %zu (loss to new session p50 %.0f ms, p99 %.0f ms, "
      "max %.0f ms)\n",
      stats_.reconnect_ms.values().size(), rc50, rc99, stats_.reconnect_max_ms);
  std::printf("tasks brought to RUNNING   %lu (%lu statuses re-reported after re-registration)\n",
              static_cast<unsigned long>(stats_.tasks_running),
              static_cast<unsigned long>(stats_.tasks_rereported));
  std::printf("simulator peak RSS         %ld KiB (%.1f KiB per agent)\n", rss_kb_,
              n > 0 ? static_cast<double>(rss_kb_) / n : 0.0);
  if (server) {
    std::printf(
        "server RSS                 %ld KiB at start, %ld KiB at end (%.1f KiB per agent with a "
        "session)\n",
        rss0, rss1, growth_kib);
    if (cpu_per_hb_us >= 0) {
      std::printf(
          "server CPU, steady         %.3f s over %.0f s (%.1f%% of a core), %lu heartbeats"
          " (%.0f/s): %.1f us per heartbeat\n",
          steady_cpu, steady_to - steady_from, 100 * steady_cpu / (steady_to - steady_from),
          static_cast<unsigned long>(steady_hb), hb_per_s, cpu_per_hb_us);
    } else {
      std::printf("server CPU, steady         no steady window (run longer)\n");
    }
  }
  for (const auto& l : lists) {
    std::printf("fan-out %016llx    %zu agents; p50 %.1f ms  p99 %.1f ms  max %.1f ms\n",
                static_cast<unsigned long long>(l.hash), l.ms.size(), percentile(l.ms, 0.5),
                percentile(l.ms, 0.99), l.ms.empty() ? 0.0 : l.ms.back());
  }
  if (after > 0 && lists.empty()) std::printf("fan-out                    no new manager list\n");
  if (churn_start_) {
    std::printf(
        "churn                      %lu drops; agents never dropped: %lu heartbeat "
        "errors, %lu not registered, %lu sessions lost\n",
        static_cast<unsigned long>(stats_.churn_drops),
        static_cast<unsigned long>(stats_.healthy_heartbeat_errors),
        static_cast<unsigned long>(stats_.healthy_not_registered),
        static_cast<unsigned long>(stats_.healthy_sessions_lost));
    if (server) {
      std::printf(
          "server RSS around churn    %ld KiB before, %ld KiB at most during, %ld KiB "
          "after\n",
          churn_rss_before, churn_rss_during, churn_rss_after);
    }
  }
  if (stats_.outage_start) {
    if (out_back >= 0) {
      std::printf("fleet lost its sessions    at %.1f s; all back after %.2f s\n", out_start,
                  out_back);
    } else {
      std::printf("fleet lost its sessions    at %.1f s; not all back by the end\n", out_start);
    }
    std::printf("  reconnect per agent      p50 %.0f ms  p99 %.0f ms  max %.0f ms\n",
                percentile(stats_.outage_reconnect_ms.values(), 0.5),
                percentile(stats_.outage_reconnect_ms.values(), 0.99),
                stats_.outage_reconnect_max_ms);
    for (const auto& [k, v] : out_errors)
      std::printf("  errors meanwhile %-8s %lu\n", k.c_str(), static_cast<unsigned long>(v));
  }
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
  flags.add("ca-cert", "FILE", "",
            "CA certificate (PEM): mint each agent's certificate from it (CN node-<i>, OU "
            "swarm-worker, O --org, ECDSA P-256) instead of --certs; also the trusted root",
            text(cfg.ca_cert));
  flags.add("ca-key", "FILE", "", "private key of --ca-cert", text(cfg.ca_key));
  flags.add("org", "ORG", cfg.org, "O of minted certificates: the cluster organisation",
            text(cfg.org));
  flags.add("cert-cache", "DIR", "~/.cache/dispatchd-agentsim/<CA hash>-<org>",
            "where minted certificates are kept and reused by later runs", text(cfg.cert_cache));
  int mint_threads = 0;
  flags.add("mint-threads", "N", "all cores", "threads minting certificates before the run",
            positive(mint_threads));
  flags.add("server-pid", "PID", "",
            "sample this process's RSS (VmRSS) and CPU (utime+stime) every second",
            positive(cfg.server_pid));
  flags.add("server-pid-file", "FILE", "",
            "as --server-pid, the PID read from FILE every second (follows a restarted server)",
            text(cfg.server_pid_file));
  flags.add("steady-delay", "DURATION", "2s",
            "the steady window (server CPU per heartbeat) starts this long after every agent "
            "had a session, and lasts to the end",
            duration(cfg.steady_delay));
  flags.add("fanout-after", "UNIX_NS|@FILE", "",
            "report how fast manager lists first seen after this instant (unix ns, or read "
            "from FILE at the end) reached the agents",
            text(cfg.fanout_after));
  flags.add("churn", "PCT", "0",
            "every second, PCT % of the agents (random, with a session) drop their connection "
            "abruptly (RST) and reconnect with the usual backoff",
            [&cfg](std::string_view v) -> std::optional<std::string> {
              try {
                std::size_t used = 0;
                double d = std::stod(std::string(v), &used);
                if (used != v.size() || d < 0 || d > 100) return "want a percentage 0..100";
                cfg.churn_pct = d;
                return std::nullopt;
              } catch (...) {
                return "want a percentage 0..100";
              }
            });
  flags.add("churn-for", "DURATION", "1m", "how long --churn goes on", duration(cfg.churn_for));
  std::chrono::nanoseconds churn_after{-1};
  flags.add("churn-after", "DURATION", "every agent had a session + --steady-delay",
            "when --churn starts, from the start of the run", duration(churn_after));
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
  cfg.mint_threads = static_cast<unsigned>(mint_threads);
  if (churn_after.count() >= 0) cfg.churn_after = churn_after;
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
