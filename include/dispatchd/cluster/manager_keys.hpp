#pragma once
// The part of issue 16's shared etcd key layout that membership and election use, under a prefix
// P that always ends in '/' (default "/dispatchd/"):
//   P leader              the leader's node ID, on the leader's lease; its create_revision fences
//                         every write the leader makes (fence.hpp);
//   P managers/<node_id>  a serialized api::WeightedPeer, on that manager's own lease.
// "P leader" and every "P managers/..." key sort together: [leader_key, managers_range_end) holds
// exactly them, so one range and one watch see the leader and the manager list at one revision.

#include <string>
#include <string_view>

#include "dispatchd/cluster/fence.hpp"
#include "dispatchd/etcd/client.hpp"

namespace dispatchd::cluster {

inline constexpr std::string_view kDefaultPrefix = "/dispatchd/";

// `prefix` with a trailing '/' added when it has none.
std::string normalize_prefix(std::string_view prefix);
std::string leader_key(std::string_view prefix);
std::string managers_prefix(std::string_view prefix);
std::string manager_key(std::string_view prefix, std::string_view node_id);
// The end of the range [leader_key, ...) that holds the leader key and every manager key.
std::string membership_range_end(std::string_view prefix);

// The Compare every write of the leader holding `fence` carries: it fails once the leader key
// was deleted (resigned, lease expired or revoked) or re-created by another manager.
etcd::pb::Compare fence_compare(const Fence& fence);

}  // namespace dispatchd::cluster
