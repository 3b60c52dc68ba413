#pragma once
// The docker.swarmkit.v1.Dispatcher service (docs/behaviour.md §2–§8, with the
// differences of §0).

#include <chrono>
#include <cstdint>
#include <expected>
#include <memory>
#include <optional>
#include <string>

#include "dispatchd/auth/authorizer.hpp"
#include "dispatchd/co/event.hpp"
#include "dispatchd/co/timer_wheel.hpp"
#include "dispatchd/dispatcher/cluster_fields.hpp"
#include "dispatchd/dispatcher/config.hpp"
#include "dispatchd/dispatcher/node_registry.hpp"
#include "dispatchd/dispatcher/services.hpp"
#include "dispatchd/dispatcher/status_batcher.hpp"
#include "dispatchd/grpc/server.hpp"
#include "dispatchd/store/store.hpp"
#include "dispatcher.pb.h"

namespace dispatchd::dispatcher {

namespace api = ::docker::swarmkit::v1;

struct DispatcherStats {
  std::uint64_t flushes = 0;
  std::uint64_t flushed_task_updates = 0;
  std::uint64_t flushed_node_updates = 0;
  std::uint64_t heartbeat_expiries = 0;
  std::uint64_t watch_overflows = 0;
  std::uint64_t registrations = 0;
  std::uint64_t rate_limited = 0;
};

// The Dispatcher owns its collaborators — the authorizer, the status batcher, the node registry,
// the cluster's shared fields — wires the calls to them, and runs their lifecycle. The calls
// themselves (the Session stream, the Assignments and Tasks streams, the unary calls) are written
// against those collaborators (services.hpp), never against this class.
class Dispatcher {
 public:
  Dispatcher(co::TimerWheel& wheel, store::Store& store, Config config);
  Dispatcher(const Dispatcher&) = delete;
  Dispatcher& operator=(const Dispatcher&) = delete;
  ~Dispatcher();

  void add_to(grpc::Server& server);
  // Marks existing nodes UNKNOWN (DOWN ones start their orphan timer) and starts serving.
  void start();
  // Every open Session gets its final message and ABORTED; pending writes are flushed; later
  // calls get ABORTED "dispatcher is stopped".
  void stop();
  bool running() const noexcept { return running_; }

  // Raises the node's Disconnect signal (docs/behaviour.md §0.6): its Session sends a final
  // message, marks the node DISCONNECTED and ends with ABORTED. False if the node has no
  // registration.
  bool disconnect_node(const std::string& node_id) { return registry_.disconnect(node_id); }

  const auth::Authorizer& authorizer() const noexcept { return authorizer_; }
  std::optional<SessionView> session_view(const std::string& node_id) const {
    return registry_.view(node_id);
  }

  void set_manager_addr(std::string addr);
  const Config& config() const noexcept { return config_; }
  std::size_t open_sessions() const noexcept { return counters_.open_sessions; }
  std::size_t open_streams() const noexcept { return counters_.open_streams; }
  std::size_t registered_nodes() const noexcept { return registry_.registered(); }
  std::size_t down_nodes() const noexcept { return registry_.down(); }
  std::size_t pending_updates() const noexcept { return batcher_.pending(); }
  std::size_t cluster_watchers() const noexcept { return cluster_.updates().subscriber_count(); }
  DispatcherStats stats() const noexcept;
  std::chrono::nanoseconds heartbeat_period() const noexcept { return registry_.period(); }

 private:
  class RemovedNodes;

  void ensure_cluster_defaults();

  co::TimerWheel& wheel_;
  store::Store& store_;
  Config config_;
  bool running_ = false;
  bool started_ = false;
  co::Event stopped_;
  auth::Authorizer authorizer_;
  StatusBatcher batcher_;
  NodeRegistry registry_;
  ClusterFields cluster_;
  StreamCounters counters_;
  Services services_;
  std::unique_ptr<RemovedNodes> removed_nodes_;
};

}  // namespace dispatchd::dispatcher
