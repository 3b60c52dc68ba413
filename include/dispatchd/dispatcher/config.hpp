#pragma once

#include <chrono>
#include <cstddef>
#include <string>

namespace dispatchd::dispatcher {

// Timings and limits; defaults are SwarmKit's (docs/behaviour.md §10).
struct Config {
  std::chrono::nanoseconds heartbeat_period = std::chrono::seconds(5);
  std::chrono::nanoseconds heartbeat_epsilon = std::chrono::milliseconds(500);
  int grace_multiplier = 3;
  std::chrono::nanoseconds rate_limit_period = std::chrono::seconds(8);
  int rate_limit_count = 3;
  // Group commit (docs/behaviour.md §0.5): pending updates flush as soon as the previous flush is
  // done; the interval is only an upper bound, the item count the most one store transaction
  // applies.
  std::chrono::nanoseconds batch_interval = std::chrono::milliseconds(100);
  std::size_t batch_max_items = 10000;
  // Assignments/Tasks batching (docs/behaviour.md §8.1).
  std::chrono::nanoseconds assignment_batch_wait = std::chrono::milliseconds(100);
  std::size_t assignment_batch_limit = 100;
  std::chrono::nanoseconds node_down_period = std::chrono::hours(24);
  bool require_known_nodes = false;
  // Events one subscriber may have waiting before it is cut off (docs/behaviour.md §0.3).
  std::size_t watch_buffer = 1024;
  // The manager list this dispatcher hands to agents (docs/behaviour.md §0.1).
  std::string manager_node_id = "manager-1";
  std::string manager_addr = "127.0.0.1:4242";
  // The cluster organisation (insecure mode: --cluster-id; TLS: the server certificate's O).
  std::string cluster_id = "dispatchd";
  // PEM of the cluster root CA(s): SessionMessage.RootCA (docs/behaviour.md §0.9).
  std::string root_ca_pem;
};

}  // namespace dispatchd::dispatcher
