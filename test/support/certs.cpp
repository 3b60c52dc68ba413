#include "support/certs.hpp"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <sstream>
#include <stdexcept>

namespace dispatchd::test {

std::string make_test_certs(const std::string& tag, const std::string& args) {
  std::string dir = ::testing::TempDir() + "/dispatchd-" + tag + "-" + std::to_string(::getpid());
  std::string cmd = std::string(DISPATCHD_SOURCE_DIR) + "/scripts/gen-certs.sh --out " + dir + " " +
                    args + " >/dev/null";
  if (std::system(cmd.c_str()) != 0) throw std::runtime_error("gen-certs.sh failed: " + cmd);
  return dir;
}

std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

}  // namespace dispatchd::test
