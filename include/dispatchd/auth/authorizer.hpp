#pragma once
// Who is calling (docs/behaviour.md §9): the identity a call carries — the verified client
// certificate, in insecure mode the metadata standing in for one, or, from another manager, the
// agent's identity it forwards — checked against the roles a method allows, the cluster's
// organisation, the removed-node list and UTF-8. Used by the Dispatcher (agents) and the Control
// service (operators); it knows neither.

#include <expected>
#include <optional>
#include <string>
#include <vector>

#include "dispatchd/status.hpp"

namespace dispatchd::grpc {
class ServerContext;
}
namespace dispatchd::store {
class Store;
}

namespace dispatchd::auth {

inline const std::string kWorkerRole = "swarm-worker";
inline const std::string kManagerRole = "swarm-manager";

// Who is calling, after authorization.
struct Identity {
  std::string node_id;
  std::vector<std::string> roles;
  std::string org;
  std::string remote_addr;  // "ip:port" (forwarded calls: the original agent's)
};

bool has_role(const std::vector<std::string>& roles, const std::string& role);

// What a call presents, read from its connection and metadata (credentials_of).
struct Credentials {
  std::string remote_addr;
  // The direct peer's certificate (TLS), or in insecure mode the node-id/node-role/node-org
  // metadata; nullopt when there is neither.
  std::optional<Identity> peer;
  // forwarded_cert is exactly one "true": the peer forwards an agent's call, whose identity is
  // in forwarded_cert_cn/_org/_ou and remote_addr (possibly incomplete: checked).
  bool forwarded = false;
  Identity forwarded_identity;
};

class Authorizer {
 public:
  // `org`: the cluster organisation callers must belong to. `store`: where the removed-node list
  // (Cluster.blacklisted_certificates) is read.
  Authorizer(const store::Store& store, std::string org);

  // The caller's identity if it holds one of `roles`; a forwarded identity only where
  // `allow_forwarded` (the forwarder itself must be a manager).
  std::expected<Identity, Status> authorize(const Credentials& c,
                                            const std::vector<std::string>& roles,
                                            bool allow_forwarded) const;
  std::expected<Identity, Status> authorize(const grpc::ServerContext& ctx,
                                            const std::vector<std::string>& roles,
                                            bool allow_forwarded) const;
  // Agents: workers and managers, forwarding allowed (the Dispatcher's methods).
  std::expected<Identity, Status> authorize_agent(const grpc::ServerContext& ctx) const;

  const std::string& org() const noexcept { return org_; }

 private:
  std::optional<Status> check(const Identity& who, const std::vector<std::string>& roles) const;

  const store::Store& store_;
  std::string org_;
};

// The credentials a call presents (`default_org`: the org of an insecure caller that names none).
Credentials credentials_of(const grpc::ServerContext& ctx, const std::string& default_org);

}  // namespace dispatchd::auth
