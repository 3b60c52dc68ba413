#pragma once
// dispatchctl: the operator CLI of dispatchd's Control service (and the gRPC health check).
// run() is the whole program but for the process: it returns the exit status (0 success,
// 1 an RPC or I/O error, 2 a usage error) and leaves the output in `out` and `err`.

#include <functional>
#include <span>
#include <string>

#include "dispatchd/ctl/args.hpp"

namespace dispatchd::ctl {

// The client's receive limit: one ListNodes response for a large cluster is one message.
inline constexpr int kMaxReceiveMessageSize = 64 * 1024 * 1024;

// `flush`, when given, takes what `out` holds so far (and clears it) while a command that
// streams is still running (`logs`).
int run(std::span<const std::string> args, const Getenv& getenv, std::string& out, std::string& err,
        std::function<void()> flush = {});

}  // namespace dispatchd::ctl
