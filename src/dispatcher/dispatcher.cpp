#include "dispatchd/dispatcher/dispatcher.hpp"

#include <google/protobuf/util/time_util.h>

#include <algorithm>

#include "dispatchd/co/queue.hpp"
#include "dispatchd/co/select.hpp"
#include "dispatchd/dispatcher/assignment_set.hpp"
#include "dispatchd/dispatcher/session_id.hpp"
#include "dispatchd/dispatcher/utf8.hpp"
#include "dispatchd/grpc/codec.hpp"
#include "dispatchd/log.hpp"
#include "dispatcher.pb.h"

namespace dispatchd::dispatcher {

using grpc::Status;
using grpc::StatusCode;
using Clock = std::chrono::steady_clock;

namespace {

Status stopped_status() {
  return Status(StatusCode::aborted, "dispatcher is stopped");
}
Status canceled_status() {
  return Status(StatusCode::cancelled, "context canceled");
}
Status session_invalid() {
  return Status(StatusCode::invalid_argument, "session invalid");
}
Status not_registered() {
  return Status(StatusCode::not_found, "node not registered");
}
Status fell_behind(const char* what, std::size_t limit) {
  return Status(StatusCode::unavailable,
                std::string("stream fell behind: more than ") + std::to_string(limit) + " " + what +
                    " events waiting (--watch-buffer); reconnect to resynchronise");
}

// "ip:port" → "ip" ("[v6]:port" → "v6"); empty if unparsable.
std::string host_of(const std::string& addr) {
  if (addr.empty()) return {};
  if (addr[0] == '[') {
    auto close = addr.find(']');
    return close == std::string::npos ? std::string() : addr.substr(1, close - 1);
  }
  auto colon = addr.rfind(':');
  if (colon == std::string::npos) return {};
  return addr.substr(0, colon);
}

bool has_role(const std::vector<std::string>& roles, const std::string& role) {
  return std::find(roles.begin(), roles.end(), role) != roles.end();
}

void append_varint(std::string& out, std::uint64_t v) {
  while (v >= 0x80) {
    out += static_cast<char>((v & 0x7f) | 0x80);
    v >>= 7;
  }
  out += static_cast<char>(v);
}

// A store watcher that queues events for one stream.
template <class T>
class QueueWatcher final : public store::Watcher {
 public:
  explicit QueueWatcher(co::Queue<T>& q) : q_(q) {}
  void on_event(const store::Event& e) override {
    if constexpr (std::is_same_v<T, store::Event>) {
      q_.push(e);
    } else {
      q_.push(e.ptr<typename T::element_type>());
    }
  }

 private:
  co::Queue<T>& q_;
};

// A wheel entry that wakes a stream when its batching window closes.
class BatchTimer final : public co::TimerWheel::Entry {
 public:
  explicit BatchTimer(co::Wakeup& w) : wakeup_(w) {}
  bool ready() const noexcept { return fired; }
  bool fired = false;

 private:
  void on_expire() override {
    fired = true;
    wakeup_.notify();
  }
  co::Wakeup& wakeup_;
};

struct Counter {
  std::size_t& n;
  explicit Counter(std::size_t& c) : n(c) { ++n; }
  ~Counter() { --n; }
};

}  // namespace

// ---- records ---------------------------------------------------------------------------------

struct Dispatcher::NodeRecord final : co::TimerWheel::Entry {
  NodeRecord(Dispatcher& d, std::string id) : d(d), node_id(std::move(id)) {}
  Dispatcher& d;
  std::string node_id;
  std::string session_id;  // empty for nodes pre-loaded as UNKNOWN
  Clock::time_point registered_at{};
  Clock::time_point last_heartbeat{};
  int attempts = 0;
  std::uint32_t streams = 0;  // open Session streams of this registration
  bool unknown = false;
  std::shared_ptr<co::Event> disconnect = std::make_shared<co::Event>();
  std::shared_ptr<co::Event> superseded = std::make_shared<co::Event>();

 private:
  void on_expire() override { d.on_heartbeat_expired(*this); }
};

struct Dispatcher::DownNode final : co::TimerWheel::Entry {
  DownNode(Dispatcher& d, std::string id) : d(d), node_id(std::move(id)) {}
  Dispatcher& d;
  std::string node_id;

 private:
  void on_expire() override {
    Dispatcher& dispatcher = d;  // *this is destroyed by the erase
    std::string id = node_id;
    dispatcher.down_.erase(id);
    dispatcher.orphan_tasks(id);
  }
};

class Dispatcher::GlobalWatcher final : public store::Watcher {
 public:
  explicit GlobalWatcher(std::function<void(const store::Event&)> f) : f_(std::move(f)) {}
  void on_event(const store::Event& e) override { f_(e); }

 private:
  std::function<void(const store::Event&)> f_;
};

Dispatcher::Dispatcher(co::TimerWheel& wheel, store::Store& store, Config config)
    : wheel_(wheel),
      store_(store),
      config_(std::move(config)),
      period_(config_.heartbeat_period),
      cluster_updates_(config_.watch_buffer) {}

Dispatcher::~Dispatcher() {
  for (auto& [id, r] : records_)
    wheel_.disarm(*r);
  for (auto& [id, d] : down_)
    wheel_.disarm(*d);
}

void Dispatcher::set_manager_addr(std::string addr) {
  config_.manager_addr = std::move(addr);
}

std::size_t Dispatcher::pending_updates() const noexcept {
  std::size_t n = pending_tasks_.size() + pending_nodes_.size();
  for (const auto& [id, nodes] : pending_volumes_)
    n += nodes.size();
  return n;
}

// ---- lifecycle -------------------------------------------------------------------------------

void Dispatcher::start() {
  if (started_) return;
  started_ = true;
  running_ = true;
  store_.update([&](store::WriteTx& tx) {
    // The `default` cluster carries the configured period and the CA bundle (docs/behaviour.md
    // §0.9). (A cluster restored from the state directory takes the CA bundle of this start.)
    bool needs_root =
        !config_.root_ca_pem.empty() && tx.cluster()->root_ca().ca_cert() != config_.root_ca_pem;
    bool needs_period = !tx.cluster()->spec().dispatcher().has_heartbeat_period();
    if (needs_root || needs_period) {
      api::Cluster c = *tx.cluster();
      if (needs_root) c.mutable_root_ca()->set_ca_cert(config_.root_ca_pem);
      if (needs_period) {
        auto* p = c.mutable_spec()->mutable_dispatcher()->mutable_heartbeat_period();
        p->set_seconds(config_.heartbeat_period.count() / 1000000000);
        p->set_nanos(static_cast<std::int32_t>(config_.heartbeat_period.count() % 1000000000));
      }
      tx.update(std::move(c));
    }
    // A restored list names this manager at the address it had then.
    store::ManagerList managers = tx.managers();
    bool moved = false;
    for (auto& m : managers) {
      if (m.peer().node_id() == config_.manager_node_id && !config_.manager_addr.empty() &&
          m.peer().addr() != config_.manager_addr) {
        m.mutable_peer()->set_addr(config_.manager_addr);
        moved = true;
      }
    }
    if (moved) tx.set_managers(std::move(managers));
    if (tx.managers().empty()) {
      api::WeightedPeer self;
      self.mutable_peer()->set_node_id(config_.manager_node_id);
      self.mutable_peer()->set_addr(config_.manager_addr);
      self.set_weight(10);
      tx.set_managers({self});
    }
    return Status::ok();
  });
  mark_nodes_unknown();
  if (auto c = store_.view([](const store::ReadTx& tx) { return tx.cluster(); });
      c && c->spec().dispatcher().has_heartbeat_period()) {
    const auto& p = c->spec().dispatcher().heartbeat_period();
    auto d = std::chrono::seconds(p.seconds()) + std::chrono::nanoseconds(p.nanos());
    if (d.count() > 0) period_ = d;
  }
  rebuild_cluster_snapshot();
  cluster_watcher_ =
      std::make_unique<GlobalWatcher>([this](const store::Event& e) { on_cluster_changed(e); });
  store_.watch(*cluster_watcher_, {store::ObjectType::cluster, ""});
  managers_watcher_ =
      std::make_unique<GlobalWatcher>([this](const store::Event& e) { on_cluster_changed(e); });
  store_.watch(*managers_watcher_, {store::ObjectType::managers, ""});
  node_remove_watcher_ = std::make_unique<GlobalWatcher>(
      [this](const store::Event& e) { on_node_removed(e.as<api::Node>().id()); });
  store_.watch(*node_remove_watcher_,
               {store::ObjectType::node, "", /*create=*/false, /*update=*/false, /*remove=*/true});
}

void Dispatcher::stop() {
  if (!running_) return;
  running_ = false;
  // Sessions send their final message, streams end; nothing acknowledged is lost
  // (docs/behaviour.md §0.4).
  stopped_.set();
  flush();
  flush_waiters_.for_each([](FlushWaiter& w) { w.wakeup->notify(); });
  for (auto& [id, r] : records_)
    wheel_.disarm(*r);
  records_.clear();
  for (auto& [id, d] : down_)
    wheel_.disarm(*d);
  down_.clear();
  cluster_watcher_.reset();
  managers_watcher_.reset();
  node_remove_watcher_.reset();
  cluster_updates_.close();
}

void Dispatcher::mark_nodes_unknown() {
  std::vector<store::Ptr<api::Node>> nodes =
      store_.view([](const store::ReadTx& tx) { return tx.nodes(); });
  std::vector<std::string> unknown;
  store_.update([&](store::WriteTx& tx) {
    for (const auto& n : nodes) {
      if (n->status().state() == api::NodeStatus::DOWN) {
        add_down_node(n->id());
        continue;
      }
      api::Node copy = *n;
      copy.mutable_status()->set_state(api::NodeStatus::UNKNOWN);
      copy.mutable_status()->set_message(
          "Node moved to \"unknown\" state due to leadership change in cluster");
      if (auto st = tx.update(std::move(copy)); !st.is_ok()) {
        log::warn("cannot mark node {} unknown: {}", n->id(), st.message());
        continue;
      }
      unknown.push_back(n->id());
    }
    return Status::ok();
  });
  for (const auto& id : unknown) {
    auto r = std::make_unique<NodeRecord>(*this, id);
    r->unknown = true;
    wheel_.arm_after(*r, std::chrono::duration_cast<Clock::duration>(choose_period() * 2 *
                                                                     config_.grace_multiplier));
    records_[id] = std::move(r);
  }
  if (!unknown.empty())
    log::info("{} known nodes marked unknown until they register", unknown.size());
}

// ---- registered nodes ------------------------------------------------------------------------

std::chrono::nanoseconds Dispatcher::choose_period() {
  auto eps = config_.heartbeat_epsilon.count();
  if (eps <= 0) return period_;
  std::uniform_int_distribution<std::int64_t> d(-eps, eps - 1);
  return period_ + std::chrono::nanoseconds(d(rng_));
}

std::expected<Dispatcher::NodeRecord*, Status> Dispatcher::check_session(
    const std::string& node_id, const std::string& session_id) {
  auto it = records_.find(node_id);
  if (it == records_.end()) return std::unexpected(not_registered());
  if (session_id.empty() || it->second->session_id != session_id) {
    return std::unexpected(session_invalid());
  }
  return it->second.get();
}

Status Dispatcher::check_rate_limit(const std::string& node_id) {
  auto it = records_.find(node_id);
  if (it == records_.end()) return Status::ok();
  NodeRecord& r = *it->second;
  auto now = Clock::now();
  if (r.registered_at == Clock::time_point{} || now - r.registered_at > config_.rate_limit_period) {
    r.attempts = 0;
  }
  ++r.attempts;
  if (r.attempts > config_.rate_limit_count) {
    ++stats_.rate_limited;
    return Status(StatusCode::unavailable,
                  "node " + node_id + " exceeded rate limit count of registrations");
  }
  r.registered_at = now;
  return Status::ok();
}

Dispatcher::NodeRecord& Dispatcher::add_record(const std::string& node_id) {
  auto fresh = std::make_unique<NodeRecord>(*this, node_id);
  auto it = records_.find(node_id);
  if (it != records_.end()) {
    fresh->attempts = it->second->attempts;
    fresh->registered_at = it->second->registered_at;
    wheel_.disarm(*it->second);
    // The older session ends at once (docs/behaviour.md §0.7).
    it->second->superseded->set();
  }
  if (fresh->registered_at == Clock::time_point{}) fresh->registered_at = Clock::now();
  fresh->session_id = new_session_id();
  fresh->last_heartbeat = Clock::now();
  wheel_.arm_after(*fresh, std::chrono::duration_cast<Clock::duration>(choose_period() *
                                                                       config_.grace_multiplier));
  NodeRecord& r = *fresh;
  records_[node_id] = std::move(fresh);
  ++stats_.registrations;
  return r;
}

void Dispatcher::delete_record(const std::string& node_id) {
  auto it = records_.find(node_id);
  if (it == records_.end()) return;
  wheel_.disarm(*it->second);
  records_.erase(it);
}

bool Dispatcher::disconnect_node(const std::string& node_id) {
  auto it = records_.find(node_id);
  if (it == records_.end()) return false;
  wheel_.disarm(*it->second);
  it->second->disconnect->set();
  return true;
}

void Dispatcher::on_heartbeat_expired(NodeRecord& r) {
  ++stats_.heartbeat_expiries;
  std::string id = r.node_id;
  const char* msg =
      r.unknown ? "heartbeat failure for node in \"unknown\" state" : "heartbeat failure";
  log::info("node {} missed its heartbeats: marking it down", id);
  mark_node_not_ready(id, api::NodeStatus::DOWN, msg);
}

void Dispatcher::mark_node_not_ready(const std::string& node_id, api::NodeStatus::State state,
                                     const std::string& message) {
  if (!running_) {
    log::debug("not marking node {} {}: dispatcher is stopped", node_id,
               api::NodeStatus::State_Name(state));
    return;
  }
  bool exists = store_.view([&](const store::ReadTx& tx) { return tx.node(node_id) != nullptr; });
  if (!exists) {
    // Removed (e.g. by an operator): nothing to mark, but the registration goes.
    log::debug("node {} is gone from the store: dropping its registration", node_id);
    delete_record(node_id);
    return;
  }
  add_down_node(node_id);
  NodeUpdate u;
  api::NodeStatus st;
  st.set_state(state);
  st.set_message(message);
  u.status = std::move(st);
  queue_node_update(node_id, std::move(u));
  if (records_.find(node_id) == records_.end()) {
    log::debug("node {} is not found in local storage", node_id);
  }
  delete_record(node_id);
}

void Dispatcher::add_down_node(const std::string& node_id) {
  auto& d = down_[node_id];
  if (!d) d = std::make_unique<DownNode>(*this, node_id);
  wheel_.arm_after(*d, std::chrono::duration_cast<Clock::duration>(config_.node_down_period));
}

void Dispatcher::remove_down_node(const std::string& node_id) {
  auto it = down_.find(node_id);
  if (it == down_.end()) return;
  wheel_.disarm(*it->second);
  down_.erase(it);
}

void Dispatcher::orphan_tasks(const std::string& node_id) {
  if (!running_) return;
  std::size_t orphaned = 0;
  store_.update([&](store::WriteTx& tx) {
    for (const auto& t : tx.tasks_of_node(node_id)) {
      api::Task copy = *t;
      auto s = copy.status().state();
      if (s >= api::ASSIGNED && s <= api::RUNNING) {
        copy.mutable_status()->set_state(api::ORPHANED);
        ++orphaned;
      }
      tx.update(std::move(copy));
    }
    return Status::ok();
  });
  log::info("node {} down for {}: {} tasks orphaned", node_id,
            std::chrono::duration_cast<std::chrono::seconds>(config_.node_down_period).count(),
            orphaned);
}

// ---- write batching --------------------------------------------------------------------------

std::uint64_t Dispatcher::queue_node_update(const std::string& node_id, NodeUpdate u) {
  auto& p = pending_nodes_[node_id];
  if (u.status) p.status = std::move(u.status);
  if (u.description) p.description = std::move(u.description);
  schedule_flush();
  return flushed_generation_ + 1;
}

std::uint64_t Dispatcher::queue_task_update(const std::string& task_id,
                                            const api::TaskStatus& status) {
  pending_tasks_[task_id] = status;
  schedule_flush();
  return flushed_generation_ + 1;
}

std::uint64_t Dispatcher::queue_volume_unpublish(const std::string& volume_id,
                                                 const std::string& node_id) {
  pending_volumes_[volume_id].push_back(node_id);
  schedule_flush();
  return flushed_generation_ + 1;
}

void Dispatcher::schedule_flush() {
  // Group commit: everything queued before the posted flush runs goes into it.
  if (flush_posted_) return;
  flush_posted_ = true;
  asio::post(wheel_.io(), [this] {
    flush_posted_ = false;
    flush();
  });
}

void Dispatcher::flush() {
  if (pending_tasks_.empty() && pending_nodes_.empty() && pending_volumes_.empty()) return;
  auto tasks = std::move(pending_tasks_);
  auto nodes = std::move(pending_nodes_);
  auto volumes = std::move(pending_volumes_);
  pending_tasks_.clear();
  pending_nodes_.clear();
  pending_volumes_.clear();
  auto now = google::protobuf::util::TimeUtil::NanosecondsToTimestamp(
      std::chrono::duration_cast<std::chrono::nanoseconds>(
          std::chrono::system_clock::now().time_since_epoch())
          .count());

  // At most batch_max_items changes per store transaction.
  std::vector<std::function<void(store::WriteTx&)>> work;
  work.reserve(tasks.size() + nodes.size() + volumes.size());
  for (auto& [id, status] : tasks) {
    work.push_back([&, id = id, status = std::move(status)](store::WriteTx& tx) {
      auto t = tx.task(id);
      if (!t) return;
      const api::TaskStatus& cur = t->status();
      if (cur.SerializeAsString() == status.SerializeAsString()) return;
      if (cur.state() > status.state()) return;  // no backward transitions
      api::Task copy = *t;
      *copy.mutable_status() = status;
      copy.mutable_status()->set_applied_by(config_.manager_node_id);
      *copy.mutable_status()->mutable_applied_at() = now;
      tx.update(std::move(copy));
      ++stats_.flushed_task_updates;
    });
  }
  for (auto& [id, u] : nodes) {
    work.push_back([&, id = id, u = std::move(u)](store::WriteTx& tx) {
      auto n = tx.node(id);
      if (!n) {
        log::debug("node {} unavailable: update not applied", id);
        return;
      }
      api::Node copy = *n;
      if (u.status) {
        copy.mutable_status()->set_state(u.status->state());
        copy.mutable_status()->set_message(u.status->message());
        if (!u.status->addr().empty()) copy.mutable_status()->set_addr(u.status->addr());
      }
      if (u.description) *copy.mutable_description() = *u.description;
      tx.update(std::move(copy));
      ++stats_.flushed_node_updates;
    });
  }
  for (auto& [id, node_ids] : volumes) {
    work.push_back([&, id = id, node_ids = std::move(node_ids)](store::WriteTx& tx) {
      auto v = tx.volume(id);
      if (!v) return;  // deleted meanwhile (docs/behaviour.md §0.8)
      api::Volume copy = *v;
      for (auto& ps : *copy.mutable_publish_status()) {
        if (std::find(node_ids.begin(), node_ids.end(), ps.node_id()) != node_ids.end()) {
          ps.set_state(api::VolumePublishStatus::PENDING_UNPUBLISH);
        }
      }
      tx.update(std::move(copy));
    });
  }
  std::size_t step = std::max<std::size_t>(1, config_.batch_max_items);
  for (std::size_t i = 0; i < work.size(); i += step) {
    store_.update([&](store::WriteTx& tx) {
      for (std::size_t j = i; j < std::min(work.size(), i + step); ++j)
        work[j](tx);
      return Status::ok();
    });
  }
  ++stats_.flushes;
  ++flushed_generation_;
  flush_waiters_.for_each([&](FlushWaiter& w) {
    if (w.generation <= flushed_generation_) w.wakeup->notify();
  });
}

asio::awaitable<bool> Dispatcher::wait_flushed(std::uint64_t generation, grpc::ServerContext& ctx) {
  co::Wakeup wakeup;
  FlushWaiter w;
  w.generation = generation;
  w.wakeup = &wakeup;
  flush_waiters_.push_back(w);
  co::Event::Listener cancelled(ctx.cancelled(), wakeup);
  while (flushed_generation_ < generation) {
    if (ctx.is_cancelled() || !running_) co_return false;
    co_await wakeup.async_park();
  }
  co_return true;
}

// ---- cluster-wide session fields -------------------------------------------------------------

void Dispatcher::rebuild_cluster_snapshot() {
  api::SessionMessage m;
  store_.view([&](const store::ReadTx& tx) {
    for (const auto& p : tx.managers())
      *m.add_managers() = p;
    auto c = tx.cluster();
    for (const auto& k : c->network_bootstrap_keys())
      *m.add_network_bootstrap_keys() = k;
    m.set_rootca(c->root_ca().ca_cert());
    return 0;
  });
  cluster_.encoded = std::make_shared<const std::string>(m.SerializeAsString());
}

void Dispatcher::on_cluster_changed(const store::Event& e) {
  if (e.type == store::ObjectType::cluster) {
    const auto& c = e.as<api::Cluster>();
    if (c.spec().dispatcher().has_heartbeat_period()) {
      const auto& p = c.spec().dispatcher().heartbeat_period();
      auto d = std::chrono::seconds(p.seconds()) + std::chrono::nanoseconds(p.nanos());
      if (d.count() > 0 && d != period_) {
        log::info("heartbeat period changed to {} ms", d.count() / 1000000);
        period_ = d;
      }
    }
  }
  rebuild_cluster_snapshot();
  cluster_updates_.publish(cluster_);
}

void Dispatcher::on_node_removed(const std::string& node_id) {
  if (disconnect_node(node_id))
    log::info("node {} removed: its session is told to disconnect", node_id);
}

// ---- authorization (docs/behaviour.md §9) ----------------------------------------------------

std::expected<Identity, Status> Dispatcher::authorize(const grpc::ServerContext& ctx) const {
  static const std::vector<std::string> agents = {kWorkerRole, kManagerRole};
  return authorize(ctx, agents, true);
}

std::optional<SessionView> Dispatcher::session_view(const std::string& node_id) const {
  auto it = records_.find(node_id);
  if (it == records_.end()) return std::nullopt;
  const NodeRecord& r = *it->second;
  SessionView v;
  v.session_id = r.session_id;
  v.registered_at = r.registered_at;
  v.last_heartbeat = r.last_heartbeat;
  v.deadline = r.deadline();
  v.streaming = r.streams > 0;
  return v;
}

std::expected<Identity, Status> Dispatcher::authorize(const grpc::ServerContext& ctx,
                                                      const std::vector<std::string>& authorized,
                                                      bool allow_forwarded) const {
  auto org = config_.cluster_id;
  auto blacklisted = [&](const std::string& cn) {
    auto c = store_.view([](const store::ReadTx& tx) { return tx.cluster(); });
    return c && c->blacklisted_certificates().contains(cn);
  };
  // The direct peer: the verified client certificate (TLS), or in insecure mode the metadata
  // standing in for one.
  Identity peer;
  peer.remote_addr = ctx.peer();
  bool has_cert = false;
  if (const net::PeerIdentity* tls = ctx.peer_identity()) {
    if (tls->has_certificate) {
      has_cert = true;
      peer.node_id = tls->common_name;
      peer.roles = tls->organizational_units;
      peer.org = tls->organization;
    }
  } else if (auto n = ctx.metadata("node-id"); n && !n->empty()) {
    has_cert = true;
    peer.node_id = std::string(*n);
    if (auto r = ctx.metadata("node-role"); r && !r->empty()) {
      peer.roles.emplace_back(*r);
    } else {
      peer.roles.push_back(kWorkerRole);
    }
    peer.org = std::string(ctx.metadata("node-org").value_or(org));
  }

  auto utf8 = [](const Identity& who) {
    return valid_utf8(who.node_id) && valid_utf8(who.org) &&
           std::all_of(who.roles.begin(), who.roles.end(),
                       [](const std::string& r) { return valid_utf8(r); });
  };
  auto check = [&](const Identity& who,
                   const std::vector<std::string>& roles) -> std::optional<Status> {
    if (!has_cert) {
      return Status(StatusCode::permission_denied, "no client certificates in request");
    }
    if (!utf8(who)) {
      return Status(StatusCode::permission_denied,
                    "Permission denied: node identity is not valid UTF-8");
    }
    bool role_ok = std::any_of(roles.begin(), roles.end(),
                               [&](const std::string& r) { return has_role(who.roles, r); });
    if (!role_ok) {
      std::string list = "[";
      for (std::size_t i = 0; i < roles.size(); ++i)
        list += (i ? " " : "") + roles[i];
      list += "]";
      return Status(StatusCode::permission_denied,
                    "Permission denied: remote certificate not part of OUs: " + list);
    }
    if (blacklisted(who.node_id)) {
      return Status(StatusCode::permission_denied,
                    "Permission denied: node " + who.node_id + " was removed from swarm");
    }
    if (who.org != org) {
      return Status(StatusCode::permission_denied,
                    "Permission denied: remote certificate not part of organization: " + org);
    }
    return std::nullopt;
  };

  auto forwarded = ctx.metadata_all("forwarded_cert");
  if (allow_forwarded && forwarded.size() == 1 && forwarded[0] == "true") {
    if (auto err = check(peer, {kManagerRole})) {
      return std::unexpected(
          Status(StatusCode::permission_denied,
                 "Permission denied: unauthorized forwarder role: " + err->go_error_string()));
    }
    Identity fwd;
    fwd.node_id = std::string(ctx.metadata("forwarded_cert_cn").value_or(""));
    fwd.org = std::string(ctx.metadata("forwarded_cert_org").value_or(""));
    for (auto ou : ctx.metadata_all("forwarded_cert_ou")) {
      if (!ou.empty()) fwd.roles.emplace_back(ou);
    }
    fwd.remote_addr = std::string(ctx.metadata("remote_addr").value_or(""));
    if (fwd.node_id.empty() || fwd.org.empty() || fwd.roles.empty() || !utf8(fwd)) {
      return std::unexpected(Status(StatusCode::permission_denied,
                                    "Permission denied: missing information in forwarded request"));
    }
    bool role_ok = std::any_of(authorized.begin(), authorized.end(),
                               [&](const std::string& r) { return has_role(fwd.roles, r); });
    if (!role_ok) {
      return std::unexpected(
          Status(StatusCode::permission_denied,
                 "Permission denied: unauthorized forwarded role, expecting: [swarm-worker "
                 "swarm-manager]"));
    }
    if (fwd.org != org) {
      return std::unexpected(Status(StatusCode::permission_denied,
                                    "Permission denied: organization mismatch, expecting: " + org));
    }
    return fwd;
  }
  if (auto err = check(peer, authorized)) {
    return std::unexpected(
        Status(StatusCode::permission_denied,
               "Permission denied: unauthorized peer role: " + err->go_error_string()));
  }
  return peer;
}

std::expected<Identity, Status> Dispatcher::admit(const grpc::ServerContext& ctx,
                                                  const std::string& session_id,
                                                  NodeRecord** record) {
  if (!running_) return std::unexpected(stopped_status());
  auto id = authorize(ctx);
  if (!id) return id;
  auto r = check_session(id->node_id, session_id);
  if (!r) return std::unexpected(r.error());
  if (record) *record = *r;
  return id;
}

// ---- RPCs ------------------------------------------------------------------------------------

namespace {
std::vector<h2::Segment> encode_session_message(const std::string& session_id,
                                                const api::Node* node,
                                                const ClusterSnapshot& cluster) {
  std::string head(grpc::kPrefixSize, '\0');
  head += '\x0a';
  append_varint(head, session_id.size());
  head += session_id;
  if (node) {
    std::size_t n = node->ByteSizeLong();
    head += '\x12';
    append_varint(head, n);
    std::size_t at = head.size();
    head.resize(at + n);
    node->SerializeWithCachedSizesToArray(reinterpret_cast<std::uint8_t*>(head.data() + at));
  }
  std::size_t total = head.size() - grpc::kPrefixSize + cluster.encoded->size();
  grpc::write_prefix(reinterpret_cast<std::uint8_t*>(head.data()),
                     static_cast<std::uint32_t>(total));
  std::vector<h2::Segment> pieces;
  pieces.push_back(h2::Segment::own(std::move(head)));
  if (!cluster.encoded->empty()) pieces.push_back(h2::Segment::shared(cluster.encoded));
  return pieces;
}
}  // namespace

void Dispatcher::add_to(grpc::Server& server) {
  server.add_server_streaming<api::SessionRequest, api::SessionMessage>(
      "/docker.swarmkit.v1.Dispatcher/Session",
      [this](grpc::ServerContext& ctx, const api::SessionRequest& req,
             grpc::Writer<api::SessionMessage>& w) { return session(ctx, req, w); });

  server.add_unary<api::HeartbeatRequest, api::HeartbeatResponse>(
      "/docker.swarmkit.v1.Dispatcher/Heartbeat",
      [this](grpc::ServerContext& ctx, const api::HeartbeatRequest& req)
          -> asio::awaitable<std::expected<api::HeartbeatResponse, Status>> {
        NodeRecord* rec = nullptr;
        auto id = admit(ctx, req.session_id(), &rec);
        if (!id) co_return std::unexpected(id.error());
        auto period = choose_period();
        rec->last_heartbeat = Clock::now();
        wheel_.arm_after(
            *rec, std::chrono::duration_cast<Clock::duration>(period * config_.grace_multiplier));
        api::HeartbeatResponse resp;
        resp.mutable_period()->set_seconds(period.count() / 1000000000);
        resp.mutable_period()->set_nanos(static_cast<std::int32_t>(period.count() % 1000000000));
        co_return resp;
      });

  server.add_unary<api::UpdateTaskStatusRequest, api::UpdateTaskStatusResponse>(
      "/docker.swarmkit.v1.Dispatcher/UpdateTaskStatus",
      [this](grpc::ServerContext& ctx, const api::UpdateTaskStatusRequest& req)
          -> asio::awaitable<std::expected<api::UpdateTaskStatusResponse, Status>> {
        auto id = admit(ctx, req.session_id());
        if (!id) co_return std::unexpected(id.error());
        std::vector<const api::UpdateTaskStatusRequest::TaskStatusUpdate*> valid;
        bool denied = store_.view([&](const store::ReadTx& tx) {
          for (const auto& u : req.updates()) {
            if (!u.has_status()) {
              log::debug("task status update for {} without a status: skipped", u.task_id());
              continue;
            }
            auto t = tx.task(u.task_id());
            if (!t) continue;  // deleted meanwhile: accepted silently
            if (t->node_id() != id->node_id) return true;
            valid.push_back(&u);
          }
          return false;
        });
        if (denied) {
          co_return std::unexpected(
              Status(StatusCode::permission_denied, "cannot update a task not assigned this node"));
        }
        std::uint64_t gen = flushed_generation_;
        for (const auto* u : valid)
          gen = queue_task_update(u->task_id(), u->status());
        // The reply waits for the flush that applied the updates (docs/behaviour.md §0.5).
        if (!valid.empty() && !co_await wait_flushed(gen, ctx)) {
          if (!running_) co_return api::UpdateTaskStatusResponse{};  // flushed by stop()
          co_return std::unexpected(canceled_status());
        }
        co_return api::UpdateTaskStatusResponse{};
      });

  server.add_unary<api::UpdateVolumeStatusRequest, api::UpdateVolumeStatusResponse>(
      "/docker.swarmkit.v1.Dispatcher/UpdateVolumeStatus",
      [this](grpc::ServerContext& ctx, const api::UpdateVolumeStatusRequest& req)
          -> asio::awaitable<std::expected<api::UpdateVolumeStatusResponse, Status>> {
        auto id = admit(ctx, req.session_id());
        if (!id) co_return std::unexpected(id.error());
        std::uint64_t gen = flushed_generation_;
        for (const auto& u : req.updates()) {
          if (u.unpublished()) gen = queue_volume_unpublish(u.id(), id->node_id);
        }
        if (gen > flushed_generation_ && !co_await wait_flushed(gen, ctx)) {
          if (!running_) co_return api::UpdateVolumeStatusResponse{};
          co_return std::unexpected(canceled_status());
        }
        co_return api::UpdateVolumeStatusResponse{};
      });

  server.add_server_streaming<api::AssignmentsRequest, api::AssignmentsMessage>(
      "/docker.swarmkit.v1.Dispatcher/Assignments",
      [this](grpc::ServerContext& ctx, const api::AssignmentsRequest& req,
             grpc::Writer<api::AssignmentsMessage>& w) { return assignments(ctx, req, w); });

  server.add_server_streaming<api::TasksRequest, api::TasksMessage>(
      "/docker.swarmkit.v1.Dispatcher/Tasks",
      [this](grpc::ServerContext& ctx, const api::TasksRequest& req,
             grpc::Writer<api::TasksMessage>& w) { return tasks(ctx, req, w); });
}

asio::awaitable<Status> Dispatcher::session(grpc::ServerContext& ctx,
                                            const api::SessionRequest& req,
                                            grpc::Writer<api::SessionMessage>& writer) {
  if (!running_) co_return stopped_status();
  auto id = authorize(ctx);
  if (!id) co_return id.error();
  const std::string node_id = id->node_id;
  const std::string ip = host_of(id->remote_addr);
  auto started = Clock::now();

  // Resume the node's current session, or register a new one (docs/behaviour.md §4.3).
  std::string session_id;
  auto mark_ready = [&]() {
    NodeUpdate u;
    api::NodeStatus st;
    st.set_state(api::NodeStatus::READY);
    st.set_addr(ip);
    u.status = std::move(st);
    if (req.has_description()) u.description = req.description();
    remove_down_node(node_id);
    return queue_node_update(node_id, std::move(u));
  };
  if (check_session(node_id, req.session_id())) {
    session_id = req.session_id();
    // Stop while waiting for the flush: the client sees the dispatcher's cancellation.
    if (!co_await wait_flushed(mark_ready(), ctx) || !running_) co_return canceled_status();
  } else {
    if (auto st = check_rate_limit(node_id); !st.is_ok()) co_return st;
    bool exists = store_.view([&](const store::ReadTx& tx) { return tx.node(node_id) != nullptr; });
    if (!exists) {
      if (config_.require_known_nodes) co_return Status(StatusCode::unknown, "node not found");
      // Admission (docs/behaviour.md §0.2): a caller authorized for the cluster gets its node
      // object.
      api::Node n;
      n.set_id(node_id);
      n.mutable_spec()->set_membership(api::NodeSpec::ACCEPTED);
      bool manager = has_role(id->roles, kManagerRole);
      n.mutable_spec()->set_desired_role(manager ? api::MANAGER : api::WORKER);
      n.set_role(manager ? api::MANAGER : api::WORKER);
      // As SwarmKit's CA leaves it after issuing the node's certificate.
      n.mutable_spec()->mutable_annotations();
      n.mutable_certificate()->set_cn(node_id);
      n.mutable_certificate()->set_role(manager ? api::MANAGER : api::WORKER);
      n.mutable_certificate()->mutable_status()->set_state(api::IssuanceStatus::ISSUED);
      n.mutable_status()->set_state(api::NodeStatus::UNKNOWN);
      auto st = store_.update([&](store::WriteTx& tx) {
        if (tx.node(node_id)) return Status::ok();
        return tx.create(std::move(n));
      });
      if (!st.is_ok()) co_return st;
      log::info("node {} admitted (role {})", node_id, manager ? "manager" : "worker");
    }
    if (!co_await wait_flushed(mark_ready(), ctx) || !running_) co_return canceled_status();
    session_id = add_record(node_id).session_id;
  }

  // The node's updates, subscribed together with the snapshot (one synchronous step).
  co::Wakeup wakeup;
  co::Queue<store::Ptr<api::Node>> node_updates(wakeup, config_.watch_buffer);
  QueueWatcher<store::Ptr<api::Node>> node_watcher(node_updates);
  store_.watch(node_watcher, {store::ObjectType::node, node_id, false, true, false});
  store::Ptr<api::Node> node =
      store_.view([&](const store::ReadTx& tx) { return tx.node(node_id); });

  auto rec = check_session(node_id, session_id);
  if (!rec) co_return rec.error();
  // The registration counts its open streams for operators (Control.GetNode).
  ++(*rec)->streams;
  struct StreamMark {
    Dispatcher& d;
    const std::string& node_id;
    const std::string& session_id;
    ~StreamMark() {
      auto it = d.records_.find(node_id);
      if (it != d.records_.end() && it->second->session_id == session_id && it->second->streams)
        --it->second->streams;
    }
  } stream_mark{*this, node_id, session_id};
  const std::shared_ptr<co::Event> disconnect_event = (*rec)->disconnect;
  const std::shared_ptr<co::Event> superseded_event = (*rec)->superseded;
  co::Watch<ClusterSnapshot>::Subscription cluster_updates(cluster_updates_, wakeup);
  ClusterSnapshot cluster = cluster_;
  co::Event::Listener cancelled(ctx.cancelled(), wakeup);
  co::Event::Listener stopped(stopped_, wakeup);
  co::Event::Listener disconnect(*disconnect_event, wakeup);
  co::Event::Listener superseded(*superseded_event, wakeup);
  Counter open(open_sessions_);

  auto send = [&]() {
    return writer.write_framed(encode_session_message(session_id, node.get(), cluster));
  };
  if (!co_await send()) co_return canceled_status();
  log::info("session started node={} session={} peer={}", node_id, session_id, id->remote_addr);
  auto end = [&](const char* reason, Status st) {
    log::info(
        "session ended node={} session={} peer={} reason={} duration={}ms", node_id, session_id,
        id->remote_addr, reason,
        std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - started).count());
    return st;
  };

  for (;;) {
    // Stop and Disconnect come first: Stop also clears the registrations.
    bool must_disconnect = disconnect.ready() || stopped.ready();
    if (!must_disconnect) {
      if (auto r = check_session(node_id, session_id); !r) {
        co_return end(r.error().code() == StatusCode::not_found ? "not-registered" : "superseded",
                      r.error());
      }
      co_await co::select(wakeup, cancelled, node_updates, cluster_updates, disconnect, stopped,
                          superseded);
      must_disconnect = disconnect.ready() || stopped.ready();
    }
    if (cancelled.ready()) co_return end("client-gone", canceled_status());
    if (node_updates.overflowed()) {
      ++stats_.watch_overflows;
      co_return end("fell-behind", fell_behind("node", config_.watch_buffer));
    }
    if (cluster_updates.overflowed()) {
      ++stats_.watch_overflows;
      co_return end("fell-behind", fell_behind("cluster", config_.watch_buffer));
    }
    if (must_disconnect) {
      // One final message with the latest state, then the node is sent away.
      while (!node_updates.empty())
        node = node_updates.pop();
      while (cluster_updates.has_next())
        cluster = cluster_updates.next();
      bool sent = co_await send();
      if (running_) {
        mark_node_not_ready(node_id, api::NodeStatus::DISCONNECTED,
                            "node is currently trying to find new manager");
      }
      if (!sent) co_return end("client-gone", canceled_status());
      co_return end(stopped.ready() ? "dispatcher-stopped" : "disconnected",
                    Status(StatusCode::aborted, "node must disconnect"));
    }
    // One message per event, as SwarmKit sends them.
    while (!node_updates.empty()) {
      node = node_updates.pop();
      if (!co_await send()) co_return end("client-gone", canceled_status());
    }
    while (cluster_updates.has_next()) {
      cluster = cluster_updates.next();
      if (!co_await send()) co_return end("client-gone", canceled_status());
    }
  }
}

asio::awaitable<Status> Dispatcher::assignments(grpc::ServerContext& ctx,
                                                const api::AssignmentsRequest& req,
                                                grpc::Writer<api::AssignmentsMessage>& writer) {
  auto id = admit(ctx, req.session_id());
  if (!id) co_return id.error();
  const std::string node_id = id->node_id;

  co::Wakeup wakeup;
  co::Queue<store::Event> task_events(wakeup, config_.watch_buffer);
  co::Queue<store::Event> volume_events(wakeup, config_.watch_buffer);
  QueueWatcher<store::Event> task_watcher(task_events), volume_watcher(volume_events);
  // Task creations are not watched: a task is created unassigned and assigned by an update.
  store_.watch(task_watcher, {store::ObjectType::task, node_id, false, true, true});
  store_.watch(volume_watcher, {store::ObjectType::volume, node_id, false, true, false});
  AssignmentSet set(node_id);
  store_.view([&](const store::ReadTx& tx) {
    for (const auto& t : tx.tasks_of_node(node_id))
      set.add_or_update_task(tx, t);
    for (const auto& v : tx.volumes()) {
      for (const auto& ps : v->publish_status()) {
        if (ps.node_id() == node_id) {
          set.add_or_update_volume(tx, v);
          break;
        }
      }
    }
    return 0;
  });
  Counter open(open_streams_);
  co::Event::Listener cancelled(ctx.cancelled(), wakeup);
  co::Event::Listener stopped(stopped_, wakeup);
  BatchTimer timer(wakeup);  // an armed entry disarms itself when destroyed

  // Each message is built and encoded in a plain function, so that it (copies of the node's tasks
  // and secrets) is freed before the stream waits: an idle stream holds only its encoding until
  // the write is done.
  std::uint64_t sequence = 0;
  auto send_changes = [&] {
    api::AssignmentsMessage msg;
    if (sequence == 0) {
      msg.set_type(api::AssignmentsMessage::COMPLETE);
    } else {
      msg.set_type(api::AssignmentsMessage::INCREMENTAL);
      msg.set_applies_to(std::to_string(sequence));
    }
    msg.set_results_in(std::to_string(++sequence));
    for (auto& c : set.take_changes())
      *msg.add_changes() = std::move(c);
    return writer.write(msg);
  };
  if (!co_await send_changes()) co_return canceled_status();

  for (;;) {
    if (stopped.ready()) co_return canceled_status();
    if (auto r = check_session(node_id, req.session_id()); !r) co_return r.error();
    std::size_t modifications = 0;
    timer.fired = false;
    for (;;) {
      co_await co::select(wakeup, cancelled, stopped, task_events, volume_events, timer);
      if (cancelled.ready() || stopped.ready()) co_return canceled_status();
      if (task_events.overflowed() || volume_events.overflowed()) {
        ++stats_.watch_overflows;
        co_return fell_behind("assignment", config_.watch_buffer);
      }
      auto modified = [&] {
        ++modifications;
        wheel_.arm_after(
            timer, std::chrono::duration_cast<Clock::duration>(config_.assignment_batch_wait));
      };
      while (modifications < config_.assignment_batch_limit && !task_events.empty()) {
        store::Event e = task_events.pop();
        bool changed = e.kind == store::EventKind::remove
                           ? set.remove_task(e.as<api::Task>())
                           : store_.view([&](const store::ReadTx& tx) {
                               return set.add_or_update_task(tx, e.ptr<api::Task>());
                             });
        if (changed) modified();
      }
      while (modifications < config_.assignment_batch_limit && !volume_events.empty()) {
        store::Event e = volume_events.pop();
        bool changed = store_.view([&](const store::ReadTx& tx) {
          auto v = tx.volume(e.as<api::Volume>().id());
          return v ? set.add_or_update_volume(tx, v) : false;
        });
        if (changed) modified();
      }
      if (modifications >= config_.assignment_batch_limit) break;
      if (timer.fired) {
        if (modifications > 0) break;
        timer.fired = false;
      }
    }
    wheel_.disarm(timer);
    if (!co_await send_changes()) co_return canceled_status();
  }
}

asio::awaitable<Status> Dispatcher::tasks(grpc::ServerContext& ctx, const api::TasksRequest& req,
                                          grpc::Writer<api::TasksMessage>& writer) {
  auto id = admit(ctx, req.session_id());
  if (!id) co_return id.error();
  const std::string node_id = id->node_id;

  co::Wakeup wakeup;
  co::Queue<store::Event> events(wakeup, config_.watch_buffer);
  QueueWatcher<store::Event> watcher(events);
  store_.watch(watcher, {store::ObjectType::task, node_id});
  std::map<std::string, store::Ptr<api::Task>> known;
  store_.view([&](const store::ReadTx& tx) {
    for (auto& t : tx.tasks_of_node(node_id))
      known[t->id()] = t;
    return 0;
  });
  Counter open(open_streams_);
  co::Event::Listener cancelled(ctx.cancelled(), wakeup);
  co::Event::Listener stopped(stopped_, wakeup);
  BatchTimer timer(wakeup);  // an armed entry disarms itself when destroyed

  for (;;) {
    if (stopped.ready()) co_return canceled_status();
    if (auto r = check_session(node_id, req.session_id()); !r) co_return r.error();
    // Built and encoded in a plain function: the copies of the tasks are freed before the wait.
    auto send_tasks = [&] {
      api::TasksMessage msg;
      for (const auto& [tid, t] : known) {
        if (t->status().state() >= api::ASSIGNED) *msg.add_tasks() = *t;
      }
      return writer.write(msg);
    };
    if (!co_await send_tasks()) co_return canceled_status();
    std::size_t modifications = 0;
    timer.fired = false;
    for (;;) {
      co_await co::select(wakeup, cancelled, stopped, events, timer);
      if (cancelled.ready() || stopped.ready()) co_return canceled_status();
      if (events.overflowed()) {
        ++stats_.watch_overflows;
        co_return fell_behind("task", config_.watch_buffer);
      }
      while (modifications < config_.assignment_batch_limit && !events.empty()) {
        store::Event e = events.pop();
        const auto& t = e.as<api::Task>();
        bool counts = true;
        if (e.kind == store::EventKind::remove) {
          known.erase(t.id());
        } else {
          auto it = known.find(t.id());
          if (e.kind == store::EventKind::update && it != known.end() &&
              tasks_stably_equal(*it->second, t) && t.status().state() > api::ASSIGNED) {
            counts = false;
          }
          known[t.id()] = e.ptr<api::Task>();
        }
        if (counts) {
          ++modifications;
          wheel_.arm_after(
              timer, std::chrono::duration_cast<Clock::duration>(config_.assignment_batch_wait));
        }
      }
      if (modifications >= config_.assignment_batch_limit) break;
      if (timer.fired) {
        if (modifications > 0) break;
        timer.fired = false;
      }
    }
    wheel_.disarm(timer);
  }
}

}  // namespace dispatchd::dispatcher
