#pragma once
// What the grpc++ client tests share: a caller's identity in insecure mode (metadata standing in
// for the certificate) and a ClientContext carrying it with a deadline.

#include <grpcpp/grpcpp.h>

#include <chrono>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace dispatchd::test {

using Metadata = std::vector<std::pair<std::string, std::string>>;

// node-id, and node-role when given (the server's default role is swarm-worker).
inline Metadata as_node(const std::string& node_id, const std::string& role = {}) {
  Metadata md{{"node-id", node_id}};
  if (!role.empty()) md.emplace_back("node-role", role);
  return md;
}

inline std::unique_ptr<::grpc::ClientContext> client_context(
    const Metadata& md, std::chrono::seconds timeout = std::chrono::seconds(20)) {
  auto ctx = std::make_unique<::grpc::ClientContext>();
  for (const auto& [k, v] : md)
    ctx->AddMetadata(k, v);
  ctx->set_deadline(std::chrono::system_clock::now() + timeout);
  return ctx;
}

}  // namespace dispatchd::test
