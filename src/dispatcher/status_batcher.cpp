#include "dispatchd/dispatcher/status_batcher.hpp"

#include <google/protobuf/util/time_util.h>

#include <algorithm>
#include <asio/post.hpp>
#include <chrono>
#include <functional>

#include "dispatchd/co/event.hpp"
#include "dispatchd/grpc/server_context.hpp"
#include "dispatchd/log.hpp"

namespace dispatchd::dispatcher {

StatusBatcher::StatusBatcher(asio::io_context& io, store::Store& store, std::string applied_by,
                             std::size_t max_items)
    : io_(io),
      store_(store),
      applied_by_(std::move(applied_by)),
      max_items_(std::max<std::size_t>(1, max_items)) {}

std::size_t StatusBatcher::pending() const noexcept {
  std::size_t n = pending_tasks_.size() + pending_nodes_.size();
  for (const auto& [id, nodes] : pending_volumes_)
    n += nodes.size();
  return n;
}

std::uint64_t StatusBatcher::queue_node_update(const std::string& node_id, NodeUpdate u) {
  auto& p = pending_nodes_[node_id];
  if (u.status) p.status = std::move(u.status);
  if (u.description) p.description = std::move(u.description);
  schedule_flush();
  return flushed_generation_ + 1;
}

std::uint64_t StatusBatcher::queue_task_update(const std::string& task_id,
                                               const api::TaskStatus& status) {
  pending_tasks_[task_id] = status;
  schedule_flush();
  return flushed_generation_ + 1;
}

std::uint64_t StatusBatcher::queue_volume_unpublish(const std::string& volume_id,
                                                    const std::string& node_id) {
  pending_volumes_[volume_id].push_back(node_id);
  schedule_flush();
  return flushed_generation_ + 1;
}

void StatusBatcher::schedule_flush() {
  // Group commit: everything queued before the posted flush runs goes into it.
  if (flush_posted_) return;
  flush_posted_ = true;
  asio::post(io_, [this] {
    flush_posted_ = false;
    flush();
  });
}

void StatusBatcher::flush() {
  if (pending_tasks_.empty() && pending_nodes_.empty() && pending_volumes_.empty()) return;
  auto tasks = std::move(pending_tasks_);
  auto nodes = std::move(pending_nodes_);
  auto volumes = std::move(pending_volumes_);
  pending_tasks_.clear();
  pending_nodes_.clear();
  pending_volumes_.clear();
  auto now = google::protobuf::util::TimeUtil::NanosecondsToTimestamp(
      std::chrono::duration_cast<std::chrono::nanoseconds>(
          std::chrono::system_clock::now().time_since_epoch())
          .count());

  std::vector<std::function<void(store::WriteTx&)>> work;
  work.reserve(tasks.size() + nodes.size() + volumes.size());
  for (auto& [id, status] : tasks) {
    work.push_back([&, id = id, status = std::move(status)](store::WriteTx& tx) {
      auto t = tx.task(id);
      if (!t) return;
      const api::TaskStatus& cur = t->status();
      if (cur.SerializeAsString() == status.SerializeAsString()) return;
      if (cur.state() > status.state()) return;  // no backward transitions
      api::Task copy = *t;
      *copy.mutable_status() = status;
      copy.mutable_status()->set_applied_by(applied_by_);
      *copy.mutable_status()->mutable_applied_at() = now;
      tx.update(std::move(copy));
      ++stats_.flushed_task_updates;
    });
  }
  for (auto& [id, u] : nodes) {
    work.push_back([&, id = id, u = std::move(u)](store::WriteTx& tx) {
      auto n = tx.node(id);
      if (!n) {
        log::debug("node {} unavailable: update not applied", id);
        return;
      }
      api::Node copy = *n;
      if (u.status) {
        copy.mutable_status()->set_state(u.status->state());
        copy.mutable_status()->set_message(u.status->message());
        if (!u.status->addr().empty()) copy.mutable_status()->set_addr(u.status->addr());
      }
      if (u.description) *copy.mutable_description() = *u.description;
      tx.update(std::move(copy));
      ++stats_.flushed_node_updates;
    });
  }
  for (auto& [id, node_ids] : volumes) {
    work.push_back([&, id = id, node_ids = std::move(node_ids)](store::WriteTx& tx) {
      auto v = tx.volume(id);
      if (!v) return;  // deleted meanwhile (docs/behaviour.md §0.8)
      api::Volume copy = *v;
      for (auto& ps : *copy.mutable_publish_status()) {
        if (std::find(node_ids.begin(), node_ids.end(), ps.node_id()) != node_ids.end()) {
          ps.set_state(api::VolumePublishStatus::PENDING_UNPUBLISH);
        }
      }
      tx.update(std::move(copy));
    });
  }
  for (std::size_t i = 0; i < work.size(); i += max_items_) {
    store_.update([&](store::WriteTx& tx) {
      for (std::size_t j = i; j < std::min(work.size(), i + max_items_); ++j)
        work[j](tx);
      return Status::ok();
    });
  }
  ++stats_.flushes;
  ++flushed_generation_;
  waiters_.for_each([&](Waiter& w) {
    if (w.generation <= flushed_generation_) w.wakeup->notify();
  });
}

void StatusBatcher::close() {
  closed_ = true;
  flush();
  waiters_.for_each([](Waiter& w) { w.wakeup->notify(); });
}

asio::awaitable<bool> StatusBatcher::wait_flushed(std::uint64_t generation,
                                                  grpc::ServerContext& ctx) {
  co::Wakeup wakeup;
  Waiter w;
  w.generation = generation;
  w.wakeup = &wakeup;
  waiters_.push_back(w);
  co::Event::Listener cancelled(ctx.cancelled(), wakeup);
  while (flushed_generation_ < generation) {
    if (ctx.is_cancelled() || closed_) co_return false;
    co_await wakeup.async_park();
  }
  co_return true;
}

}  // namespace dispatchd::dispatcher
