#include "support/etcd_cluster.hpp"

#include <fmt/format.h>
#include <signal.h>
#include <unistd.h>

#include <asio/io_context.hpp>
#include <asio/ip/tcp.hpp>
#include <filesystem>

#include "support/certs.hpp"

namespace dispatchd::test {

namespace {

// A loopback port that was free a moment ago; held open until every port of the cluster is
// chosen, so one cluster never picks the same port twice.
std::vector<unsigned short> free_ports(std::size_t n) {
  asio::io_context io;
  std::vector<asio::ip::tcp::acceptor> held;
  std::vector<unsigned short> ports;
  for (std::size_t i = 0; i < n; ++i) {
    held.emplace_back(io, asio::ip::tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0));
    ports.push_back(held.back().local_endpoint().port());
  }
  return ports;
}

std::string url(unsigned short port, bool tls = false) {
  return fmt::format("{}://127.0.0.1:{}", tls ? "https" : "http", port);
}

}  // namespace

EtcdTls EtcdTls::make() {
  static const std::string dir = make_test_certs("etcd-tls", "--nodes 1 --test-variants");
  return {dir + "/server.pem", dir + "/server.key", dir + "/ca.pem", dir};
}

bool EtcdCluster::available() {
  return ::access(kBinary, X_OK) == 0;
}

EtcdCluster::EtcdCluster(std::size_t members, std::chrono::milliseconds ready_timeout,
                         std::optional<EtcdTls> tls)
    : tls_(tls.has_value()) {
  auto ports = free_ports(2 * members);
  std::string initial;
  for (std::size_t i = 0; i < members; ++i) {
    Member m;
    m.name = fmt::format("m{}", i);
    m.client_port = ports[2 * i];
    m.peer_port = ports[2 * i + 1];
    char tmpl[] = "/tmp/dispatchd-etcd-XXXXXX";
    if (::mkdtemp(tmpl) == nullptr) {
      error_ = "mkdtemp failed";
      return;
    }
    m.dir = tmpl;
    initial += fmt::format("{}{}={}", initial.empty() ? "" : ",", m.name, url(m.peer_port));
    members_.push_back(std::move(m));
  }
  for (auto& m : members_) {
    // Short raft timings (heartbeat 50 ms, election 500 ms) so elections and lease expiry are
    // quick; etcd's minimum lease TTL follows from them (1.5 election timeouts).
    std::vector<std::string> argv{kBinary,
                                  "--name",
                                  m.name,
                                  "--data-dir",
                                  m.dir + "/data",
                                  "--listen-client-urls",
                                  url(m.client_port, tls_),
                                  "--advertise-client-urls",
                                  url(m.client_port, tls_),
                                  "--listen-peer-urls",
                                  url(m.peer_port),
                                  "--initial-advertise-peer-urls",
                                  url(m.peer_port),
                                  "--initial-cluster",
                                  initial,
                                  "--initial-cluster-token",
                                  fmt::format("dispatchd-test-{}", ::getpid()),
                                  "--initial-cluster-state",
                                  "new",
                                  "--heartbeat-interval",
                                  "50",
                                  "--election-timeout",
                                  "500",
                                  "--logger",
                                  "zap",
                                  "--log-outputs",
                                  "stderr"};
    if (tls) {
      argv.insert(argv.end(), {"--cert-file", tls->cert, "--key-file", tls->key,
                               "--trusted-ca-file", tls->ca, "--client-cert-auth"});
    }
    m.process = std::make_unique<ChildProcess>(argv);
    if (!m.process->started()) {
      error_ = "cannot start " + std::string(kBinary);
      return;
    }
  }
  for (auto& m : members_) {
    if (!m.process->wait_for_line("serving client traffic", ready_timeout)) {
      error_ = fmt::format("etcd member {} not ready within {} ms; its output:\n{}", m.name,
                           ready_timeout.count(), m.process->output());
      return;
    }
  }
  started_ = true;
}

EtcdCluster::~EtcdCluster() {
  for (auto& m : members_) {
    m.process.reset();  // SIGKILL and reap
    std::error_code ec;
    if (!m.dir.empty()) std::filesystem::remove_all(m.dir, ec);
  }
}

std::string EtcdCluster::endpoint(std::size_t i) const {
  return fmt::format("127.0.0.1:{}", members_[i].client_port);
}

std::vector<std::string> EtcdCluster::endpoints() const {
  std::vector<std::string> out;
  for (std::size_t i = 0; i < members_.size(); ++i)
    out.push_back((tls_ ? "https://" : "") + endpoint(i));
  return out;
}

std::string EtcdCluster::store_url() const {
  std::string out = "etcd://";
  for (std::size_t i = 0; i < members_.size(); ++i)
    out += (i ? "," : "") + endpoint(i);
  return out;
}

void EtcdCluster::kill(std::size_t i) {
  auto& p = members_[i].process;
  if (!p) return;
  p->signal(SIGKILL);
  p->wait(std::chrono::seconds(10));
}

}  // namespace dispatchd::test
