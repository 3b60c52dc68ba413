#include "dispatchd/cli/flags.hpp"

#include <algorithm>
#include <charconv>
#include <cstdint>

namespace dispatchd::cli {

namespace {

// dispatchd's dialect: long flags only, no operands.
constexpr Syntax kSyntax{false, Syntax::Operands::refused, " (see --help)"};
// The help text starts in this column (longer flags put it on the next line).
constexpr std::size_t kHelpColumn = 34;

}  // namespace

void Flags::add(std::string name, std::string value_name, std::string default_text,
                std::string help, Setter set) {
  specs_.push_back(FlagSpec{std::move(name), 0, false, std::move(value_name), std::move(help),
                            std::move(default_text)});
  setters_.push_back(std::move(set));
}

void Flags::add_bool(std::string name, std::string help, bool& target) {
  specs_.push_back(
      FlagSpec{std::move(name), 0, true, "", std::move(help), target ? "true" : "false"});
  setters_.push_back([&target](std::string_view v) -> std::optional<std::string> {
    auto b = parse_bool(v);
    if (!b) return b.error();
    target = *b;
    return std::nullopt;
  });
}

std::optional<std::string> Flags::parse(int argc, const char* const* argv, bool& help) {
  std::vector<std::string_view> args(argv + std::min(argc, 1), argv + argc);
  return parse(args, help);
}

std::optional<std::string> Flags::parse(std::span<const std::string_view> args, bool& help) {
  help = false;
  auto parsed = parse_args(args, specs_, kSyntax,
                           [this](const FlagSpec& spec, std::string_view, std::string_view v) {
                             return setters_[static_cast<std::size_t>(&spec - specs_.data())](v);
                           });
  if (!parsed) return std::move(parsed.error());
  help = parsed->help;
  return std::nullopt;
}

std::optional<std::string> Flags::parse_env(const char* const* envp, std::string_view prefix,
                                            std::vector<std::string>& unknown) {
  std::vector<std::string_view> env;
  for (; envp && *envp; ++envp)
    env.emplace_back(*envp);
  return parse_env(env, prefix, unknown);
}

std::optional<std::string> Flags::parse_env(std::span<const std::string_view> env,
                                            std::string_view prefix,
                                            std::vector<std::string>& unknown) {
  std::string want = std::string(prefix) + "_";
  for (std::string_view entry : env) {
    if (!entry.starts_with(want)) continue;
    auto eq = entry.find('=');
    if (eq == std::string_view::npos) continue;
    std::string_view name = entry.substr(0, eq), value = entry.substr(eq + 1);
    auto it = std::find_if(specs_.begin(), specs_.end(), [&](const FlagSpec& s) {
      return cli::env_name(prefix, s.name) == name;
    });
    if (it == specs_.end()) {
      unknown.emplace_back(name);
      continue;
    }
    if (auto err = setters_[static_cast<std::size_t>(it - specs_.begin())](value)) {
      return "invalid value for " + std::string(name) + " (--" + it->name + "): " + *err;
    }
  }
  return std::nullopt;
}

std::string Flags::usage(std::string_view program, std::string_view summary) const {
  std::vector<FlagSpec> listed = specs_;
  listed.push_back(FlagSpec{"help", 0, true, "", "show this help", ""});
  return "Usage: " + std::string(program) + " [flags]\n\n" + std::string(summary) + "\n\nFlags:\n" +
         flags_help(listed, kHelpColumn);
}

std::optional<std::string> parse_uint(std::string_view v, std::uint64_t min, std::uint64_t max,
                                      std::uint64_t& out) {
  std::uint64_t n = 0;
  auto [p, ec] = std::from_chars(v.data(), v.data() + v.size(), n);
  if (ec != std::errc() || p != v.data() + v.size()) return "not a whole number";
  if (n < min || n > max) {
    return "must be between " + std::to_string(min) + " and " + std::to_string(max);
  }
  out = n;
  return std::nullopt;
}

Flags::Setter size_setter(std::size_t& target, std::uint64_t min, std::uint64_t max) {
  return [&target, min, max](std::string_view v) -> std::optional<std::string> {
    std::uint64_t n = 0;
    auto [p, ec] = std::from_chars(v.data(), v.data() + v.size(), n);
    if (ec != std::errc() || p == v.data()) return "not a size (e.g. 4194304 or 4MiB)";
    std::string_view unit(p, v.data() + v.size() - p);
    std::uint64_t mult = 1;
    if (unit == "" || unit == "B") {
      mult = 1;
    } else if (unit == "KiB" || unit == "K" || unit == "k") {
      mult = 1024;
    } else if (unit == "MiB" || unit == "M") {
      mult = 1024 * 1024;
    } else if (unit == "GiB" || unit == "G") {
      mult = 1024ull * 1024 * 1024;
    } else {
      return "unknown size unit \"" + std::string(unit) + "\" (use KiB, MiB or GiB)";
    }
    // A product past 2^64 would wrap around into range: refuse it as too large instead.
    if (n > UINT64_MAX / mult || n * mult < min || n * mult > max) {
      return "must be between " + std::to_string(min) + " and " + std::to_string(max) + " bytes";
    }
    target = n * mult;
    return std::nullopt;
  };
}

Flags::Setter string_setter(std::string& target, bool allow_empty) {
  return [&target, allow_empty](std::string_view v) -> std::optional<std::string> {
    if (!allow_empty && v.empty()) return "must not be empty";
    target = v;
    return std::nullopt;
  };
}

}  // namespace dispatchd::cli
