#include "dispatchd/control/control.hpp"

#include <google/protobuf/util/time_util.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <functional>
#include <optional>

#include "dispatchd/id.hpp"
#include "dispatchd/log.hpp"

namespace dispatchd::control {

using google::protobuf::util::TimeUtil;
using grpc::Status;
using grpc::StatusCode;

namespace {

void set_timestamp(google::protobuf::Timestamp* ts, std::chrono::system_clock::time_point t) {
  *ts = TimeUtil::NanosecondsToTimestamp(
      std::chrono::duration_cast<std::chrono::nanoseconds>(t.time_since_epoch()).count());
}

// Steady-clock instants as wall-clock time for operators.
void set_steady(google::protobuf::Timestamp* ts, std::chrono::steady_clock::time_point t) {
  auto wall = std::chrono::system_clock::now() -
              std::chrono::duration_cast<std::chrono::system_clock::duration>(
                  std::chrono::steady_clock::now() - t);
  set_timestamp(ts, wall);
}

Status invalid(std::string msg) {
  return Status(StatusCode::invalid_argument, std::move(msg));
}

Status node_not_found(const std::string& id) {
  return Status(StatusCode::not_found, "node " + id + " not found");
}

// Node IDs come from certificate CNs: printable ASCII without spaces, as a SwarmKit node ID is.
bool valid_node_id(const std::string& id) {
  if (id.empty() || id.size() > 128) return false;
  return std::all_of(id.begin(), id.end(), [](char c) { return c > ' ' && c < 0x7f; });
}

// Labels: non-empty keys; SwarmKit's annotations allow any value.
std::optional<Status> check_labels(const google::protobuf::Map<std::string, std::string>& labels) {
  for (const auto& [k, v] : labels) {
    if (k.empty()) return invalid("label keys must not be empty");
  }
  return std::nullopt;
}

// Why `pem` is not a bundle of CA certificates ("" when it is one): at least one certificate,
// every block a certificate, each a CA valid now, a self-issued one with a signature that
// verifies (a damaged root would make every agent distrust its managers).
std::string root_ca_problem(const std::string& pem) {
  if (pem.find_first_not_of(" \t\r\n") == std::string::npos) return "the root CA is empty";
  BIO* bio = BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size()));
  if (!bio) return "out of memory";
  int count = 0;
  std::string problem;
  while (X509* cert = PEM_read_bio_X509(bio, nullptr, nullptr, nullptr)) {
    ++count;
    const std::string which = "certificate " + std::to_string(count);
    EVP_PKEY* key = X509_get0_pubkey(cert);
    if (X509_check_ca(cert) == 0) {
      problem = which + " is not a CA";
    } else if (X509_cmp_current_time(X509_get0_notBefore(cert)) >= 0 ||
               X509_cmp_current_time(X509_get0_notAfter(cert)) <= 0) {
      problem = which + " is expired or not yet valid";
    } else if (!key) {
      problem = which + " has no usable public key";
    } else if (X509_check_issued(cert, cert) == X509_V_OK && X509_verify(cert, key) != 1) {
      problem = which + " is self-issued but its signature does not verify";
    }
    X509_free(cert);
    if (!problem.empty()) break;
  }
  BIO_free(bio);
  if (problem.empty() && count == 0) problem = "no PEM certificate in the root CA";
  // PEM_read_bio_X509 ends on "no start line" at the end, or on a damaged block.
  unsigned long e = ERR_peek_last_error();
  if (problem.empty() && e && ERR_GET_REASON(e) != PEM_R_NO_START_LINE) {
    problem = "the root CA holds a block that is not a valid certificate";
  }
  ERR_clear_error();
  return problem;
}

template <class T>
bool contains(const google::protobuf::RepeatedField<int>& list, T v) {
  return list.empty() || std::find(list.begin(), list.end(), static_cast<int>(v)) != list.end();
}

// ---- secrets and configs: one set of rules, two kinds ------------------------------------------

struct SecretKind {
  using Object = api::Secret;
  using Spec = api::SecretSpec;
  using Ref = api::SecretReference;
  static constexpr const char* noun = "secret";
  static constexpr std::size_t max_size = 500 * 1024;  // SwarmKit's MaxSecretSize
  static store::Ptr<Object> get(const store::ReadTx& tx, std::string_view id) {
    return tx.secret(id);
  }
  static std::vector<store::Ptr<Object>> all(const store::ReadTx& tx) { return tx.secrets(); }
  static Status remove(store::WriteTx& tx, std::string_view id) { return tx.remove_secret(id); }
  static const google::protobuf::RepeatedPtrField<Ref>& refs(const api::ContainerSpec& c) {
    return c.secrets();
  }
  static google::protobuf::RepeatedPtrField<Ref>* mutable_refs(api::ContainerSpec* c) {
    return c->mutable_secrets();
  }
  static const std::string& ref_id(const Ref& r) { return r.secret_id(); }
  static const std::string& ref_name(const Ref& r) { return r.secret_name(); }
  static void set_ref(Ref& r, const std::string& id, const std::string& n) {
    r.set_secret_id(id);
    r.set_secret_name(n);
  }
  // A secret's data never leaves the manager through this API.
  static Object shown(Object o) {
    o.mutable_spec()->clear_data();
    return o;
  }
};

struct ConfigKind {
  using Object = api::Config;
  using Spec = api::ConfigSpec;
  using Ref = api::ConfigReference;
  static constexpr const char* noun = "config";
  static constexpr std::size_t max_size = 1000 * 1024;  // SwarmKit's MaxConfigSize
  static store::Ptr<Object> get(const store::ReadTx& tx, std::string_view id) {
    return tx.config(id);
  }
  static std::vector<store::Ptr<Object>> all(const store::ReadTx& tx) { return tx.configs(); }
  static Status remove(store::WriteTx& tx, std::string_view id) { return tx.remove_config(id); }
  static const google::protobuf::RepeatedPtrField<Ref>& refs(const api::ContainerSpec& c) {
    return c.configs();
  }
  static google::protobuf::RepeatedPtrField<Ref>* mutable_refs(api::ContainerSpec* c) {
    return c->mutable_configs();
  }
  static const std::string& ref_id(const Ref& r) { return r.config_id(); }
  static const std::string& ref_name(const Ref& r) { return r.config_name(); }
  static void set_ref(Ref& r, const std::string& id, const std::string& n) {
    r.set_config_id(id);
    r.set_config_name(n);
  }
  static Object shown(Object o) { return o; }
};

// Volumes share the by-ID-or-name lookups with secrets and configs; their own rules are below.
struct VolumeKind {
  using Object = api::Volume;
  using Spec = api::VolumeSpec;
  static constexpr const char* noun = "volume";
  static store::Ptr<Object> get(const store::ReadTx& tx, std::string_view id) {
    return tx.volume(id);
  }
  static std::vector<store::Ptr<Object>> all(const store::ReadTx& tx) { return tx.volumes(); }
  static Object shown(Object o) { return o; }
};

// SwarmKit's name rule for secrets and configs.
bool valid_object_name(const std::string& n) {
  auto alnum = [](char c) { return std::isalnum(static_cast<unsigned char>(c)) != 0; };
  if (n.empty() || n.size() > 64 || !alnum(n.front()) || !alnum(n.back())) return false;
  return std::all_of(n.begin(), n.end(),
                     [&](char c) { return alnum(c) || c == '-' || c == '_' || c == '.'; });
}

// By ID, else by name.
template <class K>
store::Ptr<typename K::Object> find_object(const store::ReadTx& tx, const std::string& id) {
  if (auto o = K::get(tx, id)) return o;
  for (auto& o : K::all(tx))
    if (o->spec().annotations().name() == id) return o;
  return nullptr;
}

template <class K>
Status object_not_found(const std::string& id) {
  return Status(StatusCode::not_found, std::string(K::noun) + " " + id + " not found");
}

template <class K>
std::optional<Status> check_spec(const typename K::Spec& spec) {
  const std::string& name = spec.annotations().name();
  if (name.empty()) return invalid("name must be provided");
  if (!valid_object_name(name)) {
    return invalid(
        "invalid name, only 64 [a-zA-Z0-9-_.] characters allowed, and the start and end "
        "character must be [a-zA-Z0-9]");
  }
  if (spec.data().empty() || spec.data().size() >= K::max_size) {
    return invalid(std::string(K::noun) + " data must be larger than 0 and less than " +
                   std::to_string(K::max_size) + " bytes");
  }
  if (auto bad = check_labels(spec.annotations().labels())) return bad;
  return std::nullopt;
}

// SwarmKit's CreateVolume: a name and a driver are required.
template <>
std::optional<Status> check_spec<VolumeKind>(const api::VolumeSpec& spec) {
  if (spec.annotations().name().empty()) return invalid("meaningful name must be provided");
  if (spec.driver().name().empty()) return invalid("driver must be specified");
  if (auto bad = check_labels(spec.annotations().labels())) return bad;
  return std::nullopt;
}

// `base` carries what is not in the spec (a volume's VolumeInfo).
template <class K>
std::expected<typename K::Object, Status> create_object(store::Store& st,
                                                        const typename K::Spec& spec,
                                                        const typename K::Object& base = {}) {
  if (auto bad = check_spec<K>(spec)) return std::unexpected(*bad);
  typename K::Object o = base;
  o.set_id(new_id());
  *o.mutable_spec() = spec;
  typename K::Object created;
  auto s = st.update([&](store::WriteTx& tx) {
    for (const auto& other : K::all(tx)) {
      if (other->spec().annotations().name() == spec.annotations().name()) {
        return Status(StatusCode::already_exists,
                      std::string(K::noun) + " " + spec.annotations().name() + " already exists");
      }
    }
    if (auto r = tx.create(o); !r.is_ok()) return r;
    created = *K::get(tx, o.id());
    return Status::ok();
  });
  if (!s.is_ok()) return std::unexpected(s);
  return K::shown(std::move(created));
}

template <class K>
std::vector<typename K::Object> list_objects(store::Store& st) {
  std::vector<typename K::Object> out;
  st.view([&](const store::ReadTx& tx) {
    for (const auto& o : K::all(tx))
      out.push_back(K::shown(*o));
    return 0;
  });
  std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) {
    return a.spec().annotations().name() < b.spec().annotations().name();
  });
  return out;
}

template <class K>
std::expected<typename K::Object, Status> get_object(store::Store& st, const std::string& id) {
  if (id.empty()) return std::unexpected(invalid(std::string(K::noun) + " ID must be provided"));
  auto o = st.view([&](const store::ReadTx& tx) { return find_object<K>(tx, id); });
  if (!o) return std::unexpected(object_not_found<K>(id));
  return K::shown(*o);
}

template <class K>
std::expected<typename K::Object, Status> relabel_object(
    store::Store& st, const std::string& id,
    const google::protobuf::Map<std::string, std::string>& labels, std::string& name,
    const std::function<void(typename K::Object&)>& also = {}) {
  if (id.empty()) return std::unexpected(invalid(std::string(K::noun) + " ID must be provided"));
  if (auto bad = check_labels(labels)) return std::unexpected(*bad);
  typename K::Object updated;
  auto s = st.update([&](store::WriteTx& tx) {
    auto o = find_object<K>(tx, id);
    if (!o) return object_not_found<K>(id);
    typename K::Object copy = *o;
    *copy.mutable_spec()->mutable_annotations()->mutable_labels() = labels;
    if (also) also(copy);
    name = copy.spec().annotations().name();
    if (auto r = tx.update(copy); !r.is_ok()) return r;
    updated = *K::get(tx, copy.id());
    return Status::ok();
  });
  if (!s.is_ok()) return std::unexpected(s);
  return K::shown(std::move(updated));
}

// FAILED_PRECONDITION naming the tasks that use an object (ok when none do).
Status in_use_by(const char* noun, const std::string& name, std::vector<std::string> users) {
  if (users.empty()) return Status::ok();
  std::sort(users.begin(), users.end());
  std::string list;
  for (const auto& u : users)
    list += (list.empty() ? "" : ", ") + u;
  return Status(StatusCode::failed_precondition, std::string(noun) + " '" + name +
                                                     "' is in use by the following task" +
                                                     (users.size() > 1 ? "s" : "") + ": " + list);
}

template <class K>
Status remove_object(store::Store& st, const std::string& id, std::string& name) {
  if (id.empty()) return invalid(std::string(K::noun) + " ID must be provided");
  return st.update([&](store::WriteTx& tx) {
    auto o = find_object<K>(tx, id);
    if (!o) return object_not_found<K>(id);
    name = o->spec().annotations().name();
    std::vector<std::string> users;
    for (const auto& t : tx.tasks()) {
      const auto& refs = K::refs(t->spec().container());
      if (std::any_of(refs.begin(), refs.end(),
                      [&](const auto& r) { return K::ref_id(r) == o->id(); })) {
        users.push_back(t->id());
      }
    }
    if (auto busy = in_use_by(K::noun, name, std::move(users)); !busy.is_ok()) return busy;
    return K::remove(tx, o->id());
  });
}

// A new task's references of kind K: each names an existing object by ID or by name; both are
// filled in from the object (an ID and a name that disagree are refused).
template <class K>
Status resolve_refs(const store::ReadTx& tx, api::Task& t) {
  if (!t.spec().has_container()) return Status::ok();
  for (auto& r : *K::mutable_refs(t.mutable_spec()->mutable_container())) {
    const std::string& key = K::ref_id(r).empty() ? K::ref_name(r) : K::ref_id(r);
    if (key.empty()) return invalid(std::string(K::noun) + " reference without an ID or a name");
    auto o = find_object<K>(tx, key);
    if (!o) return invalid(std::string(K::noun) + " " + key + " not found");
    const std::string& name = o->spec().annotations().name();
    if (!K::ref_id(r).empty() && !K::ref_name(r).empty() &&
        (K::ref_id(r) != o->id() || K::ref_name(r) != name)) {
      return invalid(std::string(K::noun) + " " + o->id() + " is named " + name + ", not " +
                     K::ref_name(r));
    }
    K::set_ref(r, o->id(), name);
  }
  return Status::ok();
}

// A new task's volume attachments: each names an existing volume by ID (`id`) or by name
// (`source`); the ID is filled in from the volume.
Status resolve_volumes(const store::ReadTx& tx, api::Task& t) {
  for (auto& a : *t.mutable_volumes()) {
    const std::string& key = a.id().empty() ? a.source() : a.id();
    if (key.empty()) return invalid("volume attachment without an ID or a source");
    auto v = find_object<VolumeKind>(tx, key);
    if (!v) return invalid("volume " + key + " not found");
    a.set_id(v->id());
    if (a.source().empty()) a.set_source(v->spec().annotations().name());
  }
  return Status::ok();
}

// The response whose one field is the volume `o`, or o's error.
template <class Resp>
std::expected<Resp, Status> volume_reply(std::expected<api::Volume, Status> o) {
  if (!o) return std::unexpected(o.error());
  Resp resp;
  *resp.mutable_volume() = std::move(*o);
  return resp;
}

api::VolumePublishStatus* publish_entry(api::Volume& v, const std::string& node_id) {
  for (auto& e : *v.mutable_publish_status())
    if (e.node_id() == node_id) return &e;
  return nullptr;
}

}  // namespace

ControlService::ControlService(store::Store& store, const auth::Authorizer& authorizer,
                               const AgentDirectory& agents, std::string self)
    : store_(store), authorizer_(authorizer), agents_(agents), self_(std::move(self)) {}

template <class Req, class Resp, class F>
void ControlService::add(grpc::Server& server, const char* method, F f) {
  server.add_unary<Req, Resp>(
      std::string("/") + kServiceName + "/" + method,
      [this, f, method](grpc::ServerContext& ctx,
                        const Req& req) -> asio::awaitable<std::expected<Resp, Status>> {
        // Operators are managers of this cluster; no forwarding.
        static const std::vector<std::string> managers = {auth::kManagerRole};
        auto id = authorizer_.authorize(ctx, managers, false);
        if (!id) co_return std::unexpected(id.error());
        if (gate_) {
          if (auto refused = gate_(method)) co_return std::unexpected(std::move(*refused));
        }
        const std::uint64_t before = store_.index();
        std::expected<Resp, Status> r = f(req, id->node_id + "@" + id->remote_addr);
        // A change is answered once it is on disk (docs/behaviour.md §0.5).
        if (r && store_.index() != before) {
          if (Status st = co_await store_.wait_durable(store_.index(), &ctx.cancelled());
              !st.is_ok())
            co_return std::unexpected(st);
        }
        co_return r;
      });
}

void ControlService::add_to(grpc::Server& server) {
  add<pb::ListNodesRequest, pb::ListNodesResponse>(
      server, "ListNodes", [this](const auto& r, const std::string&) { return list_nodes(r); });
  add<pb::GetNodeRequest, pb::GetNodeResponse>(
      server, "GetNode", [this](const auto& r, const std::string&) { return get_node(r); });
  add<pb::CreateNodeRequest, pb::CreateNodeResponse>(
      server, "CreateNode",
      [this](const auto& r, const std::string& w) { return create_node(r, w); });
  add<pb::UpdateNodeRequest, pb::UpdateNodeResponse>(
      server, "UpdateNode",
      [this](const auto& r, const std::string& w) { return update_node(r, w); });
  add<pb::RemoveNodeRequest, pb::RemoveNodeResponse>(
      server, "RemoveNode",
      [this](const auto& r, const std::string& w) { return remove_node(r, w); });
  add<pb::CreateTaskRequest, pb::CreateTaskResponse>(
      server, "CreateTask",
      [this](const auto& r, const std::string& w) { return create_task(r, w); });
  add<pb::ListTasksRequest, pb::ListTasksResponse>(
      server, "ListTasks", [this](const auto& r, const std::string&) { return list_tasks(r); });
  add<pb::UpdateTaskRequest, pb::UpdateTaskResponse>(
      server, "UpdateTask",
      [this](const auto& r, const std::string& w) { return update_task(r, w); });
  add<pb::RemoveTaskRequest, pb::RemoveTaskResponse>(
      server, "RemoveTask",
      [this](const auto& r, const std::string& w) { return remove_task(r, w); });
  add<pb::GetManagersRequest, pb::GetManagersResponse>(
      server, "GetManagers", [this](const auto&, const std::string&) { return get_managers(); });
  add<pb::SetManagersRequest, pb::SetManagersResponse>(
      server, "SetManagers",
      [this](const auto& r, const std::string& w) { return set_managers(r, w); });
  add<pb::GetNetworkKeysRequest, pb::GetNetworkKeysResponse>(
      server, "GetNetworkKeys",
      [this](const auto&, const std::string&) { return get_network_keys(); });
  add<pb::SetNetworkKeysRequest, pb::SetNetworkKeysResponse>(
      server, "SetNetworkKeys",
      [this](const auto& r, const std::string& w) { return set_network_keys(r, w); });
  add<pb::CreateSecretRequest, pb::CreateSecretResponse>(
      server, "CreateSecret",
      [this](const auto& r, const std::string& w) { return create_secret(r, w); });
  add<pb::ListSecretsRequest, pb::ListSecretsResponse>(
      server, "ListSecrets", [this](const auto&, const std::string&) { return list_secrets(); });
  add<pb::GetSecretRequest, pb::GetSecretResponse>(
      server, "GetSecret", [this](const auto& r, const std::string&) { return get_secret(r); });
  add<pb::UpdateSecretRequest, pb::UpdateSecretResponse>(
      server, "UpdateSecret",
      [this](const auto& r, const std::string& w) { return update_secret(r, w); });
  add<pb::RemoveSecretRequest, pb::RemoveSecretResponse>(
      server, "RemoveSecret",
      [this](const auto& r, const std::string& w) { return remove_secret(r, w); });
  add<pb::CreateConfigRequest, pb::CreateConfigResponse>(
      server, "CreateConfig",
      [this](const auto& r, const std::string& w) { return create_config(r, w); });
  add<pb::ListConfigsRequest, pb::ListConfigsResponse>(
      server, "ListConfigs", [this](const auto&, const std::string&) { return list_configs(); });
  add<pb::GetConfigRequest, pb::GetConfigResponse>(
      server, "GetConfig", [this](const auto& r, const std::string&) { return get_config(r); });
  add<pb::UpdateConfigRequest, pb::UpdateConfigResponse>(
      server, "UpdateConfig",
      [this](const auto& r, const std::string& w) { return update_config(r, w); });
  add<pb::RemoveConfigRequest, pb::RemoveConfigResponse>(
      server, "RemoveConfig",
      [this](const auto& r, const std::string& w) { return remove_config(r, w); });
  add<pb::CreateVolumeRequest, pb::CreateVolumeResponse>(
      server, "CreateVolume",
      [this](const auto& r, const std::string& w) { return create_volume(r, w); });
  add<pb::ListVolumesRequest, pb::ListVolumesResponse>(
      server, "ListVolumes", [this](const auto&, const std::string&) { return list_volumes(); });
  add<pb::GetVolumeRequest, pb::GetVolumeResponse>(
      server, "GetVolume", [this](const auto& r, const std::string&) { return get_volume(r); });
  add<pb::UpdateVolumeRequest, pb::UpdateVolumeResponse>(
      server, "UpdateVolume",
      [this](const auto& r, const std::string& w) { return update_volume(r, w); });
  add<pb::RemoveVolumeRequest, pb::RemoveVolumeResponse>(
      server, "RemoveVolume",
      [this](const auto& r, const std::string& w) { return remove_volume(r, w); });
  add<pb::PublishVolumeRequest, pb::PublishVolumeResponse>(
      server, "PublishVolume",
      [this](const auto& r, const std::string& w) { return publish_volume(r, w); });
  add<pb::UnpublishVolumeRequest, pb::UnpublishVolumeResponse>(
      server, "UnpublishVolume",
      [this](const auto& r, const std::string& w) { return unpublish_volume(r, w); });
  add<pb::GetRootCARequest, pb::GetRootCAResponse>(
      server, "GetRootCA", [this](const auto&, const std::string&) { return get_root_ca(); });
  add<pb::SetRootCARequest, pb::SetRootCAResponse>(
      server, "SetRootCA",
      [this](const auto& r, const std::string& w) { return set_root_ca(r, w); });
}

// ---- nodes -------------------------------------------------------------------------------------

pb::NodeSummary ControlService::summarize(const store::ReadTx& tx, const api::Node& n) const {
  pb::NodeSummary s;
  s.set_id(n.id());
  s.set_hostname(n.description().hostname());
  s.set_role(n.role());
  s.set_availability(n.spec().availability());
  s.set_state(n.status().state());
  s.set_status_message(n.status().message());
  s.set_addr(n.status().addr());
  if (auto v = agents_.session_of(n.id())) {
    auto* si = s.mutable_session();
    si->set_session_id(v->session_id);
    set_steady(si->mutable_registered_at(), v->registered_at);
    set_steady(si->mutable_last_heartbeat(), v->last_heartbeat);
    set_steady(si->mutable_heartbeat_deadline(), v->deadline);
    si->set_streaming(v->streaming);
  }
  s.set_tasks(tx.task_count_of_node(n.id()));
  return s;
}

std::expected<pb::ListNodesResponse, Status> ControlService::list_nodes(
    const pb::ListNodesRequest& r) {
  pb::ListNodesResponse resp;
  store_.view([&](const store::ReadTx& tx) {
    auto nodes = tx.nodes();
    std::sort(nodes.begin(), nodes.end(),
              [](const auto& a, const auto& b) { return a->id() < b->id(); });
    resp.mutable_nodes()->Reserve(static_cast<int>(nodes.size()));
    for (const auto& n : nodes) {
      if (!contains(r.states(), n->status().state()) ||
          !contains(r.availabilities(), n->spec().availability()) ||
          !contains(r.roles(), n->role())) {
        continue;
      }
      *resp.add_nodes() = summarize(tx, *n);
    }
    return 0;
  });
  return resp;
}

std::expected<pb::GetNodeResponse, Status> ControlService::get_node(const pb::GetNodeRequest& r) {
  if (r.node_id().empty()) return std::unexpected(invalid("node_id is required"));
  return store_.view([&](const store::ReadTx& tx) -> std::expected<pb::GetNodeResponse, Status> {
    auto n = tx.node(r.node_id());
    if (!n) return std::unexpected(node_not_found(r.node_id()));
    pb::GetNodeResponse resp;
    *resp.mutable_summary() = summarize(tx, *n);
    *resp.mutable_node() = *n;
    return resp;
  });
}

std::expected<pb::CreateNodeResponse, Status> ControlService::create_node(
    const pb::CreateNodeRequest& r, const std::string& who) {
  if (!valid_node_id(r.node_id())) {
    return std::unexpected(invalid("node_id must be 1 to 128 printable characters without spaces"));
  }
  if (!api::NodeSpec::Availability_IsValid(r.availability())) {
    return std::unexpected(invalid("unknown availability " + std::to_string(r.availability())));
  }
  if (!api::NodeRole_IsValid(r.role())) {
    return std::unexpected(invalid("unknown role " + std::to_string(r.role())));
  }
  if (auto bad = check_labels(r.labels())) return std::unexpected(*bad);
  // As a node SwarmKit accepted but that has not connected yet.
  api::Node n;
  n.set_id(r.node_id());
  n.mutable_spec()->set_membership(api::NodeSpec::ACCEPTED);
  n.mutable_spec()->set_desired_role(r.role());
  n.mutable_spec()->set_availability(r.availability());
  *n.mutable_spec()->mutable_annotations()->mutable_labels() = r.labels();
  n.set_role(r.role());
  n.mutable_certificate()->set_cn(r.node_id());
  n.mutable_certificate()->set_role(r.role());
  n.mutable_status()->set_state(api::NodeStatus::UNKNOWN);
  pb::CreateNodeResponse resp;
  auto st = store_.update([&](store::WriteTx& tx) {
    if (tx.node(r.node_id())) {
      return Status(StatusCode::already_exists, "node " + r.node_id() + " already exists");
    }
    if (auto s = tx.create(n); !s.is_ok()) return s;
    *resp.mutable_node() = *tx.node(r.node_id());
    return Status::ok();
  });
  if (!st.is_ok()) return std::unexpected(st);
  log::info("control: node {} created (role {}, availability {}, {} label(s)) (by {})", r.node_id(),
            api::NodeRole_Name(r.role()), api::NodeSpec::Availability_Name(r.availability()),
            r.labels_size(), who);
  return resp;
}

std::expected<pb::UpdateNodeResponse, Status> ControlService::update_node(
    const pb::UpdateNodeRequest& r, const std::string& who) {
  if (r.node_id().empty()) return std::unexpected(invalid("node_id is required"));
  if (r.has_availability() && !api::NodeSpec::Availability_IsValid(r.availability())) {
    return std::unexpected(invalid("unknown availability " + std::to_string(r.availability())));
  }
  if (r.has_role() && !api::NodeRole_IsValid(r.role())) {
    return std::unexpected(invalid("unknown role " + std::to_string(r.role())));
  }
  if (auto bad = check_labels(r.set_labels())) return std::unexpected(*bad);
  pb::UpdateNodeResponse resp;
  std::string change;
  auto st = store_.update([&](store::WriteTx& tx) {
    auto n = tx.node(r.node_id());
    if (!n) return node_not_found(r.node_id());
    api::Node copy = *n;
    if (r.has_availability() && copy.spec().availability() != r.availability()) {
      copy.mutable_spec()->set_availability(r.availability());
      change += " availability=" + api::NodeSpec::Availability_Name(r.availability());
    }
    if (r.has_role() && (copy.spec().desired_role() != r.role() || copy.role() != r.role())) {
      // No CA or raft here: the observed role follows the desired one at once.
      copy.mutable_spec()->set_desired_role(r.role());
      copy.set_role(r.role());
      change += " role=" + api::NodeRole_Name(r.role());
    }
    auto* labels = copy.mutable_spec()->mutable_annotations()->mutable_labels();
    for (const auto& [k, v] : r.set_labels()) {
      auto it = labels->find(k);
      if (it != labels->end() && it->second == v) continue;
      (*labels)[k] = v;
      change += " label " + k + "=" + v;
    }
    for (const auto& k : r.remove_labels()) {
      if (labels->erase(k) > 0) change += " label -" + k;
    }
    if (change.empty()) {
      *resp.mutable_node() = *n;
      return Status::ok();
    }
    auto s = tx.update(std::move(copy));
    if (s.is_ok()) *resp.mutable_node() = *tx.node(r.node_id());
    return s;
  });
  if (!st.is_ok()) return std::unexpected(st);
  if (!change.empty()) log::info("control: node {} updated:{} (by {})", r.node_id(), change, who);
  return resp;
}

std::expected<pb::RemoveNodeResponse, Status> ControlService::remove_node(
    const pb::RemoveNodeRequest& r, const std::string& who) {
  if (r.node_id().empty()) return std::unexpected(invalid("node_id is required"));
  if (r.node_id() == self_) {
    return std::unexpected(Status(StatusCode::failed_precondition,
                                  "node " + r.node_id() + " is this manager and can't be removed"));
  }
  auto st = store_.update([&](store::WriteTx& tx) {
    auto n = tx.node(r.node_id());
    if (!n) return node_not_found(r.node_id());
    // SwarmKit's rule and words: only a READY node needs force.
    if (n->status().state() == api::NodeStatus::READY && !r.force()) {
      return Status(StatusCode::failed_precondition,
                    "node " + r.node_id() + " is not down and can't be removed");
    }
    // As SwarmKit does, the node's certificate is refused from now on: a removed node must not
    // come back by opening another session.
    api::Cluster c = *tx.cluster();
    (*c.mutable_blacklisted_certificates())[r.node_id()];
    if (auto s = tx.update(std::move(c)); !s.is_ok()) return s;
    return tx.remove_node(r.node_id());
  });
  if (!st.is_ok()) return std::unexpected(st);
  log::info("control: node {} removed{} (by {})", r.node_id(), r.force() ? " (forced)" : "", who);
  return pb::RemoveNodeResponse{};
}

// ---- tasks -------------------------------------------------------------------------------------

std::expected<pb::CreateTaskResponse, Status> ControlService::create_task(
    const pb::CreateTaskRequest& r, const std::string& who) {
  api::Task t = r.task();
  if (t.node_id().empty()) return std::unexpected(invalid("task.node_id is required"));
  if (t.id().empty()) t.set_id(new_id());
  if (!api::TaskState_IsValid(t.desired_state()) || !api::TaskState_IsValid(t.status().state())) {
    return std::unexpected(invalid("unknown task state"));
  }
  if (t.desired_state() == api::NEW) t.set_desired_state(api::RUNNING);
  if (t.status().state() == api::NEW) t.mutable_status()->set_state(api::ASSIGNED);
  if (!t.status().has_timestamp()) {
    set_timestamp(t.mutable_status()->mutable_timestamp(), std::chrono::system_clock::now());
  }
  if (t.status().message().empty()) t.mutable_status()->set_message("assigned by dispatchctl");
  pb::CreateTaskResponse resp;
  auto st = store_.update([&](store::WriteTx& tx) {
    if (!tx.node(t.node_id())) return node_not_found(t.node_id());
    if (auto s = resolve_refs<SecretKind>(tx, t); !s.is_ok()) return s;
    if (auto s = resolve_refs<ConfigKind>(tx, t); !s.is_ok()) return s;
    if (auto s = resolve_volumes(tx, t); !s.is_ok()) return s;
    // As SwarmKit's orchestrator and scheduler do: the task is created unassigned and then
    // assigned by an update, which is what open Assignments streams watch.
    api::Task pending = t;
    pending.clear_node_id();
    pending.mutable_status()->set_state(api::PENDING);
    if (auto s = tx.create(std::move(pending)); !s.is_ok()) {
      if (s.code() == StatusCode::already_exists) {
        return Status(StatusCode::already_exists, "task " + t.id() + " already exists");
      }
      return s;
    }
    if (auto s = tx.update(t); !s.is_ok()) return s;
    *resp.mutable_task() = *tx.task(t.id());
    return Status::ok();
  });
  if (!st.is_ok()) return std::unexpected(st);
  log::info("control: task {} created on node {} (by {})", t.id(), t.node_id(), who);
  return resp;
}

std::expected<pb::ListTasksResponse, Status> ControlService::list_tasks(
    const pb::ListTasksRequest& r) {
  pb::ListTasksResponse resp;
  store_.view([&](const store::ReadTx& tx) {
    auto tasks = r.node_id().empty() ? tx.tasks() : tx.tasks_of_node(r.node_id());
    std::sort(tasks.begin(), tasks.end(),
              [](const auto& a, const auto& b) { return a->id() < b->id(); });
    for (const auto& t : tasks)
      *resp.add_tasks() = *t;
    return 0;
  });
  return resp;
}

std::expected<pb::UpdateTaskResponse, Status> ControlService::update_task(
    const pb::UpdateTaskRequest& r, const std::string& who) {
  if (r.task_id().empty()) return std::unexpected(invalid("task_id is required"));
  if ((r.has_desired_state() && !api::TaskState_IsValid(r.desired_state())) ||
      (r.has_state() && !api::TaskState_IsValid(r.state()))) {
    return std::unexpected(invalid("unknown task state"));
  }
  if (!r.has_desired_state() && !r.has_state()) {
    return std::unexpected(invalid("nothing to update: give desired_state and/or state"));
  }
  pb::UpdateTaskResponse resp;
  std::string change;
  auto st = store_.update([&](store::WriteTx& tx) {
    auto t = tx.task(r.task_id());
    if (!t) return Status(StatusCode::not_found, "task " + r.task_id() + " not found");
    api::Task copy = *t;
    if (r.has_desired_state() && r.desired_state() != t->desired_state()) {
      // SwarmKit's orchestrators only ever move a desired state forward; an agent that was told
      // to shut a task down does not start it again.
      if (r.desired_state() < t->desired_state()) {
        return Status(StatusCode::failed_precondition,
                      "task " + r.task_id() + " desired state can only move forward (it is " +
                          api::TaskState_Name(t->desired_state()) + ")");
      }
      copy.set_desired_state(r.desired_state());
      change += " desired_state=" + api::TaskState_Name(r.desired_state());
    }
    if (r.has_state()) {
      auto* status = copy.mutable_status();
      status->set_state(r.state());
      status->set_message(r.message().empty() ? "set by an operator" : r.message());
      status->clear_err();
      set_timestamp(status->mutable_timestamp(), std::chrono::system_clock::now());
      change += " state=" + api::TaskState_Name(r.state());
    }
    if (change.empty()) {
      *resp.mutable_task() = *t;
      return Status::ok();
    }
    if (auto s = tx.update(std::move(copy)); !s.is_ok()) return s;
    *resp.mutable_task() = *tx.task(r.task_id());
    return Status::ok();
  });
  if (!st.is_ok()) return std::unexpected(st);
  if (!change.empty()) log::info("control: task {} updated:{} (by {})", r.task_id(), change, who);
  return resp;
}

std::expected<pb::RemoveTaskResponse, Status> ControlService::remove_task(
    const pb::RemoveTaskRequest& r, const std::string& who) {
  if (r.task_id().empty()) return std::unexpected(invalid("task_id is required"));
  auto st = store_.update([&](store::WriteTx& tx) {
    if (!tx.task(r.task_id()))
      return Status(StatusCode::not_found, "task " + r.task_id() + " not found");
    return tx.remove_task(r.task_id());
  });
  if (!st.is_ok()) return std::unexpected(st);
  log::info("control: task {} removed (by {})", r.task_id(), who);
  return pb::RemoveTaskResponse{};
}

// ---- cluster -----------------------------------------------------------------------------------

std::expected<pb::GetManagersResponse, Status> ControlService::get_managers() {
  pb::GetManagersResponse resp;
  store_.view([&](const store::ReadTx& tx) {
    for (const auto& m : tx.managers())
      *resp.add_managers() = m;
    return 0;
  });
  return resp;
}

std::expected<pb::SetManagersResponse, Status> ControlService::set_managers(
    const pb::SetManagersRequest& r, const std::string& who) {
  if (r.managers().empty()) {
    return std::unexpected(
        invalid("the manager list must not be empty: agents would have "
                "nowhere to go"));
  }
  store::ManagerList list;
  std::string names;
  for (const auto& m : r.managers()) {
    if (m.peer().node_id().empty() || m.peer().addr().empty()) {
      return std::unexpected(invalid("every manager needs a node_id and an addr"));
    }
    if (m.weight() < 0) return std::unexpected(invalid("manager weights must not be negative"));
    list.push_back(m);
    names += " " + m.peer().node_id() + "=" + m.peer().addr();
  }
  store_.update([&](store::WriteTx& tx) {
    tx.set_managers(std::move(list));
    return Status::ok();
  });
  log::info("control: manager list set to{} (by {})", names, who);
  return pb::SetManagersResponse{};
}

std::expected<pb::GetNetworkKeysResponse, Status> ControlService::get_network_keys() {
  pb::GetNetworkKeysResponse resp;
  auto c = store_.view([](const store::ReadTx& tx) { return tx.cluster(); });
  *resp.mutable_keys() = c->network_bootstrap_keys();
  return resp;
}

std::expected<pb::SetNetworkKeysResponse, Status> ControlService::set_network_keys(
    const pb::SetNetworkKeysRequest& r, const std::string& who) {
  for (const auto& k : r.keys()) {
    if (k.subsystem().empty() || k.key().empty()) {
      return std::unexpected(invalid("every key needs a subsystem and key bytes"));
    }
    if (!api::EncryptionKey::Algorithm_IsValid(k.algorithm())) {
      return std::unexpected(invalid("unknown key algorithm"));
    }
  }
  auto st = store_.update([&](store::WriteTx& tx) {
    api::Cluster c = *tx.cluster();
    *c.mutable_network_bootstrap_keys() = r.keys();
    return tx.update(std::move(c));
  });
  if (!st.is_ok()) return std::unexpected(st);
  log::info("control: {} network bootstrap key(s) set (by {})", r.keys_size(), who);
  return pb::SetNetworkKeysResponse{};
}

// ---- secrets and configs -----------------------------------------------------------------------

std::expected<pb::CreateSecretResponse, Status> ControlService::create_secret(
    const pb::CreateSecretRequest& r, const std::string& who) {
  auto o = create_object<SecretKind>(store_, r.spec());
  if (!o) return std::unexpected(o.error());
  log::info("control: secret {} created as {} ({} bytes) (by {})", o->spec().annotations().name(),
            o->id(), r.spec().data().size(), who);
  pb::CreateSecretResponse resp;
  *resp.mutable_secret() = std::move(*o);
  return resp;
}

std::expected<pb::ListSecretsResponse, Status> ControlService::list_secrets() {
  pb::ListSecretsResponse resp;
  for (auto& o : list_objects<SecretKind>(store_))
    *resp.add_secrets() = std::move(o);
  return resp;
}

std::expected<pb::GetSecretResponse, Status> ControlService::get_secret(
    const pb::GetSecretRequest& r) {
  auto o = get_object<SecretKind>(store_, r.secret_id());
  if (!o) return std::unexpected(o.error());
  pb::GetSecretResponse resp;
  *resp.mutable_secret() = std::move(*o);
  return resp;
}

std::expected<pb::UpdateSecretResponse, Status> ControlService::update_secret(
    const pb::UpdateSecretRequest& r, const std::string& who) {
  std::string name;
  auto o = relabel_object<SecretKind>(store_, r.secret_id(), r.labels(), name);
  if (!o) return std::unexpected(o.error());
  log::info("control: secret {} labels set ({}) (by {})", name, r.labels_size(), who);
  pb::UpdateSecretResponse resp;
  *resp.mutable_secret() = std::move(*o);
  return resp;
}

std::expected<pb::RemoveSecretResponse, Status> ControlService::remove_secret(
    const pb::RemoveSecretRequest& r, const std::string& who) {
  std::string name;
  if (auto st = remove_object<SecretKind>(store_, r.secret_id(), name); !st.is_ok()) {
    return std::unexpected(st);
  }
  log::info("control: secret {} removed (by {})", name, who);
  return pb::RemoveSecretResponse{};
}

std::expected<pb::CreateConfigResponse, Status> ControlService::create_config(
    const pb::CreateConfigRequest& r, const std::string& who) {
  auto o = create_object<ConfigKind>(store_, r.spec());
  if (!o) return std::unexpected(o.error());
  log::info("control: config {} created as {} ({} bytes) (by {})", o->spec().annotations().name(),
            o->id(), r.spec().data().size(), who);
  pb::CreateConfigResponse resp;
  *resp.mutable_config() = std::move(*o);
  return resp;
}

std::expected<pb::ListConfigsResponse, Status> ControlService::list_configs() {
  pb::ListConfigsResponse resp;
  for (auto& o : list_objects<ConfigKind>(store_))
    *resp.add_configs() = std::move(o);
  return resp;
}

std::expected<pb::GetConfigResponse, Status> ControlService::get_config(
    const pb::GetConfigRequest& r) {
  auto o = get_object<ConfigKind>(store_, r.config_id());
  if (!o) return std::unexpected(o.error());
  pb::GetConfigResponse resp;
  *resp.mutable_config() = std::move(*o);
  return resp;
}

std::expected<pb::UpdateConfigResponse, Status> ControlService::update_config(
    const pb::UpdateConfigRequest& r, const std::string& who) {
  std::string name;
  auto o = relabel_object<ConfigKind>(store_, r.config_id(), r.labels(), name);
  if (!o) return std::unexpected(o.error());
  log::info("control: config {} labels set ({}) (by {})", name, r.labels_size(), who);
  pb::UpdateConfigResponse resp;
  *resp.mutable_config() = std::move(*o);
  return resp;
}

std::expected<pb::RemoveConfigResponse, Status> ControlService::remove_config(
    const pb::RemoveConfigRequest& r, const std::string& who) {
  std::string name;
  if (auto st = remove_object<ConfigKind>(store_, r.config_id(), name); !st.is_ok()) {
    return std::unexpected(st);
  }
  log::info("control: config {} removed (by {})", name, who);
  return pb::RemoveConfigResponse{};
}

// ---- volumes -----------------------------------------------------------------------------------

std::expected<pb::CreateVolumeResponse, Status> ControlService::create_volume(
    const pb::CreateVolumeRequest& r, const std::string& who) {
  api::Volume base;
  *base.mutable_volume_info() = r.volume_info();
  auto o = create_object<VolumeKind>(store_, r.spec(), base);
  if (o) {
    log::info("control: volume {} created as {} (driver {}) (by {})",
              o->spec().annotations().name(), o->id(), o->spec().driver().name(), who);
  }
  return volume_reply<pb::CreateVolumeResponse>(std::move(o));
}

std::expected<pb::ListVolumesResponse, Status> ControlService::list_volumes() {
  pb::ListVolumesResponse resp;
  for (auto& o : list_objects<VolumeKind>(store_))
    *resp.add_volumes() = std::move(o);
  return resp;
}

std::expected<pb::GetVolumeResponse, Status> ControlService::get_volume(
    const pb::GetVolumeRequest& r) {
  return volume_reply<pb::GetVolumeResponse>(get_object<VolumeKind>(store_, r.volume_id()));
}

// As SwarmKit's UpdateVolume: only the labels and the availability may change. The labels are
// replaced unless the request changes the availability alone.
std::expected<pb::UpdateVolumeResponse, Status> ControlService::update_volume(
    const pb::UpdateVolumeRequest& r, const std::string& who) {
  if (r.has_availability() && !api::VolumeSpec::VolumeAvailability_IsValid(r.availability())) {
    return std::unexpected(invalid("unknown volume availability"));
  }
  google::protobuf::Map<std::string, std::string> labels = r.labels();
  if (r.has_availability() && labels.empty()) {
    // Nothing runs between this view and the update: both are synchronous on the io thread.
    auto old = get_object<VolumeKind>(store_, r.volume_id());
    if (!old) return std::unexpected(old.error());
    labels = old->spec().annotations().labels();
  }
  std::string name;
  auto o = relabel_object<VolumeKind>(store_, r.volume_id(), labels, name, [&](api::Volume& v) {
    if (r.has_availability()) v.mutable_spec()->set_availability(r.availability());
  });
  if (o) log::info("control: volume {} updated (by {})", name, who);
  return volume_reply<pb::UpdateVolumeResponse>(std::move(o));
}

// Refused while a task uses the volume or a node has it published (in any publish state),
// unless forced.
std::expected<pb::RemoveVolumeResponse, Status> ControlService::remove_volume(
    const pb::RemoveVolumeRequest& r, const std::string& who) {
  if (r.volume_id().empty()) return std::unexpected(invalid("volume ID must be provided"));
  std::string name;
  auto st = store_.update([&](store::WriteTx& tx) {
    auto v = find_object<VolumeKind>(tx, r.volume_id());
    if (!v) return object_not_found<VolumeKind>(r.volume_id());
    name = v->spec().annotations().name();
    if (!r.force()) {
      std::vector<std::string> users;
      for (const auto& t : tx.tasks()) {
        if (std::any_of(t->volumes().begin(), t->volumes().end(),
                        [&](const auto& a) { return a.id() == v->id(); })) {
          users.push_back(t->id());
        }
      }
      if (auto busy = in_use_by("volume", name, std::move(users)); !busy.is_ok()) return busy;
      if (!v->publish_status().empty()) {
        return Status(StatusCode::failed_precondition,
                      "volume '" + name + "' is still published to node " +
                          v->publish_status(0).node_id() + "; unpublish it first or force");
      }
    }
    return tx.remove_volume(v->id());
  });
  if (!st.is_ok()) return std::unexpected(st);
  log::info("control: volume {} removed{} (by {})", name, r.force() ? " (forced)" : "", who);
  return pb::RemoveVolumeResponse{};
}

std::expected<pb::PublishVolumeResponse, Status> ControlService::publish_volume(
    const pb::PublishVolumeRequest& r, const std::string& who) {
  if (r.volume_id().empty()) return std::unexpected(invalid("volume ID must be provided"));
  if (r.node_id().empty()) return std::unexpected(invalid("node ID must be provided"));
  pb::PublishVolumeResponse resp;
  auto st = store_.update([&](store::WriteTx& tx) {
    auto found = find_object<VolumeKind>(tx, r.volume_id());
    if (!found) return object_not_found<VolumeKind>(r.volume_id());
    if (!tx.node(r.node_id())) return node_not_found(r.node_id());
    api::Volume v = *found;
    const std::string& name = v.spec().annotations().name();
    if (v.spec().access_mode().scope() == api::VolumeAccessMode::SINGLE_NODE) {
      for (const auto& e : v.publish_status()) {
        if (e.node_id() != r.node_id()) {
          return Status(
              StatusCode::failed_precondition,
              "volume '" + name + "' is single-node and published to node " + e.node_id());
        }
      }
    }
    auto* e = publish_entry(v, r.node_id());
    if (e && e->state() > api::VolumePublishStatus::PUBLISHED) {
      return Status(StatusCode::failed_precondition,
                    "volume '" + name + "' is being unpublished from node " + r.node_id());
    }
    if (!e) {
      e = v.add_publish_status();
      e->set_node_id(r.node_id());
    }
    e->set_state(api::VolumePublishStatus::PUBLISHED);
    *e->mutable_publish_context() = r.publish_context();
    e->clear_message();
    if (auto s = tx.update(v); !s.is_ok()) return s;
    *resp.mutable_volume() = *tx.volume(v.id());
    return Status::ok();
  });
  if (!st.is_ok()) return std::unexpected(st);
  log::info("control: volume {} published to node {} (by {})", resp.volume().id(), r.node_id(),
            who);
  return resp;
}

std::expected<pb::UnpublishVolumeResponse, Status> ControlService::unpublish_volume(
    const pb::UnpublishVolumeRequest& r, const std::string& who) {
  if (r.volume_id().empty()) return std::unexpected(invalid("volume ID must be provided"));
  if (r.node_id().empty()) return std::unexpected(invalid("node ID must be provided"));
  pb::UnpublishVolumeResponse resp;
  std::string change;
  auto st = store_.update([&](store::WriteTx& tx) {
    auto found = find_object<VolumeKind>(tx, r.volume_id());
    if (!found) return object_not_found<VolumeKind>(r.volume_id());
    api::Volume v = *found;
    auto* e = publish_entry(v, r.node_id());
    if (!e) {
      return Status(
          StatusCode::failed_precondition,
          "volume '" + v.spec().annotations().name() + "' is not published to node " + r.node_id());
    }
    switch (e->state()) {
      case api::VolumePublishStatus::PENDING_NODE_UNPUBLISH:
        change = "already waits for the node to unpublish";
        *resp.mutable_volume() = v;
        return Status::ok();
      case api::VolumePublishStatus::PENDING_UNPUBLISH: {
        // The node confirmed; the controller side is done: the entry goes.
        auto& list = *v.mutable_publish_status();
        list.erase(std::find_if(list.begin(), list.end(),
                                [&](const auto& x) { return x.node_id() == r.node_id(); }));
        change = "unpublished";
        break;
      }
      default:
        e->set_state(api::VolumePublishStatus::PENDING_NODE_UNPUBLISH);
        change = "to be unpublished by";
        break;
    }
    if (auto s = tx.update(v); !s.is_ok()) return s;
    *resp.mutable_volume() = *tx.volume(v.id());
    return Status::ok();
  });
  if (!st.is_ok()) return std::unexpected(st);
  log::info("control: volume {} {} node {} (by {})", resp.volume().id(), change, r.node_id(), who);
  return resp;
}

// ---- root CA -----------------------------------------------------------------------------------

std::expected<pb::GetRootCAResponse, Status> ControlService::get_root_ca() {
  pb::GetRootCAResponse resp;
  auto c = store_.view([](const store::ReadTx& tx) { return tx.cluster(); });
  resp.set_ca_cert_pem(c->root_ca().ca_cert());
  return resp;
}

std::expected<pb::SetRootCAResponse, Status> ControlService::set_root_ca(
    const pb::SetRootCARequest& r, const std::string& who) {
  if (auto problem = root_ca_problem(r.ca_cert_pem()); !problem.empty()) {
    return std::unexpected(invalid(problem));
  }
  bool changed = false;
  auto st = store_.update([&](store::WriteTx& tx) {
    if (tx.cluster()->root_ca().ca_cert() == r.ca_cert_pem()) return Status::ok();
    api::Cluster c = *tx.cluster();
    c.mutable_root_ca()->set_ca_cert(r.ca_cert_pem());
    changed = true;
    return tx.update(std::move(c));
  });
  if (!st.is_ok()) return std::unexpected(st);
  if (changed) {
    log::info("control: cluster root CA set ({} bytes of PEM) (by {})", r.ca_cert_pem().size(),
              who);
  }
  return pb::SetRootCAResponse{};
}

}  // namespace dispatchd::control
