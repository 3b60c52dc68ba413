#pragma once
// A real etcd (Debian's etcd-server, /usr/bin/etcd) for the tests: one or more members on
// loopback ports chosen free, each with a temporary data directory removed afterwards. Readiness
// is etcd's own "serving client traffic" line, waited for with a deadline. With EtcdTls the
// members serve their clients over TLS only and require a client certificate (mutual TLS);
// the members talk to each other in plaintext.

#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "support/child_process.hpp"

namespace dispatchd::test {

// PEM files: the members' certificate (its SANs must name 127.0.0.1) and key, and the CA every
// client certificate must chain to.
struct EtcdTls {
  std::string cert, key, ca;
  // Where make() put them, with the clients' files: node-1.{pem,key} is a client certificate
  // the members accept; untrusted.{pem,key} and other-ca.pem belong to another CA.
  std::string dir;
  // gen-certs.sh --test-variants (test/support/certs.hpp), once per test process.
  static EtcdTls make();
};

class EtcdCluster {
 public:
  static constexpr const char* kBinary = "/usr/bin/etcd";
  static bool available();

  // Starts `members` members forming one cluster; started() says whether every one is ready.
  explicit EtcdCluster(std::size_t members = 1,
                       std::chrono::milliseconds ready_timeout = std::chrono::seconds(30),
                       std::optional<EtcdTls> tls = std::nullopt);
  EtcdCluster(const EtcdCluster&) = delete;
  EtcdCluster& operator=(const EtcdCluster&) = delete;
  ~EtcdCluster();

  bool started() const noexcept { return started_; }
  // Why start failed (and each member's output), for the test's message.
  const std::string& error() const noexcept { return error_; }

  std::size_t size() const noexcept { return members_.size(); }
  // "127.0.0.1:PORT" of member i's client URL.
  std::string endpoint(std::size_t i) const;
  // Every member's endpoint(i), with "https://" in front when the members serve TLS (what
  // etcd::ClientOptions::endpoints takes).
  std::vector<std::string> endpoints() const;
  // "etcd://HOST:PORT,..." for dispatchd's --store.
  std::string store_url() const;
  // SIGKILL member i and wait for it to exit; its port then refuses connections.
  void kill(std::size_t i);

 private:
  struct Member {
    std::string name, dir;
    unsigned short client_port = 0, peer_port = 0;
    std::unique_ptr<ChildProcess> process;
  };
  std::vector<Member> members_;
  bool tls_ = false;
  bool started_ = false;
  std::string error_;
};

}  // namespace dispatchd::test
