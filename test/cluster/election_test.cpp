// cluster::Member: membership and leader election against a real three-member etcd.

#include <gtest/gtest.h>

#include "cluster_fixture.hpp"
#include "dispatchd/cluster/member.hpp"

namespace dispatchd::test {
namespace {

using cluster::Fence;
namespace api = ::docker::swarmkit::v1;

class ElectionTest : public ClusterTest {
 protected:
  // Starts managers a, b, c and a campaign for each; returns the one that won.
  Manager* elect_among_three() {
    for (const char* id : {"a", "b", "c"}) {
      auto& m = add_manager(id);
      start(m);
      if (HasFatalFailure()) return nullptr;
    }
    for (auto& m : managers_)
      campaign(*m);
    return wait_winner();
  }

  // Waits for one of the campaigning managers to win; it must be the only one.
  Manager* wait_winner() {
    EXPECT_TRUE(run_until([&] { return winners() >= 1; })) << "nobody won";
    Manager* winner = nullptr;
    for (auto& m : managers_) {
      if (m->campaigned && m->campaigned->has_value()) winner = m.get();
    }
    return winner;
  }

  int winners() const {
    int n = 0;
    for (const auto& m : managers_)
      n += m->campaigned && m->campaigned->has_value() ? 1 : 0;
    return n;
  }

  // Ends a campaign that is still running (it returns CANCELLED).
  void cancel(Manager& m) {
    m.cancel.set();
    ASSERT_TRUE(run_until([&] { return m.campaigned.has_value() || !m.member; }));
  }
};

TEST_F(ElectionTest, ExactlyOneOfThreeCandidatesWins) {
  Manager* winner = elect_among_three();
  ASSERT_NE(winner, nullptr);
  const Fence fence = **winner->campaigned;
  EXPECT_EQ(fence.key, std::string(kPrefix) + "leader");

  // etcd agrees: the leader key holds the winner's ID on the winner's lease, since `fence`.
  auto& probe = *managers_[0]->client;
  auto key = run(probe.range(fence.key));
  ASSERT_TRUE(key) << key.error().message();
  ASSERT_EQ(key->kvs_size(), 1);
  EXPECT_EQ(key->kvs(0).value(), winner->member->options().node_id);
  EXPECT_EQ(key->kvs(0).lease(), winner->member->lease_id());
  EXPECT_EQ(key->kvs(0).create_revision(), fence.create_revision);
  // Both others tried and are now waiting on the key (a write by the winner in between gives
  // them a full round trip to have wrongly won).
  EXPECT_EQ(fenced_write(*winner->client, fence, "x"), std::optional<bool>(true));
  EXPECT_EQ(winners(), 1);
  for (auto& m : managers_) {
    if (m.get() != winner) cancel(*m);
  }
  for (auto& m : managers_) {
    if (m.get() == winner) continue;
    ASSERT_FALSE(m->campaigned->has_value());
    EXPECT_EQ(m->campaigned->error().code(), StatusCode::cancelled);
  }
}

TEST_F(ElectionTest, ResignHandsOverAndTheOldFenceFails) {
  Manager* first = elect_among_three();
  ASSERT_NE(first, nullptr);
  const Fence old = **first->campaigned;
  hold(*first, old);
  auto& writer = *first->client;
  ASSERT_EQ(fenced_write(writer, old, "first"), std::optional<bool>(true));

  ASSERT_TRUE(run(first->member->resign(old)).is_ok());
  // Its own hold() sees the leadership go.
  ASSERT_TRUE(run_until([&] { return first->held.has_value(); }, 10s));
  EXPECT_EQ(first->held->code(), StatusCode::aborted) << first->held->message();
  first->campaigned.reset();

  // One of the other two wins at once (no TTL to wait for).
  auto t0 = SteadyClock::now();
  Manager* second = wait_winner();
  ASSERT_NE(second, nullptr);
  ASSERT_NE(second, first);
  EXPECT_LT(SteadyClock::now() - t0, 3s);
  const Fence next = **second->campaigned;
  EXPECT_GT(next.create_revision, old.create_revision);
  // A real fenced transaction: the deposed leader's fails, the new leader's passes.
  EXPECT_EQ(fenced_write(writer, old, "deposed"), std::optional<bool>(false));
  EXPECT_EQ(fenced_write(*second->client, next, "second"), std::optional<bool>(true));
  auto v = run(writer.range(std::string(kPrefix) + "o/node/n1"));
  ASSERT_TRUE(v);
  EXPECT_EQ(v->kvs(0).value(), "second");
  EXPECT_FALSE(run(first->member->resign(old)).is_ok());  // not its to resign any more

  // The new leader's Member stops: its lease is revoked and the third manager wins.
  hold(*second, next);
  second->member->stop();
  ASSERT_TRUE(run_until([&] { return second->ran.has_value(); }, 10s));
  EXPECT_TRUE(second->ran->is_ok()) << second->ran->message();
  ASSERT_TRUE(run_until([&] { return second->held.has_value(); }, 10s));
  EXPECT_NE(second->held->code(), StatusCode::ok);
  second->campaigned.reset();
  t0 = SteadyClock::now();
  Manager* third = wait_winner();
  ASSERT_NE(third, nullptr);
  EXPECT_NE(third, first);
  EXPECT_NE(third, second);
  EXPECT_LT(SteadyClock::now() - t0, 3s);  // revoked, not expired
  EXPECT_EQ(fenced_write(writer, next, "deposed again"), std::optional<bool>(false));
  EXPECT_EQ(fenced_write(*third->client, **third->campaigned, "third"), std::optional<bool>(true));
  // A stopped member campaigns no more.
  auto again = run(second->member->campaign());
  ASSERT_FALSE(again);
  EXPECT_EQ(again.error().code(), StatusCode::failed_precondition);
}

TEST_F(ElectionTest, LeaderWhoseLeaseIsRevokedBehindItsBackSeesHoldEnd) {
  Manager* leader = elect_among_three();
  ASSERT_NE(leader, nullptr);
  const Fence fence = **leader->campaigned;
  hold(*leader, fence);
  // Still holding after a round trip.
  ASSERT_EQ(fenced_write(*leader->client, fence, "v"), std::optional<bool>(true));
  EXPECT_FALSE(leader->held.has_value());

  Manager* other = leader == managers_[0].get() ? managers_[1].get() : managers_[0].get();
  auto revoked = run(other->client->lease_revoke(leader->member->lease_id()));
  ASSERT_TRUE(revoked) << revoked.error().message();
  ASSERT_TRUE(run_until([&] { return leader->held.has_value(); }, 10s));
  EXPECT_NE(leader->held->code(), StatusCode::ok);
  // Its keeper hears the lease is gone: the member is gone too.
  ASSERT_TRUE(run_until([&] { return leader->ran.has_value(); }, 10s));
  EXPECT_EQ(leader->ran->code(), StatusCode::not_found) << leader->ran->message();
  EXPECT_TRUE(leader->member->gone());
  EXPECT_EQ(fenced_write(*leader->client, fence, "late"), std::optional<bool>(false));
  auto again = run(leader->member->campaign());
  ASSERT_FALSE(again);
  EXPECT_EQ(again.error().code(), StatusCode::not_found);
  leader->campaigned.reset();
  Manager* next = wait_winner();
  ASSERT_NE(next, nullptr);
  EXPECT_NE(next, leader);
}

TEST_F(ElectionTest, CampaignKeepsTheLeaderKeyItAlreadyHolds) {
  auto& a = add_manager("a");
  // Joined, not kept alive: a process that is about to restart.
  ASSERT_TRUE(run(a.member->join()).is_ok());
  auto won = run(a.member->campaign());
  ASSERT_TRUE(won) << won.error().message();
  // Campaigning again keeps the key rather than waiting for itself.
  auto again = run(a.member->campaign());
  ASSERT_TRUE(again) << again.error().message();
  EXPECT_EQ(again->create_revision, won->create_revision);

  // The restarted process resumes the lease of its earlier run: still the leader, same fence.
  auto client = make_client();
  cluster::MemberOptions o = a.member->options();
  o.resume_lease = a.member->lease_id();
  cluster::Member restarted(*client, o);
  ASSERT_TRUE(run(restarted.join()).is_ok());
  EXPECT_EQ(restarted.lease_id(), a.member->lease_id());
  auto kept = run(restarted.campaign());
  ASSERT_TRUE(kept) << kept.error().message();
  EXPECT_EQ(kept->create_revision, won->create_revision);
  EXPECT_EQ(fenced_write(*client, *kept, "v"), std::optional<bool>(true));

  // Another manager with the same node ID on another lease is not the leader.
  auto& impostor = add_manager("a");
  start(impostor);
  campaign(impostor);
  EXPECT_EQ(fenced_write(*client, *kept, "v2"), std::optional<bool>(true));
  EXPECT_FALSE(impostor.campaigned.has_value());
  cancel(impostor);
  EXPECT_EQ(impostor.campaigned->error().code(), StatusCode::cancelled);
  restarted.stop();
  EXPECT_TRUE(run(restarted.run()).is_ok());  // revokes the lease
}

TEST_F(ElectionTest, LeaderKeepsLeadershipWhenItsEtcdMemberIsKilled) {
  const auto ttl = 3s;
  for (const char* id : {"a", "b"}) {
    auto& m = add_manager(id, ttl);
    start(m);
    ASSERT_FALSE(HasFatalFailure());
  }
  Manager& leader = *managers_[0];
  campaign(leader);
  ASSERT_TRUE(run_until([&] { return leader.campaigned.has_value(); }));
  ASSERT_TRUE(*leader.campaigned) << leader.campaigned->error().message();
  const Fence fence = **leader.campaigned;
  Manager& follower = *managers_[1];
  campaign(follower);
  hold(leader, fence);
  ASSERT_EQ(fenced_write(*leader.client, fence, "before"), std::optional<bool>(true));

  auto killed = etcd_member_of(*leader.client);
  etcd_->kill(killed);
  // The leader's writes reach the cluster again through another member (writes are never
  // retried by the client, so the test retries until one lands).
  std::optional<bool> written;
  ASSERT_TRUE(run_until(
      [&] {
        written = fenced_write(*leader.client, fence, "after");
        return written.has_value();
      },
      20s));
  EXPECT_TRUE(*written) << "the fence no longer held after the etcd member died";
  EXPECT_NE(etcd_member_of(*leader.client), killed);
  // For two TTLs after the kill the lease is renewed through another member: the leader still
  // holds and nobody else wins. (A bounded window in which nothing may happen.)
  EXPECT_FALSE(run_until(
      [&] {
        return leader.held.has_value() || leader.ran.has_value() || follower.campaigned.has_value();
      },
      ttl * 2));
  EXPECT_FALSE(leader.held.has_value()) << leader.held->message();
  EXPECT_FALSE(leader.ran.has_value()) << leader.ran->message();
  EXPECT_FALSE(follower.campaigned.has_value());
  EXPECT_EQ(fenced_write(*leader.client, fence, "later"), std::optional<bool>(true));

  // And the hand-over still works on the surviving members.
  leader.member->stop();
  ASSERT_TRUE(run_until([&] { return follower.campaigned.has_value(); }, 10s));
  ASSERT_TRUE(*follower.campaigned) << follower.campaigned->error().message();
  EXPECT_EQ(fenced_write(*follower.client, **follower.campaigned, "new"),
            std::optional<bool>(true));
  EXPECT_EQ(fenced_write(*follower.client, fence, "old"), std::optional<bool>(false));
}

TEST_F(ElectionTest, JoinAndRunTogetherRegisterOnceOnOneLease) {
  auto& a = add_manager("a");
  std::optional<Status> joined;
  spawn(a.member->run(), a.ran);
  spawn(a.member->join(), joined);
  ASSERT_TRUE(run_until([&] { return joined.has_value(); }));
  ASSERT_TRUE(joined->is_ok()) << joined->message();
  EXPECT_FALSE(a.ran.has_value());
  auto key = run(a.client->range(cluster::manager_key(kPrefix, "a")));
  ASSERT_TRUE(key) << key.error().message();
  ASSERT_EQ(key->kvs_size(), 1);
  EXPECT_EQ(key->kvs(0).lease(), a.member->lease_id());
  EXPECT_EQ(key->kvs(0).version(), 1);  // written once
  api::WeightedPeer peer;
  ASSERT_TRUE(peer.ParseFromString(key->kvs(0).value()));
  EXPECT_EQ(peer.peer().node_id(), "a");
  EXPECT_EQ(peer.peer().addr(), addr_of("a"));
  EXPECT_EQ(peer.weight(), 10);
  // Stopping revokes the lease: the key is gone at once.
  a.member->stop();
  ASSERT_TRUE(run_until([&] { return a.ran.has_value(); }));
  EXPECT_TRUE(a.ran->is_ok()) << a.ran->message();
  auto gone = run(a.client->range(cluster::manager_key(kPrefix, "a")));
  ASSERT_TRUE(gone);
  EXPECT_EQ(gone->kvs_size(), 0);
}

TEST_F(ElectionTest, LeaderCutOffFromQuorumStepsDownWithinItsTtl) {
  auto& a = add_manager("a", 2s);
  start(a);
  campaign(a);
  ASSERT_TRUE(run_until([&] { return a.campaigned.has_value(); }));
  ASSERT_TRUE(*a.campaigned) << a.campaigned->error().message();
  hold(a, **a.campaigned);
  ASSERT_EQ(fenced_write(*a.client, **a.campaigned, "v"), std::optional<bool>(true));
  // Two of three etcd members die: no quorum, no renewal can succeed.
  etcd_->kill(1);
  etcd_->kill(2);
  auto t0 = SteadyClock::now();
  ASSERT_TRUE(run_until([&] { return a.ran.has_value() && a.held.has_value(); }, 10s));
  // The member presumes its lease expired once its TTL passed without a renewal, and with it
  // the leadership: the daemon steps down before etcd could have let another manager in.
  EXPECT_EQ(a.ran->code(), StatusCode::deadline_exceeded) << a.ran->message();
  EXPECT_EQ(a.held->code(), StatusCode::deadline_exceeded) << a.held->message();
  EXPECT_TRUE(a.member->gone());
  EXPECT_LE(SteadyClock::now() - t0, a.member->lease_ttl() + 1s);
}

}  // namespace
}  // namespace dispatchd::test
