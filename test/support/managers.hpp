#pragma once
// Several dispatchd managers sharing one etcd (issue 16), each the real binary in a process of
// its own (DISPATCHD_BIN of the test that compiles managers.cpp), and the waits that tell which
// one leads: its "leading the cluster" line, then every other manager's forwarder naming it.

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "support/child_process.hpp"

namespace dispatchd::test {

struct ManagerProcess {
  std::string node_id;
  std::unique_ptr<ChildProcess> process;
  std::string address;  // where it listens, from its log
  bool killed = false;  // stopped by the test: the waits skip it
};

// Starts dispatchd with `--store store`, a 2 s lease, 2 s heartbeats and the debug log, plus
// `flags` (its identity: `--insecure --node-id ID`, or its TLS files), and waits until it
// listens; a fatal failure of the test when it does not within 30 s.
void start_manager(ManagerProcess& m, const std::string& node_id, const std::string& store,
                   const std::vector<std::string>& flags);

// A live manager (not `not_this`) that logged its election, within `timeout`; nullptr if none.
ManagerProcess* wait_leader(std::vector<ManagerProcess>& managers,
                            std::chrono::milliseconds timeout,
                            const ManagerProcess* not_this = nullptr);
// The leader, once every other live manager (not `not_this`) forwards to it; nullptr after
// `timeout`.
ManagerProcess* wait_cluster(std::vector<ManagerProcess>& managers,
                             std::chrono::milliseconds timeout,
                             const ManagerProcess* not_this = nullptr);

}  // namespace dispatchd::test
