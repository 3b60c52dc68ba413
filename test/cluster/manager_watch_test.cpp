// cluster::ManagerWatch: the live manager list and the leader, against a real three-member etcd.

#include "dispatchd/cluster/manager_watch.hpp"

#include <gtest/gtest.h>

#include "cluster_fixture.hpp"

namespace dispatchd::test {
namespace {

class ManagerWatchTest : public ClusterTest {
 protected:
  // Every manager list the watch reported, as "id@addr" lists.
  cluster::ManagerWatch& watch_reporting() {
    return add_watch([this](const cluster::Membership& m) {
      reported_.push_back(ids(m.managers));
      leaders_.push_back(m.leader);
    });
  }

  static std::vector<std::string> ids(const store::ManagerList& l) {
    std::vector<std::string> out;
    for (const auto& p : l) {
      out.push_back(p.peer().node_id() + "@" + p.peer().addr() + "/" + std::to_string(p.weight()));
    }
    return out;
  }
  static std::string peer(const std::string& id) { return id + "@" + addr_of(id) + "/10"; }

  // Waits (bounded) until the watch reports `want`.
  bool wait_list(cluster::ManagerWatch& w, const std::vector<std::string>& want,
                 std::chrono::seconds limit = 10s) {
    return run_until([&] { return w.ready() && ids(w.current().managers) == want; }, limit);
  }

  std::vector<std::vector<std::string>> reported_;
  std::vector<cluster::LeaderInfo> leaders_;
};

TEST_F(ManagerWatchTest, SeesJoinLeaveAndDeathOnce) {
  auto& w = watch_reporting();
  ASSERT_TRUE(run_until([&] { return w.ready(); }));
  EXPECT_TRUE(w.current().managers.empty());

  auto& b = add_manager("b");
  start(b);
  ASSERT_TRUE(wait_list(w, {peer("b")}));
  auto& a = add_manager("a");
  start(a);
  ASSERT_TRUE(wait_list(w, {peer("a"), peer("b")}));  // sorted by node ID

  // Leaving: the lease is revoked, the list drops it at once.
  auto t0 = SteadyClock::now();
  b.member->stop();
  ASSERT_TRUE(wait_list(w, {peer("a")}));
  EXPECT_LT(SteadyClock::now() - t0, 3s);
  ASSERT_TRUE(run_until([&] { return b.ran.has_value(); }));
  EXPECT_TRUE(b.ran->is_ok());

  // Dying: c registers on a 1 s lease that nobody renews (its process died right after).
  auto& c = add_manager("c", 1s);
  ASSERT_TRUE(run(c.member->join()).is_ok());
  ASSERT_TRUE(wait_list(w, {peer("a"), peer("c")}));
  auto seen = w.changes();
  t0 = SteadyClock::now();
  // Waits on the watch itself, bounded: etcd expires the lease within its TTL (plus a check).
  co::Event cancel;
  std::optional<bool> changed;
  spawn(w.wait_change(seen, &cancel), changed);
  ASSERT_TRUE(run_until([&] { return changed.has_value(); }, 10s));
  ASSERT_TRUE(*changed);
  EXPECT_EQ(ids(w.current().managers), std::vector<std::string>{peer("a")});
  EXPECT_GE(SteadyClock::now() - t0 + 100ms, c.member->lease_ttl() / 2);

  // Each change reported once, in order.
  std::vector<std::vector<std::string>> want{
      {}, {peer("b")}, {peer("a"), peer("b")}, {peer("a")}, {peer("a"), peer("c")}, {peer("a")}};
  EXPECT_EQ(reported_, want);
  EXPECT_EQ(w.resyncs(), 0u);
  // A stopped watch ends its waiters.
  w.stop();
  std::optional<bool> after_stop;
  spawn(w.wait_change(w.changes(), nullptr), after_stop);
  ASSERT_TRUE(run_until([&] { return after_stop.has_value(); }));
  EXPECT_FALSE(*after_stop);
}

TEST_F(ManagerWatchTest, FollowsTheLeaderAndItsAddress) {
  auto& w = watch_reporting();
  auto& a = add_manager("a");
  auto& b = add_manager("b");
  start(a);
  start(b);
  ASSERT_TRUE(wait_list(w, {peer("a"), peer("b")}));
  EXPECT_TRUE(w.current().leader.node_id.empty());

  campaign(a);
  ASSERT_TRUE(run_until([&] { return a.campaigned.has_value(); }));
  ASSERT_TRUE(*a.campaigned);
  ASSERT_TRUE(run_until([&] { return w.current().leader.node_id == "a"; }));
  EXPECT_EQ(w.current().leader.addr, addr_of("a"));
  EXPECT_EQ(w.current().leader.create_revision, (*a.campaigned)->create_revision);
  // The one-shot read agrees.
  auto now = run(cluster::read_membership(*b.client, kPrefix));
  ASSERT_TRUE(now) << now.error().message();
  EXPECT_EQ(now->leader, w.current().leader);
  EXPECT_EQ(ids(now->managers), ids(w.current().managers));

  campaign(b);
  ASSERT_TRUE(run(a.member->resign(**a.campaigned)).is_ok());
  ASSERT_TRUE(run_until([&] { return b.campaigned.has_value(); }));
  ASSERT_TRUE(*b.campaigned);
  ASSERT_TRUE(run_until([&] { return w.current().leader.node_id == "b"; }));
  EXPECT_EQ(w.current().leader.addr, addr_of("b"));
  // Leaders reported: none, a, none (resigned), b.
  std::vector<std::string> seq;
  for (const auto& l : leaders_) {
    if (seq.empty() || seq.back() != l.node_id) seq.push_back(l.node_id);
  }
  EXPECT_EQ(seq, (std::vector<std::string>{"", "a", "", "b"}));
}

TEST_F(ManagerWatchTest, SurvivesTheEtcdMemberItWatchesThroughBeingKilled) {
  auto& a = add_manager("a", 2s);
  auto& b = add_manager("b", 2s);
  start(a);
  start(b);
  auto& w = watch_reporting();
  ASSERT_TRUE(wait_list(w, {peer("a"), peer("b")}));

  etcd_->kill(etcd_member_of(*watch_clients_.back()));
  // The watch fails, reads the list again elsewhere (unchanged: nothing reported) and watches
  // again; a manager leaving afterwards is seen.
  ASSERT_TRUE(run_until([&] { return w.resyncs() >= 1; }, 15s));
  b.member->stop();
  ASSERT_TRUE(wait_list(w, {peer("a")}, 15s));
  // a's lease lives on through the surviving members.
  EXPECT_FALSE(a.ran.has_value()) << a.ran->message();
  auto& c = add_manager("c", 2s);
  start(c);
  ASSERT_TRUE(wait_list(w, {peer("a"), peer("c")}));
  EXPECT_EQ(reported_, (std::vector<std::vector<std::string>>{
                           {peer("a"), peer("b")}, {peer("a")}, {peer("a"), peer("c")}}));
}

}  // namespace
}  // namespace dispatchd::test
