#include "dispatchd/dispatcher/dispatcher.hpp"

#include <google/protobuf/util/time_util.h>

#include "dispatchd/log.hpp"
#include "dispatcher.pb.h"

namespace dispatchd::dispatcher {

using google::protobuf::util::TimeUtil;

namespace {
// Sessions woken per turn of the io thread when the cluster's shared fields change: between two
// batches the connections write what the last batch queued, so with 100k sessions the first
// messages leave after 256 are encoded rather than after all of them (BENCHMARKS.md, issue 14:
// 256 measured a lower p99 than 1024 or 4096).
constexpr std::size_t kFanOutBatch = 256;
}  // namespace

// ---- what the calls share (services.hpp) ------------------------------------------------------

Status stopped_status() {
  return Status(StatusCode::aborted, "dispatcher is stopped");
}
Status canceled_status() {
  return Status(StatusCode::cancelled, "context canceled");
}
asio::awaitable<Status> stored(Services& s, grpc::ServerContext& ctx) {
  Status st = co_await s.store.wait_durable(s.store.index(), &ctx.cancelled());
  if (st.code() == StatusCode::cancelled) co_return canceled_status();
  co_return st;
}
Status fell_behind(const char* what, std::size_t limit) {
  return Status(StatusCode::unavailable,
                std::string("stream fell behind: more than ") + std::to_string(limit) + " " + what +
                    " events waiting (--watch-buffer); reconnect to resynchronise");
}

std::expected<auth::Identity, Status> admit(Services& s, const grpc::ServerContext& ctx,
                                            const std::string& session_id,
                                            NodeRegistry::Registration** registration) {
  if (!s.running) return std::unexpected(stopped_status());
  auto id = s.authorizer.authorize_agent(ctx);
  if (!id) return id;
  auto r = s.registry.check_session(id->node_id, session_id);
  if (!r) return std::unexpected(r.error());
  if (registration) *registration = *r;
  return id;
}

// ---- the Dispatcher --------------------------------------------------------------------------

// A removed node's session is told to disconnect.
class Dispatcher::RemovedNodes final : public store::Watcher {
 public:
  explicit RemovedNodes(NodeRegistry& r) : registry_(r) {}
  void on_event(const store::Event& e) override {
    const std::string& id = e.as<api::Node>().id();
    if (registry_.disconnect(id))
      log::info("node {} removed: its session is told to disconnect", id);
  }

 private:
  NodeRegistry& registry_;
};

Dispatcher::Dispatcher(co::TimerWheel& wheel, store::Store& store, Config config)
    : wheel_(wheel),
      store_(store),
      config_(std::move(config)),
      authorizer_(store_, config_.cluster_id),
      batcher_(wheel_.io(), store_, config_.manager_node_id, config_.batch_max_items),
      registry_(wheel_, store_, batcher_, config_),
      cluster_(store_, config_.watch_buffer,
               [this](std::chrono::nanoseconds p) { registry_.set_period(p); }),
      services_{config_,     running_, stopped_,  wheel_,   store_,
                authorizer_, batcher_, registry_, cluster_, counters_} {
  cluster_.updates().pace(wheel_.io().get_executor(), kFanOutBatch);
}

Dispatcher::~Dispatcher() = default;

void Dispatcher::set_manager_addr(std::string addr) {
  config_.manager_addr = std::move(addr);
}

DispatcherStats Dispatcher::stats() const noexcept {
  DispatcherStats s;
  s.flushes = batcher_.stats().flushes;
  s.flushed_task_updates = batcher_.stats().flushed_task_updates;
  s.flushed_node_updates = batcher_.stats().flushed_node_updates;
  s.heartbeat_expiries = registry_.stats().heartbeat_expiries;
  s.registrations = registry_.stats().registrations;
  s.rate_limited = registry_.stats().rate_limited;
  s.watch_overflows = counters_.watch_overflows;
  return s;
}

// The `default` cluster carries the configured period and the CA bundle (docs/behaviour.md
// §0.9), and the manager list names this manager at its address.
void Dispatcher::ensure_cluster_defaults() {
  store_.update([&](store::WriteTx& tx) {
    // (A cluster restored from the state directory takes the CA bundle of this start.)
    bool needs_root =
        !config_.root_ca_pem.empty() && tx.cluster()->root_ca().ca_cert() != config_.root_ca_pem;
    bool needs_period = !tx.cluster()->spec().dispatcher().has_heartbeat_period();
    if (needs_root || needs_period) {
      api::Cluster c = *tx.cluster();
      if (needs_root) c.mutable_root_ca()->set_ca_cert(config_.root_ca_pem);
      if (needs_period) {
        *c.mutable_spec()->mutable_dispatcher()->mutable_heartbeat_period() =
            TimeUtil::NanosecondsToDuration(config_.heartbeat_period.count());
      }
      tx.update(std::move(c));
    }
    // A restored list names this manager at the address it had then.
    store::ManagerList managers = tx.managers();
    bool moved = false;
    for (auto& m : managers) {
      if (m.peer().node_id() == config_.manager_node_id && !config_.manager_addr.empty() &&
          m.peer().addr() != config_.manager_addr) {
        m.mutable_peer()->set_addr(config_.manager_addr);
        moved = true;
      }
    }
    if (moved) tx.set_managers(std::move(managers));
    if (tx.managers().empty()) {
      api::WeightedPeer self;
      self.mutable_peer()->set_node_id(config_.manager_node_id);
      self.mutable_peer()->set_addr(config_.manager_addr);
      self.set_weight(10);
      tx.set_managers({self});
    }
    return Status::ok();
  });
}

void Dispatcher::start() {
  if (started_) return;
  started_ = true;
  running_ = true;
  ensure_cluster_defaults();
  registry_.mark_nodes_unknown();
  cluster_.start();
  removed_nodes_ = std::make_unique<RemovedNodes>(registry_);
  store_.watch(*removed_nodes_,
               {store::ObjectType::node, "", /*create=*/false, /*update=*/false, /*remove=*/true});
}

void Dispatcher::stop() {
  if (!running_) return;
  running_ = false;
  // Sessions send their final message, streams end; nothing acknowledged is lost
  // (docs/behaviour.md §0.4).
  stopped_.set();
  batcher_.close();
  registry_.close();
  removed_nodes_.reset();
  cluster_.stop();
}

// ---- calls -----------------------------------------------------------------------------------

void Dispatcher::add_to(grpc::Server& server) {
  Services& s = services_;
  server.add_server_streaming<api::SessionRequest, api::SessionMessage>(
      "/docker.swarmkit.v1.Dispatcher/Session",
      [&s](grpc::ServerContext& ctx, const api::SessionRequest& req,
           grpc::Writer<api::SessionMessage>& w) { return serve_session(s, ctx, req, w); });

  server.add_unary<api::HeartbeatRequest, api::HeartbeatResponse>(
      "/docker.swarmkit.v1.Dispatcher/Heartbeat",
      [&s](grpc::ServerContext& ctx, const api::HeartbeatRequest& req)
          -> asio::awaitable<std::expected<api::HeartbeatResponse, Status>> {
        NodeRegistry::Registration* rec = nullptr;
        auto id = admit(s, ctx, req.session_id(), &rec);
        if (!id) co_return std::unexpected(id.error());
        api::HeartbeatResponse resp;
        *resp.mutable_period() =
            TimeUtil::NanosecondsToDuration(s.registry.heartbeat(*rec).count());
        co_return resp;
      });

  server.add_unary<api::UpdateTaskStatusRequest, api::UpdateTaskStatusResponse>(
      "/docker.swarmkit.v1.Dispatcher/UpdateTaskStatus",
      [&s](grpc::ServerContext& ctx, const api::UpdateTaskStatusRequest& req)
          -> asio::awaitable<std::expected<api::UpdateTaskStatusResponse, Status>> {
        auto id = admit(s, ctx, req.session_id());
        if (!id) co_return std::unexpected(id.error());
        std::vector<const api::UpdateTaskStatusRequest::TaskStatusUpdate*> valid;
        bool denied = s.store.view([&](const store::ReadTx& tx) {
          for (const auto& u : req.updates()) {
            if (!u.has_status()) {
              log::debug("task status update for {} without a status: skipped", u.task_id());
              continue;
            }
            auto t = tx.task(u.task_id());
            if (!t) continue;  // deleted meanwhile: accepted silently
            if (t->node_id() != id->node_id) return true;
            valid.push_back(&u);
          }
          return false;
        });
        if (denied) {
          co_return std::unexpected(
              Status(StatusCode::permission_denied, "cannot update a task not assigned this node"));
        }
        std::uint64_t gen = s.batcher.flushed();
        for (const auto* u : valid)
          gen = s.batcher.queue_task_update(u->task_id(), u->status());
        // The reply waits for the flush that applied the updates, and for the disk
        // (docs/behaviour.md §0.5). A stop flushes too.
        if (!valid.empty()) {
          if (!co_await s.batcher.wait_flushed(gen, ctx) && s.running)
            co_return std::unexpected(canceled_status());
          if (auto st = co_await stored(s, ctx); !st.is_ok()) co_return std::unexpected(st);
        }
        co_return api::UpdateTaskStatusResponse{};
      });

  server.add_unary<api::UpdateVolumeStatusRequest, api::UpdateVolumeStatusResponse>(
      "/docker.swarmkit.v1.Dispatcher/UpdateVolumeStatus",
      [&s](grpc::ServerContext& ctx, const api::UpdateVolumeStatusRequest& req)
          -> asio::awaitable<std::expected<api::UpdateVolumeStatusResponse, Status>> {
        auto id = admit(s, ctx, req.session_id());
        if (!id) co_return std::unexpected(id.error());
        std::uint64_t gen = s.batcher.flushed();
        for (const auto& u : req.updates()) {
          if (u.unpublished()) gen = s.batcher.queue_volume_unpublish(u.id(), id->node_id);
        }
        if (gen > s.batcher.flushed()) {
          if (!co_await s.batcher.wait_flushed(gen, ctx) && s.running)
            co_return std::unexpected(canceled_status());
          if (auto st = co_await stored(s, ctx); !st.is_ok()) co_return std::unexpected(st);
        }
        co_return api::UpdateVolumeStatusResponse{};
      });

  server.add_server_streaming<api::AssignmentsRequest, api::AssignmentsMessage>(
      "/docker.swarmkit.v1.Dispatcher/Assignments",
      [&s](grpc::ServerContext& ctx, const api::AssignmentsRequest& req,
           grpc::Writer<api::AssignmentsMessage>& w) { return serve_assignments(s, ctx, req, w); });

  server.add_server_streaming<api::TasksRequest, api::TasksMessage>(
      "/docker.swarmkit.v1.Dispatcher/Tasks",
      [&s](grpc::ServerContext& ctx, const api::TasksRequest& req,
           grpc::Writer<api::TasksMessage>& w) { return serve_tasks(s, ctx, req, w); });
}

}  // namespace dispatchd::dispatcher
