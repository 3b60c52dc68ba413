#include "dispatchd/dispatcher/dispatcher.hpp"

#include "dispatchd/co/select.hpp"
#include "dispatchd/dispatcher/session_id.hpp"
#include "dispatchd/log.hpp"
#include "dispatcher.pb.h"

namespace dispatchd::dispatcher {

namespace api = ::docker::swarmkit::v1;
using grpc::Status;
using grpc::StatusCode;

namespace {
Status stopped_status() {
  return Status(StatusCode::aborted, "dispatcher is stopped");
}
Status session_invalid() {
  return Status(StatusCode::invalid_argument, "session invalid");
}
Status not_registered() {
  return Status(StatusCode::not_found, "node not registered");
}
}  // namespace

Dispatcher::Dispatcher(Config config) : config_(std::move(config)) {}

std::expected<Identity, Status> Dispatcher::identity(const grpc::ServerContext& ctx) const {
  // Insecure mode: the caller says who it is. (With TLS, the certificate says it.)
  auto node = ctx.metadata("node-id");
  if (!node || node->empty()) {
    return std::unexpected(Status(StatusCode::permission_denied,
                                  "Permission denied: no node-id metadata in request (insecure "
                                  "mode identifies callers by the node-id header)"));
  }
  Identity id;
  id.node_id = std::string(*node);
  auto role = ctx.metadata("node-role");
  id.roles.emplace_back(role && !role->empty() ? std::string(*role) : "swarm-worker");
  auto org = ctx.metadata("node-org");
  id.org = org && !org->empty() ? std::string(*org) : config_.cluster_id;
  return id;
}

std::chrono::nanoseconds Dispatcher::choose_period() {
  auto eps = config_.heartbeat_epsilon.count();
  if (eps <= 0) return config_.heartbeat_period;
  std::uniform_int_distribution<std::int64_t> d(-eps, eps - 1);
  return config_.heartbeat_period + std::chrono::nanoseconds(d(rng_));
}

void Dispatcher::stop() {
  if (!running_) return;
  running_ = false;
  stopped_.set();
}

void Dispatcher::add_to(grpc::Server& server) {
  server.add_unary<api::HeartbeatRequest, api::HeartbeatResponse>(
      "/docker.swarmkit.v1.Dispatcher/Heartbeat",
      [this](grpc::ServerContext& ctx, const api::HeartbeatRequest& req)
          -> asio::awaitable<std::expected<api::HeartbeatResponse, Status>> {
        if (!running_) co_return std::unexpected(stopped_status());
        auto id = identity(ctx);
        if (!id) co_return std::unexpected(id.error());
        auto it = nodes_.find(id->node_id);
        if (it == nodes_.end()) co_return std::unexpected(not_registered());
        if (req.session_id().empty() || req.session_id() != it->second.session_id) {
          co_return std::unexpected(session_invalid());
        }
        auto period = choose_period();
        api::HeartbeatResponse resp;
        resp.mutable_period()->set_seconds(period.count() / 1000000000);
        resp.mutable_period()->set_nanos(static_cast<std::int32_t>(period.count() % 1000000000));
        co_return resp;
      });

  server.add_server_streaming<api::SessionRequest, api::SessionMessage>(
      "/docker.swarmkit.v1.Dispatcher/Session",
      [this](grpc::ServerContext& ctx, const api::SessionRequest& req,
             grpc::Writer<api::SessionMessage>& writer) -> asio::awaitable<Status> {
        if (!running_) co_return stopped_status();
        auto id = identity(ctx);
        if (!id) co_return id.error();

        NodeRecord& rec = nodes_[id->node_id];
        if (rec.session_id.empty() || req.session_id() != rec.session_id) {
          // A new registration supersedes the node's previous session at once (spec §0.7).
          rec.superseded->set();
          rec.superseded = std::make_shared<co::Event>();
          rec.session_id = new_session_id();
        }
        const std::string session_id = rec.session_id;
        const std::shared_ptr<co::Event> superseded_event = rec.superseded;
        co::Wakeup wakeup;
        co::Event::Listener cancelled(ctx.cancelled(), wakeup);
        co::Event::Listener stopped(stopped_, wakeup);
        co::Event::Listener superseded(*superseded_event, wakeup);
        ++open_sessions_;
        struct Leave {
          std::size_t& n;
          ~Leave() { --n; }
        } leave{open_sessions_};

        api::SessionMessage msg;
        msg.set_session_id(session_id);
        api::Node* node = msg.mutable_node();
        node->set_id(id->node_id);
        *node->mutable_description() = req.description();
        node->mutable_status()->set_state(api::NodeStatus::READY);
        auto* mgr = msg.add_managers();
        mgr->mutable_peer()->set_node_id(config_.manager_node_id);
        mgr->mutable_peer()->set_addr(config_.manager_addr);
        mgr->set_weight(10);
        if (!co_await writer.write(msg))
          co_return Status(StatusCode::cancelled, "context canceled");
        log::info("session started node={} session={} peer={}", id->node_id, session_id,
                  ctx.peer());

        auto ready = co_await co::select(wakeup, cancelled, stopped, superseded);
        if (co::picked(ready, 0)) {
          log::info("session ended node={} session={} reason=client-gone", id->node_id, session_id);
          co_return Status(StatusCode::cancelled, "context canceled");
        }
        if (co::picked(ready, 2)) {
          log::info("session ended node={} session={} reason=superseded", id->node_id, session_id);
          co_return session_invalid();
        }
        // Dispatcher stop: a final message, then ABORTED.
        co_await writer.write(msg);
        log::info("session ended node={} session={} reason=dispatcher-stopped", id->node_id,
                  session_id);
        co_return Status(StatusCode::aborted, "node must disconnect");
      });
}

}  // namespace dispatchd::dispatcher
