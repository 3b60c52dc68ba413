#include "dispatchd/ctl/args.hpp"

#include <algorithm>

#include "dispatchd/cli/args.hpp"
#include "dispatchd/cli/flags.hpp"

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
  using Operands = cli::Syntax::Operands;
  const cli::Syntax syntax{true, stop_at_positional ? Operands::end_flags : Operands::mixed, ""};
  std::vector<std::string_view> views(args.begin(), args.end());
  ParsedArgs out;
  auto parsed = cli::parse_args(
      views, specs, syntax, [&out](const FlagSpec& spec, std::string_view, std::string_view value) {
        out.values[spec.name].emplace_back(value);
        return std::optional<std::string>();
      });
  if (!parsed) return std::unexpected(std::move(parsed.error()));
  out.help = parsed->help;
  out.positionals = std::move(parsed->operands);
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
    return cli::string_setter(o.addr)(v);
  } else if (name == "tls-ca") {
    o.tls_ca = v;
  } else if (name == "tls-cert") {
    o.tls_cert = v;
  } else if (name == "tls-key") {
    o.tls_key = v;
  } else if (name == "server-name") {
    o.server_name = v;
  } else if (name == "insecure" || name == "json") {
    auto b = cli::parse_bool(v);
    if (!b) return b.error();
    (name == "json" ? o.json : o.insecure) = *b;
  } else if (name == "node-id") {
    o.node_id = v;
  } else if (name == "org") {
    o.org = v;
  } else if (name == "timeout") {
    return cli::duration_setter(o.timeout, false)(v);
  }
  return std::nullopt;
}

}  // namespace

std::expected<GlobalParse, std::string> parse_global(std::span<const std::string> args,
                                                     const Getenv& getenv) {
  GlobalParse out;
  for (const auto& spec : global_flag_specs()) {
    std::string var = cli::env_name("DISPATCHCTL", spec.name);
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
