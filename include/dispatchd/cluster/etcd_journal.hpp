#pragma once
// The leader's store journal on etcd (issue 16): every store commit goes to etcd before it is
// acknowledged (Store::wait_durable), like the write-ahead log does to disk.
//
// append() runs on the io thread inside the commit and never blocks: it encodes the changed
// objects and merges them into the queued batch. One writer coroutine, run(), sends one etcd
// transaction at a time (transactions in flight together on one connection may apply in any
// order); whatever is committed meanwhile joins the next batch (group commit). Within a batch the
// last write of a key wins and a removal after a put deletes (etcd refuses a key twice in one
// transaction), and `P index` is the newest index in it. A batch above the TxnLimits is cut into
// several transactions with `P partial` from the first to the last (etcd_store.hpp); only the
// last writes `P index`, and Store::mark_durable follows it.
//
// Every transaction compares the leader key's create_revision (the Fence). When that fails this
// manager is no longer the leader: Store::journal_failed(ABORTED "no longer the leader") and
// run() returns that status. etcd errors (unavailable, timeouts) retry the same transaction with
// backoff until `retry_deadline` has passed since the first failure, then fail UNAVAILABLE.

#include <asio/awaitable.hpp>
#include <chrono>
#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <unordered_map>
#include <vector>

#include "dispatchd/cluster/etcd_store.hpp"
#include "dispatchd/cluster/fence.hpp"
#include "dispatchd/co/timer_wheel.hpp"
#include "dispatchd/co/wakeup.hpp"
#include "dispatchd/etcd/client.hpp"
#include "dispatchd/store/store.hpp"

namespace dispatchd::cluster {

struct EtcdJournalOptions {
  TxnLimits limits;
  // How long etcd may fail one transaction before the journal gives up (about a lease TTL: by
  // then the leadership is lost anyway).
  std::chrono::milliseconds retry_deadline{5000};
  std::chrono::milliseconds backoff_min{50};
  std::chrono::milliseconds backoff_max{1000};
};

struct EtcdJournalStats {
  std::uint64_t commits = 0;   // appended
  std::uint64_t batches = 0;   // written (mark_durable once each)
  std::uint64_t txns = 0;      // successful transactions
  std::uint64_t ops = 0;       // operations in them (`P index` included)
  std::uint64_t bytes = 0;     // keys plus values in them
  std::uint64_t failures = 0;  // failed transaction attempts (retried or not)
  double wait_seconds = 0;     // spent waiting for etcd, summed over attempts
};

class EtcdJournal final : public store::Journal {
 public:
  EtcdJournal(etcd::Client& client, store::Store& store, std::string prefix, Fence fence,
              EtcdJournalOptions options = {});
  EtcdJournal(const EtcdJournal&) = delete;
  EtcdJournal& operator=(const EtcdJournal&) = delete;
  ~EtcdJournal() override;

  void append(std::uint64_t prev, std::uint64_t index,
              std::span<const store::Change> changes) override;

  // Queues the store's current state of `objects` (a removal for those it does not hold) for the
  // next batch: a new leader's repair of a write its predecessor left unfinished in etcd
  // (Replica::unfinished()). The batch writes `P index` = the store's index, which etcd already
  // holds, and clears `P partial`.
  void rewrite(std::span<const ObjectName> objects);

  // The writer: until stop() and everything queued is written (OK), or until a batch fails (the
  // store's waits fail with the same status): ABORTED when fenced off, UNAVAILABLE when etcd did
  // not answer within the retry deadline, etcd's own error when it refused the transaction.
  asio::awaitable<Status> run();
  // run() writes what is queued, then returns.
  void stop();

  const EtcdJournalStats& stats() const noexcept { return stats_; }
  // Keys waiting for the next batch.
  std::size_t queued_keys() const noexcept { return queued_.size(); }
  // The failure that ended the writer, if any.
  const std::optional<Status>& failure() const noexcept { return failure_; }

 private:
  struct Batch {
    std::vector<KeyWrite> writes;
    std::uint64_t index = 0;
  };
  asio::awaitable<Status> write_batch(Batch b);
  asio::awaitable<Status> write_txn(std::vector<KeyWrite> writes);
  void queue(KeyWrite w);
  asio::awaitable<void> pause_until(etcd::Clock::time_point t);
  void fail(Status why);

  etcd::Client& client_;
  store::Store& store_;
  const std::string prefix_;
  const Fence fence_;
  const EtcdJournalOptions options_;
  // The next batch: writes in first-seen order, a key's position in it, the newest index.
  std::vector<KeyWrite> queued_;
  std::unordered_map<std::string, std::size_t> queued_at_;
  std::uint64_t queued_index_ = 0;
  bool has_queued_ = false;
  bool stopping_ = false;
  bool ended_ = false;
  std::optional<Status> failure_;
  EtcdJournalStats stats_;
  co::Wakeup wakeup_;
  co::TimerCallback<std::function<void()>> timer_;
};

}  // namespace dispatchd::cluster
