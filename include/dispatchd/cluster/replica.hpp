#pragma once
// A follower's warm copy of the leader's store (issue 16). Start from load(): restore its
// snapshot into the Store, then run a Replica from the revision it was read at. The Replica
// watches the prefix from the next revision and applies each etcd revision's changes to the
// Store as one store transaction that publishes its events (Store::apply_remote), with the
// objects exactly as the leader wrote them. So the store's view-then-watch contract holds on a
// follower: a stream that reads then watches sees every later change once.
//
// `P index` updates move the store's index. A leader's write cut into several transactions
// (etcd_store.hpp) is published whole: the changes of a revision that does not write `P index`
// are held, merged per key, and published with the next revision that does. Keys under the
// prefix that are not store objects (`P leader`, `P managers/...`, `P partial`) only move
// revision(). When a manager wins the election it first
// waits (wait_revision) until its replica has applied everything up to the revision it won at,
// then becomes the leader on that state.

#include <asio/awaitable.hpp>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "dispatchd/cluster/etcd_store.hpp"
#include "dispatchd/co/intrusive_list.hpp"
#include "dispatchd/co/timer_wheel.hpp"
#include "dispatchd/co/wakeup.hpp"
#include "dispatchd/etcd/client.hpp"
#include "dispatchd/store/store.hpp"

namespace dispatchd::cluster {

struct ReplicaOptions {
  // A watch stream that fails (connection lost) is opened again from the next revision, with
  // backoff, until it has failed for this long.
  std::chrono::milliseconds retry_deadline{5000};
  std::chrono::milliseconds backoff_min{50};
  std::chrono::milliseconds backoff_max{1000};
};

struct ReplicaStats {
  std::uint64_t revisions = 0;  // etcd revisions applied
  std::uint64_t changes = 0;    // store changes applied
  std::uint64_t rewatches = 0;  // watch streams opened again after a failure
  std::uint64_t held = 0;       // revisions after which changes waited for a later `P index`
};

class Replica {
 public:
  // `store` was restored from load() at `revision`; nothing else writes it.
  Replica(etcd::Client& client, store::Store& store, std::string prefix, std::int64_t revision,
          ReplicaOptions options = {});
  Replica(const Replica&) = delete;
  Replica& operator=(const Replica&) = delete;
  ~Replica();

  // Follows the prefix until stop() (OK) or an error: OUT_OF_RANGE when etcd compacted the
  // revisions still needed (load again), DATA_LOSS for a value that does not decode (the key
  // is named), UNAVAILABLE when the watch could not be kept for retry_deadline.
  asio::awaitable<Status> run();
  void stop();

  // The last etcd revision applied.
  std::int64_t revision() const noexcept { return revision_; }
  // Until revision() >= `revision`: OK; DEADLINE_EXCEEDED at `deadline`; run()'s error if it
  // ended with one, CANCELLED if it was stopped. `revision` must be one of a change under the
  // prefix (the leader key's is).
  asio::awaitable<Status> wait_revision(std::int64_t revision, etcd::Clock::time_point deadline);

  const ReplicaStats& stats() const noexcept { return stats_; }
  // The objects changed by revisions still held: the parts of an unfinished write. After the
  // replica stopped, a new leader writes them back (EtcdJournal::rewrite).
  std::vector<ObjectName> unfinished() const;

 private:
  struct Waiter : co::ListHook {
    co::Wakeup* wakeup = nullptr;
  };
  asio::awaitable<Status> follow();
  Status apply(const etcd::pb::WatchResponse& r);
  void advance(std::int64_t revision);
  asio::awaitable<void> pause_until(etcd::Clock::time_point t);

  etcd::Client& client_;
  store::Store& store_;
  const std::string prefix_;
  const ReplicaOptions options_;
  std::int64_t revision_;
  bool stopping_ = false;
  std::optional<Status> ended_;
  std::unique_ptr<etcd::Watcher> watcher_;
  ReplicaStats stats_;
  co::IntrusiveList<Waiter> waiters_;
  // Held changes in first-seen order, and each etcd key's place among them.
  std::vector<store::RemoteChange> held_;
  std::unordered_map<std::string, std::size_t> held_at_;
  co::Wakeup wakeup_;
  co::TimerCallback<std::function<void()>> timer_;
};

}  // namespace dispatchd::cluster
