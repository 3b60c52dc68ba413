// dispatchctl: the operator CLI of dispatchd (see `dispatchctl --help`).

#include <grpc/grpc.h>
#include <grpc/support/log.h>

#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "dispatchd/ctl/cli.hpp"

namespace {

void write_all(std::FILE* f, const std::string& s) {
  if (!s.empty()) std::fwrite(s.data(), 1, s.size(), f);
  std::fflush(f);
}

}  // namespace

int main(int argc, char** argv) {
  // gRPC's own log lines (connection failures, TLS handshake errors) would repeat, less
  // clearly, the status dispatchctl prints; GRPC_VERBOSITY brings them back for debugging.
  if (!std::getenv("GRPC_VERBOSITY")) gpr_set_log_function([](gpr_log_func_args*) {});
  // Held for the whole run and released on this thread at the end, so that gRPC's clean-up
  // (and the threads it joins) is finished before the process exits rather than left to a
  // detached thread of gRPC's racing the exit.
  grpc_init();
  std::vector<std::string> args(argv + 1, argv + argc);
  std::string out, err;
  int status = dispatchd::ctl::run(
      args,
      [](const std::string& name) -> std::optional<std::string> {
        if (const char* v = std::getenv(name.c_str())) return std::string(v);
        return std::nullopt;
      },
      out, err,
      [&out] {
        write_all(stdout, out);
        out.clear();
      });
  write_all(stdout, out);
  write_all(stderr, err);
  grpc_shutdown_blocking();
  return status;
}
