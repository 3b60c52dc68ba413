// Hostile peers on loopback: each test mounts one attack and checks, in the same run, that the
// attacker is cut off, that a well-behaved client is still served, and that the server's state
// (connections, handshakes, calls, sessions, timers, store watchers) and the process's memory
// return to where they were.

#include <arpa/inet.h>
#include <fcntl.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <future>
#include <memory>
#include <ostream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "grpc/health/v1/health.grpc.pb.h"
#include "grpc/health/v1/health.pb.h"
#include "support/certs.hpp"
#include "support/frames.hpp"
#include "support/raw_client.hpp"
#include "support/test_server.hpp"
#include "support/test_service.hpp"
#include "test_service.pb.h"

namespace {

using dispatchd::test::read_file;

namespace frames = dispatchd::test::frames;
using dispatchd::test::grpc_frame;
using dispatchd::test::RawClient;
using dispatchd::test::TestServer;
using dispatchd::test::TestServiceState;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;
using Ms = std::chrono::milliseconds;

const std::string kCheck = "/grpc.health.v1.Health/Check";
const std::string kEcho = "/dispatchd.test.TestService/Echo";
const std::string kStream = "/dispatchd.test.TestService/Stream";
const std::string kHangStream = "/dispatchd.test.TestService/HangStream";
const std::string kSession = "/docker.swarmkit.v1.Dispatcher/Session";
// The SERVING answer to a health check, framed: status = 1.
const std::string kServing = grpc_frame(std::string("\x08\x01", 2));
// What the process may grow by during one attack (client and server share it).
constexpr std::size_t kRssBudget = 256u << 20;

std::string health_request() {
  return grpc_frame(grpc::health::v1::HealthCheckRequest().SerializeAsString());
}

std::size_t rss_bytes() {
  std::ifstream statm("/proc/self/statm");
  std::size_t size = 0, resident = 0;
  statm >> size >> resident;
  return resident * static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
}

int ms_until(Clock::time_point deadline) {
  auto left = std::chrono::duration_cast<Ms>(deadline - Clock::now()).count();
  return left <= 0 ? 0 : static_cast<int>(std::max<long>(left, 1));
}

struct Goaway {
  std::uint32_t last_stream = 0;
  std::uint32_t code = 0;
};

// A raw TCP connection for attackers: writes exactly the bytes it is given, keeps every byte the
// server sends, and notices when the server closes.
class Wire {
 public:
  enum class Drain { no, yes };

  explicit Wire(unsigned short port) : opened_at_(Clock::now()) {
    fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    if (fd_ < 0) throw std::runtime_error(std::string("socket: ") + std::strerror(errno));
    int one = 1;
    ::setsockopt(fd_, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (::connect(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
      int e = errno;
      ::close(fd_);
      throw std::runtime_error(std::string("connect: ") + std::strerror(e));
    }
    ::fcntl(fd_, F_SETFL, ::fcntl(fd_, F_GETFL) | O_NONBLOCK);
  }
  Wire(const Wire&) = delete;
  Wire& operator=(const Wire&) = delete;
  ~Wire() {
    if (fd_ >= 0) ::close(fd_);
  }

  // Sends every byte unless the server closes first (false). With Drain::yes whatever arrives
  // meanwhile is read, so the server is never blocked on us; with Drain::no nothing is read.
  bool send(std::string_view bytes, Drain drain = Drain::yes, Ms timeout = 10s) {
    auto deadline = Clock::now() + timeout;
    std::size_t off = 0;
    while (off < bytes.size()) {
      if (broken_) return false;
      ssize_t n = ::send(fd_, bytes.data() + off, bytes.size() - off, MSG_NOSIGNAL);
      if (n >= 0) {
        off += static_cast<std::size_t>(n);
        continue;
      }
      if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
        broken_ = true;
        return false;
      }
      short events = POLLOUT;
      if (drain == Drain::yes && !closed_) events |= POLLIN;
      pollfd p{fd_, events, 0};
      int left = ms_until(deadline);
      if (left == 0) return false;
      if (::poll(&p, 1, left) > 0 && (p.revents & POLLIN)) read_available();
    }
    return true;
  }

  // Reads until done() holds, the server closes or the timeout passes; returns done().
  template <class Pred>
  bool read_until(Pred done, Ms timeout = 5s) {
    auto deadline = Clock::now() + timeout;
    while (!done()) {
      if (closed_) return done();
      int left = ms_until(deadline);
      if (left == 0) return done();
      pollfd p{fd_, POLLIN, 0};
      if (::poll(&p, 1, left) > 0) read_available();
    }
    return true;
  }
  bool read_until_closed(Ms timeout = 5s) {
    return read_until([&] { return closed_; }, timeout);
  }

  // Frames that arrived since the last call.
  std::vector<frames::Frame> new_frames() {
    std::size_t used = 0;
    auto out = frames::parse(std::string_view(inbox_).substr(parsed_), &used);
    parsed_ += used;
    return out;
  }
  std::vector<frames::Frame> all_frames() const { return frames::parse(inbox_); }
  std::vector<Goaway> goaways() const {
    std::vector<Goaway> out;
    for (const auto& f : all_frames()) {
      if (f.type == frames::kGoaway && f.payload.size() >= 8) {
        out.push_back({frames::get_u32(f.payload, 0) & 0x7fffffffu, *frames::error_code(f)});
      }
    }
    return out;
  }

  // Closes with RST instead of FIN: the connection vanishes mid-whatever.
  void abort() {
    linger l{1, 0};
    ::setsockopt(fd_, SOL_SOCKET, SO_LINGER, &l, sizeof l);
    close();
  }
  void close() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }

  // Takes whatever has arrived, without waiting.
  void read_available() {
    char buf[65536];
    for (;;) {
      ssize_t n = ::recv(fd_, buf, sizeof buf, MSG_DONTWAIT);
      if (n > 0) {
        inbox_.append(buf, static_cast<std::size_t>(n));
        continue;
      }
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) return;
      if (!closed_) closed_at_ = Clock::now();
      closed_ = true;  // EOF, or reset by the server
      return;
    }
  }

  bool closed() const { return closed_; }
  Clock::time_point opened_at() const { return opened_at_; }
  Ms open_for() const { return std::chrono::duration_cast<Ms>(closed_at_ - opened_at_); }
  const std::string& inbox() const { return inbox_; }

 private:
  int fd_ = -1;
  std::string inbox_;
  std::size_t parsed_ = 0;
  bool closed_ = false;
  bool broken_ = false;
  Clock::time_point opened_at_, closed_at_;
};

bool has_data(const std::vector<frames::Frame>& fs, std::uint32_t stream_id,
              const std::string& payload) {
  std::string got;
  for (const auto& f : fs) {
    if (f.type == frames::kData && f.stream_id == stream_id) got += f.payload;
  }
  return got == payload;
}

bool has_frame(const std::vector<frames::Frame>& fs, std::uint8_t type, std::uint32_t stream_id) {
  for (const auto& f : fs) {
    if (f.type == type && f.stream_id == stream_id) return true;
  }
  return false;
}

// A client's opening: preface and an empty SETTINGS frame.
std::string opening(const std::vector<std::pair<std::uint16_t, std::uint32_t>>& settings = {}) {
  return std::string(frames::kPreface) + frames::settings(settings);
}

// A complete gRPC request on one stream: HEADERS, then the framed message with END_STREAM.
std::string grpc_request(std::uint32_t stream_id, const std::string& path,
                         const std::string& framed_body, const frames::HeaderList& extra = {}) {
  return frames::headers(stream_id, frames::grpc_request_block(path, extra), frames::kEndHeaders) +
         frames::data(stream_id, framed_body, true);
}

dispatchd::app::Options attack_options() {
  auto o = TestServer::default_options();
  o.h2.reset_burst = 100;
  o.h2.reset_rate = 10;
  o.h2.control_burst = 50;
  o.h2.control_rate = 10;
  o.h2.max_continuations = 8;
  o.h2.preface_timeout = 300ms;
  o.h2.write_stall_timeout = 500ms;
  o.h2.keepalive_time = 0ms;  // enabled by the tests about it: idle test clients answer nothing
  o.h2.drain_timeout = 1s;
  o.tls_handshake_timeout = 300ms;
  return o;
}

// TLS material for the handshake tests, made once per process.
const std::string& cert_dir() {
  static const std::string dir =
      dispatchd::test::make_test_certs("attack-tls", "--org myorg --nodes 1 --manager-id mgr-0");
  return dir;
}

struct ServerState {
  std::size_t connections = 0;
  std::size_t handshakes = 0;
  std::size_t calls = 0;
  std::size_t sessions = 0;
  std::size_t timers = 0;
  std::size_t watchers = 0;
};

std::ostream& operator<<(std::ostream& os, const ServerState& s) {
  return os << "connections=" << s.connections << " handshakes=" << s.handshakes
            << " calls=" << s.calls << " sessions=" << s.sessions << " timers=" << s.timers
            << " store_watchers=" << s.watchers;
}

class AttackTest : public ::testing::Test {
 protected:
  void start(dispatchd::app::Options options = attack_options()) {
    server_ = std::make_unique<TestServer>(std::move(options), [this](dispatchd::app::Server& s) {
      add_test_service(s.grpc(), state_);
    });
    baseline_ = state();
    rss_before_ = rss_bytes();
  }

  TestServer& server() { return *server_; }
  unsigned short port() { return server_->port(); }

  ServerState state() {
    return server_->call([this] { return snapshot(); });
  }

  std::uint64_t started(const std::string& path) {
    return server_->call([&] {
      const auto* st = server_->server().grpc().stats(path);
      return st ? st->started : 0;
    });
  }

  // Every trace of the attack is gone: only `connections` well-behaved connections remain, no
  // call, session or handshake is left, timers and store watchers are back to the baseline
  // (give or take the deadlines the remaining connections and `extra_timers` hold).
  ::testing::AssertionResult settled(std::size_t connections = 0, std::size_t extra_timers = 0,
                                     Ms timeout = 10s) {
    auto ok = [&] {
      ServerState s = snapshot();
      return s.connections == connections && s.handshakes == 0 && s.calls == 0 && s.sessions == 0 &&
             s.timers <= baseline_.timers + 3 * connections + extra_timers &&
             s.watchers == baseline_.watchers;
    };
    if (server_->eventually(ok, timeout)) return ::testing::AssertionSuccess();
    return ::testing::AssertionFailure()
           << "server state " << state() << "; baseline " << baseline_;
  }

  ::testing::AssertionResult memory_bounded() {
    std::size_t now = rss_bytes();
    if (now <= rss_before_ + kRssBudget) return ::testing::AssertionSuccess();
    return ::testing::AssertionFailure()
           << "RSS grew from " << (rss_before_ >> 20) << " MiB to " << (now >> 20) << " MiB";
  }

  // A well-behaved client on a new connection gets its health check answered.
  ::testing::AssertionResult served() {
    RawClient c(port());
    c.start();
    return served(c);
  }
  static ::testing::AssertionResult served(RawClient& c) {
    auto id = c.grpc_call(kCheck, health_request());
    const auto& r = c.wait(id, 5s);
    if (!r.closed) return ::testing::AssertionFailure() << "health check not answered";
    if (r.grpc_status() != 0 || r.data != kServing) {
      return ::testing::AssertionFailure()
             << "health check: grpc-status " << r.grpc_status().value_or(-1) << " "
             << r.grpc_message();
    }
    return ::testing::AssertionSuccess();
  }

  // On the server thread.
  ServerState snapshot() {
    auto& s = server_->server();
    return ServerState{s.connection_count(),    s.handshake_count(),
                       s.grpc().active_calls(), s.dispatcher().open_sessions(),
                       s.wheel().armed_count(), s.store().watcher_count()};
  }

  TestServiceState state_;
  std::unique_ptr<TestServer> server_;
  ServerState baseline_;
  std::size_t rss_before_ = 0;
};

// --- 1. Rapid reset (CVE-2023-44487) -------------------------------------------------------

TEST_F(AttackTest, RapidResetIsAnsweredWithEnhanceYourCalm) {
  start();
  RawClient bystander(port());
  bystander.start();
  ASSERT_TRUE(served(bystander));

  // Open a stream and reset it at once, thousands of times, as fast as the socket takes it.
  constexpr int kStreams = 5000;
  constexpr int kPerSend = 250;
  const std::string block = frames::grpc_request_block(kHangStream);
  std::atomic<bool> attack_over{false};
  int streams_sent = 0;
  bool closed = false;
  std::vector<Goaway> goaways;
  std::thread attacker([&] {
    Wire w(port());
    w.send(opening());
    for (int i = 0; i < kStreams && !w.closed(); i += kPerSend) {
      std::string burst;
      for (int j = i; j < i + kPerSend; ++j) {
        auto id = static_cast<std::uint32_t>(2 * j + 1);
        burst += frames::headers(id, block, frames::kEndHeaders);
        burst += frames::rst_stream(id, frames::kCancel);
      }
      if (!w.send(burst)) break;
      streams_sent = i + kPerSend;
    }
    closed = w.read_until_closed(5s);
    goaways = w.goaways();
    attack_over = true;
  });
  int checks_during_attack = 0;
  bool all_served = true;
  while (!attack_over) {
    all_served = served() && all_served;
    ++checks_during_attack;
  }
  attacker.join();

  EXPECT_TRUE(closed) << "the attacker's connection is still open after " << streams_sent
                      << " resets";
  ASSERT_FALSE(goaways.empty()) << "closed without GOAWAY";
  for (std::size_t i = 0; i < goaways.size(); ++i) {
    EXPECT_EQ(goaways[i].code, frames::kEnhanceYourCalm)
        << "GOAWAY " << i + 1 << " of " << goaways.size() << " (last stream "
        << goaways[i].last_stream << ")";
    // RFC 9113 §6.8: a later GOAWAY must not raise the last stream ID.
    if (i > 0) {
      EXPECT_LE(goaways[i].last_stream, goaways[i - 1].last_stream);
    }
  }
  EXPECT_TRUE(all_served) << "a bystander was refused during the attack";
  EXPECT_GE(checks_during_attack, 1);
  auto handlers = started(kHangStream);
  RecordProperty("streams_sent", streams_sent);
  RecordProperty("handlers_started", static_cast<int>(handlers));
  EXPECT_LT(handlers, static_cast<std::uint64_t>(streams_sent))
      << "the server kept serving the attacker's streams";

  EXPECT_TRUE(settled(1));  // only the bystander is left, with no call in flight
  EXPECT_TRUE(served(bystander));
  EXPECT_FALSE(bystander.goaway_received());
  EXPECT_TRUE(served());
  EXPECT_TRUE(memory_bounded());
}

// A client cancelling streams the server has already answered (a watch it no longer needs, a
// stream past its deadline) is not a rapid reset however often it does so; resets of streams
// not yet answered, on the same connection, still are.
TEST_F(AttackTest, ResetsOfAnsweredStreamsAreNotRapidReset) {
  start();
  const auto limits = attack_options().h2;
  const std::string kWatch = "/grpc.health.v1.Health/Watch";
  Wire w(port());
  ASSERT_TRUE(w.send(opening()));
  constexpr std::uint32_t kStreams = 500;  // 5 x the burst; the refill adds 10 a second
  for (std::uint32_t i = 0; i < kStreams; ++i) {
    std::uint32_t id = 1 + 2 * i;
    ASSERT_TRUE(w.send(grpc_request(id, kWatch, health_request())));
    bool answered = false;
    ASSERT_TRUE(w.read_until([&] {
      for (const auto& f : w.new_frames()) {
        if (f.type == frames::kData && f.stream_id == id) answered = true;
      }
      return answered;
    })) << "watch "
        << i << " unanswered";
    ASSERT_TRUE(w.send(frames::rst_stream(id, frames::kCancel)));
  }
  EXPECT_TRUE(server().eventually([&] { return server().server().grpc().active_calls() == 0; }));
  EXPECT_FALSE(w.closed());
  EXPECT_TRUE(w.goaways().empty()) << "a client cancelling answered watches was sent GOAWAY";
  EXPECT_GT(kStreams, 4 * limits.reset_burst);

  // Streams reset before they are answered, on the same connection: rapid reset.
  std::string burst;
  const std::string block = frames::grpc_request_block(kHangStream);
  for (std::uint32_t j = 0; j < 2 * limits.reset_burst; ++j) {
    auto id = 1 + 2 * (kStreams + j);
    burst += frames::headers(id, block, frames::kEndHeaders) + frames::rst_stream(id);
  }
  w.send(burst);
  EXPECT_TRUE(w.read_until_closed());
  auto goaways = w.goaways();
  ASSERT_FALSE(goaways.empty());
  EXPECT_EQ(goaways.back().code, frames::kEnhanceYourCalm);
  EXPECT_TRUE(settled());
  EXPECT_TRUE(served());
}

// A busy grpc-go client on a server that runs behind: it sends HEADERS, gives up at its 10 ms
// deadline and sends RST_STREAM, but the server, busy elsewhere for 60 ms, reads both at once and
// never had the chance to answer. Such resets are the client's deadline, not rapid reset; the
// same pattern with a deadline the server's lag does not reach is.
TEST_F(AttackTest, ResetsAtTheirDeadlineWhileTheServerRunsBehindAreNotRapidReset) {
  auto options = attack_options();
  options.h2.reset_rate = 0.05;  // no refill to speak of: every counted reset stays counted
  start(options);
  Wire w(port());
  ASSERT_TRUE(w.send(opening()));
  const std::uint32_t kResets = 2 * options.h2.reset_burst;
  auto resets = [&](std::uint32_t first_id, const std::string& timeout) {
    const std::string block = frames::grpc_request_block(kHangStream, {{"grpc-timeout", timeout}});
    std::string bytes;
    for (std::uint32_t i = 0; i < kResets; ++i) {
      auto id = first_id + 2 * i;
      bytes += frames::headers(id, block, frames::kEndHeaders) + frames::rst_stream(id);
    }
    return bytes;
  };
  // The server's thread is busy for 60 ms (standing in for a loaded server) while the client's
  // frames wait in the socket.
  std::promise<void> busy;
  std::promise<void> sent;
  std::thread load([&] {
    server().call([&] {
      auto until = Clock::now() + 60ms;
      busy.set_value();
      sent.get_future().wait();
      while (Clock::now() < until) {
      }
    });
  });
  busy.get_future().wait();
  std::uint32_t id = 1;
  bool written = w.send(resets(id, "10m"));  // grpc-timeout 10 ms
  sent.set_value();
  load.join();
  ASSERT_TRUE(written);
  id += 2 * kResets;
  // A health check behind them is answered: the connection was not closed for the resets.
  ASSERT_TRUE(w.send(grpc_request(id, kCheck, health_request())));
  EXPECT_TRUE(w.read_until([&] { return has_data(w.all_frames(), id, kServing); }));
  EXPECT_TRUE(w.goaways().empty()) << "resets at the client's deadline were taken for an attack";
  EXPECT_EQ(server().call([&] { return server().server().connection_totals().resets_at_deadline; }),
            kResets);

  // The same resets with a 10 s deadline, which no lag of the server's reaches: rapid reset.
  id += 2;
  ASSERT_TRUE(w.send(resets(id, "10S")));
  EXPECT_TRUE(w.read_until_closed());
  auto goaways = w.goaways();
  ASSERT_FALSE(goaways.empty());
  EXPECT_EQ(goaways.back().code, frames::kEnhanceYourCalm);
  EXPECT_EQ(server().call([&] { return server().server().connection_totals().resets_at_deadline; }),
            kResets);
  EXPECT_TRUE(settled());
  EXPECT_TRUE(served());
}

TEST_F(AttackTest, ResetsWithinTheBurstAreTolerated) {
  start();
  Wire w(port());
  std::string bytes = opening();
  const std::string block = frames::grpc_request_block(kHangStream);
  std::uint32_t id = 1;
  for (; id < 2 * 90; id += 2)  // 90 resets: within reset_burst (100)
    bytes += frames::headers(id, block, frames::kEndHeaders) + frames::rst_stream(id);
  bytes += grpc_request(id, kCheck, health_request());
  ASSERT_TRUE(w.send(bytes));
  EXPECT_TRUE(w.read_until([&] { return has_data(w.all_frames(), id, kServing); }));
  EXPECT_TRUE(w.goaways().empty());
  EXPECT_FALSE(w.closed());
  w.close();
  EXPECT_TRUE(settled());
}

// The limit to the reset: with no refill to speak of (one token per 20 s), resets sent in
// separate writes add up, exactly reset_burst (100) of them are tolerated and the next one is
// answered with GOAWAY ENHANCE_YOUR_CALM. A limit that is looser by one, counts per read, or
// leaves the work to nghttp2's own guard (twice the burst) lets the 101st through.
TEST_F(AttackTest, ResetOnePastTheBurstInALaterWriteIsAnsweredWithEnhanceYourCalm) {
  auto options = attack_options();
  options.h2.reset_rate = 0.05;
  start(options);
  Wire w(port());
  const std::string block = frames::grpc_request_block(kHangStream);
  std::uint32_t id = 1;
  auto resets = [&](int n) {
    std::string bytes;
    for (int i = 0; i < n; ++i, id += 2)
      bytes += frames::headers(id, block, frames::kEndHeaders) + frames::rst_stream(id);
    return bytes;
  };
  // 60, then 40 more: the whole burst, each write answered before the next is sent.
  std::string bytes = opening();
  for (int n : {60, 40}) {
    bytes += resets(n);
    const std::uint32_t check = id;
    id += 2;
    bytes += grpc_request(check, kCheck, health_request());
    ASSERT_TRUE(w.send(bytes));
    ASSERT_TRUE(w.read_until([&] { return has_data(w.all_frames(), check, kServing); }))
        << "health check after " << (id - 1) / 2 << " streams";
    EXPECT_TRUE(w.goaways().empty());
    bytes.clear();
  }
  // The 101st reset.
  ASSERT_TRUE(w.send(resets(1)));
  EXPECT_TRUE(w.read_until_closed(5s)) << "the connection is still open after 101 resets";
  auto goaways = w.goaways();
  ASSERT_FALSE(goaways.empty()) << "closed without GOAWAY";
  for (const auto& g : goaways)
    EXPECT_EQ(g.code, frames::kEnhanceYourCalm);
  w.close();
  EXPECT_TRUE(settled());
  EXPECT_TRUE(served());
}

// --- 2. CONTINUATION flood and oversized header lists ---------------------------------------

TEST_F(AttackTest, ContinuationFloodClosesTheConnection) {
  start();
  Wire w(port());
  std::string flood = opening();
  std::string block = frames::grpc_request_block(kEcho);
  flood += frames::headers(1, block.substr(0, 10), frames::kNoFlags);
  for (int i = 0; i < 1000; ++i)
    flood += frames::continuation(1, "", false);
  w.send(flood);
  EXPECT_TRUE(w.read_until_closed(5s));
  for (const auto& g : w.goaways())
    EXPECT_NE(g.code, frames::kNoError);
  EXPECT_EQ(started(kEcho), 0u);
  EXPECT_TRUE(settled());
  EXPECT_TRUE(served());
  EXPECT_TRUE(memory_bounded());
}

TEST_F(AttackTest, HeaderBlockWithinTheContinuationLimitIsServed) {
  start();
  Wire w(port());
  std::string block = frames::grpc_request_block(kCheck);
  // One HEADERS frame and exactly max_continuations CONTINUATION frames.
  std::size_t piece = block.size() / 9 + 1;
  std::string bytes = opening() + frames::header_sequence(1, block, piece);
  bytes += frames::data(1, health_request(), true);
  ASSERT_EQ(frames::parse(bytes.substr(frames::kPreface.size())).size(), 11u);
  w.send(bytes);
  EXPECT_TRUE(w.read_until([&] { return has_data(w.all_frames(), 1, kServing); }));
  EXPECT_FALSE(w.closed());
}

// The request is refused — its stream reset, or the whole connection closed — and never reaches
// a handler. If only the stream was reset, the connection still serves the next one.
void expect_header_list_refused(Wire& w) {
  bool refused = w.read_until([&] {
    auto fs = w.all_frames();
    return has_frame(fs, frames::kRstStream, 1) || has_frame(fs, frames::kGoaway, 0);
  });
  if (!refused) refused = w.read_until_closed(2s);
  EXPECT_TRUE(refused) << "the oversized header list got no answer";
  if (!w.closed() && w.goaways().empty()) {
    w.send(grpc_request(3, kCheck, health_request()));
    EXPECT_TRUE(w.read_until([&] { return has_data(w.all_frames(), 3, kServing); }))
        << "the connection did not serve a request after the refused one";
  }
}

TEST_F(AttackTest, OversizedHeaderListIsRefused) {
  start();
  const std::string echo = grpc_frame("");
  struct Variant {
    const char* name;
    std::string block;
  };
  std::vector<Variant> variants;
  {
    // One 64 KiB header value, spread over HEADERS and four CONTINUATIONs.
    variants.push_back({"one 64 KiB value", frames::grpc_request_block(
                                                kEcho, {{"x-big", std::string(64 * 1024, 'v')}})});
    // Many headers, 40 KiB in all.
    frames::HeaderList many;
    for (int i = 0; i < 400; ++i)
      many.emplace_back("x-h" + std::to_string(i), std::string(64, 'm'));
    variants.push_back({"400 headers", frames::grpc_request_block(kEcho, many)});
    // HPACK amplification: one 4 KB entry enters the dynamic table, then 1,000 one-byte
    // references to it expand to 4 MB of headers.
    std::string bomb = frames::grpc_request_block(kEcho);
    bomb += frames::hpack_literal_indexed("x-bomb", std::string(4000, 'b'));
    for (int i = 0; i < 1000; ++i)
      bomb += frames::hpack_indexed(62);
    variants.push_back({"HPACK bomb", bomb});
  }
  for (const auto& v : variants) {
    SCOPED_TRACE(v.name);
    Wire w(port());
    ASSERT_TRUE(
        w.send(opening() + frames::header_sequence(1, v.block) + frames::data(1, echo, true)));
    expect_header_list_refused(w);
    EXPECT_EQ(started(kEcho), 0u);
    w.close();
    EXPECT_TRUE(settled());
    EXPECT_TRUE(served());
  }
  EXPECT_TRUE(memory_bounded());
}

// --- 3. SETTINGS and PING floods --------------------------------------------------------------

struct FloodResult {
  bool closed = false;
  std::vector<Goaway> goaways;
  std::size_t acks = 0;
};

// 5,000 copies of `frame` as fast as possible. Drain::no never reads the answers until the end;
// Drain::yes reads them after every 50 frames, as a client pumping its session would.
FloodResult flood(unsigned short port, const std::string& frame, Wire::Drain drain) {
  constexpr int kFrames = 5000;
  Wire w(port);
  w.send(opening(), drain);
  if (drain == Wire::Drain::no) {
    std::string bytes;
    for (int i = 0; i < kFrames; ++i)
      bytes += frame;
    w.send(bytes, drain);
  } else {
    std::string fifty;
    for (int i = 0; i < 50; ++i)
      fifty += frame;
    for (int i = 0; i < kFrames && !w.closed(); i += 50) {
      if (!w.send(fifty, drain)) break;
      w.read_available();
    }
  }
  FloodResult r;
  r.closed = w.read_until_closed(5s);
  r.goaways = w.goaways();
  for (const auto& f : w.all_frames()) {
    if ((f.type == frames::kPing || f.type == frames::kSettings) && (f.flags & frames::kAck)) {
      ++r.acks;
    }
  }
  return r;
}

void expect_calmed(const FloodResult& r) {
  EXPECT_TRUE(r.closed);
  ASSERT_FALSE(r.goaways.empty()) << "closed without GOAWAY";
  for (const auto& g : r.goaways)
    EXPECT_EQ(g.code, frames::kEnhanceYourCalm);
  EXPECT_LT(r.acks, 5000u) << "every frame of the flood was answered";
}

TEST_F(AttackTest, SettingsFloodIsAnsweredWithEnhanceYourCalm) {
  start();
  for (auto drain : {Wire::Drain::no, Wire::Drain::yes}) {
    SCOPED_TRACE(drain == Wire::Drain::yes ? "reading the ACKs" : "not reading");
    expect_calmed(flood(port(), frames::settings(), drain));
    EXPECT_TRUE(settled());
    EXPECT_TRUE(served());
  }
  EXPECT_TRUE(memory_bounded());
}

TEST_F(AttackTest, PingFloodIsAnsweredWithEnhanceYourCalm) {
  start();
  for (auto drain : {Wire::Drain::no, Wire::Drain::yes}) {
    SCOPED_TRACE(drain == Wire::Drain::yes ? "reading the ACKs" : "not reading");
    expect_calmed(flood(port(), frames::ping(0x0102030405060708ull), drain));
    EXPECT_TRUE(settled());
    EXPECT_TRUE(served());
  }
  EXPECT_TRUE(memory_bounded());
}

// A busy, well-behaved client: grpc-go and grpc-core send a PING with the DATA they receive
// (bandwidth estimation), and a SETTINGS when their estimate grows. Each such frame answers our
// traffic, so none of them counts toward the flood limit, however many there are; the same
// connection pinging with nothing in between is still cut off.
TEST_F(AttackTest, BusyPeerPingingOncePerDataFrameIsNotAFlood) {
  start();
  const auto limits = attack_options().h2;
  Wire w(port());
  ASSERT_TRUE(w.send(opening()));
  constexpr std::uint32_t kCalls = 400;  // 8 x the burst; the refill adds 10 a second
  // settings: the opening SETTINGS counts, as it is acknowledged too.
  std::size_t pings = 0, settings = 1, ping_acks = 0, settings_acks = 0;
  auto pump = [&](std::uint32_t stream_id, bool& done) {
    for (const auto& f : w.new_frames()) {
      bool ack = f.flags & frames::kAck;
      if (f.type == frames::kData && f.stream_id == stream_id) {
        // What grpc-go's transport does on every DATA frame while no BDP ping is out.
        w.send(frames::ping(pings++) + frames::settings({{frames::kInitialWindowSize, 65535}}));
        ++settings;
      } else if (f.type == frames::kPing && ack) {
        ++ping_acks;
      } else if (f.type == frames::kSettings) {
        if (ack) {
          ++settings_acks;
        } else {
          w.send(frames::settings_ack());
        }
      } else if (f.type == frames::kHeaders && f.stream_id == stream_id &&
                 (f.flags & frames::kEndStream)) {
        done = true;
      }
    }
    return done;
  };
  for (std::uint32_t i = 0; i < kCalls; ++i) {
    std::uint32_t id = 1 + 2 * i;
    bool done = false;
    ASSERT_TRUE(w.send(grpc_request(id, kCheck, health_request())));
    ASSERT_TRUE(w.read_until([&] { return pump(id, done); })) << "call " << i << " unanswered";
  }
  bool unused = false;
  ASSERT_TRUE(w.read_until([&] {
    pump(0, unused);
    return ping_acks == pings && settings_acks == settings;
  })) << ping_acks
      << " of " << pings << " PINGs and " << settings_acks << " of " << settings
      << " SETTINGS acknowledged";
  EXPECT_FALSE(w.closed());
  EXPECT_TRUE(w.goaways().empty()) << "a busy client was sent GOAWAY";
  EXPECT_GT(pings, 4u * limits.control_burst) << "too few PINGs to tell";
  EXPECT_EQ(server().call([&] { return server().server().stats().calmed_connections; }), 0u);

  // The same connection, now pinging with none of our traffic in between, is a flood.
  std::string fifty;
  for (int i = 0; i < 50; ++i)
    fifty += frames::ping(7);
  for (int i = 0; i < 100 && !w.closed(); ++i) {
    if (!w.send(fifty)) break;
    w.read_available();
  }
  EXPECT_TRUE(w.read_until_closed());
  auto goaways = w.goaways();
  ASSERT_FALSE(goaways.empty());
  EXPECT_EQ(goaways.back().code, frames::kEnhanceYourCalm);
  EXPECT_TRUE(settled());
  EXPECT_EQ(server().call([&] { return server().server().stats().calmed_connections; }), 1u);
  EXPECT_TRUE(served());
}

// A peer that PINGs but never reads the ACKs is bounded by nghttp2's cap on queued ACKs even
// where the token bucket would let it go on: once the socket buffers are full, at most 1,000
// ACKs queue before the connection is closed with ENHANCE_YOUR_CALM.
TEST_F(AttackTest, PingsWhoseAcksAreNeverReadAreBoundedByTheAckQueue) {
  auto o = attack_options();
  o.h2.control_burst = 100'000'000;  // the token bucket out of the way
  o.h2.control_rate = 100'000'000;
  o.h2.write_stall_timeout = 30s;  // and the stall timeout: only nghttp2's cap is left
  start(o);
  Wire w(port());
  ASSERT_TRUE(w.send(opening(), Wire::Drain::no));
  std::string batch;
  for (int i = 0; i < 10'000; ++i)
    batch += frames::ping(9);
  // Far more ACKs than the socket buffers of both ends hold (17 bytes each).
  std::size_t sent = 0;
  for (int i = 0; i < 500; ++i) {
    if (!w.send(batch, Wire::Drain::no, 2s)) break;
    sent += 10'000;
  }
  ASSERT_TRUE(server().eventually([&] { return server().server().connection_count() == 0; }, 10s))
      << "the peer that never reads was not closed";
  EXPECT_EQ(server().call([&] { return server().server().stats().calmed_connections; }), 1u);
  EXPECT_LT(sent, 5'000'000u) << "the server read every PING";
  EXPECT_TRUE(settled());
  EXPECT_TRUE(served());
  EXPECT_TRUE(memory_bounded());
}

// --- 4. A flow-control window held at zero ----------------------------------------------------

std::string stream_request(std::uint32_t count, std::uint32_t size) {
  dispatchd::test::StreamRequest req;
  req.set_count(count);
  req.set_size(size);
  return grpc_frame(req.SerializeAsString());
}

TEST_F(AttackTest, ZeroWindowReaderIsClosedByTheWriteStallTimeout) {
  start();
  // Initial stream window 0, and nothing is ever read from the socket.
  Wire w(port());
  ASSERT_TRUE(w.send(opening({{frames::kInitialWindowSize, 0}}) +
                         grpc_request(1, kStream, stream_request(1000, 16384)),
                     Wire::Drain::no));
  ASSERT_TRUE(server().eventually([&] { return state_.stream_blocked; }));
  EXPECT_EQ(server().call([&] { return state_.stream_written; }), 0u);
  EXPECT_TRUE(served());  // others are served while the handler waits
  EXPECT_TRUE(memory_bounded());

  ASSERT_TRUE(server().eventually([&] { return server().server().connection_count() == 0; }, 5s))
      << "the stalled connection was not closed";
  auto held = std::chrono::duration_cast<Ms>(Clock::now() - w.opened_at());
  EXPECT_GE(held, attack_options().h2.write_stall_timeout);
  EXPECT_TRUE(server().eventually([&] { return state_.stream_aborted; }));
  EXPECT_FALSE(server().call([&] { return state_.stream_done; }));
  EXPECT_TRUE(settled());
  EXPECT_TRUE(served());
}

TEST_F(AttackTest, PeerThatNeverReadsIsClosedByTheWriteStallTimeout) {
  start();
  // The windows are wide open, but the socket is never read: the server's writes fill the
  // socket buffers and block.
  constexpr std::uint32_t kChunks = 4000;  // 64 MiB, far more than the socket buffers hold
  Wire w(port());
  ASSERT_TRUE(w.send(opening({{frames::kInitialWindowSize, 0x7fffffff}}) +
                         frames::window_update(0, 0x7fffffff - 65535) +
                         grpc_request(1, kStream, stream_request(kChunks, 16384)),
                     Wire::Drain::no));
  ASSERT_TRUE(server().eventually([&] { return state_.stream_written > 0; }));
  EXPECT_TRUE(served());
  ASSERT_TRUE(server().eventually([&] { return server().server().connection_count() == 0; }, 5s))
      << "the stalled connection was not closed";
  EXPECT_GE(std::chrono::duration_cast<Ms>(Clock::now() - w.opened_at()),
            attack_options().h2.write_stall_timeout);
  EXPECT_TRUE(server().eventually([&] { return state_.stream_aborted; }));
  EXPECT_LT(server().call([&] { return state_.stream_written; }), kChunks);
  EXPECT_TRUE(settled());
  EXPECT_TRUE(served());
  EXPECT_TRUE(memory_bounded());
}

TEST_F(AttackTest, ZeroWindowIsClosedEvenWhenThePeerAnswersPings) {
  auto o = attack_options();
  // The server PINGs the peer every few hundred milliseconds; the peer answers each at once, so
  // keepalive never closes it.
  o.h2.keepalive_time = 100ms;
  o.h2.keepalive_timeout = 150ms;
  start(o);
  Wire w(port());
  ASSERT_TRUE(w.send(opening() + grpc_request(1, kStream, stream_request(1000, 16384))));
  // A live peer: it acknowledges SETTINGS and answers every PING, but never opens its window.
  int pings_answered = 0;
  w.read_until(
      [&] {
        for (const auto& f : w.new_frames()) {
          if (f.type == frames::kPing && !(f.flags & frames::kAck)) {
            w.send(frames::ping_ack(f.payload));
            ++pings_answered;
          } else if (f.type == frames::kSettings && !(f.flags & frames::kAck)) {
            w.send(frames::settings_ack());
          }
        }
        return false;
      },
      5s);
  EXPECT_TRUE(w.closed()) << "the stalled connection was not closed";
  EXPECT_GE(pings_answered, 2) << "the peer was not shown to be alive";
  EXPECT_LE(server().call([&] { return state_.stream_written; }), 4u);
  EXPECT_TRUE(server().eventually([&] { return state_.stream_aborted; }));
  EXPECT_TRUE(settled());
  EXPECT_TRUE(served());
  EXPECT_TRUE(memory_bounded());
}

// --- 5. Keepalive -------------------------------------------------------------------------------

TEST_F(AttackTest, SilentPeerIsClosedAfterKeepaliveTimeAndTimeout) {
  auto o = attack_options();
  o.h2.keepalive_time = 300ms;
  o.h2.keepalive_timeout = 300ms;
  start(o);
  Wire w(port());
  ASSERT_TRUE(w.send(opening()));
  // It reads (so the PING reaches it) but never sends another byte.
  EXPECT_TRUE(w.read_until_closed(5s));
  EXPECT_GE(w.open_for(), o.h2.keepalive_time + o.h2.keepalive_timeout);
  EXPECT_TRUE(has_frame(w.all_frames(), frames::kPing, 0)) << "closed without a PING first";
  EXPECT_TRUE(settled());
  EXPECT_TRUE(served());
}

TEST_F(AttackTest, PeerAnsweringPingsOutlivesManyKeepalivePeriods) {
  auto o = attack_options();
  o.h2.keepalive_time = 300ms;
  o.h2.keepalive_timeout = 300ms;
  start(o);
  Wire w(port());
  ASSERT_TRUE(w.send(opening()));
  int pings_answered = 0;
  // Four times keepalive_time + keepalive_timeout: the connection must stay open throughout.
  bool closed = w.read_until(
      [&] {
        for (const auto& f : w.new_frames()) {
          if (f.type == frames::kPing && !(f.flags & frames::kAck)) {
            w.send(frames::ping_ack(f.payload));
            ++pings_answered;
          } else if (f.type == frames::kSettings && !(f.flags & frames::kAck)) {
            w.send(frames::settings_ack());
          }
        }
        return w.closed();
      },
      2400ms);
  EXPECT_FALSE(closed);
  EXPECT_GE(pings_answered, 3);
  EXPECT_EQ(server().call([&] { return server().server().connection_count(); }), 1u);
  ASSERT_TRUE(w.send(grpc_request(1, kCheck, health_request())));
  EXPECT_TRUE(w.read_until([&] { return has_data(w.all_frames(), 1, kServing); }));
  w.close();
  EXPECT_TRUE(settled());
}

// --- 6. Slowloris -----------------------------------------------------------------------------

TEST_F(AttackTest, ConnectionsWithoutPrefaceAreClosedAfterThePrefaceTimeout) {
  auto o = attack_options();
  start(o);
  std::vector<std::unique_ptr<Wire>> wires;
  for (int i = 0; i < 200; ++i) {
    wires.push_back(std::make_unique<Wire>(port()));
    // Half send nothing, half stop in the middle of the preface.
    if (i % 2) wires.back()->send(frames::kPreface.substr(0, 16));
  }
  std::size_t peak = 0;
  server().eventually(
      [&] {
        peak = std::max(peak, server().server().connection_count());
        return peak == wires.size();
      },
      1s);
  EXPECT_GT(peak, 0u);
  EXPECT_LE(peak, wires.size());
  EXPECT_TRUE(served());
  for (auto& w : wires) {
    ASSERT_TRUE(w->read_until_closed(5s)) << "a connection without preface is still open";
    EXPECT_GE(w->open_for(), o.h2.preface_timeout);
  }
  EXPECT_TRUE(settled());
  EXPECT_TRUE(served());
  EXPECT_TRUE(memory_bounded());
}

std::shared_ptr<grpc::Channel> tls_channel(const std::string& address) {
  grpc::SslCredentialsOptions o;
  o.pem_root_certs = read_file(cert_dir() + "/ca.pem");
  o.pem_private_key = read_file(cert_dir() + "/node-1.key");
  o.pem_cert_chain = read_file(cert_dir() + "/node-1.pem");
  grpc::ChannelArguments args;
  args.SetSslTargetNameOverride("swarm-manager");
  return grpc::CreateCustomChannel(address, grpc::SslCredentials(o), args);
}

::testing::AssertionResult tls_served(const std::string& address) {
  auto stub = grpc::health::v1::Health::NewStub(tls_channel(address));
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + 5s);
  grpc::health::v1::HealthCheckResponse resp;
  grpc::Status st = stub->Check(&ctx, grpc::health::v1::HealthCheckRequest(), &resp);
  if (!st.ok()) return ::testing::AssertionFailure() << "TLS health check: " << st.error_message();
  if (resp.status() != grpc::health::v1::HealthCheckResponse::SERVING) {
    return ::testing::AssertionFailure() << "TLS health check: not SERVING";
  }
  return ::testing::AssertionSuccess();
}

TEST_F(AttackTest, UnfinishedTlsHandshakesAreClosedAfterTheHandshakeTimeout) {
  auto o = attack_options();
  o.insecure = false;
  o.tls = {cert_dir() + "/server.pem", cert_dir() + "/server.key", cert_dir() + "/ca.pem"};
  start(o);
  // A TLS record header announcing 512 bytes of ClientHello, then only its first few bytes.
  const std::string partial_hello("\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 11);
  std::vector<std::unique_ptr<Wire>> wires;
  for (int i = 0; i < 200; ++i) {
    wires.push_back(std::make_unique<Wire>(port()));
    if (i % 2) wires.back()->send(partial_hello + std::string(32, '\x42'));
  }
  std::size_t peak = 0;
  server().eventually(
      [&] {
        peak = std::max(peak, server().server().handshake_count());
        return peak == wires.size();
      },
      1s);
  EXPECT_GT(peak, 0u);
  EXPECT_EQ(server().call([&] { return server().server().connection_count(); }), 0u);
  EXPECT_TRUE(tls_served(server().address()));
  for (auto& w : wires) {
    ASSERT_TRUE(w->read_until_closed(5s)) << "an unfinished handshake is still open";
    EXPECT_GE(w->open_for(), o.tls_handshake_timeout);
  }
  EXPECT_TRUE(settled());
  EXPECT_TRUE(tls_served(server().address()));
  EXPECT_TRUE(settled());
  EXPECT_TRUE(memory_bounded());
}

// --- 6b. Handshake admission (--max-handshakes) ------------------------------------------------

class HandshakeAdmissionTest : public AttackTest {
 protected:
  dispatchd::app::Options tls_options(std::size_t max_handshakes, Ms slot_timeout) {
    auto o = attack_options();
    o.insecure = false;
    o.tls = {cert_dir() + "/server.pem", cert_dir() + "/server.key", cert_dir() + "/ca.pem"};
    o.tls_handshake_timeout = 20s;
    o.max_handshakes = max_handshakes;
    o.handshake_slot_timeout = slot_timeout;
    return o;
  }
  // A client that sends the first bytes of a ClientHello and then nothing: it holds a place.
  std::unique_ptr<Wire> stalled_hello() {
    auto w = std::make_unique<Wire>(port());
    w->send(std::string("\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 11) +
            std::string(32, '\x42'));
    return w;
  }
  std::size_t admitted() {
    return server().call([&] { return server().server().handshakes_admitted(); });
  }
  std::size_t waiting() {
    return server().call([&] { return server().server().handshakes_waiting(); });
  }
  dispatchd::app::ServerStats stats() {
    return server().call([&] { return server().server().stats(); });
  }
};

TEST_F(HandshakeAdmissionTest, SilentConnectionsTakeNoPlace) {
  start(tls_options(2, 10s));
  std::vector<std::unique_ptr<Wire>> silent;
  for (int i = 0; i < 20; ++i)
    silent.push_back(std::make_unique<Wire>(port()));
  ASSERT_TRUE(server().eventually([&] { return server().server().handshake_count() == 20; }));
  EXPECT_EQ(admitted(), 0u);
  EXPECT_EQ(waiting(), 0u);
  // A real client is served at once although 20 connections have not begun their handshake.
  EXPECT_TRUE(tls_served(server().address()));
  silent.clear();
  EXPECT_TRUE(settled());
}

TEST_F(HandshakeAdmissionTest, HandshakesBeyondTheLimitWaitForAPlace) {
  start(tls_options(2, 10s));
  auto a = stalled_hello();
  auto b = stalled_hello();
  ASSERT_TRUE(server().eventually([&] { return server().server().handshakes_admitted() == 2; }));
  // grpc++ over mTLS: its ClientHello waits behind the two stalled handshakes...
  std::atomic<bool> done{false};
  ::testing::AssertionResult result = ::testing::AssertionFailure() << "not run";
  std::thread client([&] {
    result = tls_served(server().address());
    done = true;
  });
  ASSERT_TRUE(server().eventually([&] { return server().server().handshakes_waiting() == 1; }));
  EXPECT_EQ(admitted(), 2u);
  EXPECT_FALSE(done.load());
  // ...and takes the place of the first one to end.
  a->close();
  client.join();
  EXPECT_TRUE(result);
  EXPECT_EQ(waiting(), 0u);
  EXPECT_EQ(stats().tls_handshakes_shed_slow, 0u);
  b->close();
  EXPECT_TRUE(settled());
}

TEST_F(HandshakeAdmissionTest, AStalledHandshakeLosesItsPlaceWhenOthersWait) {
  // The handshake timeout (20 s) is far beyond the client's deadline (5 s in tls_served): the
  // client is served only because the stalled handshakes lose their places after 300 ms.
  start(tls_options(2, 300ms));
  auto a = stalled_hello();
  auto b = stalled_hello();
  ASSERT_TRUE(server().eventually([&] { return server().server().handshakes_admitted() == 2; }));
  EXPECT_TRUE(tls_served(server().address()));
  // The oldest one gave its place to the client; the other keeps its own while nobody waits.
  EXPECT_TRUE(a->read_until_closed(5s)) << "the stalled handshake kept its place";
  EXPECT_FALSE(b->closed());
  EXPECT_EQ(stats().tls_handshakes_shed_slow, 1u);
  EXPECT_EQ(admitted(), 1u);
  EXPECT_EQ(stats().tls_handshake_timeouts, 0u);
  b->close();
  EXPECT_TRUE(settled());
}

TEST_F(HandshakeAdmissionTest, ABehindQueueAdmitsTheNewestFirst) {
  auto o = tls_options(1, 10s);
  o.handshake_queue_lifo_after = 0ms;  // always "behind"
  start(o);
  auto holder = stalled_hello();
  ASSERT_TRUE(server().eventually([&] { return server().server().handshakes_admitted() == 1; }));
  auto old1 = stalled_hello();
  auto old2 = stalled_hello();
  ASSERT_TRUE(server().eventually([&] { return server().server().handshakes_waiting() == 2; }));
  // grpc++ arrives last; when the place frees up it goes to it, not to the older waiters
  // (oldest first, it would wait behind a stalled handshake for 10 s, past its 5 s deadline).
  ::testing::AssertionResult result = ::testing::AssertionFailure() << "not run";
  std::thread client([&] { result = tls_served(server().address()); });
  ASSERT_TRUE(server().eventually([&] { return server().server().handshakes_waiting() == 3; }));
  holder->close();
  client.join();
  EXPECT_TRUE(result);
  EXPECT_EQ(waiting(), 1u);  // the place went on to the newest of the other two
  EXPECT_EQ(admitted(), 1u);
  old1->close();
  old2->close();
  EXPECT_TRUE(settled());
}

TEST_F(HandshakeAdmissionTest, ClientsGoneWhileWaitingAreDroppedWithoutAHandshake) {
  start(tls_options(1, 10s));
  auto holder = stalled_hello();
  ASSERT_TRUE(server().eventually([&] { return server().server().handshakes_admitted() == 1; }));
  std::vector<std::unique_ptr<Wire>> quitters;
  for (int i = 0; i < 5; ++i)
    quitters.push_back(stalled_hello());
  ASSERT_TRUE(server().eventually([&] { return server().server().handshakes_waiting() == 5; }));
  // They give up, as an agent does at its dial timeout, and then the place frees up.
  for (auto& q : quitters)
    q->close();
  holder->close();
  ASSERT_TRUE(server().eventually([&] { return server().server().handshake_count() == 0; }));
  auto st = stats();
  EXPECT_EQ(st.tls_handshakes_shed_gone, 5u);
  // Only the holder got as far as OpenSSL (its half ClientHello, then EOF).
  EXPECT_EQ(st.tls_handshake_failures, 1u);
  EXPECT_TRUE(tls_served(server().address()));
  EXPECT_TRUE(settled());
}

// --- 6c. RFC 9113 stream rules ------------------------------------------------------------------

TEST_F(AttackTest, HeadersOnAStreamIdLowerThanOneOpenedIsAConnectionError) {
  start();
  Wire w(port());
  // Stream 5 opened (its request body still to come), then stream 3: stream IDs only grow
  // (RFC 9113 §5.1.1), so 3 is no longer idle and HEADERS on it is a PROTOCOL_ERROR.
  w.send(opening() + frames::settings_ack() +
         frames::headers(5, frames::grpc_request_block(kCheck), frames::kEndHeaders) +
         grpc_request(3, kCheck, health_request()));
  ASSERT_TRUE(w.read_until([&] { return !w.goaways().empty(); }, 5s))
      << "no GOAWAY for HEADERS on a lower stream ID";
  EXPECT_EQ(w.goaways().back().code, static_cast<std::uint32_t>(NGHTTP2_PROTOCOL_ERROR));
  EXPECT_TRUE(w.read_until_closed(5s));
  EXPECT_TRUE(settled());
  EXPECT_TRUE(served());
}

TEST_F(AttackTest, TrailersOnAnEarlierStreamStillOpenAreNoError) {
  // The other side of the rule above: HEADERS on a lower ID that was opened (request trailers)
  // is legal and must not end the connection.
  start();
  Wire w(port());
  w.send(opening() + frames::settings_ack() +
         frames::headers(1, frames::grpc_request_block(kCheck), frames::kEndHeaders) +
         grpc_request(3, kCheck, health_request()) + frames::data(1, health_request(), false) +
         frames::headers(1, frames::hpack_block({{"x-trailer", "1"}}),
                         frames::kEndHeaders | frames::kEndStream));
  std::vector<std::uint32_t> answered;
  auto done = [&] {
    for (const auto& f : w.new_frames()) {
      if (f.type == frames::kHeaders && (f.flags & frames::kEndStream))
        answered.push_back(f.stream_id);
    }
    return answered.size() == 2;
  };
  EXPECT_TRUE(w.read_until(done, 5s)) << "answered " << answered.size() << " of 2";
  EXPECT_TRUE(w.goaways().empty());
  w.close();
  EXPECT_TRUE(settled());
}

TEST_F(AttackTest, StreamsBeyondMaxConcurrentStreamsAreRefused) {
  auto o = attack_options();
  o.h2.max_concurrent_streams = 2;
  start(o);
  Wire w(port());
  w.send(opening() + frames::settings_ack());
  // Three requests whose bodies never come: the third exceeds the advertised limit of 2
  // (RFC 9113 §5.1.2: a stream error PROTOCOL_ERROR or REFUSED_STREAM, which §5.4.1 lets an
  // endpoint treat as a connection error; nghttp2 does that once the limit is acknowledged).
  for (std::uint32_t id : {1u, 3u, 5u}) {
    w.send(frames::headers(id, frames::grpc_request_block(kCheck), frames::kEndHeaders));
  }
  bool refused = false;
  bool answered = false;
  auto done = [&] {
    for (const auto& f : w.new_frames()) {
      if (f.type == frames::kHeaders && f.stream_id == 5) answered = true;
      if (f.type == frames::kRstStream && f.stream_id == 5) {
        auto code = frames::get_u32(f.payload, 0);
        refused |= code == NGHTTP2_REFUSED_STREAM || code == NGHTTP2_PROTOCOL_ERROR;
      }
      if (f.type == frames::kGoaway && f.payload.size() >= 8) {
        refused |= frames::get_u32(f.payload, 4) == NGHTTP2_PROTOCOL_ERROR &&
                   (frames::get_u32(f.payload, 0) & 0x7fffffffu) < 5;
      }
    }
    return refused;
  };
  ASSERT_TRUE(w.read_until(done, 5s)) << "the stream over the limit was not refused";
  EXPECT_FALSE(answered) << "the stream over the limit was served";
  w.close();
  EXPECT_TRUE(settled());
  EXPECT_TRUE(served());
}

// --- 7. Connection cap --------------------------------------------------------------------------

TEST_F(AttackTest, ConnectionsBeyondTheCapAreRefused) {
  auto o = attack_options();
  o.max_connections = 20;
  start(o);
  std::vector<std::unique_ptr<RawClient>> clients;
  for (std::size_t i = 0; i < o.max_connections; ++i) {
    clients.push_back(std::make_unique<RawClient>(port()));
    clients.back()->start();
    ASSERT_TRUE(served(*clients.back())) << "client " << i;
  }
  ASSERT_TRUE(server().eventually(
      [&] { return server().server().connection_count() == o.max_connections; }));

  for (int i = 0; i < 5; ++i) {
    Wire extra(port());
    extra.send(opening() + grpc_request(1, kCheck, health_request()));
    EXPECT_TRUE(extra.read_until_closed(2s)) << "the connection over the cap was not closed";
    EXPECT_TRUE(extra.inbox().empty()) << "the connection over the cap was answered";
    EXPECT_LE(server().call([&] { return server().server().connection_count(); }),
              o.max_connections);
  }
  // The connections already open are unharmed.
  EXPECT_TRUE(served(*clients.back()));

  clients.erase(clients.begin());
  ASSERT_TRUE(server().eventually(
      [&] { return server().server().connection_count() == o.max_connections - 1; }));
  EXPECT_TRUE(served());
  clients.clear();
  EXPECT_TRUE(settled());
}

// --- 8. Thousands of abrupt disconnects ---------------------------------------------------------

TEST_F(AttackTest, AbruptDisconnectsMidStreamLeaveNothingBehind) {
  start();
  constexpr int kBatches = 8;
  constexpr int kPerBatch = 250;
  int hang_started = 0;
  std::size_t nodes = 0;
  for (int b = 0; b < kBatches; ++b) {
    bool sessions = b % 2 == 0;
    std::vector<std::unique_ptr<Wire>> wires;
    for (int i = 0; i < kPerBatch; ++i) {
      auto w = std::make_unique<Wire>(port());
      std::string bytes = opening();
      if (sessions) {
        std::string node = "attack-" + std::to_string(b) + "-" + std::to_string(i);
        bytes += grpc_request(1, kSession, grpc_frame(""), {{"node-id", node}});
      } else {
        bytes += grpc_request(1, kHangStream, grpc_frame(""));
      }
      ASSERT_TRUE(w->send(bytes));
      wires.push_back(std::move(w));
    }
    if (sessions) {
      nodes += kPerBatch;
      auto all_open = [&] { return server().server().dispatcher().open_sessions() == kPerBatch; };
      ASSERT_TRUE(server().eventually(all_open)) << "batch " << b << ": " << state();
    } else {
      hang_started += kPerBatch;
      ASSERT_TRUE(server().eventually([&] { return state_.hang_started == hang_started; }))
          << "batch " << b << ": " << state();
    }
    // Gone without a frame: a third reset, a third closed, a third in the middle of a frame.
    for (int i = 0; i < kPerBatch; ++i) {
      auto& w = *wires[static_cast<std::size_t>(i)];
      if (i % 3 == 0) {
        w.abort();
      } else if (i % 3 == 1) {
        w.close();
      } else {
        w.send(frames::headers(3, frames::grpc_request_block(kEcho)).substr(0, 20));
        w.close();
      }
    }
    wires.clear();
    ASSERT_TRUE(server().eventually([&] { return server().server().connection_count() == 0; }))
        << "batch " << b << ": " << state();
  }
  EXPECT_TRUE(server().eventually([&] { return state_.hang_cancelled == hang_started; }));
  // Registered nodes keep their heartbeat deadline until it expires (SwarmKit's behaviour).
  EXPECT_TRUE(settled(0, nodes + 8));
  EXPECT_TRUE(served());
  EXPECT_TRUE(memory_bounded());
}

}  // namespace
