// SwarmKit's Logs and LogBroker services (docs/behaviour.md §15): subscriptions, the nodes each
// one involves, their listeners, and the bounded queue of each subscriber (§0.11).

#include "dispatchd/logbroker/logbroker.hpp"

#include <deque>
#include <set>
#include <utility>

#include "dispatchd/co/select.hpp"
#include "dispatchd/id.hpp"
#include "dispatchd/log.hpp"

namespace dispatchd::logbroker {

namespace {

// One SubscribeLogsMessage carries at most this much (and at least one message), so that a
// subscriber with a full queue is not sent one message larger than a client's default limit.
constexpr std::size_t kMaxBatchBytes = 256 * 1024;

Status canceled() {
  return Status(StatusCode::cancelled, "context canceled");
}
Status not_running() {
  // SwarmKit's plain error, which grpc-go sends as UNKNOWN.
  return Status(StatusCode::unknown, "broker is not running");
}

std::string join(const std::vector<std::string>& v, std::string_view sep) {
  std::string s;
  for (const auto& x : v) {
    if (!s.empty()) s += sep;
    s += x;
  }
  return s;
}

template <class Repeated>
bool contains(const Repeated& r, const std::string& v) {
  for (const auto& x : r)
    if (x == v) return true;
  return false;
}

// Runs a function when it goes out of scope (a coroutine's registrations, however it ends).
template <class F>
class Defer {
 public:
  explicit Defer(F f) : f_(std::move(f)) {}
  Defer(const Defer&) = delete;
  Defer& operator=(const Defer&) = delete;
  ~Defer() { f_(); }

 private:
  F f_;
};

}  // namespace

// A follow subscription learns of tasks assigned later (SwarmKit's subscription watch).
class TaskWatcher final : public store::Watcher {
 public:
  explicit TaskWatcher(std::function<void(const api::Task&)> f) : f_(std::move(f)) {}
  void on_event(const store::Event& e) override { f_(e.as<api::Task>()); }

 private:
  std::function<void(const api::Task&)> f_;
};

struct LogBroker::Subscription {
  api::SubscriptionMessage message;  // id, selector, options (close unset)
  bool follow = false;
  std::set<std::string> nodes;    // every node involved
  std::set<std::string> waiting;  // without follow: the nodes that have not finished yet
  std::vector<std::string> errors;
  std::set<std::string> pending_tasks;  // selected but not assigned to a node
  struct Queued {
    api::LogMessage message;
    std::size_t size;
  };
  std::deque<Queued> queue;
  std::size_t queued_bytes = 0;
  bool overflowed = false;
  bool ended = false;
  co::Wakeup wakeup;  // the subscriber's
  std::unique_ptr<TaskWatcher> watcher;

  const std::string& id() const { return message.id(); }
  bool involves(const std::string& node) const {
    return follow ? nodes.contains(node) : waiting.contains(node);
  }
  // Without follow: every node involved has finished.
  bool complete() const { return !follow && waiting.empty(); }
  // For co::select: something for the subscriber to do.
  bool ready() const noexcept { return !queue.empty() || overflowed || ended || complete(); }

  // SwarmKit's end of a finished subscription: OK, or UNKNOWN listing why logs may be missing.
  Status final_status() const {
    if (errors.empty() && pending_tasks.empty()) return Status::ok();
    std::vector<std::string> reasons = errors;
    for (const auto& t : pending_tasks)
      reasons.push_back("task " + t + " has not been scheduled");
    return Status(StatusCode::unknown,
                  "warning: incomplete log stream. some logs could not be retrieved for the "
                  "following reasons: " +
                      join(reasons, ", "));
  }
};

struct LogBroker::Listener {
  explicit Listener(std::string n) : node_id(std::move(n)) {}
  std::string node_id;
  co::Wakeup wakeup;
  // Messages not written yet. A close withdraws its subscription's unsent start instead of
  // following it, so the outbox never holds more than one entry per live subscription.
  std::deque<api::SubscriptionMessage> outbox;

  void post(const api::SubscriptionMessage& m, bool close) {
    if (close) {
      for (auto it = outbox.begin(); it != outbox.end(); ++it) {
        if (it->id() == m.id() && !it->close()) {
          outbox.erase(it);
          return;
        }
      }
    }
    outbox.push_back(m);
    outbox.back().set_close(close);
    wakeup.notify();
  }
  bool ready() const noexcept { return !outbox.empty(); }
};

LogBroker::LogBroker(store::Store& store, const auth::Authorizer& authorizer, Config config)
    : store_(store), authorizer_(authorizer), config_(config) {}

LogBroker::~LogBroker() {
  for (auto& [id, sub] : subscriptions_)
    if (sub->watcher) store_.unwatch(*sub->watcher);
}

std::size_t LogBroker::buffered_bytes() const noexcept {
  std::size_t n = 0;
  for (const auto& [id, sub] : subscriptions_)
    n += sub->queued_bytes;
  return n;
}

void LogBroker::stop() {
  if (!running_) return;
  running_ = false;
  stopped_.set();
}

void LogBroker::add_to(grpc::Server& server) {
  server.add_server_streaming<api::SubscribeLogsRequest, api::SubscribeLogsMessage>(
      "/docker.swarmkit.v1.Logs/SubscribeLogs",
      [this](grpc::ServerContext& ctx, const api::SubscribeLogsRequest& req,
             grpc::Writer<api::SubscribeLogsMessage>& w) { return subscribe(ctx, req, w); });
  server.add_server_streaming<api::ListenSubscriptionsRequest, api::SubscriptionMessage>(
      "/docker.swarmkit.v1.LogBroker/ListenSubscriptions",
      [this](grpc::ServerContext& ctx, const api::ListenSubscriptionsRequest&,
             grpc::Writer<api::SubscriptionMessage>& w) { return listen(ctx, w); });
  server.add_client_streaming<api::PublishLogsMessage, api::PublishLogsResponse>(
      "/docker.swarmkit.v1.LogBroker/PublishLogs",
      [this](grpc::ServerContext& ctx, grpc::Reader<api::PublishLogsMessage>& r) {
        return publish(ctx, r);
      });
}

// ---- subscriptions ---------------------------------------------------------------------------

void LogBroker::notify_node(const std::string& node_id, const Subscription& sub, bool close) {
  auto it = listeners_.find(node_id);
  if (it == listeners_.end()) return;
  for (Listener* l : it->second)
    l->post(sub.message, close);
}

void LogBroker::start_subscription(const std::shared_ptr<Subscription>& sub) {
  Subscription& s = *sub;
  const auto& sel = s.message.selector();
  auto add_task = [&s](const api::Task& t) {
    if (t.node_id().empty()) {
      s.pending_tasks.insert(t.id());
      return;
    }
    s.nodes.insert(t.node_id());
  };
  if (s.follow) {
    s.watcher = std::make_unique<TaskWatcher>([this, &s](const api::Task& t) {
      if (!contains(s.message.selector().task_ids(), t.id()) &&
          !contains(s.message.selector().service_ids(), t.service_id())) {
        return;
      }
      if (t.node_id().empty()) {
        s.pending_tasks.insert(t.id());
        return;
      }
      s.pending_tasks.erase(t.id());
      add_node(s, t.node_id());
    });
    // Watch and view in one synchronous step: no assignment is missed or seen twice.
    store_.watch(*s.watcher, {store::ObjectType::task, "", true, true, false});
  }
  store_.view([&](const store::ReadTx& tx) {
    for (const auto& n : sel.node_ids())
      s.nodes.insert(n);
    for (const auto& id : sel.task_ids())
      if (auto t = tx.task(id)) add_task(*t);
    if (sel.service_ids_size() > 0) {
      for (const auto& t : tx.tasks()) {
        if (!contains(sel.service_ids(), t->service_id())) continue;
        // Without follow, only tasks that have started have logs to give (SwarmKit).
        if (!s.follow && t->status().state() < api::RUNNING) continue;
        add_task(*t);
      }
    }
    return 0;
  });
  if (!s.follow) s.waiting = s.nodes;
  subscriptions_.emplace(s.id(), sub);
  for (const auto& node : s.nodes) {
    if (listeners_.contains(node)) {
      notify_node(node, s, false);
    } else {
      node_done(s, node, "node " + node + " is not available");
    }
  }
}

void LogBroker::add_node(Subscription& sub, const std::string& node_id) {
  if (sub.ended || !sub.nodes.insert(node_id).second) return;
  log::debug("log subscription {}: node {} joins", sub.id(), node_id);
  notify_node(node_id, sub, false);
}

void LogBroker::node_done(Subscription& sub, const std::string& node_id, const std::string& error) {
  if (!error.empty()) sub.errors.push_back(error);
  if (sub.follow) return;
  if (sub.waiting.erase(node_id) > 0) sub.wakeup.notify();
}

void LogBroker::end_subscription(Subscription& sub) {
  if (sub.ended) return;
  sub.ended = true;
  if (sub.watcher) store_.unwatch(*sub.watcher);
  for (const auto& node : sub.follow ? sub.nodes : sub.waiting)
    notify_node(node, sub, true);
  sub.wakeup.notify();
  const std::string id = sub.id();
  subscriptions_.erase(id);  // callers hold `sub` still
}

void LogBroker::deliver(Subscription& sub, const api::PublishLogsMessage& m) {
  stats_.messages_published += static_cast<std::uint64_t>(m.messages_size());
  if (sub.ended) {
    stats_.messages_discarded += static_cast<std::uint64_t>(m.messages_size());
    return;
  }
  for (int i = 0; i < m.messages_size(); ++i) {
    const auto& lm = m.messages(i);
    const std::size_t size = lm.ByteSizeLong();
    if (!sub.queue.empty() && sub.queued_bytes + size > config_.subscriber_buffer) {
      // The subscriber fell behind: it is cut off, never the publisher held up (§0.11).
      stats_.messages_dropped += sub.queue.size() + static_cast<std::size_t>(m.messages_size() - i);
      ++stats_.subscribers_cut_off;
      log::warn(
          "log subscription {}: subscriber fell behind by more than {} bytes "
          "(--log-subscriber-buffer): ending it",
          sub.id(), config_.subscriber_buffer);
      sub.queue.clear();
      sub.queued_bytes = 0;
      sub.overflowed = true;
      end_subscription(sub);
      return;
    }
    sub.queue.push_back({lm, size});
    sub.queued_bytes += size;
  }
  sub.wakeup.notify();
}

// ---- the calls -------------------------------------------------------------------------------

asio::awaitable<Status> LogBroker::subscribe(grpc::ServerContext& ctx,
                                             const api::SubscribeLogsRequest& req,
                                             grpc::Writer<api::SubscribeLogsMessage>& writer) {
  // Operators are managers of this cluster, as for the Control API; no forwarding.
  static const std::vector<std::string> managers = {auth::kManagerRole};
  auto who = authorizer_.authorize(ctx, managers, false);
  if (!who) co_return who.error();
  if (!req.has_selector()) {
    co_return Status(StatusCode::invalid_argument, "log selector must be provided");
  }
  const auto& sel = req.selector();
  if (sel.service_ids().empty() && sel.task_ids().empty() && sel.node_ids().empty()) {
    co_return Status(StatusCode::invalid_argument, "log selector must not be empty");
  }
  if (!running_) co_return not_running();

  auto sub = std::make_shared<Subscription>();
  sub->message.set_id(new_id());
  *sub->message.mutable_selector() = sel;
  if (req.has_options()) *sub->message.mutable_options() = req.options();
  sub->follow = req.options().follow();
  start_subscription(sub);
  ++stats_.subscriptions;
  log::info("log subscription {} by {}@{}: {} node(s){}", sub->id(), who->node_id, who->remote_addr,
            sub->nodes.size(), sub->follow ? ", following" : "");
  Defer end([this, sub] {
    end_subscription(*sub);
    log::debug("log subscription {} ended", sub->id());
  });

  co::Event::Listener cancelled(ctx.cancelled(), sub->wakeup);
  co::Event::Listener stopped(stopped_, sub->wakeup);
  for (;;) {
    co_await co::select(sub->wakeup, cancelled, stopped, *sub);
    if (cancelled.ready() || stopped.ready()) co_return canceled();
    if (sub->overflowed) {
      co_return Status(StatusCode::resource_exhausted,
                       "log subscriber fell behind: more than " +
                           std::to_string(config_.subscriber_buffer) +
                           " bytes of log messages waiting (--log-subscriber-buffer); the "
                           "messages after the last one received were dropped");
    }
    if (!sub->queue.empty()) {
      api::SubscribeLogsMessage out;
      std::size_t bytes = 0;
      while (!sub->queue.empty() &&
             (out.messages_size() == 0 || bytes + sub->queue.front().size <= kMaxBatchBytes)) {
        auto& q = sub->queue.front();
        bytes += q.size;
        sub->queued_bytes -= q.size;
        *out.add_messages() = std::move(q.message);
        sub->queue.pop_front();
      }
      stats_.messages_delivered += static_cast<std::uint64_t>(out.messages_size());
      if (!co_await writer.write(out)) co_return canceled();
      continue;
    }
    if (sub->complete()) co_return sub->final_status();
    if (sub->ended) co_return canceled();
  }
}

asio::awaitable<Status> LogBroker::listen(grpc::ServerContext& ctx,
                                          grpc::Writer<api::SubscriptionMessage>& writer) {
  auto who = authorizer_.authorize_agent(ctx);
  if (!who) co_return who.error();
  if (!running_) co_return not_running();
  const std::string node = who->node_id;

  Listener l(node);
  listeners_[node].push_back(&l);
  ++listener_count_;
  Defer leave([this, &l, node] {
    --listener_count_;
    auto& v = listeners_[node];
    std::erase(v, &l);
    if (!v.empty()) return;
    listeners_.erase(node);
    // The node's last listener is gone: what it was to publish may never come.
    for (auto& [id, sub] : subscriptions_) {
      if (sub->involves(node)) node_done(*sub, node, "node " + node + " disconnected unexpectedly");
    }
  });
  for (const auto& [id, sub] : subscriptions_)
    if (sub->involves(node)) l.post(sub->message, false);
  log::debug("node {} listens for log subscriptions ({} active)", node, l.outbox.size());

  co::Event::Listener cancelled(ctx.cancelled(), l.wakeup);
  co::Event::Listener stopped(stopped_, l.wakeup);
  for (;;) {
    co_await co::select(l.wakeup, cancelled, stopped, l);
    if (stopped.ready()) co_return Status::ok();
    if (cancelled.ready()) co_return canceled();
    api::SubscriptionMessage m = std::move(l.outbox.front());
    l.outbox.pop_front();
    if (!co_await writer.write(m)) co_return canceled();
  }
}

asio::awaitable<std::expected<api::PublishLogsResponse, Status>> LogBroker::publish(
    grpc::ServerContext& ctx, grpc::Reader<api::PublishLogsMessage>& reader) {
  auto who = authorizer_.authorize_agent(ctx);
  if (!who) co_return std::unexpected(who.error());
  if (!running_) co_return std::unexpected(not_running());
  const std::string node = who->node_id;

  // One subscription per stream; whatever ends the stream ends this node's part of it.
  std::shared_ptr<Subscription> current;
  auto fail = [&](Status st) -> std::expected<api::PublishLogsResponse, Status> {
    if (current) node_done(*current, node, st.go_error_string());
    return std::unexpected(std::move(st));
  };
  for (;;) {
    auto next = co_await reader.read();
    if (!next) co_return fail(next.error());
    if (!*next) {
      if (current) node_done(*current, node, "");
      co_return api::PublishLogsResponse{};
    }
    const api::PublishLogsMessage& m = **next;
    if (m.subscription_id().empty()) {
      co_return fail(Status(StatusCode::invalid_argument, "missing subscription ID"));
    }
    if (!current) {
      auto it = subscriptions_.find(m.subscription_id());
      if (it == subscriptions_.end()) {
        co_return fail(Status(StatusCode::not_found, "unknown subscription ID"));
      }
      current = it->second;
    } else if (m.subscription_id() != current->id()) {
      co_return fail(
          Status(StatusCode::invalid_argument, "different subscription IDs in the same session"));
    }
    if (m.close()) {
      node_done(*current, node, "");
      co_return api::PublishLogsResponse{};
    }
    // A node publishes under its own name only.
    for (const auto& lm : m.messages()) {
      if (lm.context().node_id() != node) {
        co_return fail(
            Status(StatusCode::permission_denied,
                   "invalid NodeID: expected=" + node + ";received=" + lm.context().node_id()));
      }
    }
    deliver(*current, m);
  }
}

}  // namespace dispatchd::logbroker
