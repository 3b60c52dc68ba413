#pragma once

#include <string>
#include <vector>

namespace dispatchd::net {

// What the transport proved about the peer. With TLS and a verified client certificate: the
// subject's CN (the node ID), every OU (its roles) and the first O (its organisation).
struct PeerIdentity {
  bool tls = false;
  bool has_certificate = false;  // verified: an unverifiable certificate fails the handshake
  std::string common_name;
  std::vector<std::string> organizational_units;
  std::string organization;
};

}  // namespace dispatchd::net
