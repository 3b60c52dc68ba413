#pragma once
// One manager's presence in the cluster and its part in the leader election (issue 16).
//
// A Member grants an etcd lease, registers `P managers/<node_id>` = api::WeightedPeer{node_id,
// advertise_addr, weight} on it and keeps the lease alive (etcd::LeaseKeeper). Everything this
// manager holds in etcd lives on that one lease: when the process dies, etcd deletes its manager
// key and, if it led, the leader key, within the TTL; when it stops, it revokes the lease so the
// others see it leave at once.
//
// Election on the same lease: campaign() creates `P leader` = node_id only while it is absent
// (compare create_revision == 0) and otherwise waits, on a watch from the revision after its
// failed attempt, for the key's deletion — no polling, and no delete can fall between the attempt
// and the watch. The winner gets a Fence (the key's create_revision); hold() returns when that
// leadership is gone (the key deleted or re-created, or our lease lost), resign() deletes the key
// for a graceful hand-over. A Member whose run() ended is gone: no longer a manager, no longer
// leader; campaign() and hold() then return at once.
//
// All of it runs on the client's io_context; the Member must outlive the coroutines using it.

#include <asio/awaitable.hpp>
#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "dispatchd/cluster/fence.hpp"
#include "dispatchd/cluster/manager_keys.hpp"
#include "dispatchd/co/event.hpp"
#include "dispatchd/etcd/client.hpp"
#include "dispatchd/status.hpp"

namespace dispatchd::cluster {

template <class T>
using Result = std::expected<T, Status>;

struct MemberOptions {
  std::string prefix{kDefaultPrefix};
  std::string node_id;
  // Written as the manager's address in `P managers/<node_id>` (--advertise-addr).
  std::string advertise_addr;
  std::int64_t weight = 10;
  // SwarmKit's agents notice a dead manager within a heartbeat period; etcd raises TTLs below
  // its minimum (about 2 s with default timings).
  std::chrono::seconds ttl{5};
  // A lease of an earlier run of this manager, kept when etcd still has it (0: grant a new one).
  std::int64_t resume_lease = 0;
  // Pause before trying again after an etcd call failed (campaign, hold).
  std::chrono::milliseconds retry{200};
};

class Member {
 public:
  Member(etcd::Client& client, MemberOptions options);
  Member(const Member&) = delete;
  Member& operator=(const Member&) = delete;
  ~Member();

  // Grants (or resumes) the lease and registers this manager on it. run() joins first when
  // join() was not called; campaign() waits until the member has joined.
  asio::awaitable<Status> join();
  // Keeps the lease alive. Returns OK after stop() (the lease revoked: the manager key, and the
  // leader key if held, are gone at once), or the lease's loss (NOT_FOUND: etcd no longer has
  // it; DEADLINE_EXCEEDED: not renewed within its TTL) — the process must then consider itself
  // gone, leader no more — or join()'s error.
  asio::awaitable<Status> run();
  void stop();

  bool joined() const noexcept { return joined_.is_set(); }
  // Set when run() has ended; gone_status() is what it returned.
  bool gone() const noexcept { return gone_.is_set(); }
  co::Event& gone_event() noexcept { return gone_; }
  const Status& gone_status() const noexcept { return gone_status_; }
  std::int64_t lease_id() const noexcept { return lease_; }
  std::chrono::seconds lease_ttl() const noexcept { return ttl_; }
  const MemberOptions& options() const noexcept { return options_; }
  const std::string& leader_key() const noexcept { return leader_key_; }

  // Returns once this manager holds `P leader`, with the fence of its leadership. CANCELLED when
  // `cancel` is set first, the lease's loss (or FAILED_PRECONDITION, stopped) when the member is
  // gone. A leader key that already holds our node ID on our lease is kept (a campaign repeated
  // after an error, or a resumed lease).
  asio::awaitable<Result<Fence>> campaign(co::Event* cancel = nullptr);
  // Returns when the leadership `fence` stands for is lost: ABORTED when the leader key was
  // deleted or re-created, the lease's loss when the member is gone; CANCELLED when `cancel` is
  // set first (still leader then). A failed etcd member only makes it re-read and re-watch.
  asio::awaitable<Status> hold(const Fence& fence, co::Event* cancel = nullptr);
  // Deletes the leader key if `fence` still holds it (OK), so another manager wins at once;
  // FAILED_PRECONDITION when it no longer did.
  asio::awaitable<Status> resign(const Fence& fence);

 private:
  asio::awaitable<Status> grant_or_resume();
  void finish(Status st);
  Status gone_result() const;

  etcd::Client& client_;
  MemberOptions options_;
  std::string leader_key_, manager_key_;
  std::int64_t lease_ = 0;
  std::chrono::seconds ttl_{0};
  bool joining_ = false;
  std::shared_ptr<co::Event> join_done_;
  Status join_error_;
  bool stopping_ = false;
  bool running_ = false;
  std::optional<etcd::LeaseKeeper> keeper_;
  // ending_: stop() was called or run() ended; it ends every wait of campaign() and hold().
  co::Event joined_, gone_, ending_;
  Status gone_status_;
};

}  // namespace dispatchd::cluster
