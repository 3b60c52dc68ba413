// The status batcher on its own (docs/behaviour.md §2.1, §0.5): group commit, the transaction
// size limit, and the rules a flush applies.

#include "dispatchd/dispatcher/status_batcher.hpp"

#include <gtest/gtest.h>

#include <asio/io_context.hpp>

namespace dispatchd::dispatcher {
namespace {

class StatusBatcherTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(store_
                    .update([](store::WriteTx& tx) {
                      for (const char* id : {"t1", "t2", "t3"}) {
                        api::Task t;
                        t.set_id(id);
                        t.set_node_id("node-1");
                        t.mutable_status()->set_state(api::ASSIGNED);
                        if (auto st = tx.create(std::move(t)); !st.is_ok()) return st;
                      }
                      api::Node n;
                      n.set_id("node-1");
                      return tx.create(std::move(n));
                    })
                    .is_ok());
  }
  api::TaskState state_of(const char* id) {
    return store_.view([&](const store::ReadTx& tx) { return tx.task(id)->status().state(); });
  }
  // Runs what is ready (the posted flush).
  void poll() {
    io_.restart();
    io_.poll();
  }
  static api::TaskStatus status(api::TaskState s) {
    api::TaskStatus st;
    st.set_state(s);
    return st;
  }

  asio::io_context io_;
  store::Store store_{"org"};
};

TEST_F(StatusBatcherTest, EverythingQueuedBeforeTheFlushRunsGoesIntoIt) {
  StatusBatcher b(io_, store_, "manager-1", 100);
  auto g1 = b.queue_task_update("t1", status(api::RUNNING));
  auto g2 = b.queue_task_update("t2", status(api::ACCEPTED));
  NodeUpdate u;
  u.status.emplace().set_state(api::NodeStatus::READY);
  auto g3 = b.queue_node_update("node-1", std::move(u));
  EXPECT_EQ(g1, 1u);
  EXPECT_EQ(g2, 1u);
  EXPECT_EQ(g3, 1u);
  EXPECT_EQ(b.pending(), 3u);
  EXPECT_EQ(state_of("t1"), api::ASSIGNED);  // nothing is written before the flush runs
  auto commits = store_.commits();
  poll();
  EXPECT_EQ(b.flushed(), 1u);
  EXPECT_EQ(b.stats().flushes, 1u);
  EXPECT_EQ(store_.commits(), commits + 1) << "one store transaction for the whole batch";
  EXPECT_EQ(state_of("t1"), api::RUNNING);
  EXPECT_EQ(state_of("t2"), api::ACCEPTED);
  EXPECT_EQ(b.pending(), 0u);
  auto t1 = store_.view([](const store::ReadTx& tx) { return tx.task("t1"); });
  EXPECT_EQ(t1->status().applied_by(), "manager-1");
  EXPECT_GT(t1->status().applied_at().seconds(), 0);
}

TEST_F(StatusBatcherTest, AtMostMaxItemsChangesPerTransaction) {
  StatusBatcher b(io_, store_, "manager-1", 2);
  for (const char* id : {"t1", "t2", "t3"})
    b.queue_task_update(id, status(api::RUNNING));
  auto commits = store_.commits();
  poll();
  EXPECT_EQ(store_.commits(), commits + 2);
  EXPECT_EQ(b.flushed(), 1u);
  EXPECT_EQ(state_of("t3"), api::RUNNING);
}

TEST_F(StatusBatcherTest, NoBackwardTransitionsAndTheLatestQueuedStatusWins) {
  StatusBatcher b(io_, store_, "manager-1", 100);
  b.queue_task_update("t1", status(api::RUNNING));
  poll();
  b.queue_task_update("t1", status(api::ACCEPTED));  // backwards: ignored
  b.queue_task_update("t2", status(api::RUNNING));
  b.queue_task_update("t2", status(api::COMPLETE));  // same task again: the later one
  poll();
  EXPECT_EQ(state_of("t1"), api::RUNNING);
  EXPECT_EQ(state_of("t2"), api::COMPLETE);
  EXPECT_EQ(b.stats().flushed_task_updates, 2u);
  EXPECT_EQ(b.flushed(), 2u);
}

TEST_F(StatusBatcherTest, UpdatesOfDeletedObjectsAreDropped) {
  StatusBatcher b(io_, store_, "manager-1", 100);
  b.queue_task_update("no-such-task", status(api::RUNNING));
  NodeUpdate u;
  u.status.emplace().set_state(api::NodeStatus::DOWN);
  b.queue_node_update("no-such-node", std::move(u));
  b.queue_volume_unpublish("no-such-volume", "node-1");
  poll();
  EXPECT_EQ(b.flushed(), 1u);
  EXPECT_EQ(b.stats().flushed_task_updates, 0u);
  EXPECT_EQ(b.stats().flushed_node_updates, 0u);
}

TEST_F(StatusBatcherTest, CloseWritesWhatIsQueuedAtOnce) {
  StatusBatcher b(io_, store_, "manager-1", 100);
  b.queue_task_update("t1", status(api::RUNNING));
  b.close();
  EXPECT_TRUE(b.closed());
  EXPECT_EQ(state_of("t1"), api::RUNNING);
  EXPECT_EQ(b.flushed(), 1u);
  poll();  // the posted flush finds nothing left
  EXPECT_EQ(b.flushed(), 1u);
}

}  // namespace
}  // namespace dispatchd::dispatcher
