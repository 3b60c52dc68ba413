#pragma once
// "<what>: <strerror(errno)>", for the state directory's files (state.cpp, wal.cpp).

#include <cerrno>
#include <cstring>
#include <string>

namespace dispatchd::app {

inline std::string errno_text(const std::string& what) {
  return what + ": " + std::strerror(errno);
}

}  // namespace dispatchd::app
