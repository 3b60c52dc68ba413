#include "support/managers.hpp"

#include <gtest/gtest.h>

namespace dispatchd::test {

using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

void start_manager(ManagerProcess& m, const std::string& node_id, const std::string& store,
                   const std::vector<std::string>& flags) {
  m.node_id = node_id;
  std::vector<std::string> argv{DISPATCHD_BIN,
                                "--listen",
                                "127.0.0.1:0",
                                "--admin-listen=",
                                "--store",
                                store,
                                "--etcd-lease-ttl",
                                "2s",
                                "--drain-timeout",
                                "5s",
                                "--heartbeat-period",
                                "2s",
                                "--heartbeat-epsilon",
                                "100ms",
                                "--log-level",
                                "debug"};
  argv.insert(argv.end(), flags.begin(), flags.end());
  m.process = std::make_unique<ChildProcess>(argv);
  auto line = m.process->wait_for_line("dispatchd listening on ", 30s);
  ASSERT_TRUE(line) << m.process->output();
  auto at = line->find("listening on ") + 13;
  m.address = line->substr(at, line->find(' ', at) - at);
}

ManagerProcess* wait_leader(std::vector<ManagerProcess>& managers,
                            std::chrono::milliseconds timeout, const ManagerProcess* not_this) {
  const auto deadline = Clock::now() + timeout;
  while (Clock::now() < deadline) {
    for (auto& m : managers) {
      if (m.killed || &m == not_this) continue;
      if (m.process->wait_for_output("leading the cluster", 20ms)) return &m;
    }
  }
  return nullptr;
}

ManagerProcess* wait_cluster(std::vector<ManagerProcess>& managers,
                             std::chrono::milliseconds timeout, const ManagerProcess* not_this) {
  const auto deadline = Clock::now() + timeout;
  ManagerProcess* leader = wait_leader(managers, timeout, not_this);
  if (!leader) return nullptr;
  for (auto& m : managers) {
    if (m.killed || &m == leader || &m == not_this) continue;
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
    if (!m.process->wait_for_output("forwarder: leader is now " + leader->address, left)) {
      return nullptr;
    }
  }
  return leader;
}

}  // namespace dispatchd::test
