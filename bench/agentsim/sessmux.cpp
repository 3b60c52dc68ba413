// dispatchd-sessmux: many docker.swarmkit.v1.Dispatcher Session streams over few h2c connections,
// on our own client (one thread, nghttp2), timestamping the fan-out message. It takes sessload's
// flags and prints sessload's lines, so bench/run.sh can use either: sessload (gRPC C++'s client)
// saturates its core near 12k Heartbeats/s, short of the 20k/s that 100k sessions send at the 5 s
// period, while this client needs a fraction of that core (BENCHMARKS.md, issue 14).
//
//   dispatchd-sessmux --addr HOST:PORT [--sessions N] [--connections C] [--for SECONDS]
//                     [--times FILE] [--no-heartbeat] [--print-session-id]
// Session i names itself node-id sessload-<i> (dispatchd's --insecure identity), on connection
// i mod C, and heartbeats at the period the server answers (the first one at a random point of
// the first period). A stream's first message opens it; a later message whose manager list
// differs from the first one's is the fan-out message: its arrival (CLOCK_REALTIME, ns) is what
// --times FILE gets, one line per session.
// stderr: "sessload: open=K changed=M errors=E heartbeats=H" every 500 ms, "sessload: all N open
// in S s" once, and the first few failures. stdout at the end (after --for, SIGINT or SIGTERM):
// one JSON object with the counts.
#include <google/protobuf/io/coded_stream.h>
#include <google/protobuf/wire_format_lite.h>
#include <sys/resource.h>
#include <time.h>

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
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "dispatchd/co/timer_wheel.hpp"
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
using asio::experimental::as_tuple;

constexpr std::string_view kSession = "/docker.swarmkit.v1.Dispatcher/Session";
constexpr std::string_view kHeartbeat = "/docker.swarmkit.v1.Dispatcher/Heartbeat";

struct Options {
  std::string addr = "127.0.0.1:4242";
  int sessions = 1000;
  int connections = 100;
  double run_for = 1e9;
  std::string times;
  bool heartbeat = true;
  bool print_session_id = false;
};

std::int64_t realtime_ns() {
  timespec ts{};
  clock_gettime(CLOCK_REALTIME, &ts);
  return std::int64_t{ts.tv_sec} * 1000000000 + ts.tv_nsec;
}

struct Counts {
  int open = 0, changed = 0, errors = 0, heartbeats = 0, reported = 0;
};

struct Session {
  std::string node;
  std::int64_t changed_at = 0;
};

class Mux {
 public:
  Mux(asio::io_context& io, Options o) : io_(io), wheel_(io), o_(std::move(o)), rng_(12345) {}

  asio::awaitable<void> run() {
    auto colon = o_.addr.rfind(':');
    asio::error_code ec;
    auto ip = asio::ip::make_address(o_.addr.substr(0, colon), ec);
    if (colon == std::string::npos || ec) {
      std::fprintf(stderr, "sessmux: --addr wants IP:PORT, got %s\n", o_.addr.c_str());
      io_.stop();
      co_return;
    }
    asio::ip::tcp::endpoint to(ip,
                               static_cast<std::uint16_t>(std::atoi(o_.addr.c_str() + colon + 1)));
    for (int c = 0; c < o_.connections; ++c) {
      auto sock = co_await net::dial(io_.get_executor(), to, std::nullopt);
      if (!sock) {
        std::fprintf(stderr, "sessmux: connect %s: %s\n", o_.addr.c_str(),
                     sock.error().message().c_str());
        io_.stop();
        co_return;
      }
      auto conn = std::make_shared<h2::ClientConnection>(
          std::make_unique<net::TcpTransport>(std::move(*sock)), wheel_);
      asio::co_spawn(io_, conn->run(), asio::detached);
      conns_.push_back(std::move(conn));
    }
    t0_ = Clock::now();
    sessions_.resize(static_cast<std::size_t>(o_.sessions));
    for (int i = 0; i < o_.sessions; ++i) {
      sessions_[static_cast<std::size_t>(i)].node = "sessload-" + std::to_string(i);
      asio::co_spawn(io_, session(i), asio::detached);
    }
    asio::co_spawn(io_, progress(), asio::detached);
  }

  void finish() {
    if (!o_.times.empty()) {
      if (FILE* f = std::fopen(o_.times.c_str(), "w")) {
        for (const auto& s : sessions_)
          if (s.changed_at != 0) std::fprintf(f, "%lld\n", static_cast<long long>(s.changed_at));
        std::fclose(f);
      }
    }
    std::printf(
        "{\"sessions\":%d,\"connections\":%d,\"open\":%d,\"changed\":%d,\"errors\":%d,"
        "\"heartbeats\":%d,\"setup_s\":%.6f}\n",
        o_.sessions, o_.connections, n_.open, n_.changed, n_.errors, n_.heartbeats,
        all_open_ ? setup_s_ : -1.0);
    std::fflush(stdout);
  }

 private:
  grpc::CallOptions options(int i) const {
    grpc::CallOptions o;
    o.metadata.push_back({"node-id", sessions_[static_cast<std::size_t>(i)].node});
    return o;
  }

  void fail(const char* what, const grpc::Status& st) {
    ++n_.errors;
    if (n_.reported++ < 10)
      std::fprintf(stderr, "sessload: %s failed: %s: %s\n", what,
                   std::string(grpc::status_code_name(st.code())).c_str(), st.message().c_str());
  }

  // The manager list (field 3) of an encoded SessionMessage, each entry as the bytes it was sent
  // as: the fan-out message is told apart without parsing the node every message carries, which
  // was most of this client's time per message (BENCHMARKS.md, issue 14).
  static std::string managers_of(const std::string& encoded) {
    using google::protobuf::internal::WireFormatLite;
    google::protobuf::io::CodedInputStream in(reinterpret_cast<const std::uint8_t*>(encoded.data()),
                                              static_cast<int>(encoded.size()));
    std::string out;
    while (std::uint32_t tag = in.ReadTag()) {
      if (tag != WireFormatLite::MakeTag(api::SessionMessage::kManagersFieldNumber,
                                         WireFormatLite::WIRETYPE_LENGTH_DELIMITED)) {
        if (!WireFormatLite::SkipField(&in, tag)) break;
        continue;
      }
      std::uint32_t len = 0;
      std::string entry;
      if (!in.ReadVarint32(&len) || !in.ReadString(&entry, static_cast<int>(len))) break;
      out += std::to_string(len);
      out += ':';
      out += entry;
    }
    return out;
  }

  asio::awaitable<void> session(int i) {
    auto& conn = *conns_[static_cast<std::size_t>(i % o_.connections)];
    api::SessionRequest req;
    req.mutable_description()->set_hostname(sessions_[static_cast<std::size_t>(i)].node);
    auto call = grpc::ClientCall::start(conn, kSession, req, options(i));
    if (!call) {
      fail("Session", call.error());
      co_return;
    }
    api::SessionMessage msg;
    auto first_bytes = co_await call->read();
    if (!first_bytes || !msg.ParseFromString(*first_bytes)) {
      fail("Session", call->status());
      co_return;
    }
    ++n_.open;
    if (o_.print_session_id) {
      std::printf("%s\n", msg.session_id().c_str());
      std::fflush(stdout);
    }
    std::string first = managers_of(*first_bytes);
    first_bytes.reset();
    auto live = std::make_shared<bool>(true);
    if (o_.heartbeat) {
      auto first_in = std::chrono::milliseconds(std::uniform_int_distribution<int>(0, 4999)(rng_));
      asio::co_spawn(io_, heartbeats(i, msg.session_id(), first_in, live), asio::detached);
    }
    auto& s = sessions_[static_cast<std::size_t>(i)];
    while (auto next = co_await call->read()) {
      if (s.changed_at != 0) continue;
      if (managers_of(*next) == first) continue;
      s.changed_at = realtime_ns();
      ++n_.changed;
    }
    *live = false;
    --n_.open;
    fail("Session", call->status());
  }

  // Stops at the first check after the session's stream ended (`live` false).
  asio::awaitable<void> heartbeats(int i, std::string session_id, std::chrono::milliseconds next,
                                   std::shared_ptr<bool> live) {
    auto& conn = *conns_[static_cast<std::size_t>(i % o_.connections)];
    asio::steady_timer timer(io_);
    api::HeartbeatRequest req;
    req.set_session_id(std::move(session_id));
    auto o = options(i);
    o.timeout = std::chrono::seconds(5);
    for (;;) {
      timer.expires_after(next);
      co_await timer.async_wait(as_tuple(asio::use_awaitable));
      if (!*live) co_return;
      api::HeartbeatResponse resp;
      grpc::Status st = co_await grpc::unary_call(conn, kHeartbeat, req, resp, o);
      if (!*live) co_return;
      next = std::chrono::milliseconds(5000);
      if (!st.is_ok()) {
        fail("Heartbeat", st);
        continue;
      }
      ++n_.heartbeats;
      auto period = std::chrono::seconds(resp.period().seconds()) +
                    std::chrono::nanoseconds(resp.period().nanos());
      if (period > std::chrono::nanoseconds(0))
        next = std::chrono::duration_cast<std::chrono::milliseconds>(period);
    }
  }

  asio::awaitable<void> progress() {
    asio::steady_timer timer(io_);
    auto last = Clock::now();
    for (;;) {
      timer.expires_after(std::chrono::milliseconds(50));
      co_await timer.async_wait(as_tuple(asio::use_awaitable));
      auto now = Clock::now();
      if (!all_open_ && n_.open >= o_.sessions) {
        all_open_ = true;
        setup_s_ = std::chrono::duration<double>(now - t0_).count();
        std::fprintf(stderr, "sessload: all %d open in %.3f s\n", o_.sessions, setup_s_);
      }
      if (now - last >= std::chrono::milliseconds(500)) {
        last = now;
        std::fprintf(stderr, "sessload: open=%d changed=%d errors=%d heartbeats=%d\n", n_.open,
                     n_.changed, n_.errors, n_.heartbeats);
      }
      if (now - t0_ >= std::chrono::duration<double>(o_.run_for)) {
        io_.stop();
        co_return;
      }
    }
  }

  asio::io_context& io_;
  co::TimerWheel wheel_;
  Options o_;
  std::mt19937 rng_;
  std::vector<std::shared_ptr<h2::ClientConnection>> conns_;
  std::vector<Session> sessions_;
  Counts n_;
  Clock::time_point t0_;
  bool all_open_ = false;
  double setup_s_ = 0;
};

bool parse(int argc, char** argv, Options& o) {
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--no-heartbeat") {
      o.heartbeat = false;
      continue;
    }
    if (a == "--print-session-id") {
      o.print_session_id = true;
      continue;
    }
    if (i + 1 >= argc) return false;
    const char* v = argv[++i];
    if (a == "--addr") {
      o.addr = v;
    } else if (a == "--sessions") {
      o.sessions = std::atoi(v);
    } else if (a == "--connections") {
      o.connections = std::atoi(v);
    } else if (a == "--for") {
      o.run_for = std::atof(v);
    } else if (a == "--times") {
      o.times = v;
    } else {
      return false;
    }
  }
  return o.sessions > 0 && o.connections > 0;
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  if (!parse(argc, argv, o)) {
    std::fprintf(stderr,
                 "usage: dispatchd-sessmux --addr IP:PORT [--sessions N] [--connections C] "
                 "[--for SECONDS] [--times FILE] [--no-heartbeat] [--print-session-id]\n");
    return 2;
  }
  std::signal(SIGPIPE, SIG_IGN);
  dispatchd::log::set_level(dispatchd::log::Level::warn);
  asio::io_context io(1);
  Mux mux(io, o);
  asio::signal_set stop(io, SIGINT, SIGTERM);
  stop.async_wait([&io](const asio::error_code&, int) { io.stop(); });
  asio::co_spawn(io, mux.run(), asio::detached);
  io.run();
  mux.finish();
  std::_Exit(0);  // no orderly teardown of thousands of calls: the process ends here
}
