// The operator API (proto/control.proto), judged over the wire by the real gRPC C++ client: each
// change must reach the agents' own streams, as an orchestrator's change does in SwarmKit.

#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <chrono>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "control.grpc.pb.h"
#include "dispatcher.grpc.pb.h"
#include "support/agent.hpp"
#include "support/certs.hpp"
#include "support/grpc_client.hpp"
#include "support/http_get.hpp"
#include "support/test_server.hpp"

namespace {

namespace api = docker::swarmkit::v1;
namespace pb = dispatchd::control::v1;
using dispatchd::test::TestServer;
using namespace std::chrono_literals;
using dispatchd::test::as_node;
using dispatchd::test::Metadata;

const Metadata kOperator = {{"node-id", "ops-1"}, {"node-role", "swarm-manager"}};

using dispatchd::test::context;
using dispatchd::test::Registered;

class ControlTest : public ::testing::Test {
 protected:
  ControlTest()
      : channel_(grpc::CreateChannel(server_.address(), grpc::InsecureChannelCredentials())),
        control_(pb::Control::NewStub(channel_)),
        dispatcher_(api::Dispatcher::NewStub(channel_)) {}

  template <class Req, class Resp>
  grpc::Status call(grpc::Status (pb::Control::Stub::*m)(grpc::ClientContext*, const Req&, Resp*),
                    const Req& req, Resp* resp, const Metadata& md = kOperator) {
    auto ctx = context(md);
    return ((*control_).*m)(ctx.get(), req, resp);
  }

  // An agent's open Session with its first message read.
  std::unique_ptr<Registered> open_session(const std::string& node_id) {
    return dispatchd::test::open_session(*dispatcher_, node_id);
  }

  pb::NodeSummary node_summary(const std::string& id) {
    pb::GetNodeRequest req;
    req.set_node_id(id);
    pb::GetNodeResponse resp;
    auto st = call(&pb::Control::Stub::GetNode, req, &resp);
    EXPECT_TRUE(st.ok()) << st.error_message();
    return resp.summary();
  }

  TestServer server_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<pb::Control::Stub> control_;
  std::unique_ptr<api::Dispatcher::Stub> dispatcher_;
};

TEST_F(ControlTest, WorkersAndAnonymousCallersAreRefused) {
  pb::ListNodesResponse resp;
  auto st = call(&pb::Control::Stub::ListNodes, pb::ListNodesRequest{}, &resp, as_node("node-w"));
  EXPECT_EQ(st.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_EQ(st.error_message(),
            "Permission denied: unauthorized peer role: rpc error: code = PermissionDenied desc = "
            "Permission denied: remote certificate not part of OUs: [swarm-manager]");
  st = call(&pb::Control::Stub::ListNodes, pb::ListNodesRequest{}, &resp, Metadata{});
  EXPECT_EQ(st.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  // A manager may not act for someone else through forwarding metadata.
  Metadata forwarded = kOperator;
  forwarded.emplace_back("forwarded_cert", "true");
  forwarded.emplace_back("forwarded_cert_cn", "node-w");
  forwarded.emplace_back("forwarded_cert_ou", "swarm-worker");
  forwarded.emplace_back("forwarded_cert_org", "dispatchd");
  st = call(&pb::Control::Stub::ListNodes, pb::ListNodesRequest{}, &resp, forwarded);
  EXPECT_TRUE(st.ok()) << st.error_message();  // judged as the manager itself, not the worker
}

TEST_F(ControlTest, ListNodesShowsSessionsAndFilters) {
  auto a = open_session("node-a");
  auto b = open_session("node-b");
  pb::ListNodesResponse resp;
  ASSERT_TRUE(call(&pb::Control::Stub::ListNodes, pb::ListNodesRequest{}, &resp).ok());
  ASSERT_EQ(resp.nodes_size(), 2);
  EXPECT_EQ(resp.nodes(0).id(), "node-a");
  EXPECT_EQ(resp.nodes(1).id(), "node-b");
  EXPECT_EQ(resp.nodes(0).state(), api::NodeStatus::READY);
  EXPECT_EQ(resp.nodes(0).addr(), "127.0.0.1");
  EXPECT_EQ(resp.nodes(0).session().session_id(), a->first.session_id());
  EXPECT_TRUE(resp.nodes(0).session().streaming());
  EXPECT_GT(resp.nodes(0).session().heartbeat_deadline().seconds(),
            resp.nodes(0).session().last_heartbeat().seconds());

  pb::ListNodesRequest only_down;
  only_down.add_states(api::NodeStatus::DOWN);
  ASSERT_TRUE(call(&pb::Control::Stub::ListNodes, only_down, &resp).ok());
  EXPECT_EQ(resp.nodes_size(), 0);

  // When the stream goes, the registration stays but is no longer streaming.
  a->stream->cancel();
  a->stream->finish();
  ASSERT_TRUE(server_.eventually([&] {
    auto v = server_.server().dispatcher().session_view("node-a");
    return v && !v->streaming;
  }));
  EXPECT_FALSE(node_summary("node-a").session().streaming());
}

TEST_F(ControlTest, DrainReachesTheNodesSession) {
  auto s = open_session("node-a");
  pb::UpdateNodeRequest req;
  req.set_node_id("node-a");
  req.set_availability(api::NodeSpec::DRAIN);
  pb::UpdateNodeResponse resp;
  auto st = call(&pb::Control::Stub::UpdateNode, req, &resp);
  ASSERT_TRUE(st.ok()) << st.error_message();
  EXPECT_EQ(resp.node().spec().availability(), api::NodeSpec::DRAIN);

  api::SessionMessage m;
  ASSERT_TRUE(s->stream->read(m));
  EXPECT_EQ(m.node().spec().availability(), api::NodeSpec::DRAIN);
  EXPECT_EQ(node_summary("node-a").availability(), api::NodeSpec::DRAIN);
}

TEST_F(ControlTest, UpdateNodeRefusesUnknownNodesAndValues) {
  pb::UpdateNodeRequest req;
  req.set_node_id("nobody");
  req.set_availability(api::NodeSpec::PAUSE);
  pb::UpdateNodeResponse resp;
  auto st = call(&pb::Control::Stub::UpdateNode, req, &resp);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(st.error_message(), "node nobody not found");

  auto s = open_session("node-a");
  req.set_node_id("node-a");
  req.set_availability(static_cast<api::NodeSpec::Availability>(7));
  st = call(&pb::Control::Stub::UpdateNode, req, &resp);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
}

TEST_F(ControlTest, RemovingALiveNodeNeedsForceAndDisconnectsIt) {
  auto s = open_session("node-a");
  pb::RemoveNodeRequest req;
  req.set_node_id("node-a");
  pb::RemoveNodeResponse resp;
  auto st = call(&pb::Control::Stub::RemoveNode, req, &resp);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_EQ(st.error_message(), "node node-a is not down and can't be removed");

  req.set_force(true);
  st = call(&pb::Control::Stub::RemoveNode, req, &resp);
  ASSERT_TRUE(st.ok()) << st.error_message();
  // The session is told to go: a final message, then ABORTED.
  api::SessionMessage m;
  ASSERT_TRUE(s->stream->read(m));
  EXPECT_FALSE(s->stream->read(m));
  st = s->stream->finish();
  EXPECT_EQ(st.error_code(), grpc::StatusCode::ABORTED);
  EXPECT_EQ(st.error_message(), "node must disconnect");
  // Its registration is gone too (nothing left to heartbeat against or to count).
  EXPECT_TRUE(server_.eventually(
      [&] { return !server_.server().dispatcher().session_view("node-a").has_value(); }));
  EXPECT_EQ(server_.call([&] { return server_.server().dispatcher().registered_nodes(); }), 0u);

  // It cannot come back by opening another session.
  auto ctx = context(as_node("node-a"));
  auto again = dispatcher_->Session(ctx.get(), api::SessionRequest{});
  EXPECT_FALSE(again->Read(&m));
  st = again->Finish();
  EXPECT_EQ(st.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_NE(st.error_message().find("node-a was removed from swarm"), std::string::npos)
      << st.error_message();

  pb::GetNodeRequest get;
  get.set_node_id("node-a");
  pb::GetNodeResponse got;
  EXPECT_EQ(call(&pb::Control::Stub::GetNode, get, &got).error_code(), grpc::StatusCode::NOT_FOUND);
}

TEST_F(ControlTest, TheManagerCannotRemoveItself) {
  pb::RemoveNodeRequest req;
  req.set_node_id("manager-1");
  req.set_force(true);
  pb::RemoveNodeResponse resp;
  EXPECT_EQ(call(&pb::Control::Stub::RemoveNode, req, &resp).error_code(),
            grpc::StatusCode::FAILED_PRECONDITION);
}

TEST_F(ControlTest, CreatedTasksReachTheOpenAssignmentsStreamAndRemovalsToo) {
  auto s = open_session("node-a");
  auto assignments = dispatchd::test::open_assignments(*dispatcher_, "node-a", s->id());
  api::AssignmentsMessage m;
  ASSERT_TRUE(assignments->read(m));
  EXPECT_EQ(m.type(), api::AssignmentsMessage::COMPLETE);
  EXPECT_EQ(m.changes_size(), 0);

  pb::CreateTaskRequest create;
  create.mutable_task()->set_node_id("node-a");
  create.mutable_task()->set_service_id("svc-1");
  pb::CreateTaskResponse created;
  auto st = call(&pb::Control::Stub::CreateTask, create, &created);
  ASSERT_TRUE(st.ok()) << st.error_message();
  const std::string task_id = created.task().id();
  EXPECT_EQ(task_id.size(), 25u);
  EXPECT_EQ(created.task().status().state(), api::ASSIGNED);
  EXPECT_EQ(created.task().desired_state(), api::RUNNING);

  ASSERT_TRUE(assignments->read(m));
  EXPECT_EQ(m.type(), api::AssignmentsMessage::INCREMENTAL);
  ASSERT_EQ(m.changes_size(), 1);
  EXPECT_EQ(m.changes(0).action(), api::AssignmentChange::UPDATE);
  EXPECT_EQ(m.changes(0).assignment().task().id(), task_id);

  pb::ListTasksRequest list;
  list.set_node_id("node-a");
  pb::ListTasksResponse tasks;
  ASSERT_TRUE(call(&pb::Control::Stub::ListTasks, list, &tasks).ok());
  ASSERT_EQ(tasks.tasks_size(), 1);
  EXPECT_EQ(tasks.tasks(0).id(), task_id);
  EXPECT_EQ(node_summary("node-a").tasks(), 1u);

  pb::RemoveTaskRequest rm;
  rm.set_task_id(task_id);
  pb::RemoveTaskResponse removed;
  ASSERT_TRUE(call(&pb::Control::Stub::RemoveTask, rm, &removed).ok());
  ASSERT_TRUE(assignments->read(m));
  ASSERT_EQ(m.changes_size(), 1);
  EXPECT_EQ(m.changes(0).action(), api::AssignmentChange::REMOVE);
  EXPECT_EQ(call(&pb::Control::Stub::RemoveTask, rm, &removed).error_code(),
            grpc::StatusCode::NOT_FOUND);

  create.mutable_task()->set_node_id("nobody");
  EXPECT_EQ(call(&pb::Control::Stub::CreateTask, create, &created).error_code(),
            grpc::StatusCode::NOT_FOUND);
  create.mutable_task()->set_node_id("node-a");
  create.mutable_task()->set_id("fixed-id");
  EXPECT_TRUE(call(&pb::Control::Stub::CreateTask, create, &created).ok());
  EXPECT_EQ(call(&pb::Control::Stub::CreateTask, create, &created).error_code(),
            grpc::StatusCode::ALREADY_EXISTS);
  assignments->cancel();
}

TEST_F(ControlTest, ManagerListAndKeysReachEverySession) {
  auto s = open_session("node-a");
  pb::SetManagersRequest set;
  auto* m1 = set.add_managers();
  m1->mutable_peer()->set_node_id("manager-2");
  m1->mutable_peer()->set_addr("10.0.0.2:4242");
  m1->set_weight(10);
  pb::SetManagersResponse done;
  ASSERT_TRUE(call(&pb::Control::Stub::SetManagers, set, &done).ok());
  api::SessionMessage m;
  ASSERT_TRUE(s->stream->read(m));
  ASSERT_EQ(m.managers_size(), 1);
  EXPECT_EQ(m.managers(0).peer().addr(), "10.0.0.2:4242");
  pb::GetManagersResponse managers;
  ASSERT_TRUE(call(&pb::Control::Stub::GetManagers, pb::GetManagersRequest{}, &managers).ok());
  ASSERT_EQ(managers.managers_size(), 1);

  EXPECT_EQ(call(&pb::Control::Stub::SetManagers, pb::SetManagersRequest{}, &done).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);

  pb::SetNetworkKeysRequest keys;
  auto* k = keys.add_keys();
  k->set_subsystem("networking:gossip");
  k->set_key("0123456789abcdef");
  k->set_lamport_time(3);
  pb::SetNetworkKeysResponse keys_done;
  ASSERT_TRUE(call(&pb::Control::Stub::SetNetworkKeys, keys, &keys_done).ok());
  ASSERT_TRUE(s->stream->read(m));
  ASSERT_EQ(m.network_bootstrap_keys_size(), 1);
  EXPECT_EQ(m.network_bootstrap_keys(0).lamport_time(), 3u);
  pb::GetNetworkKeysResponse got;
  ASSERT_TRUE(call(&pb::Control::Stub::GetNetworkKeys, pb::GetNetworkKeysRequest{}, &got).ok());
  EXPECT_EQ(got.keys_size(), 1);
  s->stream->cancel();
}

TEST_F(ControlTest, UpdateTaskMovesTheDesiredStateForwardOnTheAssignmentsStream) {
  auto s = open_session("node-a");
  auto assignments = dispatchd::test::open_assignments(*dispatcher_, "node-a", s->id());
  api::AssignmentsMessage m;
  ASSERT_TRUE(assignments->read(m));
  pb::CreateTaskRequest create;
  create.mutable_task()->set_node_id("node-a");
  pb::CreateTaskResponse created;
  ASSERT_TRUE(call(&pb::Control::Stub::CreateTask, create, &created).ok());
  ASSERT_TRUE(assignments->read(m));
  const std::string id = created.task().id();

  // Stop it, as SwarmKit's orchestrator does: the agent is told the new desired state.
  pb::UpdateTaskRequest stop;
  stop.set_task_id(id);
  stop.set_desired_state(api::SHUTDOWN);
  pb::UpdateTaskResponse updated;
  auto st = call(&pb::Control::Stub::UpdateTask, stop, &updated);
  ASSERT_TRUE(st.ok()) << st.error_message();
  EXPECT_EQ(updated.task().desired_state(), api::SHUTDOWN);
  ASSERT_TRUE(assignments->read(m));
  EXPECT_EQ(m.type(), api::AssignmentsMessage::INCREMENTAL);
  ASSERT_EQ(m.changes_size(), 1);
  EXPECT_EQ(m.changes(0).action(), api::AssignmentChange::UPDATE);
  EXPECT_EQ(m.changes(0).assignment().task().id(), id);
  EXPECT_EQ(m.changes(0).assignment().task().desired_state(), api::SHUTDOWN);

  // Backwards, unknown, empty: refused, nothing changes.
  pb::UpdateTaskRequest back;
  back.set_task_id(id);
  back.set_desired_state(api::RUNNING);
  st = call(&pb::Control::Stub::UpdateTask, back, &updated);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_EQ(st.error_message(),
            "task " + id + " desired state can only move forward (it is SHUTDOWN)");
  pb::UpdateTaskRequest unknown = stop;
  unknown.set_task_id("no-such-task");
  st = call(&pb::Control::Stub::UpdateTask, unknown, &updated);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(st.error_message(), "task no-such-task not found");
  pb::UpdateTaskRequest nothing;
  nothing.set_task_id(id);
  EXPECT_EQ(call(&pb::Control::Stub::UpdateTask, nothing, &updated).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);

  // The operator override of the status reaches the store with its message.
  pb::UpdateTaskRequest fail;
  fail.set_task_id(id);
  fail.set_state(api::FAILED);
  fail.set_message("host lost");
  ASSERT_TRUE(call(&pb::Control::Stub::UpdateTask, fail, &updated).ok());
  pb::ListTasksResponse tasks;
  ASSERT_TRUE(call(&pb::Control::Stub::ListTasks, pb::ListTasksRequest{}, &tasks).ok());
  ASSERT_EQ(tasks.tasks_size(), 1);
  EXPECT_EQ(tasks.tasks(0).status().state(), api::FAILED);
  EXPECT_EQ(tasks.tasks(0).status().message(), "host lost");
  EXPECT_EQ(tasks.tasks(0).desired_state(), api::SHUTDOWN);
  assignments->cancel();
}

TEST_F(ControlTest, NodeLabelsChangeAndReachTheNodesSession) {
  auto s = open_session("node-a");
  pb::UpdateNodeRequest req;
  req.set_node_id("node-a");
  (*req.mutable_set_labels())["zone"] = "eu-1";
  (*req.mutable_set_labels())["disk"] = "ssd";
  pb::UpdateNodeResponse resp;
  ASSERT_TRUE(call(&pb::Control::Stub::UpdateNode, req, &resp).ok());
  api::SessionMessage m;
  ASSERT_TRUE(s->stream->read(m));
  EXPECT_EQ(m.node().spec().annotations().labels().at("zone"), "eu-1");
  EXPECT_EQ(m.node().spec().annotations().labels().size(), 2u);

  pb::UpdateNodeRequest rm;
  rm.set_node_id("node-a");
  rm.add_remove_labels("disk");
  ASSERT_TRUE(call(&pb::Control::Stub::UpdateNode, rm, &resp).ok());
  ASSERT_TRUE(s->stream->read(m));
  EXPECT_EQ(m.node().spec().annotations().labels().size(), 1u);
  EXPECT_EQ(resp.node().spec().annotations().labels().count("disk"), 0u);

  pb::UpdateNodeRequest bad;
  bad.set_node_id("node-a");
  (*bad.mutable_set_labels())[""] = "x";
  EXPECT_EQ(call(&pb::Control::Stub::UpdateNode, bad, &resp).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
  s->stream->cancel();
}

TEST_F(ControlTest, RootCAReachesEverySessionAndBadBundlesAreRefused) {
  const std::string dir = dispatchd::test::make_test_certs("control-rootca", "--nodes 1");
  const std::string ca = dispatchd::test::read_file(dir + "/ca.pem");
  ASSERT_FALSE(ca.empty());
  auto a = open_session("node-a");
  auto b = open_session("node-b");
  pb::SetRootCARequest set;
  set.set_ca_cert_pem(ca);
  pb::SetRootCAResponse done;
  auto st = call(&pb::Control::Stub::SetRootCA, set, &done);
  ASSERT_TRUE(st.ok()) << st.error_message();
  for (auto* s : {a.get(), b.get()}) {
    api::SessionMessage m;
    ASSERT_TRUE(s->stream->read(m));
    EXPECT_EQ(m.rootca(), ca);
  }
  pb::GetRootCAResponse got;
  ASSERT_TRUE(call(&pb::Control::Stub::GetRootCA, pb::GetRootCARequest{}, &got).ok());
  EXPECT_EQ(got.ca_cert_pem(), ca);

  auto refused = [&](const std::string& pem) {
    pb::SetRootCARequest r;
    r.set_ca_cert_pem(pem);
    auto s = call(&pb::Control::Stub::SetRootCA, r, &done);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << pem.substr(0, 40);
    return s.error_message();
  };
  EXPECT_EQ(refused(""), "the root CA is empty");
  EXPECT_EQ(refused("not a certificate"), "no PEM certificate in the root CA");
  EXPECT_EQ(refused(dispatchd::test::read_file(dir + "/node-1.pem")), "certificate 1 is not a CA");
  // One character of the root's signature changed: still a well-formed certificate.
  std::string damaged = ca;
  auto end = damaged.find("-----END");
  auto last = damaged.rfind('\n', end - 2);           // start of the last base64 line
  auto sig_line = damaged.rfind('\n', last - 1) + 1;  // the line before: signature bytes
  damaged[sig_line + 10] = damaged[sig_line + 10] == 'A' ? 'B' : 'A';
  EXPECT_EQ(refused(ca + damaged),
            "certificate 2 is self-issued but its signature does not verify");
  EXPECT_EQ(refused(ca + "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"),
            "the root CA holds a block that is not a valid certificate");
  ASSERT_TRUE(call(&pb::Control::Stub::GetRootCA, pb::GetRootCARequest{}, &got).ok());
  EXPECT_EQ(got.ca_cert_pem(), ca);
  a->stream->cancel();
  b->stream->cancel();
}

TEST_F(ControlTest, SecretsAndConfigsReachTheAssignmentsOfTheTasksThatUseThem) {
  pb::CreateSecretRequest secret;
  secret.mutable_spec()->mutable_annotations()->set_name("db-pass");
  secret.mutable_spec()->set_data("hunter2");
  pb::CreateSecretResponse made_secret;
  auto st = call(&pb::Control::Stub::CreateSecret, secret, &made_secret);
  ASSERT_TRUE(st.ok()) << st.error_message();
  EXPECT_EQ(made_secret.secret().spec().data(), "") << "a secret's data is never returned";
  const std::string secret_id = made_secret.secret().id();
  pb::CreateConfigRequest config;
  config.mutable_spec()->mutable_annotations()->set_name("app.conf");
  config.mutable_spec()->set_data("port=80\n");
  pb::CreateConfigResponse made_config;
  ASSERT_TRUE(call(&pb::Control::Stub::CreateConfig, config, &made_config).ok());
  EXPECT_EQ(made_config.config().spec().data(), "port=80\n");

  // SwarmKit's rules and words.
  st = call(&pb::Control::Stub::CreateSecret, secret, &made_secret);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::ALREADY_EXISTS);
  EXPECT_EQ(st.error_message(), "secret db-pass already exists");
  pb::CreateSecretRequest big = secret;
  big.mutable_spec()->mutable_annotations()->set_name("big");
  big.mutable_spec()->set_data(std::string(500 * 1024, 'x'));
  st = call(&pb::Control::Stub::CreateSecret, big, &made_secret);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(st.error_message(), "secret data must be larger than 0 and less than 512000 bytes");
  big.mutable_spec()->set_data(std::string(500 * 1024 - 1, 'x'));
  EXPECT_TRUE(call(&pb::Control::Stub::CreateSecret, big, &made_secret).ok());
  pb::CreateSecretRequest badname = secret;
  badname.mutable_spec()->mutable_annotations()->set_name("-db");
  st = call(&pb::Control::Stub::CreateSecret, badname, &made_secret);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(st.error_message(),
            "invalid name, only 64 [a-zA-Z0-9-_.] characters allowed, and the start and end "
            "character must be [a-zA-Z0-9]");

  auto s = open_session("node-a");
  auto assignments = dispatchd::test::open_assignments(*dispatcher_, "node-a", s->id());
  api::AssignmentsMessage m;
  ASSERT_TRUE(assignments->read(m));

  // A task naming a missing secret is refused and nothing is created.
  pb::CreateTaskRequest missing;
  missing.mutable_task()->set_node_id("node-a");
  missing.mutable_task()->mutable_spec()->mutable_container()->add_secrets()->set_secret_name(
      "nope");
  pb::CreateTaskResponse created;
  st = call(&pb::Control::Stub::CreateTask, missing, &created);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(st.error_message(), "secret nope not found");

  pb::CreateTaskRequest create;
  create.mutable_task()->set_node_id("node-a");
  auto* container = create.mutable_task()->mutable_spec()->mutable_container();
  auto* sref = container->add_secrets();
  sref->set_secret_name("db-pass");
  sref->mutable_file()->set_name("db-pass");
  container->add_configs()->set_config_id(made_config.config().id());
  st = call(&pb::Control::Stub::CreateTask, create, &created);
  ASSERT_TRUE(st.ok()) << st.error_message();
  EXPECT_EQ(created.task().spec().container().secrets(0).secret_id(), secret_id);
  EXPECT_EQ(created.task().spec().container().configs(0).config_name(), "app.conf");

  // One message: the secret (with its data) and the config before the task, as SwarmKit sends.
  ASSERT_TRUE(assignments->read(m));
  EXPECT_EQ(m.type(), api::AssignmentsMessage::INCREMENTAL);
  ASSERT_EQ(m.changes_size(), 3);
  EXPECT_EQ(m.changes(0).assignment().secret().id(), secret_id);
  EXPECT_EQ(m.changes(0).assignment().secret().spec().data(), "hunter2");
  EXPECT_EQ(m.changes(1).assignment().config().spec().data(), "port=80\n");
  EXPECT_EQ(m.changes(2).assignment().task().id(), created.task().id());

  // In use: not removable. Listing and lookup by name never show the data.
  pb::RemoveSecretRequest rm;
  rm.set_secret_id("db-pass");
  pb::RemoveSecretResponse removed;
  st = call(&pb::Control::Stub::RemoveSecret, rm, &removed);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_EQ(st.error_message(),
            "secret 'db-pass' is in use by the following task: " + created.task().id());
  pb::ListSecretsResponse secrets;
  ASSERT_TRUE(call(&pb::Control::Stub::ListSecrets, pb::ListSecretsRequest{}, &secrets).ok());
  ASSERT_EQ(secrets.secrets_size(), 2);
  EXPECT_EQ(secrets.secrets(1).spec().annotations().name(), "db-pass");
  EXPECT_EQ(secrets.secrets(1).spec().data(), "");
  pb::GetSecretRequest get;
  get.set_secret_id("db-pass");
  pb::GetSecretResponse got;
  ASSERT_TRUE(call(&pb::Control::Stub::GetSecret, get, &got).ok());
  EXPECT_EQ(got.secret().id(), secret_id);
  EXPECT_EQ(got.secret().spec().data(), "");
  pb::UpdateSecretRequest relabel;
  relabel.set_secret_id(secret_id);
  (*relabel.mutable_labels())["owner"] = "db-team";
  pb::UpdateSecretResponse relabeled;
  ASSERT_TRUE(call(&pb::Control::Stub::UpdateSecret, relabel, &relabeled).ok());
  EXPECT_EQ(relabeled.secret().spec().annotations().labels().at("owner"), "db-team");
  EXPECT_EQ(relabeled.secret().spec().data(), "");

  // Once the task is gone, the secret can go.
  pb::RemoveTaskRequest rm_task;
  rm_task.set_task_id(created.task().id());
  pb::RemoveTaskResponse task_removed;
  ASSERT_TRUE(call(&pb::Control::Stub::RemoveTask, rm_task, &task_removed).ok());
  st = call(&pb::Control::Stub::RemoveSecret, rm, &removed);
  EXPECT_TRUE(st.ok()) << st.error_message();
  EXPECT_EQ(call(&pb::Control::Stub::RemoveSecret, rm, &removed).error_code(),
            grpc::StatusCode::NOT_FOUND);
  assignments->cancel();
}

TEST(ControlKnownNodesTest, PreCreatedNodesAreAdmittedAndOthersAreNot) {
  TestServer server(
      dispatchd::test::options_with([](auto& o) { o.dispatcher.require_known_nodes = true; }));
  auto channel = grpc::CreateChannel(server.address(), grpc::InsecureChannelCredentials());
  auto control = pb::Control::NewStub(channel);
  auto dispatcher = api::Dispatcher::NewStub(channel);
  pb::CreateNodeRequest create;
  create.set_node_id("listed");
  create.set_availability(api::NodeSpec::DRAIN);
  (*create.mutable_labels())["rack"] = "r7";
  pb::CreateNodeResponse created;
  auto st = control->CreateNode(context(kOperator).get(), create, &created);
  ASSERT_TRUE(st.ok()) << st.error_message();
  EXPECT_EQ(created.node().status().state(), api::NodeStatus::UNKNOWN);
  EXPECT_EQ(control->CreateNode(context(kOperator).get(), create, &created).error_code(),
            grpc::StatusCode::ALREADY_EXISTS);
  pb::CreateNodeRequest bad;
  bad.set_node_id("has space");
  EXPECT_EQ(control->CreateNode(context(kOperator).get(), bad, &created).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);

  auto listed = dispatchd::test::open_session(*dispatcher, "listed");
  ASSERT_TRUE(listed->status.ok()) << listed->status.error_message();
  EXPECT_EQ(listed->first.node().spec().availability(), api::NodeSpec::DRAIN);
  EXPECT_EQ(listed->first.node().spec().annotations().labels().at("rack"), "r7");
  EXPECT_EQ(listed->first.node().status().state(), api::NodeStatus::READY);
  dispatchd::test::Agent agent(server);
  auto stranger = dispatchd::test::register_node(agent, as_node("stranger"));
  EXPECT_FALSE(stranger.ok);
  EXPECT_EQ(stranger.status.error_code(), grpc::StatusCode::UNKNOWN);
  EXPECT_EQ(stranger.status.error_message(), "node not found");
  listed->stream->cancel();
}

// ---- volumes

pb::CreateVolumeRequest volume_request(const std::string& name, const std::string& driver) {
  pb::CreateVolumeRequest r;
  r.mutable_spec()->mutable_annotations()->set_name(name);
  r.mutable_spec()->mutable_driver()->set_name(driver);
  return r;
}

class ControlVolumeTest : public ControlTest {
 protected:
  // Every volume as the store holds it, to show that a refused call changed nothing.
  std::string all_volumes() {
    pb::ListVolumesResponse r;
    EXPECT_TRUE(call(&pb::Control::Stub::ListVolumes, pb::ListVolumesRequest{}, &r).ok());
    return r.SerializeAsString();
  }
  api::Volume get(const std::string& id) {
    pb::GetVolumeRequest req;
    req.set_volume_id(id);
    pb::GetVolumeResponse resp;
    EXPECT_TRUE(call(&pb::Control::Stub::GetVolume, req, &resp).ok());
    return resp.volume();
  }
  grpc::Status publish(const std::string& volume, const std::string& node) {
    pb::PublishVolumeRequest req;
    req.set_volume_id(volume);
    req.set_node_id(node);
    (*req.mutable_publish_context())["device"] = "/dev/xvdf";
    pb::PublishVolumeResponse resp;
    return call(&pb::Control::Stub::PublishVolume, req, &resp);
  }
  grpc::Status unpublish(const std::string& volume, const std::string& node) {
    pb::UnpublishVolumeRequest req;
    req.set_volume_id(volume);
    req.set_node_id(node);
    pb::UnpublishVolumeResponse resp;
    return call(&pb::Control::Stub::UnpublishVolume, req, &resp);
  }
  grpc::Status remove(const std::string& volume, bool force = false) {
    pb::RemoveVolumeRequest req;
    req.set_volume_id(volume);
    req.set_force(force);
    pb::RemoveVolumeResponse resp;
    return call(&pb::Control::Stub::RemoveVolume, req, &resp);
  }
};

TEST_F(ControlVolumeTest, BadInputGetsAPreciseStatusAndChangesNothing) {
  pb::CreateVolumeResponse made;
  auto st = call(&pb::Control::Stub::CreateVolume, volume_request("data", "csi.example"), &made);
  ASSERT_TRUE(st.ok()) << st.error_message();
  EXPECT_EQ(made.volume().spec().driver().name(), "csi.example");
  const std::string id = made.volume().id();
  const std::string before = all_volumes();

  auto expect = [&](grpc::Status s, grpc::StatusCode code, const std::string& message) {
    EXPECT_EQ(s.error_code(), code) << s.error_message();
    EXPECT_EQ(s.error_message(), message);
    EXPECT_EQ(all_volumes(), before) << message;
  };
  expect(call(&pb::Control::Stub::CreateVolume, volume_request("data", "csi.example"), &made),
         grpc::StatusCode::ALREADY_EXISTS, "volume data already exists");
  expect(call(&pb::Control::Stub::CreateVolume, volume_request("", "csi.example"), &made),
         grpc::StatusCode::INVALID_ARGUMENT, "meaningful name must be provided");
  expect(call(&pb::Control::Stub::CreateVolume, volume_request("other", ""), &made),
         grpc::StatusCode::INVALID_ARGUMENT, "driver must be specified");
  pb::GetVolumeRequest get_req;
  get_req.set_volume_id("nope");
  pb::GetVolumeResponse got;
  expect(call(&pb::Control::Stub::GetVolume, get_req, &got), grpc::StatusCode::NOT_FOUND,
         "volume nope not found");
  pb::UpdateVolumeRequest upd;
  upd.set_volume_id("nope");
  pb::UpdateVolumeResponse updated;
  expect(call(&pb::Control::Stub::UpdateVolume, upd, &updated), grpc::StatusCode::NOT_FOUND,
         "volume nope not found");
  upd.set_volume_id(id);
  upd.set_availability(static_cast<api::VolumeSpec::VolumeAvailability>(9));
  expect(call(&pb::Control::Stub::UpdateVolume, upd, &updated), grpc::StatusCode::INVALID_ARGUMENT,
         "unknown volume availability");
  expect(remove("nope"), grpc::StatusCode::NOT_FOUND, "volume nope not found");
  expect(publish("nope", "node-a"), grpc::StatusCode::NOT_FOUND, "volume nope not found");
  expect(publish(id, "nobody"), grpc::StatusCode::NOT_FOUND, "node nobody not found");
  expect(publish(id, ""), grpc::StatusCode::INVALID_ARGUMENT, "node ID must be provided");
  expect(unpublish(id, "node-a"), grpc::StatusCode::FAILED_PRECONDITION,
         "volume 'data' is not published to node node-a");

  // A task naming a missing volume is refused and creates nothing.
  pb::CreateTaskRequest task;
  task.mutable_task()->set_node_id("node-a");
  auto s = open_session("node-a");
  task.mutable_task()->add_volumes()->set_source("missing");
  pb::CreateTaskResponse created;
  expect(call(&pb::Control::Stub::CreateTask, task, &created), grpc::StatusCode::INVALID_ARGUMENT,
         "volume missing not found");
  pb::ListTasksResponse tasks;
  ASSERT_TRUE(call(&pb::Control::Stub::ListTasks, pb::ListTasksRequest{}, &tasks).ok());
  EXPECT_EQ(tasks.tasks_size(), 0);

  // What may change: the labels and the availability (the labels stay when only it is given).
  upd.set_availability(api::VolumeSpec::DRAIN);
  (*upd.mutable_labels())["tier"] = "gold";
  ASSERT_TRUE(call(&pb::Control::Stub::UpdateVolume, upd, &updated).ok());
  upd.clear_labels();
  upd.set_availability(api::VolumeSpec::PAUSE);
  ASSERT_TRUE(call(&pb::Control::Stub::UpdateVolume, upd, &updated).ok());
  EXPECT_EQ(updated.volume().spec().availability(), api::VolumeSpec::PAUSE);
  EXPECT_EQ(updated.volume().spec().annotations().labels().at("tier"), "gold");
  EXPECT_EQ(updated.volume().spec().driver().name(), "csi.example");
  EXPECT_EQ(get("data").id(), id) << "found by name";
  s->stream->cancel();
}

TEST_F(ControlVolumeTest, PublishReachesTheNodesAssignmentsAndUnpublishTakesItAway) {
  auto s = open_session("node-a");
  auto assignments = dispatchd::test::open_assignments(*dispatcher_, "node-a", s->id());
  api::AssignmentsMessage m;
  ASSERT_TRUE(assignments->read(m));
  EXPECT_EQ(m.type(), api::AssignmentsMessage::COMPLETE);

  pb::CreateVolumeRequest create = volume_request("data", "csi.example");
  create.mutable_volume_info()->set_volume_id("csi-vol-7");
  pb::CreateVolumeResponse made;
  ASSERT_TRUE(call(&pb::Control::Stub::CreateVolume, create, &made).ok());
  const std::string id = made.volume().id();

  // The task names the volume by name; the server fills in its ID.
  pb::CreateTaskRequest task;
  task.mutable_task()->set_node_id("node-a");
  auto* att = task.mutable_task()->add_volumes();
  att->set_source("data");
  att->set_target("/srv");
  pb::CreateTaskResponse created;
  auto st = call(&pb::Control::Stub::CreateTask, task, &created);
  ASSERT_TRUE(st.ok()) << st.error_message();
  ASSERT_EQ(created.task().volumes_size(), 1);
  EXPECT_EQ(created.task().volumes(0).id(), id);
  EXPECT_EQ(created.task().volumes(0).target(), "/srv");
  ASSERT_TRUE(assignments->read(m));
  ASSERT_EQ(m.changes_size(), 1);
  EXPECT_EQ(m.changes(0).assignment().task().id(), created.task().id());

  // Published to node-a: its stream gets the VolumeAssignment with the publish context.
  st = publish("data", "node-a");
  ASSERT_TRUE(st.ok()) << st.error_message();
  ASSERT_TRUE(assignments->read(m));
  EXPECT_EQ(m.type(), api::AssignmentsMessage::INCREMENTAL);
  ASSERT_EQ(m.changes_size(), 1);
  EXPECT_EQ(m.changes(0).action(), api::AssignmentChange::UPDATE);
  const auto& va = m.changes(0).assignment().volume();
  EXPECT_EQ(va.id(), id);
  EXPECT_EQ(va.volume_id(), "csi-vol-7");
  EXPECT_EQ(va.driver().name(), "csi.example");
  EXPECT_EQ(va.publish_context().at("device"), "/dev/xvdf");

  // Single-node: not to a second node. In use and published: not removable.
  pb::CreateNodeRequest node_b;
  node_b.set_node_id("node-b");
  pb::CreateNodeResponse node_made;
  ASSERT_TRUE(call(&pb::Control::Stub::CreateNode, node_b, &node_made).ok());
  const std::string before = all_volumes();
  st = publish(id, "node-b");
  EXPECT_EQ(st.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_EQ(st.error_message(), "volume 'data' is single-node and published to node node-a");
  st = remove(id);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_EQ(st.error_message(),
            "volume 'data' is in use by the following task: " + created.task().id());
  pb::RemoveTaskRequest rm_task;
  rm_task.set_task_id(created.task().id());
  pb::RemoveTaskResponse task_removed;
  ASSERT_TRUE(call(&pb::Control::Stub::RemoveTask, rm_task, &task_removed).ok());
  ASSERT_TRUE(assignments->read(m));
  st = remove(id);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_EQ(st.error_message(),
            "volume 'data' is still published to node node-a; unpublish it first or force");
  EXPECT_EQ(all_volumes(), before);

  // Unpublish: the node is told to drop the volume...
  ASSERT_TRUE(unpublish(id, "node-a").ok());
  EXPECT_EQ(get(id).publish_status(0).state(), api::VolumePublishStatus::PENDING_NODE_UNPUBLISH);
  ASSERT_TRUE(assignments->read(m));
  ASSERT_EQ(m.changes_size(), 1);
  EXPECT_EQ(m.changes(0).action(), api::AssignmentChange::REMOVE);
  EXPECT_EQ(m.changes(0).assignment().volume().id(), id);
  st = publish(id, "node-a");
  EXPECT_EQ(st.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_EQ(st.error_message(), "volume 'data' is being unpublished from node node-a");

  // ...confirms with UpdateVolumeStatus...
  api::UpdateVolumeStatusRequest confirm;
  confirm.set_session_id(s->id());
  auto* u = confirm.add_updates();
  u->set_id(id);
  u->set_unpublished(true);
  api::UpdateVolumeStatusResponse confirmed;
  st = dispatcher_->UpdateVolumeStatus(context(as_node("node-a")).get(), confirm, &confirmed);
  ASSERT_TRUE(st.ok()) << st.error_message();
  ASSERT_TRUE(server_.eventually([&] {
    auto v = server_.server().store().view(
        [&](const dispatchd::store::ReadTx& tx) { return tx.volume(id); });
    return v->publish_status(0).state() == api::VolumePublishStatus::PENDING_UNPUBLISH;
  }));
  // ...and the operator's second unpublish (the controller's part) removes the entry.
  ASSERT_TRUE(unpublish(id, "node-a").ok());
  EXPECT_EQ(get(id).publish_status_size(), 0);
  st = remove(id);
  EXPECT_TRUE(st.ok()) << st.error_message();
  EXPECT_EQ(remove(id).error_code(), grpc::StatusCode::NOT_FOUND);
  assignments->cancel();
}

TEST_F(ControlVolumeTest, ForcedRemovalTakesAPublishedVolumeAway) {
  auto s = open_session("node-a");
  pb::CreateVolumeResponse made;
  ASSERT_TRUE(
      call(&pb::Control::Stub::CreateVolume, volume_request("scratch", "csi.example"), &made).ok());
  ASSERT_TRUE(publish("scratch", "node-a").ok());
  EXPECT_EQ(remove("scratch").error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_TRUE(remove("scratch", true).ok());
  pb::ListVolumesResponse r;
  ASSERT_TRUE(call(&pb::Control::Stub::ListVolumes, pb::ListVolumesRequest{}, &r).ok());
  EXPECT_EQ(r.volumes_size(), 0);

  // Counted in /metrics like every other call.
  auto port = server_.call([&] { return server_.server().admin_endpoint()->port(); });
  auto reply = dispatchd::test::http_get("127.0.0.1", port, "/metrics");
  ASSERT_EQ(reply.status, 200);
  const std::string remove_labels =
      "grpc_type=\"unary\",grpc_service=\"dispatchd.control.v1.Control\",grpc_method="
      "\"RemoveVolume\"";
  EXPECT_NE(reply.body.find("\ngrpc_server_handled_total{" + remove_labels +
                            ",grpc_code=\"FailedPrecondition\"} 1\n"),
            std::string::npos);
  EXPECT_NE(
      reply.body.find("\ngrpc_server_handled_total{" + remove_labels + ",grpc_code=\"OK\"} 1\n"),
      std::string::npos);
  s->stream->cancel();
}

}  // namespace
