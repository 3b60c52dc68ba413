// The Session stream (docs/behaviour.md §4): registration, the node object and the cluster's
// shared fields, one message per change, and the final message when the node must go.

#include <cstdint>

#include "dispatchd/co/queue.hpp"
#include "dispatchd/co/select.hpp"
#include "dispatchd/dispatcher/services.hpp"
#include "dispatchd/grpc/spliced_message.hpp"
#include "dispatchd/log.hpp"

namespace dispatchd::dispatcher {

namespace {

using Clock = std::chrono::steady_clock;

// "ip:port" → "ip" ("[v6]:port" → "v6"); empty if unparsable.
std::string host_of(const std::string& addr) {
  if (addr.empty()) return {};
  if (addr[0] == '[') {
    auto close = addr.find(']');
    return close == std::string::npos ? std::string() : addr.substr(1, close - 1);
  }
  auto colon = addr.rfind(':');
  if (colon == std::string::npos) return {};
  return addr.substr(0, colon);
}

// The session's own fields (its ID and node), encoded once per node change: a cluster change
// that reaches 100k sessions then costs each one a copy of these bytes, not a protobuf encoding
// of its node. Each message is these fields, then the cluster's shared ones by reference.
std::string encode_session_fields(const std::string& session_id, const api::Node* node) {
  grpc::SplicedMessage m;
  std::size_t node_size = node ? node->ByteSizeLong() : 0;
  m.reserve(session_id.size() + node_size + 12);  // two tags and lengths: at most 6 bytes each
  m.bytes_field(api::SessionMessage::kSessionIdFieldNumber, session_id);
  if (node) m.message_field(api::SessionMessage::kNodeFieldNumber, *node);
  return std::move(m).take_fields();
}

// A node the cluster does not know yet, as SwarmKit's CA leaves it after issuing the node's
// certificate (docs/behaviour.md §0.2).
api::Node admitted_node(const std::string& node_id, bool manager) {
  api::Node n;
  n.set_id(node_id);
  n.mutable_spec()->set_membership(api::NodeSpec::ACCEPTED);
  n.mutable_spec()->set_desired_role(manager ? api::MANAGER : api::WORKER);
  n.set_role(manager ? api::MANAGER : api::WORKER);
  n.mutable_spec()->mutable_annotations();
  n.mutable_certificate()->set_cn(node_id);
  n.mutable_certificate()->set_role(manager ? api::MANAGER : api::WORKER);
  n.mutable_certificate()->mutable_status()->set_state(api::IssuanceStatus::ISSUED);
  n.mutable_status()->set_state(api::NodeStatus::UNKNOWN);
  return n;
}

// Counts the registration's open streams for operators (Control.GetNode) while it lives.
class StreamMark {
 public:
  // `r`: the registration of (node_id, session_id), found just before.
  StreamMark(NodeRegistry& registry, NodeRegistry::Registration& r, const std::string& node_id,
             const std::string& session_id)
      : registry_(registry), node_id_(node_id), session_id_(session_id) {
    ++r.streams;
  }
  ~StreamMark() {
    if (auto rec = registry_.check_session(node_id_, session_id_); rec && (*rec)->streams)
      --(*rec)->streams;
  }
  StreamMark(const StreamMark&) = delete;
  StreamMark& operator=(const StreamMark&) = delete;

 private:
  NodeRegistry& registry_;
  const std::string& node_id_;
  const std::string& session_id_;
};

// Resumes the node's current session, or registers a new one (docs/behaviour.md §4.3); the
// session ID. A coroutine of its own: its frame (admission, the flush wait) is freed before the
// stream goes idle.
asio::awaitable<std::expected<std::string, Status>> register_or_resume(
    Services& s, grpc::ServerContext& ctx, const api::SessionRequest& req,
    const auth::Identity& id) {
  const std::string& node_id = id.node_id;
  auto mark_ready = [&]() {
    NodeUpdate u;
    api::NodeStatus st;
    st.set_state(api::NodeStatus::READY);
    st.set_addr(host_of(id.remote_addr));
    u.status = std::move(st);
    if (req.has_description()) u.description = req.description();
    s.registry.node_ready(node_id);
    return s.batcher.queue_node_update(node_id, std::move(u));
  };
  if (s.registry.check_session(node_id, req.session_id())) {
    // Stop while waiting for the flush: the client sees the dispatcher's cancellation.
    if (!co_await s.batcher.wait_flushed(mark_ready(), ctx) || !s.running)
      co_return std::unexpected(canceled_status());
    if (auto st = co_await stored(s, ctx); !st.is_ok()) co_return std::unexpected(st);
    co_return req.session_id();
  }
  if (auto st = s.registry.check_rate_limit(node_id); !st.is_ok()) co_return std::unexpected(st);
  bool exists = s.store.view([&](const store::ReadTx& tx) { return tx.node(node_id) != nullptr; });
  if (!exists) {
    if (s.config.require_known_nodes)
      co_return std::unexpected(Status(StatusCode::unknown, "node not found"));
    // Admission (docs/behaviour.md §0.2): a caller authorized for the cluster gets its node
    // object.
    bool manager = auth::has_role(id.roles, auth::kManagerRole);
    auto st = s.store.update([&](store::WriteTx& tx) {
      if (tx.node(node_id)) return Status::ok();
      return tx.create(admitted_node(node_id, manager));
    });
    if (!st.is_ok()) co_return std::unexpected(st);
    log::info("node {} admitted (role {})", node_id, manager ? "manager" : "worker");
  }
  if (!co_await s.batcher.wait_flushed(mark_ready(), ctx) || !s.running)
    co_return std::unexpected(canceled_status());
  // The node's READY status (and its admission) are on disk before the agent hears of it.
  if (auto st = co_await stored(s, ctx); !st.is_ok()) co_return std::unexpected(st);
  if (!s.running) co_return std::unexpected(canceled_status());
  co_return s.registry.register_node(node_id).session_id;
}

// Who the session is, once authorized and registered.
struct OpenSession {
  std::string node_id;
  std::string session_id;
  std::string peer;
  std::uint64_t registry_epoch = 0;  // the registry's epoch when the registration was last seen
};

// Authorization and registration, in a coroutine of their own: GCC keeps every local of a
// coroutine (and every temporary alive across a co_await) in its frame for the coroutine's whole
// life, and serve_session's frame lives as long as the stream. The caller's identity, the
// registration's result and their awaitables are freed here, before the session goes idle.
asio::awaitable<std::expected<OpenSession, Status>> open_session(Services& s,
                                                                 grpc::ServerContext& ctx,
                                                                 const api::SessionRequest& req) {
  auto id = s.authorizer.authorize_agent(ctx);
  if (!id) co_return std::unexpected(id.error());
  ctx.release_metadata();  // read by authorize_agent, not needed again
  auto registered = co_await register_or_resume(s, ctx, req, *id);
  if (!registered) co_return std::unexpected(registered.error());
  co_return OpenSession{std::move(id->node_id), std::move(*registered), std::move(id->remote_addr)};
}

// What the session's messages are made of: its own fields (encoded once per node change) and the
// cluster's shared ones.
struct SessionMessages {
  const std::string& session_id;
  grpc::Writer<api::SessionMessage>& writer;
  store::Ptr<api::Node> node;
  ClusterSnapshot cluster;
  std::string own_fields;

  asio::awaitable<bool> send() {
    return writer.write_framed(grpc::SplicedMessage::frame(own_fields, cluster.encoded));
  }
};

Status ended(const OpenSession& o, Clock::time_point started, const char* reason, Status st) {
  log::info("session ended node={} session={} peer={} reason={} duration={}ms", o.node_id,
            o.session_id, o.peer, reason,
            std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - started).count());
  return st;
}

// The registration while it is this session's, else nullptr. (A function, not check_session's
// result kept in a local: every local of serve_session is in its frame, see above.)
NodeRegistry::Registration* registration(NodeRegistry& r, const OpenSession& o) {
  auto rec = r.check_session(o.node_id, o.session_id);
  return rec ? *rec : nullptr;
}

// Why the registration is no longer this session's.
Status registration_lost(NodeRegistry& r, const OpenSession& o) {
  auto rec = r.check_session(o.node_id, o.session_id);
  return rec ? Status::ok() : rec.error();
}

// The session ends because its registration is gone (not registered) or another one's
// (superseded).
Status ended_lost(NodeRegistry& r, const OpenSession& o, Clock::time_point started) {
  Status st = registration_lost(r, o);
  return ended(o, started, st.code() == StatusCode::not_found ? "not-registered" : "superseded",
               std::move(st));
}

}  // namespace

asio::awaitable<Status> serve_session(Services& s, grpc::ServerContext& ctx,
                                      const api::SessionRequest& req,
                                      grpc::Writer<api::SessionMessage>& writer) {
  if (!s.running) co_return stopped_status();
  auto started = Clock::now();
  auto opened = co_await open_session(s, ctx, req);
  if (!opened) co_return opened.error();

  // The node's updates, subscribed together with the snapshot (one synchronous step).
  co::Wakeup wakeup;
  co::Queue<store::Ptr<api::Node>> node_updates(wakeup, s.config.watch_buffer);
  QueueWatcher node_watcher(node_updates);
  s.store.watch(node_watcher, {store::ObjectType::node, opened->node_id, false, true, false});
  SessionMessages m{opened->session_id,
                    writer,
                    s.store.view([&](const store::ReadTx& tx) { return tx.node(opened->node_id); }),
                    {},
                    {}};

  NodeRegistry::Registration* rec = registration(s.registry, *opened);
  if (!rec) co_return registration_lost(s.registry, *opened);
  opened->registry_epoch = s.registry.epoch();
  StreamMark stream_mark(s.registry, *rec, opened->node_id, opened->session_id);
  const std::shared_ptr<co::Event> disconnect_event = rec->disconnect;
  const std::shared_ptr<co::Event> superseded_event = rec->superseded;
  co::Watch<ClusterSnapshot>::Subscription cluster_updates(s.cluster.updates(), wakeup);
  m.cluster = s.cluster.current();
  co::Event::Listener cancelled(ctx.cancelled(), wakeup);
  co::Event::Listener stopped(s.stopped, wakeup);
  co::Event::Listener disconnect(*disconnect_event, wakeup);
  co::Event::Listener superseded(*superseded_event, wakeup);
  Counted open(s.counters.open_sessions);

  m.own_fields = encode_session_fields(opened->session_id, m.node.get());
  if (!co_await m.send()) co_return canceled_status();
  log::info("session started node={} session={} peer={}", opened->node_id, opened->session_id,
            opened->peer);

  for (;;) {
    // Stop and Disconnect come first: Stop also clears the registrations.
    bool must_disconnect = disconnect.ready() || stopped.ready();
    if (!must_disconnect) {
      if (s.registry.epoch() != opened->registry_epoch) {
        if (!registration(s.registry, *opened)) co_return ended_lost(s.registry, *opened, started);
        opened->registry_epoch = s.registry.epoch();
      }
      co_await co::select(wakeup, cancelled, node_updates, cluster_updates, disconnect, stopped,
                          superseded);
      must_disconnect = disconnect.ready() || stopped.ready();
    }
    if (cancelled.ready()) co_return ended(*opened, started, "client-gone", canceled_status());
    if (node_updates.overflowed()) {
      ++s.counters.watch_overflows;
      co_return ended(*opened, started, "fell-behind", fell_behind("node", s.config.watch_buffer));
    }
    if (cluster_updates.overflowed()) {
      ++s.counters.watch_overflows;
      co_return ended(*opened, started, "fell-behind",
                      fell_behind("cluster", s.config.watch_buffer));
    }
    if (must_disconnect) {
      // One final message with the latest state, then the node is sent away.
      while (!node_updates.empty())
        m.node = node_updates.pop();
      m.own_fields = encode_session_fields(opened->session_id, m.node.get());
      while (cluster_updates.has_next())
        m.cluster = cluster_updates.next();
      bool sent = co_await m.send();
      if (s.running) {
        s.registry.mark_not_ready(opened->node_id, api::NodeStatus::DISCONNECTED,
                                  "node is currently trying to find new manager");
      }
      if (!sent) co_return ended(*opened, started, "client-gone", canceled_status());
      co_return ended(*opened, started, stopped.ready() ? "dispatcher-stopped" : "disconnected",
                      Status(StatusCode::aborted, "node must disconnect"));
    }
    // One message per event, as SwarmKit sends them.
    while (!node_updates.empty()) {
      m.node = node_updates.pop();
      m.own_fields = encode_session_fields(opened->session_id, m.node.get());
      if (!co_await m.send()) co_return ended(*opened, started, "client-gone", canceled_status());
    }
    while (cluster_updates.has_next()) {
      m.cluster = cluster_updates.next();
      if (!co_await m.send()) co_return ended(*opened, started, "client-gone", canceled_status());
    }
  }
}

}  // namespace dispatchd::dispatcher
