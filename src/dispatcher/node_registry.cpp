#include "dispatchd/dispatcher/node_registry.hpp"

#include "dispatchd/id.hpp"
#include "dispatchd/log.hpp"

namespace dispatchd::dispatcher {

namespace {

Status session_invalid() {
  return Status(StatusCode::invalid_argument, "session invalid");
}
Status not_registered() {
  return Status(StatusCode::not_found, "node not registered");
}

std::chrono::steady_clock::duration ticks(std::chrono::nanoseconds d) {
  return std::chrono::duration_cast<std::chrono::steady_clock::duration>(d);
}

}  // namespace

struct NodeRegistry::DownNode final : co::TimerWheel::Entry {
  DownNode(NodeRegistry& r, std::string id) : registry(r), node_id(std::move(id)) {}
  NodeRegistry& registry;
  std::string node_id;

 private:
  void on_expire() override {
    NodeRegistry& r = registry;  // *this is destroyed by the erase
    std::string id = node_id;
    r.down_.erase(id);
    r.orphan_tasks(id);
  }
};

NodeRegistry::NodeRegistry(co::TimerWheel& wheel, store::Store& store, StatusBatcher& batcher,
                           const Config& config)
    : wheel_(wheel),
      store_(store),
      batcher_(batcher),
      config_(config),
      period_(config.heartbeat_period) {}

NodeRegistry::~NodeRegistry() {
  for (auto& [id, r] : records_)
    wheel_.disarm(*r);
  for (auto& [id, d] : down_)
    wheel_.disarm(*d);
}

void NodeRegistry::close() {
  closed_ = true;
  for (auto& [id, r] : records_)
    wheel_.disarm(*r);
  records_.clear();
  ++epoch_;
  for (auto& [id, d] : down_)
    wheel_.disarm(*d);
  down_.clear();
}

std::chrono::nanoseconds NodeRegistry::choose_period() {
  auto eps = config_.heartbeat_epsilon.count();
  if (eps <= 0) return period_;
  std::uniform_int_distribution<std::int64_t> d(-eps, eps - 1);
  return period_ + std::chrono::nanoseconds(d(rng_));
}

void NodeRegistry::arm(Registration& r, std::chrono::nanoseconds after) {
  wheel_.arm_after(r, ticks(after));
}

std::expected<NodeRegistry::Registration*, Status> NodeRegistry::check_session(
    const std::string& node_id, const std::string& session_id) {
  auto it = records_.find(node_id);
  if (it == records_.end()) return std::unexpected(not_registered());
  if (session_id.empty() || it->second->session_id != session_id) {
    return std::unexpected(session_invalid());
  }
  return it->second.get();
}

Status NodeRegistry::check_rate_limit(const std::string& node_id) {
  auto it = records_.find(node_id);
  if (it == records_.end()) return Status::ok();
  Registration& r = *it->second;
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

NodeRegistry::Registration& NodeRegistry::register_node(const std::string& node_id) {
  auto fresh = std::make_unique<Registration>(*this, node_id);
  auto it = records_.find(node_id);
  if (it != records_.end()) {
    fresh->attempts = it->second->attempts;
    fresh->registered_at = it->second->registered_at;
    wheel_.disarm(*it->second);
    // The older session ends at once (docs/behaviour.md §0.7).
    it->second->superseded->set();
  }
  if (fresh->registered_at == Clock::time_point{}) fresh->registered_at = Clock::now();
  fresh->session_id = new_id();
  fresh->last_heartbeat = Clock::now();
  arm(*fresh, choose_period() * config_.grace_multiplier);
  Registration& r = *fresh;
  records_[node_id] = std::move(fresh);
  ++epoch_;
  ++stats_.registrations;
  return r;
}

std::chrono::nanoseconds NodeRegistry::heartbeat(Registration& r) {
  auto period = choose_period();
  r.last_heartbeat = Clock::now();
  arm(r, period * config_.grace_multiplier);
  return period;
}

void NodeRegistry::drop(const std::string& node_id) {
  auto it = records_.find(node_id);
  if (it == records_.end()) return;
  wheel_.disarm(*it->second);
  records_.erase(it);
  ++epoch_;
}

bool NodeRegistry::disconnect(const std::string& node_id) {
  auto it = records_.find(node_id);
  if (it == records_.end()) return false;
  wheel_.disarm(*it->second);
  it->second->disconnect->set();
  return true;
}

void NodeRegistry::on_expired(Registration& r) {
  ++stats_.heartbeat_expiries;
  std::string id = r.node_id;
  const char* msg =
      r.unknown ? "heartbeat failure for node in \"unknown\" state" : "heartbeat failure";
  log::info("node {} missed its heartbeats: marking it down", id);
  mark_not_ready(id, api::NodeStatus::DOWN, msg);
}

void NodeRegistry::mark_not_ready(const std::string& node_id, api::NodeStatus::State state,
                                  const std::string& message) {
  if (closed_) {
    log::debug("not marking node {} {}: dispatcher is stopped", node_id,
               api::NodeStatus::State_Name(state));
    return;
  }
  bool exists = store_.view([&](const store::ReadTx& tx) { return tx.node(node_id) != nullptr; });
  if (!exists) {
    // Removed (e.g. by an operator): nothing to mark, but the registration goes.
    log::debug("node {} is gone from the store: dropping its registration", node_id);
    drop(node_id);
    return;
  }
  add_down_node(node_id);
  NodeUpdate u;
  api::NodeStatus st;
  st.set_state(state);
  st.set_message(message);
  u.status = std::move(st);
  batcher_.queue_node_update(node_id, std::move(u));
  if (records_.find(node_id) == records_.end()) {
    log::debug("node {} is not found in local storage", node_id);
  }
  drop(node_id);
}

void NodeRegistry::add_down_node(const std::string& node_id) {
  auto& d = down_[node_id];
  if (!d) d = std::make_unique<DownNode>(*this, node_id);
  wheel_.arm_after(*d, ticks(config_.node_down_period));
}

void NodeRegistry::node_ready(const std::string& node_id) {
  auto it = down_.find(node_id);
  if (it == down_.end()) return;
  wheel_.disarm(*it->second);
  down_.erase(it);
}

void NodeRegistry::orphan_tasks(const std::string& node_id) {
  if (closed_) return;
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

void NodeRegistry::mark_nodes_unknown() {
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
    auto r = std::make_unique<Registration>(*this, id);
    r->unknown = true;
    arm(*r, choose_period() * 2 * config_.grace_multiplier);
    records_[id] = std::move(r);
    ++epoch_;
  }
  if (!unknown.empty())
    log::info("{} known nodes marked unknown until they register", unknown.size());
}

std::optional<SessionView> NodeRegistry::view(const std::string& node_id) const {
  auto it = records_.find(node_id);
  if (it == records_.end()) return std::nullopt;
  const Registration& r = *it->second;
  SessionView v;
  v.session_id = r.session_id;
  v.registered_at = r.registered_at;
  v.last_heartbeat = r.last_heartbeat;
  v.deadline = r.deadline();
  v.streaming = r.streams > 0;
  return v;
}

}  // namespace dispatchd::dispatcher
