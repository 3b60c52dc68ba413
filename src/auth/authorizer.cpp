#include "dispatchd/auth/authorizer.hpp"

#include <algorithm>

#include "dispatchd/auth/utf8.hpp"
#include "dispatchd/grpc/server_context.hpp"
#include "dispatchd/store/store.hpp"

namespace dispatchd::auth {

namespace {

bool valid_identity(const Identity& who) {
  return valid_utf8(who.node_id) && valid_utf8(who.org) &&
         std::all_of(who.roles.begin(), who.roles.end(),
                     [](const std::string& r) { return valid_utf8(r); });
}

bool any_role(const std::vector<std::string>& held, const std::vector<std::string>& wanted) {
  return std::any_of(wanted.begin(), wanted.end(),
                     [&](const std::string& r) { return has_role(held, r); });
}

Status denied(std::string message) {
  return Status(StatusCode::permission_denied, std::move(message));
}

}  // namespace

bool has_role(const std::vector<std::string>& roles, const std::string& role) {
  return std::find(roles.begin(), roles.end(), role) != roles.end();
}

Credentials credentials_of(const grpc::ServerContext& ctx, const std::string& default_org) {
  Credentials c;
  c.remote_addr = ctx.peer();
  if (const net::PeerIdentity* tls = ctx.peer_identity()) {
    if (tls->has_certificate) {
      Identity peer;
      peer.node_id = tls->common_name;
      peer.roles = tls->organizational_units;
      peer.org = tls->organization;
      c.peer = std::move(peer);
    }
  } else if (auto n = ctx.metadata("node-id"); n && !n->empty()) {
    Identity peer;
    peer.node_id = std::string(*n);
    if (auto r = ctx.metadata("node-role"); r && !r->empty()) {
      peer.roles.emplace_back(*r);
    } else {
      peer.roles.push_back(kWorkerRole);
    }
    peer.org = std::string(ctx.metadata("node-org").value_or(default_org));
    c.peer = std::move(peer);
  }
  if (c.peer) c.peer->remote_addr = c.remote_addr;

  auto forwarded = ctx.metadata_all("forwarded_cert");
  c.forwarded = forwarded.size() == 1 && forwarded[0] == "true";
  if (c.forwarded) {
    Identity& fwd = c.forwarded_identity;
    fwd.node_id = std::string(ctx.metadata("forwarded_cert_cn").value_or(""));
    fwd.org = std::string(ctx.metadata("forwarded_cert_org").value_or(""));
    for (auto ou : ctx.metadata_all("forwarded_cert_ou")) {
      if (!ou.empty()) fwd.roles.emplace_back(ou);
    }
    fwd.remote_addr = std::string(ctx.metadata("remote_addr").value_or(""));
  }
  return c;
}

Authorizer::Authorizer(const store::Store& store, std::string org)
    : store_(store), org_(std::move(org)) {}

std::optional<Status> Authorizer::check(const Identity& who,
                                        const std::vector<std::string>& roles) const {
  if (!valid_identity(who)) return denied("Permission denied: node identity is not valid UTF-8");
  if (!any_role(who.roles, roles)) {
    std::string list = "[";
    for (std::size_t i = 0; i < roles.size(); ++i)
      list += (i ? " " : "") + roles[i];
    list += "]";
    return denied("Permission denied: remote certificate not part of OUs: " + list);
  }
  auto cluster = store_.view([](const store::ReadTx& tx) { return tx.cluster(); });
  if (cluster && cluster->blacklisted_certificates().contains(who.node_id)) {
    return denied("Permission denied: node " + who.node_id + " was removed from swarm");
  }
  if (who.org != org_) {
    return denied("Permission denied: remote certificate not part of organization: " + org_);
  }
  return std::nullopt;
}

std::expected<Identity, Status> Authorizer::authorize(const Credentials& c,
                                                      const std::vector<std::string>& roles,
                                                      bool allow_forwarded) const {
  const bool forwarding = allow_forwarded && c.forwarded;
  auto peer_error = [&](const std::vector<std::string>& wanted) -> std::optional<Status> {
    if (!c.peer) return denied("no client certificates in request");
    return check(*c.peer, wanted);
  };
  if (!forwarding) {
    if (auto err = peer_error(roles)) {
      return std::unexpected(
          denied("Permission denied: unauthorized peer role: " + err->go_error_string()));
    }
    return *c.peer;
  }
  // A manager forwards an agent's call (docs/behaviour.md §9.4).
  if (auto err = peer_error({kManagerRole})) {
    return std::unexpected(
        denied("Permission denied: unauthorized forwarder role: " + err->go_error_string()));
  }
  const Identity& fwd = c.forwarded_identity;
  if (fwd.node_id.empty() || fwd.org.empty() || fwd.roles.empty() || !valid_identity(fwd)) {
    return std::unexpected(denied("Permission denied: missing information in forwarded request"));
  }
  if (!any_role(fwd.roles, roles)) {
    return std::unexpected(
        denied("Permission denied: unauthorized forwarded role, expecting: [swarm-worker "
               "swarm-manager]"));
  }
  if (fwd.org != org_) {
    return std::unexpected(denied("Permission denied: organization mismatch, expecting: " + org_));
  }
  return fwd;
}

std::expected<Identity, Status> Authorizer::authorize(const grpc::ServerContext& ctx,
                                                      const std::vector<std::string>& roles,
                                                      bool allow_forwarded) const {
  return authorize(credentials_of(ctx, org_), roles, allow_forwarded);
}

std::expected<Identity, Status> Authorizer::authorize_agent(const grpc::ServerContext& ctx) const {
  static const std::vector<std::string> agents = {kWorkerRole, kManagerRole};
  return authorize(ctx, agents, true);
}

}  // namespace dispatchd::auth
