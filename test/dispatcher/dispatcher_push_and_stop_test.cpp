// SessionMessages pushed on node, manager and cluster changes, disconnecting a node, and
// the dispatcher's stop (docs/behaviour.md §4.8, §2 at stop, §0.4, §0.6, §0.9).
// Over the wire, judged by the real gRPC C++ client (test/support/agent.hpp).

#include <gtest/gtest.h>

#include <asio/post.hpp>
#include <atomic>
#include <future>
#include <thread>

#include "support/agent.hpp"

namespace {

using namespace dispatchd::test;  // the agent and the setup helpers (support/agent.hpp)

// =============================================================================================
// Pushed SessionMessages (docs/behaviour.md §4.8)

TEST(DispatcherSessionTest, NodeUpdateIsPushedToSession) {
  TestServer server;
  Agent agent(server);
  auto r = register_node(agent, as_node("node-a"));
  ASSERT_TRUE(r.ok) << r.status.error_message();
  write(server, [](store::WriteTx& tx) {
    api::Node n = *tx.node("node-a");
    n.mutable_spec()->set_availability(api::NodeSpec::DRAIN);
    return tx.update(std::move(n));
  });
  api::SessionMessage m;
  ASSERT_TRUE(r.stream->read(m));
  EXPECT_EQ(m.session_id(), r.first.session_id());
  EXPECT_EQ(m.node().id(), "node-a");
  EXPECT_EQ(m.node().spec().availability(), api::NodeSpec::DRAIN);
  EXPECT_EQ(m.node().status().state(), api::NodeStatus::READY);
  ASSERT_EQ(m.managers_size(), 1);  // the fields not carried by the event are filled in
  EXPECT_EQ(m.managers(0).peer().addr(), server.address());
}

TEST(DispatcherSessionTest, ManagerListChangeIsPushedToAllSessions) {
  constexpr int kNodes = 20;
  TestServer server;
  Agent agent(server);
  std::vector<Registered> sessions;
  for (int i = 0; i < kNodes; ++i) {
    sessions.push_back(register_node(agent, as_node("node-" + std::to_string(i))));
    ASSERT_TRUE(sessions.back().ok) << i << ": " << sessions.back().status.error_message();
  }
  write(server, [](store::WriteTx& tx) {
    store::ManagerList managers;
    for (int i = 1; i <= 3; ++i) {
      api::WeightedPeer p;
      p.mutable_peer()->set_node_id("mgr-" + std::to_string(i));
      p.mutable_peer()->set_addr("10.0.0." + std::to_string(i) + ":4242");
      p.set_weight(10);
      managers.push_back(p);
    }
    tx.set_managers(std::move(managers));
    return dg::Status::ok();
  });
  for (int i = 0; i < kNodes; ++i) {
    api::SessionMessage m;
    ASSERT_TRUE(sessions[i].stream->read(m)) << "session " << i;
    EXPECT_EQ(m.session_id(), sessions[i].first.session_id());
    EXPECT_EQ(m.node().id(), "node-" + std::to_string(i));
    ASSERT_EQ(m.managers_size(), 3) << "session " << i;
    for (int k = 0; k < 3; ++k) {
      EXPECT_EQ(m.managers(k).peer().node_id(), "mgr-" + std::to_string(k + 1));
      EXPECT_EQ(m.managers(k).peer().addr(), "10.0.0." + std::to_string(k + 1) + ":4242");
      EXPECT_EQ(m.managers(k).weight(), 10);
    }
  }
}

TEST(DispatcherSessionTest, ClusterKeysAndRootCaChangeIsPushed) {
  TestServer server;
  Agent agent(server);
  auto r = register_node(agent, as_node("node-a"));
  ASSERT_TRUE(r.ok) << r.status.error_message();
  const std::string ca = "-----BEGIN CERTIFICATE-----\nrotated\n-----END CERTIFICATE-----\n";
  write(server, [&](store::WriteTx& tx) {
    api::Cluster c = *tx.cluster();
    auto* k1 = c.add_network_bootstrap_keys();
    k1->set_subsystem("networking:gossip");
    k1->set_key("key-one");
    k1->set_lamport_time(7);
    auto* k2 = c.add_network_bootstrap_keys();
    k2->set_subsystem("networking:ipsec");
    k2->set_key("key-two");
    k2->set_lamport_time(8);
    c.mutable_root_ca()->set_ca_cert(ca);
    return tx.update(std::move(c));
  });
  api::SessionMessage m;
  ASSERT_TRUE(r.stream->read(m));
  EXPECT_EQ(m.session_id(), r.first.session_id());
  EXPECT_EQ(m.rootca(), ca);
  ASSERT_EQ(m.network_bootstrap_keys_size(), 2);
  EXPECT_EQ(m.network_bootstrap_keys(0).subsystem(), "networking:gossip");
  EXPECT_EQ(m.network_bootstrap_keys(0).key(), "key-one");
  EXPECT_EQ(m.network_bootstrap_keys(0).lamport_time(), 7u);
  EXPECT_EQ(m.network_bootstrap_keys(1).key(), "key-two");
  EXPECT_EQ(m.network_bootstrap_keys(1).lamport_time(), 8u);
  ASSERT_EQ(m.managers_size(), 1);
  EXPECT_EQ(m.node().id(), "node-a");
}

TEST(DispatcherSessionTest, NodeRemovalEndsSessionWithNodeMustDisconnect) {
  TestServer server;
  Agent agent(server);
  auto r = register_node(agent, as_node("node-a"));
  ASSERT_TRUE(r.ok) << r.status.error_message();
  write(server, [](store::WriteTx& tx) { return tx.remove_node("node-a"); });
  api::SessionMessage last;
  ASSERT_TRUE(r.stream->read(last)) << "no final message";
  EXPECT_EQ(last.session_id(), r.first.session_id());
  grpc::Status st = r.stream->finish();
  EXPECT_TRUE(r.stream->rest().empty()) << r.stream->rest().size() << " more messages";
  EXPECT_EQ(st.error_code(), grpc::StatusCode::ABORTED);
  EXPECT_EQ(st.error_message(), "node must disconnect");
}

TEST(DispatcherSessionTest, EveryClusterUpdateIsPushedEvenWithoutChange) {
  TestServer server;
  Agent agent(server);
  auto r = register_node(agent, as_node("node-a"));
  ASSERT_TRUE(r.ok) << r.status.error_message();
  write(server, [](store::WriteTx& tx) { return tx.update(api::Cluster(*tx.cluster())); });
  api::SessionMessage m;
  ASSERT_TRUE(r.stream->read(m));
  EXPECT_EQ(m.session_id(), r.first.session_id());
  EXPECT_EQ(m.node().spec().availability(), api::NodeSpec::ACTIVE);
  ASSERT_EQ(m.managers_size(), 1);
  // Exactly one message: the next one is the next change.
  write(server, [](store::WriteTx& tx) {
    api::Node n = *tx.node("node-a");
    n.mutable_spec()->set_availability(api::NodeSpec::PAUSE);
    return tx.update(std::move(n));
  });
  ASSERT_TRUE(r.stream->read(m));
  EXPECT_EQ(m.node().spec().availability(), api::NodeSpec::PAUSE);
}

TEST(DispatcherSessionTest, ConfiguredRootCaIsSentInFirstMessage) {
  const std::string ca = "-----BEGIN CERTIFICATE-----\nconfigured\n-----END CERTIFICATE-----\n";
  TestServer server(options_with([&](auto& o) { o.dispatcher.root_ca_pem = ca; }));
  Agent agent(server);
  auto r = register_node(agent, as_node("node-a"));
  ASSERT_TRUE(r.ok) << r.status.error_message();
  EXPECT_EQ(r.first.rootca(), ca);
}

TEST(DispatcherSessionTest, OperatorDisconnectEndsSessionAndMarksNodeDisconnected) {
  TestServer server;
  Agent agent(server);
  auto r = register_node(agent, as_node("node-a"));
  ASSERT_TRUE(r.ok) << r.status.error_message();
  ASSERT_TRUE(server.call([&] { return server.server().dispatcher().disconnect_node("node-a"); }));
  api::SessionMessage last;
  ASSERT_TRUE(r.stream->read(last)) << "no final message";
  EXPECT_EQ(last.session_id(), r.first.session_id());
  grpc::Status st = r.stream->finish();
  EXPECT_EQ(st.error_code(), grpc::StatusCode::ABORTED);
  EXPECT_EQ(st.error_message(), "node must disconnect");
  EXPECT_TRUE(server.eventually(
      [&] { return node_state(server, "node-a") == api::NodeStatus::DISCONNECTED; }));
  EXPECT_EQ(stored_node(server, "node-a")->status().message(),
            "node is currently trying to find new manager");
  EXPECT_EQ(server.call([&] { return server.server().dispatcher().registered_nodes(); }), 0u);
  st = agent.heartbeat(as_node("node-a"), r.first.session_id());
  EXPECT_EQ(st.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(st.error_message(), "node not registered");
}
// =============================================================================================
// Dispatcher stop (docs/behaviour.md §2, at stop; §0.4, §0.6)

TEST(DispatcherSessionTest, DispatcherStopSendsFinalMessageThenNodeMustDisconnect) {
  TestServer server;
  Agent agent(server);
  auto r = register_node(agent, as_node("node-a"));
  ASSERT_TRUE(r.ok) << r.status.error_message();
  std::thread stopper([&] { EXPECT_TRUE(server.stop()); });
  api::SessionMessage last;
  EXPECT_TRUE(r.stream->read(last)) << "no final message";
  EXPECT_EQ(last.session_id(), r.first.session_id());
  EXPECT_EQ(last.node().id(), "node-a");
  grpc::Status st = r.stream->finish();
  EXPECT_TRUE(r.stream->rest().empty()) << r.stream->rest().size() << " more messages";
  EXPECT_EQ(st.error_code(), grpc::StatusCode::ABORTED);
  EXPECT_EQ(st.error_message(), "node must disconnect");
  stopper.join();
  // Marking the node DISCONNECTED fails once the dispatcher is stopped: it stays as it was.
  auto n = server.server().store().view([](const store::ReadTx& tx) { return tx.node("node-a"); });
  ASSERT_TRUE(n);
  EXPECT_EQ(n->status().state(), api::NodeStatus::READY);
}

TEST(DispatcherSessionTest, DispatcherStopFlushesPendingTaskUpdates) {
  TestServer server;
  Agent agent(server);
  auto r = register_node(agent, as_node("node-a"));
  ASSERT_TRUE(r.ok) << r.status.error_message();

  // Stop is requested on the server thread at a moment when updates are queued but not yet
  // written. A check that re-posts itself on the server thread is always queued ahead of the
  // flush a handler posts after queuing its update, so a burst of calls lets it catch that
  // moment; bursts repeat until it does.
  constexpr int kRounds = 20;
  constexpr int kCalls = 200;
  struct Call {
    std::string task_id;
    std::unique_ptr<grpc::ClientContext> ctx;
    api::UpdateTaskStatusResponse resp;
    grpc::Status status;
    std::unique_ptr<grpc::ClientAsyncResponseReader<api::UpdateTaskStatusResponse>> rpc;
  };
  std::vector<std::unique_ptr<Call>> calls;
  bool caught = false;
  std::size_t running_at_stop = 0, pending_at_stop = 0;
  auto count_running = [&] {
    std::size_t n = 0;
    server.server().store().view([&](const store::ReadTx& tx) {
      for (const auto& t : tx.tasks())
        n += t->status().state() == api::RUNNING;
      return 0;
    });
    return n;
  };
  for (int round = 0; round < kRounds && !caught; ++round) {
    std::vector<api::Task> tasks;
    for (int i = 0; i < kCalls; ++i) {
      std::string id = "r";
      id += std::to_string(round) + "-" + std::to_string(i);
      tasks.push_back(task_object(id, "node-a", api::ASSIGNED));
    }
    write(server, [&](store::WriteTx& tx) {
      for (auto& t : tasks) {
        if (auto st = tx.create(t); !st.is_ok()) return st;
      }
      return dg::Status::ok();
    });

    std::atomic<bool> give_up{false};
    std::promise<bool> stopped_with_pending;
    std::function<void()> check = [&] {
      auto& d = server.server().dispatcher();
      if (d.pending_updates() > 0) {
        running_at_stop = count_running();
        pending_at_stop = d.pending_updates();
        server.server().stop();
        stopped_with_pending.set_value(true);
      } else if (give_up) {
        stopped_with_pending.set_value(false);
      } else {
        asio::post(server.server().wheel().io(), check);
      }
    };
    server.call([&] {
      asio::post(server.server().wheel().io(), check);
      return 0;
    });

    grpc::CompletionQueue cq;
    const std::size_t begin = calls.size();
    for (const auto& t : tasks) {
      auto c = std::make_unique<Call>();
      c->task_id = t.id();
      c->ctx = context(as_node("node-a"));
      api::UpdateTaskStatusRequest req;
      req.set_session_id(r.first.session_id());
      *req.add_updates() = status_update(t.id(), api::RUNNING);
      c->rpc = agent.stub().AsyncUpdateTaskStatus(c->ctx.get(), req, &cq);
      c->rpc->Finish(&c->resp, &c->status, c.get());
      calls.push_back(std::move(c));
    }
    for (int n = 0; n < kCalls; ++n) {
      void* tag;
      bool ok;
      ASSERT_TRUE(cq.Next(&tag, &ok));
    }
    cq.Shutdown();
    void* tag;
    bool ok;
    while (cq.Next(&tag, &ok)) {
    }
    give_up = true;
    caught = stopped_with_pending.get_future().get();
    if (!caught) {
      for (std::size_t i = begin; i < calls.size(); ++i) {
        ASSERT_TRUE(calls[i]->status.ok()) << calls[i]->status.error_message();
      }
    }
  }
  ASSERT_TRUE(caught) << "never saw updates pending; cannot check the flush on stop";
  ASSERT_GT(pending_at_stop, 0u);
  ASSERT_TRUE(server.stop());

  // The server thread has exited: its state can be read directly.
  auto& d = server.server().dispatcher();
  EXPECT_EQ(d.pending_updates(), 0u);
  EXPECT_EQ(count_running(), running_at_stop + pending_at_stop)
      << pending_at_stop << " updates were pending at stop";
  for (const auto& c : calls) {
    if (!c->status.ok()) continue;
    auto t =
        server.server().store().view([&](const store::ReadTx& tx) { return tx.task(c->task_id); });
    ASSERT_TRUE(t);
    EXPECT_EQ(t->status().state(), api::RUNNING) << c->task_id << " acknowledged but not written";
  }
}

}  // namespace
