// The leader's journal on etcd: group commit, one transaction in flight, fenced.

#include "dispatchd/cluster/etcd_journal.hpp"

#include <algorithm>
#include <utility>

#include "dispatchd/cluster/manager_keys.hpp"
#include "dispatchd/log.hpp"

namespace dispatchd::cluster {

namespace {

namespace pb = etcd::pb;
using Clock = etcd::Clock;

// Errors worth trying again: etcd or the connection may come back (a leader change inside etcd
// is UNAVAILABLE, "too many requests" RESOURCE_EXHAUSTED). Anything else is a refusal that the
// same transaction would meet again.
bool write_may_succeed_later(StatusCode c) {
  switch (c) {
    case StatusCode::unavailable:
    case StatusCode::deadline_exceeded:
    case StatusCode::resource_exhausted:
    case StatusCode::unknown:
    case StatusCode::internal:
    case StatusCode::cancelled:
      return true;
    default:
      return false;
  }
}

double seconds_since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

}  // namespace

EtcdJournal::EtcdJournal(etcd::Client& client, store::Store& store, std::string prefix, Fence fence,
                         EtcdJournalOptions options)
    : client_(client),
      store_(store),
      prefix_(std::move(prefix)),
      fence_(std::move(fence)),
      options_(options),
      timer_([this] { wakeup_.notify(); }) {}

EtcdJournal::~EtcdJournal() {
  client_.wheel().disarm(timer_);
}

void EtcdJournal::append(std::uint64_t /*prev*/, std::uint64_t index,
                         std::span<const store::Change> changes) {
  if (ended_) {
    // Nothing will write this commit: its waiters must not hang.
    if (!failure_) fail(Status(StatusCode::unavailable, "the etcd journal has stopped"));
    return;
  }
  ++stats_.commits;
  for (const auto& c : changes) {
    if (c.type == store::ObjectType::managers) continue;  // derived from `P managers/`, not stored
    KeyWrite w{object_key(prefix_, c.type, c.id), std::nullopt};
    if (c.kind != store::EventKind::remove) w.value = encode_object(c.type, c.object.get());
    queue(std::move(w));
  }
  queued_index_ = std::max(queued_index_, index);
  has_queued_ = true;
  wakeup_.notify();
}

void EtcdJournal::rewrite(std::span<const ObjectName> objects) {
  if (ended_) return;
  const store::ReadTx tx(store_);
  for (const auto& o : objects) {
    std::shared_ptr<const void> now;
    switch (o.type) {
      case store::ObjectType::node:
        now = tx.node(o.id);
        break;
      case store::ObjectType::task:
        now = tx.task(o.id);
        break;
      case store::ObjectType::secret:
        now = tx.secret(o.id);
        break;
      case store::ObjectType::config:
        now = tx.config(o.id);
        break;
      case store::ObjectType::volume:
        now = tx.volume(o.id);
        break;
      case store::ObjectType::cluster:
        if (auto c = tx.cluster(); c && c->id() == o.id) now = c;
        break;
      case store::ObjectType::managers:
        continue;
    }
    KeyWrite w{object_key(prefix_, o.type, o.id), std::nullopt};
    if (now) w.value = encode_object(o.type, now.get());
    queue(std::move(w));
  }
  queued_index_ = std::max(queued_index_, store_.index());
  has_queued_ = true;
  wakeup_.notify();
}

void EtcdJournal::queue(KeyWrite w) {
  auto [it, fresh] = queued_at_.try_emplace(w.key, queued_.size());
  if (fresh) {
    queued_.push_back(std::move(w));
  } else {
    queued_[it->second].value = std::move(w.value);  // last write wins
  }
}

void EtcdJournal::stop() {
  stopping_ = true;
  wakeup_.notify();
}

void EtcdJournal::fail(Status why) {
  failure_ = why;
  store_.journal_failed(std::move(why));
}

asio::awaitable<Status> EtcdJournal::run() {
  Status result;
  for (;;) {
    if (!has_queued_) {
      if (stopping_) break;
      co_await wakeup_.async_park();
      continue;
    }
    Batch b;
    b.writes.swap(queued_);
    b.index = queued_index_;
    queued_at_.clear();
    has_queued_ = false;
    const std::uint64_t index = b.index;
    result = co_await write_batch(std::move(b));
    if (!result.is_ok()) {
      fail(result);
      break;
    }
    ++stats_.batches;
    store_.mark_durable(index);
  }
  ended_ = true;
  co_return result;
}

asio::awaitable<Status> EtcdJournal::write_batch(Batch b) {
  auto chunks = chunk_writes(std::move(b.writes), options_.limits);
  // This leader's first write clears `P partial` if a dead leader left it.
  add_bookkeeping(chunks, prefix_, b.index, /*clear_partial=*/stats_.batches == 0);
  for (auto& chunk : chunks) {
    Status st = co_await write_txn(std::move(chunk));
    if (!st.is_ok()) co_return st;
  }
  co_return Status::ok();
}

asio::awaitable<Status> EtcdJournal::write_txn(std::vector<KeyWrite> writes) {
  std::vector<pb::RequestOp> ops;
  ops.reserve(writes.size());
  std::size_t bytes = 0;
  for (auto& w : writes) {
    bytes += write_bytes(w);
    ops.push_back(to_op(std::move(w)));
  }
  const auto compare = fence_compare(fence_);
  std::optional<Clock::time_point> give_up;
  auto backoff = options_.backoff_min;
  for (;;) {
    const auto start = Clock::now();
    // Once failing, an attempt may not run past the deadline.
    etcd::Timeout timeout;
    if (give_up) {
      timeout = std::max(std::chrono::milliseconds(1),
                         std::chrono::duration_cast<std::chrono::milliseconds>(*give_up - start));
    }
    std::vector<pb::Compare> cmp(1, compare);
    auto r = co_await client_.txn(std::move(cmp), ops, std::vector<pb::RequestOp>(), timeout);
    stats_.wait_seconds += seconds_since(start);
    if (r && r->succeeded()) {
      ++stats_.txns;
      stats_.ops += ops.size();
      stats_.bytes += bytes;
      co_return Status::ok();
    }
    ++stats_.failures;
    if (r) co_return Status(StatusCode::aborted, "no longer the leader");
    if (!write_may_succeed_later(r.error().code())) {
      co_return Status(r.error().code(), "etcd refused the store's write: " + r.error().message());
    }
    if (!give_up) give_up = start + options_.retry_deadline;
    if (Clock::now() >= *give_up) {
      co_return Status(StatusCode::unavailable,
                       "etcd did not take the store's write within " +
                           std::to_string(options_.retry_deadline.count()) +
                           " ms: " + r.error().message());
    }
    log::debug("etcd journal: write failed, retrying: {}", r.error().message());
    co_await pause_until(std::min(*give_up, Clock::now() + backoff));
    backoff = std::min(backoff * 2, options_.backoff_max);
  }
}

asio::awaitable<void> EtcdJournal::pause_until(Clock::time_point t) {
  // append() and stop() notify the same wakeup: park again until the time has come.
  while (Clock::now() < t) {
    if (!timer_.armed()) client_.wheel().arm(timer_, t);
    co_await wakeup_.async_park();
  }
  client_.wheel().disarm(timer_);
}

}  // namespace dispatchd::cluster
