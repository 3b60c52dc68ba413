#pragma once
// The status batcher (docs/behaviour.md §2.1, §0.5): task, node and volume status changes that
// agents report are queued and written to the store together — group commit: a flush is posted as
// soon as something is queued, and everything queued before it runs goes into it, at most
// `max_items` changes per store transaction. A caller that must not answer before its change is
// stored waits for the flush generation its change went into.

#include <asio/awaitable.hpp>
#include <asio/io_context.hpp>
#include <cstdint>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "dispatchd/co/intrusive_list.hpp"
#include "dispatchd/co/wakeup.hpp"
#include "dispatchd/store/store.hpp"
#include "dispatcher.pb.h"

namespace dispatchd::grpc {
class ServerContext;
}

namespace dispatchd::dispatcher {

namespace api = ::docker::swarmkit::v1;

struct NodeUpdate {
  std::optional<api::NodeStatus> status;
  std::optional<api::NodeDescription> description;
};

struct BatcherStats {
  std::uint64_t flushes = 0;
  std::uint64_t flushed_task_updates = 0;
  std::uint64_t flushed_node_updates = 0;
};

class StatusBatcher {
 public:
  // `applied_by`: this manager's node ID, stamped on every task status it applies.
  StatusBatcher(asio::io_context& io, store::Store& store, std::string applied_by,
                std::size_t max_items);
  StatusBatcher(const StatusBatcher&) = delete;
  StatusBatcher& operator=(const StatusBatcher&) = delete;

  // Each returns the flush generation that will contain the change.
  std::uint64_t queue_node_update(const std::string& node_id, NodeUpdate u);
  std::uint64_t queue_task_update(const std::string& task_id, const api::TaskStatus& status);
  std::uint64_t queue_volume_unpublish(const std::string& volume_id, const std::string& node_id);

  // The generation of the latest flush done.
  std::uint64_t flushed() const noexcept { return flushed_generation_; }
  // Until `generation` is flushed: true; false if the call was cancelled or the batcher closed
  // first (close() flushes, so a change queued before it is stored all the same).
  asio::awaitable<bool> wait_flushed(std::uint64_t generation, grpc::ServerContext& ctx);

  // Writes everything queued now.
  void flush();
  // Flushes, wakes every waiter, and ends the waits still to come.
  void close();
  bool closed() const noexcept { return closed_; }

  std::size_t pending() const noexcept;
  const BatcherStats& stats() const noexcept { return stats_; }

 private:
  struct Waiter : co::ListHook {
    std::uint64_t generation = 0;
    co::Wakeup* wakeup = nullptr;
  };

  void schedule_flush();

  asio::io_context& io_;
  store::Store& store_;
  std::string applied_by_;
  std::size_t max_items_;
  bool closed_ = false;
  std::unordered_map<std::string, api::TaskStatus> pending_tasks_;
  std::unordered_map<std::string, NodeUpdate> pending_nodes_;
  std::unordered_map<std::string, std::vector<std::string>> pending_volumes_;
  std::uint64_t flushed_generation_ = 0;
  bool flush_posted_ = false;
  co::IntrusiveList<Waiter> waiters_;
  BatcherStats stats_;
};

}  // namespace dispatchd::dispatcher
