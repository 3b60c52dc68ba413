#pragma once
// Certificates for simulated agents, minted from a CA the way scripts/gen-certs.sh issues them
// (SwarmKit's shape: CN = node ID, OU = swarm-worker, O = the cluster organisation; ECDSA P-256,
// SAN DNS:<node ID>, EKU serverAuth+clientAuth) and cached on disk for reruns.

#include <cstddef>
#include <expected>
#include <functional>
#include <string>

namespace agentsim {

struct MintStats {
  std::size_t minted = 0;
  std::size_t cached = 0;
  double mint_seconds = 0;  // wall time spent minting (all threads)
};

// The default cache directory for a CA: $XDG_CACHE_HOME (or ~/.cache)/dispatchd-agentsim/
// <first 16 hex digits of the CA certificate's SHA-256>-<org>.
std::expected<std::string, std::string> default_cache_dir(const std::string& ca_cert,
                                                          const std::string& org);

// Makes sure DIR/node-<i>.pem and DIR/node-<i>.key exist for i in 1..n (node ID node-<i>),
// minting the missing ones on `threads` threads. Files are written to a temporary name and
// renamed, so an interrupted run leaves no half-written certificate.
std::expected<MintStats, std::string> ensure_certs(const std::string& ca_cert,
                                                   const std::string& ca_key,
                                                   const std::string& org, const std::string& dir,
                                                   std::size_t n, unsigned threads);

}  // namespace agentsim
