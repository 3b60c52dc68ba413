// A benchmark peer: docker.swarmkit.v1.Dispatcher's Heartbeat and Session on gRPC C++ (1.51),
// h2c, either on the asynchronous completion-queue API (--api cq, the default) or on the callback
// API (--api callback). Heartbeat answers a 5 s period; Session sends its first message (session
// ID, node, manager list) and then one more whenever the manager list changes. SIGUSR1 changes
// the list (adds or removes a second manager), so the fan-out scenario runs here too.
//
// Tuned as gRPC's performance notes recommend for one core: one completion queue drained by one
// thread (cq), or the library's own callback executor (callback); enough requests posted ahead
// that a burst of new calls never waits for one to be posted; no identity checks.
//
//   grpcpp-peer [--api cq|callback] [--listen HOST:PORT]
// Prints "grpcpp-peer listening on HOST:PORT" on stderr once it serves.
#include <grpcpp/alarm.h>
#include <grpcpp/grpcpp.h>
#include <pthread.h>
#include <signal.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <unordered_set>
#include <vector>

#include "dispatcher.grpc.pb.h"

namespace {

namespace sw = docker::swarmkit::v1;

std::string g_listen = "127.0.0.1:4300";

// The manager list: version 0 has one manager, each SIGUSR1 toggles a second one.
std::atomic<unsigned> g_managers_version{0};

void fill_managers(sw::SessionMessage& m, unsigned version) {
  auto* p = m.add_managers();
  p->mutable_peer()->set_node_id("manager-1");
  p->mutable_peer()->set_addr(g_listen);
  p->set_weight(10);
  if (version % 2 == 1) {
    auto* q = m.add_managers();
    q->mutable_peer()->set_node_id("manager-fanout");
    q->mutable_peer()->set_addr(g_listen);
    q->set_weight(10);
  }
}

std::string new_session_id() {
  static thread_local std::mt19937_64 rng{std::random_device{}()};
  static constexpr char kAlphabet[] = "0123456789abcdefghijklmnopqrstuvwxyz";
  std::string id(25, '0');
  for (auto& c : id)
    c = kAlphabet[rng() % 36];
  return id;
}

std::string node_id_of(const grpc::ServerContextBase& ctx) {
  const auto& md = ctx.client_metadata();
  auto it = md.find("node-id");
  if (it == md.end()) return "peer-node";
  return std::string(it->second.data(), it->second.size());
}

sw::SessionMessage first_message(const std::string& session_id, const std::string& node_id) {
  sw::SessionMessage m;
  m.set_session_id(session_id);
  m.mutable_node()->set_id(node_id);
  fill_managers(m, g_managers_version.load());
  return m;
}

sw::SessionMessage update_message(const std::string& session_id, unsigned version) {
  sw::SessionMessage m;
  m.set_session_id(session_id);
  fill_managers(m, version);
  return m;
}

void fill_heartbeat(sw::HeartbeatResponse& r) {
  r.mutable_period()->set_seconds(5);
}

// Waits for SIGUSR1 on a thread of its own and calls on_change for each.
void watch_sigusr1(std::function<void()> on_change) {
  std::thread([on_change = std::move(on_change)] {
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGUSR1);
    for (;;) {
      int sig = 0;
      if (sigwait(&set, &sig) == 0 && sig == SIGUSR1) {
        g_managers_version.fetch_add(1);
        on_change();
      }
    }
  }).detach();
}

// ---- completion-queue API ---------------------------------------------------------------------

class CqServer {
 public:
  struct Tag {
    virtual ~Tag() = default;
    virtual void proceed(bool ok) = 0;
  };

  void run(grpc::ServerBuilder& builder) {
    builder.RegisterService(&service_);
    cq_ = builder.AddCompletionQueue();
    server_ = builder.BuildAndStart();
    if (!server_) std::exit(1);
    std::fprintf(stderr, "grpcpp-peer listening on %s (cq)\n", g_listen.c_str());
    // Enough calls posted ahead for the largest burst h2load sends (100 connections × 10 streams).
    for (int i = 0; i < 1024; ++i)
      new HeartbeatCall(this);
    for (int i = 0; i < 256; ++i)
      new SessionCall(this);
    watch_sigusr1([this] { change_alarm_.Set(cq_.get(), gpr_now(GPR_CLOCK_REALTIME), &change_); });
    void* tag = nullptr;
    bool ok = false;
    while (cq_->Next(&tag, &ok))
      static_cast<Tag*>(tag)->proceed(ok);
  }

 private:
  class HeartbeatCall final : public Tag {
   public:
    explicit HeartbeatCall(CqServer* s) : s_(s), responder_(&ctx_) {
      s_->service_.RequestHeartbeat(&ctx_, &req_, &responder_, s_->cq_.get(), s_->cq_.get(), this);
    }
    void proceed(bool ok) override {
      if (!ok || done_) {
        delete this;
        return;
      }
      new HeartbeatCall(s_);
      fill_heartbeat(resp_);
      done_ = true;
      responder_.Finish(resp_, grpc::Status::OK, this);
    }

   private:
    CqServer* s_;
    grpc::ServerContext ctx_;
    sw::HeartbeatRequest req_;
    sw::HeartbeatResponse resp_;
    grpc::ServerAsyncResponseWriter<sw::HeartbeatResponse> responder_;
    bool done_ = false;
  };

  class SessionCall final : public Tag {
   public:
    explicit SessionCall(CqServer* s) : s_(s), writer_(&ctx_) {
      ctx_.AsyncNotifyWhenDone(&done_tag_);
      s_->service_.RequestSession(&ctx_, &req_, &writer_, s_->cq_.get(), s_->cq_.get(), this);
    }
    // A write finished (or the call started).
    void proceed(bool ok) override {
      if (!started_) {
        if (!ok) {
          delete this;  // server shutting down; done_tag_ does not fire for a call never started
          return;
        }
        started_ = true;
        new SessionCall(s_);
        session_id_ = new_session_id();
        s_->sessions_.insert(this);
        sent_version_ = g_managers_version.load();
        write(first_message(session_id_, node_id_of(ctx_)));
        return;
      }
      writing_ = false;
      if (!ok || finished_) return maybe_delete();
      push();
    }
    // The manager list changed: send it unless a write is in flight (then after it).
    void push() {
      if (writing_ || finished_) return;
      unsigned v = g_managers_version.load();
      if (v == sent_version_) return;
      sent_version_ = v;
      write(update_message(session_id_, v));
    }
    void on_done() {
      finished_ = true;
      s_->sessions_.erase(this);
      maybe_delete();
    }

   private:
    struct DoneTag final : Tag {
      SessionCall* call;
      explicit DoneTag(SessionCall* c) : call(c) {}
      void proceed(bool) override { call->on_done(); }
    };
    void write(const sw::SessionMessage& m) {
      writing_ = true;
      writer_.Write(m, this);
    }
    void maybe_delete() {
      if (finished_ && !writing_) delete this;
    }

    CqServer* s_;
    grpc::ServerContext ctx_;
    sw::SessionRequest req_;
    grpc::ServerAsyncWriter<sw::SessionMessage> writer_;
    DoneTag done_tag_{this};
    std::string session_id_;
    unsigned sent_version_ = 0;
    bool started_ = false, writing_ = false, finished_ = false;
  };

  struct ChangeTag final : Tag {
    CqServer* s;
    explicit ChangeTag(CqServer* srv) : s(srv) {}
    void proceed(bool) override {
      for (auto* call : s->sessions_)
        call->push();
    }
  };

  sw::Dispatcher::AsyncService service_;
  std::unique_ptr<grpc::ServerCompletionQueue> cq_;
  std::unique_ptr<grpc::Server> server_;
  std::unordered_set<SessionCall*> sessions_;  // touched only by the CQ thread
  grpc::Alarm change_alarm_;
  ChangeTag change_{this};
};

// ---- callback API -----------------------------------------------------------------------------

class CallbackService final : public sw::Dispatcher::CallbackService {
 public:
  grpc::ServerUnaryReactor* Heartbeat(grpc::CallbackServerContext* ctx, const sw::HeartbeatRequest*,
                                      sw::HeartbeatResponse* resp) override {
    fill_heartbeat(*resp);
    auto* r = ctx->DefaultReactor();
    r->Finish(grpc::Status::OK);
    return r;
  }

  grpc::ServerWriteReactor<sw::SessionMessage>* Session(grpc::CallbackServerContext* ctx,
                                                        const sw::SessionRequest*) override {
    return new SessionReactor(this, ctx);
  }

  void managers_changed() {
    std::lock_guard lock(mu_);
    for (auto* r : sessions_)
      r->push();
  }

 private:
  class SessionReactor final : public grpc::ServerWriteReactor<sw::SessionMessage> {
   public:
    SessionReactor(CallbackService* s, grpc::CallbackServerContext* ctx)
        : s_(s), session_id_(new_session_id()) {
      {
        std::lock_guard lock(s_->mu_);
        s_->sessions_.insert(this);
      }
      std::lock_guard lock(mu_);
      sent_version_ = g_managers_version.load();
      msg_ = first_message(session_id_, node_id_of(*ctx));
      writing_ = true;
      StartWrite(&msg_);
    }
    void push() {
      std::lock_guard lock(mu_);
      push_locked();
    }
    void OnWriteDone(bool ok) override {
      std::lock_guard lock(mu_);
      writing_ = false;
      if (ok) push_locked();
    }
    void OnCancel() override {
      std::lock_guard lock(mu_);
      if (!finishing_) {
        finishing_ = true;
        Finish(grpc::Status::CANCELLED);
      }
    }
    void OnDone() override {
      {
        std::lock_guard lock(s_->mu_);
        s_->sessions_.erase(this);
      }
      delete this;
    }

   private:
    void push_locked() {
      if (writing_ || finishing_) return;
      unsigned v = g_managers_version.load();
      if (v == sent_version_) return;
      sent_version_ = v;
      msg_ = update_message(session_id_, v);
      writing_ = true;
      StartWrite(&msg_);
    }

    CallbackService* s_;
    std::mutex mu_;
    std::string session_id_;
    sw::SessionMessage msg_;
    unsigned sent_version_ = 0;
    bool writing_ = false, finishing_ = false;
  };

  std::mutex mu_;
  std::unordered_set<SessionReactor*> sessions_;
};

}  // namespace

int main(int argc, char** argv) {
  std::string api = "cq";
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--api" && i + 1 < argc) {
      api = argv[++i];
    } else if (a == "--listen" && i + 1 < argc) {
      g_listen = argv[++i];
    } else {
      std::fprintf(stderr, "usage: grpcpp-peer [--api cq|callback] [--listen HOST:PORT]\n");
      return 2;
    }
  }
  if (api != "cq" && api != "callback") {
    std::fprintf(stderr, "grpcpp-peer: --api is cq or callback\n");
    return 2;
  }
  // SIGUSR1 is taken by sigwait on the watcher thread: blocked in every thread, inherited.
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGUSR1);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);

  grpc::ServerBuilder builder;
  builder.AddListeningPort(g_listen, grpc::InsecureServerCredentials());
  // Session streams are long-lived and many share a connection: no per-connection stream cap.
  builder.AddChannelArgument(GRPC_ARG_MAX_CONCURRENT_STREAMS, 1 << 20);
  if (api == "cq") {
    CqServer server;
    server.run(builder);
  } else {
    CallbackService service;
    builder.RegisterService(&service);
    auto server = builder.BuildAndStart();
    if (!server) return 1;
    std::fprintf(stderr, "grpcpp-peer listening on %s (callback)\n", g_listen.c_str());
    watch_sigusr1([&service] { service.managers_changed(); });
    server->Wait();
  }
  return 0;
}
