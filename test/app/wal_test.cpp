// The write-ahead log on its own (src/app/wal.cpp): what is appended comes back in a fresh
// store, batches group commits, damage is cut or refused, snapshots prune, and a log that cannot
// write fails the waits for it.

#include "dispatchd/app/wal.hpp"

#include <gtest/gtest.h>
#include <sys/stat.h>

#include <asio/co_spawn.hpp>
#include <asio/detached.hpp>
#include <filesystem>
#include <fstream>
#include <optional>

#include "support/drive.hpp"

namespace {

namespace api = docker::swarmkit::v1;
namespace fs = std::filesystem;
using dispatchd::Status;
using dispatchd::StatusCode;
using dispatchd::app::prune_wal;
using dispatchd::app::recover_wal;
using dispatchd::app::Wal;
using dispatchd::app::wal_segments;
using dispatchd::store::Store;
using dispatchd::store::WriteTx;

struct TempDir {
  TempDir() {
    char tmpl[] = "/tmp/dispatchd-wal-XXXXXX";
    path = ::mkdtemp(tmpl);
  }
  ~TempDir() { fs::remove_all(path); }
  std::string path;
};

api::Node node(const std::string& id, const std::string& label = "") {
  api::Node n;
  n.set_id(id);
  if (!label.empty()) (*n.mutable_spec()->mutable_annotations()->mutable_labels())["l"] = label;
  return n;
}

api::Task task(const std::string& id, const std::string& node_id) {
  api::Task t;
  t.set_id(id);
  t.set_node_id(node_id);
  return t;
}

class WalTest : public ::testing::Test {
 protected:
  // Runs the io_context until the store says `index` is durable (or the log failed).
  void wait_durable(Store& s, Wal& w) {
    const auto index = s.index();
    run_until([&] { return s.durable_index() >= index || w.failed(); });
    ASSERT_GE(s.durable_index(), index);
  }
  // A fresh store from the log alone.
  std::unique_ptr<Store> recovered(dispatchd::app::WalRecovery* out = nullptr) {
    auto s = std::make_unique<Store>("cluster");
    auto r = recover_wal(dir.path, [&](const auto& rec) { return s->replay(rec); });
    EXPECT_TRUE(r.has_value()) << r.error();
    if (r && out) *out = *r;
    return s;
  }
  void commit(Store& s, const std::function<Status(WriteTx&)>& f) {
    ASSERT_TRUE(s.update(f).is_ok());
  }
  // Runs handlers (a batch's completion, a resumed coroutine) until done() holds, for at most
  // 10 s.
  template <class F>
  void run_until(F done) {
    ASSERT_TRUE(dispatchd::test::drive_until(io, done, std::chrono::seconds(10),
                                             std::chrono::milliseconds(100)))
        << "timed out";
  }
  std::string newest_segment() { return dir.path + "/" + wal_segments(dir.path).back(); }

  TempDir dir;
  asio::io_context io;
};

TEST_F(WalTest, EveryKindOfChangeComesBackInAFreshStore) {
  Store s("cluster");
  Wal w(io, s, dir.path, nullptr);
  s.set_journal(&w);
  commit(s, [](WriteTx& tx) {
    EXPECT_TRUE(tx.create(node("n1")).is_ok());
    EXPECT_TRUE(tx.create(node("n2")).is_ok());
    return tx.create(task("t1", "n1"));
  });
  commit(s, [](WriteTx& tx) { return tx.create(task("t2", "n1")); });
  commit(s, [](WriteTx& tx) { return tx.update(task("t2", "n2")); });  // moved to n2
  commit(s, [](WriteTx& tx) { return tx.remove_task("t1"); });
  commit(s, [](WriteTx& tx) { return tx.update(node("n1", "updated")); });
  commit(s, [](WriteTx& tx) { return tx.remove_node("n2"); });
  commit(s, [](WriteTx& tx) {
    api::Secret x;
    x.set_id("s1");
    x.mutable_spec()->set_data("secret bytes");
    return tx.create(x);
  });
  commit(s, [](WriteTx& tx) {
    api::Config x;
    x.set_id("c1");
    return tx.create(x);
  });
  commit(s, [](WriteTx& tx) {
    api::Volume v;
    v.set_id("v1");
    v.add_publish_status()->set_node_id("n1");
    return tx.create(v);
  });
  commit(s, [](WriteTx& tx) {
    api::Cluster c = *tx.cluster();
    c.mutable_root_ca()->set_ca_cert("pem");
    return tx.update(c);
  });
  commit(s, [](WriteTx& tx) {
    api::WeightedPeer p;
    p.mutable_peer()->set_node_id("m1");
    p.mutable_peer()->set_addr("10.0.0.1:4242");
    p.set_weight(10);
    tx.set_managers({p});
    return Status::ok();
  });
  wait_durable(s, w);
  ASSERT_TRUE(w.stop().is_ok());
  EXPECT_EQ(w.stats().records, 11u);

  dispatchd::app::WalRecovery r;
  auto back = recovered(&r);
  EXPECT_EQ(r.records, 11u);
  EXPECT_EQ(r.cut_bytes, 0u);
  EXPECT_EQ(back->index(), s.index());
  s.view([&](const auto& a) {
    back->view([&](const auto& b) {
      EXPECT_EQ(b.nodes().size(), 1u);
      EXPECT_EQ(b.node("n1")->SerializeAsString(), a.node("n1")->SerializeAsString());
      EXPECT_EQ(b.node("n2"), nullptr);
      EXPECT_EQ(b.task("t1"), nullptr);
      ASSERT_NE(b.task("t2"), nullptr);
      EXPECT_EQ(b.task("t2")->SerializeAsString(), a.task("t2")->SerializeAsString());
      EXPECT_EQ(b.tasks_of_node("n1").size(), 0u);  // the node index follows the move
      EXPECT_EQ(b.tasks_of_node("n2").size(), 1u);
      EXPECT_EQ(b.secret("s1")->spec().data(), "secret bytes");
      EXPECT_NE(b.config("c1"), nullptr);
      EXPECT_EQ(b.volume("v1")->SerializeAsString(), a.volume("v1")->SerializeAsString());
      EXPECT_EQ(b.cluster()->root_ca().ca_cert(), "pem");
      ASSERT_EQ(b.managers().size(), 1u);
      EXPECT_EQ(b.managers()[0].peer().addr(), "10.0.0.1:4242");
    });
  });
}

TEST_F(WalTest, CommitsMadeWhileABatchIsWrittenShareTheNextSync) {
  Store s("cluster");
  Wal w(io, s, dir.path, nullptr);
  s.set_journal(&w);
  for (int i = 0; i < 500; ++i)
    commit(s, [&](WriteTx& tx) { return tx.create(node("n" + std::to_string(i))); });
  wait_durable(s, w);
  EXPECT_EQ(w.stats().records, 500u);
  // The first commit starts a batch alone; the other 499 are queued meanwhile: one more.
  EXPECT_EQ(w.stats().batches, 2u);
  ASSERT_TRUE(w.stop().is_ok());
  EXPECT_EQ(recovered()->view([](const auto& tx) { return tx.nodes().size(); }), 500u);
}

TEST_F(WalTest, WaitersAreAnsweredOnlyOnceTheirCommitIsOnDisk) {
  Store s("cluster");
  Wal w(io, s, dir.path, nullptr);
  s.set_journal(&w);
  commit(s, [](WriteTx& tx) { return tx.create(node("n1")); });
  EXPECT_LT(s.durable_index(), s.index());  // the io thread has not heard back from the writer
  std::optional<Status> answer;
  asio::co_spawn(
      io, [&]() -> asio::awaitable<void> { answer = co_await s.wait_durable(s.index()); },
      asio::detached);
  run_until([&] { return answer.has_value(); });
  EXPECT_TRUE(answer->is_ok());
  EXPECT_EQ(s.durable_index(), s.index());
  EXPECT_EQ(w.stats().batches, 1u);
}

TEST_F(WalTest, ACorruptLastRecordIsCutAndTheOthersKept) {
  {
    Store s("cluster");
    Wal w(io, s, dir.path, nullptr);
    s.set_journal(&w);
    for (int i = 0; i < 3; ++i) {
      commit(s, [&](WriteTx& tx) { return tx.create(node("n" + std::to_string(i))); });
      wait_durable(s, w);
    }
  }
  const auto path = newest_segment();
  const auto size = fs::file_size(path);
  {
    std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(static_cast<std::streamoff>(size - 2));
    f.put('\xff');  // inside the last record's payload
  }
  dispatchd::app::WalRecovery r;
  auto back = recovered(&r);
  EXPECT_EQ(r.records, 2u);
  EXPECT_NE(r.cut_reason.find("corrupt"), std::string::npos) << r.cut_reason;
  EXPECT_EQ(r.cut_offset + r.cut_bytes, size);
  EXPECT_EQ(fs::file_size(path), r.cut_offset);  // truncated on disk
  EXPECT_NE(back->view([](const auto& tx) { return tx.node("n1"); }), nullptr);
  EXPECT_EQ(back->view([](const auto& tx) { return tx.node("n2"); }), nullptr);
}

TEST_F(WalTest, DamageInASegmentThatOthersFollowIsRefused) {
  {
    Store s("cluster");
    Wal w(io, s, dir.path, nullptr);
    s.set_journal(&w);
    commit(s, [](WriteTx& tx) { return tx.create(node("n1")); });
    wait_durable(s, w);
    w.rotate();
    commit(s, [](WriteTx& tx) { return tx.create(node("n2")); });
    wait_durable(s, w);
  }
  auto segments = wal_segments(dir.path);
  ASSERT_EQ(segments.size(), 2u);
  const auto first = dir.path + "/" + segments[0];
  fs::resize_file(first, fs::file_size(first) - 1);
  Store s("cluster");
  auto r = recover_wal(dir.path, [&](const auto& rec) { return s.replay(rec); });
  ASSERT_FALSE(r.has_value());
  EXPECT_NE(r.error().find("in a segment that later ones follow"), std::string::npos) << r.error();
  EXPECT_EQ(wal_segments(dir.path).size(), 2u);  // nothing removed
}

TEST_F(WalTest, ASegmentWithoutAWholeRecordIsRemoved) {
  std::ofstream(dir.path + "/wal-0000000000000005.log", std::ios::binary) << "DSPD";
  dispatchd::app::WalRecovery r;
  recovered(&r);
  EXPECT_EQ(r.records, 0u);
  EXPECT_EQ(r.cut_reason, "torn segment header");
  EXPECT_TRUE(wal_segments(dir.path).empty());
}

TEST_F(WalTest, RecordsASnapshotHoldsAreSkippedAndItsSegmentsPruned) {
  Store s("cluster");
  Wal w(io, s, dir.path, nullptr);
  s.set_journal(&w);
  commit(s, [](WriteTx& tx) { return tx.create(node("n1")); });
  wait_durable(s, w);
  w.rotate();  // as the daemon does before a snapshot
  auto snap = s.snapshot();
  commit(s, [](WriteTx& tx) { return tx.create(node("n2")); });
  wait_durable(s, w);
  ASSERT_TRUE(w.stop().is_ok());
  ASSERT_EQ(wal_segments(dir.path).size(), 2u);

  EXPECT_EQ(prune_wal(dir.path, snap.index()), 1u);  // the first is wholly in the snapshot
  ASSERT_EQ(wal_segments(dir.path).size(), 1u);
  Store back("cluster");
  ASSERT_TRUE(back.restore(snap).is_ok());
  auto r = recover_wal(dir.path, [&](const auto& rec) { return back.replay(rec); });
  ASSERT_TRUE(r.has_value()) << r.error();
  EXPECT_EQ(back.view([](const auto& tx) { return tx.nodes().size(); }), 2u);
  EXPECT_EQ(back.index(), s.index());
  EXPECT_EQ(prune_wal(dir.path, 0, true), 1u);
  EXPECT_TRUE(wal_segments(dir.path).empty());
}

// Three segments, one commit each.
void three_segments(Store& s, Wal& w, const std::function<void()>& wait) {
  for (int i = 0; i < 3; ++i) {
    if (i > 0) w.rotate();
    ASSERT_TRUE(
        s.update([&](WriteTx& tx) { return tx.create(node("n" + std::to_string(i))); }).is_ok());
    wait();
  }
}

TEST_F(WalTest, AMissingSegmentIsFoundNotReplayedAround) {
  {
    Store s("cluster");
    Wal w(io, s, dir.path, nullptr);
    s.set_journal(&w);
    three_segments(s, w, [&] { wait_durable(s, w); });
  }
  auto segments = wal_segments(dir.path);
  ASSERT_EQ(segments.size(), 3u);
  fs::remove(dir.path + "/" + segments[1]);
  Store back("cluster");
  auto r = recover_wal(dir.path, [&](const auto& rec) { return back.replay(rec); });
  ASSERT_FALSE(r.has_value());
  EXPECT_NE(r.error().find("records are missing"), std::string::npos) << r.error();
}

TEST_F(WalTest, ALogWithoutTheSnapshotBeforeItIsRefused) {
  std::uint64_t covered = 0;
  {
    Store s("cluster");
    Wal w(io, s, dir.path, nullptr);
    s.set_journal(&w);
    three_segments(s, w, [&] { wait_durable(s, w); });
    covered = s.index() - 1;  // as if a snapshot covered the first two commits
  }
  ASSERT_EQ(prune_wal(dir.path, covered), 2u);
  Store back("cluster");  // and that snapshot is lost
  auto r = recover_wal(dir.path, [&](const auto& rec) { return back.replay(rec); });
  ASSERT_FALSE(r.has_value());
  EXPECT_NE(r.error().find("the snapshot (store.pb) that covers the records before it is missing"),
            std::string::npos)
      << r.error();
}

TEST_F(WalTest, ALogThatCannotWriteFailsEveryWait) {
  Store s("cluster");
  std::optional<Status> failure;
  Wal w(io, s, dir.path + "/missing/dir", [&](const Status& st) { failure = st; });
  s.set_journal(&w);
  commit(s, [](WriteTx& tx) { return tx.create(node("n1")); });
  std::optional<Status> answer;
  asio::co_spawn(
      io, [&]() -> asio::awaitable<void> { answer = co_await s.wait_durable(s.index()); },
      asio::detached);
  run_until([&] { return answer.has_value(); });
  ASSERT_TRUE(failure.has_value());
  EXPECT_EQ(answer->code(), StatusCode::unavailable);
  EXPECT_NE(answer->message().find("the write-ahead log failed"), std::string::npos)
      << answer->message();
  EXPECT_TRUE(w.failed());
  // A later commit is not acknowledged either.
  commit(s, [](WriteTx& tx) { return tx.create(node("n2")); });
  std::optional<Status> later;
  asio::co_spawn(
      io, [&]() -> asio::awaitable<void> { later = co_await s.wait_durable(s.index()); },
      asio::detached);
  run_until([&] { return later.has_value(); });
  EXPECT_EQ(later->code(), StatusCode::unavailable);
}

TEST(WalCrcTest, MatchesTheCastagnoliCheckValue) {
  const std::string check = "123456789";
  EXPECT_EQ(
      dispatchd::app::crc32c({reinterpret_cast<const std::uint8_t*>(check.data()), check.size()}),
      0xE3069283u);
}

}  // namespace
