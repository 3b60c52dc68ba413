#pragma once
// Leadership fence (issue 16): the leader's key and the create_revision it had when this
// manager won. Every write a leader makes compares create_revision(key) == create_revision, so
// a deposed leader's writes fail.

#include <cstdint>
#include <string>

namespace dispatchd::cluster {

struct Fence {
  std::string key;
  std::int64_t create_revision;
};

}  // namespace dispatchd::cluster
