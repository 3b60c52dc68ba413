#pragma once
// The command-line syntax dispatchd and dispatchctl share: a table of flags (name, optional
// one-letter name, bool or valued, help), "--name value" and "--name=value", bool flags alone or
// with "=true"/"=false" (never taking the next argument, as in Go), -h/--help, environment
// variable names (PREFIX_FOO_BAR for --foo-bar) and the aligned help listing.
//
// parse_args() only splits arguments into flags and operands; what a value means is up to the
// caller's callback (flags.hpp turns a flag table with setters into one).

#include <cstddef>
#include <expected>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace dispatchd::cli {

struct FlagSpec {
  std::string name;        // without dashes: "availability"
  char short_name = 0;     // 'q' for -q (only with Syntax::short_flags)
  bool is_bool = false;    // stands alone or takes =true/=false, never the next argument
  std::string value_name;  // "STATE" in the help text
  std::string help;
  std::string default_text;  // shown as " (default X)" after the help; empty: nothing shown
};

// The two dialects. dispatchd: every flag starts with "--" ("-help" also asks for help) and any
// other argument is refused. dispatchctl: "-x" one-letter flags, "--" ends the flags, and
// operands may be mixed with flags or, for the global flags, end them.
struct Syntax {
  bool short_flags = false;
  enum class Operands { refused, mixed, end_flags } operands = Operands::refused;
  // Appended to "unknown flag --x" (dispatchd: " (see --help)").
  std::string_view unknown_flag_hint;
};

struct ParseResult {
  bool help = false;
  // Operands in order; with Operands::end_flags, the first one and everything after it.
  std::vector<std::string> operands;
};

// Called for each flag given, in command-line order, with the name as written ("--state",
// "-q") and its value; a bool flag's value is "true" or "false". Returns an error message,
// reported as "invalid value for <shown>: <message>".
using OnFlag = std::function<std::optional<std::string>(
    const FlagSpec& spec, std::string_view shown, std::string_view value)>;

// Parses `args` (without the program name). Stops at the first problem and returns its
// message: an unknown flag, a missing value, a refused operand, or a value on_flag refused.
std::expected<ParseResult, std::string> parse_args(std::span<const std::string_view> args,
                                                   std::span<const FlagSpec> specs,
                                                   const Syntax& syntax, const OnFlag& on_flag);

// Go's strconv.ParseBool, as flags and environment variables take booleans.
std::expected<bool, std::string> parse_bool(std::string_view text);

// PREFIX_FOO_BAR for flag foo-bar.
std::string env_name(std::string_view prefix, std::string_view flag);

// One line per flag, "  -x, --name VALUE" then the help (and default) starting at `column`
// (0: three spaces after the widest flag); a flag too wide for the column has its help on the
// next line.
std::string flags_help(std::span<const FlagSpec> specs, std::size_t column = 0);

}  // namespace dispatchd::cli
