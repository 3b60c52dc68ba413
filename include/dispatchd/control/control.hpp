#pragma once
// The operator API (proto/control.proto): reads and changes the store the Dispatcher serves
// from. Every change is one store transaction, so agents see it on their streams.

#include <chrono>
#include <expected>
#include <functional>
#include <optional>
#include <string>
#include <string_view>

#include "control.pb.h"
#include "dispatchd/auth/authorizer.hpp"
#include "dispatchd/grpc/server.hpp"
#include "dispatchd/store/store.hpp"

namespace dispatchd::control {

namespace pb = ::dispatchd::control::v1;
namespace api = ::docker::swarmkit::v1;

// What Control shows of a registered agent (the Dispatcher's registry knows it; the app wires
// an AgentDirectory to it, so that Control does not depend on the Dispatcher).
struct AgentSession {
  std::string session_id;
  std::chrono::steady_clock::time_point registered_at;
  std::chrono::steady_clock::time_point last_heartbeat;
  std::chrono::steady_clock::time_point deadline;  // DOWN without a heartbeat by then
  bool streaming = false;                          // a Session stream is open
};

class AgentDirectory {
 public:
  virtual ~AgentDirectory() = default;
  // The node's registration, if it has one.
  virtual std::optional<AgentSession> session_of(const std::string& node_id) const = 0;
};

inline constexpr const char* kServiceName = "dispatchd.control.v1.Control";

class ControlService {
 public:
  // `self`: this manager's node ID (it cannot be removed). Operators are managers of the cluster,
  // as `authorizer` checks them.
  ControlService(store::Store& store, const auth::Authorizer& authorizer,
                 const AgentDirectory& agents, std::string self);
  ControlService(const ControlService&) = delete;
  ControlService& operator=(const ControlService&) = delete;

  void add_to(grpc::Server& server);

  // The calls, synchronous (the store never suspends); exposed for tests.
  std::expected<pb::ListNodesResponse, grpc::Status> list_nodes(const pb::ListNodesRequest& r);
  std::expected<pb::GetNodeResponse, grpc::Status> get_node(const pb::GetNodeRequest& r);
  std::expected<pb::CreateNodeResponse, grpc::Status> create_node(const pb::CreateNodeRequest& r,
                                                                  const std::string& who);
  std::expected<pb::UpdateNodeResponse, grpc::Status> update_node(const pb::UpdateNodeRequest& r,
                                                                  const std::string& who);
  std::expected<pb::RemoveNodeResponse, grpc::Status> remove_node(const pb::RemoveNodeRequest& r,
                                                                  const std::string& who);
  std::expected<pb::CreateTaskResponse, grpc::Status> create_task(const pb::CreateTaskRequest& r,
                                                                  const std::string& who);
  std::expected<pb::ListTasksResponse, grpc::Status> list_tasks(const pb::ListTasksRequest& r);
  std::expected<pb::UpdateTaskResponse, grpc::Status> update_task(const pb::UpdateTaskRequest& r,
                                                                  const std::string& who);
  std::expected<pb::RemoveTaskResponse, grpc::Status> remove_task(const pb::RemoveTaskRequest& r,
                                                                  const std::string& who);
  std::expected<pb::GetManagersResponse, grpc::Status> get_managers();
  std::expected<pb::SetManagersResponse, grpc::Status> set_managers(const pb::SetManagersRequest& r,
                                                                    const std::string& who);
  std::expected<pb::GetNetworkKeysResponse, grpc::Status> get_network_keys();
  std::expected<pb::SetNetworkKeysResponse, grpc::Status> set_network_keys(
      const pb::SetNetworkKeysRequest& r, const std::string& who);
  std::expected<pb::CreateSecretResponse, grpc::Status> create_secret(
      const pb::CreateSecretRequest& r, const std::string& who);
  std::expected<pb::ListSecretsResponse, grpc::Status> list_secrets();
  std::expected<pb::GetSecretResponse, grpc::Status> get_secret(const pb::GetSecretRequest& r);
  std::expected<pb::UpdateSecretResponse, grpc::Status> update_secret(
      const pb::UpdateSecretRequest& r, const std::string& who);
  std::expected<pb::RemoveSecretResponse, grpc::Status> remove_secret(
      const pb::RemoveSecretRequest& r, const std::string& who);
  std::expected<pb::CreateConfigResponse, grpc::Status> create_config(
      const pb::CreateConfigRequest& r, const std::string& who);
  std::expected<pb::ListConfigsResponse, grpc::Status> list_configs();
  std::expected<pb::GetConfigResponse, grpc::Status> get_config(const pb::GetConfigRequest& r);
  std::expected<pb::UpdateConfigResponse, grpc::Status> update_config(
      const pb::UpdateConfigRequest& r, const std::string& who);
  std::expected<pb::RemoveConfigResponse, grpc::Status> remove_config(
      const pb::RemoveConfigRequest& r, const std::string& who);
  std::expected<pb::CreateVolumeResponse, grpc::Status> create_volume(
      const pb::CreateVolumeRequest& r, const std::string& who);
  std::expected<pb::ListVolumesResponse, grpc::Status> list_volumes();
  std::expected<pb::GetVolumeResponse, grpc::Status> get_volume(const pb::GetVolumeRequest& r);
  std::expected<pb::UpdateVolumeResponse, grpc::Status> update_volume(
      const pb::UpdateVolumeRequest& r, const std::string& who);
  std::expected<pb::RemoveVolumeResponse, grpc::Status> remove_volume(
      const pb::RemoveVolumeRequest& r, const std::string& who);
  std::expected<pb::PublishVolumeResponse, grpc::Status> publish_volume(
      const pb::PublishVolumeRequest& r, const std::string& who);
  std::expected<pb::UnpublishVolumeResponse, grpc::Status> unpublish_volume(
      const pb::UnpublishVolumeRequest& r, const std::string& who);
  std::expected<pb::GetRootCAResponse, grpc::Status> get_root_ca();
  std::expected<pb::SetRootCAResponse, grpc::Status> set_root_ca(const pb::SetRootCARequest& r,
                                                                 const std::string& who);

  // Checked after a call is authorized and before it runs, with the method's name ("ListNodes"):
  // a status refuses the call (a manager that is not the leader refuses operator calls and names
  // the leader). No gate: every call runs.
  using Gate = std::function<std::optional<grpc::Status>(std::string_view method)>;
  void set_gate(Gate gate) { gate_ = std::move(gate); }

 private:
  template <class Req, class Resp, class F>
  void add(grpc::Server& server, const char* method, F f);
  pb::NodeSummary summarize(const store::ReadTx& tx, const api::Node& n) const;

  store::Store& store_;
  const auth::Authorizer& authorizer_;
  const AgentDirectory& agents_;
  std::string self_;
  Gate gate_;
};

}  // namespace dispatchd::control
