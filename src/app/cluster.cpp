#include "dispatchd/app/cluster.hpp"

#include <fmt/ranges.h>

#include <algorithm>
#include <asio/steady_timer.hpp>
#include <asio/this_coro.hpp>
#include <asio/use_awaitable.hpp>
#include <utility>

#include "dispatchd/app/server.hpp"
#include "dispatchd/cluster/etcd_journal.hpp"
#include "dispatchd/cluster/etcd_store.hpp"
#include "dispatchd/cluster/manager_watch.hpp"
#include "dispatchd/cluster/member.hpp"
#include "dispatchd/cluster/replica.hpp"
#include "dispatchd/log.hpp"

namespace dispatchd::app {

ClusterManager::ClusterManager(Server& server, ClusterOptions options)
    : server_(server), options_(std::move(options)), scope_(server.wheel().io().get_executor()) {
  // A follower from the start: agents' calls wait for (or are refused for want of) a leader
  // rather than reaching the Dispatcher, which only a leader starts.
  server_.set_forwarding(true);
}

ClusterManager::~ClusterManager() = default;

const cluster::Membership* ClusterManager::membership() const noexcept {
  return watch_ && watch_->ready() ? &watch_->current() : nullptr;
}

void ClusterManager::fail(const Status& why) {
  if (failure_ || stopping_) return;
  failure_ = why;
  log::error("stopping: {}", why.message());
  server_.stop();
}

// The leader's manager list is the live managers from etcd; followers forward to the leader.
void ClusterManager::on_membership(const cluster::Membership& m) {
  std::string list;
  for (const auto& p : m.managers)
    list += (list.empty() ? "" : ", ") + p.peer().node_id() + "@" + p.peer().addr();
  log::info("managers: {}; leader: {}", list.empty() ? "none" : list,
            m.leader.node_id.empty() ? "none" : m.leader.node_id + " at " + m.leader.addr);
  if (failure_ || stopping_) return;  // the server is stopping: nothing to forward or publish
  if (leader_) {
    publish_managers();
    return;
  }
  if (!m.leader.node_id.empty() && m.leader.node_id != options_.node_id && !m.leader.addr.empty()) {
    server_.forwarder().set_leader(m.leader.addr);
  } else {
    server_.forwarder().set_leader(std::nullopt);
  }
}

void ClusterManager::publish_managers() {
  const cluster::Membership* m = membership();
  if (!m || m->managers.empty()) return;
  auto& store = server_.store();
  bool same = store.view([&](const store::ReadTx& tx) {
    const auto& cur = tx.managers();
    if (cur.size() != m->managers.size()) return false;
    for (std::size_t i = 0; i < cur.size(); ++i) {
      if (cur[i].SerializeAsString() != m->managers[i].SerializeAsString()) return false;
    }
    return true;
  });
  if (same) return;
  store.update([&](store::WriteTx& tx) {
    tx.set_managers(m->managers);
    return Status::ok();
  });
}

asio::awaitable<Status> ClusterManager::run(co::Event& server_done) {
  Status st = co_await serve(server_done);
  if (!st.is_ok()) fail(st);
  // Leave, once nothing is served any more (the Dispatcher's last flush is written): a
  // leader's pending writes first, then its leadership, then the lease.
  co_await server_done.wait();
  stopping_ = true;
  log::debug("cluster: leaving (leader {}, journal {})", leader_, journal_ != nullptr);
  if (journal_) {
    journal_->stop();
    co_await journal_done_.wait();
    log::debug("cluster: journal ended");
    if (leader_ && !journal_->failure()) {
      if (Status r = co_await member_->resign(*fence_); r.is_ok()) {
        log::info("resigned the leadership: another manager takes over now");
      }
    }
  }
  leader_ = false;
  if (replica_) replica_->stop();
  if (watch_) watch_->stop();
  if (member_) member_->stop();
  log::debug("cluster: waiting for {} coroutines", scope_.size());
  co_await scope_.join();
  // Nothing of ours runs any more: close the connection to etcd, so that the io_context ends.
  server_.store().set_journal(nullptr);
  journal_.reset();
  replica_.reset();
  watch_.reset();
  member_.reset();
  client_.reset();
  log::debug("cluster: left");
  co_return failure_ ? *failure_ : Status::ok();
}

asio::awaitable<Status> ClusterManager::serve(co::Event& server_done) {
  auto client = etcd::Client::create(server_.wheel(), options_.etcd);
  if (!client) co_return client.error();
  client_ = std::move(*client);

  // Each manager needs its own node ID: the manager list and the forwarded identity name it.
  // A registration under ours may be this manager's own previous run, whose lease runs out
  // within its TTL; a live manager renews it.
  auto give_up = etcd::Clock::now() + options_.lease_ttl + std::chrono::seconds(2);
  std::uint64_t unreachable = 0;
  for (bool warned = false;;) {
    auto m = co_await cluster::read_membership(*client_, options_.prefix);
    if (!m && (m.error().code() == StatusCode::unavailable ||
               m.error().code() == StatusCode::deadline_exceeded)) {
      // etcd not up yet (containers starting together): keep trying until it is, or until
      // the server is stopped.
      if (server_done.is_set()) co_return Status::ok();
      if (unreachable++ % 10 == 0) {
        log::warn("cannot use etcd at {} ({}); trying again",
                  fmt::join(options_.etcd.endpoints, ","), m.error().message());
      }
      asio::steady_timer t(co_await asio::this_coro::executor, std::chrono::seconds(1));
      co_await t.async_wait(asio::use_awaitable);
      give_up = etcd::Clock::now() + options_.lease_ttl + std::chrono::seconds(2);
      continue;
    }
    if (!m) {
      co_return Status(m.error().code(),
                       "cannot read the managers from etcd: " + m.error().message());
    }
    auto same = std::find_if(m->managers.begin(), m->managers.end(),
                             [&](const auto& p) { return p.peer().node_id() == options_.node_id; });
    if (same == m->managers.end()) break;
    if (etcd::Clock::now() >= give_up) {
      co_return Status(StatusCode::already_exists,
                       "another live manager is registered as " + options_.node_id + " (at " +
                           same->peer().addr() +
                           "): give each manager its own node ID (--node-id, or the CN of its "
                           "certificate)");
    }
    if (!warned) {
      log::warn(
          "a manager is registered as {} at {}: waiting up to {}s for that registration to "
          "expire (a previous run of this manager) ",
          options_.node_id, same->peer().addr(), options_.lease_ttl.count() + 2);
      warned = true;
    }
    asio::steady_timer t(co_await asio::this_coro::executor, std::chrono::milliseconds(500));
    co_await t.async_wait(asio::use_awaitable);
  }

  // Join: our lease and `P managers/<id>`.
  cluster::MemberOptions mo;
  mo.prefix = options_.prefix;
  mo.node_id = options_.node_id;
  mo.advertise_addr = options_.advertise_addr;
  mo.ttl = options_.lease_ttl;
  member_ = std::make_unique<cluster::Member>(*client_, std::move(mo));
  if (Status st = co_await member_->join(); !st.is_ok()) {
    co_return Status(st.code(), "cannot join the cluster in etcd: " + st.message());
  }
  log::info("joined the cluster in etcd as {} (lease {:x}, TTL {}s)", options_.node_id,
            member_->lease_id(), member_->lease_ttl().count());
  scope_.spawn([](ClusterManager& self) -> asio::awaitable<void> {
    Status st = co_await self.member_->run();
    if (!self.stopping_) {
      self.fail(Status(st.code(), "this manager's etcd lease is lost (" + st.message() +
                                      "): it is no longer a manager of the cluster"));
    }
  }(*this));

  // The live managers and the leader.
  cluster::ManagerWatchOptions wo;
  wo.prefix = options_.prefix;
  wo.on_change = [this](const cluster::Membership& m) { on_membership(m); };
  watch_ = std::make_unique<cluster::ManagerWatch>(*client_, std::move(wo));
  scope_.spawn(
      [](ClusterManager& self) -> asio::awaitable<void> { co_await self.watch_->run(); }(*this));

  // The store: everything in etcd now, then every change after it.
  auto loaded = co_await cluster::load(*client_, options_.prefix);
  if (!loaded) {
    co_return Status(loaded.error().code(),
                     "cannot read the store from etcd: " + loaded.error().message());
  }
  auto& store = server_.store();
  if (!loaded->empty) {
    if (Status st = store.restore(loaded->snapshot); !st.is_ok()) {
      co_return Status(st.code(), "the store in etcd under " + options_.prefix +
                                      " cannot be used: " + st.message());
    }
    log::info("store read from etcd at revision {}: {} nodes, {} tasks, index {}", loaded->revision,
              loaded->snapshot.nodes_size(), loaded->snapshot.tasks_size(), store.index());
  } else {
    log::info("no store in etcd under {} yet: the first leader writes it", options_.prefix);
  }
  if (loaded->unfinished) {
    log::info(
        "a store write cut into several etcd transactions is unfinished: read as before it "
        "(revision {}); it is applied once whole",
        loaded->revision);
  }
  replica_ = std::make_unique<cluster::Replica>(*client_, store, options_.prefix, loaded->revision);
  scope_.spawn([](ClusterManager& self) -> asio::awaitable<void> {
    Status st = co_await self.replica_->run();
    self.replica_done_.set();
    if (!self.stopping_ && !self.leader_ && !st.is_ok()) {
      self.fail(Status(st.code(), "the store replica stopped following etcd: " + st.message()));
    }
  }(*this));

  // A follower until elected.
  server_.control().set_gate([this](std::string_view method) -> std::optional<Status> {
    if (method == "SetManagers") {
      return Status(StatusCode::failed_precondition,
                    "the manager list is the managers registered in etcd (--store etcd): start or "
                    "stop a manager to change it");
    }
    if (leader_) return std::nullopt;
    const cluster::Membership* m = membership();
    if (!m || m->leader.node_id.empty()) {
      return Status(StatusCode::unavailable,
                    "this manager is not the leader and no leader is elected yet: try again");
    }
    return Status(StatusCode::failed_precondition,
                  "this manager is not the leader: send operator calls to the leader, " +
                      m->leader.node_id + " at " + m->leader.addr);
  });
  auto fence = co_await member_->campaign(&server_done);
  if (!fence) {
    if (fence.error().code() == StatusCode::cancelled) co_return Status::ok();
    co_return fence.error();
  }
  log::info("elected leader (fence revision {}); catching up with etcd", fence->create_revision);
  if (Status st = co_await replica_->wait_revision(fence->create_revision,
                                                   etcd::Clock::now() + options_.catch_up_timeout);
      !st.is_ok()) {
    co_return Status(st.code(), "elected, but the store replica did not reach revision " +
                                    std::to_string(fence->create_revision) + ": " + st.message());
  }
  // From here on this manager writes the store; nothing else may.
  replica_->stop();
  co_await replica_done_.wait();
  // What the last leader left half-written in etcd (it died between the transactions of one
  // write): this store never applied it, so etcd gets these objects back as the store has them.
  const auto unfinished = replica_->unfinished();

  // The first leader of a new cluster writes the store's first state.
  if (store.index() == 0) {
    Status st = co_await cluster::write_all(*client_, options_.prefix, store.capture(), *fence);
    // FAILED_PRECONDITION: a store is there already (one written at index 0), which the replica
    // has applied: nothing to seed.
    if (!st.is_ok() && st.code() != StatusCode::failed_precondition) {
      co_return Status(st.code(), "cannot write the first store to etcd: " + st.message());
    }
  }
  journal_ = std::make_unique<cluster::EtcdJournal>(*client_, store, options_.prefix, *fence);
  store.set_journal(journal_.get());
  if (!unfinished.empty()) {
    log::warn(
        "the last leader left a store write unfinished in etcd ({} objects): writing them "
        "back as of store index {}",
        unfinished.size(), store.index());
    journal_->rewrite(unfinished);
  }
  scope_.spawn([](ClusterManager& self) -> asio::awaitable<void> {
    Status st = co_await self.journal_->run();
    self.journal_done_.set();
    if (!st.is_ok()) {
      self.fail(Status(st.code(), "store writes to etcd failed: " + st.message()));
    }
  }(*this));
  leader_ = true;
  ++terms_;
  fence_revision_ = fence->create_revision;
  fence_ = *fence;
  server_.forwarder().set_leader(std::nullopt);
  publish_managers();
  server_.start_dispatcher();
  log::info("leading the cluster: the Dispatcher runs here (store index {})", store.index());

  Status lost = co_await member_->hold(*fence_, &server_done);
  if (lost.code() == StatusCode::cancelled) co_return Status::ok();  // graceful stop: run() leaves
  leader_ = false;
  co_return Status(lost.code(), "lost the leadership: " + lost.message());
}

}  // namespace dispatchd::app
