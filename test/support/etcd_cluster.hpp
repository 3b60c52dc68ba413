#pragma once
// A real etcd (Debian's etcd-server, /usr/bin/etcd) for the tests: one or more members on
// loopback ports chosen free, each with a temporary data directory removed afterwards. Readiness
// is etcd's own "serving client traffic" line, waited for with a deadline.

#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "support/child_process.hpp"

namespace dispatchd::test {

class EtcdCluster {
 public:
  static constexpr const char* kBinary = "/usr/bin/etcd";
  static bool available();

  // Starts `members` members forming one cluster; started() says whether every one is ready.
  explicit EtcdCluster(std::size_t members = 1,
                       std::chrono::milliseconds ready_timeout = std::chrono::seconds(30));
  EtcdCluster(const EtcdCluster&) = delete;
  EtcdCluster& operator=(const EtcdCluster&) = delete;
  ~EtcdCluster();

  bool started() const noexcept { return started_; }
  // Why start failed (and each member's output), for the test's message.
  const std::string& error() const noexcept { return error_; }

  std::size_t size() const noexcept { return members_.size(); }
  // "127.0.0.1:PORT" of member i's client URL.
  std::string endpoint(std::size_t i) const;
  std::vector<std::string> endpoints() const;
  // SIGKILL member i and wait for it to exit; its port then refuses connections.
  void kill(std::size_t i);

 private:
  struct Member {
    std::string name, dir;
    unsigned short client_port = 0, peer_port = 0;
    std::unique_ptr<ChildProcess> process;
  };
  std::vector<Member> members_;
  bool started_ = false;
  std::string error_;
};

}  // namespace dispatchd::test
