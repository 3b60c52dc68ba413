// /metrics: the server's state in the Prometheus text format. RPC families use the names of
// go-grpc-prometheus (grpc_server_started_total, grpc_server_handled_total,
// grpc_server_handling_seconds), so that existing gRPC dashboards work unchanged.

#include "dispatchd/metrics.hpp"

#include <array>
#include <cctype>

#include "dispatchd/app/server.hpp"
#include "dispatchd/h2/frame_memory.hpp"
#include "dispatchd/log.hpp"

namespace dispatchd::app {

namespace {

namespace api = ::docker::swarmkit::v1;

void split(std::string_view path, std::string_view& service, std::string_view& method) {
  if (!path.empty() && path.front() == '/') path.remove_prefix(1);
  auto slash = path.find('/');
  service = path.substr(0, slash);
  method = slash == std::string_view::npos ? std::string_view() : path.substr(slash + 1);
}

// Label values as Prometheus users write them: enum names in lower case.
std::string lower(std::string s) {
  for (auto& ch : s)
    ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  return s;
}

}  // namespace

std::string Server::render_metrics() const {
  metrics::Writer w;
  auto d = [](auto v) { return static_cast<double>(v); };
  // A family of one unlabelled sample: its name is written once.

  // ---- connections -------------------------------------------------------------------------
  const h2::ConnectionStats totals = connection_totals();
  w.scalar("dispatchd_connections", "gauge", "HTTP/2 connections open.", d(connection_count_));
  w.scalar("dispatchd_tls_handshakes_in_progress", "gauge", "TLS handshakes not finished yet.",
           d(handshake_count_));
  w.scalar(
      "dispatchd_tls_handshake_threads", "gauge",
      "Threads running TLS handshake cryptography (--tls-handshake-threads; 0: the io thread).",
      d(handshake_pool_ ? handshake_pool_->threads() : 0));
  w.scalar("dispatchd_log_lines_dropped_total", "counter",
           "Log lines dropped because stderr did not keep up (--log-buffer full).",
           d(log::dropped_lines()));
  w.scalar("dispatchd_tls_handshakes_waiting", "gauge",
           "TLS handshakes whose ClientHello arrived, waiting for a place (--max-handshakes).",
           d(handshakes_waiting_));
  w.scalar("dispatchd_connections_accepted_total", "counter", "TCP connections accepted.",
           d(stats_.accepted));
  w.scalar("dispatchd_connections_refused_total", "counter",
           "Connections refused because --max-connections were open.", d(stats_.refused));
  w.scalar("dispatchd_connections_closed_total", "counter", "HTTP/2 connections closed.",
           d(stats_.closed_connections));
  w.scalar("dispatchd_connections_calmed_total", "counter",
           "Connections closed with GOAWAY ENHANCE_YOUR_CALM: floods of stream resets, PINGs or "
           "SETTINGS, or ACKs left unread.",
           d(stats_.calmed_connections));
  w.family("dispatchd_tls_handshake_failures_total", "counter",
           "TLS handshakes that failed or timed out.");
  w.sample("dispatchd_tls_handshake_failures_total", {{"reason", "error"}},
           d(stats_.tls_handshake_failures));
  w.sample("dispatchd_tls_handshake_failures_total", {{"reason", "timeout"}},
           d(stats_.tls_handshake_timeouts));
  w.family("dispatchd_tls_handshakes_shed_total", "counter",
           "TLS handshakes dropped unfinished by admission: the client had gone when its turn "
           "came, or it held a place past its time while others waited.");
  w.sample("dispatchd_tls_handshakes_shed_total", {{"reason", "client-gone"}},
           d(stats_.tls_handshakes_shed_gone));
  w.sample("dispatchd_tls_handshakes_shed_total", {{"reason", "slow"}},
           d(stats_.tls_handshakes_shed_slow));
  w.family("dispatchd_tls_connections_total", "counter",
           "TLS handshakes completed, by record layer: own (TLS 1.3, OpenSSL's state freed) or "
           "openssl.");
  w.sample("dispatchd_tls_connections_total", {{"records", "own"}}, d(stats_.tls_own_records));
  w.sample("dispatchd_tls_connections_total", {{"records", "openssl"}},
           d(stats_.tls_openssl_records));
  w.scalar("dispatchd_received_bytes_total", "counter",
           "Bytes received on agent connections (after TLS).", d(totals.bytes_in));
  w.scalar("dispatchd_sent_bytes_total", "counter", "Bytes sent on agent connections (before TLS).",
           d(totals.bytes_out));
  w.scalar("dispatchd_streams_total", "counter", "HTTP/2 streams opened by clients.",
           d(totals.streams));
  w.scalar("dispatchd_received_pings_total", "counter",
           "PING frames received from clients (keepalive and bandwidth probes).",
           d(totals.pings_in));
  w.scalar("dispatchd_stream_resets_at_deadline_total", "counter",
           "Streams reset by clients at the deadline they declared, unanswered because the server "
           "ran that far behind (not counted as rapid reset).",
           d(totals.resets_at_deadline));
  w.scalar("dispatchd_frame_buffer_releases_total", "counter",
           "Times the pages of a connection's HTTP/2 frame buffer went back to the kernel (the "
           "connection idle, or closed).",
           d(h2::FramePool::local().releases()));
  w.scalar("dispatchd_streams", "gauge", "gRPC calls in flight (open streams).",
           d(grpc_.active_calls()));

  // ---- RPCs --------------------------------------------------------------------------------
  w.family("grpc_server_started_total", "counter", "RPCs started on the server.");
  for (const auto& [path, st] : grpc_.all_stats()) {
    std::string_view service, method;
    split(path, service, method);
    w.sample("grpc_server_started_total",
             {{"grpc_type", st.type}, {"grpc_service", service}, {"grpc_method", method}},
             d(st.started));
  }
  w.family("grpc_server_handled_total", "counter", "RPCs completed on the server, by status code.");
  for (const auto& [path, st] : grpc_.all_stats()) {
    std::string_view service, method;
    split(path, service, method);
    for (std::size_t code = 0; code < st.by_code.size(); ++code) {
      // Every method shows OK; other codes once they have happened.
      if (code != 0 && st.by_code[code] == 0) continue;
      w.sample("grpc_server_handled_total",
               {{"grpc_type", st.type},
                {"grpc_service", service},
                {"grpc_method", method},
                {"grpc_code", grpc::status_code_name(static_cast<grpc::StatusCode>(code))}},
               d(st.by_code[code]));
    }
  }
  w.family("grpc_server_handling_seconds", "histogram",
           "Time from a call's request headers to its status (streams: their whole life).");
  for (const auto& [path, st] : grpc_.all_stats()) {
    std::string_view service, method;
    split(path, service, method);
    w.histogram("grpc_server_handling_seconds",
                {{"grpc_type", st.type}, {"grpc_service", service}, {"grpc_method", method}},
                st.latency);
  }

  // ---- dispatcher --------------------------------------------------------------------------
  const auto& ds = dispatcher_.stats();
  w.family("dispatchd_sessions", "gauge",
           "Agents by session state: registered (a live registration, heartbeating) and "
           "streaming (a Session stream open).");
  w.sample("dispatchd_sessions", {{"state", "registered"}}, d(dispatcher_.registered_nodes()));
  w.sample("dispatchd_sessions", {{"state", "streaming"}}, d(dispatcher_.open_sessions()));
  w.scalar("dispatchd_assignment_streams", "gauge", "Open Assignments and Tasks streams.",
           d(dispatcher_.open_streams()));
  w.scalar("dispatchd_registrations_total", "counter", "Session registrations.",
           d(ds.registrations));
  w.scalar("dispatchd_registrations_rate_limited_total", "counter",
           "Registrations refused by --rate-limit-period.", d(ds.rate_limited));
  w.scalar("dispatchd_heartbeat_expiries_total", "counter",
           "Nodes marked DOWN because their heartbeats stopped.", d(ds.heartbeat_expiries));
  w.scalar("dispatchd_watch_overflows_total", "counter",
           "Streams ended because they fell more than --watch-buffer events behind.",
           d(ds.watch_overflows));
  w.scalar("dispatchd_store_flushes_total", "counter", "Batched store writes.", d(ds.flushes));
  w.family("dispatchd_status_updates_flushed_total", "counter",
           "Task and node status updates written to the store.");
  w.sample("dispatchd_status_updates_flushed_total", {{"kind", "task"}},
           d(ds.flushed_task_updates));
  w.sample("dispatchd_status_updates_flushed_total", {{"kind", "node"}},
           d(ds.flushed_node_updates));
  w.scalar("dispatchd_status_updates_pending", "gauge", "Status updates waiting to be written.",
           d(dispatcher_.pending_updates()));

  // ---- task logs ---------------------------------------------------------------------------
  const auto& ls = log_broker_.stats();
  w.scalar("dispatchd_log_listeners", "gauge",
           "Open LogBroker.ListenSubscriptions streams (agents waiting for log subscriptions).",
           d(log_broker_.listeners()));
  w.scalar("dispatchd_log_subscriptions", "gauge",
           "Log subscriptions being served (SubscribeLogs).",
           d(log_broker_.active_subscriptions()));
  w.scalar("dispatchd_log_subscriptions_total", "counter", "Log subscriptions started.",
           d(ls.subscriptions));
  w.scalar("dispatchd_log_subscribers_cut_off_total", "counter",
           "Log subscriptions ended because their subscriber fell more than "
           "--log-subscriber-buffer bytes behind.",
           d(ls.subscribers_cut_off));
  w.scalar("dispatchd_log_buffered_bytes", "gauge",
           "Bytes of log messages waiting for their subscribers.", d(log_broker_.buffered_bytes()));
  w.scalar("dispatchd_log_messages_published_total", "counter",
           "Log messages agents published (PublishLogs batches accepted).",
           d(ls.messages_published));
  w.family("dispatchd_log_messages_total", "counter",
           "Published log messages by outcome: delivered to the subscriber, dropped (lost when "
           "their subscriber was cut off), discarded (the subscription had already ended).");
  w.sample("dispatchd_log_messages_total", {{"outcome", "delivered"}}, d(ls.messages_delivered));
  w.sample("dispatchd_log_messages_total", {{"outcome", "dropped"}}, d(ls.messages_dropped));
  w.sample("dispatchd_log_messages_total", {{"outcome", "discarded"}}, d(ls.messages_discarded));

  // ---- follower's proxy (issue 16) ---------------------------------------------------------
  const auto& fs = forwarder_.stats();
  w.scalar("dispatchd_forwarding", "gauge",
           "1 while this manager follows and relays agents' calls to the leader.",
           d(forwarder_.forwarding() ? 1 : 0));
  w.scalar("dispatchd_forwarded_calls", "gauge",
           "Calls being relayed to the leader or waiting for a reachable one.",
           d(forwarder_.active_calls()));
  w.scalar("dispatchd_forwarded_calls_total", "counter", "Calls relayed to the leader.",
           d(fs.calls));
  w.scalar("dispatchd_forwarder_connects_total", "counter", "Connections made to a leader.",
           d(fs.connects));
  w.scalar("dispatchd_forwarder_dial_failures_total", "counter",
           "Attempts to connect to the leader that failed.", d(fs.dial_failures));
  w.scalar("dispatchd_forwarder_retries_total", "counter",
           "Unary calls sent again after the leader's connection failed before it answered.",
           d(fs.retries));
  w.scalar("dispatchd_forwarder_redirect_loops_total", "counter",
           "Calls refused because they had been forwarded already (redirect loops).",
           d(fs.redirect_loops));

  // ---- store -------------------------------------------------------------------------------
  std::array<std::uint64_t, 4> by_state{};
  std::array<std::uint64_t, 3> by_availability{};
  std::uint64_t tasks = 0;
  store_.view([&](const store::ReadTx& tx) {
    for (const auto& n : tx.nodes()) {
      auto s = static_cast<std::size_t>(n->status().state());
      if (s < by_state.size()) ++by_state[s];
      auto a = static_cast<std::size_t>(n->spec().availability());
      if (a < by_availability.size()) ++by_availability[a];
    }
    tasks = tx.task_count();
    return 0;
  });
  w.family("dispatchd_nodes", "gauge", "Node objects by status.");
  for (std::size_t s = 0; s < by_state.size(); ++s) {
    auto name = lower(api::NodeStatus::State_Name(static_cast<api::NodeStatus::State>(s)));
    w.sample("dispatchd_nodes", {{"state", name}}, d(by_state[s]));
  }
  w.family("dispatchd_nodes_availability", "gauge", "Node objects by availability.");
  for (std::size_t a = 0; a < by_availability.size(); ++a) {
    auto name =
        lower(api::NodeSpec::Availability_Name(static_cast<api::NodeSpec::Availability>(a)));
    w.sample("dispatchd_nodes_availability", {{"availability", name}}, d(by_availability[a]));
  }
  w.scalar("dispatchd_tasks", "gauge", "Task objects in the store.", d(tasks));
  w.scalar("dispatchd_store_index", "counter", "The store's change index.", d(store_.index()));
  w.scalar("dispatchd_store_durable_index", "counter",
           "The store index up to which every change is on disk (equal to the index when the "
           "store is in memory only).",
           d(store_.durable_index()));
  for (const auto& f : extra_metrics_)
    f(w);

  w.scalar("dispatchd_ready", "gauge", "1 when serving and not draining (as /readyz).",
           ready() ? 1 : 0);
  metrics::write_process_metrics(w);
  return w.take();
}

}  // namespace dispatchd::app
