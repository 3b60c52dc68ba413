#pragma once
// One manager of several sharing their store through etcd (--store etcd://...; issue 16,
// docs/architecture.md "Several managers"). It joins the cluster under its own etcd lease, keeps
// the live manager list and the leader from etcd, and plays one of two parts:
//
//  - follower: its store is a warm replica of etcd (cluster::Replica); agents' Dispatcher calls
//    are forwarded to the leader (proxy::Forwarder, spec §9.4); operator calls are refused with
//    the leader's name;
//  - leader: once it wins the election and its replica has caught up to the revision it won at,
//    every store commit goes to etcd fenced by its leadership (cluster::EtcdJournal) and the
//    Dispatcher starts, marking every node UNKNOWN with SwarmKit's start-up grace.
//
// A leader that loses its leadership (its lease expired, its key gone, a write fenced off) stops
// serving at once: its sessions get their final message and ABORTED, and the process exits
// non-zero so that its supervisor starts it again as a follower. A manager whose lease is lost
// does the same. On a graceful stop the leader writes what is pending, then resigns so another
// manager takes over without waiting for the lease to expire.

#include <asio/awaitable.hpp>
#include <chrono>
#include <memory>
#include <optional>
#include <string>

#include "dispatchd/cluster/fence.hpp"
#include "dispatchd/co/event.hpp"
#include "dispatchd/co/scope.hpp"
#include "dispatchd/etcd/client.hpp"
#include "dispatchd/status.hpp"

namespace dispatchd::cluster {
class Member;
class ManagerWatch;
class Replica;
class EtcdJournal;
struct Membership;
}  // namespace dispatchd::cluster

namespace dispatchd::app {

class Server;

struct ClusterOptions {
  etcd::ClientOptions etcd;
  std::string prefix = "/dispatchd/";
  std::string node_id;
  std::string advertise_addr;
  std::chrono::seconds lease_ttl{5};
  // How long a new leader waits for its replica to reach the revision it won at.
  std::chrono::milliseconds catch_up_timeout{10000};
};

class ClusterManager {
 public:
  ClusterManager(Server& server, ClusterOptions options);
  ClusterManager(const ClusterManager&) = delete;
  ClusterManager& operator=(const ClusterManager&) = delete;
  ~ClusterManager();

  // Runs until `server_done` is set (the server has stopped and drained): then a leader writes
  // what is pending and resigns, and the manager leaves (OK). On a failure — etcd unusable at
  // start, the lease or the leadership lost — it stops the server and returns why.
  asio::awaitable<Status> run(co::Event& server_done);

  bool leader() const noexcept { return leader_; }
  // Leaderships won by this process, and the fence revision of the current one.
  std::uint64_t terms() const noexcept { return terms_; }
  std::int64_t fence_revision() const noexcept { return fence_revision_; }
  const cluster::Membership* membership() const noexcept;
  const cluster::EtcdJournal* journal() const noexcept { return journal_.get(); }

 private:
  asio::awaitable<Status> serve(co::Event& server_done);
  void on_membership(const cluster::Membership& m);
  void publish_managers();
  // Stops the server because of `why` (once) and remembers it.
  void fail(const Status& why);

  Server& server_;
  ClusterOptions options_;
  std::unique_ptr<etcd::Client> client_;
  std::unique_ptr<cluster::Member> member_;
  std::unique_ptr<cluster::ManagerWatch> watch_;
  std::unique_ptr<cluster::Replica> replica_;
  std::unique_ptr<cluster::EtcdJournal> journal_;
  co::Scope scope_;
  co::Event replica_done_, journal_done_;
  std::optional<cluster::Fence> fence_;
  std::optional<Status> failure_;
  bool leader_ = false;
  bool stopping_ = false;
  std::uint64_t terms_ = 0;
  std::int64_t fence_revision_ = 0;
};

}  // namespace dispatchd::app
