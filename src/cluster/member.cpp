#include "dispatchd/cluster/member.hpp"

#include "dispatchd/co/select.hpp"
#include "dispatchd/log.hpp"
#include "types.pb.h"
#include "wait.hpp"

namespace dispatchd::cluster {

namespace {

namespace api = ::docker::swarmkit::v1;
namespace pb = etcd::pb;

constexpr std::chrono::milliseconds kRevokeTimeout{2000};

}  // namespace

Member::Member(etcd::Client& client, MemberOptions options)
    : client_(client), options_(std::move(options)) {
  options_.prefix = normalize_prefix(options_.prefix);
  leader_key_ = cluster::leader_key(options_.prefix);
  manager_key_ = manager_key(options_.prefix, options_.node_id);
}

Member::~Member() = default;

asio::awaitable<Status> Member::grant_or_resume() {
  if (options_.resume_lease != 0) {
    auto ttl = co_await client_.lease_time_to_live(options_.resume_lease);
    if (ttl && ttl->ttl() > 0) {
      lease_ = options_.resume_lease;
      ttl_ = std::chrono::seconds(ttl->grantedttl());
      log::info("cluster: {} resumes etcd lease {:x}", options_.node_id, lease_);
      co_return Status::ok();
    }
    log::info("cluster: etcd lease {:x} of an earlier run is gone; granting a new one",
              options_.resume_lease);
  }
  auto granted = co_await client_.lease_grant(options_.ttl);
  if (!granted) co_return granted.error();
  lease_ = granted->id();
  ttl_ = std::chrono::seconds(granted->ttl());
  co_return Status::ok();
}

asio::awaitable<Status> Member::join() {
  if (joined_.is_set()) co_return Status::ok();
  if (options_.node_id.empty()) {
    co_return Status(StatusCode::invalid_argument, "a cluster member needs a node ID");
  }
  if (gone_.is_set()) co_return gone_result();
  if (joining_) {
    // Another coroutine is joining (run() and an explicit join()): share its outcome.
    auto done = join_done_;
    co_await done->wait();
    co_return joined_.is_set() ? Status::ok() : join_error_;
  }
  joining_ = true;
  join_done_ = std::make_shared<co::Event>();
  Status st = co_await grant_or_resume();
  if (st.is_ok()) {
    api::WeightedPeer peer;
    peer.mutable_peer()->set_node_id(options_.node_id);
    peer.mutable_peer()->set_addr(options_.advertise_addr);
    peer.set_weight(options_.weight);
    auto put = co_await client_.put(manager_key_, peer.SerializeAsString(), lease_);
    if (!put) {
      st = put.error();
      // Nothing else is on a lease we just granted: give it back rather than let it expire.
      if (lease_ != options_.resume_lease) co_await client_.lease_revoke(lease_, kRevokeTimeout);
      lease_ = 0;
    }
  }
  joining_ = false;
  join_error_ = st;
  if (st.is_ok()) joined_.set();
  join_done_->set();
  if (!st.is_ok()) co_return st;
  log::info("cluster: {} joined as a manager ({}, etcd lease {:x}, TTL {} s)", options_.node_id,
            options_.advertise_addr, lease_, ttl_.count());
  co_return Status::ok();
}

void Member::finish(Status st) {
  if (gone_.is_set()) return;
  gone_status_ = std::move(st);
  ending_.set();
  gone_.set();
}

Status Member::gone_result() const {
  if (!gone_status_.is_ok()) return gone_status_;
  return Status(StatusCode::failed_precondition, "this manager has left the cluster");
}

asio::awaitable<Status> Member::run() {
  if (running_ || gone_.is_set()) {
    co_return Status(StatusCode::failed_precondition, "a member runs once");
  }
  running_ = true;
  if (!joined_.is_set()) {
    Status st = co_await join();
    if (!st.is_ok()) {
      finish(st);
      co_return st;
    }
  }
  Status st = Status::ok();
  if (!stopping_) {
    keeper_.emplace(client_, lease_, ttl_);
    st = co_await keeper_->run();
  }
  if (st.is_ok()) {
    // Leaving: revoking deletes our manager key and any leader key at once.
    auto revoked = co_await client_.lease_revoke(lease_, kRevokeTimeout);
    if (!revoked) {
      log::warn("cluster: revoking etcd lease {:x}: {} (it expires within {} s)", lease_,
                revoked.error().message(), ttl_.count());
    }
    log::info("cluster: {} left the cluster", options_.node_id);
  } else {
    log::error("cluster: {} lost its etcd lease {:x}: {}; no longer a manager", options_.node_id,
               lease_, st.message());
  }
  finish(st);
  co_return st;
}

void Member::stop() {
  stopping_ = true;
  ending_.set();
  if (keeper_) keeper_->stop();
}

asio::awaitable<Result<Fence>> Member::campaign(co::Event* cancel) {
  co::Event never;
  co::Event& cancelled = cancel != nullptr ? *cancel : never;
  if (!joined_.is_set()) {
    co::Wakeup wakeup;
    co::Event::Listener lj(joined_, wakeup), le(ending_, wakeup), lc(cancelled, wakeup);
    co_await co::select(wakeup, lj, le, lc);
  }
  auto& wheel = client_.wheel();
  for (;;) {
    if (cancelled.is_set()) {
      co_return std::unexpected(Status(StatusCode::cancelled, "campaign cancelled"));
    }
    if (ending_.is_set()) co_return std::unexpected(gone_result());
    // Arguments are built before the co_await: GCC 12 mishandles braced temporaries in one.
    std::vector<pb::Compare> absent{
        etcd::compare_create_revision(leader_key_, pb::Compare::EQUAL, 0)};
    std::vector<pb::RequestOp> create{etcd::op_put(leader_key_, options_.node_id, lease_)};
    std::vector<pb::RequestOp> read_back{etcd::op_range(leader_key_)};
    auto txn = co_await client_.txn(std::move(absent), std::move(create), std::move(read_back));
    if (!txn) {
      // The write may have been applied: the next attempt's read-back tells.
      log::debug("cluster: campaign of {}: {}", options_.node_id, txn.error().message());
      co_await detail::pause(wheel, options_.retry, cancelled, ending_);
      continue;
    }
    if (txn->succeeded()) {
      // The put is the transaction's only write: the key was created at its revision.
      std::int64_t created = txn->header().revision();
      log::info("cluster: {} is the leader (fence revision {})", options_.node_id, created);
      co_return Fence{leader_key_, created};
    }
    const auto& kvs = txn->responses(0).response_range().kvs();
    if (kvs.empty()) continue;  // deleted in between: impossible within one txn, try again
    const auto& kv = kvs[0];
    if (kv.value() == options_.node_id && kv.lease() == lease_) {
      log::info("cluster: {} already holds the leader key (fence revision {})", options_.node_id,
                kv.create_revision());
      co_return Fence{leader_key_, kv.create_revision()};
    }
    log::info("cluster: {} is a follower; {} leads", options_.node_id, kv.value());
    // Every change after the failed attempt, so a delete right after it is seen.
    etcd::WatchOptions after_attempt{.key = leader_key_,
                                     .start_revision = txn->header().revision() + 1};
    auto watcher = co_await client_.watch(std::move(after_attempt));
    if (!watcher) {
      log::debug("cluster: watching {}: {}", leader_key_, watcher.error().message());
      co_await detail::pause(wheel, options_.retry, cancelled, ending_);
      continue;
    }
    bool deleted = false;
    while (!deleted) {
      auto resp = co_await detail::next_unless(wheel, **watcher, cancelled, ending_);
      if (!resp) {
        // Cancelled, gone, or the stream failed: the next attempt re-reads the key.
        log::debug("cluster: watch of {} ended: {}", leader_key_, resp.error().message());
        break;
      }
      for (const auto& e : resp->events())
        if (e.type() == mvccpb::Event::DELETE) deleted = true;
    }
  }
}

asio::awaitable<Status> Member::hold(const Fence& fence, co::Event* cancel) {
  co::Event never;
  co::Event& cancelled = cancel != nullptr ? *cancel : never;
  auto& wheel = client_.wheel();
  auto lost = [&](std::string why) {
    log::warn("cluster: {} lost the leadership (fence revision {}): {}", options_.node_id,
              fence.create_revision, why);
    return Status(StatusCode::aborted, "leadership lost: " + why);
  };
  for (;;) {
    if (ending_.is_set()) co_return gone_result();
    if (cancelled.is_set()) co_return Status(StatusCode::cancelled, "hold cancelled");
    auto now = co_await client_.range(fence.key);
    if (!now) {
      log::debug("cluster: reading {}: {}", fence.key, now.error().message());
      co_await detail::pause(wheel, options_.retry, cancelled, ending_);
      continue;
    }
    if (now->kvs_size() == 0) co_return lost("the leader key was deleted");
    if (now->kvs(0).create_revision() != fence.create_revision) {
      co_return lost("the leader key was re-created by " + now->kvs(0).value());
    }
    etcd::WatchOptions after_read{.key = fence.key, .start_revision = now->header().revision() + 1};
    auto watcher = co_await client_.watch(std::move(after_read));
    if (!watcher) {
      log::debug("cluster: watching {}: {}", fence.key, watcher.error().message());
      co_await detail::pause(wheel, options_.retry, cancelled, ending_);
      continue;
    }
    for (;;) {
      auto resp = co_await detail::next_unless(wheel, **watcher, cancelled, ending_);
      if (!resp) {
        // Cancelled, gone, or the stream failed (an etcd member down): re-read and re-watch.
        log::debug("cluster: watch of {} ended: {}", fence.key, resp.error().message());
        break;
      }
      for (const auto& e : resp->events()) {
        if (e.type() == mvccpb::Event::DELETE) co_return lost("the leader key was deleted");
        if (e.kv().create_revision() != fence.create_revision) {
          co_return lost("the leader key was re-created by " + e.kv().value());
        }
      }
    }
  }
}

asio::awaitable<Status> Member::resign(const Fence& fence) {
  std::vector<pb::Compare> fenced{fence_compare(fence)};
  std::vector<pb::RequestOp> remove{etcd::op_delete(fence.key)};
  auto txn = co_await client_.txn(std::move(fenced), std::move(remove));
  if (!txn) co_return txn.error();
  if (!txn->succeeded()) {
    co_return Status(StatusCode::failed_precondition,
                     "not the leader any more: the fence no longer holds");
  }
  log::info("cluster: {} resigned the leadership", options_.node_id);
  co_return Status::ok();
}

}  // namespace dispatchd::cluster
