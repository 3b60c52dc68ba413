#pragma once
// Leadership fencing for issue 16 (several managers on etcd): the leader key's create_revision.
// Every write a leader makes carries Compare create_revision(key) == create_revision, so the
// writes of a deposed leader fail.

#include <cstdint>
#include <string>

namespace dispatchd::cluster {

struct Fence {
  std::string key;
  std::int64_t create_revision;
};

}  // namespace dispatchd::cluster
