// The authorizer on its own (docs/behaviour.md §9): the same checks the Dispatcher's and the
// Control service's end-to-end tests reach over the wire, here one rule at a time.

#include "dispatchd/auth/authorizer.hpp"

#include <gtest/gtest.h>

#include "dispatchd/store/store.hpp"

namespace dispatchd::auth {
namespace {

namespace api = ::docker::swarmkit::v1;

const std::vector<std::string> kAgents = {kWorkerRole, kManagerRole};
const std::vector<std::string> kManagers = {kManagerRole};

Identity who(std::string node, std::vector<std::string> roles, std::string org = "org") {
  return Identity{std::move(node), std::move(roles), std::move(org), "10.0.0.9:5000"};
}

Credentials direct(Identity id) {
  Credentials c;
  c.remote_addr = id.remote_addr;
  c.peer = std::move(id);
  return c;
}

Credentials forwarded(Identity forwarder, Identity agent) {
  Credentials c = direct(std::move(forwarder));
  c.forwarded = true;
  c.forwarded_identity = std::move(agent);
  return c;
}

class AuthorizerTest : public ::testing::Test {
 protected:
  store::Store store_{"org"};
  Authorizer auth_{store_, "org"};

  std::string denial(const Credentials& c, const std::vector<std::string>& roles,
                     bool allow_forwarded = true) {
    auto r = auth_.authorize(c, roles, allow_forwarded);
    if (r) return "allowed as " + r->node_id;
    EXPECT_EQ(r.error().code(), StatusCode::permission_denied);
    return r.error().message();
  }
};

TEST_F(AuthorizerTest, AWorkerOrManagerOfTheClusterIsAnAgent) {
  auto w = auth_.authorize(direct(who("node-1", {kWorkerRole})), kAgents, true);
  ASSERT_TRUE(w);
  EXPECT_EQ(w->node_id, "node-1");
  EXPECT_EQ(w->remote_addr, "10.0.0.9:5000");
  EXPECT_TRUE(auth_.authorize(direct(who("m-1", {kManagerRole})), kAgents, true));
}

TEST_F(AuthorizerTest, EachRuleHasItsOwnAnswer) {
  EXPECT_EQ(denial(Credentials{}, kAgents),
            "Permission denied: unauthorized peer role: rpc error: code = PermissionDenied desc "
            "= no client certificates in request");
  EXPECT_EQ(denial(direct(who("node-1", {"swarm-other"})), kAgents),
            "Permission denied: unauthorized peer role: rpc error: code = PermissionDenied desc "
            "= Permission denied: remote certificate not part of OUs: [swarm-worker "
            "swarm-manager]");
  EXPECT_EQ(denial(direct(who("node-1", {kWorkerRole}, "other")), kAgents),
            "Permission denied: unauthorized peer role: rpc error: code = PermissionDenied desc "
            "= Permission denied: remote certificate not part of organization: org");
  EXPECT_EQ(denial(direct(who("node-1", {kWorkerRole})), kManagers),
            "Permission denied: unauthorized peer role: rpc error: code = PermissionDenied desc "
            "= Permission denied: remote certificate not part of OUs: [swarm-manager]");
}

TEST_F(AuthorizerTest, IdentitiesMustBeUtf8) {
  EXPECT_NE(denial(direct(who("node-\xc0\x80", {kWorkerRole})), kAgents)
                .find("node identity is not valid UTF-8"),
            std::string::npos);
  EXPECT_NE(denial(direct(who("node-1", {kWorkerRole}, "org\xed\xa0\x80")), kAgents)
                .find("node identity is not valid UTF-8"),
            std::string::npos);
}

TEST_F(AuthorizerTest, ARemovedNodeIsRefusedWhateverItsRole) {
  ASSERT_TRUE(store_
                  .update([](store::WriteTx& tx) {
                    api::Cluster c = *tx.cluster();
                    (*c.mutable_blacklisted_certificates())["node-gone"];
                    return tx.update(std::move(c));
                  })
                  .is_ok());
  EXPECT_NE(denial(direct(who("node-gone", {kWorkerRole})), kAgents)
                .find("node node-gone was removed from swarm"),
            std::string::npos);
  EXPECT_TRUE(auth_.authorize(direct(who("node-1", {kWorkerRole})), kAgents, true));
}

TEST_F(AuthorizerTest, AManagerMayForwardAnAgentsCall) {
  auto r = auth_.authorize(forwarded(who("m-1", {kManagerRole}),
                                     Identity{"node-7", {kWorkerRole}, "org", "10.1.1.1:999"}),
                           kAgents, true);
  ASSERT_TRUE(r);
  EXPECT_EQ(r->node_id, "node-7");
  EXPECT_EQ(r->remote_addr, "10.1.1.1:999");
}

TEST_F(AuthorizerTest, ForwardingIsCheckedOnBothIdentities) {
  Identity agent{"node-7", {kWorkerRole}, "org", ""};
  EXPECT_NE(denial(forwarded(who("w-1", {kWorkerRole}), agent), kAgents)
                .find("Permission denied: unauthorized forwarder role"),
            std::string::npos);
  EXPECT_EQ(denial(forwarded(who("m-1", {kManagerRole}), Identity{"", {kWorkerRole}, "org", ""}),
                   kAgents),
            "Permission denied: missing information in forwarded request");
  EXPECT_EQ(denial(forwarded(who("m-1", {kManagerRole}), Identity{"n", {}, "org", ""}), kAgents),
            "Permission denied: missing information in forwarded request");
  EXPECT_EQ(denial(forwarded(who("m-1", {kManagerRole}), Identity{"n", {"x"}, "org", ""}), kAgents),
            "Permission denied: unauthorized forwarded role, expecting: [swarm-worker "
            "swarm-manager]");
  EXPECT_EQ(denial(forwarded(who("m-1", {kManagerRole}), Identity{"n", {kWorkerRole}, "o2", ""}),
                   kAgents),
            "Permission denied: organization mismatch, expecting: org");
}

TEST_F(AuthorizerTest, WhereForwardingIsNotAllowedTheForwarderIsTheCaller) {
  // Control: a manager forwarding is the operator itself; its forwarded identity is ignored.
  auto r = auth_.authorize(forwarded(who("m-1", {kManagerRole}), Identity{"node-7", {}, "", ""}),
                           kManagers, false);
  ASSERT_TRUE(r);
  EXPECT_EQ(r->node_id, "m-1");
}

}  // namespace
}  // namespace dispatchd::auth
