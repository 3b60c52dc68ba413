#pragma once
// Command-line flags: "--name value" and "--name=value" for every valued flag; boolean flags
// stand alone ("--insecure") or take "=true"/"=false" (as in Go, a bool never takes the next
// argument). --help lists every flag with its default.

#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace dispatchd::app {

class Flags {
 public:
  // Returns an error message, or nullopt when the value was accepted.
  using Setter = std::function<std::optional<std::string>(std::string_view)>;

  void add(std::string name, std::string value_name, std::string default_text, std::string help,
           Setter set);
  void add_bool(std::string name, std::string help, bool& target);

  // Parses argv[1..]; returns an error message on failure. `help` is set when --help/-h appears.
  std::optional<std::string> parse(int argc, const char* const* argv, bool& help);
  // Reads every flag from the environment first: --foo-bar from PREFIX_FOO_BAR (e.g.
  // DISPATCHD_FOO_BAR), so that flags parsed afterwards win. `envp` is a null-terminated
  // "NAME=value" array (environ). Variables with the prefix that name no flag are returned in
  // `unknown` (a typo must not pass silently).
  std::optional<std::string> parse_env(const char* const* envp, std::string_view prefix,
                                       std::vector<std::string>& unknown);
  // PREFIX_FOO_BAR for flag foo-bar.
  static std::string env_name(std::string_view prefix, std::string_view flag);
  std::string usage(std::string_view program, std::string_view summary) const;

 private:
  struct Flag {
    std::string name, value_name, default_text, help;
    bool is_bool = false;
    Setter set;
  };
  const Flag* find(std::string_view name) const;
  std::vector<Flag> flags_;
};

}  // namespace dispatchd::app
