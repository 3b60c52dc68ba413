// The store in etcd (src/cluster) against a real etcd (Debian's etcd-server, one member): load and
// seed, the leader's EtcdJournal (group commit, chunking, fencing, a dead etcd) and a follower's
// Replica. Skipped only when /usr/bin/etcd is missing.

#include "dispatchd/cluster/etcd_store.hpp"

#include <google/protobuf/io/coded_stream.h>
#include <google/protobuf/io/zero_copy_stream_impl_lite.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <asio/co_spawn.hpp>
#include <asio/detached.hpp>
#include <asio/io_context.hpp>
#include <functional>
#include <optional>
#include <set>

#include "dispatchd/cluster/etcd_journal.hpp"
#include "dispatchd/cluster/replica.hpp"
#include "support/drive.hpp"
#include "support/etcd_cluster.hpp"

namespace {

namespace api = docker::swarmkit::v1;
namespace cluster = dispatchd::cluster;
namespace etcd = dispatchd::etcd;
namespace store = dispatchd::store;
namespace pb = etcdserverpb;
using dispatchd::Status;
using dispatchd::StatusCode;
using dispatchd::test::EtcdCluster;
using store::EventKind;
using store::ObjectType;
using namespace std::chrono_literals;
using SteadyClock = std::chrono::steady_clock;
using Lines = std::vector<std::string>;

const std::string kPrefix = "/dispatchd/";
const std::string kLeader = kPrefix + "leader";

api::Node node(const std::string& id, api::NodeStatus::State state = api::NodeStatus::READY) {
  api::Node n;
  n.set_id(id);
  n.mutable_status()->set_state(state);
  return n;
}

api::Task task(const std::string& id, const std::string& node_id,
               api::TaskState state = api::ASSIGNED) {
  api::Task t;
  t.set_id(id);
  t.set_node_id(node_id);
  t.mutable_status()->set_state(state);
  return t;
}

// A snapshot in a form that compares equal when the contents are: lists sorted by ID, no
// manager list (it is not stored in etcd).
std::string canonical(dispatchd::state::v1::StoreSnapshot s) {
  s.clear_managers();
  auto by_id = [](auto* list) {
    std::sort(list->begin(), list->end(),
              [](const auto& a, const auto& b) { return a.id() < b.id(); });
  };
  by_id(s.mutable_nodes());
  by_id(s.mutable_tasks());
  by_id(s.mutable_secrets());
  by_id(s.mutable_configs());
  by_id(s.mutable_volumes());
  std::string out;
  google::protobuf::io::StringOutputStream os(&out);
  google::protobuf::io::CodedOutputStream cos(&os);
  cos.SetSerializationDeterministic(true);
  s.SerializeToCodedStream(&cos);
  cos.Trim();
  return out;
}

// What a watcher saw: "<kind> <type> <id>".
struct Recorder : store::Watcher {
  Lines seen;
  std::vector<store::Event> events;
  void on_event(const store::Event& e) override {
    const char* kind = e.kind == EventKind::create   ? "create"
                       : e.kind == EventKind::update ? "update"
                                                     : "remove";
    std::string id;
    if (e.type == ObjectType::node) id = e.as<api::Node>().id();
    if (e.type == ObjectType::task) id = e.as<api::Task>().id();
    if (e.type == ObjectType::cluster) id = e.as<api::Cluster>().id();
    seen.push_back(std::string(kind) + " " + store::object_type_name(e.type) + " " + id);
    events.push_back(e);
  }
};

class EtcdStoreTest : public ::testing::Test {
 protected:
  void start(etcd::ClientOptions options = {}, std::size_t members = 1) {
    if (!EtcdCluster::available()) GTEST_SKIP() << EtcdCluster::kBinary << " is not installed";
    cluster_ = std::make_unique<EtcdCluster>(members);
    ASSERT_TRUE(cluster_->started()) << cluster_->error();
    if (options.endpoints.empty()) options.endpoints = cluster_->endpoints();
    auto c = etcd::Client::create(wheel_, std::move(options));
    ASSERT_TRUE(c) << c.error().message();
    client_ = std::move(*c);
    fence_ = become_leader("m1");
  }

  // Creates the leader key (absent) and returns the fence on it.
  cluster::Fence become_leader(const std::string& id) {
    auto r = run(client_->put_if_mod_revision(kLeader, id, 0));
    EXPECT_TRUE(r && r->succeeded());
    return cluster::Fence{kLeader, r ? r->header().revision() : 0};
  }

  template <class T>
  T run(asio::awaitable<T> a, std::chrono::seconds limit = 30s) {
    return dispatchd::test::drive(io_, std::move(a), limit);
  }

  bool run_until(const std::function<bool()>& done, std::chrono::seconds limit = 30s) {
    return dispatchd::test::drive_until(io_, done, limit);
  }

  // A long-running coroutine (a journal's or replica's run()). Declared after the object it
  // runs, it stops it and waits for it to end when the test leaves its scope.
  class Running {
   public:
    Running(EtcdStoreTest& t, std::function<void()> stop) : t_(t), stop_(std::move(stop)) {}
    Running(const Running&) = delete;
    Running& operator=(const Running&) = delete;
    ~Running() {
      if (result->has_value()) return;
      stop_();
      EXPECT_TRUE(t_.run_until([&] { return result->has_value(); })) << "did not end";
    }
    bool done() const { return result->has_value(); }
    const Status& status() const { return **result; }
    std::shared_ptr<std::optional<Status>> result = std::make_shared<std::optional<Status>>();

   private:
    EtcdStoreTest& t_;
    std::function<void()> stop_;
  };

  std::unique_ptr<Running> spawn(asio::awaitable<Status> a, std::function<void()> stop) {
    auto r = std::make_unique<Running>(*this, std::move(stop));
    asio::co_spawn(io_, std::move(a), [slot = r->result](std::exception_ptr e, Status st) {
      *slot = e ? Status(StatusCode::internal, "exception") : st;
    });
    return r;
  }
  std::unique_ptr<Running> spawn_journal(cluster::EtcdJournal& j) {
    return spawn(j.run(), [&j] { j.stop(); });
  }
  std::unique_ptr<Running> spawn_replica(cluster::Replica& r) {
    return spawn(r.run(), [&r] { r.stop(); });
  }

  Status commit(store::Store& s, const std::function<Status(store::WriteTx&)>& f) {
    Status st = s.update(f);
    if (!st.is_ok()) return st;
    return run(s.wait_durable(s.index()));
  }

  // A leader's store seeded into etcd, with its journal attached.
  void seed(store::Store& s) {
    Status st = run(cluster::write_all(*client_, kPrefix, s.capture(), fence_));
    ASSERT_TRUE(st.is_ok()) << st.message();
  }

  std::optional<std::string> value(const std::string& key) {
    auto r = run(client_->range(key));
    EXPECT_TRUE(r) << r.error().message();
    if (!r || r->kvs_size() == 0) return std::nullopt;
    return r->kvs(0).value();
  }

  cluster::Loaded load_ok(std::int64_t page_size = 1000) {
    auto l = run(cluster::load(*client_, kPrefix, page_size));
    EXPECT_TRUE(l) << l.error().message();
    return l ? *l : cluster::Loaded{};
  }

  asio::io_context io_{1};
  dispatchd::co::TimerWheel wheel_{io_};
  std::unique_ptr<EtcdCluster> cluster_;
  std::unique_ptr<etcd::Client> client_;
  cluster::Fence fence_{};
};

// ---- Layout and decoding (no etcd) ----------------------------------------------------------

TEST(EtcdStoreKeysTest, KeysFollowTheSharedLayout) {
  EXPECT_EQ(cluster::object_key("/p/", ObjectType::node, "n1"), "/p/o/node/n1");
  EXPECT_EQ(cluster::object_key("/p/", ObjectType::cluster, "org"), "/p/o/cluster/org");
  EXPECT_EQ(cluster::index_key("/p/"), "/p/index");
  auto k = cluster::parse_key("/p/", "/p/o/volume/v/1");
  ASSERT_TRUE(k);
  EXPECT_EQ(k->kind, cluster::StoredKey::object);
  EXPECT_EQ(k->type, ObjectType::volume);
  EXPECT_EQ(k->id, "v/1");
  EXPECT_EQ(cluster::parse_key("/p/", "/p/index")->kind, cluster::StoredKey::index);
  EXPECT_EQ(cluster::partial_key("/p/"), "/p/partial");
  EXPECT_EQ(cluster::parse_key("/p/", "/p/partial")->kind, cluster::StoredKey::partial);
  EXPECT_EQ(cluster::parse_key("/p/", "/p/leader")->kind, cluster::StoredKey::other);
  EXPECT_EQ(cluster::parse_key("/p/", "/p/managers/m1")->kind, cluster::StoredKey::other);
  EXPECT_EQ(cluster::parse_key("/p/", "/p/o/gadget/x").error().code(), StatusCode::data_loss);
  EXPECT_EQ(cluster::parse_key("/p/", "/p/o/node/").error().code(), StatusCode::data_loss);
  EXPECT_EQ(cluster::decode_index("12x", "/p/index").error().code(), StatusCode::data_loss);
  EXPECT_EQ(*cluster::decode_index("12", "/p/index"), 12u);
  auto other_id = node("n2").SerializeAsString();
  auto d = cluster::decode_object(ObjectType::node, "n1", other_id, "/p/o/node/n1");
  ASSERT_FALSE(d);
  EXPECT_EQ(d.error().code(), StatusCode::data_loss);
  EXPECT_NE(d.error().message().find("/p/o/node/n1"), std::string::npos) << d.error().message();
}

TEST(EtcdStoreKeysTest, ChunksKeepToTheOpAndByteLimitsWithRoomForTheIndex) {
  std::vector<cluster::KeyWrite> w;
  for (int i = 0; i < 10; ++i)
    w.push_back({"k" + std::to_string(i), std::string(100, 'x')});
  auto by_ops = cluster::chunk_writes(w, {.max_ops = 5, .max_bytes = 1u << 20});
  ASSERT_EQ(by_ops.size(), 4u);  // 3 + 3 + 3 + 1, each leaving two places for the bookkeeping
  EXPECT_EQ(by_ops[0].size(), 3u);
  EXPECT_EQ(by_ops[3].size(), 1u);
  // Cut: `P partial` opens the first part; the last writes `P index` and removes `P partial`.
  cluster::add_bookkeeping(by_ops, "/p/", 7, /*clear_partial=*/false);
  ASSERT_EQ(by_ops[0].size(), 4u);
  EXPECT_EQ(by_ops[0].back().key, "/p/partial");
  EXPECT_EQ(by_ops[0].back().value, "7");
  ASSERT_EQ(by_ops[3].size(), 3u);
  EXPECT_EQ(by_ops[3][1].key, "/p/index");
  EXPECT_EQ(by_ops[3][1].value, "7");
  EXPECT_EQ(by_ops[3][2].key, "/p/partial");
  EXPECT_FALSE(by_ops[3][2].value) << "removed";
  for (const auto& c : by_ops)
    EXPECT_LE(c.size(), 5u);
  // Whole: `P index` alone, plus the removal of `P partial` only when asked.
  auto one = cluster::chunk_writes({{"k", "v"}}, {});
  cluster::add_bookkeeping(one, "/p/", 8, /*clear_partial=*/false);
  ASSERT_EQ(one.size(), 1u);
  ASSERT_EQ(one[0].size(), 2u);
  EXPECT_EQ(one[0][1].key, "/p/index");
  auto first = cluster::chunk_writes({{"k", "v"}}, {});
  cluster::add_bookkeeping(first, "/p/", 8, /*clear_partial=*/true);
  ASSERT_EQ(first[0].size(), 3u);
  EXPECT_EQ(first[0][2].key, "/p/partial");
  EXPECT_FALSE(first[0][2].value);
  auto by_bytes = cluster::chunk_writes(w, {.max_ops = 128, .max_bytes = 300});
  EXPECT_EQ(by_bytes.size(), 5u);  // two writes of ~120 bytes fit in 300
  EXPECT_EQ(cluster::chunk_writes({}, {}).size(), 1u) << "an index-only batch is one transaction";
  auto huge =
      cluster::chunk_writes({{"big", std::string(1000, 'x')}}, {.max_ops = 8, .max_bytes = 10});
  EXPECT_EQ(huge.size(), 1u) << "an object above the byte limit still goes, alone";
}

// ---- Load, seed, journal ---------------------------------------------------------------------

TEST_F(EtcdStoreTest, EmptyPrefixLoadsEmptyAndSeedingTwiceIsRefused) {
  start();
  auto l = load_ok();
  EXPECT_TRUE(l.empty);
  EXPECT_GT(l.revision, 0);
  store::Store s("org");
  ASSERT_TRUE(s.update([](store::WriteTx& tx) { return tx.create(node("n1")); }).is_ok());
  seed(s);
  auto again = run(cluster::write_all(*client_, kPrefix, s.capture(), fence_));
  EXPECT_EQ(again.code(), StatusCode::failed_precondition) << again.message();
  auto loaded = load_ok();
  EXPECT_FALSE(loaded.empty);
  EXPECT_EQ(loaded.snapshot.index(), s.index());
  EXPECT_EQ(canonical(loaded.snapshot), canonical(s.snapshot()));
}

TEST_F(EtcdStoreTest, JournalRoundTripLoadsTheSameObjectsAndIndex) {
  start();
  store::Store leader("org");
  seed(leader);
  cluster::EtcdJournal journal(*client_, leader, kPrefix, fence_);
  leader.set_journal(&journal);
  auto ended = spawn_journal(journal);

  for (int i = 0; i < 5; ++i) {
    ASSERT_TRUE(commit(leader, [&](store::WriteTx& tx) {
                  return tx.create(node("n" + std::to_string(i)));
                }).is_ok());
  }
  ASSERT_TRUE(commit(leader, [](store::WriteTx& tx) {
                Status st = tx.create(task("t1", "n1"));
                if (st.is_ok()) st = tx.create(task("t2", "n2"));
                api::Secret sec;
                sec.set_id("s1");
                sec.mutable_spec()->set_data("secret data");
                if (st.is_ok()) st = tx.create(sec);
                api::Config cfg;
                cfg.set_id("c1");
                if (st.is_ok()) st = tx.create(cfg);
                api::Volume vol;
                vol.set_id("v1");
                if (st.is_ok()) st = tx.create(vol);
                tx.set_managers({});
                return st;
              }).is_ok());
  ASSERT_TRUE(commit(leader, [](store::WriteTx& tx) {
                Status st = tx.update(task("t1", "n1", api::RUNNING));
                if (st.is_ok()) st = tx.remove_node("n4");
                auto c = *tx.cluster();
                (*c.mutable_spec()->mutable_annotations()->mutable_labels())["tier"] = "gold";
                if (st.is_ok()) st = tx.update(c);
                return st;
              }).is_ok());
  ASSERT_TRUE(commit(leader, [](store::WriteTx& tx) {
                tx.set_managers({});  // only the manager list: the index still moves in etcd
                return Status::ok();
              }).is_ok());

  EXPECT_EQ(value(kPrefix + "index"), std::to_string(leader.index()));
  EXPECT_FALSE(value(kPrefix + "o/node/n4")) << "removed";
  EXPECT_FALSE(value(kPrefix + "o/managers/")) << "the manager list is not stored";

  auto loaded = load_ok(2);  // paged: several ranges at one revision
  EXPECT_FALSE(loaded.empty);
  EXPECT_EQ(loaded.snapshot.index(), leader.index());
  EXPECT_EQ(canonical(loaded.snapshot), canonical(leader.snapshot()));
  store::Store fresh("org");
  ASSERT_TRUE(fresh.restore(loaded.snapshot).is_ok());
  EXPECT_EQ(fresh.index(), leader.index());
  EXPECT_EQ(canonical(fresh.snapshot()), canonical(leader.snapshot()));
  auto t1 = fresh.view([](const store::ReadTx& tx) { return tx.task("t1"); });
  ASSERT_TRUE(t1);
  EXPECT_EQ(t1->status().state(), api::RUNNING);
  EXPECT_EQ(
      t1->meta().version().index(),
      leader.view([](const store::ReadTx& tx) { return tx.task("t1"); })->meta().version().index());

  EXPECT_GE(journal.stats().txns, 4u);
  EXPECT_EQ(journal.stats().failures, 0u);
  EXPECT_GT(journal.stats().bytes, 0u);
  EXPECT_FALSE(ended->done());
  journal.stop();
  ASSERT_TRUE(run_until([&] { return ended->done(); }));
  EXPECT_TRUE(ended->status().is_ok()) << ended->status().message();
}

TEST_F(EtcdStoreTest, GroupCommitMergesCommitsLastWriteWinsAndDeleteAfterPut) {
  start();
  store::Store leader("org");
  ASSERT_TRUE(
      leader.update([](store::WriteTx& tx) { return tx.create(task("gone", "n1")); }).is_ok());
  seed(leader);
  cluster::EtcdJournal journal(*client_, leader, kPrefix, fence_);
  leader.set_journal(&journal);
  auto running = spawn_journal(journal);
  ASSERT_TRUE(value(kPrefix + "o/task/gone"));

  // Fifty commits in one synchronous step: the writer has not run yet, so they are one batch.
  for (int i = 0; i < 10; ++i) {
    ASSERT_TRUE(
        leader.update([&](store::WriteTx& tx) { return tx.create(node("n" + std::to_string(i))); })
            .is_ok());
  }
  for (int i = 0; i < 38; ++i) {
    ASSERT_TRUE(leader
                    .update([&](store::WriteTx& tx) {
                      return tx.update(
                          node("n1", i % 2 ? api::NodeStatus::DOWN : api::NodeStatus::READY));
                    })
                    .is_ok());
  }
  ASSERT_TRUE(
      leader.update([](store::WriteTx& tx) { return tx.update(task("gone", "n2", api::RUNNING)); })
          .is_ok());
  ASSERT_TRUE(leader.update([](store::WriteTx& tx) { return tx.remove_task("gone"); }).is_ok());
  EXPECT_EQ(journal.queued_keys(), 11u) << "ten nodes and one task, each once";
  const auto txns_before = journal.stats().txns;
  const auto index = leader.index();
  Status durable = run(leader.wait_durable(index));
  ASSERT_TRUE(durable.is_ok()) << durable.message();

  EXPECT_EQ(journal.stats().txns - txns_before, 1u) << "fifty commits, one transaction";
  EXPECT_EQ(journal.stats().commits, 50u);
  EXPECT_EQ(value(kPrefix + "index"), std::to_string(index));
  EXPECT_FALSE(value(kPrefix + "o/task/gone")) << "an update then a removal: deleted";
  auto n1 = value(kPrefix + "o/node/n1");
  ASSERT_TRUE(n1);
  api::Node stored;
  ASSERT_TRUE(stored.ParseFromString(*n1));
  EXPECT_EQ(stored.status().state(), api::NodeStatus::DOWN) << "the last write wins";
  EXPECT_EQ(
      stored.meta().version().index(),
      leader.view([](const store::ReadTx& tx) { return tx.node("n1"); })->meta().version().index());

  // A removal then a create of the same ID in one batch: the object is there.
  ASSERT_TRUE(leader.update([](store::WriteTx& tx) { return tx.remove_node("n2"); }).is_ok());
  ASSERT_TRUE(
      leader.update([](store::WriteTx& tx) { return tx.create(node("n2", api::NodeStatus::DOWN)); })
          .is_ok());
  ASSERT_TRUE(run(leader.wait_durable(leader.index())).is_ok());
  auto n2 = value(kPrefix + "o/node/n2");
  ASSERT_TRUE(n2);
  ASSERT_TRUE(stored.ParseFromString(*n2));
  EXPECT_EQ(stored.status().state(), api::NodeStatus::DOWN);
}

TEST_F(EtcdStoreTest, CommitsDuringATransactionJoinTheNextOne) {
  start();
  store::Store leader("org");
  seed(leader);
  cluster::EtcdJournal journal(*client_, leader, kPrefix, fence_);
  leader.set_journal(&journal);
  auto running = spawn_journal(journal);

  // 200 writers, each committing in its own io turn and waiting for its commit: while one
  // transaction is in flight the others queue, so there are far fewer transactions than commits.
  constexpr int kWriters = 200;
  int acknowledged = 0;
  for (int i = 0; i < kWriters; ++i) {
    asio::co_spawn(
        io_,
        [&, i]() -> asio::awaitable<void> {
          const std::string id = "n" + std::to_string(i % 20);
          Status st = leader.update([&](store::WriteTx& tx) {
            return tx.node(id) ? tx.update(node(id, api::NodeStatus::DOWN)) : tx.create(node(id));
          });
          if (st.is_ok()) st = co_await leader.wait_durable(leader.index());
          if (st.is_ok()) ++acknowledged;
        },
        asio::detached);
  }
  ASSERT_TRUE(run_until([&] { return acknowledged == kWriters; }));
  EXPECT_EQ(journal.stats().commits, static_cast<std::uint64_t>(kWriters));
  EXPECT_LT(journal.stats().txns, static_cast<std::uint64_t>(kWriters / 4))
      << "group commit: " << journal.stats().txns << " transactions";
  EXPECT_GE(journal.stats().txns, 1u);
  EXPECT_EQ(value(kPrefix + "index"), std::to_string(leader.index()));
  EXPECT_EQ(canonical(load_ok().snapshot), canonical(leader.snapshot()));
}

TEST_F(EtcdStoreTest, BatchesAreCutToTheOpLimitAndOnlyTheLastChunkWritesTheIndex) {
  start();
  store::Store leader("org");
  seed(leader);
  const auto seeded_at = run(client_->range(kPrefix + "index"))->header().revision();
  cluster::EtcdJournalOptions o;
  o.limits.max_ops = 4;
  cluster::EtcdJournal journal(*client_, leader, kPrefix, fence_, o);
  leader.set_journal(&journal);
  auto running = spawn_journal(journal);

  for (int i = 0; i < 10; ++i) {
    ASSERT_TRUE(
        leader.update([&](store::WriteTx& tx) { return tx.create(node("n" + std::to_string(i))); })
            .is_ok());
  }
  Status durable = run(leader.wait_durable(leader.index()));
  ASSERT_TRUE(durable.is_ok()) << durable.message();
  EXPECT_EQ(journal.stats().txns, 5u) << "ten objects by two";
  EXPECT_EQ(journal.stats().ops, 13u)
      << "plus `P partial` put first, `P index` and its removal last";

  // etcd's history: five revisions, `P index` only in the last one, `P partial` from the first
  // to the last.
  auto w = run(client_->watch(
      {.key = kPrefix, .range_end = etcd::prefix_end(kPrefix), .start_revision = seeded_at + 1}));
  ASSERT_TRUE(w) << w.error().message();
  std::vector<std::int64_t> revisions, index_revisions, partial_puts, partial_removals;
  std::size_t events = 0;
  while (events < 13) {
    auto r = run((*w)->next());
    ASSERT_TRUE(r) << r.error().message();
    for (const auto& ev : r->events()) {
      ++events;
      if (revisions.empty() || revisions.back() != ev.kv().mod_revision())
        revisions.push_back(ev.kv().mod_revision());
      if (ev.kv().key() == kPrefix + "index") index_revisions.push_back(ev.kv().mod_revision());
      if (ev.kv().key() == kPrefix + "partial") {
        (ev.type() == mvccpb::Event::DELETE ? partial_removals : partial_puts)
            .push_back(ev.kv().mod_revision());
      }
    }
  }
  (*w)->cancel();
  EXPECT_EQ(revisions.size(), 5u);
  ASSERT_EQ(index_revisions.size(), 1u);
  EXPECT_EQ(index_revisions[0], revisions.back());
  EXPECT_EQ(partial_puts, std::vector<std::int64_t>{revisions.front()});
  EXPECT_EQ(partial_removals, std::vector<std::int64_t>{revisions.back()});
  EXPECT_FALSE(value(kPrefix + "partial"));
  EXPECT_EQ(canonical(load_ok().snapshot), canonical(leader.snapshot()));
}

TEST_F(EtcdStoreTest, BatchesAreCutByBytesAndSeedingIsChunkedToo) {
  start();
  store::Store leader("org");
  ASSERT_TRUE(leader
                  .update([](store::WriteTx& tx) {
                    for (int i = 0; i < 20; ++i) {
                      api::Secret s;
                      s.set_id("s" + std::to_string(i));
                      s.mutable_spec()->set_data(std::string(1000, 'a' + i % 26));
                      if (auto st = tx.create(s); !st.is_ok()) return st;
                    }
                    return Status::ok();
                  })
                  .is_ok());
  Status st = run(cluster::write_all(*client_, kPrefix, leader.capture(), fence_, {.max_ops = 6}));
  ASSERT_TRUE(st.is_ok()) << st.message();
  EXPECT_EQ(canonical(load_ok().snapshot), canonical(leader.snapshot()));
  EXPECT_FALSE(value(kPrefix + "partial")) << "the seed's last part removes it";

  cluster::EtcdJournalOptions o;
  o.limits.max_bytes = 2500;  // two 1 KB secrets a transaction
  cluster::EtcdJournal journal(*client_, leader, kPrefix, fence_, o);
  leader.set_journal(&journal);
  auto running = spawn_journal(journal);
  ASSERT_TRUE(leader
                  .update([](store::WriteTx& tx) {
                    for (int i = 0; i < 10; ++i) {
                      api::Secret s;
                      s.set_id("s" + std::to_string(i));
                      s.mutable_spec()->set_data(std::string(1000, 'z'));
                      if (auto st = tx.update(s); !st.is_ok()) return st;
                    }
                    return Status::ok();
                  })
                  .is_ok());
  ASSERT_TRUE(run(leader.wait_durable(leader.index())).is_ok());
  EXPECT_EQ(journal.stats().txns, 5u);
  EXPECT_EQ(canonical(load_ok().snapshot), canonical(leader.snapshot()));
}

// Records each event with the store's index at the time it was published.
struct IndexRecorder : Recorder {
  explicit IndexRecorder(const store::Store& s) : store(s) {}
  void on_event(const store::Event& e) override {
    Recorder::on_event(e);
    at_index.push_back(store.index());
  }
  const store::Store& store;
  std::vector<std::uint64_t> at_index;
};

TEST_F(EtcdStoreTest, AWriteCutIntoSeveralTransactionsReachesAFollowerAsOne) {
  start();
  store::Store leader("org");
  ASSERT_TRUE(leader.update([](store::WriteTx& tx) { return tx.create(node("n0")); }).is_ok());
  seed(leader);
  store::Store follower("org");
  auto loaded = load_ok();
  EXPECT_FALSE(loaded.unfinished);
  ASSERT_TRUE(follower.restore(loaded.snapshot).is_ok());
  cluster::Replica replica(*client_, follower, kPrefix, loaded.revision);
  IndexRecorder nodes(follower);
  follower.watch(nodes, {ObjectType::node, ""});
  auto following = spawn_replica(replica);

  cluster::EtcdJournalOptions o;
  o.limits.max_ops = 4;  // two objects a transaction
  cluster::EtcdJournal journal(*client_, leader, kPrefix, fence_, o);
  leader.set_journal(&journal);
  auto running = spawn_journal(journal);
  const std::uint64_t before = leader.index();
  Status st = commit(leader, [](store::WriteTx& tx) {
    for (int i = 1; i <= 6; ++i) {
      if (Status c = tx.create(node("n" + std::to_string(i))); !c.is_ok()) return c;
    }
    return tx.remove_node("n0");
  });
  ASSERT_TRUE(st.is_ok()) << st.message();
  EXPECT_EQ(journal.stats().txns, 4u) << "seven objects by two";

  auto index_kv = run(client_->range(kPrefix + "index"));
  ASSERT_TRUE(index_kv && index_kv->kvs_size() == 1);
  Status waited =
      run(replica.wait_revision(index_kv->kvs(0).mod_revision(), etcd::Clock::now() + 10s));
  ASSERT_TRUE(waited.is_ok()) << waited.message();
  EXPECT_EQ(nodes.seen,
            (Lines{"create node n1", "create node n2", "create node n3", "create node n4",
                   "create node n5", "create node n6", "remove node n0"}));
  // Published at once, with the last part: no event at the old index.
  EXPECT_EQ(nodes.at_index, std::vector<std::uint64_t>(7, leader.index()));
  EXPECT_GT(leader.index(), before);
  EXPECT_EQ(replica.stats().held, 3u);
  EXPECT_TRUE(replica.unfinished().empty());
  EXPECT_EQ(canonical(follower.snapshot()), canonical(leader.snapshot()));
}

TEST_F(EtcdStoreTest, AWriteADeadLeaderLeftHalfDoneIsNotReadAndTheNextLeaderWritesItBack) {
  start();
  store::Store leader("org");
  ASSERT_TRUE(leader
                  .update([](store::WriteTx& tx) {
                    Status st = tx.create(node("n0"));
                    if (st.is_ok()) st = tx.create(task("t0", "n0"));
                    return st;
                  })
                  .is_ok());
  seed(leader);
  const std::string whole = canonical(leader.snapshot());
  // The first part of a write cut in several, and then its leader died: `P partial`, n0 changed,
  // n9 created, t0 removed; no `P index`.
  {
    std::vector<pb::RequestOp> ops;
    ops.push_back(etcd::op_put(kPrefix + "partial", "99"));
    ops.push_back(etcd::op_put(cluster::object_key(kPrefix, ObjectType::node, "n0"),
                               node("n0", api::NodeStatus::DOWN).SerializeAsString()));
    ops.push_back(etcd::op_put(cluster::object_key(kPrefix, ObjectType::node, "n9"),
                               node("n9").SerializeAsString()));
    ops.push_back(etcd::op_delete(cluster::object_key(kPrefix, ObjectType::task, "t0")));
    auto r = run(client_->txn(std::vector<pb::Compare>(), std::move(ops)));
    ASSERT_TRUE(r && r->succeeded());
  }
  const auto now = run(client_->range(kPrefix + "index"))->header().revision();

  // A manager starting now reads the store as it was before that write.
  auto loaded = load_ok();
  EXPECT_TRUE(loaded.unfinished);
  EXPECT_EQ(loaded.revision, now - 1);
  EXPECT_EQ(canonical(loaded.snapshot), whole);
  // Its replica sees the part, and holds it.
  store::Store follower("org"), other("org");
  ASSERT_TRUE(follower.restore(loaded.snapshot).is_ok());
  ASSERT_TRUE(other.restore(loaded.snapshot).is_ok());
  cluster::Replica replica(*client_, follower, kPrefix, loaded.revision);
  cluster::Replica other_replica(*client_, other, kPrefix, loaded.revision);
  Recorder seen;
  follower.watch(seen, {ObjectType::node, ""});
  follower.watch(seen, {ObjectType::task, ""});
  auto following = spawn_replica(replica);
  auto other_following = spawn_replica(other_replica);
  ASSERT_TRUE(run(replica.wait_revision(now, etcd::Clock::now() + 10s)).is_ok());
  EXPECT_TRUE(seen.seen.empty()) << "nothing of an unfinished write is published";
  EXPECT_EQ(canonical(follower.snapshot()), whole);
  std::set<std::string> held;
  for (const auto& o : replica.unfinished())
    held.insert(std::string(store::object_type_name(o.type)) + " " + o.id);
  EXPECT_EQ(held, (std::set<std::string>{"node n0", "node n9", "task t0"}));

  // The dead leader's key goes; this manager wins and writes back what it holds.
  ASSERT_TRUE(run(client_->delete_range(kLeader)));
  const cluster::Fence fence = become_leader("m2");
  replica.stop();
  ASSERT_TRUE(run_until([&] { return following->done(); }));
  const auto unfinished = replica.unfinished();
  cluster::EtcdJournal journal(*client_, follower, kPrefix, fence);
  follower.set_journal(&journal);
  journal.rewrite(unfinished);
  auto running = spawn_journal(journal);
  ASSERT_TRUE(run_until([&] { return journal.stats().batches == 1; }));
  EXPECT_EQ(journal.stats().txns, 1u);
  EXPECT_EQ(journal.stats().ops, 5u) << "three objects, `P index`, the removal of `P partial`";

  EXPECT_FALSE(value(kPrefix + "partial"));
  auto after = load_ok();
  EXPECT_FALSE(after.unfinished);
  EXPECT_EQ(canonical(after.snapshot), whole);
  // A follower that held the part publishes the whole: the store as it was.
  auto index_kv = run(client_->range(kPrefix + "index"));
  ASSERT_TRUE(index_kv && index_kv->kvs_size() == 1);
  ASSERT_TRUE(
      run(other_replica.wait_revision(index_kv->kvs(0).mod_revision(), etcd::Clock::now() + 10s))
          .is_ok());
  EXPECT_TRUE(other_replica.unfinished().empty());
  EXPECT_EQ(canonical(other.snapshot()), whole);
}

TEST_F(EtcdStoreTest, FencedOffJournalFailsAbortedAndWritesNothing) {
  start();
  store::Store leader("org");
  seed(leader);
  cluster::EtcdJournal journal(*client_, leader, kPrefix, fence_);
  leader.set_journal(&journal);
  auto ended = spawn_journal(journal);
  ASSERT_TRUE(commit(leader, [](store::WriteTx& tx) { return tx.create(node("before")); }).is_ok());

  // Another manager takes over: the leader key is deleted and created again.
  ASSERT_TRUE(run(client_->delete_range(kLeader)));
  auto other = become_leader("m2");
  ASSERT_NE(other.create_revision, fence_.create_revision);
  const auto index_before = value(kPrefix + "index");

  ASSERT_TRUE(leader.update([](store::WriteTx& tx) { return tx.create(node("after")); }).is_ok());
  Status st = run(leader.wait_durable(leader.index()));
  EXPECT_EQ(st.code(), StatusCode::aborted) << st.message();
  EXPECT_EQ(st.message(), "no longer the leader");
  ASSERT_TRUE(run_until([&] { return ended->done(); }));
  EXPECT_EQ(ended->status().code(), StatusCode::aborted);
  EXPECT_FALSE(value(kPrefix + "o/node/after"));
  EXPECT_EQ(value(kPrefix + "index"), index_before);
  EXPECT_EQ(journal.failure()->code(), StatusCode::aborted);
  // Later waits fail the same way.
  EXPECT_EQ(run(leader.wait_durable(leader.index() + 1)).code(), StatusCode::aborted);

  // And a deposed leader cannot seed either.
  store::Store another("org");
  EXPECT_EQ(run(cluster::write_all(*client_, "/other/", another.capture(), fence_)).code(),
            StatusCode::aborted);
}

TEST_F(EtcdStoreTest, KilledEtcdFailsTheJournalUnavailableWithinTheDeadline) {
  start({.dial_timeout = 300ms, .request_timeout = 1000ms});
  store::Store leader("org");
  seed(leader);
  cluster::EtcdJournalOptions o;
  o.retry_deadline = 1500ms;
  cluster::EtcdJournal journal(*client_, leader, kPrefix, fence_, o);
  leader.set_journal(&journal);
  auto ended = spawn_journal(journal);
  ASSERT_TRUE(commit(leader, [](store::WriteTx& tx) { return tx.create(node("n1")); }).is_ok());

  cluster_->kill(0);
  const auto t0 = SteadyClock::now();
  ASSERT_TRUE(leader.update([](store::WriteTx& tx) { return tx.create(node("n2")); }).is_ok());
  Status st = run(leader.wait_durable(leader.index()), 10s);
  const auto took = SteadyClock::now() - t0;
  EXPECT_EQ(st.code(), StatusCode::unavailable) << st.message();
  EXPECT_GE(took, 1400ms) << "retried until the deadline";
  EXPECT_LT(took, 3500ms) << "the deadline plus at most one attempt's timeout";
  ASSERT_TRUE(run_until([&] { return ended->done(); }, 5s));
  EXPECT_EQ(ended->status().code(), StatusCode::unavailable);
  EXPECT_GE(journal.stats().failures, 2u);
}

// ---- Replica ---------------------------------------------------------------------------------

TEST_F(EtcdStoreTest, ReplicaFollowsTheLeaderWithEventsInOrder) {
  start();
  store::Store leader("org");
  ASSERT_TRUE(leader.update([](store::WriteTx& tx) { return tx.create(node("n0")); }).is_ok());
  seed(leader);
  cluster::EtcdJournal journal(*client_, leader, kPrefix, fence_);
  leader.set_journal(&journal);
  auto running = spawn_journal(journal);

  store::Store follower("org");
  auto loaded = load_ok();
  ASSERT_TRUE(follower.restore(loaded.snapshot).is_ok());
  cluster::Replica replica(*client_, follower, kPrefix, loaded.revision);
  EXPECT_EQ(replica.revision(), loaded.revision);
  Recorder nodes, tasks_of_n1, clusters;
  follower.watch(nodes, {ObjectType::node, ""});
  follower.watch(tasks_of_n1, {ObjectType::task, "n1"});
  follower.watch(clusters, {ObjectType::cluster, ""});
  auto ended = spawn_replica(replica);

  ASSERT_TRUE(commit(leader, [](store::WriteTx& tx) { return tx.create(node("n1")); }).is_ok());
  ASSERT_TRUE(commit(leader, [](store::WriteTx& tx) {
                return tx.update(node("n1", api::NodeStatus::DOWN));
              }).is_ok());
  ASSERT_TRUE(commit(leader, [](store::WriteTx& tx) {
                Status st = tx.create(task("t1", "n1"));
                if (st.is_ok()) st = tx.remove_node("n0");
                return st;
              }).is_ok());
  ASSERT_TRUE(commit(leader, [](store::WriteTx& tx) { return tx.remove_task("t1"); }).is_ok());
  ASSERT_TRUE(commit(leader, [](store::WriteTx& tx) {
                auto c = *tx.cluster();
                c.mutable_spec()->mutable_annotations()->set_name("default");
                return tx.update(c);
              }).is_ok());
  auto index_kv = run(client_->range(kPrefix + "index"));
  ASSERT_TRUE(index_kv && index_kv->kvs_size() == 1);
  const auto last = index_kv->kvs(0).mod_revision();

  Status waited = run(replica.wait_revision(last, etcd::Clock::now() + 10s));
  ASSERT_TRUE(waited.is_ok()) << waited.message();
  EXPECT_GE(replica.revision(), last);
  EXPECT_EQ(nodes.seen, (Lines{"create node n1", "update node n1", "remove node n0"}));
  EXPECT_EQ(tasks_of_n1.seen, (Lines{"create task t1", "remove task t1"}));
  EXPECT_EQ(clusters.seen, (Lines{"update cluster org"}));
  EXPECT_EQ(follower.index(), leader.index());
  EXPECT_EQ(canonical(follower.snapshot()), canonical(leader.snapshot()))
      << "same objects, meta as the leader stamped it";

  // A revision nobody writes: the wait ends at its deadline, not before, not never.
  const auto t0 = SteadyClock::now();
  Status late = run(replica.wait_revision(last + 1000, etcd::Clock::now() + 300ms));
  EXPECT_EQ(late.code(), StatusCode::deadline_exceeded) << late.message();
  EXPECT_GE(SteadyClock::now() - t0, 290ms);
  EXPECT_FALSE(ended->done());
  replica.stop();
  ASSERT_TRUE(run_until([&] { return ended->done(); }));
  EXPECT_TRUE(ended->status().is_ok()) << ended->status().message();
  EXPECT_EQ(run(replica.wait_revision(last + 1000, etcd::Clock::now() + 10s)).code(),
            StatusCode::cancelled);
}

TEST_F(EtcdStoreTest, ReplicaSurvivesManyRevisions) {
  start();
  store::Store leader("org");
  seed(leader);
  store::Store follower("org");
  auto loaded = load_ok();
  ASSERT_TRUE(follower.restore(loaded.snapshot).is_ok());
  cluster::Replica replica(*client_, follower, kPrefix, loaded.revision);
  Recorder tasks;
  follower.watch(tasks, {ObjectType::task, ""});
  auto following = spawn_replica(replica);

  cluster::EtcdJournal journal(*client_, leader, kPrefix, fence_);
  leader.set_journal(&journal);
  auto running = spawn_journal(journal);
  // Waited one by one, so that every commit is its own revision and its own event.
  constexpr int kCommits = 600;
  for (int i = 0; i < kCommits; ++i) {
    const std::string id = "t" + std::to_string(i % 40);
    Status st = commit(leader, [&](store::WriteTx& tx) {
      if (i < 40) return tx.create(task(id, "n" + std::to_string(i % 7)));
      if (i % 97 == 0) return tx.remove_task(id);
      if (!tx.task(id)) return tx.create(task(id, "n1"));
      return tx.update(task(id, "n" + std::to_string(i % 7), api::RUNNING));
    });
    ASSERT_TRUE(st.is_ok()) << st.message();
  }
  auto index_kv = run(client_->range(kPrefix + "index"));
  ASSERT_TRUE(index_kv && index_kv->kvs_size() == 1);
  Status waited =
      run(replica.wait_revision(index_kv->kvs(0).mod_revision(), etcd::Clock::now() + 20s));
  ASSERT_TRUE(waited.is_ok()) << waited.message();
  EXPECT_EQ(tasks.seen.size(), static_cast<std::size_t>(kCommits)) << "one event per commit";
  EXPECT_EQ(replica.stats().revisions, static_cast<std::uint64_t>(kCommits));
  EXPECT_EQ(follower.index(), leader.index());
  EXPECT_EQ(canonical(follower.snapshot()), canonical(leader.snapshot()));
}

TEST_F(EtcdStoreTest, ReplicaWatchesAgainThroughAnotherMemberWhenItsMemberDies) {
  // Three members; the leader writes through members 1 and 2, the follower first watches
  // through member 0, which then dies.
  etcd::ClientOptions o;
  o.dial_timeout = 500ms;
  start(o, 3);
  if (IsSkipped() || HasFatalFailure()) return;
  o.endpoints = {cluster_->endpoint(0), cluster_->endpoint(1), cluster_->endpoint(2)};
  auto fc = etcd::Client::create(wheel_, o);
  ASSERT_TRUE(fc);
  auto follower_client = std::move(*fc);
  o.endpoints = {cluster_->endpoint(1), cluster_->endpoint(2)};
  auto lc = etcd::Client::create(wheel_, o);
  ASSERT_TRUE(lc);
  auto leader_client = std::move(*lc);

  store::Store leader("org");
  seed(leader);
  cluster::EtcdJournalOptions jo;
  jo.retry_deadline = 15s;  // etcd may have to elect a new raft leader
  cluster::EtcdJournal journal(*leader_client, leader, kPrefix, fence_, jo);
  leader.set_journal(&journal);
  auto running = spawn_journal(journal);

  store::Store follower("org");
  auto loaded = run(cluster::load(*follower_client, kPrefix));
  ASSERT_TRUE(loaded) << loaded.error().message();
  ASSERT_TRUE(follower.restore(loaded->snapshot).is_ok());
  cluster::ReplicaOptions ro;
  ro.retry_deadline = 15s;
  cluster::Replica replica(*follower_client, follower, kPrefix, loaded->revision, ro);
  Recorder nodes;
  follower.watch(nodes, {ObjectType::node, ""});
  auto following = spawn_replica(replica);

  for (int i = 0; i < 20; ++i) {
    ASSERT_TRUE(commit(leader, [&](store::WriteTx& tx) {
                  return tx.create(node("a" + std::to_string(i)));
                }).is_ok());
  }
  ASSERT_TRUE(run_until([&] { return nodes.seen.size() == 20; }));
  cluster_->kill(0);
  for (int i = 0; i < 20; ++i) {
    Status st = commit(
        leader, [&](store::WriteTx& tx) { return tx.create(node("b" + std::to_string(i))); });
    ASSERT_TRUE(st.is_ok()) << st.message();
  }
  auto head = run(leader_client->range(kPrefix + "index"));
  ASSERT_TRUE(head && head->kvs_size() == 1);
  Status waited = run(replica.wait_revision(head->kvs(0).mod_revision(), etcd::Clock::now() + 20s));
  ASSERT_TRUE(waited.is_ok()) << waited.message();
  EXPECT_GE(replica.stats().rewatches, 1u);
  EXPECT_EQ(nodes.seen.size(), 40u) << "every change once, none lost or doubled across the rewatch";
  EXPECT_EQ(std::set<std::string>(nodes.seen.begin(), nodes.seen.end()).size(), 40u);
  EXPECT_EQ(canonical(follower.snapshot()), canonical(leader.snapshot()));
  EXPECT_EQ(follower.index(), leader.index());
}

TEST_F(EtcdStoreTest, ReplicaReportsCompactionAndCorruptValues) {
  start();
  store::Store leader("org");
  seed(leader);
  auto loaded = load_ok();
  // The leader goes on, and etcd compacts past where the follower read.
  for (int i = 0; i < 3; ++i)
    ASSERT_TRUE(run(client_->put(kPrefix + "o/node/n" + std::to_string(i),
                                 node("n" + std::to_string(i)).SerializeAsString())));
  auto head = run(client_->range(kPrefix + "index"));
  ASSERT_TRUE(head);
  ASSERT_TRUE(run(client_->compact(head->header().revision())));
  {
    store::Store follower("org");
    ASSERT_TRUE(follower.restore(loaded.snapshot).is_ok());
    cluster::Replica replica(*client_, follower, kPrefix, loaded.revision);
    auto ended = spawn_replica(replica);
    ASSERT_TRUE(run_until([&] { return ended->done(); }));
    EXPECT_EQ(ended->status().code(), StatusCode::out_of_range) << ended->status().message();
  }
  // A value that is no object: DATA_LOSS naming the key, for the replica and for load().
  auto now = load_ok();
  store::Store follower("org");
  ASSERT_TRUE(follower.restore(now.snapshot).is_ok());
  cluster::Replica replica(*client_, follower, kPrefix, now.revision);
  auto ended = spawn_replica(replica);
  ASSERT_TRUE(run(client_->put(kPrefix + "o/task/bad", "\xff\xff not protobuf")));
  ASSERT_TRUE(run_until([&] { return ended->done(); }));
  EXPECT_EQ(ended->status().code(), StatusCode::data_loss) << ended->status().message();
  EXPECT_NE(ended->status().message().find(kPrefix + "o/task/bad"), std::string::npos)
      << ended->status().message();
  auto l = run(cluster::load(*client_, kPrefix));
  ASSERT_FALSE(l);
  EXPECT_EQ(l.error().code(), StatusCode::data_loss);
  EXPECT_NE(l.error().message().find(kPrefix + "o/task/bad"), std::string::npos);
}

TEST_F(EtcdStoreTest, AnUnfinishedWriteWhoseStartWasCompactedIsReportedOnLoad) {
  start();
  store::Store leader("org");
  seed(leader);
  ASSERT_TRUE(run(client_->put(kPrefix + "partial", "5")));
  auto head = run(client_->range(kPrefix + "partial"));
  ASSERT_TRUE(head);
  ASSERT_TRUE(run(client_->compact(head->header().revision())));
  auto l = run(cluster::load(*client_, kPrefix));
  ASSERT_FALSE(l);
  EXPECT_EQ(l.error().code(), StatusCode::out_of_range);
  EXPECT_NE(l.error().message().find("unfinished write"), std::string::npos) << l.error().message();
}

}  // namespace
