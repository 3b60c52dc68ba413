#pragma once
// dispatchd's command line: every flag (also from DISPATCHD_* variables), parsed and checked
// into a plain struct. Parsing has no side effects: it reads only its arguments, sets nothing
// global and prints nothing, so it can be tested in process. What is done with the result
// (logging, the state directory, TLS files, serving) is the daemon's (daemon.hpp).

#include <chrono>
#include <cstddef>
#include <expected>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "dispatchd/app/server.hpp"
#include "dispatchd/log.hpp"

namespace dispatchd::app {

struct DaemonOptions {
  Options server;
  // Manager address handed to agents; empty: the bound --listen address.
  std::string advertise;
  // The state directory (write-ahead log and snapshots); empty: default_state_dir().
  std::string state_dir;
  // No state directory: the store lives in memory only (wins over state_dir).
  bool in_memory = false;
  // Several managers (--store etcd://...): the etcd endpoints ("HOST:PORT"); empty: the embedded
  // store (state_dir / in_memory).
  std::vector<std::string> etcd_endpoints;
  // Every key dispatchd writes in etcd starts with this (ends with '/').
  std::string etcd_prefix = "/dispatchd/";
  // TLS to etcd: the CA its certificates chain to (TLS when set), and our client certificate.
  std::string etcd_ca, etcd_cert, etcd_key;
  // This manager's etcd lease: when it dies, the others see it gone (and a leader replaced)
  // within this time.
  std::chrono::seconds etcd_lease_ttl{5};
  // Write a snapshot this often while running and prune the log it covers (0: only on stop).
  std::chrono::milliseconds state_sync_interval{30000};
  log::Level log_level = log::Level::info;
  log::Format log_format = log::Format::text;
  // Bytes of log lines waiting for stderr's writer thread (0: write at once, blocking).
  std::size_t log_buffer = 1 << 20;
  // DISPATCHD_* variables that name no flag (warned about once logging is set up).
  std::vector<std::string> unknown_env;
};

struct CommandLine {
  bool help = false;  // --help was given: print help_text() and exit 0; `options` is unchecked
  DaemonOptions options;
};

// Reads DISPATCHD_* entries of `env` ("NAME=value"), then `args` (without the program name;
// a flag on the command line wins), then checks the values that are fine alone but not
// together (unless --help was given). The error is the message dispatchd prints after
// "dispatchd: " before exiting with status 2.
std::expected<CommandLine, std::string> parse_command_line(std::span<const std::string_view> args,
                                                           std::span<const std::string_view> env);

// `dispatchd --help`.
std::string help_text();

}  // namespace dispatchd::app
