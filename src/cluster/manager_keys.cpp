#include "dispatchd/cluster/manager_keys.hpp"

namespace dispatchd::cluster {

std::string normalize_prefix(std::string_view prefix) {
  std::string p(prefix);
  if (p.empty() || p.back() != '/') p.push_back('/');
  return p;
}

std::string leader_key(std::string_view prefix) {
  return normalize_prefix(prefix) + "leader";
}

std::string managers_prefix(std::string_view prefix) {
  return normalize_prefix(prefix) + "managers/";
}

std::string manager_key(std::string_view prefix, std::string_view node_id) {
  return managers_prefix(prefix) + std::string(node_id);
}

std::string membership_range_end(std::string_view prefix) {
  return etcd::prefix_end(managers_prefix(prefix));
}

etcd::pb::Compare fence_compare(const Fence& fence) {
  return etcd::compare_create_revision(fence.key, etcd::pb::Compare::EQUAL, fence.create_revision);
}

}  // namespace dispatchd::cluster
