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

// For the tests that say `using namespace dispatchd::test;`.
namespace api = ::docker::swarmkit::v1;
namespace dg = ::dispatchd::grpc;
namespace store = ::dispatchd::store;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

// Every unary call and stream of an agent gets this deadline, so that a missing answer fails
// the test instead of hanging it.
inline constexpr std::chrono::seconds kCallTimeout{20};

// A ClientContext with the identity `md` and a deadline.
std::unique_ptr<::grpc::ClientContext> context(const Metadata& md,
                                               std::chrono::seconds timeout = kCallTimeout);

// A channel to the server; `own_connection` gives it a connection of its own (grpc++ otherwise
// shares one between channels whose arguments are equal). No receive size limit.
std::shared_ptr<::grpc::Channel> channel_to(const TestServer& server, bool own_connection = false,
                                            ::grpc::ChannelArguments args = {});

// A server-streaming call (Session, Assignments, Tasks). If the test did not finish it, it is
// cancelled and finished on destruction.
template <class Msg>
struct ClientStream {
  std::unique_ptr<::grpc::ClientContext> ctx;
  std::unique_ptr<::grpc::ClientReader<Msg>> reader;
  bool finished = false;

  ClientStream() = default;
  ClientStream(const ClientStream&) = delete;
  ClientStream& operator=(const ClientStream&) = delete;
  ~ClientStream() {
    if (reader && !finished) {
      ctx->TryCancel();
      finish();
    }
  }

  bool read(Msg& m) { return reader->Read(&m); }
  // Reads what is left (kept in rest(), counted in `left`) and returns the stream's status.
  ::grpc::Status finish(int* left = nullptr) {
    Msg m;
    int n = 0;
    while (reader->Read(&m)) {
      rest_.push_back(m);
      ++n;
    }
    if (left) *left = n;
    finished = true;
    return reader->Finish();
  }
  void cancel() { ctx->TryCancel(); }
  const std::vector<Msg>& rest() const { return rest_; }

 private:
  std::vector<Msg> rest_;
};

using SessionStream = ClientStream<api::SessionMessage>;
using AssignmentsStream = ClientStream<api::AssignmentsMessage>;
using TasksStream = ClientStream<api::TasksMessage>;

// "<code> \"<message>\"", for failure messages.
std::string describe(const ::grpc::Status& st);

// An agent's connection: every Dispatcher call, each with the caller identity it is given.
class Agent {
 public:
  explicit Agent(const TestServer& server, bool own_connection = false);

  api::Dispatcher::Stub& stub() { return *stub_; }

  std::unique_ptr<SessionStream> session(const Metadata& md, const std::string& session_id = {},
                                         const api::NodeDescription* description = nullptr);
  ::grpc::Status heartbeat(const Metadata& md, const std::string& session_id,
                           api::HeartbeatResponse* out = nullptr);
  ::grpc::Status update_task_status(const Metadata& md, const api::UpdateTaskStatusRequest& req);
  ::grpc::Status update_volume_status(const Metadata& md,
                                      const api::UpdateVolumeStatusRequest& req);
  std::unique_ptr<AssignmentsStream> assignments(const Metadata& md, const std::string& session_id,
                                                 std::chrono::seconds timeout = kCallTimeout);
  std::unique_ptr<TasksStream> tasks(const Metadata& md, const std::string& session_id,
                                     std::chrono::seconds timeout = kCallTimeout);

 private:
  std::shared_ptr<::grpc::Channel> channel_;
  std::unique_ptr<api::Dispatcher::Stub> stub_;
};

// A registered node: its open Session stream and the first message.
struct Registered {
  std::unique_ptr<SessionStream> stream;
  api::SessionMessage first;
  ::grpc::Status status;  // set when the registration failed
  bool ok = false;
  const std::string& id() const { return first.session_id(); }
};

// Opens a Session as `md` and reads its first message (which carries the session ID).
Registered register_node(Agent& agent, const Metadata& md, const std::string& session_id = {},
                         const api::NodeDescription* description = nullptr);

// The same on a bare stub, for tests that make their own channels: a Session with the node's
// identity and a fresh session; a missing first message fails the test.
std::unique_ptr<Registered> open_session(api::Dispatcher::Stub& stub, const std::string& node_id,
                                         std::chrono::seconds timeout = kCallTimeout);
// With any caller metadata (a TLS client's certificate names the node; forwarded identities).
std::unique_ptr<Registered> open_session(api::Dispatcher::Stub& stub, const Metadata& md,
                                         std::chrono::seconds timeout = kCallTimeout);
std::unique_ptr<AssignmentsStream> open_assignments(api::Dispatcher::Stub& stub,
                                                    const std::string& node_id,
                                                    const std::string& session_id,
                                                    std::chrono::seconds timeout = kCallTimeout);
std::unique_ptr<TasksStream> open_tasks(api::Dispatcher::Stub& stub, const std::string& node_id,
                                        const std::string& session_id,
                                        std::chrono::seconds timeout = kCallTimeout);

api::UpdateTaskStatusRequest::TaskStatusUpdate status_update(const std::string& task_id,
                                                             api::TaskState state);

// ---- server state ----------------------------------------------------------------------------

// TestServer's default options, changed by f.
app::Options options_with(const std::function<void(app::Options&)>& f);

// An ACCEPTED node in `state`.
api::Node node_object(const std::string& id, api::NodeStatus::State state);
// A task of node_id, desired RUNNING, in `state`.
api::Task task_object(const std::string& id, const std::string& node_id, api::TaskState state);

// A store transaction on the server thread, as an operator or the orchestrator would write;
// the test fails if it does.
void write(TestServer& server, const std::function<Status(store::WriteTx&)>& f);

std::optional<api::Node> stored_node(TestServer& server, const std::string& id);
std::optional<api::Task> stored_task(TestServer& server, const std::string& id);
std::optional<api::Volume> stored_volume(TestServer& server, const std::string& id);
// The node's state (UNKNOWN when it is not in the store). On the server thread only.
api::NodeStatus::State node_state(TestServer& server, const std::string& id);

}  // namespace dispatchd::test
