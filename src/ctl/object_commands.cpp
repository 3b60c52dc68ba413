// dispatchctl secret ... and config ...: create, list, inspect, relabel and remove the secrets
// and configs that tasks reference. A secret's data is never printed (the server never returns
// it); a config's is, by inspect.

#include <algorithm>

#include "dispatchd/ctl/command.hpp"
#include "dispatchd/ctl/format.hpp"
#include "dispatchd/ctl/parse.hpp"

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

// `volume ls`: ID NAME DRIVER AVAILABILITY PUBLISHED (each node with its publish state).
std::string published_to(const api::Volume& v) {
  std::string out;
  for (const auto& e : v.publish_status())
    out += (out.empty() ? "" : ",") + e.node_id() + ":" +
           display_enum(api::VolumePublishStatus::State_descriptor(), e.state());
  return out.empty() ? "-" : out;
}

std::string volume_table(const cv1::ListVolumesResponse& r) {
  Table t({"ID", "NAME", "DRIVER", "AVAILABILITY", "PUBLISHED"});
  for (const auto& v : r.volumes()) {
    t.add({v.id(), v.spec().annotations().name(), v.spec().driver().name(),
           display_enum(api::VolumeSpec::VolumeAvailability_descriptor(), v.spec().availability()),
           published_to(v)});
  }
  return t.render();
}

std::string volume_details(const api::Volume& v) {
  auto kv = describe(v);
  kv.emplace_back("Driver", v.spec().driver().name());
  kv.emplace_back("Availability", display_enum(api::VolumeSpec::VolumeAvailability_descriptor(),
                                               v.spec().availability()));
  kv.emplace_back("Scope", display_enum(api::VolumeAccessMode::Scope_descriptor(),
                                        v.spec().access_mode().scope()));
  if (!v.volume_info().volume_id().empty()) kv.emplace_back("CSI ID", v.volume_info().volume_id());
  for (const auto& e : v.publish_status())
    kv.emplace_back("Node " + e.node_id(),
                    display_enum(api::VolumePublishStatus::State_descriptor(), e.state()));
  return key_value_lines(kv);
}

// The request of a command whose first operand is a volume, and whose second (if any) a node.
template <class Req>
Req volume_request(const ParsedArgs& a) {
  Req req;
  req.set_volume_id(a.positionals[0]);
  if constexpr (requires { req.set_node_id(""); }) req.set_node_id(a.positionals.at(1));
  return req;
}

std::string volume_id_line(const auto& resp) {
  return resp.volume().id() + "\n";
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

  // ---- volumes
  const auto* avail_d = api::VolumeSpec::VolumeAvailability_descriptor();
  const auto* scope_d = api::VolumeAccessMode::Scope_descriptor();
  cmds.push_back(
      {"volume create",
       "NAME",
       "create a cluster volume; prints its ID",
       {{"driver", 0, false, "NAME", "the volume's (CSI) driver (required)"},
        {"scope", 0, false, "single-node|multi-node", "access scope (default single-node)"},
        {"csi-id", 0, false, "ID", "the CSI volume ID agents are given (default: none)"},
        label_flag[0]},
       1,
       1,
       [=](Context& c, const ParsedArgs& a) {
         cv1::CreateVolumeRequest req;
         auto* spec = req.mutable_spec();
         spec->mutable_annotations()->set_name(a.positionals[0]);
         *spec->mutable_annotations()->mutable_labels() = label_flags(a, "label");
         spec->mutable_driver()->set_name(a.last("driver").value_or(""));
         spec->mutable_access_mode()->set_scope(enum_flag<api::VolumeAccessMode::Scope>(
             a, "scope", scope_d, a.last("scope").value_or("single-node")));
         req.mutable_volume_info()->set_volume_id(a.last("csi-id").value_or(""));
         return unary(c, &Stub::CreateVolume, req, [](const auto& r) { return volume_id_line(r); });
       }});
  cmds.push_back({"volume ls",
                  "",
                  "list cluster volumes and the nodes they are published to",
                  {},
                  0,
                  0,
                  [](Context& c, const ParsedArgs&) {
                    return unary(c, &Stub::ListVolumes, cv1::ListVolumesRequest{},
                                 [](const auto& resp) { return volume_table(resp); });
                  }});
  cmds.push_back({"volume inspect",
                  "ID|NAME",
                  "show a volume and its publish status",
                  {},
                  1,
                  1,
                  [](Context& c, const ParsedArgs& a) {
                    return unary(c, &Stub::GetVolume, volume_request<cv1::GetVolumeRequest>(a),
                                 [](const auto& resp) { return volume_details(resp.volume()); });
                  }});
  cmds.push_back({"volume update",
                  "ID|NAME",
                  "replace a volume's labels and/or set its availability (active, pause, drain)",
                  {label_flag[0], {"availability", 0, false, "STATE", "active, pause or drain"}},
                  1,
                  1,
                  [=](Context& c, const ParsedArgs& a) {
                    auto req = volume_request<cv1::UpdateVolumeRequest>(a);
                    *req.mutable_labels() = label_flags(a, "label");
                    if (auto v = a.last("availability")) {
                      req.set_availability(enum_flag<api::VolumeSpec::VolumeAvailability>(
                          a, "availability", avail_d, *v));
                    }
                    return unary(c, &Stub::UpdateVolume, req,
                                 [](const auto& r) { return volume_id_line(r); });
                  }});
  cmds.push_back({"volume rm",
                  "ID|NAME",
                  "remove a volume no task uses and no node has published (--force: anyway)",
                  {{"force", 0, true, "", "remove it even if in use or published"}},
                  1,
                  1,
                  [](Context& c, const ParsedArgs& a) {
                    auto req = volume_request<cv1::RemoveVolumeRequest>(a);
                    req.set_force(a.flag("force"));
                    return unary(c, &Stub::RemoveVolume, req,
                                 [&](const auto&) { return req.volume_id() + "\n"; });
                  }});
  cmds.push_back({"volume publish",
                  "ID|NAME NODE",
                  "publish a volume to a node (stands in for the CSI controller)",
                  {{"context", 0, false, "KEY=VALUE", "publish context for the node (repeatable)"}},
                  2,
                  2,
                  [](Context& c, const ParsedArgs& a) {
                    auto req = volume_request<cv1::PublishVolumeRequest>(a);
                    *req.mutable_publish_context() = label_flags(a, "context");
                    return unary(c, &Stub::PublishVolume, req,
                                 [](const auto& r) { return volume_id_line(r); });
                  }});
  cmds.push_back({"volume unpublish",
                  "ID|NAME NODE",
                  "have a node drop a volume; once it has confirmed, again to remove the entry",
                  {},
                  2,
                  2,
                  [](Context& c, const ParsedArgs& a) {
                    return unary(c, &Stub::UnpublishVolume,
                                 volume_request<cv1::UnpublishVolumeRequest>(a),
                                 [](const auto& r) { return volume_id_line(r); });
                  }});
}

}  // namespace dispatchd::ctl
