#pragma once
// A real three-member etcd (Debian's etcd-server) and helpers to drive cluster::Member and
// cluster::ManagerWatch coroutines on one io_context. Each manager gets its own etcd::Client, as
// separate processes would. Skipped only when /usr/bin/etcd is missing.

#include <gtest/gtest.h>

#include <asio/co_spawn.hpp>
#include <asio/io_context.hpp>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "dispatchd/cluster/manager_watch.hpp"
#include "dispatchd/cluster/member.hpp"
#include "support/drive.hpp"
#include "support/etcd_cluster.hpp"

namespace dispatchd::test {

using namespace std::chrono_literals;

class ClusterTest : public ::testing::Test {
 protected:
  using SteadyClock = std::chrono::steady_clock;

  // One manager: its own etcd client, its Member, and what its coroutines returned.
  struct Manager {
    std::unique_ptr<etcd::Client> client;
    std::unique_ptr<cluster::Member> member;
    std::optional<Status> ran;
    std::optional<cluster::Result<cluster::Fence>> campaigned;
    std::optional<Status> held;
    co::Event cancel;
  };

  void SetUp() override {
    if (!EtcdCluster::available()) GTEST_SKIP() << EtcdCluster::kBinary << " is not installed";
    etcd_ = std::make_unique<EtcdCluster>(3);
    ASSERT_TRUE(etcd_->started()) << etcd_->error();
  }

  // Stops whatever a failed test left running, so no coroutine outlives what it points to.
  void TearDown() override {
    for (auto& m : managers_) {
      m->cancel.set();
      if (m->member) m->member->stop();
    }
    for (auto& w : watches_)
      w->stop();
    EXPECT_TRUE(run_until([&] { return pending_ == 0; }, 20s)) << pending_ << " coroutines left";
  }

  std::unique_ptr<etcd::Client> make_client() {
    etcd::ClientOptions o;
    o.endpoints = etcd_->endpoints();
    o.request_timeout = 3000ms;
    auto c = etcd::Client::create(wheel_, std::move(o));
    EXPECT_TRUE(c) << c.error().message();
    return c ? std::move(*c) : nullptr;
  }

  Manager& add_manager(const std::string& node_id, std::chrono::seconds ttl = 5s) {
    auto m = std::make_unique<Manager>();
    m->client = make_client();
    cluster::MemberOptions o;
    o.prefix = kPrefix;
    o.node_id = node_id;
    o.advertise_addr = addr_of(node_id);
    o.ttl = ttl;
    m->member = std::make_unique<cluster::Member>(*m->client, std::move(o));
    managers_.push_back(std::move(m));
    return *managers_.back();
  }
  static std::string addr_of(const std::string& node_id) { return node_id + ".example:4242"; }

  // Joins and keeps the lease alive (run() in the background).
  void start(Manager& m) {
    spawn(m.member->run(), m.ran);
    ASSERT_TRUE(run_until([&] { return m.member->joined() || m.ran.has_value(); }))
        << "join did not finish";
    ASSERT_TRUE(m.member->joined()) << m.ran->message();
  }
  void campaign(Manager& m) {
    m.campaigned.reset();
    spawn(m.member->campaign(&m.cancel), m.campaigned);
  }
  void hold(Manager& m, const cluster::Fence& f) {
    m.held.reset();
    spawn(m.member->hold(f, &m.cancel), m.held);
  }

  cluster::ManagerWatch& add_watch(std::function<void(const cluster::Membership&)> on_change) {
    watch_clients_.push_back(make_client());
    cluster::ManagerWatchOptions o;
    o.prefix = kPrefix;
    o.on_change = std::move(on_change);
    watches_.push_back(std::make_unique<cluster::ManagerWatch>(*watch_clients_.back(), o));
    auto& w = *watches_.back();
    watch_results_.push_back(std::make_unique<std::optional<Status>>());
    spawn(w.run(), *watch_results_.back());
    return w;
  }

  template <class T>
  void spawn(asio::awaitable<T> a, std::optional<T>& out) {
    ++pending_;
    asio::co_spawn(io_, std::move(a), [this, &out](std::exception_ptr e, T v) {
      --pending_;
      if (e) std::rethrow_exception(e);
      out = std::move(v);
    });
  }

  // Drives the io_context until the coroutine finishes (bounded).
  template <class T>
  T run(asio::awaitable<T> a, std::chrono::seconds limit = 30s) {
    std::optional<T> out;
    spawn(std::move(a), out);
    if (!run_until([&] { return out.has_value(); }, limit)) {
      throw std::runtime_error("coroutine did not finish in time");
    }
    return std::move(*out);
  }

  // Drives the io_context until `done` holds; false at the limit.
  bool run_until(const std::function<bool()>& done, std::chrono::seconds limit = 30s) {
    return dispatchd::test::drive_until(io_, done, limit);
  }

  // A write fenced by `f`, as the store's leader writes: did etcd apply it?
  std::optional<bool> fenced_write(etcd::Client& c, const cluster::Fence& f,
                                   const std::string& value) {
    std::vector<etcd::pb::Compare> fenced{cluster::fence_compare(f)};
    std::vector<etcd::pb::RequestOp> write{etcd::op_put(std::string(kPrefix) + "o/node/n1", value)};
    auto r = run(c.txn(std::move(fenced), std::move(write)));
    if (!r) return std::nullopt;
    return r->succeeded();
  }

  // The etcd member a client is connected to (or will connect to next).
  std::size_t etcd_member_of(const etcd::Client& c) const {
    for (std::size_t i = 0; i < etcd_->size(); ++i)
      if (etcd_->endpoint(i) == c.current_endpoint().authority()) return i;
    ADD_FAILURE() << "no etcd member at " << c.current_endpoint().authority();
    return 0;
  }

  static constexpr const char* kPrefix = "/test/";

  asio::io_context io_{1};
  co::TimerWheel wheel_{io_};
  std::size_t pending_ = 0;
  std::unique_ptr<EtcdCluster> etcd_;
  std::vector<std::unique_ptr<Manager>> managers_;
  std::vector<std::unique_ptr<etcd::Client>> watch_clients_;
  std::vector<std::unique_ptr<cluster::ManagerWatch>> watches_;
  std::vector<std::unique_ptr<std::optional<Status>>> watch_results_;
};

}  // namespace dispatchd::test
