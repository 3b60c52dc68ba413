#include "dispatchd/ctl/args.hpp"

#include <algorithm>

#include "dispatchd/app/duration.hpp"
#include "dispatchd/ctl/parse.hpp"

namespace dispatchd::ctl {

std::optional<std::string> ParsedArgs::last(std::string_view name) const {
  auto it = values.find(name);
  if (it == values.end() || it->second.empty()) return std::nullopt;
  return it->second.back();
}

std::vector<std::string> ParsedArgs::all(std::string_view name) const {
  auto it = values.find(name);
  return it == values.end() ? std::vector<std::string>{} : it->second;
}

std::expected<ParsedArgs, std::string> parse_args(std::span<const std::string> args,
                                                  std::span<const FlagSpec> specs,
                                                  bool stop_at_positional) {
  ParsedArgs out;
  auto find_long = [&](std::string_view n) -> const FlagSpec* {
    for (const auto& s : specs)
      if (s.name == n) return &s;
    return nullptr;
  };
  auto find_short = [&](char c) -> const FlagSpec* {
    for (const auto& s : specs)
      if (s.short_name && s.short_name == c) return &s;
    return nullptr;
  };
  for (std::size_t i = 0; i < args.size(); ++i) {
    std::string_view arg = args[i];
    if (arg == "--") {
      out.positionals.insert(out.positionals.end(), args.begin() + static_cast<long>(i) + 1,
                             args.end());
      break;
    }
    if (arg == "-h" || arg == "--help") {
      out.help = true;
      continue;
    }
    if (arg.size() < 2 || arg[0] != '-') {
      if (stop_at_positional) {
        out.positionals.assign(args.begin() + static_cast<long>(i), args.end());
        break;
      }
      out.positionals.emplace_back(arg);
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
      spec = find_long(name);
    } else {
      shown = std::string(arg.substr(0, 2));
      spec = find_short(arg[1]);
      if (arg.size() > 2) {
        if (arg[2] != '=') return std::unexpected("unknown flag " + std::string(arg));
        value = arg.substr(3);
      }
    }
    if (!spec) return std::unexpected("unknown flag " + shown);
    std::string v;
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
    out.values[spec->name].push_back(std::move(v));
  }
  return out;
}

std::string flags_help(std::span<const FlagSpec> specs) {
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
  std::string out;
  for (std::size_t i = 0; i < specs.size(); ++i) {
    out += left[i];
    out.append(width - left[i].size() + 3, ' ');
    out += specs[i].help + "\n";
  }
  return out;
}

std::span<const FlagSpec> global_flag_specs() {
  static const std::vector<FlagSpec> specs = {
      {"addr", 0, false, "HOST:PORT", "dispatchd's address (default 127.0.0.1:4242)"},
      {"tls-ca", 0, false, "FILE", "CA bundle that verifies the server's certificate"},
      {"tls-cert", 0, false, "FILE", "operator client certificate (OU swarm-manager)"},
      {"tls-key", 0, false, "FILE", "key of --tls-cert"},
      {"server-name", 0, false, "NAME", "TLS name to verify (default swarm-manager)"},
      {"insecure", 0, true, "", "plaintext h2c; identity from metadata (test servers only)"},
      {"node-id", 0, false, "ID", "node-id metadata with --insecure (default dispatchctl)"},
      {"org", 0, false, "ORG", "node-org metadata with --insecure (default dispatchd)"},
      {"timeout", 0, false, "DURATION", "deadline of each call (default 10s)"},
      {"json", 0, true, "", "print the response as protobuf JSON"},
  };
  return specs;
}

namespace {

std::optional<std::string> apply_global(GlobalOptions& o, const std::string& name,
                                        const std::string& v) {
  if (name == "addr") {
    if (v.empty()) return "must not be empty";
    o.addr = v;
  } else if (name == "tls-ca") {
    o.tls_ca = v;
  } else if (name == "tls-cert") {
    o.tls_cert = v;
  } else if (name == "tls-key") {
    o.tls_key = v;
  } else if (name == "server-name") {
    o.server_name = v;
  } else if (name == "insecure" || name == "json") {
    auto b = parse_bool(v);
    if (!b) return b.error();
    (name == "json" ? o.json : o.insecure) = *b;
  } else if (name == "node-id") {
    o.node_id = v;
  } else if (name == "org") {
    o.org = v;
  } else if (name == "timeout") {
    auto d = app::parse_duration(v);
    if (!d) return "not a duration (write it like 300ms, 5s or 1m30s)";
    if (d->count() <= 0) return "must be positive";
    o.timeout = *d;
  }
  return std::nullopt;
}

}  // namespace

std::expected<GlobalParse, std::string> parse_global(std::span<const std::string> args,
                                                     const Getenv& getenv) {
  GlobalParse out;
  for (const auto& spec : global_flag_specs()) {
    std::string var = "DISPATCHCTL_";
    for (char c : spec.name)
      var.push_back(c == '-' ? '_' : static_cast<char>(c >= 'a' && c <= 'z' ? c - 32 : c));
    auto v = getenv(var);
    if (!v) continue;
    if (auto err = apply_global(out.options, spec.name, *v)) {
      return std::unexpected("invalid value for " + var + ": " + *err);
    }
  }
  auto parsed = parse_args(args, global_flag_specs(), /*stop_at_positional=*/true);
  if (!parsed) return std::unexpected(parsed.error());
  for (const auto& spec : global_flag_specs()) {
    for (const auto& v : parsed->all(spec.name)) {
      if (auto err = apply_global(out.options, spec.name, v)) {
        return std::unexpected("invalid value for --" + spec.name + ": " + *err);
      }
    }
  }
  out.help = parsed->help;
  out.rest = std::move(parsed->positionals);
  return out;
}

}  // namespace dispatchd::ctl
