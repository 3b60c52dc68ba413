#pragma once
// The docker.swarmkit.v1.Dispatcher service (docs/behaviour.md §2–§8, with the
// differences of §0).

#include <chrono>
#include <cstdint>
#include <expected>
#include <memory>
#include <random>
#include <string>
#include <unordered_map>
#include <vector>

#include "dispatchd/co/event.hpp"
#include "dispatchd/co/intrusive_list.hpp"
#include "dispatchd/co/timer_wheel.hpp"
#include "dispatchd/co/wakeup.hpp"
#include "dispatchd/co/watch.hpp"
#include "dispatchd/dispatcher/config.hpp"
#include "dispatchd/grpc/server.hpp"
#include "dispatchd/grpc/status.hpp"
#include "dispatchd/store/store.hpp"
#include "dispatcher.pb.h"

namespace dispatchd::dispatcher {

namespace api = ::docker::swarmkit::v1;

// Who is calling, after authorization.
struct Identity {
  std::string node_id;
  std::vector<std::string> roles;
  std::string org;
  std::string remote_addr;  // "ip:port" (forwarded calls: the original agent's)
};

// The fields of SessionMessage that every session shares (managers, keys, root CA), encoded once
// per change and sent by reference.
struct ClusterSnapshot {
  std::shared_ptr<const std::string> encoded;  // fields 3, 4 and 5, serialized
};

// What the dispatcher knows of a registered node's agent (operators' view).
struct SessionView {
  std::string session_id;
  std::chrono::steady_clock::time_point registered_at;
  std::chrono::steady_clock::time_point last_heartbeat;  // the registration before the first
  std::chrono::steady_clock::time_point deadline;        // DOWN without a heartbeat by then
  bool streaming = false;                                // a Session stream is open
};

inline const std::string kWorkerRole = "swarm-worker";
inline const std::string kManagerRole = "swarm-manager";

struct DispatcherStats {
  std::uint64_t flushes = 0;
  std::uint64_t flushed_task_updates = 0;
  std::uint64_t flushed_node_updates = 0;
  std::uint64_t heartbeat_expiries = 0;
  std::uint64_t watch_overflows = 0;
  std::uint64_t registrations = 0;
  std::uint64_t rate_limited = 0;
};

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
  bool disconnect_node(const std::string& node_id);

  // The caller's identity (docs/behaviour.md §9.2, §9.3) if it holds one of `roles`; forwarded
  // identities (forwarded_cert metadata from a manager) only where `allow_forwarded`.
  std::expected<Identity, grpc::Status> authorize(const grpc::ServerContext& ctx,
                                                  const std::vector<std::string>& roles,
                                                  bool allow_forwarded) const;
  std::optional<SessionView> session_view(const std::string& node_id) const;

  void set_manager_addr(std::string addr);
  const Config& config() const noexcept { return config_; }
  std::size_t open_sessions() const noexcept { return open_sessions_; }
  std::size_t open_streams() const noexcept { return open_streams_; }
  std::size_t registered_nodes() const noexcept { return records_.size(); }
  std::size_t down_nodes() const noexcept { return down_.size(); }
  std::size_t pending_updates() const noexcept;
  std::size_t cluster_watchers() const noexcept { return cluster_updates_.subscriber_count(); }
  const DispatcherStats& stats() const noexcept { return stats_; }
  std::chrono::nanoseconds heartbeat_period() const noexcept { return period_; }

 private:
  struct NodeRecord;
  struct DownNode;
  struct NodeUpdate {
    std::optional<api::NodeStatus> status;
    std::optional<api::NodeDescription> description;
  };
  struct FlushWaiter : co::ListHook {
    std::uint64_t generation = 0;
    co::Wakeup* wakeup = nullptr;
  };
  class GlobalWatcher;

  // Calls
  asio::awaitable<grpc::Status> session(grpc::ServerContext& ctx, const api::SessionRequest& req,
                                        grpc::Writer<api::SessionMessage>& writer);
  asio::awaitable<grpc::Status> assignments(grpc::ServerContext& ctx,
                                            const api::AssignmentsRequest& req,
                                            grpc::Writer<api::AssignmentsMessage>& writer);
  asio::awaitable<grpc::Status> tasks(grpc::ServerContext& ctx, const api::TasksRequest& req,
                                      grpc::Writer<api::TasksMessage>& writer);

  // Authorization (docs/behaviour.md §9.2, §9.3): workers and managers, forwarding allowed.
  std::expected<Identity, grpc::Status> authorize(const grpc::ServerContext& ctx) const;
  // What every call but Session does first: running, authorized, and the node's current session.
  std::expected<Identity, grpc::Status> admit(const grpc::ServerContext& ctx,
                                              const std::string& session_id,
                                              NodeRecord** record = nullptr);

  // Registered nodes (docs/behaviour.md §3).
  std::expected<NodeRecord*, grpc::Status> check_session(const std::string& node_id,
                                                         const std::string& session_id);
  grpc::Status check_rate_limit(const std::string& node_id);
  NodeRecord& add_record(const std::string& node_id);
  void delete_record(const std::string& node_id);
  std::chrono::nanoseconds choose_period();
  void on_heartbeat_expired(NodeRecord& r);
  void mark_node_not_ready(const std::string& node_id, api::NodeStatus::State state,
                           const std::string& message);
  void add_down_node(const std::string& node_id);
  void remove_down_node(const std::string& node_id);
  void orphan_tasks(const std::string& node_id);
  void mark_nodes_unknown();

  // Write batching (docs/behaviour.md §2.1, §0.5).
  std::uint64_t queue_node_update(const std::string& node_id, NodeUpdate u);
  std::uint64_t queue_task_update(const std::string& task_id, const api::TaskStatus& status);
  std::uint64_t queue_volume_unpublish(const std::string& volume_id, const std::string& node_id);
  void schedule_flush();
  void flush();
  asio::awaitable<bool> wait_flushed(std::uint64_t generation, grpc::ServerContext& ctx);

  // Cluster-wide SessionMessage fields.
  void rebuild_cluster_snapshot();
  void on_cluster_changed(const store::Event& e);
  void on_node_removed(const std::string& node_id);

  co::TimerWheel& wheel_;
  store::Store& store_;
  Config config_;
  std::chrono::nanoseconds period_;
  bool running_ = false;
  bool started_ = false;
  co::Event stopped_;
  std::unordered_map<std::string, std::unique_ptr<NodeRecord>> records_;
  std::unordered_map<std::string, std::unique_ptr<DownNode>> down_;

  std::unordered_map<std::string, api::TaskStatus> pending_tasks_;
  std::unordered_map<std::string, NodeUpdate> pending_nodes_;
  std::unordered_map<std::string, std::vector<std::string>> pending_volumes_;
  std::uint64_t flushed_generation_ = 0;
  bool flush_posted_ = false;
  co::IntrusiveList<FlushWaiter> flush_waiters_;

  ClusterSnapshot cluster_;
  co::Watch<ClusterSnapshot> cluster_updates_;
  std::unique_ptr<GlobalWatcher> cluster_watcher_, managers_watcher_, node_remove_watcher_;

  std::size_t open_sessions_ = 0;
  std::size_t open_streams_ = 0;
  DispatcherStats stats_;
  std::mt19937_64 rng_{std::random_device{}()};
};

}  // namespace dispatchd::dispatcher
