// A follower's replica: an etcd watch over the prefix, applied revision by revision.

#include "dispatchd/cluster/replica.hpp"

#include <algorithm>
#include <utility>
#include <vector>

#include "dispatchd/cluster/etcd_store.hpp"
#include "dispatchd/log.hpp"

namespace dispatchd::cluster {

namespace {

using Clock = etcd::Clock;

bool watch_may_resume(StatusCode c) {
  return c == StatusCode::unavailable || c == StatusCode::deadline_exceeded ||
         c == StatusCode::unknown || c == StatusCode::internal ||
         c == StatusCode::resource_exhausted;
}

}  // namespace

Replica::Replica(etcd::Client& client, store::Store& store, std::string prefix,
                 std::int64_t revision, ReplicaOptions options)
    : client_(client),
      store_(store),
      prefix_(std::move(prefix)),
      options_(options),
      revision_(revision),
      timer_([this] { wakeup_.notify(); }) {}

Replica::~Replica() {
  client_.wheel().disarm(timer_);
}

void Replica::stop() {
  stopping_ = true;
  if (watcher_) watcher_->cancel();
  wakeup_.notify();
}

asio::awaitable<Status> Replica::run() {
  Status st = co_await follow();
  ended_ = st.is_ok() ? Status(StatusCode::cancelled, "the replica has stopped") : st;
  waiters_.for_each([](Waiter& w) { w.wakeup->notify(); });
  co_return st;
}

asio::awaitable<Status> Replica::follow() {
  std::optional<Clock::time_point> give_up;
  auto backoff = options_.backoff_min;
  while (!stopping_) {
    etcd::WatchOptions wo;
    wo.key = prefix_;
    wo.range_end = etcd::prefix_end(prefix_);
    wo.start_revision = revision_ + 1;
    auto w = co_await client_.watch(std::move(wo));
    Status failed;
    if (!w) {
      failed = w.error();
    } else {
      watcher_ = std::move(*w);
      if (stopping_) watcher_->cancel();
      for (;;) {
        auto r = co_await watcher_->next();
        if (!r) {
          failed = r.error();
          break;
        }
        give_up.reset();
        backoff = options_.backoff_min;
        if (Status st = apply(*r); !st.is_ok()) {
          watcher_->cancel();
          watcher_.reset();
          co_return st;
        }
      }
      if (failed.code() == StatusCode::out_of_range) {
        failed = Status(StatusCode::out_of_range,
                        "etcd compacted revision " + std::to_string(revision_ + 1) +
                            " (oldest kept: " + std::to_string(watcher_->compact_revision()) +
                            "): load the store again");
      }
      watcher_.reset();
    }
    if (stopping_) break;
    if (!watch_may_resume(failed.code())) co_return failed;
    const auto now = Clock::now();
    if (!give_up) give_up = now + options_.retry_deadline;
    if (now >= *give_up) {
      co_return Status(StatusCode::unavailable,
                       "the etcd watch failed for " +
                           std::to_string(options_.retry_deadline.count()) +
                           " ms: " + failed.message());
    }
    log::debug("etcd replica: watch failed at revision {}, again: {}", revision_, failed.message());
    ++stats_.rewatches;
    co_await pause_until(std::min(*give_up, now + backoff));
    backoff = std::min(backoff * 2, options_.backoff_max);
  }
  co_return Status::ok();
}

Status Replica::apply(const etcd::pb::WatchResponse& r) {
  const auto& events = r.events();
  int i = 0;
  while (i < events.size()) {
    // One etcd revision (one leader transaction) at a time. Its changes join those held; the
    // revision that writes `P index` publishes them all as one store transaction.
    const std::int64_t rev = events[i].kv().mod_revision();
    std::optional<std::uint64_t> index;
    for (; i < events.size() && events[i].kv().mod_revision() == rev; ++i) {
      const auto& ev = events[i];
      auto k = parse_key(prefix_, ev.kv().key());
      if (!k) return k.error();
      const bool removed = ev.type() == mvccpb::Event::DELETE;
      if (k->kind == StoredKey::index) {
        if (removed) continue;
        auto idx = decode_index(ev.kv().value(), ev.kv().key());
        if (!idx) return idx.error();
        index = *idx;
        continue;
      }
      if (k->kind != StoredKey::object) continue;
      store::RemoteChange c{k->type, k->id, nullptr};
      if (!removed) {
        auto obj = decode_object(k->type, k->id, ev.kv().value(), ev.kv().key());
        if (!obj) return obj.error();
        c.object = std::move(*obj);
      }
      auto [at, fresh] = held_at_.try_emplace(ev.kv().key(), held_.size());
      if (fresh) {
        held_.push_back(std::move(c));
      } else {
        held_[at->second] = std::move(c);  // the last write of a key wins
      }
    }
    if (index) {
      if (Status st = store_.apply_remote(held_, *index); !st.is_ok()) {
        return Status(st.code(), "etcd revision " + std::to_string(rev) + ": " + st.message());
      }
      stats_.changes += held_.size();
      held_.clear();
      held_at_.clear();
    } else if (!held_.empty()) {
      ++stats_.held;
    }
    ++stats_.revisions;
    advance(rev);
  }
  return Status::ok();
}

std::vector<ObjectName> Replica::unfinished() const {
  std::vector<ObjectName> out;
  out.reserve(held_.size());
  for (const auto& c : held_)
    out.push_back({c.type, c.id});
  return out;
}

void Replica::advance(std::int64_t revision) {
  if (revision <= revision_) return;
  revision_ = revision;
  waiters_.for_each([](Waiter& w) { w.wakeup->notify(); });
}

asio::awaitable<Status> Replica::wait_revision(std::int64_t revision, Clock::time_point deadline) {
  co::Wakeup wakeup;
  Waiter w;
  w.wakeup = &wakeup;
  waiters_.push_back(w);
  co::TimerCallback<std::function<void()>> timer([&wakeup] { wakeup.notify(); });
  client_.wheel().arm(timer, deadline);
  Status st;
  for (;;) {
    if (revision_ >= revision) break;
    if (ended_) {
      st = *ended_;
      break;
    }
    if (Clock::now() >= deadline) {
      st = Status(StatusCode::deadline_exceeded, "the replica reached etcd revision " +
                                                     std::to_string(revision_) + ", not " +
                                                     std::to_string(revision));
      break;
    }
    if (!timer.armed()) client_.wheel().arm(timer, deadline);
    co_await wakeup.async_park();
  }
  client_.wheel().disarm(timer);
  co_return st;
}

asio::awaitable<void> Replica::pause_until(Clock::time_point t) {
  while (Clock::now() < t && !stopping_) {
    if (!timer_.armed()) client_.wheel().arm(timer_, t);
    co_await wakeup_.async_park();
  }
  client_.wheel().disarm(timer_);
}

}  // namespace dispatchd::cluster
