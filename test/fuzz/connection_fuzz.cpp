// A whole server connection (h2::Connection -> grpc::Server -> Dispatcher and health service, in
// insecure mode) fed arbitrary bytes after a valid HTTP/2 client preface.
//
// Input layout (all of it is mutated by the fuzzer):
//   byte 0   flags
//              bit 0  send an empty client SETTINGS frame right after the preface magic
//              bit 1  "slow client": each chunk arrives only once the server has nothing left to
//                     do (handlers have answered), instead of as soon as the reader asks
//              bit 2  every other write_some returns would_block first
//              bit 3  slow client only: before EOF, let 3 ms of real time pass so that short
//                     grpc-timeouts expire
//              bits 4-7  k: writes accept at most 2^(k+2) bytes per call (0: no limit)
//   byte 1   k: stop the server gracefully (as SIGTERM does) before chunk k is delivered (0: no)
//   byte 2   n (0..15): number of chunk sizes that follow
//   2n bytes chunk sizes, big-endian 16-bit, used in turn (0: everything left)
//   rest     bytes sent after "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" (and the SETTINGS frame)
//
// Dispatcher session IDs are random, so the harness reads them out of the server's first
// SessionMessage and writes them over every "@@@@@@@@@@@@@@@@@@@@@@@@@" (25 bytes, the length of
// an ID) that the client has not sent yet: Heartbeat, UpdateTaskStatus, Assignments and Tasks
// can then get past the session check.
//
// After the input ends (EOF), every coroutine must finish without waiting for a timer: the
// harness polls the io_context and aborts if nothing can run while the connection is still
// alive (a hang or a leaked coroutine), then checks that no call, session, watcher, timer entry
// or connection reference is left over.

#include <google/protobuf/stubs/logging.h>

#include <asio/co_spawn.hpp>
#include <asio/io_context.hpp>
#include <asio/post.hpp>
#include <asio/this_coro.hpp>
#include <asio/use_awaitable.hpp>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "dispatchd/co/timer_wheel.hpp"
#include "dispatchd/co/wakeup.hpp"
#include "dispatchd/dispatcher/dispatcher.hpp"
#include "dispatchd/grpc/codec.hpp"
#include "dispatchd/grpc/health.hpp"
#include "dispatchd/grpc/server.hpp"
#include "dispatchd/h2/connection.hpp"
#include "dispatchd/log.hpp"
#include "dispatchd/net/transport.hpp"
#include "dispatchd/store/store.hpp"

namespace {

using namespace dispatchd;

constexpr std::string_view kClientMagic = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
constexpr std::uint8_t kEmptySettings[] = {0, 0, 0, 0x04, 0, 0, 0, 0, 0};
constexpr std::string_view kSessionPlaceholder = "@@@@@@@@@@@@@@@@@@@@@@@@@";
constexpr std::size_t kSessionIdSize = 25;
// Each poll runs every handler that is ready. An input (a few thousand chunks at most) needs far
// fewer rounds than this; more means a livelock.
constexpr std::size_t kMaxPolls = 1'000'000;

[[noreturn]] void fail(const char* what) {
  std::fprintf(stderr, "connection_fuzz: %s\n", what);
  std::abort();
}

struct Plan {
  bool client_settings = false;
  bool slow_client = false;
  bool block_writes = false;
  bool expire_timers = false;
  std::size_t write_limit = 0;  // 0: unlimited
  std::size_t stop_before_chunk = 0;
  std::vector<std::size_t> chunks;
  std::string bytes;  // what the client sends, preface included
};

std::optional<Plan> parse_plan(const std::uint8_t* data, std::size_t size) {
  if (size < 3) return std::nullopt;
  Plan p;
  const std::uint8_t flags = data[0];
  p.client_settings = flags & 1;
  p.slow_client = flags & 2;
  p.block_writes = flags & 4;
  p.expire_timers = flags & 8;
  if (unsigned k = flags >> 4; k != 0) p.write_limit = std::size_t{1} << (k + 2);
  p.stop_before_chunk = data[1];
  const std::size_t n = data[2] & 15;
  if (size < 3 + 2 * n) return std::nullopt;
  for (std::size_t i = 0; i < n; ++i)
    p.chunks.push_back(std::size_t{data[3 + 2 * i]} << 8 | data[4 + 2 * i]);
  p.bytes.assign(kClientMagic);
  if (p.client_settings) p.bytes.append(reinterpret_cast<const char*>(kEmptySettings), 9);
  p.bytes.append(reinterpret_cast<const char*>(data + 3 + 2 * n), size - 3 - 2 * n);
  return p;
}

// Serves the client bytes in chunks and swallows what the server writes. A chunk becomes
// readable when a read wait completes; read_some returns would_block once it is used up.
class FuzzTransport final : public net::Transport {
 public:
  FuzzTransport(Plan& plan, std::function<void()> on_stop)
      : plan_(plan), on_stop_(std::move(on_stop)) {}

  std::size_t read_some(std::span<std::uint8_t> buf, std::error_code& ec) override {
    ec = {};
    if (closed_) {
      ec = asio::error::bad_descriptor;
      return 0;
    }
    if (pos_ == plan_.bytes.size()) {
      ec = asio::error::eof;
      return 0;
    }
    if (readable_ == 0) {
      ec = asio::error::would_block;
      return 0;
    }
    std::size_t n = std::min(readable_, buf.size());
    std::memcpy(buf.data(), plan_.bytes.data() + pos_, n);
    pos_ += n;
    readable_ -= n;
    return n;
  }

  std::size_t write_some(std::span<const std::uint8_t> buf, std::error_code& ec) override {
    ec = {};
    if (closed_) {
      ec = asio::error::broken_pipe;
      return 0;
    }
    if (plan_.block_writes && (block_toggle_ = !block_toggle_)) {
      ec = asio::error::would_block;
      return 0;
    }
    std::size_t n = buf.size();
    if (plan_.write_limit != 0) n = std::min(n, plan_.write_limit);
    scan_output(buf.first(n));
    return n;
  }

  asio::awaitable<std::error_code> wait(Direction d) override {
    if (closed_) co_return asio::error::operation_aborted;
    if (d == Direction::read && plan_.slow_client) {
      co_await reader_.async_park();
    } else {
      co_await asio::post(co_await asio::this_coro::executor, asio::use_awaitable);
    }
    if (closed_) co_return asio::error::operation_aborted;
    if (d == Direction::read && readable_ == 0) next_chunk();
    co_return std::error_code{};
  }

  void close() noexcept override {
    closed_ = true;
    reader_.notify();
  }
  bool is_open() const noexcept override { return !closed_; }
  const std::string& peer() const noexcept override { return peer_; }

  // Slow client: the reader waits for the harness to see the server idle.
  bool reader_parked() const noexcept { return reader_.parked(); }
  void resume_reader() noexcept { reader_.notify(); }
  bool input_left() const noexcept { return pos_ < plan_.bytes.size(); }

 private:
  void next_chunk() {
    ++chunk_index_;
    if (chunk_index_ == plan_.stop_before_chunk && on_stop_) on_stop_();
    std::size_t left = plan_.bytes.size() - pos_;
    std::size_t n = left;
    if (!plan_.chunks.empty()) {
      std::size_t want = plan_.chunks[(chunk_index_ - 1) % plan_.chunks.size()];
      if (want != 0) n = std::min(n, want);
    }
    readable_ = n;
  }

  // Follows the server's frames: every stream's DATA must be whole gRPC messages (trailers never
  // cut one short), and SessionMessages carry the session IDs to substitute.
  void scan_output(std::span<const std::uint8_t> bytes) {
    out_.append(reinterpret_cast<const char*>(bytes.data()), bytes.size());
    std::size_t off = 0;
    while (out_.size() - off >= 9) {
      auto b = [&](std::size_t i) { return static_cast<std::uint8_t>(out_[off + i]); };
      const std::size_t len = std::size_t{b(0)} << 16 | std::size_t{b(1)} << 8 | b(2);
      if (out_.size() - off < 9 + len) break;
      const std::uint8_t type = b(3), flags = b(4);
      const std::uint32_t stream = (std::uint32_t{b(5)} & 0x7f) << 24 | std::uint32_t{b(6)} << 16 |
                                   std::uint32_t{b(7)} << 8 | b(8);
      std::span<const std::uint8_t> payload(
          reinterpret_cast<const std::uint8_t*>(out_.data()) + off + 9, len);
      if (type == kData) {
        if (flags & kPadded) {
          if (payload.empty() || payload[0] + 1u > payload.size())
            fail("the server sent a DATA frame with bad padding");
          payload = payload.subspan(1, payload.size() - 1 - payload[0]);
        }
        on_data(stream, payload);
      } else if (type == kHeaders && (flags & kEndStream)) {
        auto it = decoders_.find(stream);
        if (it != decoders_.end() && it->second.mid_message())
          fail("the server's trailers cut a gRPC message short");
        decoders_.erase(stream);
      } else if (type == kRstStream) {
        decoders_.erase(stream);
      }
      off += 9 + len;
    }
    out_.erase(0, off);
  }

  void on_data(std::uint32_t stream, std::span<const std::uint8_t> data) {
    // The one body that is not gRPC: the text answer to a request that is not gRPC at all
    // (another method or content type, HTTP 415).
    static constexpr std::string_view kRefusal = "invalid gRPC request ";
    if (plain_.contains(stream)) return;
    if (!decoders_.contains(stream) && data.size() >= kRefusal.size() &&
        std::string_view(reinterpret_cast<const char*>(data.data()), kRefusal.size()) == kRefusal) {
      plain_.insert(stream);
      return;
    }
    auto& d = decoders_.try_emplace(stream, kMaxResponseSize).first->second;
    for (;;) {
      auto r = d.feed(data);
      if (r == grpc::MessageDecoder::Result::need_more) return;
      if (r == grpc::MessageDecoder::Result::error)
        fail("the server sent a malformed gRPC message");
      capture_session_id(d.take());
    }
  }

  void capture_session_id(std::string_view m) {
    // SessionMessage field 1 (session_id), a 25-character string, comes first.
    if (m.size() < 2 + kSessionIdSize || m[0] != 0x0a || m[1] != kSessionIdSize) return;
    std::string_view id = m.substr(2, kSessionIdSize);
    for (char c : id) {
      if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z'))) return;
    }
    for (std::size_t at = plan_.bytes.find(kSessionPlaceholder, pos_); at != std::string::npos;
         at = plan_.bytes.find(kSessionPlaceholder, at + kSessionIdSize)) {
      plan_.bytes.replace(at, kSessionIdSize, id);
    }
  }

  static constexpr std::uint8_t kData = 0, kHeaders = 1, kRstStream = 3;
  static constexpr std::uint8_t kEndStream = 0x01, kPadded = 0x08;
  static constexpr std::size_t kMaxResponseSize = 64 << 20;

  Plan& plan_;
  std::function<void()> on_stop_;
  std::size_t pos_ = 0;
  std::size_t readable_ = 0;
  std::size_t chunk_index_ = 0;
  bool closed_ = false;
  bool block_toggle_ = false;
  co::Wakeup reader_;
  std::string out_;
  std::map<std::uint32_t, grpc::MessageDecoder> decoders_;
  std::set<std::uint32_t> plain_;  // streams answered with a text body
  const std::string peer_ = "127.0.0.1:40000";
};

// A cluster with work for node-1, so that its Assignments, Tasks and status updates have
// something to chew on: a task with a secret and a config, a running task, another node's task,
// and a volume published to node-1.
grpc::Status populate(store::WriteTx& tx) {
  namespace api = ::docker::swarmkit::v1;
  api::Secret secret;
  secret.set_id("secret-1");
  secret.mutable_spec()->mutable_annotations()->set_name("db-password");
  secret.mutable_spec()->set_data("hunter2");
  api::Config config;
  config.set_id("config-1");
  config.mutable_spec()->mutable_annotations()->set_name("app.conf");
  config.mutable_spec()->set_data("listen = 8080\n");
  auto task = [](const char* id, const char* node, api::TaskState state) {
    api::Task t;
    t.set_id(id);
    t.set_node_id(node);
    t.set_service_id("service-1");
    t.set_desired_state(api::RUNNING);
    t.mutable_status()->set_state(state);
    t.mutable_spec()->mutable_container()->set_image("busybox");
    return t;
  };
  api::Task with_deps = task("task-1", "node-1", api::ASSIGNED);
  auto* container = with_deps.mutable_spec()->mutable_container();
  auto* sref = container->add_secrets();
  sref->set_secret_id("secret-1");
  sref->set_secret_name("db-password");
  auto* cref = container->add_configs();
  cref->set_config_id("config-1");
  cref->set_config_name("app.conf");
  api::Volume volume;
  volume.set_id("volume-1");
  volume.mutable_spec()->mutable_annotations()->set_name("data");
  volume.mutable_spec()->mutable_driver()->set_name("csi-driver");
  volume.mutable_volume_info()->set_volume_id("csi-volume-1");
  auto* published = volume.add_publish_status();
  published->set_node_id("node-1");
  published->set_state(api::VolumePublishStatus::PUBLISHED);
  for (auto st :
       {tx.create(std::move(secret)), tx.create(std::move(config)), tx.create(std::move(with_deps)),
        tx.create(task("task-2", "node-1", api::RUNNING)),
        tx.create(task("task-3", "node-2", api::ASSIGNED)), tx.create(std::move(volume))}) {
    if (!st.is_ok()) return st;
  }
  return grpc::Status::ok();
}

// The objects app::Server wires together, minus the listener.
struct Services {
  explicit Services(asio::io_context& io)
      : wheel(io, std::chrono::milliseconds(1), 256),
        grpc(wheel),
        store("dispatchd"),
        dispatcher(wheel, store, dispatcher::Config{}) {
    health.add_to(grpc);
    health.set_status("docker.swarmkit.v1.Dispatcher", grpc::HealthService::serving);
    dispatcher.add_to(grpc);
    if (!store.update(populate).is_ok()) fail("cannot populate the store");
    dispatcher.start();
  }
  // As app::Server::stop does (minus the listener).
  void stop(h2::Connection& c) {
    health.shutdown();
    dispatcher.stop();
    c.shutdown();
  }

  co::TimerWheel wheel;
  grpc::Server grpc;
  grpc::HealthService health;
  store::Store store;
  dispatcher::Dispatcher dispatcher;
};

h2::Settings connection_settings() {
  h2::Settings s;
  // Small enough that an input can reach the limit.
  s.max_concurrent_streams = 64;
  return s;
}

bool trace = false;

// protobuf logs every request whose string fields are not UTF-8 (the server refuses those with
// INTERNAL, as it should): noise at fuzzing speed. Anything else it logs is shown, once.
void on_protobuf_log(google::protobuf::LogLevel, const char* file, int line,
                     const std::string& message) {
  if (message.find("when parsing") != std::string::npos) return;
  static bool shown = false;
  if (std::exchange(shown, true)) return;
  std::fprintf(stderr, "connection_fuzz: protobuf (%s:%d, shown once): %s\n", file, line,
               message.c_str());
}

void run_one(Plan& plan) {
  asio::io_context io(1);
  std::optional<Services> svc(std::in_place, io);
  std::shared_ptr<h2::Connection> conn;
  auto transport = std::make_unique<FuzzTransport>(plan, [&] { svc->stop(*conn); });
  FuzzTransport* t = transport.get();
  conn = std::make_shared<h2::Connection>(std::move(transport), svc->grpc, connection_settings(),
                                          svc->wheel);

  bool done = false;
  asio::co_spawn(
      io,
      [](std::shared_ptr<h2::Connection> c, Services& s) -> asio::awaitable<void> {
        co_await c->run();
        s.health.shutdown();
        s.dispatcher.stop();
      }(conn, *svc),
      [&](std::exception_ptr e) {
        if (e) fail("the connection coroutine ended with an exception");
        done = true;
      });

  bool timers_run = false;
  for (std::size_t polls = 0; !done; ++polls) {
    if (polls == kMaxPolls) fail("livelock: the connection did not finish");
    if (io.poll() > 0) continue;
    if (done) break;
    if (t->reader_parked()) {
      if (plan.expire_timers && !timers_run && !t->input_left()) {
        timers_run = true;
        io.run_for(std::chrono::milliseconds(3));
      }
      t->resume_reader();
      continue;
    }
    std::fprintf(stderr,
                 "connection_fuzz: streams=%zu calls=%zu sessions=%zu dispatcher_streams=%zu "
                 "timers=%zu\n",
                 conn->open_streams(), svc->grpc.active_calls(), svc->dispatcher.open_sessions(),
                 svc->dispatcher.open_streams(), svc->wheel.armed_count());
    fail("hang: nothing can run, yet the connection has not finished (after EOF or close)");
  }

  if (trace) {
    // DISPATCHD_FUZZ_TRACE=1: what each call ended with, to check that seeds reach the handlers.
    for (const auto& [path, st] : svc->grpc.all_stats()) {
      for (std::size_t code = 0; code < st.by_code.size(); ++code) {
        if (st.by_code[code] != 0)
          std::fprintf(stderr, "%s: %zu x code %zu\n", path.c_str(), st.by_code[code], code);
      }
    }
  }
  if (svc->grpc.active_calls() != 0) fail("calls left after the connection ended");
  if (conn->open_streams() != 0) fail("streams left after the connection ended");
  if (svc->dispatcher.open_sessions() != 0 || svc->dispatcher.open_streams() != 0)
    fail("dispatcher sessions or streams left after the connection ended");
  if (svc->health.watchers() != 0) fail("health watchers left after the connection ended");
  if (svc->store.watcher_count() != 0) fail("store watchers left after the dispatcher stopped");
  if (svc->wheel.armed_count() != 0) fail("timer entries left armed after everything stopped");
  if (conn.use_count() != 1) fail("something still holds the connection after it ended");
  conn.reset();
  svc.reset();  // cancels the wheel's timer
  // Every coroutine and operation is gone: the io_context must run out of work.
  for (std::size_t polls = 0; !io.stopped(); ++polls) {
    if (polls == 1000) fail("the io_context still has work after everything finished");
    io.poll();
  }
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  log::Level level = log::Level::error;
  if (const char* l = std::getenv("DISPATCHD_FUZZ_LOG")) log::parse_level(l, level);
  log::set_level(level);
  trace = std::getenv("DISPATCHD_FUZZ_TRACE") != nullptr;
  google::protobuf::SetLogHandler(&on_protobuf_log);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  auto plan = parse_plan(data, size);
  if (!plan) return 0;
  run_one(*plan);
  return 0;
}
