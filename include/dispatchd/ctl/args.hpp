#pragma once
// dispatchctl's command line: global options (flags, then DISPATCHCTL_* variables) and the
// flags of commands, where flags and positional arguments may be mixed.

#include <chrono>
#include <expected>
#include <functional>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "dispatchd/cli/args.hpp"

namespace dispatchd::ctl {

// A command's flags: the shared command-line syntax (dispatchd/cli/args.hpp) in its
// dispatchctl dialect ("-x" one-letter flags, "--" ends the flags).
using cli::FlagSpec;

struct ParsedArgs {
  // Every value of every flag given, in order; a bool flag's values are "true"/"false".
  std::map<std::string, std::vector<std::string>, std::less<>> values;
  std::vector<std::string> positionals;
  bool help = false;

  bool has(std::string_view name) const { return values.contains(name); }
  // The last value given (a repeated single-valued flag: the last one wins).
  std::optional<std::string> last(std::string_view name) const;
  std::vector<std::string> all(std::string_view name) const;
  bool flag(std::string_view name) const { return last(name).value_or("false") == "true"; }
};

// Parses `args` against `specs`: "--name value", "--name=value", "-x value", bool flags alone
// or "--name=false", "--" ends the flags. With stop_at_positional, parsing stops at the first
// positional argument, which is left with everything after it in `positionals` unparsed (how
// global flags come before the command). Returns a usage error message.
std::expected<ParsedArgs, std::string> parse_args(std::span<const std::string> args,
                                                  std::span<const FlagSpec> specs,
                                                  bool stop_at_positional = false);

// Help lines for `specs`, one per flag, aligned three spaces after the widest.
using cli::flags_help;

struct GlobalOptions {
  std::string addr = "127.0.0.1:4242";
  std::string tls_ca, tls_cert, tls_key;
  std::string server_name = "swarm-manager";
  bool insecure = false;
  std::string node_id = "dispatchctl";
  std::string org = "dispatchd";
  std::chrono::nanoseconds timeout = std::chrono::seconds(10);
  bool json = false;
};

std::span<const FlagSpec> global_flag_specs();

using Getenv = std::function<std::optional<std::string>(const std::string&)>;

struct GlobalParse {
  GlobalOptions options;
  bool help = false;
  std::vector<std::string> rest;  // the command and its arguments
};

// Global flags before the command, each also from DISPATCHCTL_<FLAG> (dashes as
// underscores; a flag on the command line wins). Returns a usage error message.
std::expected<GlobalParse, std::string> parse_global(std::span<const std::string> args,
                                                     const Getenv& getenv);

}  // namespace dispatchd::ctl
