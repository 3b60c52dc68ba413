// dispatchctl secret ... and config ...: create, list, inspect, relabel and remove the secrets
// and configs that tasks reference. A secret's data is never printed (the server never returns
// it); a config's is, by inspect.

#include <algorithm>

#include "dispatchd/ctl/command.hpp"
#include "dispatchd/ctl/format.hpp"

namespace dispatchd::ctl {

namespace api = docker::swarmkit::v1;
namespace cv1 = dispatchd::control::v1;

namespace {

std::string key_value_lines(const std::vector<std::pair<std::string, std::string>>& kv) {
  std::string out;
  for (const auto& [k, v] : kv)
    out += k + ": " + v + "\n";
  return out;
}

template <class Object>
std::vector<std::pair<std::string, std::string>> describe(const Object& o) {
  std::vector<std::pair<std::string, std::string>> kv = {
      {"ID", o.id()},
      {"Name", o.spec().annotations().name()},
      {"Created", format_time(o.meta().created_at())},
      {"Updated", format_time(o.meta().updated_at())}};
  std::vector<std::pair<std::string, std::string>> labels(o.spec().annotations().labels().begin(),
                                                          o.spec().annotations().labels().end());
  std::sort(labels.begin(), labels.end());
  for (const auto& [k, v] : labels)
    kv.emplace_back("Label " + k, v);
  return kv;
}

}  // namespace

void add_object_commands(std::vector<Command>& cmds) {
  const std::vector<FlagSpec> label_flag = {
      {"label", 0, false, "KEY=VALUE", "a label (repeatable)"}};

  // ---- secrets
  cmds.push_back({"secret create", "NAME FILE|-",
                  "create a secret from FILE (- for stdin; 1 byte to under 500 KiB); prints its ID",
                  label_flag, 2, 2, [](Context& c, const ParsedArgs& a) {
                    cv1::CreateSecretRequest req;
                    auto* spec = req.mutable_spec();
                    spec->mutable_annotations()->set_name(a.positionals[0]);
                    *spec->mutable_annotations()->mutable_labels() = label_flags(a, "label");
                    spec->set_data(read_file_or_stdin("secret data", a.positionals[1]));
                    return unary(c, &Stub::CreateSecret, req,
                                 [](const auto& resp) { return resp.secret().id() + "\n"; });
                  }});
  cmds.push_back({"secret ls",
                  "",
                  "list secrets (never their data)",
                  {},
                  0,
                  0,
                  [](Context& c, const ParsedArgs&) {
                    return unary(c, &Stub::ListSecrets, cv1::ListSecretsRequest{},
                                 [](const auto& resp) {
                                   return format_object_table(resp.secrets(), Clock::now());
                                 });
                  }});
  cmds.push_back({"secret inspect",
                  "ID|NAME",
                  "show a secret (never its data)",
                  {},
                  1,
                  1,
                  [](Context& c, const ParsedArgs& a) {
                    cv1::GetSecretRequest req;
                    req.set_secret_id(a.positionals[0]);
                    return unary(c, &Stub::GetSecret, req, [](const auto& resp) {
                      return key_value_lines(describe(resp.secret()));
                    });
                  }});
  cmds.push_back({"secret update", "ID|NAME",
                  "replace a secret's labels (its data cannot change, as in SwarmKit)", label_flag,
                  1, 1, [](Context& c, const ParsedArgs& a) {
                    cv1::UpdateSecretRequest req;
                    req.set_secret_id(a.positionals[0]);
                    *req.mutable_labels() = label_flags(a, "label");
                    return unary(c, &Stub::UpdateSecret, req,
                                 [](const auto& resp) { return resp.secret().id() + "\n"; });
                  }});
  cmds.push_back({"secret rm",
                  "ID|NAME",
                  "remove a secret no task uses",
                  {},
                  1,
                  1,
                  [](Context& c, const ParsedArgs& a) {
                    cv1::RemoveSecretRequest req;
                    req.set_secret_id(a.positionals[0]);
                    return unary(c, &Stub::RemoveSecret, req,
                                 [&](const auto&) { return req.secret_id() + "\n"; });
                  }});

  // ---- configs
  cmds.push_back({"config create", "NAME FILE|-",
                  "create a config from FILE (- for stdin; 1 byte to under 1000 KiB); prints its "
                  "ID",
                  label_flag, 2, 2, [](Context& c, const ParsedArgs& a) {
                    cv1::CreateConfigRequest req;
                    auto* spec = req.mutable_spec();
                    spec->mutable_annotations()->set_name(a.positionals[0]);
                    *spec->mutable_annotations()->mutable_labels() = label_flags(a, "label");
                    spec->set_data(read_file_or_stdin("config data", a.positionals[1]));
                    return unary(c, &Stub::CreateConfig, req,
                                 [](const auto& resp) { return resp.config().id() + "\n"; });
                  }});
  cmds.push_back({"config ls", "", "list configs", {}, 0, 0, [](Context& c, const ParsedArgs&) {
                    return unary(c, &Stub::ListConfigs, cv1::ListConfigsRequest{},
                                 [](const auto& resp) {
                                   return format_object_table(resp.configs(), Clock::now());
                                 });
                  }});
  cmds.push_back({"config inspect",
                  "ID|NAME",
                  "show a config; --data prints its data alone",
                  {{"data", 0, true, "", "print the config's data and nothing else"}},
                  1,
                  1,
                  [](Context& c, const ParsedArgs& a) {
                    cv1::GetConfigRequest req;
                    req.set_config_id(a.positionals[0]);
                    bool data = a.flag("data");
                    return unary(c, &Stub::GetConfig, req, [data](const auto& resp) {
                      if (data) return resp.config().spec().data();
                      auto kv = describe(resp.config());
                      kv.emplace_back("Size", std::to_string(resp.config().spec().data().size()));
                      return key_value_lines(kv);
                    });
                  }});
  cmds.push_back({"config update", "ID|NAME", "replace a config's labels", label_flag, 1, 1,
                  [](Context& c, const ParsedArgs& a) {
                    cv1::UpdateConfigRequest req;
                    req.set_config_id(a.positionals[0]);
                    *req.mutable_labels() = label_flags(a, "label");
                    return unary(c, &Stub::UpdateConfig, req,
                                 [](const auto& resp) { return resp.config().id() + "\n"; });
                  }});
  cmds.push_back({"config rm",
                  "ID|NAME",
                  "remove a config no task uses",
                  {},
                  1,
                  1,
                  [](Context& c, const ParsedArgs& a) {
                    cv1::RemoveConfigRequest req;
                    req.set_config_id(a.positionals[0]);
                    return unary(c, &Stub::RemoveConfig, req,
                                 [&](const auto&) { return req.config_id() + "\n"; });
                  }});
}

}  // namespace dispatchd::ctl
