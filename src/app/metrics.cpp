// /metrics: the server's state in the Prometheus text format. RPC families use the names of
// go-grpc-prometheus (grpc_server_started_total, grpc_server_handled_total,
// grpc_server_handling_seconds), so that existing gRPC dashboards work unchanged.

#include "dispatchd/metrics.hpp"

#include <array>

#include "dispatchd/app/server.hpp"

namespace dispatchd::app {

namespace {

namespace api = ::docker::swarmkit::v1;

// grpc-go's code names, as go-grpc-prometheus labels them.
constexpr std::array<const char*, 17> kCodeNames = {
    "OK",       "Canceled",       "Unknown",          "InvalidArgument",   "DeadlineExceeded",
    "NotFound", "AlreadyExists",  "PermissionDenied", "ResourceExhausted", "FailedPrecondition",
    "Aborted",  "OutOfRange",     "Unimplemented",    "Internal",          "Unavailable",
    "DataLoss", "Unauthenticated"};

void split(std::string_view path, std::string_view& service, std::string_view& method) {
  if (!path.empty() && path.front() == '/') path.remove_prefix(1);
  auto slash = path.find('/');
  service = path.substr(0, slash);
  method = slash == std::string_view::npos ? std::string_view() : path.substr(slash + 1);
}

}  // namespace

std::string Server::render_metrics() const {
  metrics::Writer w;
  auto d = [](auto v) { return static_cast<double>(v); };

  // ---- connections -------------------------------------------------------------------------
  std::uint64_t live_in = 0, live_out = 0, live_streams = 0;
  connections_.for_each([&](const h2::Connection& c) {
    live_in += c.stats().bytes_in;
    live_out += c.stats().bytes_out;
    live_streams += c.stats().streams;
  });
  w.family("dispatchd_connections", "gauge", "HTTP/2 connections open.");
  w.sample("dispatchd_connections", d(connection_count_));
  w.family("dispatchd_tls_handshakes_in_progress", "gauge", "TLS handshakes not finished yet.");
  w.sample("dispatchd_tls_handshakes_in_progress", d(handshake_count_));
  w.family("dispatchd_connections_accepted_total", "counter", "TCP connections accepted.");
  w.sample("dispatchd_connections_accepted_total", d(stats_.accepted));
  w.family("dispatchd_connections_refused_total", "counter",
           "Connections refused because --max-connections were open.");
  w.sample("dispatchd_connections_refused_total", d(stats_.refused));
  w.family("dispatchd_connections_closed_total", "counter", "HTTP/2 connections closed.");
  w.sample("dispatchd_connections_closed_total", d(stats_.closed_connections));
  w.family("dispatchd_tls_handshake_failures_total", "counter",
           "TLS handshakes that failed or timed out.");
  w.sample("dispatchd_tls_handshake_failures_total", {{"reason", "error"}},
           d(stats_.tls_handshake_failures));
  w.sample("dispatchd_tls_handshake_failures_total", {{"reason", "timeout"}},
           d(stats_.tls_handshake_timeouts));
  w.family("dispatchd_received_bytes_total", "counter",
           "Bytes received on agent connections (after TLS).");
  w.sample("dispatchd_received_bytes_total", d(stats_.closed_bytes_in + live_in));
  w.family("dispatchd_sent_bytes_total", "counter",
           "Bytes sent on agent connections (before TLS).");
  w.sample("dispatchd_sent_bytes_total", d(stats_.closed_bytes_out + live_out));
  w.family("dispatchd_streams_total", "counter", "HTTP/2 streams opened by clients.");
  w.sample("dispatchd_streams_total", d(stats_.closed_streams + live_streams));
  w.family("dispatchd_streams", "gauge", "gRPC calls in flight (open streams).");
  w.sample("dispatchd_streams", d(grpc_.active_calls()));

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
                {"grpc_code", kCodeNames[code]}},
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
  w.family("dispatchd_assignment_streams", "gauge", "Open Assignments and Tasks streams.");
  w.sample("dispatchd_assignment_streams", d(dispatcher_.open_streams()));
  w.family("dispatchd_registrations_total", "counter", "Session registrations.");
  w.sample("dispatchd_registrations_total", d(ds.registrations));
  w.family("dispatchd_registrations_rate_limited_total", "counter",
           "Registrations refused by --rate-limit-period.");
  w.sample("dispatchd_registrations_rate_limited_total", d(ds.rate_limited));
  w.family("dispatchd_heartbeat_expiries_total", "counter",
           "Nodes marked DOWN because their heartbeats stopped.");
  w.sample("dispatchd_heartbeat_expiries_total", d(ds.heartbeat_expiries));
  w.family("dispatchd_watch_overflows_total", "counter",
           "Streams ended because they fell more than --watch-buffer events behind.");
  w.sample("dispatchd_watch_overflows_total", d(ds.watch_overflows));
  w.family("dispatchd_store_flushes_total", "counter", "Batched store writes.");
  w.sample("dispatchd_store_flushes_total", d(ds.flushes));
  w.family("dispatchd_status_updates_flushed_total", "counter",
           "Task and node status updates written to the store.");
  w.sample("dispatchd_status_updates_flushed_total", {{"kind", "task"}},
           d(ds.flushed_task_updates));
  w.sample("dispatchd_status_updates_flushed_total", {{"kind", "node"}},
           d(ds.flushed_node_updates));
  w.family("dispatchd_status_updates_pending", "gauge", "Status updates waiting to be written.");
  w.sample("dispatchd_status_updates_pending", d(dispatcher_.pending_updates()));

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
    tasks = tx.tasks().size();
    return 0;
  });
  w.family("dispatchd_nodes", "gauge", "Node objects by status.");
  for (std::size_t s = 0; s < by_state.size(); ++s) {
    std::string name = api::NodeStatus::State_Name(static_cast<api::NodeStatus::State>(s));
    for (auto& ch : name)
      ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
    w.sample("dispatchd_nodes", {{"state", name}}, d(by_state[s]));
  }
  w.family("dispatchd_nodes_availability", "gauge", "Node objects by availability.");
  for (std::size_t a = 0; a < by_availability.size(); ++a) {
    std::string name =
        api::NodeSpec::Availability_Name(static_cast<api::NodeSpec::Availability>(a));
    for (auto& ch : name)
      ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
    w.sample("dispatchd_nodes_availability", {{"availability", name}}, d(by_availability[a]));
  }
  w.family("dispatchd_tasks", "gauge", "Task objects in the store.");
  w.sample("dispatchd_tasks", d(tasks));
  w.family("dispatchd_store_index", "counter", "The store's change index.");
  w.sample("dispatchd_store_index", d(store_.index()));

  w.family("dispatchd_ready", "gauge", "1 when serving and not draining (as /readyz).");
  w.sample("dispatchd_ready", ready() ? 1 : 0);
  metrics::write_process_metrics(w);
  return w.take();
}

}  // namespace dispatchd::app
