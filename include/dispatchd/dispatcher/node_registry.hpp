#pragma once
// The node registry (docs/behaviour.md §3): one registration per node that holds a session —
// its session ID, the registration rate limit, the heartbeat deadline — and the nodes that went
// down (after node_down_period their tasks are orphaned). A node that misses its heartbeats is
// marked DOWN through the status batcher. Sessions find their registration here and listen to
// its Disconnect and superseded signals.

#include <chrono>
#include <cstdint>
#include <expected>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <unordered_map>

#include "dispatchd/co/event.hpp"
#include "dispatchd/co/timer_wheel.hpp"
#include "dispatchd/dispatcher/config.hpp"
#include "dispatchd/dispatcher/status_batcher.hpp"
#include "dispatchd/status.hpp"
#include "dispatchd/store/store.hpp"

namespace dispatchd::dispatcher {

// What the registry knows of a node's agent (operators' view).
struct SessionView {
  std::chrono::steady_clock::time_point registered_at;
  std::chrono::steady_clock::time_point last_heartbeat;  // the registration before the first
  std::chrono::steady_clock::time_point deadline;        // DOWN without a heartbeat by then
  std::string session_id;
  bool streaming = false;  // a Session stream is open
};

struct RegistryStats {
  std::uint64_t heartbeat_expiries = 0;
  std::uint64_t registrations = 0;
  std::uint64_t rate_limited = 0;
};

class NodeRegistry {
 public:
  using Clock = std::chrono::steady_clock;

  struct Registration;

  NodeRegistry(co::TimerWheel& wheel, store::Store& store, StatusBatcher& batcher,
               const Config& config);
  NodeRegistry(const NodeRegistry&) = delete;
  NodeRegistry& operator=(const NodeRegistry&) = delete;
  ~NodeRegistry();

  // The node's registration if `session_id` is its current session: NOT_FOUND "node not
  // registered", INVALID_ARGUMENT "session invalid".
  std::expected<Registration*, Status> check_session(const std::string& node_id,
                                                     const std::string& session_id);
  // Counts a registration attempt; UNAVAILABLE past rate_limit_count within rate_limit_period.
  Status check_rate_limit(const std::string& node_id);
  // A new registration with a fresh session ID; an older one of the node is superseded.
  Registration& register_node(const std::string& node_id);
  // Takes a heartbeat: the deadline moves to period × grace; returns the period to hand out.
  std::chrono::nanoseconds heartbeat(Registration& r);
  // Raises the node's Disconnect signal; false if it has no registration.
  bool disconnect(const std::string& node_id);
  // Marks the node `state` (DOWN, DISCONNECTED) through the batcher, starts its down timer and
  // drops its registration.
  void mark_not_ready(const std::string& node_id, api::NodeStatus::State state,
                      const std::string& message);
  // The node is up again: its down timer stops.
  void node_ready(const std::string& node_id);

  // At start: nodes in the store get UNKNOWN and a registration without a session that expires
  // after twice the usual grace; DOWN ones start their down timer.
  void mark_nodes_unknown();
  // Drops every registration and down timer; nothing is marked from then on.
  void close();

  std::optional<SessionView> view(const std::string& node_id) const;
  std::size_t registered() const noexcept { return records_.size(); }
  // Changes whenever a registration is added, replaced or dropped: a session that saw its
  // registration at one value still has it while the value stands, without a lookup (a fan-out
  // to 100k sessions spent an eighth of its time in those lookups).
  std::uint64_t epoch() const noexcept { return epoch_; }
  std::size_t down() const noexcept { return down_.size(); }
  const RegistryStats& stats() const noexcept { return stats_; }

  // The heartbeat period (the cluster's; it may change at run time); each agent gets it ± epsilon.
  std::chrono::nanoseconds period() const noexcept { return period_; }
  void set_period(std::chrono::nanoseconds p) noexcept { period_ = p; }

 private:
  struct DownNode;

  std::chrono::nanoseconds choose_period();
  void arm(Registration& r, std::chrono::nanoseconds after);
  void on_expired(Registration& r);
  void drop(const std::string& node_id);
  void add_down_node(const std::string& node_id);
  void orphan_tasks(const std::string& node_id);

  co::TimerWheel& wheel_;
  store::Store& store_;
  StatusBatcher& batcher_;
  const Config& config_;
  std::chrono::nanoseconds period_;
  bool closed_ = false;
  std::uint64_t epoch_ = 0;
  std::unordered_map<std::string, std::unique_ptr<Registration>> records_;
  std::unordered_map<std::string, std::unique_ptr<DownNode>> down_;
  RegistryStats stats_;
  std::mt19937_64 rng_{std::random_device{}()};
};

struct NodeRegistry::Registration final : co::TimerWheel::Entry {
  Registration(NodeRegistry& r, std::string id) : registry(r), node_id(std::move(id)) {}
  NodeRegistry& registry;
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
  void on_expire() override { registry.on_expired(*this); }
};

}  // namespace dispatchd::dispatcher
