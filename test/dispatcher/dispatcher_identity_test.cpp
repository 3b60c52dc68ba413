// Who is calling: insecure-mode identities, authorization and forwarded requests
// (docs/behaviour.md §9.2, §9.3, §0.9).
// Over the wire, judged by the real gRPC C++ client (test/support/agent.hpp).

#include <gtest/gtest.h>

#include "support/agent.hpp"

namespace {

using namespace dispatchd::test;  // the agent and the setup helpers (support/agent.hpp)

const char kNoCertificate[] =
    "Permission denied: unauthorized peer role: rpc error: code = PermissionDenied desc = no "
    "client certificates in request";
// ---- identities (insecure mode: the metadata stands in for the certificate) ------------------

// A call forwarded (docs/behaviour.md §9.2) by peer "manager-2" with role `forwarder_role`, on
// behalf of a caller with the given certificate fields (empty ones are left out).
Metadata forwarded(const std::string& forwarder_role, const std::string& cn,
                   const std::vector<std::string>& ous, const std::string& org,
                   const std::string& remote_addr = "10.0.0.7:41234") {
  Metadata md{{"node-id", "manager-2"}, {"node-role", forwarder_role}, {"forwarded_cert", "true"}};
  if (!cn.empty()) md.emplace_back("forwarded_cert_cn", cn);
  for (const auto& ou : ous)
    md.emplace_back("forwarded_cert_ou", ou);
  if (!org.empty()) md.emplace_back("forwarded_cert_org", org);
  md.emplace_back("remote_addr", remote_addr);
  return md;
}

// =============================================================================================
// Authorization (docs/behaviour.md §9.2, §9.3) with insecure-mode identities

void expect_denied(const grpc::Status& st, const std::string& message) {
  EXPECT_EQ(st.error_code(), grpc::StatusCode::PERMISSION_DENIED) << st.error_message();
  EXPECT_EQ(st.error_message(), message);
}

// Every Dispatcher method, with the given identity.
void expect_every_method_denied(Agent& agent, const Metadata& md, const std::string& message) {
  SCOPED_TRACE(message);
  {
    SCOPED_TRACE("Session");
    auto r = register_node(agent, md);
    ASSERT_FALSE(r.ok);
    expect_denied(r.status, message);
  }
  {
    SCOPED_TRACE("Heartbeat");
    expect_denied(agent.heartbeat(md, "0123456789abcdefghijklmno"), message);
  }
  {
    SCOPED_TRACE("UpdateTaskStatus");
    api::UpdateTaskStatusRequest req;
    expect_denied(agent.update_task_status(md, req), message);
  }
  {
    SCOPED_TRACE("UpdateVolumeStatus");
    api::UpdateVolumeStatusRequest req;
    expect_denied(agent.update_volume_status(md, req), message);
  }
  {
    SCOPED_TRACE("Assignments");
    auto ctx = context(md);
    api::AssignmentsRequest req;
    auto reader = agent.stub().Assignments(ctx.get(), req);
    api::AssignmentsMessage m;
    EXPECT_FALSE(reader->Read(&m));
    expect_denied(reader->Finish(), message);
  }
  {
    SCOPED_TRACE("Tasks");
    auto ctx = context(md);
    api::TasksRequest req;
    auto reader = agent.stub().Tasks(ctx.get(), req);
    api::TasksMessage m;
    EXPECT_FALSE(reader->Read(&m));
    expect_denied(reader->Finish(), message);
  }
}

TEST(DispatcherSessionTest, MissingNodeIdIsUnauthorizedPeer) {
  TestServer server;
  Agent agent(server);
  expect_every_method_denied(agent, {}, kNoCertificate);
  expect_every_method_denied(agent, {{"node-role", "swarm-worker"}}, kNoCertificate);
  EXPECT_EQ(server.call([&] { return server.server().dispatcher().registered_nodes(); }), 0u);
}

TEST(DispatcherSessionTest, UnknownRoleIsUnauthorizedPeer) {
  TestServer server;
  Agent agent(server);
  expect_every_method_denied(
      agent, as_node("node-a", "swarm-foo"),
      "Permission denied: unauthorized peer role: rpc error: code = PermissionDenied desc = "
      "Permission denied: remote certificate not part of OUs: [swarm-worker swarm-manager]");
  EXPECT_FALSE(stored_node(server, "node-a"));
}

TEST(DispatcherSessionTest, WrongOrganizationIsUnauthorizedPeer) {
  TestServer server;
  Agent agent(server);
  auto md = as_node("node-a");
  md.emplace_back("node-org", "another-cluster");
  expect_every_method_denied(
      agent, md,
      "Permission denied: unauthorized peer role: rpc error: code = PermissionDenied desc = "
      "Permission denied: remote certificate not part of organization: dispatchd");
  EXPECT_FALSE(stored_node(server, "node-a"));
}

TEST(DispatcherSessionTest, ConfiguredClusterIdIsTheOrganization) {
  TestServer server(options_with([](auto& o) { o.dispatcher.cluster_id = "cluster-7"; }));
  Agent agent(server);
  auto md = as_node("node-a");
  md.emplace_back("node-org", "dispatchd");
  auto denied = register_node(agent, md);
  ASSERT_FALSE(denied.ok);
  expect_denied(denied.status,
                "Permission denied: unauthorized peer role: rpc error: code = PermissionDenied "
                "desc = Permission denied: remote certificate not part of organization: "
                "cluster-7");
  auto ok = register_node(agent, as_node("node-a"));  // node-org defaults to the cluster ID
  EXPECT_TRUE(ok.ok) << ok.status.error_message();
}

TEST(DispatcherSessionTest, BlacklistedNodeIsUnauthorizedPeer) {
  TestServer server;
  write(server, [](store::WriteTx& tx) {
    api::Cluster c = *tx.cluster();
    (*c.mutable_blacklisted_certificates())["node-x"];
    return tx.update(std::move(c));
  });
  Agent agent(server);
  expect_every_method_denied(
      agent, as_node("node-x"),
      "Permission denied: unauthorized peer role: rpc error: code = PermissionDenied desc = "
      "Permission denied: node node-x was removed from swarm");
}

TEST(DispatcherSessionTest, ForwardedByWorkerIsUnauthorizedForwarder) {
  TestServer server;
  Agent agent(server);
  expect_every_method_denied(
      agent, forwarded("swarm-worker", "node-fwd", {"swarm-worker"}, "dispatchd"),
      "Permission denied: unauthorized forwarder role: rpc error: code = PermissionDenied desc = "
      "Permission denied: remote certificate not part of OUs: [swarm-manager]");
  EXPECT_FALSE(stored_node(server, "node-fwd"));
}

TEST(DispatcherSessionTest, ForwardedRequestWithMissingFieldsIsDenied) {
  TestServer server;
  Agent agent(server);
  const std::string message = "Permission denied: missing information in forwarded request";
  {
    SCOPED_TRACE("no CN");
    expect_every_method_denied(agent, forwarded("swarm-manager", "", {"swarm-worker"}, "dispatchd"),
                               message);
  }
  {
    SCOPED_TRACE("no OU");
    expect_every_method_denied(agent, forwarded("swarm-manager", "node-fwd", {}, "dispatchd"),
                               message);
  }
  {
    SCOPED_TRACE("no O");
    expect_every_method_denied(agent, forwarded("swarm-manager", "node-fwd", {"swarm-worker"}, ""),
                               message);
  }
}

TEST(DispatcherSessionTest, ForwardedRequestWithWrongRoleIsDenied) {
  TestServer server;
  Agent agent(server);
  expect_every_method_denied(
      agent, forwarded("swarm-manager", "node-fwd", {"swarm-foo"}, "dispatchd"),
      "Permission denied: unauthorized forwarded role, expecting: [swarm-worker swarm-manager]");
}

TEST(DispatcherSessionTest, ForwardedRequestWithWrongOrganizationIsDenied) {
  TestServer server;
  Agent agent(server);
  expect_every_method_denied(
      agent, forwarded("swarm-manager", "node-fwd", {"swarm-worker"}, "another-cluster"),
      "Permission denied: organization mismatch, expecting: dispatchd");
}

TEST(DispatcherSessionTest, ForwardedRequestRegistersForwardedNode) {
  TestServer server;
  Agent agent(server);
  const auto md = forwarded("swarm-manager", "node-fwd", {"swarm-worker"}, "dispatchd");
  auto r = register_node(agent, md);
  ASSERT_TRUE(r.ok) << r.status.error_message();
  EXPECT_EQ(r.first.node().id(), "node-fwd");
  EXPECT_EQ(r.first.node().status().state(), api::NodeStatus::READY);
  EXPECT_EQ(r.first.node().status().addr(), "10.0.0.7");  // the original agent's address

  auto n = stored_node(server, "node-fwd");
  ASSERT_TRUE(n);
  EXPECT_EQ(n->role(), api::WORKER);
  EXPECT_FALSE(stored_node(server, "manager-2"));
  EXPECT_TRUE(agent.heartbeat(md, r.first.session_id()).ok());
  grpc::Status st = agent.heartbeat(as_node("manager-2", "swarm-manager"), r.first.session_id());
  EXPECT_EQ(st.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(st.error_message(), "node not registered");
}

TEST(DispatcherSessionTest, ForwardedNodeIsNotCheckedAgainstBlacklist) {
  TestServer server;
  write(server, [](store::WriteTx& tx) {
    api::Cluster c = *tx.cluster();
    (*c.mutable_blacklisted_certificates())["node-fwd"];
    return tx.update(std::move(c));
  });
  Agent agent(server);
  auto r =
      register_node(agent, forwarded("swarm-manager", "node-fwd", {"swarm-worker"}, "dispatchd"));
  ASSERT_TRUE(r.ok) << r.status.error_message();
  EXPECT_EQ(r.first.node().id(), "node-fwd");
}

TEST(DispatcherSessionTest, ForwardedRolesAreEveryForwardedOuValue) {
  TestServer server;
  Agent agent(server);
  auto r = register_node(
      agent, forwarded("swarm-manager", "node-fwd", {"swarm-foo", "swarm-manager"}, "dispatchd"));
  ASSERT_TRUE(r.ok) << r.status.error_message();
  auto n = stored_node(server, "node-fwd");
  ASSERT_TRUE(n);
  EXPECT_EQ(n->role(), api::MANAGER);
}

TEST(DispatcherSessionTest, ForwardedCertOtherThanTrueIsDirectCall) {
  TestServer server;
  Agent agent(server);
  auto md = as_node("node-a");
  md.emplace_back("forwarded_cert", "yes");
  md.emplace_back("forwarded_cert_cn", "node-fwd");
  md.emplace_back("forwarded_cert_ou", "swarm-worker");
  md.emplace_back("forwarded_cert_org", "dispatchd");
  auto r = register_node(agent, md);
  ASSERT_TRUE(r.ok) << r.status.error_message();
  EXPECT_EQ(r.first.node().id(), "node-a");
  EXPECT_EQ(r.first.node().status().addr(), "127.0.0.1");
  EXPECT_FALSE(stored_node(server, "node-fwd"));
}

}  // namespace
