#pragma once
// A flag table whose every flag sets its value through a setter, in dispatchd's dialect (every
// flag starts with "--", operands are refused; see args.hpp), also from PREFIX_* environment
// variables, with a --help listing that shows each default. Setters for the usual kinds of
// value (strings, whole numbers, byte sizes, Go durations) are below.

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "dispatchd/cli/args.hpp"
#include "dispatchd/cli/duration.hpp"

namespace dispatchd::cli {

class Flags {
 public:
  // Returns an error message, or nullopt when the value was accepted.
  using Setter = std::function<std::optional<std::string>(std::string_view)>;

  void add(std::string name, std::string value_name, std::string default_text, std::string help,
           Setter set);
  // A bool flag; its default is target's value now.
  void add_bool(std::string name, std::string help, bool& target);

  // Parses argv[1..]; returns an error message on failure. `help` is set when --help, -h or
  // -help appears.
  std::optional<std::string> parse(int argc, const char* const* argv, bool& help);
  // The same for the arguments after the program name.
  std::optional<std::string> parse(std::span<const std::string_view> args, bool& help);
  // Reads every flag from the environment first: --foo-bar from PREFIX_FOO_BAR (e.g.
  // DISPATCHD_FOO_BAR), so that flags parsed afterwards win. `envp` is a null-terminated
  // "NAME=value" array (environ). Variables with the prefix that name no flag are returned in
  // `unknown` (a typo must not pass silently).
  std::optional<std::string> parse_env(const char* const* envp, std::string_view prefix,
                                       std::vector<std::string>& unknown);
  // The same for "NAME=value" entries in a span.
  std::optional<std::string> parse_env(std::span<const std::string_view> env,
                                       std::string_view prefix, std::vector<std::string>& unknown);
  // PREFIX_FOO_BAR for flag foo-bar.
  static std::string env_name(std::string_view prefix, std::string_view flag) {
    return cli::env_name(prefix, flag);
  }
  std::string usage(std::string_view program, std::string_view summary) const;

 private:
  std::vector<FlagSpec> specs_;
  std::vector<Setter> setters_;  // setters_[i] sets specs_[i]
};

// A Go duration ("300ms", "1m30s") into `target`; zero only when allow_zero, never negative.
template <class Rep, class Period>
Flags::Setter duration_setter(std::chrono::duration<Rep, Period>& target, bool allow_zero) {
  return [&target, allow_zero](std::string_view v) -> std::optional<std::string> {
    auto d = parse_duration(v);
    if (!d) return "not a duration (write it like 300ms, 5s or 1m30s)";
    if (d->count() < 0 || (!allow_zero && d->count() == 0)) {
      return allow_zero ? "must not be negative" : "must be positive";
    }
    target = std::chrono::duration_cast<std::chrono::duration<Rep, Period>>(*d);
    return std::nullopt;
  };
}

// A whole number in [min, max], stored as T.
std::optional<std::string> parse_uint(std::string_view v, std::uint64_t min, std::uint64_t max,
                                      std::uint64_t& out);
template <class T>
Flags::Setter uint_setter(T& target, std::uint64_t min, std::uint64_t max) {
  return [&target, min, max](std::string_view v) -> std::optional<std::string> {
    std::uint64_t n = 0;
    if (auto err = parse_uint(v, min, max, n)) return err;
    target = static_cast<T>(n);
    return std::nullopt;
  };
}

// Bytes in [min, max]: a number with an optional KiB/MiB/GiB (or K/M/G) suffix.
Flags::Setter size_setter(std::size_t& target, std::uint64_t min, std::uint64_t max);

// Any string, the empty one only when allow_empty.
Flags::Setter string_setter(std::string& target, bool allow_empty = false);

}  // namespace dispatchd::cli
