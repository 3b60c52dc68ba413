#include "dispatchd/dispatcher/assignment_set.hpp"

#include <gtest/gtest.h>

#include <functional>
#include <string>
#include <vector>

#include "dispatchd/grpc/status.hpp"
#include "dispatchd/store/store.hpp"

namespace dispatchd::dispatcher {
namespace {

using Strings = std::vector<std::string>;
using PublishState = api::VolumePublishStatus::State;

constexpr const char* kNode = "node-1";

std::string describe(const api::AssignmentChange& c) {
  std::string s = c.action() == api::AssignmentChange::REMOVE ? "REMOVE " : "UPDATE ";
  const auto& a = c.assignment();
  switch (a.item_case()) {
    case api::Assignment::kTask:
      return s + "task " + a.task().id();
    case api::Assignment::kSecret:
      return s + "secret " + a.secret().id();
    case api::Assignment::kConfig:
      return s + "config " + a.config().id();
    case api::Assignment::kVolume:
      return s + "volume " + a.volume().id();
    default:
      return s + "nothing";
  }
}

struct TaskDeps {
  Strings secrets;
  Strings configs;
};

class AssignmentSetTest : public ::testing::Test {
 protected:
  void write(const std::function<grpc::Status(store::WriteTx&)>& f) {
    ASSERT_TRUE(store_.update(f).is_ok());
  }

  void put_secret(const std::string& id, bool with_driver = false) {
    api::Secret s;
    s.set_id(id);
    s.mutable_spec()->mutable_annotations()->set_name(id + "-name");
    s.mutable_spec()->set_data("payload of " + id);
    if (with_driver) s.mutable_spec()->mutable_driver()->set_name("vault");
    write([&](store::WriteTx& tx) { return tx.create(s); });
  }

  void put_config(const std::string& id) {
    api::Config c;
    c.set_id(id);
    c.mutable_spec()->set_data("config " + id);
    write([&](store::WriteTx& tx) { return tx.create(c); });
  }

  static api::Task make_task(const std::string& id, api::TaskState state, TaskDeps deps = {}) {
    api::Task t;
    t.set_id(id);
    t.set_node_id(kNode);
    t.set_service_id("svc");
    t.set_desired_state(api::RUNNING);
    t.mutable_status()->set_state(state);
    auto* container = t.mutable_spec()->mutable_container();
    container->set_image("busybox");
    for (const auto& s : deps.secrets) {
      auto* ref = container->add_secrets();
      ref->set_secret_id(s);
      ref->set_secret_name(s + "-name");
    }
    for (const auto& c : deps.configs) {
      auto* ref = container->add_configs();
      ref->set_config_id(c);
      ref->set_config_name(c + "-name");
    }
    return t;
  }

  void create_task(const api::Task& t) {
    write([&](store::WriteTx& tx) { return tx.create(t); });
  }

  void change_task(const std::string& id, const std::function<void(api::Task&)>& f) {
    write([&](store::WriteTx& tx) {
      api::Task t = *tx.task(id);
      f(t);
      return tx.update(t);
    });
  }

  void set_state(const std::string& id, api::TaskState state) {
    change_task(id, [&](api::Task& t) { t.mutable_status()->set_state(state); });
  }

  bool add(const std::string& id) {
    return store_.view(
        [&](const store::ReadTx& tx) { return set_.add_or_update_task(tx, tx.task(id)); });
  }

  // As the delete event does: the set sees the object that was removed.
  bool remove(const std::string& id) {
    store::Ptr<api::Task> removed =
        store_.view([&](const store::ReadTx& tx) { return tx.task(id); });
    write([&](store::WriteTx& tx) { return tx.remove_task(id); });
    return set_.remove_task(*removed);
  }

  static api::Volume make_volume(const std::string& id, PublishState state,
                                 const Strings& secrets = {}) {
    api::Volume v;
    v.set_id(id);
    v.mutable_spec()->mutable_annotations()->set_name(id + "-name");
    v.mutable_spec()->mutable_driver()->set_name("csi-driver");
    v.mutable_spec()->mutable_access_mode()->set_scope(api::VolumeAccessMode::MULTI_NODE);
    for (const auto& s : secrets) {
      auto* ref = v.mutable_spec()->add_secrets();
      ref->set_key("key-" + s);
      ref->set_secret(s);
    }
    v.mutable_volume_info()->set_volume_id("csi-" + id);
    (*v.mutable_volume_info()->mutable_volume_context())["ctx"] = "volume";
    auto* other = v.add_publish_status();
    other->set_node_id("node-2");
    other->set_state(api::VolumePublishStatus::PUBLISHED);
    (*other->mutable_publish_context())["device"] = "/dev/other";
    auto* mine = v.add_publish_status();
    mine->set_node_id(kNode);
    mine->set_state(state);
    (*mine->mutable_publish_context())["device"] = "/dev/mine";
    return v;
  }

  void create_volume(const api::Volume& v) {
    write([&](store::WriteTx& tx) { return tx.create(v); });
  }

  void set_volume_state(const std::string& id, PublishState state) {
    write([&](store::WriteTx& tx) {
      api::Volume v = *tx.volume(id);
      for (auto& entry : *v.mutable_publish_status()) {
        if (entry.node_id() == kNode) entry.set_state(state);
      }
      return tx.update(v);
    });
  }

  bool add_volume(const std::string& id) {
    return store_.view(
        [&](const store::ReadTx& tx) { return set_.add_or_update_volume(tx, tx.volume(id)); });
  }

  Strings take() {
    Strings out;
    for (const auto& c : set_.take_changes()) {
      out.push_back(describe(c));
    }
    return out;
  }

  store::Store store_{"cluster"};
  AssignmentSet set_{kNode};
};

// ---- tasks ------------------------------------------------------------------------------------

TEST_F(AssignmentSetTest, TaskBelowAssignedIsIgnored) {
  create_task(make_task("t1", api::PENDING));
  EXPECT_FALSE(add("t1"));
  EXPECT_FALSE(set_.has_changes());
  EXPECT_EQ(set_.task_count(), 0u);
}

TEST_F(AssignmentSetTest, NewAssignedTaskIsSentAsFullObject) {
  create_task(make_task("t1", api::ASSIGNED));
  EXPECT_TRUE(add("t1"));
  EXPECT_EQ(set_.task_count(), 1u);
  auto changes = set_.take_changes();
  ASSERT_EQ(changes.size(), 1u);
  EXPECT_EQ(changes[0].action(), api::AssignmentChange::UPDATE);
  ASSERT_TRUE(changes[0].assignment().has_task());
  auto stored = store_.view([](const store::ReadTx& tx) { return tx.task("t1"); });
  EXPECT_EQ(changes[0].assignment().task().SerializeAsString(), stored->SerializeAsString());
}

TEST_F(AssignmentSetTest, InitialBuildSendsSharedSecretOnceAndDependenciesBeforeTasks) {
  put_secret("s1");
  put_config("c1");
  for (const char* id : {"t3", "t1", "t2"}) {
    create_task(make_task(id, api::ASSIGNED, {.secrets = {"s1"}, .configs = {"c1"}}));
  }
  for (const char* id : {"t3", "t1", "t2"}) {
    EXPECT_TRUE(add(id));
  }
  EXPECT_EQ(take(), (Strings{"UPDATE secret s1", "UPDATE config c1", "UPDATE task t1",
                             "UPDATE task t2", "UPDATE task t3"}));
  EXPECT_EQ(set_.task_count(), 3u);
}

TEST_F(AssignmentSetTest, SecretIsSentAgainForEachTaskThatNewlyUsesIt) {
  put_secret("s1");
  create_task(make_task("t1", api::ASSIGNED, {.secrets = {"s1"}}));
  create_task(make_task("t2", api::ASSIGNED, {.secrets = {"s1"}}));
  add("t1");
  EXPECT_EQ(take(), (Strings{"UPDATE secret s1", "UPDATE task t1"}));
  add("t2");
  EXPECT_EQ(take(), (Strings{"UPDATE secret s1", "UPDATE task t2"}));
}

TEST_F(AssignmentSetTest, SecretUpdateCarriesTheFullSecret) {
  put_secret("s1");
  create_task(make_task("t1", api::ASSIGNED, {.secrets = {"s1"}}));
  add("t1");
  auto changes = set_.take_changes();
  ASSERT_EQ(changes.size(), 2u);
  ASSERT_TRUE(changes[0].assignment().has_secret());
  EXPECT_EQ(changes[0].assignment().secret().spec().data(), "payload of s1");
  EXPECT_EQ(changes[0].assignment().secret().spec().annotations().name(), "s1-name");
}

TEST_F(AssignmentSetTest, ConfigSharedByTwoTasksIsSentOnce) {
  put_config("c1");
  create_task(make_task("t1", api::ASSIGNED, {.configs = {"c1"}}));
  create_task(make_task("t2", api::ASSIGNED, {.configs = {"c1"}}));
  add("t1");
  EXPECT_EQ(take(), (Strings{"UPDATE config c1", "UPDATE task t1"}));
  add("t2");
  EXPECT_EQ(take(), (Strings{"UPDATE task t2"}));
}

TEST_F(AssignmentSetTest, ConfigIsRemovedOnlyWhenItsLastUserGoes) {
  put_config("c1");
  create_task(make_task("t1", api::ASSIGNED, {.configs = {"c1"}}));
  create_task(make_task("t2", api::ASSIGNED, {.configs = {"c1"}}));
  add("t1");
  add("t2");
  take();
  EXPECT_TRUE(remove("t1"));
  EXPECT_EQ(take(), (Strings{"REMOVE task t1"}));
  EXPECT_TRUE(remove("t2"));
  EXPECT_EQ(take(), (Strings{"REMOVE config c1", "REMOVE task t2"}));
}

TEST_F(AssignmentSetTest, MissingSecretAndConfigAreSkipped) {
  create_task(make_task("t1", api::ASSIGNED, {.secrets = {"s-gone"}, .configs = {"c-gone"}}));
  EXPECT_TRUE(add("t1"));
  EXPECT_EQ(take(), (Strings{"UPDATE task t1"}));
}

TEST_F(AssignmentSetTest, SecretWithDriverIsSkippedLikeAMissingOne) {
  put_secret("s1", /*with_driver=*/true);
  create_task(make_task("t1", api::ASSIGNED, {.secrets = {"s1"}}));
  EXPECT_TRUE(add("t1"));
  EXPECT_EQ(take(), (Strings{"UPDATE task t1"}));
}

TEST_F(AssignmentSetTest, RemovalOfADependencyThatWasNeverSentIsStillSent) {
  create_task(make_task("t1", api::ASSIGNED, {.secrets = {"s-gone"}}));
  add("t1");
  take();
  EXPECT_TRUE(remove("t1"));
  EXPECT_EQ(take(), (Strings{"REMOVE secret s-gone", "REMOVE task t1"}));
}

TEST_F(AssignmentSetTest, StatusOnlyChangeOfRunningTaskIsNoChange) {
  put_secret("s1");
  create_task(make_task("t1", api::RUNNING, {.secrets = {"s1"}}));
  add("t1");
  take();
  // The store also stamps a new meta on every write: ignored as well.
  change_task("t1", [](api::Task& t) { t.mutable_status()->set_message("still running"); });
  EXPECT_FALSE(add("t1"));
  EXPECT_FALSE(set_.has_changes());
}

TEST_F(AssignmentSetTest, StatusOnlyMoveFromAssignedToRunningIsNoChange) {
  create_task(make_task("t1", api::ASSIGNED));
  add("t1");
  take();
  set_state("t1", api::RUNNING);
  EXPECT_FALSE(add("t1"));
  EXPECT_FALSE(set_.has_changes());
}

TEST_F(AssignmentSetTest, UnchangedAssignedTaskIsSentAgain) {
  create_task(make_task("t1", api::ASSIGNED));
  add("t1");
  take();
  change_task("t1", [](api::Task&) {});
  EXPECT_TRUE(add("t1"));
  EXPECT_EQ(take(), (Strings{"UPDATE task t1"}));
}

TEST_F(AssignmentSetTest, ChangeOutsideStatusAndMetaResendsTaskWithoutResendingDependencies) {
  put_secret("s1");
  create_task(make_task("t1", api::RUNNING, {.secrets = {"s1"}}));
  add("t1");
  take();
  change_task("t1", [](api::Task& t) { t.set_desired_state(api::SHUTDOWN); });
  EXPECT_TRUE(add("t1"));
  EXPECT_EQ(take(), (Strings{"UPDATE task t1"}));
}

TEST_F(AssignmentSetTest, AnnotationChangeResendsRunningTask) {
  create_task(make_task("t1", api::RUNNING));
  add("t1");
  take();
  change_task("t1", [](api::Task& t) { t.mutable_annotations()->set_name("renamed"); });
  EXPECT_TRUE(add("t1"));
  EXPECT_EQ(take(), (Strings{"UPDATE task t1"}));
}

TEST_F(AssignmentSetTest, EmptySubmessageDiffersFromAbsentOne) {
  create_task(make_task("t1", api::RUNNING));
  add("t1");
  take();
  change_task("t1", [](api::Task& t) { t.mutable_endpoint(); });
  EXPECT_TRUE(add("t1"));
  EXPECT_EQ(take(), (Strings{"UPDATE task t1"}));
}

TEST_F(AssignmentSetTest, TaskMovingToCompleteReleasesItsSecret) {
  put_secret("s1");
  create_task(make_task("t1", api::RUNNING, {.secrets = {"s1"}}));
  add("t1");
  take();
  set_state("t1", api::COMPLETE);
  EXPECT_TRUE(add("t1"));
  auto changes = set_.take_changes();
  ASSERT_EQ(changes.size(), 1u);
  EXPECT_EQ(describe(changes[0]), "REMOVE secret s1");
  // A removal names the dependency and nothing else.
  api::Secret id_only;
  id_only.set_id("s1");
  EXPECT_EQ(changes[0].assignment().secret().SerializeAsString(), id_only.SerializeAsString());
}

TEST_F(AssignmentSetTest, FinishedTaskKeepsSharedSecretOtherTasksStillUse) {
  put_secret("s1");
  create_task(make_task("t1", api::RUNNING, {.secrets = {"s1"}}));
  create_task(make_task("t2", api::RUNNING, {.secrets = {"s1"}}));
  add("t1");
  add("t2");
  take();
  set_state("t1", api::COMPLETE);
  EXPECT_FALSE(add("t1"));
  EXPECT_FALSE(set_.has_changes());
}

TEST_F(AssignmentSetTest, EveryLaterReleaseSendsTheRemovalAgain) {
  put_secret("s1");
  create_task(make_task("t1", api::RUNNING, {.secrets = {"s1"}}));
  add("t1");
  set_state("t1", api::COMPLETE);
  add("t1");
  take();
  set_state("t1", api::SHUTDOWN);
  EXPECT_TRUE(add("t1"));
  EXPECT_EQ(take(), (Strings{"REMOVE secret s1"}));
  EXPECT_TRUE(remove("t1"));
  EXPECT_EQ(take(), (Strings{"REMOVE secret s1", "REMOVE task t1"}));
}

TEST_F(AssignmentSetTest, TaskFirstSeenAfterRunningIsSentWithoutDependencies) {
  put_secret("s1");
  put_config("c1");
  create_task(make_task("t1", api::COMPLETE, {.secrets = {"s1"}, .configs = {"c1"}}));
  EXPECT_TRUE(add("t1"));
  EXPECT_EQ(take(), (Strings{"UPDATE task t1"}));
}

TEST_F(AssignmentSetTest, ChangedTaskAfterRunningIsResentWithoutReleasingDependencies) {
  put_secret("s1");
  create_task(make_task("t1", api::RUNNING, {.secrets = {"s1"}}));
  add("t1");
  take();
  change_task("t1", [](api::Task& t) {
    t.mutable_status()->set_state(api::FAILED);
    t.set_desired_state(api::SHUTDOWN);
  });
  EXPECT_TRUE(add("t1"));
  EXPECT_EQ(take(), (Strings{"UPDATE task t1"}));
  // The next stably-equal update releases them.
  change_task("t1", [](api::Task& t) { t.mutable_status()->set_message("exited"); });
  EXPECT_TRUE(add("t1"));
  EXPECT_EQ(take(), (Strings{"REMOVE secret s1"}));
}

TEST_F(AssignmentSetTest, ResourceReferencesToSecretsAndConfigsAreDependencies) {
  put_secret("s1");
  put_config("c1");
  api::Task t = make_task("t1", api::ASSIGNED);
  auto* secret_ref = t.mutable_spec()->add_resource_references();
  secret_ref->set_resource_type(api::SECRET);
  secret_ref->set_resource_id("s1");
  auto* config_ref = t.mutable_spec()->add_resource_references();
  config_ref->set_resource_type(api::CONFIG);
  config_ref->set_resource_id("c1");
  create_task(t);
  add("t1");
  EXPECT_EQ(take(), (Strings{"UPDATE secret s1", "UPDATE config c1", "UPDATE task t1"}));
  remove("t1");
  EXPECT_EQ(take(), (Strings{"REMOVE secret s1", "REMOVE config c1", "REMOVE task t1"}));
}

TEST_F(AssignmentSetTest, ResourceReferencesToVolumesAndTasksAreSkipped) {
  api::Task t = make_task("t1", api::ASSIGNED);
  auto* volume_ref = t.mutable_spec()->add_resource_references();
  volume_ref->set_resource_type(api::VOLUME);
  volume_ref->set_resource_id("v1");
  auto* task_ref = t.mutable_spec()->add_resource_references();
  task_ref->set_resource_type(api::TASK);
  task_ref->set_resource_id("t0");
  create_task(t);
  add("t1");
  EXPECT_EQ(take(), (Strings{"UPDATE task t1"}));
  remove("t1");
  EXPECT_EQ(take(), (Strings{"REMOVE task t1"}));
}

TEST_F(AssignmentSetTest, RemovingUnknownTaskIsNoChange) {
  EXPECT_FALSE(set_.remove_task(make_task("t1", api::RUNNING)));
  EXPECT_FALSE(set_.has_changes());
}

TEST_F(AssignmentSetTest, RemovedTaskIsSentAsIdOnlyAndForgotten) {
  create_task(make_task("t1", api::RUNNING));
  add("t1");
  take();
  EXPECT_TRUE(remove("t1"));
  EXPECT_EQ(set_.task_count(), 0u);
  auto changes = set_.take_changes();
  ASSERT_EQ(changes.size(), 1u);
  EXPECT_EQ(changes[0].action(), api::AssignmentChange::REMOVE);
  api::Task id_only;
  id_only.set_id("t1");
  EXPECT_EQ(changes[0].assignment().task().SerializeAsString(), id_only.SerializeAsString());
}

TEST_F(AssignmentSetTest, UpdateThenDeleteInOneBatchSendsOnlyTheRemoval) {
  create_task(make_task("t1", api::RUNNING));
  add("t1");
  take();
  change_task("t1", [](api::Task& t) { t.set_desired_state(api::SHUTDOWN); });
  add("t1");
  remove("t1");
  EXPECT_EQ(take(), (Strings{"REMOVE task t1"}));
}

TEST_F(AssignmentSetTest, TakingChangesClearsThem) {
  create_task(make_task("t1", api::ASSIGNED));
  add("t1");
  EXPECT_TRUE(set_.has_changes());
  EXPECT_EQ(take().size(), 1u);
  EXPECT_FALSE(set_.has_changes());
  EXPECT_TRUE(set_.take_changes().empty());
}

// ---- volumes ----------------------------------------------------------------------------------

TEST_F(AssignmentSetTest, PublishedVolumeIsSentAsVolumeAssignment) {
  api::Volume v = make_volume("v1", api::VolumePublishStatus::PUBLISHED, {"s1"});
  create_volume(v);
  EXPECT_TRUE(add_volume("v1"));
  auto changes = set_.take_changes();
  ASSERT_EQ(changes.size(), 1u);  // the volume's secret does not exist
  EXPECT_EQ(changes[0].action(), api::AssignmentChange::UPDATE);
  ASSERT_TRUE(changes[0].assignment().has_volume());
  const auto& a = changes[0].assignment().volume();
  EXPECT_EQ(a.id(), "v1");
  EXPECT_EQ(a.volume_id(), "csi-v1");
  EXPECT_EQ(a.driver().name(), "csi-driver");
  EXPECT_EQ(a.volume_context().at("ctx"), "volume");
  ASSERT_EQ(a.publish_context().size(), 1u);
  EXPECT_EQ(a.publish_context().at("device"), "/dev/mine");
  EXPECT_EQ(a.access_mode().scope(), api::VolumeAccessMode::MULTI_NODE);
  ASSERT_EQ(a.secrets_size(), 1);
  EXPECT_EQ(a.secrets(0).key(), "key-s1");
  EXPECT_EQ(a.secrets(0).secret(), "s1");
}

TEST_F(AssignmentSetTest, VolumeSecretIsSentWithItsFirstUser) {
  put_secret("s1");
  create_volume(make_volume("v1", api::VolumePublishStatus::PUBLISHED, {"s1"}));
  EXPECT_TRUE(add_volume("v1"));
  EXPECT_EQ(take(), (Strings{"UPDATE secret s1", "UPDATE volume v1"}));
}

TEST_F(AssignmentSetTest, VolumeSecretAlreadyUsedByATaskIsNotSentAgain) {
  put_secret("s1");
  create_task(make_task("t1", api::RUNNING, {.secrets = {"s1"}}));
  add("t1");
  take();
  create_volume(make_volume("v1", api::VolumePublishStatus::PUBLISHED, {"s1"}));
  add_volume("v1");
  EXPECT_EQ(take(), (Strings{"UPDATE volume v1"}));
}

TEST_F(AssignmentSetTest, VolumeWithoutEntryForThisNodeIsIgnored) {
  api::Volume v = make_volume("v1", api::VolumePublishStatus::PUBLISHED);
  v.mutable_publish_status()->RemoveLast();
  create_volume(v);
  EXPECT_FALSE(add_volume("v1"));
  EXPECT_FALSE(set_.has_changes());
}

TEST_F(AssignmentSetTest, VolumePendingPublishIsIgnored) {
  put_secret("s1");
  create_volume(make_volume("v1", api::VolumePublishStatus::PENDING_PUBLISH, {"s1"}));
  EXPECT_FALSE(add_volume("v1"));
  EXPECT_FALSE(set_.has_changes());
}

TEST_F(AssignmentSetTest, VolumeInSameStateAgainIsNoChange) {
  create_volume(make_volume("v1", api::VolumePublishStatus::PUBLISHED));
  add_volume("v1");
  take();
  set_volume_state("v1", api::VolumePublishStatus::PUBLISHED);
  EXPECT_FALSE(add_volume("v1"));
  EXPECT_FALSE(set_.has_changes());
}

TEST_F(AssignmentSetTest, VolumePendingNodeUnpublishIsSentAsRemovalWithFullObject) {
  create_volume(make_volume("v1", api::VolumePublishStatus::PUBLISHED));
  add_volume("v1");
  take();
  set_volume_state("v1", api::VolumePublishStatus::PENDING_NODE_UNPUBLISH);
  EXPECT_TRUE(add_volume("v1"));
  auto changes = set_.take_changes();
  ASSERT_EQ(changes.size(), 1u);
  EXPECT_EQ(changes[0].action(), api::AssignmentChange::REMOVE);
  const auto& a = changes[0].assignment().volume();
  EXPECT_EQ(a.id(), "v1");
  EXPECT_EQ(a.volume_id(), "csi-v1");
  EXPECT_EQ(a.publish_context().at("device"), "/dev/mine");
}

TEST_F(AssignmentSetTest, VolumePendingUnpublishReleasesItsSecretsAndStopsTracking) {
  put_secret("s1");
  create_volume(make_volume("v1", api::VolumePublishStatus::PUBLISHED, {"s1"}));
  add_volume("v1");
  set_volume_state("v1", api::VolumePublishStatus::PENDING_NODE_UNPUBLISH);
  add_volume("v1");
  take();
  set_volume_state("v1", api::VolumePublishStatus::PENDING_UNPUBLISH);
  EXPECT_TRUE(add_volume("v1"));
  EXPECT_EQ(take(), (Strings{"REMOVE secret s1"}));
  // No longer tracked: the same state again changes nothing.
  EXPECT_FALSE(add_volume("v1"));
  EXPECT_FALSE(set_.has_changes());
}

TEST_F(AssignmentSetTest, VolumePendingUnpublishWithoutSecretsIsNoChange) {
  create_volume(make_volume("v1", api::VolumePublishStatus::PUBLISHED));
  add_volume("v1");
  take();
  set_volume_state("v1", api::VolumePublishStatus::PENDING_UNPUBLISH);
  EXPECT_FALSE(add_volume("v1"));
  EXPECT_FALSE(set_.has_changes());
  // Untracked now, so publishing it again sends it again.
  set_volume_state("v1", api::VolumePublishStatus::PUBLISHED);
  EXPECT_TRUE(add_volume("v1"));
  EXPECT_EQ(take(), (Strings{"UPDATE volume v1"}));
}

TEST_F(AssignmentSetTest, VolumePendingUnpublishKeepsSecretATaskStillUses) {
  put_secret("s1");
  create_task(make_task("t1", api::RUNNING, {.secrets = {"s1"}}));
  add("t1");
  create_volume(make_volume("v1", api::VolumePublishStatus::PUBLISHED, {"s1"}));
  add_volume("v1");
  take();
  set_volume_state("v1", api::VolumePublishStatus::PENDING_UNPUBLISH);
  EXPECT_FALSE(add_volume("v1"));
  EXPECT_FALSE(set_.has_changes());
}

TEST_F(AssignmentSetTest, UntrackedVolumePendingUnpublishIsIgnored) {
  put_secret("s1");
  create_volume(make_volume("v1", api::VolumePublishStatus::PENDING_UNPUBLISH, {"s1"}));
  EXPECT_FALSE(add_volume("v1"));
  EXPECT_FALSE(set_.has_changes());
}

// ---- batches ----------------------------------------------------------------------------------

TEST_F(AssignmentSetTest, LaterChangeReplacesEarlierOneForTheSameObject) {
  put_secret("s1");
  create_task(make_task("t1", api::RUNNING, {.secrets = {"s1"}}));
  add("t1");
  set_state("t1", api::COMPLETE);
  add("t1");
  // UPDATE secret then REMOVE secret, UPDATE task twice: one change each, the latest.
  EXPECT_EQ(take(), (Strings{"REMOVE secret s1", "UPDATE task t1"}));
}

TEST_F(AssignmentSetTest, ChangesAreOrderedSecretsConfigsVolumesTasksThenById) {
  put_secret("s2");
  put_secret("s1");
  put_config("c1");
  create_task(make_task("tb", api::ASSIGNED, {.secrets = {"s2"}}));
  create_task(make_task("ta", api::ASSIGNED, {.secrets = {"s1"}, .configs = {"c1"}}));
  create_volume(make_volume("v2", api::VolumePublishStatus::PUBLISHED));
  create_volume(make_volume("v1", api::VolumePublishStatus::PUBLISHED));
  add("tb");
  add_volume("v2");
  add("ta");
  add_volume("v1");
  EXPECT_EQ(take(),
            (Strings{"UPDATE secret s1", "UPDATE secret s2", "UPDATE config c1", "UPDATE volume v1",
                     "UPDATE volume v2", "UPDATE task ta", "UPDATE task tb"}));
}

}  // namespace
}  // namespace dispatchd::dispatcher
