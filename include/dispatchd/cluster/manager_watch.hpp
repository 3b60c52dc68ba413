#pragma once
// The live manager list and the current leader, from etcd (issue 16).
//
// Both come from the keys `P leader` and `P managers/<node_id>` (manager_keys.hpp), which sort
// next to each other: ManagerWatch ranges over them, then watches the same range from the
// range's revision + 1, and keeps a Membership — the managers as a store::ManagerList sorted by
// node ID, and the leader with its advertised address. A manager joining, leaving (its lease
// revoked) or dying (its lease expired) and a leader change are each reported once, through the
// on_change callback and to wait_change(). When the watch fails (an etcd member down: the client
// moves to another endpoint) or its history was compacted, it ranges again and re-watches,
// reporting only if the state differs from what it last reported.

#include <asio/awaitable.hpp>
#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>

#include "dispatchd/cluster/manager_keys.hpp"
#include "dispatchd/co/event.hpp"
#include "dispatchd/etcd/client.hpp"
#include "dispatchd/status.hpp"
#include "dispatchd/store/store.hpp"

namespace dispatchd::cluster {

struct LeaderInfo {
  // Empty: no manager leads now.
  std::string node_id;
  // The leader's advertised address from its `P managers/` key; empty when that key is absent.
  std::string addr;
  // The leader key's create_revision (the leader's fence).
  std::int64_t create_revision = 0;

  bool operator==(const LeaderInfo&) const = default;
};

struct Membership {
  store::ManagerList managers;  // sorted by peer.node_id
  LeaderInfo leader;
  // The etcd revision this state is as of.
  std::int64_t revision = 0;
};

// One read of the manager list and the leader at one revision ("who leads now?").
asio::awaitable<etcd::Result<Membership>> read_membership(etcd::Client& client,
                                                          std::string_view prefix);

struct ManagerWatchOptions {
  std::string prefix{kDefaultPrefix};
  // Called on the io thread after every change of the managers or the leader (and once with the
  // first state read); current() already shows it.
  std::function<void(const Membership&)> on_change;
  // Pause before reading again after a failed etcd call.
  std::chrono::milliseconds retry{200};
};

class ManagerWatch {
 public:
  ManagerWatch(etcd::Client& client, ManagerWatchOptions options = {});
  ManagerWatch(const ManagerWatch&) = delete;
  ManagerWatch& operator=(const ManagerWatch&) = delete;
  ~ManagerWatch();

  // Runs until stop(): OK.
  asio::awaitable<Status> run();
  void stop();

  // The first state has been read.
  bool ready() const noexcept { return changes_ > 0; }
  const Membership& current() const noexcept { return current_; }
  // States reported so far (the first read counts).
  std::uint64_t changes() const noexcept { return changes_; }
  // Reads of the whole state after the first: after a failed watch or a compaction.
  std::uint64_t resyncs() const noexcept { return resyncs_; }

  // Returns true once changes() > seen; false when `cancel` is set or the watch stops first.
  asio::awaitable<bool> wait_change(std::uint64_t seen, co::Event* cancel = nullptr);

 private:
  bool relevant(const std::string& key) const;
  Membership build(std::int64_t revision) const;
  void report_if_changed(std::int64_t revision);

  etcd::Client& client_;
  ManagerWatchOptions options_;
  std::string leader_key_, managers_prefix_, range_end_;
  // The leader and manager keys as of current_.revision.
  std::map<std::string, mvccpb::KeyValue> kvs_;
  Membership current_;
  std::uint64_t changes_ = 0;
  std::uint64_t resyncs_ = 0;
  co::Event stop_;
  // Set (and replaced) at each change; waiters hold the one they wait on.
  std::shared_ptr<co::Event> changed_ = std::make_shared<co::Event>();
};

}  // namespace dispatchd::cluster
