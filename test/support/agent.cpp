#include "support/agent.hpp"

#include <gtest/gtest.h>

namespace dispatchd::test {

namespace api = ::docker::swarmkit::v1;

std::unique_ptr<::grpc::ClientContext> context(const Metadata& md, std::chrono::seconds timeout) {
  return client_context(md, timeout);
}

std::shared_ptr<::grpc::Channel> channel_to(const TestServer& server, bool own_connection,
                                            ::grpc::ChannelArguments args) {
  args.SetInt(GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH, -1);
  if (own_connection) args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  return ::grpc::CreateCustomChannel(server.address(), ::grpc::InsecureChannelCredentials(), args);
}

std::string describe(const ::grpc::Status& st) {
  return std::to_string(st.error_code()) + " \"" + st.error_message() + "\"";
}

namespace {

std::unique_ptr<SessionStream> session_stream(api::Dispatcher::Stub& stub, const Metadata& md,
                                              const api::SessionRequest& req,
                                              std::chrono::seconds timeout) {
  auto s = std::make_unique<SessionStream>();
  s->ctx = context(md, timeout);
  s->reader = stub.Session(s->ctx.get(), req);
  return s;
}

template <class Stream, class Request, class Open>
std::unique_ptr<Stream> open_stream(const Metadata& md, const std::string& session_id,
                                    std::chrono::seconds timeout, Open open) {
  auto s = std::make_unique<Stream>();
  s->ctx = context(md, timeout);
  Request req;
  req.set_session_id(session_id);
  s->reader = open(s->ctx.get(), req);
  return s;
}

std::unique_ptr<AssignmentsStream> assignments_stream(api::Dispatcher::Stub& stub,
                                                      const Metadata& md,
                                                      const std::string& session_id,
                                                      std::chrono::seconds timeout) {
  return open_stream<AssignmentsStream, api::AssignmentsRequest>(
      md, session_id, timeout, [&](::grpc::ClientContext* ctx, const api::AssignmentsRequest& req) {
        return stub.Assignments(ctx, req);
      });
}

std::unique_ptr<TasksStream> tasks_stream(api::Dispatcher::Stub& stub, const Metadata& md,
                                          const std::string& session_id,
                                          std::chrono::seconds timeout) {
  return open_stream<TasksStream, api::TasksRequest>(
      md, session_id, timeout, [&](::grpc::ClientContext* ctx, const api::TasksRequest& req) {
        return stub.Tasks(ctx, req);
      });
}

}  // namespace

Agent::Agent(const TestServer& server, bool own_connection)
    : channel_(channel_to(server, own_connection)), stub_(api::Dispatcher::NewStub(channel_)) {}

std::unique_ptr<SessionStream> Agent::session(const Metadata& md, const std::string& session_id,
                                              const api::NodeDescription* description) {
  api::SessionRequest req;
  req.set_session_id(session_id);
  if (description) *req.mutable_description() = *description;
  return session_stream(*stub_, md, req, kCallTimeout);
}

std::unique_ptr<AssignmentsStream> Agent::assignments(const Metadata& md,
                                                      const std::string& session_id,
                                                      std::chrono::seconds timeout) {
  return assignments_stream(*stub_, md, session_id, timeout);
}

std::unique_ptr<TasksStream> Agent::tasks(const Metadata& md, const std::string& session_id,
                                          std::chrono::seconds timeout) {
  return tasks_stream(*stub_, md, session_id, timeout);
}

::grpc::Status Agent::heartbeat(const Metadata& md, const std::string& session_id,
                                api::HeartbeatResponse* out) {
  auto ctx = context(md);
  api::HeartbeatRequest req;
  req.set_session_id(session_id);
  api::HeartbeatResponse resp;
  ::grpc::Status st = stub_->Heartbeat(ctx.get(), req, &resp);
  if (out) *out = resp;
  return st;
}

::grpc::Status Agent::update_task_status(const Metadata& md,
                                         const api::UpdateTaskStatusRequest& req) {
  auto ctx = context(md);
  api::UpdateTaskStatusResponse resp;
  return stub_->UpdateTaskStatus(ctx.get(), req, &resp);
}

::grpc::Status Agent::update_volume_status(const Metadata& md,
                                           const api::UpdateVolumeStatusRequest& req) {
  auto ctx = context(md);
  api::UpdateVolumeStatusResponse resp;
  return stub_->UpdateVolumeStatus(ctx.get(), req, &resp);
}

Registered register_node(Agent& agent, const Metadata& md, const std::string& session_id,
                         const api::NodeDescription* description) {
  Registered r;
  r.stream = agent.session(md, session_id, description);
  r.ok = r.stream->read(r.first);
  if (!r.ok) r.status = r.stream->finish();
  return r;
}

std::unique_ptr<Registered> open_session(api::Dispatcher::Stub& stub, const Metadata& md,
                                         std::chrono::seconds timeout) {
  auto r = std::make_unique<Registered>();
  r->stream = session_stream(stub, md, api::SessionRequest{}, timeout);
  r->ok = r->stream->read(r->first);
  if (!r->ok) {
    r->status = r->stream->finish();
    std::string who;
    for (const auto& [k, v] : md)
      who += " " + k + "=" + v;
    ADD_FAILURE() << "no first SessionMessage for" << who << ": " << describe(r->status);
  }
  return r;
}

std::unique_ptr<Registered> open_session(api::Dispatcher::Stub& stub, const std::string& node_id,
                                         std::chrono::seconds timeout) {
  return open_session(stub, as_node(node_id), timeout);
}

std::unique_ptr<AssignmentsStream> open_assignments(api::Dispatcher::Stub& stub,
                                                    const std::string& node_id,
                                                    const std::string& session_id,
                                                    std::chrono::seconds timeout) {
  return assignments_stream(stub, as_node(node_id), session_id, timeout);
}

std::unique_ptr<TasksStream> open_tasks(api::Dispatcher::Stub& stub, const std::string& node_id,
                                        const std::string& session_id,
                                        std::chrono::seconds timeout) {
  return tasks_stream(stub, as_node(node_id), session_id, timeout);
}

api::UpdateTaskStatusRequest::TaskStatusUpdate status_update(const std::string& task_id,
                                                             api::TaskState state) {
  api::UpdateTaskStatusRequest::TaskStatusUpdate u;
  u.set_task_id(task_id);
  u.mutable_status()->set_state(state);
  u.mutable_status()->set_message("reported " + api::TaskState_Name(state));
  return u;
}

app::Options options_with(const std::function<void(app::Options&)>& f) {
  auto o = TestServer::default_options();
  f(o);
  return o;
}

api::Node node_object(const std::string& id, api::NodeStatus::State state) {
  api::Node n;
  n.set_id(id);
  n.mutable_spec()->set_membership(api::NodeSpec::ACCEPTED);
  n.mutable_status()->set_state(state);
  return n;
}

api::Task task_object(const std::string& id, const std::string& node_id, api::TaskState state) {
  api::Task t;
  t.set_id(id);
  t.set_node_id(node_id);
  t.set_desired_state(api::RUNNING);
  t.mutable_status()->set_state(state);
  return t;
}

void write(TestServer& server, const std::function<Status(store::WriteTx&)>& f) {
  auto st = server.call([&] { return server.server().store().update(f); });
  ASSERT_TRUE(st.is_ok()) << st.message();
}

std::optional<api::Node> stored_node(TestServer& server, const std::string& id) {
  return server.call([&]() -> std::optional<api::Node> {
    auto n = server.server().store().view([&](const store::ReadTx& tx) { return tx.node(id); });
    if (!n) return std::nullopt;
    return *n;
  });
}

std::optional<api::Task> stored_task(TestServer& server, const std::string& id) {
  return server.call([&]() -> std::optional<api::Task> {
    auto t = server.server().store().view([&](const store::ReadTx& tx) { return tx.task(id); });
    if (!t) return std::nullopt;
    return *t;
  });
}

std::optional<api::Volume> stored_volume(TestServer& server, const std::string& id) {
  return server.call([&]() -> std::optional<api::Volume> {
    auto v = server.server().store().view([&](const store::ReadTx& tx) { return tx.volume(id); });
    if (!v) return std::nullopt;
    return *v;
  });
}

api::NodeStatus::State node_state(TestServer& server, const std::string& id) {
  auto n = server.server().store().view([&](const store::ReadTx& tx) { return tx.node(id); });
  return n ? n->status().state() : api::NodeStatus::UNKNOWN;
}

}  // namespace dispatchd::test
