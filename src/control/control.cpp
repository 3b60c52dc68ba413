#include "dispatchd/control/control.hpp"

#include <google/protobuf/util/time_util.h>

#include <algorithm>
#include <chrono>

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

template <class T>
bool contains(const google::protobuf::RepeatedField<int>& list, T v) {
  return list.empty() || std::find(list.begin(), list.end(), static_cast<int>(v)) != list.end();
}

}  // namespace

ControlService::ControlService(store::Store& store, const auth::Authorizer& authorizer,
                               const AgentDirectory& agents, std::string self)
    : store_(store), authorizer_(authorizer), agents_(agents), self_(std::move(self)) {}

template <class Req, class Resp, class F>
void ControlService::add(grpc::Server& server, const char* method, F f) {
  server.add_unary<Req, Resp>(
      std::string("/") + kServiceName + "/" + method,
      [this, f](grpc::ServerContext& ctx,
                const Req& req) -> asio::awaitable<std::expected<Resp, Status>> {
        // Operators are managers of this cluster; no forwarding.
        static const std::vector<std::string> managers = {auth::kManagerRole};
        auto id = authorizer_.authorize(ctx, managers, false);
        if (!id) co_return std::unexpected(id.error());
        co_return f(req, id->node_id + "@" + id->remote_addr);
      });
}

void ControlService::add_to(grpc::Server& server) {
  add<pb::ListNodesRequest, pb::ListNodesResponse>(
      server, "ListNodes", [this](const auto& r, const std::string&) { return list_nodes(r); });
  add<pb::GetNodeRequest, pb::GetNodeResponse>(
      server, "GetNode", [this](const auto& r, const std::string&) { return get_node(r); });
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

std::expected<pb::UpdateNodeResponse, Status> ControlService::update_node(
    const pb::UpdateNodeRequest& r, const std::string& who) {
  if (r.node_id().empty()) return std::unexpected(invalid("node_id is required"));
  if (r.has_availability() && !api::NodeSpec::Availability_IsValid(r.availability())) {
    return std::unexpected(invalid("unknown availability " + std::to_string(r.availability())));
  }
  if (r.has_role() && !api::NodeRole_IsValid(r.role())) {
    return std::unexpected(invalid("unknown role " + std::to_string(r.role())));
  }
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

}  // namespace dispatchd::control
