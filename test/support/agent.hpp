#pragma once
// One agent as the Dispatcher tests see it, on the real gRPC C++ client: a grpc++ channel and
// Dispatcher stub, an identity in insecure mode (metadata standing in for the certificate),
// Session streams, registration (Session plus its first message), Heartbeat, UpdateTaskStatus,
// UpdateVolumeStatus, Assignments and Tasks. And the server-side setup those tests share: the
// dispatcher's options, objects to pre-load, store writes and reads on the server thread.
//
// The real grpc++ client is the peer on purpose: our own client code must not be the only
// judge of the server.

#include <grpcpp/grpcpp.h>

#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "dispatchd/store/store.hpp"
#include "dispatcher.grpc.pb.h"
#include "support/grpc_client.hpp"
#include "support/test_server.hpp"

namespace dispatchd::test {

namespace agent_api = ::docker::swarmkit::v1;

// Every unary call and stream of an agent gets this deadline, so that a missing answer fails
// the test instead of hanging it.
inline constexpr std::chrono::seconds kCallTimeout{20};

// A ClientContext with the identity `md` and kCallTimeout.
std::unique_ptr<::grpc::ClientContext> context(const Metadata& md);

// A channel to the server; `own_connection` gives it a connection of its own (grpc++ otherwise
// shares one between channels whose arguments are equal). No receive size limit.
std::shared_ptr<::grpc::Channel> channel_to(const TestServer& server, bool own_connection = false);

// One open Session stream.
class SessionStream {
 public:
  SessionStream(agent_api::Dispatcher::Stub& stub, const Metadata& md,
                const agent_api::SessionRequest& req);

  bool read(agent_api::SessionMessage& m) { return reader_->Read(&m); }
  // Reads what is left of the stream (kept in rest()) and returns its status.
  ::grpc::Status finish();
  void cancel() { ctx_->TryCancel(); }
  const std::vector<agent_api::SessionMessage>& rest() const { return rest_; }

 private:
  std::unique_ptr<::grpc::ClientContext> ctx_;
  std::unique_ptr<::grpc::ClientReader<agent_api::SessionMessage>> reader_;
  std::vector<agent_api::SessionMessage> rest_;
};

// An agent's connection: every Dispatcher call, each with the caller identity it is given.
class Agent {
 public:
  explicit Agent(const TestServer& server, bool own_connection = false);

  agent_api::Dispatcher::Stub& stub() { return *stub_; }

  std::unique_ptr<SessionStream> session(const Metadata& md, const std::string& session_id = {},
                                         const agent_api::NodeDescription* description = nullptr);
  ::grpc::Status heartbeat(const Metadata& md, const std::string& session_id,
                           agent_api::HeartbeatResponse* out = nullptr);
  ::grpc::Status update_task_status(const Metadata& md,
                                    const agent_api::UpdateTaskStatusRequest& req);
  ::grpc::Status update_volume_status(const Metadata& md,
                                      const agent_api::UpdateVolumeStatusRequest& req);

 private:
  std::shared_ptr<::grpc::Channel> channel_;
  std::unique_ptr<agent_api::Dispatcher::Stub> stub_;
};

// A registered node: its open Session stream and the first message.
struct Registered {
  std::unique_ptr<SessionStream> stream;
  agent_api::SessionMessage first;
  ::grpc::Status status;  // set when the registration failed
  bool ok = false;
};

// Opens a Session as `md` and reads its first message (which carries the session ID).
Registered register_node(Agent& agent, const Metadata& md, const std::string& session_id = {},
                         const agent_api::NodeDescription* description = nullptr);

agent_api::UpdateTaskStatusRequest::TaskStatusUpdate status_update(const std::string& task_id,
                                                                   agent_api::TaskState state);

// ---- server state ----------------------------------------------------------------------------

// TestServer's default options, changed by f.
app::Options options_with(const std::function<void(app::Options&)>& f);

// An ACCEPTED node in `state`.
agent_api::Node node_object(const std::string& id, agent_api::NodeStatus::State state);
// A task of node_id, desired RUNNING, in `state`.
agent_api::Task task_object(const std::string& id, const std::string& node_id,
                            agent_api::TaskState state);

// A store transaction on the server thread, as an operator or the orchestrator would write;
// the test fails if it does.
void write(TestServer& server, const std::function<Status(store::WriteTx&)>& f);

std::optional<agent_api::Node> stored_node(TestServer& server, const std::string& id);
std::optional<agent_api::Task> stored_task(TestServer& server, const std::string& id);
std::optional<agent_api::Volume> stored_volume(TestServer& server, const std::string& id);
// The node's state (UNKNOWN when it is not in the store). On the server thread only.
agent_api::NodeStatus::State node_state(TestServer& server, const std::string& id);

}  // namespace dispatchd::test
