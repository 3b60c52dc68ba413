#pragma once
// The operator API (proto/control.proto): reads and changes the store the Dispatcher serves
// from. Every change is one store transaction, so agents see it on their streams.

#include <expected>
#include <string>

#include "control.pb.h"
#include "dispatchd/dispatcher/dispatcher.hpp"
#include "dispatchd/grpc/server.hpp"
#include "dispatchd/store/store.hpp"

namespace dispatchd::control {

namespace pb = ::dispatchd::control::v1;

inline constexpr const char* kServiceName = "dispatchd.control.v1.Control";

class ControlService {
 public:
  ControlService(store::Store& store, dispatcher::Dispatcher& dispatcher);
  ControlService(const ControlService&) = delete;
  ControlService& operator=(const ControlService&) = delete;

  void add_to(grpc::Server& server);

  // The calls, synchronous (the store never suspends); exposed for tests.
  std::expected<pb::ListNodesResponse, grpc::Status> list_nodes(const pb::ListNodesRequest& r);
  std::expected<pb::GetNodeResponse, grpc::Status> get_node(const pb::GetNodeRequest& r);
  std::expected<pb::UpdateNodeResponse, grpc::Status> update_node(const pb::UpdateNodeRequest& r,
                                                                  const std::string& who);
  std::expected<pb::RemoveNodeResponse, grpc::Status> remove_node(const pb::RemoveNodeRequest& r,
                                                                  const std::string& who);
  std::expected<pb::CreateTaskResponse, grpc::Status> create_task(const pb::CreateTaskRequest& r,
                                                                  const std::string& who);
  std::expected<pb::ListTasksResponse, grpc::Status> list_tasks(const pb::ListTasksRequest& r);
  std::expected<pb::RemoveTaskResponse, grpc::Status> remove_task(const pb::RemoveTaskRequest& r,
                                                                  const std::string& who);
  std::expected<pb::GetManagersResponse, grpc::Status> get_managers();
  std::expected<pb::SetManagersResponse, grpc::Status> set_managers(const pb::SetManagersRequest& r,
                                                                    const std::string& who);
  std::expected<pb::GetNetworkKeysResponse, grpc::Status> get_network_keys();
  std::expected<pb::SetNetworkKeysResponse, grpc::Status> set_network_keys(
      const pb::SetNetworkKeysRequest& r, const std::string& who);

 private:
  template <class Req, class Resp, class F>
  void add(grpc::Server& server, const char* method, F f);
  pb::NodeSummary summarize(const store::ReadTx& tx, const dispatcher::api::Node& n) const;

  store::Store& store_;
  dispatcher::Dispatcher& dispatcher_;
};

}  // namespace dispatchd::control
