#include "dispatchd/app/flags.hpp"

#include <algorithm>
#include <cctype>

namespace dispatchd::app {

void Flags::add(std::string name, std::string value_name, std::string default_text,
                std::string help, Setter set) {
  flags_.push_back(Flag{std::move(name), std::move(value_name), std::move(default_text),
                        std::move(help), false, std::move(set)});
}

void Flags::add_bool(std::string name, std::string help, bool& target) {
  Flag f{std::move(name),
         "",
         target ? "true" : "false",
         std::move(help),
         true,
         [&target](std::string_view v) -> std::optional<std::string> {
           // Go's strconv.ParseBool, as Docker's flags take it.
           if (v == "1" || v == "t" || v == "T" || v == "true" || v == "TRUE" || v == "True") {
             target = true;
           } else if (v == "0" || v == "f" || v == "F" || v == "false" || v == "FALSE" ||
                      v == "False") {
             target = false;
           } else {
             return "want true or false, got \"" + std::string(v) + "\"";
           }
           return std::nullopt;
         }};
  flags_.push_back(std::move(f));
}

const Flags::Flag* Flags::find(std::string_view name) const {
  for (const auto& f : flags_) {
    if (f.name == name) return &f;
  }
  return nullptr;
}

std::optional<std::string> Flags::parse(int argc, const char* const* argv, bool& help) {
  help = false;
  for (int i = 1; i < argc; ++i) {
    std::string_view arg = argv[i];
    if (arg == "--help" || arg == "-h" || arg == "-help") {
      help = true;
      continue;
    }
    if (!arg.starts_with("--")) {
      return "unexpected argument \"" + std::string(arg) + "\" (flags start with --)";
    }
    arg.remove_prefix(2);
    std::optional<std::string_view> value;
    if (auto eq = arg.find('='); eq != std::string_view::npos) {
      value = arg.substr(eq + 1);
      arg = arg.substr(0, eq);
    }
    const Flag* f = find(arg);
    if (!f) return "unknown flag --" + std::string(arg) + " (see --help)";
    if (!value) {
      if (f->is_bool) {
        value = "true";
      } else {
        if (i + 1 >= argc) return "flag --" + f->name + " needs a value";
        value = argv[++i];
      }
    }
    if (auto err = f->set(*value)) return "invalid value for --" + f->name + ": " + *err;
  }
  return std::nullopt;
}

std::string Flags::env_name(std::string_view prefix, std::string_view flag) {
  std::string out(prefix);
  out += '_';
  for (char c : flag)
    out += c == '-' ? '_' : static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  return out;
}

std::optional<std::string> Flags::parse_env(const char* const* envp, std::string_view prefix,
                                            std::vector<std::string>& unknown) {
  std::string want = std::string(prefix) + "_";
  for (; envp && *envp; ++envp) {
    std::string_view entry = *envp;
    if (!entry.starts_with(want)) continue;
    auto eq = entry.find('=');
    if (eq == std::string_view::npos) continue;
    std::string_view name = entry.substr(0, eq), value = entry.substr(eq + 1);
    const Flag* f = nullptr;
    for (const auto& candidate : flags_) {
      if (env_name(prefix, candidate.name) == name) {
        f = &candidate;
        break;
      }
    }
    if (!f) {
      unknown.emplace_back(name);
      continue;
    }
    if (auto err = f->set(value)) {
      return "invalid value for " + std::string(name) + " (--" + f->name + "): " + *err;
    }
  }
  return std::nullopt;
}

std::string Flags::usage(std::string_view program, std::string_view summary) const {
  std::string out =
      "Usage: " + std::string(program) + " [flags]\n\n" + std::string(summary) + "\n\nFlags:\n";
  for (const auto& f : flags_) {
    std::string left = "  --" + f.name + (f.value_name.empty() ? "" : " " + f.value_name);
    if (left.size() < 34)
      left.resize(34, ' ');
    else
      left += "\n" + std::string(34, ' ');
    out += left + f.help;
    if (!f.default_text.empty()) out += " (default " + f.default_text + ")";
    out += "\n";
  }
  out += "  --help                          show this help\n";
  return out;
}

}  // namespace dispatchd::app
