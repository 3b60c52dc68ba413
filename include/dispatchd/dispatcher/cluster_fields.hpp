#pragma once
// The SessionMessage fields every session shares — the manager list, the network bootstrap keys,
// the root CA — encoded once per change of the store and handed to every session by reference
// (docs/behaviour.md §4.4). It also follows the cluster's heartbeat period.

#include <chrono>
#include <functional>
#include <memory>
#include <string>

#include "dispatchd/co/watch.hpp"
#include "dispatchd/store/store.hpp"

namespace dispatchd::dispatcher {

// SessionMessage fields 3, 4 and 5 (managers, network_bootstrap_keys, RootCA), serialized.
struct ClusterSnapshot {
  std::shared_ptr<const std::string> encoded;
};

class ClusterFields {
 public:
  // `on_period`: called with the cluster's heartbeat period at start() and whenever it changes.
  ClusterFields(store::Store& store, std::size_t watch_buffer,
                std::function<void(std::chrono::nanoseconds)> on_period);
  ClusterFields(const ClusterFields&) = delete;
  ClusterFields& operator=(const ClusterFields&) = delete;
  ~ClusterFields();

  // Encodes the fields and follows the store's cluster object and manager list.
  void start();
  // Stops following; subscriptions see the end of the watch.
  void stop();

  const ClusterSnapshot& current() const noexcept { return current_; }
  co::Watch<ClusterSnapshot>& updates() noexcept { return updates_; }
  const co::Watch<ClusterSnapshot>& updates() const noexcept { return updates_; }

 private:
  class Follower;
  void rebuild();
  void on_changed(const store::Event& e);

  store::Store& store_;
  std::function<void(std::chrono::nanoseconds)> on_period_;
  std::chrono::nanoseconds period_{0};
  ClusterSnapshot current_;
  co::Watch<ClusterSnapshot> updates_;
  std::unique_ptr<Follower> cluster_follower_, managers_follower_;
};

}  // namespace dispatchd::dispatcher
