// dispatchd: the agent-facing Dispatcher of a SwarmKit-compatible cluster manager.

#include <unistd.h>

#include <csignal>
#include <cstdio>
#include <string_view>
#include <utility>
#include <vector>

#include "dispatchd/app/daemon.hpp"
#include "dispatchd/app/options.hpp"

int main(int argc, char** argv) {
  // OpenSSL writes to sockets with write(2): a peer that has gone must give EPIPE, not a
  // process-killing SIGPIPE.
  std::signal(SIGPIPE, SIG_IGN);
  std::vector<std::string_view> args(argv + (argc > 0 ? 1 : 0), argv + argc);
  std::vector<std::string_view> env;
  for (char** e = environ; e && *e; ++e)
    env.emplace_back(*e);
  auto cmdline = dispatchd::app::parse_command_line(args, env);
  if (!cmdline) {
    std::fprintf(stderr, "dispatchd: %s\n", cmdline.error().c_str());
    return 2;
  }
  if (cmdline->help) {
    std::fputs(dispatchd::app::help_text().c_str(), stdout);
    return 0;
  }
  return dispatchd::app::run_daemon(std::move(cmdline->options));
}
