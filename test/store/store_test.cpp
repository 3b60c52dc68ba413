// The store on its own (include/dispatchd/store/store.hpp; docs/architecture.md, "The store and
// its watch contract"): transactions and rollback, what watchers see, the view-then-watch
// contract, snapshot and restore, the index and the task-by-node index.

#include "dispatchd/store/store.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <memory>
#include <set>
#include <string>
#include <utility>
#include <vector>

namespace {

namespace api = docker::swarmkit::v1;
namespace store = dispatchd::store;
using dispatchd::Status;
using dispatchd::StatusCode;
using store::EventKind;
using store::ObjectType;

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

api::Secret secret(const std::string& id) {
  api::Secret s;
  s.set_id(id);
  s.mutable_spec()->set_data("data of " + id);
  return s;
}

api::Volume volume_published_to(const std::string& id, const std::vector<std::string>& nodes) {
  api::Volume v;
  v.set_id(id);
  for (const auto& n : nodes) {
    auto* ps = v.add_publish_status();
    ps->set_node_id(n);
    ps->set_state(api::VolumePublishStatus::PUBLISHED);
  }
  return v;
}

// What a watcher saw: one line per event, "<kind> <type> <id>".
std::string describe(const store::Event& e) {
  const char* kind = e.kind == EventKind::create   ? "create"
                     : e.kind == EventKind::update ? "update"
                                                   : "remove";
  std::string id;
  switch (e.type) {
    case ObjectType::node:
      id = e.as<api::Node>().id();
      break;
    case ObjectType::task:
      id = e.as<api::Task>().id();
      break;
    case ObjectType::secret:
      id = e.as<api::Secret>().id();
      break;
    case ObjectType::config:
      id = e.as<api::Config>().id();
      break;
    case ObjectType::volume:
      id = e.as<api::Volume>().id();
      break;
    case ObjectType::cluster:
      id = e.as<api::Cluster>().id();
      break;
    case ObjectType::managers:
      id = "-";
      break;
  }
  return std::string(kind) + " " + store::object_type_name(e.type) + " " + id;
}

struct Recorder : store::Watcher {
  std::vector<std::string> seen;
  std::vector<store::Event> events;
  void on_event(const store::Event& e) override {
    seen.push_back(describe(e));
    events.push_back(e);
  }
};

using Lines = std::vector<std::string>;

void ok(const Status& st) {
  ASSERT_TRUE(st.is_ok()) << st.message();
}

std::vector<std::string> task_ids_of_node(const store::Store& s, const std::string& node_id) {
  std::vector<std::string> ids;
  s.view([&](const store::ReadTx& tx) {
    for (const auto& t : tx.tasks_of_node(node_id))
      ids.push_back(t->id());
  });
  std::sort(ids.begin(), ids.end());
  return ids;
}

// =============================================================================================
// Transactions

TEST(StoreTest, WritesStampTheNextIndexAndKeepTheCreationTime) {
  store::Store s("org");
  const auto start = s.index();
  ok(s.update([](store::WriteTx& tx) { return tx.create(node("n1")); }));
  auto created = s.view([](const store::ReadTx& tx) { return tx.node("n1"); });
  ASSERT_TRUE(created);
  EXPECT_EQ(created->meta().version().index(), start + 1);
  EXPECT_EQ(s.index(), start + 1);
  ASSERT_TRUE(created->meta().has_created_at());

  ok(s.update([](store::WriteTx& tx) { return tx.update(node("n1", api::NodeStatus::DOWN)); }));
  auto updated = s.view([](const store::ReadTx& tx) { return tx.node("n1"); });
  EXPECT_EQ(updated->meta().version().index(), start + 2);
  EXPECT_EQ(updated->meta().created_at().seconds(), created->meta().created_at().seconds());
  EXPECT_EQ(updated->meta().created_at().nanos(), created->meta().created_at().nanos());
  EXPECT_EQ(updated->status().state(), api::NodeStatus::DOWN);
  EXPECT_EQ(created->status().state(), api::NodeStatus::READY)
      << "a reader's object is immutable: the update replaced it";
}

TEST(StoreTest, CommitsCountTransactionsThatChangedSomethingAndIndexCountsWrites) {
  store::Store s("org");
  const auto commits = s.commits();
  const auto index = s.index();
  ok(s.update([](store::WriteTx& tx) {
    for (auto id : {"a", "b", "c"}) {
      if (auto st = tx.create(node(id)); !st.is_ok()) return st;
    }
    return Status::ok();
  }));
  EXPECT_EQ(s.commits(), commits + 1) << "one transaction, one commit";
  EXPECT_EQ(s.index(), index + 3) << "each write takes the next index";

  std::size_t changes = 0;
  ok(s.update([&](store::WriteTx& tx) {
    changes = tx.changes();
    return Status::ok();
  }));
  EXPECT_EQ(changes, 0u);
  EXPECT_EQ(s.commits(), commits + 1) << "a transaction without changes is no commit";
  EXPECT_EQ(s.index(), index + 3);
}

TEST(StoreTest, CreateOfAnExistingAndUpdateOrRemoveOfAMissingObjectFail) {
  store::Store s("org");
  ok(s.update([](store::WriteTx& tx) { return tx.create(node("n1")); }));
  auto st = s.update([](store::WriteTx& tx) { return tx.create(node("n1")); });
  EXPECT_EQ(st.code(), StatusCode::already_exists);
  st = s.update([](store::WriteTx& tx) { return tx.update(task("t1", "n1")); });
  EXPECT_EQ(st.code(), StatusCode::not_found);
  st = s.update([](store::WriteTx& tx) { return tx.remove_secret("nope"); });
  EXPECT_EQ(st.code(), StatusCode::not_found);
  st = s.update([](store::WriteTx& tx) { return tx.create(node("")); });
  EXPECT_EQ(st.code(), StatusCode::invalid_argument);
}

TEST(StoreTest, FailingUpdateRollsBackEveryChangeAndPublishesNothing) {
  store::Store s("org");
  ok(s.update([](store::WriteTx& tx) {
    if (auto st = tx.create(node("n1")); !st.is_ok()) return st;
    if (auto st = tx.create(task("t1", "n1")); !st.is_ok()) return st;
    if (auto st = tx.create(task("t2", "n1")); !st.is_ok()) return st;
    return tx.create(secret("s1"));
  }));
  api::WeightedPeer m;
  m.mutable_peer()->set_node_id("manager-1");
  ok(s.update([&](store::WriteTx& tx) {
    tx.set_managers({m});
    return Status::ok();
  }));
  const auto before = s.snapshot();
  const auto commits = s.commits();
  const auto cluster_before = s.view([](const store::ReadTx& tx) { return tx.cluster(); });

  Recorder all_nodes, all_tasks, tasks_n2, cluster, managers;
  s.watch(all_nodes, {ObjectType::node});
  s.watch(all_tasks, {ObjectType::task});
  s.watch(tasks_n2, {ObjectType::task, "n2"});
  s.watch(cluster, {ObjectType::cluster});
  s.watch(managers, {ObjectType::managers});

  auto st = s.update([](store::WriteTx& tx) {
    // Every kind of change, then a failure.
    EXPECT_TRUE(tx.create(node("n2")).is_ok());
    EXPECT_TRUE(tx.update(node("n1", api::NodeStatus::DOWN)).is_ok());
    EXPECT_TRUE(tx.update(task("t1", "n2", api::RUNNING)).is_ok());  // moved to n2
    EXPECT_TRUE(tx.remove_task("t2").is_ok());
    EXPECT_TRUE(tx.create(task("t3", "n2")).is_ok());
    EXPECT_TRUE(tx.remove_secret("s1").is_ok());
    api::Cluster c = *tx.cluster();
    c.mutable_spec()->mutable_annotations()->set_name("changed");
    EXPECT_TRUE(tx.update(c).is_ok());
    tx.set_managers({});
    // The transaction sees its own changes while it runs.
    EXPECT_EQ(tx.task_count_of_node("n2"), 2u);
    EXPECT_FALSE(tx.secret("s1"));
    return Status(StatusCode::failed_precondition, "no");
  });
  EXPECT_EQ(st.code(), StatusCode::failed_precondition);
  EXPECT_EQ(st.message(), "no");

  EXPECT_TRUE(all_nodes.seen.empty());
  EXPECT_TRUE(all_tasks.seen.empty());
  EXPECT_TRUE(tasks_n2.seen.empty());
  EXPECT_TRUE(cluster.seen.empty());
  EXPECT_TRUE(managers.seen.empty());
  EXPECT_EQ(s.commits(), commits);

  // Every object is back, the very same (shared) objects, and so is the task index.
  s.view([&](const store::ReadTx& tx) {
    EXPECT_FALSE(tx.node("n2"));
    EXPECT_EQ(tx.node("n1")->status().state(), api::NodeStatus::READY);
    EXPECT_EQ(tx.task("t1")->node_id(), "n1");
    EXPECT_TRUE(tx.task("t2"));
    EXPECT_FALSE(tx.task("t3"));
    EXPECT_TRUE(tx.secret("s1"));
    EXPECT_EQ(tx.cluster(), cluster_before);
    ASSERT_EQ(tx.managers().size(), 1u);
    EXPECT_EQ(tx.managers()[0].peer().node_id(), "manager-1");
    EXPECT_EQ(tx.task_count_of_node("n1"), 2u);
    EXPECT_EQ(tx.task_count_of_node("n2"), 0u);
    EXPECT_EQ(tx.task_count(), 2u);
  });
  EXPECT_EQ(task_ids_of_node(s, "n1"), (Lines{"t1", "t2"}));
  EXPECT_TRUE(task_ids_of_node(s, "n2").empty());

  // Objects and their versions as they were (the snapshot's index is left out: see the report
  // of issue 13 — a failed transaction's writes still used up indexes).
  auto after = s.snapshot();
  after.set_index(before.index());
  auto by_id = [](auto list) {
    std::sort(list.begin(), list.end(),
              [](const auto& a, const auto& b) { return a.id() < b.id(); });
    return list;
  };
  auto same = [&](const auto& a, const auto& b) {
    auto x = by_id(std::vector(a.begin(), a.end()));
    auto y = by_id(std::vector(b.begin(), b.end()));
    ASSERT_EQ(x.size(), y.size());
    for (std::size_t i = 0; i < x.size(); ++i)
      EXPECT_EQ(x[i].SerializeAsString(), y[i].SerializeAsString()) << x[i].id();
  };
  same(before.nodes(), after.nodes());
  same(before.tasks(), after.tasks());
  same(before.secrets(), after.secrets());
  EXPECT_EQ(before.cluster().SerializeAsString(), after.cluster().SerializeAsString());

  // The next transaction commits normally and watchers see only it.
  ok(s.update([](store::WriteTx& tx) { return tx.create(node("n3")); }));
  EXPECT_EQ(all_nodes.seen, (Lines{"create node n3"}));
  EXPECT_EQ(s.commits(), commits + 1);
}

TEST(StoreTest, NestedTransactionIsRefused) {
  store::Store s("org");
  Status inner;
  ok(s.update([&](store::WriteTx& tx) {
    inner = s.update([](store::WriteTx& t) { return t.create(node("inner")); });
    return tx.create(node("outer"));
  }));
  EXPECT_EQ(inner.code(), StatusCode::internal);
  s.view([](const store::ReadTx& tx) {
    EXPECT_TRUE(tx.node("outer"));
    EXPECT_FALSE(tx.node("inner"));
  });
}

// =============================================================================================
// Watchers

TEST(StoreTest, WatchersSeeExactlyTheCommittedChangesInOrder) {
  store::Store s("org");
  Recorder nodes, tasks, secrets;
  s.watch(nodes, {ObjectType::node});
  s.watch(tasks, {ObjectType::task});
  s.watch(secrets, {ObjectType::secret});
  ok(s.update([](store::WriteTx& tx) {
    if (auto st = tx.create(node("n1")); !st.is_ok()) return st;
    if (auto st = tx.create(task("t1", "n1")); !st.is_ok()) return st;
    if (auto st = tx.create(task("t2", "n1")); !st.is_ok()) return st;
    return tx.update(node("n1", api::NodeStatus::DOWN));
  }));
  ok(s.update([](store::WriteTx& tx) {
    if (auto st = tx.remove_task("t1"); !st.is_ok()) return st;
    if (auto st = tx.update(task("t2", "n1", api::RUNNING)); !st.is_ok()) return st;
    return tx.remove_node("n1");
  }));
  EXPECT_EQ(nodes.seen, (Lines{"create node n1", "update node n1", "remove node n1"}));
  EXPECT_EQ(tasks.seen,
            (Lines{"create task t1", "create task t2", "remove task t1", "update task t2"}));
  EXPECT_TRUE(secrets.seen.empty());

  // Updates carry the previous object; removals the removed one.
  ASSERT_EQ(nodes.events.size(), 3u);
  ASSERT_NE(nodes.events[1].old_as<api::Node>(), nullptr);
  EXPECT_EQ(nodes.events[1].old_as<api::Node>()->status().state(), api::NodeStatus::READY);
  EXPECT_EQ(nodes.events[1].as<api::Node>().status().state(), api::NodeStatus::DOWN);
  EXPECT_EQ(nodes.events[0].old_as<api::Node>(), nullptr);
  EXPECT_EQ(nodes.events[2].as<api::Node>().status().state(), api::NodeStatus::DOWN);
  EXPECT_EQ(tasks.events[3].old_as<api::Task>()->status().state(), api::ASSIGNED);
  EXPECT_EQ(tasks.events[3].as<api::Task>().status().state(), api::RUNNING);
}

TEST(StoreTest, EventsArePublishedOnlyOnceTheTransactionCommits) {
  store::Store s("org");
  Recorder nodes;
  s.watch(nodes, {ObjectType::node});
  ok(s.update([&](store::WriteTx& tx) {
    if (auto st = tx.create(node("n1")); !st.is_ok()) return st;
    EXPECT_TRUE(nodes.seen.empty()) << "published during the transaction";
    return Status::ok();
  }));
  EXPECT_EQ(nodes.seen, (Lines{"create node n1"}));
}

TEST(StoreTest, AWriteIsPublishedEvenWhenTheObjectDidNotChange) {
  store::Store s("org");
  ok(s.update([](store::WriteTx& tx) { return tx.create(node("n1")); }));
  Recorder nodes, cluster, managers;
  s.watch(nodes, {ObjectType::node});
  s.watch(cluster, {ObjectType::cluster});
  s.watch(managers, {ObjectType::managers});
  ok(s.update([](store::WriteTx& tx) {
    auto n = *tx.node("n1");
    if (auto st = tx.update(n); !st.is_ok()) return st;
    tx.set_managers(tx.managers());
    return tx.update(*tx.cluster());
  }));
  EXPECT_EQ(nodes.seen, (Lines{"update node n1"}));
  EXPECT_EQ(cluster.seen, (Lines{"update cluster org"}));
  EXPECT_EQ(managers.seen, (Lines{"update managers -"}));
}

TEST(StoreTest, KindFlagsFilterCreateUpdateAndRemove) {
  store::Store s("org");
  Recorder creates, updates, removes, updates_and_removes;
  s.watch(creates, {ObjectType::task, "", true, false, false});
  s.watch(updates, {ObjectType::task, "", false, true, false});
  s.watch(removes, {ObjectType::task, "", false, false, true});
  s.watch(updates_and_removes, {ObjectType::task, "n1", false, true, true});
  ok(s.update([](store::WriteTx& tx) {
    if (auto st = tx.create(task("t1", "n1")); !st.is_ok()) return st;
    if (auto st = tx.update(task("t1", "n1", api::RUNNING)); !st.is_ok()) return st;
    return tx.remove_task("t1");
  }));
  EXPECT_EQ(creates.seen, (Lines{"create task t1"}));
  EXPECT_EQ(updates.seen, (Lines{"update task t1"}));
  EXPECT_EQ(removes.seen, (Lines{"remove task t1"}));
  EXPECT_EQ(updates_and_removes.seen, (Lines{"update task t1", "remove task t1"}));
}

TEST(StoreTest, NodeKeyFiltersNodesByIdTasksByTheirNewNodeAndVolumesByPublishStatus) {
  store::Store s("org");
  Recorder node_n1, tasks_n1, tasks_n2, volumes_n1, volumes_n2, all_tasks;
  s.watch(node_n1, {ObjectType::node, "n1"});
  s.watch(tasks_n1, {ObjectType::task, "n1"});
  s.watch(tasks_n2, {ObjectType::task, "n2"});
  s.watch(all_tasks, {ObjectType::task});
  s.watch(volumes_n1, {ObjectType::volume, "n1"});
  s.watch(volumes_n2, {ObjectType::volume, "n2"});
  ok(s.update([](store::WriteTx& tx) {
    if (auto st = tx.create(node("n1")); !st.is_ok()) return st;
    if (auto st = tx.create(node("n2")); !st.is_ok()) return st;
    if (auto st = tx.create(task("t1", "n1")); !st.is_ok()) return st;
    if (auto st = tx.create(task("t2", "n2")); !st.is_ok()) return st;
    if (auto st = tx.create(task("unassigned", "")); !st.is_ok()) return st;
    // n1 twice in one publish status: one event still.
    if (auto st = tx.create(volume_published_to("v1", {"n1", "n2", "n1"})); !st.is_ok()) return st;
    return tx.create(volume_published_to("v2", {"n2"}));
  }));
  ok(s.update([](store::WriteTx& tx) {
    // t1 moves from n1 to n2: only n2's watchers see it (filtered on the new task).
    if (auto st = tx.update(task("t1", "n2")); !st.is_ok()) return st;
    if (auto st = tx.remove_task("t2"); !st.is_ok()) return st;
    return tx.update(node("n2", api::NodeStatus::DOWN));
  }));
  EXPECT_EQ(node_n1.seen, (Lines{"create node n1"}));
  EXPECT_EQ(tasks_n1.seen, (Lines{"create task t1"}));
  EXPECT_EQ(tasks_n2.seen, (Lines{"create task t2", "update task t1", "remove task t2"}));
  EXPECT_EQ(all_tasks.seen, (Lines{"create task t1", "create task t2", "create task unassigned",
                                   "update task t1", "remove task t2"}));
  EXPECT_EQ(volumes_n1.seen, (Lines{"create volume v1"}));
  EXPECT_EQ(volumes_n2.seen, (Lines{"create volume v1", "create volume v2"}));
}

TEST(StoreTest, UnwatchedWatcherSeesNothingMoreAndIsNotCounted) {
  store::Store s("org");
  const auto base = s.watcher_count();
  Recorder a, b;
  s.watch(a, {ObjectType::node});
  s.watch(b, {ObjectType::task, "n1"});
  EXPECT_EQ(s.watcher_count(), base + 2);
  ok(s.update([](store::WriteTx& tx) { return tx.create(node("n1")); }));
  s.unwatch(a);
  s.unwatch(b);
  EXPECT_EQ(s.watcher_count(), base);
  ok(s.update([](store::WriteTx& tx) {
    if (auto st = tx.create(node("n2")); !st.is_ok()) return st;
    return tx.create(task("t1", "n1"));
  }));
  EXPECT_EQ(a.seen, (Lines{"create node n1"}));
  EXPECT_TRUE(b.seen.empty());

  // Watching again with another filter moves the watcher, it is not registered twice.
  Recorder c;
  s.watch(c, {ObjectType::node});
  s.watch(c, {ObjectType::task});
  EXPECT_EQ(s.watcher_count(), base + 1);
  ok(s.update([](store::WriteTx& tx) {
    if (auto st = tx.create(node("n3")); !st.is_ok()) return st;
    return tx.create(task("t2", "n3"));
  }));
  EXPECT_EQ(c.seen, (Lines{"create task t2"}));
}

// =============================================================================================
// View then watch: a consistent starting point (docs/architecture.md)

// A stream's state as the Session/Assignments handlers build it: watch, then view, in one step;
// then apply the events as they come. At every point it must equal the store's tasks of n1.
struct TasksOfNode : store::Watcher {
  std::set<std::string> ids;
  int doubled = 0;
  int missing = 0;
  void start(store::Store& s, const std::string& node_id) {
    s.watch(*this, {ObjectType::task, node_id});
    s.view([&](const store::ReadTx& tx) {
      for (const auto& t : tx.tasks_of_node(node_id))
        ids.insert(t->id());
    });
  }
  void on_event(const store::Event& e) override {
    const auto& id = e.as<api::Task>().id();
    if (e.kind == EventKind::create && !ids.insert(id).second) ++doubled;
    if (e.kind == EventKind::remove && ids.erase(id) == 0) ++missing;
    if (e.kind == EventKind::update) ids.insert(id);
  }
};

TEST(StoreTest, WatchThenViewMissesNothingAndDoublesNothingAcrossInterleavedCommits) {
  store::Store s("org");
  std::vector<std::unique_ptr<TasksOfNode>> streams;
  int next = 0;
  for (int round = 0; round < 50; ++round) {
    // Commits of tasks on n1 (creates, removes) and elsewhere, between the streams' starts.
    ok(s.update([&](store::WriteTx& tx) {
      for (int i = 0; i < 3; ++i) {
        auto id = "t" + std::to_string(next++);
        if (auto st = tx.create(task(id, i == 2 ? "n2" : "n1")); !st.is_ok()) return st;
      }
      if (round % 3 == 2) return tx.remove_task("t" + std::to_string(next - 9));
      return Status::ok();
    }));
    streams.push_back(std::make_unique<TasksOfNode>());
    streams.back()->start(s, "n1");
  }
  std::set<std::string> truth;
  for (const auto& id : task_ids_of_node(s, "n1"))
    truth.insert(id);
  ASSERT_FALSE(truth.empty());
  for (std::size_t i = 0; i < streams.size(); ++i) {
    SCOPED_TRACE("stream " + std::to_string(i));
    EXPECT_EQ(streams[i]->doubled, 0);
    EXPECT_EQ(streams[i]->missing, 0);
    EXPECT_EQ(streams[i]->ids, truth);
  }
  for (auto& w : streams)
    s.unwatch(*w);
}

// =============================================================================================
// Task-by-node index

TEST(StoreTest, TasksOfNodeFollowsCreatesMovesUnassignmentsAndRemovals) {
  store::Store s("org");
  ok(s.update([](store::WriteTx& tx) {
    for (auto [id, n] : {std::pair{"t1", "n1"}, {"t2", "n1"}, {"t3", "n2"}, {"t4", ""}}) {
      if (auto st = tx.create(task(id, n)); !st.is_ok()) return st;
    }
    return Status::ok();
  }));
  EXPECT_EQ(task_ids_of_node(s, "n1"), (Lines{"t1", "t2"}));
  EXPECT_EQ(task_ids_of_node(s, "n2"), (Lines{"t3"}));
  EXPECT_TRUE(task_ids_of_node(s, "").empty()) << "unassigned tasks are in no node's index";

  ok(s.update([](store::WriteTx& tx) {
    if (auto st = tx.update(task("t1", "n2")); !st.is_ok()) return st;                // moved
    if (auto st = tx.update(task("t2", "n1", api::RUNNING)); !st.is_ok()) return st;  // stays
    if (auto st = tx.update(task("t3", "")); !st.is_ok()) return st;                  // unassigned
    return tx.update(task("t4", "n3"));                                               // assigned
  }));
  EXPECT_EQ(task_ids_of_node(s, "n1"), (Lines{"t2"}));
  EXPECT_EQ(task_ids_of_node(s, "n2"), (Lines{"t1"}));
  EXPECT_EQ(task_ids_of_node(s, "n3"), (Lines{"t4"}));
  s.view([](const store::ReadTx& tx) {
    EXPECT_EQ(tx.task_count_of_node("n1"), 1u);
    EXPECT_EQ(tx.task_count_of_node("n2"), 1u);
    EXPECT_EQ(tx.task_count_of_node("n3"), 1u);
    EXPECT_EQ(tx.task_count_of_node("nowhere"), 0u);
    EXPECT_EQ(tx.task_count(), 4u);
    EXPECT_EQ(tx.tasks_of_node("n1")[0]->status().state(), api::RUNNING)
        << "the index gives the current object";
  });

  ok(s.update([](store::WriteTx& tx) {
    if (auto st = tx.remove_task("t1"); !st.is_ok()) return st;
    return tx.remove_task("t2");
  }));
  EXPECT_TRUE(task_ids_of_node(s, "n1").empty());
  EXPECT_TRUE(task_ids_of_node(s, "n2").empty());
  s.view([](const store::ReadTx& tx) {
    EXPECT_EQ(tx.task_count_of_node("n1"), 0u);
    EXPECT_EQ(tx.task_count_of_node("n2"), 0u);
    EXPECT_EQ(tx.task_count(), 2u);
  });

  // A task created again under a removed task's ID is indexed afresh.
  ok(s.update([](store::WriteTx& tx) { return tx.create(task("t1", "n1")); }));
  EXPECT_EQ(task_ids_of_node(s, "n1"), (Lines{"t1"}));
}

TEST(StoreTest, RolledBackMoveAndRemovalLeaveTheTaskIndexAsItWas) {
  store::Store s("org");
  ok(s.update([](store::WriteTx& tx) {
    if (auto st = tx.create(task("t1", "n1")); !st.is_ok()) return st;
    return tx.create(task("t2", "n1"));
  }));
  auto st = s.update([](store::WriteTx& tx) {
    EXPECT_TRUE(tx.update(task("t1", "n2")).is_ok());
    EXPECT_TRUE(tx.update(task("t1", "n3")).is_ok());  // moved twice in one transaction
    EXPECT_TRUE(tx.remove_task("t2").is_ok());
    EXPECT_TRUE(tx.create(task("t2", "n2")).is_ok());  // and re-created elsewhere
    return Status(StatusCode::aborted, "rolled back");
  });
  EXPECT_EQ(st.code(), StatusCode::aborted);
  EXPECT_EQ(task_ids_of_node(s, "n1"), (Lines{"t1", "t2"}));
  EXPECT_TRUE(task_ids_of_node(s, "n2").empty());
  EXPECT_TRUE(task_ids_of_node(s, "n3").empty());
  s.view([](const store::ReadTx& tx) {
    EXPECT_EQ(tx.task_count_of_node("n1"), 2u);
    EXPECT_EQ(tx.task_count_of_node("n2"), 0u);
    EXPECT_EQ(tx.task_count_of_node("n3"), 0u);
  });
}

// =============================================================================================
// Snapshot, capture and restore

void fill(store::Store& s) {
  ok(s.update([](store::WriteTx& tx) {
    for (auto id : {"n1", "n2"}) {
      if (auto st = tx.create(node(id)); !st.is_ok()) return st;
    }
    for (auto [id, n] : {std::pair{"t1", "n1"}, {"t2", "n1"}, {"t3", "n2"}}) {
      if (auto st = tx.create(task(id, n)); !st.is_ok()) return st;
    }
    if (auto st = tx.create(secret("s1")); !st.is_ok()) return st;
    api::Config c;
    c.set_id("c1");
    if (auto st = tx.create(c); !st.is_ok()) return st;
    if (auto st = tx.create(volume_published_to("v1", {"n1"})); !st.is_ok()) return st;
    api::Cluster cl = *tx.cluster();
    cl.mutable_spec()->mutable_dispatcher()->mutable_heartbeat_period()->set_seconds(9);
    if (auto st = tx.update(cl); !st.is_ok()) return st;
    api::WeightedPeer m;
    m.mutable_peer()->set_node_id("manager-1");
    m.mutable_peer()->set_addr("10.0.0.1:4242");
    tx.set_managers({m});
    return Status::ok();
  }));
  ok(s.update([](store::WriteTx& tx) { return tx.remove_task("t2"); }));
}

// The snapshot with its repeated fields in ID order, for comparing two stores.
std::string canonical(dispatchd::state::v1::StoreSnapshot snap) {
  auto sort = [](auto* list) {
    std::sort(list->begin(), list->end(),
              [](const auto& a, const auto& b) { return a.id() < b.id(); });
  };
  sort(snap.mutable_nodes());
  sort(snap.mutable_tasks());
  sort(snap.mutable_secrets());
  sort(snap.mutable_configs());
  sort(snap.mutable_volumes());
  return snap.SerializeAsString();
}

TEST(StoreTest, CaptureHoldsTheObjectsOfOneIndexWhileTheStoreGoesOn) {
  store::Store s("org");
  fill(s);
  const auto cap = s.capture();
  EXPECT_EQ(cap.index, s.index());
  EXPECT_EQ(cap.nodes.size(), 2u);
  EXPECT_EQ(cap.tasks.size(), 2u);
  EXPECT_EQ(cap.secrets.size(), 1u);
  EXPECT_EQ(cap.configs.size(), 1u);
  EXPECT_EQ(cap.volumes.size(), 1u);
  ASSERT_TRUE(cap.managers);
  EXPECT_EQ(cap.managers->size(), 1u);
  const auto snap = cap.to_snapshot();

  ok(s.update([](store::WriteTx& tx) {
    if (auto st = tx.remove_node("n1"); !st.is_ok()) return st;
    if (auto st = tx.update(task("t1", "n2", api::RUNNING)); !st.is_ok()) return st;
    tx.set_managers({});
    return Status::ok();
  }));
  EXPECT_EQ(canonical(cap.to_snapshot()), canonical(snap))
      << "later writes do not change what was captured";
  EXPECT_NE(canonical(s.snapshot()), canonical(snap));
}

TEST(StoreTest, RestoreGivesTheSameObjectsAndIndexAndLaterWritesContinueTheIndex) {
  store::Store original("org");
  fill(original);
  const auto snap = original.snapshot();
  EXPECT_EQ(snap.format(), 1u);
  EXPECT_EQ(snap.index(), original.index());

  store::Store restored("org");
  ok(restored.restore(snap));
  EXPECT_EQ(restored.index(), original.index());
  EXPECT_EQ(canonical(restored.snapshot()), canonical(snap));
  restored.view([](const store::ReadTx& tx) {
    EXPECT_EQ(tx.cluster()->spec().dispatcher().heartbeat_period().seconds(), 9);
    ASSERT_EQ(tx.managers().size(), 1u);
    EXPECT_EQ(tx.managers()[0].peer().addr(), "10.0.0.1:4242");
    EXPECT_EQ(tx.task_count_of_node("n1"), 1u) << "the task index is rebuilt";
    EXPECT_EQ(tx.task_count_of_node("n2"), 1u);
  });
  EXPECT_EQ(task_ids_of_node(restored, "n1"), (Lines{"t1"}));

  // The next write continues from the snapshot's index on both stores alike.
  ok(original.update([](store::WriteTx& tx) { return tx.update(task("t3", "n1")); }));
  ok(restored.update([](store::WriteTx& tx) { return tx.update(task("t3", "n1")); }));
  EXPECT_EQ(restored.index(), snap.index() + 1);
  auto version = [](const store::Store& s) {
    return s.view([](const store::ReadTx& tx) { return tx.task("t3")->meta().version().index(); });
  };
  EXPECT_EQ(version(restored), snap.index() + 1);
  EXPECT_EQ(version(original), version(restored));
  EXPECT_EQ(task_ids_of_node(restored, "n1"), (Lines{"t1", "t3"}));
  EXPECT_TRUE(task_ids_of_node(restored, "n2").empty());

  // Restoring publishes nothing; watchers added afterwards see the next writes.
  Recorder tasks;
  restored.watch(tasks, {ObjectType::task, "n2"});
  ok(restored.update([](store::WriteTx& tx) { return tx.update(task("t1", "n2")); }));
  EXPECT_EQ(tasks.seen, (Lines{"update task t1"}));
  restored.unwatch(tasks);
}

TEST(StoreTest, RestoreReplacesTheContentsAndNeverLowersTheIndex) {
  store::Store s("org");
  ok(s.update([](store::WriteTx& tx) { return tx.create(task("old", "n9")); }));
  for (int i = 0; i < 10; ++i)
    ok(s.update([](store::WriteTx& tx) { return tx.update(task("old", "n9")); }));
  dispatchd::state::v1::StoreSnapshot snap;
  snap.set_format(1);
  snap.set_index(3);
  *snap.add_tasks() = task("new", "n1");
  const auto index = s.index();
  ASSERT_GT(index, 3u);
  ok(s.restore(snap));
  EXPECT_EQ(s.index(), index) << "versions keep increasing";
  s.view([](const store::ReadTx& tx) {
    EXPECT_FALSE(tx.task("old"));
    EXPECT_TRUE(tx.task("new"));
    EXPECT_EQ(tx.task_count_of_node("n9"), 0u) << "the old index is dropped";
    EXPECT_EQ(tx.task_count_of_node("n1"), 1u);
    EXPECT_EQ(tx.cluster()->id(), "org") << "a snapshot without a cluster keeps the cluster";
    EXPECT_TRUE(tx.managers().empty());
  });
}

TEST(StoreTest, RestoreRefusesAnotherFormatAnotherClusterAWatchedStoreAndBadObjects) {
  store::Store s("org");
  dispatchd::state::v1::StoreSnapshot snap;
  snap.set_format(2);
  EXPECT_EQ(s.restore(snap).code(), StatusCode::invalid_argument);

  snap.set_format(1);
  snap.mutable_cluster()->set_id("another-org");
  EXPECT_EQ(s.restore(snap).code(), StatusCode::failed_precondition);

  snap.mutable_cluster()->set_id("org");
  Recorder w;
  // Unkeyed: after a keyed watcher unwatches, its empty per-key list stays in the map until the
  // next event for that key, and restore() still counts the store as watched (reported in
  // issue 13, src/ left alone).
  s.watch(w, {ObjectType::node});
  EXPECT_EQ(s.restore(snap).code(), StatusCode::failed_precondition);
  s.unwatch(w);
  ok(s.restore(snap));

  auto twice = snap;
  *twice.add_tasks() = task("t1", "n1");
  *twice.add_tasks() = task("t1", "n2");
  EXPECT_EQ(s.restore(twice).code(), StatusCode::invalid_argument);
  auto without_id = snap;
  without_id.add_nodes();
  EXPECT_EQ(s.restore(without_id).code(), StatusCode::invalid_argument);

  Status inside;
  ok(s.update([&](store::WriteTx&) {
    inside = s.restore(snap);
    return Status::ok();
  }));
  EXPECT_EQ(inside.code(), StatusCode::failed_precondition);
}

// =============================================================================================
// Remote changes (a follower's replica, issue 16)

template <class T>
store::RemoteChange put_remote(ObjectType type, T obj) {
  std::string id = obj.id();
  return store::RemoteChange{type, std::move(id), std::make_shared<const T>(std::move(obj))};
}

store::RemoteChange remove_remote(ObjectType type, std::string id) {
  return store::RemoteChange{type, std::move(id), nullptr};
}

TEST(StoreTest, RemoteChangesPublishOneTransactionAndKeepTheLeadersMeta) {
  store::Store s("org");
  ok(s.update([](store::WriteTx& tx) { return tx.create(node("n1")); }));
  Recorder nodes, tasks, of_n2;
  s.watch(nodes, {ObjectType::node, ""});
  s.watch(tasks, {ObjectType::task, ""});
  s.watch(of_n2, {ObjectType::task, "n2"});
  const auto commits = s.commits();

  auto n1 = node("n1", api::NodeStatus::DOWN);
  n1.mutable_meta()->mutable_version()->set_index(41);
  auto t1 = task("t1", "n2");
  t1.mutable_meta()->mutable_version()->set_index(42);
  std::vector<store::RemoteChange> batch = {
      put_remote(ObjectType::node, n1), put_remote(ObjectType::task, t1),
      put_remote(ObjectType::node, node("n3")), remove_remote(ObjectType::secret, "absent")};
  ok(s.apply_remote(batch, 42));

  EXPECT_EQ(nodes.seen, (Lines{"update node n1", "create node n3"}));
  EXPECT_EQ(tasks.seen, (Lines{"create task t1"}));
  EXPECT_EQ(of_n2.seen, (Lines{"create task t1"})) << "node-scoped watchers see it too";
  EXPECT_EQ(s.commits(), commits + 1);
  EXPECT_EQ(s.index(), 42u);
  EXPECT_EQ(s.durable_index(), 42u);
  auto got = s.view([](const store::ReadTx& tx) { return tx.node("n1"); });
  ASSERT_TRUE(got);
  EXPECT_EQ(got->meta().version().index(), 41u) << "not stamped again";
  EXPECT_EQ(got->status().state(), api::NodeStatus::DOWN);
  ASSERT_NE(nodes.events[0].old_as<api::Node>(), nullptr);
  EXPECT_EQ(nodes.events[0].old_as<api::Node>()->status().state(), api::NodeStatus::READY);
  EXPECT_EQ(task_ids_of_node(s, "n2"), (Lines{"t1"}));

  // A move to another node and a removal: the task index follows, the event carries the object.
  ok(s.apply_remote(std::vector{put_remote(ObjectType::task, task("t1", "n3"))}, 43));
  EXPECT_EQ(task_ids_of_node(s, "n2"), Lines{});
  EXPECT_EQ(task_ids_of_node(s, "n3"), (Lines{"t1"}));
  ok(s.apply_remote(std::vector{remove_remote(ObjectType::task, "t1")}, 44));
  EXPECT_EQ(task_ids_of_node(s, "n3"), Lines{});
  EXPECT_EQ(tasks.seen, (Lines{"create task t1", "update task t1", "remove task t1"}));
  EXPECT_EQ(tasks.events.back().as<api::Task>().node_id(), "n3");
  EXPECT_EQ(s.index(), 44u);
}

TEST(StoreTest, RemoteIndexOnlyMovesUpAndAnEmptyBatchPublishesNothing) {
  store::Store s("org");
  Recorder all;
  s.watch(all, {ObjectType::node, ""});
  ok(s.apply_remote({}, 10));
  EXPECT_EQ(s.index(), 10u);
  EXPECT_EQ(s.commits(), 0u);
  ok(s.apply_remote(std::vector{put_remote(ObjectType::node, node("n1"))}, 7));
  EXPECT_EQ(s.index(), 10u) << "an older index never lowers the store's";
  EXPECT_EQ(all.seen, (Lines{"create node n1"}));

  api::Cluster c;
  c.set_id("org");
  c.mutable_spec()->mutable_annotations()->set_name("default");
  c.mutable_meta()->mutable_version()->set_index(11);
  Recorder clusters;
  s.watch(clusters, {ObjectType::cluster, ""});
  ok(s.apply_remote(std::vector{put_remote(ObjectType::cluster, c)}, 11));
  EXPECT_EQ(clusters.seen, (Lines{"update cluster org"}));
  EXPECT_EQ(s.view([](const store::ReadTx& tx) { return tx.cluster(); })->meta().version().index(),
            11u);
}

TEST(StoreTest, RemoteChangesThatDoNotFitAreRefusedWholly) {
  store::Store s("org");
  Recorder all;
  s.watch(all, {ObjectType::node, ""});
  auto wrong_id = put_remote(ObjectType::node, node("n2"));
  wrong_id.id = "n9";
  std::vector<store::RemoteChange> batch = {put_remote(ObjectType::node, node("n1")), wrong_id};
  EXPECT_EQ(s.apply_remote(batch, 5).code(), StatusCode::invalid_argument);
  api::Cluster other;
  other.set_id("another");
  EXPECT_EQ(s.apply_remote(std::vector{put_remote(ObjectType::cluster, other)}, 5).code(),
            StatusCode::failed_precondition);
  EXPECT_EQ(s.apply_remote(std::vector{remove_remote(ObjectType::cluster, "org")}, 5).code(),
            StatusCode::invalid_argument);
  EXPECT_EQ(
      s.apply_remote(std::vector{store::RemoteChange{ObjectType::managers, "",
                                                     std::make_shared<const store::ManagerList>()}},
                     5)
          .code(),
      StatusCode::invalid_argument);
  EXPECT_TRUE(all.seen.empty());
  EXPECT_FALSE(s.view([](const store::ReadTx& tx) { return tx.node("n1"); }));
  EXPECT_LT(s.index(), 5u);

  struct NullJournal : store::Journal {
    void append(std::uint64_t, std::uint64_t, std::span<const store::Change>) override {}
  } journal;
  s.set_journal(&journal);
  EXPECT_EQ(s.apply_remote(std::vector{put_remote(ObjectType::node, node("n1"))}, 5).code(),
            StatusCode::failed_precondition)
      << "a store with a journal is the leader's";
}

}  // namespace
