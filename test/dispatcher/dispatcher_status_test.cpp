// UpdateTaskStatus and UpdateVolumeStatus (docs/behaviour.md §6, §7, §2.1, §0.5).
// Over the wire, judged by the real gRPC C++ client (test/support/agent.hpp).

#include <google/protobuf/util/time_util.h>
#include <gtest/gtest.h>

#include "support/agent.hpp"
#include "support/raw_client.hpp"

namespace {

using namespace dispatchd::test;  // the agent and the setup helpers (support/agent.hpp)

// =============================================================================================
// UpdateTaskStatus (docs/behaviour.md §6, §2.1, §0.5)

class SessionTaskStatusTest : public ::testing::Test {
 protected:
  void SetUp() override {
    reg_ = register_node(agent_, as_node("node-a"));
    ASSERT_TRUE(reg_.ok) << reg_.status.error_message();
  }
  void create_tasks(std::vector<api::Task> tasks) {
    write(server_, [&](store::WriteTx& tx) {
      for (auto& t : tasks) {
        if (auto st = tx.create(t); !st.is_ok()) return st;
      }
      return dg::Status::ok();
    });
  }
  api::UpdateTaskStatusRequest request() const {
    api::UpdateTaskStatusRequest req;
    req.set_session_id(reg_.first.session_id());
    return req;
  }
  grpc::Status send(const api::UpdateTaskStatusRequest& req) {
    return agent_.update_task_status(as_node("node-a"), req);
  }

  TestServer server_;
  Agent agent_{server_};
  Registered reg_;
};

TEST_F(SessionTaskStatusTest, ForeignTaskRejectsWholeRequest) {
  create_tasks({task_object("mine", "node-a", api::ASSIGNED),
                task_object("theirs", "node-b", api::ASSIGNED),
                task_object("probe", "node-a", api::ASSIGNED)});
  auto req = request();
  *req.add_updates() = status_update("mine", api::RUNNING);
  *req.add_updates() = status_update("theirs", api::RUNNING);
  grpc::Status st = send(req);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_EQ(st.error_message(), "cannot update a task not assigned this node");

  // A later accepted update is acknowledged after its flush, which would have carried anything
  // queued by the rejected request.
  auto probe = request();
  *probe.add_updates() = status_update("probe", api::RUNNING);
  ASSERT_TRUE(send(probe).ok());
  ASSERT_EQ(stored_task(server_, "probe")->status().state(), api::RUNNING);
  EXPECT_EQ(stored_task(server_, "mine")->status().state(), api::ASSIGNED);
  EXPECT_EQ(stored_task(server_, "theirs")->status().state(), api::ASSIGNED);
}

// node-b is registered too and owns "theirs": node-a naming it anywhere in a batch (first, or
// after its own updates) is refused and applies nothing of the batch, while node-b's own report
// of the same task is accepted; an unassigned task is nobody's to report either.
TEST_F(SessionTaskStatusTest, TaskOfAnotherLiveNodeIsRefusedWhereverItIsInTheBatch) {
  Agent agent_b(server_);
  auto reg_b = register_node(agent_b, as_node("node-b"));
  ASSERT_TRUE(reg_b.ok) << reg_b.status.error_message();
  create_tasks({task_object("mine-1", "node-a", api::ASSIGNED),
                task_object("mine-2", "node-a", api::ASSIGNED),
                task_object("theirs", "node-b", api::ASSIGNED),
                task_object("unassigned", "", api::PENDING),
                task_object("probe", "node-a", api::ASSIGNED)});

  const std::vector<std::vector<std::string>> batches = {
      {"theirs", "mine-1", "mine-2"},
      {"mine-1", "mine-2", "theirs"},
      {"mine-1", "unassigned", "mine-2"},
  };
  for (const auto& batch : batches) {
    auto req = request();
    for (const auto& id : batch)
      *req.add_updates() = status_update(id, api::RUNNING);
    grpc::Status st = send(req);
    EXPECT_EQ(st.error_code(), grpc::StatusCode::PERMISSION_DENIED)
        << "batch " << batch[0] << ", " << batch[1] << ", " << batch[2];
    EXPECT_EQ(st.error_message(), "cannot update a task not assigned this node");
  }

  // The owner's report of the same task goes through.
  api::UpdateTaskStatusRequest own;
  own.set_session_id(reg_b.first.session_id());
  *own.add_updates() = status_update("theirs", api::PREPARING);
  grpc::Status st = agent_b.update_task_status(as_node("node-b"), own);
  ASSERT_TRUE(st.ok()) << st.error_message();

  // node-a's next accepted update is acknowledged after a flush that would have carried anything
  // the refused batches had queued.
  auto probe = request();
  *probe.add_updates() = status_update("probe", api::RUNNING);
  ASSERT_TRUE(send(probe).ok());
  EXPECT_EQ(stored_task(server_, "probe")->status().state(), api::RUNNING);
  EXPECT_EQ(stored_task(server_, "mine-1")->status().state(), api::ASSIGNED);
  EXPECT_EQ(stored_task(server_, "mine-2")->status().state(), api::ASSIGNED);
  EXPECT_EQ(stored_task(server_, "theirs")->status().state(), api::PREPARING);
  EXPECT_EQ(stored_task(server_, "unassigned")->status().state(), api::PENDING);
}

TEST_F(SessionTaskStatusTest, UnknownTasksAndMissingStatusesAreSkipped) {
  create_tasks({task_object("no-status", "node-a", api::ASSIGNED),
                task_object("valid", "node-a", api::ASSIGNED)});
  auto req = request();
  *req.add_updates() = status_update("does-not-exist", api::RUNNING);
  req.add_updates()->set_task_id("no-status");
  *req.add_updates() = status_update("valid", api::RUNNING);
  grpc::Status st = send(req);
  ASSERT_TRUE(st.ok()) << st.error_message();
  EXPECT_EQ(stored_task(server_, "valid")->status().state(), api::RUNNING);
  EXPECT_EQ(stored_task(server_, "no-status")->status().state(), api::ASSIGNED);
  EXPECT_FALSE(stored_task(server_, "does-not-exist"));
}

TEST_F(SessionTaskStatusTest, UpdateIsInStoreWhenReplyArrives) {
  create_tasks({task_object("t1", "node-a", api::ASSIGNED)});
  auto req = request();
  auto* u = req.add_updates();
  *u = status_update("t1", api::RUNNING);
  u->mutable_status()->mutable_container()->set_container_id("c0ffee");
  const auto before = google::protobuf::util::TimeUtil::GetCurrentTime();
  grpc::Status st = send(req);
  ASSERT_TRUE(st.ok()) << st.error_message();

  auto t = stored_task(server_, "t1");  // no waiting: the reply came after the flush
  ASSERT_TRUE(t);
  EXPECT_EQ(t->status().state(), api::RUNNING);
  EXPECT_EQ(t->status().message(), "reported RUNNING");
  EXPECT_EQ(t->status().container().container_id(), "c0ffee");
  EXPECT_EQ(t->status().applied_by(), "manager-1");
  ASSERT_TRUE(t->status().has_applied_at());
  EXPECT_GE(t->status().applied_at().seconds(), before.seconds());
}

TEST_F(SessionTaskStatusTest, BackwardTransitionIsIgnored) {
  create_tasks({task_object("t1", "node-a", api::RUNNING)});
  auto req = request();
  *req.add_updates() = status_update("t1", api::ASSIGNED);
  grpc::Status st = send(req);
  ASSERT_TRUE(st.ok()) << st.error_message();
  auto t = stored_task(server_, "t1");
  EXPECT_EQ(t->status().state(), api::RUNNING);
  EXPECT_TRUE(t->status().applied_by().empty());
}

TEST_F(SessionTaskStatusTest, ConcurrentUpdatesAreAllAppliedInFewerFlushes) {
  constexpr int kCalls = 200;
  std::vector<api::Task> tasks;
  for (int i = 0; i < kCalls; ++i) {
    tasks.push_back(task_object("t-" + std::to_string(i), "node-a", api::ASSIGNED));
  }
  create_tasks(tasks);
  const auto flushes_before =
      server_.call([&] { return server_.server().dispatcher().stats().flushes; });

  // All calls in one write, so that they reach the server together whatever the machine's
  // load: a quiet server would otherwise answer each call before the next arrives.
  dispatchd::test::RawClient raw(server_.port());
  raw.start();
  std::vector<std::int32_t> ids;
  for (int i = 0; i < kCalls; ++i) {
    auto req = request();
    *req.add_updates() = status_update("t-" + std::to_string(i), api::RUNNING);
    ids.push_back(raw.grpc_call("/docker.swarmkit.v1.Dispatcher/UpdateTaskStatus",
                                dispatchd::test::grpc_frame(req.SerializeAsString()),
                                as_node("node-a")));
  }
  raw.flush();
  for (int i = 0; i < kCalls; ++i) {
    const auto& r = raw.wait(ids[i]);
    ASSERT_TRUE(r.closed) << i << ": no answer";
    ASSERT_EQ(r.grpc_status(), 0) << i << ": " << r.grpc_message();
  }
  auto applied = server_.call([&] {
    int n = 0;
    server_.server().store().view([&](const store::ReadTx& tx) {
      for (const auto& t : tx.tasks_of_node("node-a")) {
        if (t->status().state() == api::RUNNING && t->status().applied_by() == "manager-1") ++n;
      }
      return 0;
    });
    return n;
  });
  EXPECT_EQ(applied, kCalls);
  auto flushes =
      server_.call([&] { return server_.server().dispatcher().stats().flushes; }) - flushes_before;
  EXPECT_GE(flushes, 1u);
  EXPECT_LT(flushes, static_cast<std::uint64_t>(kCalls)) << "no batching observed";
}

// =============================================================================================
// UpdateVolumeStatus (docs/behaviour.md §7)

api::Volume volume_published_to(const std::string& id, const std::vector<std::string>& nodes) {
  api::Volume v;
  v.set_id(id);
  v.mutable_spec()->mutable_annotations()->set_name(id);
  for (const auto& n : nodes) {
    auto* ps = v.add_publish_status();
    ps->set_node_id(n);
    ps->set_state(api::VolumePublishStatus::PUBLISHED);
  }
  return v;
}

api::VolumePublishStatus::State publish_state(const api::Volume& v, const std::string& node_id) {
  for (const auto& ps : v.publish_status()) {
    if (ps.node_id() == node_id) return ps.state();
  }
  return api::VolumePublishStatus::PENDING_PUBLISH;
}

TEST(DispatcherSessionTest, UnpublishedVolumeBecomesPendingUnpublish) {
  TestServer server;
  Agent agent(server);
  auto r = register_node(agent, as_node("node-a"));
  ASSERT_TRUE(r.ok) << r.status.error_message();
  write(server, [](store::WriteTx& tx) {
    return tx.create(volume_published_to("vol-1", {"node-a", "node-b"}));
  });
  api::UpdateVolumeStatusRequest req;
  req.set_session_id(r.first.session_id());
  auto* u = req.add_updates();
  u->set_id("vol-1");
  u->set_unpublished(true);
  grpc::Status st = agent.update_volume_status(as_node("node-a"), req);
  ASSERT_TRUE(st.ok()) << st.error_message();
  EXPECT_TRUE(server.eventually([&] {
    auto v =
        server.server().store().view([](const store::ReadTx& tx) { return tx.volume("vol-1"); });
    return publish_state(*v, "node-a") == api::VolumePublishStatus::PENDING_UNPUBLISH;
  }));
  EXPECT_EQ(publish_state(*stored_volume(server, "vol-1"), "node-b"),
            api::VolumePublishStatus::PUBLISHED);
}

TEST(DispatcherSessionTest, VolumeUpdateWithoutUnpublishedIsIgnored) {
  TestServer server;
  Agent agent(server);
  auto r = register_node(agent, as_node("node-a"));
  ASSERT_TRUE(r.ok) << r.status.error_message();
  write(server, [](store::WriteTx& tx) {
    if (auto st = tx.create(volume_published_to("vol-1", {"node-a"})); !st.is_ok()) return st;
    return tx.create(volume_published_to("vol-2", {"node-a"}));
  });
  api::UpdateVolumeStatusRequest req;
  req.set_session_id(r.first.session_id());
  auto* ignored = req.add_updates();
  ignored->set_id("vol-1");
  ignored->set_unpublished(false);
  auto* applied = req.add_updates();  // same request, so the same flush
  applied->set_id("vol-2");
  applied->set_unpublished(true);
  grpc::Status st = agent.update_volume_status(as_node("node-a"), req);
  ASSERT_TRUE(st.ok()) << st.error_message();
  ASSERT_TRUE(server.eventually([&] {
    auto v =
        server.server().store().view([](const store::ReadTx& tx) { return tx.volume("vol-2"); });
    return publish_state(*v, "node-a") == api::VolumePublishStatus::PENDING_UNPUBLISH;
  }));
  EXPECT_EQ(publish_state(*stored_volume(server, "vol-1"), "node-a"),
            api::VolumePublishStatus::PUBLISHED);
}

}  // namespace
