#include "dispatchd/cli/args.hpp"

#include <algorithm>
#include <cctype>

namespace dispatchd::cli {

namespace {

const FlagSpec* find_long(std::span<const FlagSpec> specs, std::string_view name) {
  for (const auto& s : specs)
    if (s.name == name) return &s;
  return nullptr;
}

const FlagSpec* find_short(std::span<const FlagSpec> specs, char c) {
  for (const auto& s : specs)
    if (s.short_name && s.short_name == c) return &s;
  return nullptr;
}

bool is_help(std::string_view arg, const Syntax& syntax) {
  return arg == "-h" || arg == "--help" || (!syntax.short_flags && arg == "-help");
}

}  // namespace

std::expected<ParseResult, std::string> parse_args(std::span<const std::string_view> args,
                                                   std::span<const FlagSpec> specs,
                                                   const Syntax& syntax, const OnFlag& on_flag) {
  using Operands = Syntax::Operands;
  ParseResult out;
  for (std::size_t i = 0; i < args.size(); ++i) {
    std::string_view arg = args[i];
    if (syntax.short_flags && arg == "--") {
      out.operands.insert(out.operands.end(), args.begin() + static_cast<long>(i) + 1, args.end());
      break;
    }
    if (is_help(arg, syntax)) {
      out.help = true;
      continue;
    }
    bool is_flag = syntax.short_flags ? arg.size() >= 2 && arg[0] == '-' : arg.starts_with("--");
    if (!is_flag) {
      if (syntax.operands == Operands::refused) {
        return std::unexpected("unexpected argument \"" + std::string(arg) +
                               "\" (flags start with --)");
      }
      if (syntax.operands == Operands::end_flags) {
        out.operands.assign(args.begin() + static_cast<long>(i), args.end());
        break;
      }
      out.operands.emplace_back(arg);
      continue;
    }
    const FlagSpec* spec = nullptr;
    std::optional<std::string_view> value;
    std::string shown;
    if (arg.starts_with("--")) {
      std::string_view name = arg.substr(2);
      if (auto eq = name.find('='); eq != std::string_view::npos) {
        value = name.substr(eq + 1);
        name = name.substr(0, eq);
      }
      shown = "--" + std::string(name);
      spec = find_long(specs, name);
    } else {
      shown = std::string(arg.substr(0, 2));
      spec = find_short(specs, arg[1]);
      if (arg.size() > 2) {
        if (arg[2] != '=') return std::unexpected("unknown flag " + std::string(arg));
        value = arg.substr(3);
      }
    }
    if (!spec)
      return std::unexpected("unknown flag " + shown + std::string(syntax.unknown_flag_hint));
    std::string_view v;
    if (spec->is_bool) {
      if (value) {
        auto b = parse_bool(*value);
        if (!b) return std::unexpected("invalid value for " + shown + ": " + b.error());
        v = *b ? "true" : "false";
      } else {
        v = "true";
      }
    } else if (value) {
      v = *value;
    } else {
      if (i + 1 >= args.size()) return std::unexpected("flag " + shown + " needs a value");
      v = args[++i];
    }
    if (auto err = on_flag(*spec, shown, v)) {
      return std::unexpected("invalid value for " + shown + ": " + *err);
    }
  }
  return out;
}

std::expected<bool, std::string> parse_bool(std::string_view v) {
  if (v == "1" || v == "t" || v == "T" || v == "true" || v == "TRUE" || v == "True") return true;
  if (v == "0" || v == "f" || v == "F" || v == "false" || v == "FALSE" || v == "False") {
    return false;
  }
  return std::unexpected("want true or false, got \"" + std::string(v) + "\"");
}

std::string env_name(std::string_view prefix, std::string_view flag) {
  std::string out(prefix);
  out += '_';
  for (char c : flag)
    out += c == '-' ? '_' : static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  return out;
}

std::string flags_help(std::span<const FlagSpec> specs, std::size_t column) {
  std::vector<std::string> left;
  std::size_t width = 0;
  for (const auto& s : specs) {
    std::string l = "  ";
    l += s.short_name ? std::string("-") + s.short_name + ", " : "";
    l += "--" + s.name;
    if (!s.value_name.empty()) l += " " + s.value_name;
    width = std::max(width, l.size());
    left.push_back(std::move(l));
  }
  if (column == 0) column = width + 3;
  std::string out;
  for (std::size_t i = 0; i < specs.size(); ++i) {
    out += left[i];
    if (left[i].size() < column) {
      out.append(column - left[i].size(), ' ');
    } else {
      out += '\n';
      out.append(column, ' ');
    }
    out += specs[i].help;
    if (!specs[i].default_text.empty()) out += " (default " + specs[i].default_text + ")";
    out += '\n';
  }
  return out;
}

}  // namespace dispatchd::cli
