#pragma once
// Runs a program to completion with its stdout and stderr captured and a deadline (the child is
// killed when it passes). Used to test the real dispatchctl binary.

#include <chrono>
#include <map>
#include <string>
#include <vector>

namespace dispatchd::test {

struct ProcessResult {
  int exit_status = -1;  // the exit status, or 128 + signal when killed
  bool timed_out = false;
  std::string out, err;
};

// For failure messages: the exit status and both outputs.
inline std::string show(const ProcessResult& r) {
  return "exit " + std::to_string(r.exit_status) + (r.timed_out ? " (timed out)" : "") +
         "\nstdout: " + r.out + "\nstderr: " + r.err;
}

// `env` is added to this process's environment, minus every variable starting with one of
// `drop_prefixes` (so the caller's DISPATCHCTL_* settings cannot leak into a test).
ProcessResult run_process(const std::vector<std::string>& argv,
                          const std::map<std::string, std::string>& env = {},
                          std::chrono::milliseconds timeout = std::chrono::seconds(30),
                          const std::vector<std::string>& drop_prefixes = {});

}  // namespace dispatchd::test
