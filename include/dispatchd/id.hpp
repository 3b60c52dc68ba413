#pragma once

#include <string>

namespace dispatchd {

// A fresh random ID shaped like SwarmKit's identity.NewID(): 17 CSPRNG bytes with the top bit
// set, read as a big-endian number, written in base 36, first digit dropped: 25 characters of
// [0-9a-z].
// Session IDs, and task IDs the Control API makes up, are such IDs.
std::string new_id();

}  // namespace dispatchd
