// sessload: many docker.swarmkit.v1.Dispatcher Session streams over few h2c connections, on the
// gRPC C++ asynchronous client, timestamping every message: for issue 14's session scenarios.
//
// Each of --sessions streams names itself with metadata node-id sessload-<i> (dispatchd's
// --insecure identity), is spread round-robin over --connections channels (each its own
// connection), and heartbeats at the period the server answers (the first one at a random point
// of the first period), as an agent does. A stream's first message opens it; a later message whose
// manager list differs from the first one's is the fan-out message, and its arrival time
// (CLOCK_REALTIME, ns) is what --times FILE gets, one line per session.
//
//   sessload --addr HOST:PORT [--sessions N] [--connections C] [--for SECONDS] [--times FILE]
//            [--no-heartbeat] [--tls-ca FILE --tls-cert FILE --tls-key FILE] [--print-session-id]
// With --tls-*: mutual TLS, server name swarm-manager (the identity is the certificate's).
// --print-session-id: each stream's session ID on stdout when its first message arrives.
// stderr: "sessload: open=K changed=M errors=E" every 500 ms, "sessload: all N open in S s" once.
// stdout at the end (after --for, SIGINT or SIGTERM): one JSON object with the counts.
#include <grpcpp/alarm.h>
#include <grpcpp/grpcpp.h>
#include <signal.h>
#include <time.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "dispatcher.grpc.pb.h"

namespace {

namespace sw = docker::swarmkit::v1;

struct Options {
  std::string addr = "127.0.0.1:4242";
  int sessions = 1000;
  int connections = 100;
  double run_for = 1e9;
  std::string times;
  bool heartbeat = true;
  std::string tls_ca, tls_cert, tls_key;  // mutual TLS (server name swarm-manager) when given
  bool print_session_id = false;
};

bool g_print_session_id = false;

std::string read_file(const std::string& path) {
  std::string s;
  if (FILE* f = std::fopen(path.c_str(), "rb")) {
    char buf[4096];
    for (std::size_t n; (n = std::fread(buf, 1, sizeof buf, f)) > 0;)
      s.append(buf, n);
    std::fclose(f);
  }
  return s;
}

std::int64_t realtime_ns() {
  timespec ts{};
  clock_gettime(CLOCK_REALTIME, &ts);
  return std::int64_t{ts.tv_sec} * 1000000000 + ts.tv_nsec;
}

std::atomic<int> g_open{0}, g_changed{0}, g_errors{0}, g_heartbeats{0};

// The first few failures, on stderr: a count alone does not say what went wrong.
void report_error(const char* what, const grpc::Status& status) {
  static std::atomic<int> reported{0};
  if (reported.fetch_add(1, std::memory_order_relaxed) >= 10) return;
  std::fprintf(stderr, "sessload: %s failed: code %d: %s\n", what,
               static_cast<int>(status.error_code()), status.error_message().c_str());
}

struct Tag {
  virtual ~Tag() = default;
  virtual void proceed(bool ok) = 0;
};

class Session;

// One Heartbeat at a time per session: an alarm until it is due, then the unary call.
class Heartbeater final : public Tag {
 public:
  Heartbeater(sw::Dispatcher::Stub* stub, grpc::CompletionQueue* cq, std::string node)
      : stub_(stub), cq_(cq), node_(std::move(node)) {}
  void start(const std::string& session_id, std::chrono::milliseconds first) {
    req_.set_session_id(session_id);
    arm(first);
  }
  void proceed(bool ok) override {
    if (waiting_) {
      waiting_ = false;
      ctx_ = std::make_unique<grpc::ClientContext>();
      ctx_->AddMetadata("node-id", node_);
      ctx_->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
      reader_ = stub_->AsyncHeartbeat(ctx_.get(), req_, cq_);
      reader_->Finish(&resp_, &status_, this);
      return;
    }
    std::chrono::milliseconds next(5000);
    if (ok && status_.ok()) {
      g_heartbeats.fetch_add(1, std::memory_order_relaxed);
      next = std::chrono::milliseconds(resp_.period().seconds() * 1000 +
                                       resp_.period().nanos() / 1000000);
    } else {
      g_errors.fetch_add(1, std::memory_order_relaxed);
      report_error("Heartbeat", status_);
    }
    arm(next);
  }

 private:
  void arm(std::chrono::milliseconds after) {
    waiting_ = true;
    alarm_.Set(cq_, std::chrono::system_clock::now() + after, this);
  }
  sw::Dispatcher::Stub* stub_;
  grpc::CompletionQueue* cq_;
  std::string node_;
  grpc::Alarm alarm_;
  std::unique_ptr<grpc::ClientContext> ctx_;
  sw::HeartbeatRequest req_;
  sw::HeartbeatResponse resp_;
  grpc::Status status_;
  std::unique_ptr<grpc::ClientAsyncResponseReader<sw::HeartbeatResponse>> reader_;
  bool waiting_ = false;
};

class Session final : public Tag {
 public:
  Session(int index, sw::Dispatcher::Stub* stub, grpc::CompletionQueue* cq, bool heartbeat,
          std::mt19937& rng)
      : node_("sessload-" + std::to_string(index)),
        heartbeat_(heartbeat),
        hb_(stub, cq, node_),
        first_hb_(std::uniform_int_distribution<int>(0, 4999)(rng)) {
    ctx_.AddMetadata("node-id", node_);
    req_.mutable_description()->set_hostname(node_);
    // Prepared, then started: the CQ thread may use stream_ as soon as the call starts.
    stream_ = stub->PrepareAsyncSession(&ctx_, req_, cq);
    stream_->StartCall(this);
  }
  std::int64_t changed_at() const { return changed_at_.load(std::memory_order_relaxed); }
  void proceed(bool ok) override {
    if (finishing_) {  // the status is in; the stream stays counted as an error
      report_error("Session", status_);
      return;
    }
    if (!ok) {
      finishing_ = true;
      g_errors.fetch_add(1, std::memory_order_relaxed);
      if (opened_) g_open.fetch_sub(1, std::memory_order_relaxed);
      stream_->Finish(&status_, this);
      return;
    }
    if (reading_) on_message();
    reading_ = true;
    stream_->Read(&msg_, this);
  }

 private:
  void on_message() {
    if (!opened_) {
      opened_ = true;
      first_managers_ = msg_.SerializeAsString();
      if (heartbeat_) hb_.start(msg_.session_id(), first_hb_);
      if (g_print_session_id) {
        std::printf("%s\n", msg_.session_id().c_str());
        std::fflush(stdout);
      }
      g_open.fetch_add(1, std::memory_order_relaxed);
      return;
    }
    if (changed_at_.load(std::memory_order_relaxed) != 0) return;
    // The fan-out message: a manager list other than the first one's.
    sw::SessionMessage first;
    first.ParseFromString(first_managers_);
    bool same = msg_.managers_size() == first.managers_size();
    for (int i = 0; same && i < msg_.managers_size(); ++i)
      same = msg_.managers(i).SerializeAsString() == first.managers(i).SerializeAsString();
    if (same) return;
    changed_at_.store(realtime_ns(), std::memory_order_relaxed);
    g_changed.fetch_add(1, std::memory_order_relaxed);
  }

  std::string node_;
  bool heartbeat_;
  grpc::ClientContext ctx_;
  sw::SessionRequest req_;
  sw::SessionMessage msg_;
  std::unique_ptr<grpc::ClientAsyncReader<sw::SessionMessage>> stream_;
  grpc::Status status_;
  Heartbeater hb_;
  std::chrono::milliseconds first_hb_;
  std::string first_managers_;
  std::atomic<std::int64_t> changed_at_{0};
  bool opened_ = false, reading_ = false, finishing_ = false;
};

bool parse(int argc, char** argv, Options& o) {
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto value = [&]() -> const char* { return i + 1 < argc ? argv[++i] : nullptr; };
    const char* v = nullptr;
    if (a == "--no-heartbeat") {
      o.heartbeat = false;
      continue;
    }
    if (a == "--print-session-id") {
      o.print_session_id = true;
      continue;
    }
    if (!(v = value())) return false;
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
    } else if (a == "--tls-ca") {
      o.tls_ca = v;
    } else if (a == "--tls-cert") {
      o.tls_cert = v;
    } else if (a == "--tls-key") {
      o.tls_key = v;
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
                 "usage: sessload --addr HOST:PORT [--sessions N] [--connections C] "
                 "[--for SECONDS] [--times FILE] [--no-heartbeat] [--tls-ca FILE --tls-cert FILE "
                 "--tls-key FILE] [--print-session-id]\n");
    return 2;
  }
  sigset_t stop;
  sigemptyset(&stop);
  sigaddset(&stop, SIGINT);
  sigaddset(&stop, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop, nullptr);

  g_print_session_id = o.print_session_id;
  std::shared_ptr<grpc::ChannelCredentials> creds = grpc::InsecureChannelCredentials();
  if (!o.tls_ca.empty()) {
    grpc::SslCredentialsOptions tls;
    tls.pem_root_certs = read_file(o.tls_ca);
    tls.pem_cert_chain = read_file(o.tls_cert);
    tls.pem_private_key = read_file(o.tls_key);
    creds = grpc::SslCredentials(tls);
  }
  grpc::CompletionQueue cq;
  std::vector<std::unique_ptr<sw::Dispatcher::Stub>> stubs;
  for (int c = 0; c < o.connections; ++c) {
    grpc::ChannelArguments args;
    // A channel argument of its own keeps each channel off the others' (shared) subchannel.
    args.SetInt("sessload.connection", c);
    args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
    args.SetInt(GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH, 16 << 20);
    if (!o.tls_ca.empty()) args.SetSslTargetNameOverride("swarm-manager");
    auto ch = grpc::CreateCustomChannel(o.addr, creds, args);
    stubs.push_back(sw::Dispatcher::NewStub(ch));
  }
  std::thread poller([&cq] {
    void* tag = nullptr;
    bool ok = false;
    while (cq.Next(&tag, &ok))
      static_cast<Tag*>(tag)->proceed(ok);
  });

  auto t0 = std::chrono::steady_clock::now();
  std::mt19937 rng(12345);
  std::vector<std::unique_ptr<Session>> sessions;
  sessions.reserve(o.sessions);
  for (int i = 0; i < o.sessions; ++i)
    sessions.push_back(
        std::make_unique<Session>(i, stubs[i % o.connections].get(), &cq, o.heartbeat, rng));

  bool all_open = false;
  double setup_s = 0;
  auto end = t0 + std::chrono::duration<double>(o.run_for);
  for (;;) {
    timespec wait{0, 50 * 1000 * 1000};
    int sig = sigtimedwait(&stop, nullptr, &wait);
    auto now = std::chrono::steady_clock::now();
    if (!all_open && g_open.load() >= o.sessions) {
      all_open = true;
      setup_s = std::chrono::duration<double>(now - t0).count();
      std::fprintf(stderr, "sessload: all %d open in %.3f s\n", o.sessions, setup_s);
    }
    static auto last = t0;
    if (now - last >= std::chrono::milliseconds(500)) {
      last = now;
      std::fprintf(stderr, "sessload: open=%d changed=%d errors=%d heartbeats=%d\n", g_open.load(),
                   g_changed.load(), g_errors.load(), g_heartbeats.load());
    }
    if (sig == SIGINT || sig == SIGTERM || now >= end) break;
  }
  // The CQ thread keeps running: a fan-out message that arrives from here on is left out.
  if (!o.times.empty()) {
    if (FILE* f = std::fopen(o.times.c_str(), "w")) {
      for (const auto& s : sessions)
        if (s->changed_at() != 0)
          std::fprintf(f, "%lld\n", static_cast<long long>(s->changed_at()));
      std::fclose(f);
    }
  }
  std::printf(
      "{\"sessions\":%d,\"connections\":%d,\"open\":%d,\"changed\":%d,\"errors\":%d,"
      "\"heartbeats\":%d,\"setup_s\":%.6f}\n",
      o.sessions, o.connections, g_open.load(), g_changed.load(), g_errors.load(),
      g_heartbeats.load(), all_open ? setup_s : -1.0);
  std::fflush(stdout);
  std::_Exit(0);  // no orderly teardown of thousands of calls: the process ends here
}
