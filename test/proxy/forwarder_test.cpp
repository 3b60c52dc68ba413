// The follower's proxy (docs/behaviour.md §9.4): two in-process managers, leader A and follower
// B forwarding to A, and agents on the real gRPC C++ client talking to B. Everything an agent
// sees must be A's answer; A must see the agent (its identity, its address), not B. B listens
// on [::1] and dials A on 127.0.0.1, so the address A records tells the agent's connection from
// the forwarder's. Each behaviour runs over h2c and over mutual TLS.

#include "dispatchd/proxy/forwarder.hpp"

#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <chrono>
#include <future>
#include <memory>
#include <string>
#include <thread>

#include "dispatcher.grpc.pb.h"
#include "logbroker.grpc.pb.h"
#include "support/agent.hpp"
#include "support/certs.hpp"
#include "support/test_server.hpp"

namespace {

namespace api = docker::swarmkit::v1;
using namespace dispatchd::test;
using dispatchd::test::read_file;
using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

const std::string& cert_dir() {
  static const std::string dir =
      make_test_certs("proxy", "--org proxyorg --nodes 2 --manager-id mgr-0");
  return dir;
}

dispatchd::app::Options manager_options(bool tls, const std::string& listen,
                                        const std::string& node_id) {
  auto o = TestServer::default_options();
  o.listen = listen;
  o.dispatcher.manager_node_id = node_id;
  o.forward_stream_wait = 2s;  // a stream waits this long for a leader, then fails UNAVAILABLE
  if (tls) {
    o.insecure = false;
    o.tls = {cert_dir() + "/server.pem", cert_dir() + "/server.key", cert_dir() + "/ca.pem"};
    o.tls_handshake_threads = 0;
  }
  return o;
}

class ForwarderTest : public ::testing::TestWithParam<bool> {
 protected:
  ForwarderTest()
      : leader_(std::make_unique<TestServer>(manager_options(tls(), "127.0.0.1:0", "manager-a"))),
        follower_(manager_options(tls(), "[::1]:0", "manager-b")) {
    set_leader(leader_->address());
  }

  bool tls() const { return GetParam(); }

  void set_leader(std::optional<std::string> addr) {
    follower_.call([&] {
      auto& f = follower_.server().forwarder();
      f.set_forwarding(true);
      f.set_leader(addr);
      return 0;
    });
  }

  // An agent's channel to the follower: node-1's certificate over TLS, plain h2c otherwise.
  std::shared_ptr<grpc::Channel> agent_channel() {
    grpc::ChannelArguments args;
    args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
    const std::string target = "[::1]:" + std::to_string(follower_.port());
    if (!tls()) return grpc::CreateCustomChannel(target, grpc::InsecureChannelCredentials(), args);
    grpc::SslCredentialsOptions o;
    o.pem_root_certs = read_file(cert_dir() + "/ca.pem");
    o.pem_private_key = read_file(cert_dir() + "/node-1.key");
    o.pem_cert_chain = read_file(cert_dir() + "/node-1.pem");
    args.SetSslTargetNameOverride("swarm-manager");
    return grpc::CreateCustomChannel(target, grpc::SslCredentials(o), args);
  }

  // A channel straight to the leader presenting `cert` (TLS) or nothing (h2c).
  std::shared_ptr<grpc::Channel> leader_channel(const std::string& cert) {
    grpc::ChannelArguments args;
    args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
    if (!tls()) {
      return grpc::CreateCustomChannel(leader_->address(), grpc::InsecureChannelCredentials(),
                                       args);
    }
    grpc::SslCredentialsOptions o;
    o.pem_root_certs = read_file(cert_dir() + "/ca.pem");
    o.pem_private_key = read_file(cert_dir() + "/" + cert + ".key");
    o.pem_cert_chain = read_file(cert_dir() + "/" + cert + ".pem");
    args.SetSslTargetNameOverride("swarm-manager");
    return grpc::CreateCustomChannel(leader_->address(), grpc::SslCredentials(o), args);
  }

  // The agent's identity: its certificate names node-1; in insecure mode its metadata does.
  Metadata agent_md() const { return tls() ? Metadata{} : as_node(kAgent); }

  std::size_t leader_sessions() {
    return leader_->call([&] { return leader_->server().dispatcher().open_sessions(); });
  }

  static constexpr const char* kAgent = "node-1";
  std::unique_ptr<TestServer> leader_;
  TestServer follower_;
};

INSTANTIATE_TEST_SUITE_P(Transport, ForwarderTest, ::testing::Values(false, true),
                         [](const auto& info) { return info.param ? "mtls" : "h2c"; });

TEST_P(ForwarderTest, AgentThroughFollowerGetsLeadersSessionHeartbeatAssignmentsAndStatus) {
  auto stub = api::Dispatcher::NewStub(agent_channel());
  auto reg = open_session(*stub, agent_md());
  ASSERT_TRUE(reg && reg->ok);
  ASSERT_FALSE(reg->id().empty());
  EXPECT_EQ(reg->first.node().id(), kAgent);

  // The session is A's: A holds the registration under the agent's node ID, B none.
  auto view = leader_->call([&] { return leader_->server().dispatcher().session_view(kAgent); });
  ASSERT_TRUE(view.has_value());
  EXPECT_EQ(view->session_id, reg->id());
  EXPECT_EQ(follower_.call([&] { return follower_.server().dispatcher().open_sessions(); }), 0u);
  // A admitted the agent with its own identity and address (NodeStatus.addr is the agent's IP,
  // ::1, not the forwarder's 127.0.0.1).
  auto node = stored_node(*leader_, kAgent);
  ASSERT_TRUE(node.has_value());
  EXPECT_EQ(node->status().state(), api::NodeStatus::READY);
  EXPECT_EQ(node->status().addr(), "::1");
  EXPECT_EQ(node->role(), api::NodeRole::WORKER);

  api::HeartbeatResponse hb;
  auto hst = stub->Heartbeat(
      context(agent_md()).get(),
      [&] {
        api::HeartbeatRequest r;
        r.set_session_id(reg->id());
        return r;
      }(),
      &hb);
  ASSERT_TRUE(hst.ok()) << describe(hst);
  EXPECT_GT(hb.period().seconds() + hb.period().nanos(), 0);

  // A task assigned on A (created, then assigned by an update as the scheduler does) reaches
  // the agent through B.
  auto task_1 = task_object("task-1", "", api::PENDING);
  task_1.set_service_id("service-1");
  task_1.mutable_spec()->mutable_container()->set_image("busybox:latest");
  write(*leader_, [&](dispatchd::store::WriteTx& tx) { return tx.create(task_1); });
  auto assignments = std::make_unique<AssignmentsStream>();
  assignments->ctx = context(agent_md());
  api::AssignmentsRequest areq;
  areq.set_session_id(reg->id());
  assignments->reader = stub->Assignments(assignments->ctx.get(), areq);
  api::AssignmentsMessage first;
  ASSERT_TRUE(assignments->read(first));
  EXPECT_EQ(first.type(), api::AssignmentsMessage::COMPLETE);
  task_1.set_node_id(kAgent);
  task_1.mutable_status()->set_state(api::ASSIGNED);
  write(*leader_, [&](dispatchd::store::WriteTx& tx) { return tx.update(task_1); });
  api::AssignmentsMessage next;
  ASSERT_TRUE(assignments->read(next));
  ASSERT_EQ(next.changes_size(), 1);
  EXPECT_EQ(next.changes(0).assignment().task().id(), "task-1");

  // Its status, reported through B, lands in A's store.
  api::UpdateTaskStatusRequest ureq;
  ureq.set_session_id(reg->id());
  *ureq.add_updates() = status_update("task-1", api::RUNNING);
  api::UpdateTaskStatusResponse uresp;
  auto ust = stub->UpdateTaskStatus(context(agent_md()).get(), ureq, &uresp);
  ASSERT_TRUE(ust.ok()) << describe(ust);
  auto task = stored_task(*leader_, "task-1");
  ASSERT_TRUE(task.has_value());
  EXPECT_EQ(task->status().state(), api::RUNNING);

  // A's errors come back unchanged: a wrong session.
  api::HeartbeatRequest bad;
  bad.set_session_id("not-a-session");
  auto bst = stub->Heartbeat(context(agent_md()).get(), bad, &hb);
  EXPECT_EQ(bst.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << describe(bst);
  EXPECT_EQ(bst.error_message(), "session invalid");

  // Operators see the follower relaying.
  auto metrics = follower_.call([&] { return follower_.server().render_metrics(); });
  EXPECT_NE(metrics.find("\ndispatchd_forwarding 1\n"), std::string::npos);
  EXPECT_NE(metrics.find("\ndispatchd_forwarder_connects_total 1\n"), std::string::npos);
  EXPECT_EQ(metrics.find("\ndispatchd_forwarded_calls_total 0\n"), std::string::npos);
}

TEST_P(ForwarderTest, CallerThatAlreadySentRedirectGetsResourceExhausted) {
  auto stub = api::Dispatcher::NewStub(agent_channel());
  auto md = agent_md();
  md.emplace_back("redirect", "10.0.0.9:4242");
  api::HeartbeatRequest req;
  api::HeartbeatResponse resp;
  auto st = stub->Heartbeat(context(md).get(), req, &resp);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << describe(st);
  EXPECT_EQ(st.error_message(), "more than one redirect to leader from: [10.0.0.9:4242]");
}

TEST_P(ForwarderTest, AgentIdentityMetadataCannotImpersonateAnotherNode) {
  if (tls()) GTEST_SKIP() << "over TLS the certificate names the agent; metadata is ignored";
  // A caller that claims to forward for someone else is forwarded as what it is.
  auto stub = api::Dispatcher::NewStub(agent_channel());
  Metadata md = as_node(kAgent);
  md.emplace_back("forwarded_cert", "true");
  md.emplace_back("forwarded_cert_cn", "victim");
  md.emplace_back("forwarded_cert_ou", "swarm-manager");
  md.emplace_back("forwarded_cert_org", "dispatchd");
  auto reg = open_session(*stub, md);
  ASSERT_TRUE(reg && reg->ok);
  EXPECT_EQ(reg->first.node().id(), kAgent);
  EXPECT_FALSE(stored_node(*leader_, "victim").has_value());
}

TEST_P(ForwarderTest, CancellingTheAgentsSessionEndsTheUpstreamSession) {
  auto stub = api::Dispatcher::NewStub(agent_channel());
  auto reg = open_session(*stub, agent_md());
  ASSERT_TRUE(reg && reg->ok);
  EXPECT_EQ(leader_sessions(), 1u);
  reg->stream->cancel();
  auto st = reg->stream->finish();
  EXPECT_EQ(st.error_code(), grpc::StatusCode::CANCELLED);
  EXPECT_TRUE(
      leader_->eventually([&] { return leader_->server().dispatcher().open_sessions() == 0; }));
  EXPECT_TRUE(
      follower_.eventually([&] { return follower_.server().forwarder().active_calls() == 0; }));
}

TEST_P(ForwarderTest, LeaderStoppingEndsTheAgentsStreamWithTheLeadersStatus) {
  auto stub = api::Dispatcher::NewStub(agent_channel());
  auto reg = open_session(*stub, agent_md());
  ASSERT_TRUE(reg && reg->ok);
  ASSERT_TRUE(leader_->stop());
  int left = 0;
  auto st = reg->stream->finish(&left);
  // A's final message and its status, as A sent them.
  EXPECT_GE(left, 1);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::ABORTED) << describe(st);
  EXPECT_EQ(st.error_message(), "node must disconnect");
}

TEST_P(ForwarderTest, WithoutLeaderUnaryFailsAtItsDeadlineAndStreamsAfterTheirWait) {
  set_leader(std::nullopt);
  auto stub = api::Dispatcher::NewStub(agent_channel());

  api::HeartbeatRequest req;
  api::HeartbeatResponse resp;
  auto t0 = Clock::now();
  auto st = stub->Heartbeat(context(agent_md(), 1s).get(), req, &resp);
  auto waited = Clock::now() - t0;
  EXPECT_EQ(st.error_code(), grpc::StatusCode::UNAVAILABLE) << describe(st);
  EXPECT_GE(waited, 800ms);

  t0 = Clock::now();
  auto session = std::make_unique<SessionStream>();
  session->ctx = context(agent_md(), 20s);
  session->reader = stub->Session(session->ctx.get(), api::SessionRequest());
  auto sst = session->finish();
  EXPECT_EQ(sst.error_code(), grpc::StatusCode::UNAVAILABLE) << describe(sst);
  EXPECT_LT(Clock::now() - t0, 5s);
}

TEST_P(ForwarderTest, UnreachableLeaderFailsUnaryAtItsDeadlineAndStreamsAfterTheirWait) {
  // A port nothing listens on: A's, once A has stopped.
  const std::string gone = leader_->address();
  ASSERT_TRUE(leader_->stop());
  leader_.reset();
  set_leader(gone);
  auto stub = api::Dispatcher::NewStub(agent_channel());

  api::HeartbeatRequest req;
  api::HeartbeatResponse resp;
  auto t0 = Clock::now();
  auto st = stub->Heartbeat(context(agent_md(), 2s).get(), req, &resp);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::UNAVAILABLE) << describe(st);
  EXPECT_GE(Clock::now() - t0, 1800ms);
  // It kept trying (every 500 ms), not just once.
  EXPECT_GE(follower_.call([&] { return follower_.server().forwarder().stats().dial_failures; }),
            2u);

  t0 = Clock::now();
  auto session = std::make_unique<SessionStream>();
  session->ctx = context(agent_md(), 20s);
  session->reader = stub->Session(session->ctx.get(), api::SessionRequest());
  auto sst = session->finish();
  EXPECT_EQ(sst.error_code(), grpc::StatusCode::UNAVAILABLE) << describe(sst);
  EXPECT_LT(Clock::now() - t0, 5s);
}

TEST_P(ForwarderTest, SetLeaderLetsAWaitingUnaryCallThrough) {
  // The agent's session, made on A directly.
  grpc::ChannelArguments args;
  std::unique_ptr<Registered> reg;
  std::shared_ptr<grpc::Channel> direct;
  if (tls()) {
    grpc::SslCredentialsOptions o;
    o.pem_root_certs = read_file(cert_dir() + "/ca.pem");
    o.pem_private_key = read_file(cert_dir() + "/node-1.key");
    o.pem_cert_chain = read_file(cert_dir() + "/node-1.pem");
    args.SetSslTargetNameOverride("swarm-manager");
    direct = grpc::CreateCustomChannel(leader_->address(), grpc::SslCredentials(o), args);
  } else {
    direct =
        grpc::CreateCustomChannel(leader_->address(), grpc::InsecureChannelCredentials(), args);
  }
  auto direct_stub = api::Dispatcher::NewStub(direct);
  reg = open_session(*direct_stub, agent_md());
  ASSERT_TRUE(reg && reg->ok);

  set_leader(std::nullopt);
  auto stub = api::Dispatcher::NewStub(agent_channel());
  auto heartbeat = std::async(std::launch::async, [&] {
    api::HeartbeatRequest req;
    req.set_session_id(reg->id());
    api::HeartbeatResponse resp;
    return stub->Heartbeat(context(agent_md(), 20s).get(), req, &resp);
  });
  ASSERT_TRUE(
      follower_.eventually([&] { return follower_.server().forwarder().active_calls() == 1; }));
  EXPECT_EQ(heartbeat.wait_for(300ms), std::future_status::timeout);  // it waits for a leader
  auto t0 = Clock::now();
  set_leader(leader_->address());
  auto st = heartbeat.get();
  EXPECT_TRUE(st.ok()) << describe(st);
  EXPECT_LT(Clock::now() - t0, 5s);
}

TEST_P(ForwarderTest, SetLeaderLetsAWaitingSessionThrough) {
  // During a leader change the agent's Session waits on the follower instead of failing.
  set_leader(std::nullopt);
  auto stub = api::Dispatcher::NewStub(agent_channel());
  auto session = std::async(std::launch::async, [&] { return open_session(*stub, agent_md()); });
  ASSERT_TRUE(
      follower_.eventually([&] { return follower_.server().forwarder().active_calls() == 1; }));
  EXPECT_EQ(session.wait_for(200ms), std::future_status::timeout);  // it waits for a leader
  set_leader(leader_->address());
  auto reg = session.get();
  ASSERT_TRUE(reg && reg->ok);
  EXPECT_FALSE(reg->id().empty());
  EXPECT_EQ(leader_->call([&] { return leader_->server().dispatcher().open_sessions(); }), 1u);
}

TEST_P(ForwarderTest, AgentsLogBrokerCallsGoToTheLeader) {
  // The agent listens for log subscriptions through B; an operator subscribes on A.
  write(*leader_, [&](dispatchd::store::WriteTx& tx) {
    auto st = tx.create(node_object(kAgent, api::NodeStatus::READY));
    if (!st.is_ok()) return st;
    return tx.create(task_object("task-l", kAgent, api::RUNNING));
  });
  auto broker = api::LogBroker::NewStub(agent_channel());
  auto lctx = context(agent_md());
  auto listening = broker->ListenSubscriptions(lctx.get(), api::ListenSubscriptionsRequest());
  ASSERT_TRUE(leader_->eventually([&] { return leader_->server().log_broker().listeners() == 1; }));

  auto logs = api::Logs::NewStub(leader_channel("ctl"));
  const Metadata op = tls() ? Metadata{} : as_node("ops-1", "swarm-manager");
  auto sctx = context(op);
  api::SubscribeLogsRequest sreq;
  sreq.mutable_selector()->add_task_ids("task-l");
  auto subscribed = logs->SubscribeLogs(sctx.get(), sreq);
  api::SubscriptionMessage sub;
  ASSERT_TRUE(listening->Read(&sub));
  ASSERT_FALSE(sub.id().empty());

  // The agent publishes through B (a client stream); the operator reads the lines on A.
  auto pctx = context(agent_md());
  api::PublishLogsResponse presp;
  auto publishing = broker->PublishLogs(pctx.get(), &presp);
  api::PublishLogsMessage batch;
  batch.set_subscription_id(sub.id());
  auto* line = batch.add_messages();
  line->mutable_context()->set_node_id(kAgent);
  line->mutable_context()->set_task_id("task-l");
  line->set_stream(api::LOG_STREAM_STDOUT);
  line->set_data("through the follower\n");
  ASSERT_TRUE(publishing->Write(batch));
  api::PublishLogsMessage close;
  close.set_subscription_id(sub.id());
  close.set_close(true);
  ASSERT_TRUE(publishing->Write(close));
  publishing->WritesDone();
  auto pst = publishing->Finish();
  EXPECT_TRUE(pst.ok()) << describe(pst);

  api::SubscribeLogsMessage got;
  ASSERT_TRUE(subscribed->Read(&got));
  ASSERT_EQ(got.messages_size(), 1);
  EXPECT_EQ(got.messages(0).data(), "through the follower\n");
  EXPECT_EQ(got.messages(0).context().node_id(), kAgent);
  while (subscribed->Read(&got)) {
  }
  EXPECT_TRUE(subscribed->Finish().ok());
  lctx->TryCancel();
  listening->Finish();
}

TEST_P(ForwarderTest, NewLeaderTakesNewCallsWhileCallsOnTheOldOneRunOn) {
  auto stub = api::Dispatcher::NewStub(agent_channel());
  auto old_session = open_session(*stub, agent_md());
  ASSERT_TRUE(old_session && old_session->ok);

  TestServer next(manager_options(tls(), "127.0.0.1:0", "manager-c"));
  set_leader(next.address());
  // C never saw the agent: its answer to the old session's heartbeat says so.
  api::HeartbeatRequest hreq;
  hreq.set_session_id(old_session->id());
  api::HeartbeatResponse hresp;
  auto hst = stub->Heartbeat(context(agent_md()).get(), hreq, &hresp);
  EXPECT_EQ(hst.error_code(), grpc::StatusCode::NOT_FOUND) << describe(hst);
  EXPECT_EQ(hst.error_message(), "node not registered");

  // A new session is C's; the old one is still A's, and ends with A's answer.
  auto new_session = open_session(*stub, agent_md());
  ASSERT_TRUE(new_session && new_session->ok);
  EXPECT_EQ(next.call([&] { return next.server().dispatcher().open_sessions(); }), 1u);
  EXPECT_EQ(leader_sessions(), 1u);
  ASSERT_TRUE(leader_->stop());
  auto st = old_session->stream->finish();
  EXPECT_EQ(st.error_code(), grpc::StatusCode::ABORTED) << describe(st);
  EXPECT_EQ(follower_.call([&] { return follower_.server().forwarder().stats().connects; }), 2u);
}

// SIGHUP reloads the follower's certificate for what it forwards too: new calls go over a new
// connection that presents it.
TEST_P(ForwarderTest, ReloadedCertificateIsPresentedToTheLeaderByNewCalls) {
  if (!tls()) GTEST_SKIP() << "h2c: the forwarder presents no certificate";
  // The follower starts with a worker's certificate (node-2): the leader takes no forwarded
  // call from a worker.
  auto worker = dispatchd::net::TlsClientCertificate::load(cert_dir() + "/node-2.pem",
                                                           cert_dir() + "/node-2.key");
  ASSERT_TRUE(worker) << worker.error();
  auto ca = dispatchd::net::TlsClientContext::load(cert_dir() + "/ca.pem");
  ASSERT_TRUE(ca) << ca.error();
  follower_.call([&] {
    follower_.server().forwarder().set_tls(*ca, *worker);
    return 0;
  });
  auto stub = api::Dispatcher::NewStub(agent_channel());
  api::HeartbeatRequest hreq;
  hreq.set_session_id("s");
  api::HeartbeatResponse hresp;
  auto hst = stub->Heartbeat(context(agent_md()).get(), hreq, &hresp);
  EXPECT_EQ(hst.error_code(), grpc::StatusCode::PERMISSION_DENIED) << describe(hst);
  EXPECT_NE(hst.error_message().find("unauthorized forwarder role"), std::string::npos)
      << describe(hst);

  // What SIGHUP does with the server's own files (a manager's certificate).
  auto reloaded = dispatchd::app::ReloadedTls::load(manager_options(true, "", "").tls);
  ASSERT_TRUE(reloaded) << reloaded.error();
  follower_.call([&] {
    follower_.server().reload_tls(std::move(*reloaded));
    return 0;
  });
  auto reg = open_session(*stub, agent_md());
  ASSERT_TRUE(reg && reg->ok);
  EXPECT_EQ(reg->first.node().id(), kAgent);
  EXPECT_EQ(follower_.call([&] { return follower_.server().forwarder().stats().connects; }), 2u);
}

TEST_P(ForwarderTest, ServedLocallyWhenNotForwarding) {
  follower_.call([&] {
    follower_.server().forwarder().set_forwarding(false);
    return 0;
  });
  auto stub = api::Dispatcher::NewStub(agent_channel());
  auto reg = open_session(*stub, agent_md());
  ASSERT_TRUE(reg && reg->ok);
  EXPECT_EQ(follower_.call([&] { return follower_.server().dispatcher().open_sessions(); }), 1u);
  EXPECT_EQ(leader_sessions(), 0u);
  EXPECT_EQ(follower_.call([&] { return follower_.server().forwarder().stats().calls; }), 0u);
}

}  // namespace
