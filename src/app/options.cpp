#include "dispatchd/app/options.hpp"

#include <optional>

#include "dispatchd/cli/duration.hpp"
#include "dispatchd/cli/flags.hpp"

namespace dispatchd::app {

namespace {

using cli::duration_setter;
using cli::Flags;
using cli::size_setter;
using cli::string_setter;
using cli::uint_setter;

// Every flag of dispatchd, each setting its field of `o`; the defaults shown are o's.
void add_flags(Flags& flags, DaemonOptions& o) {
  flags.add("listen", "HOST:PORT", o.server.listen, "address for agents to connect to",
            string_setter(o.server.listen));
  flags.add_bool("insecure",
                 "plaintext HTTP/2 (h2c) without TLS; callers name themselves with the node-id, "
                 "node-role and node-org metadata. Nothing is authenticated: tests and benchmarks "
                 "only",
                 o.server.insecure);
  flags.add("admin-listen", "HOST:PORT", o.server.admin_listen,
            "HTTP endpoint for operators: /metrics (Prometheus), /healthz, /readyz; empty "
            "disables it",
            string_setter(o.server.admin_listen, true));
  flags.add("state-dir", "DIR", "/var/lib/dispatchd as root, else ~/.local/state/dispatchd",
            "keep the store in DIR: a write-ahead log that every acknowledged change is on "
            "before its reply, and snapshots of the whole store",
            string_setter(o.state_dir));
  flags.add_bool("in-memory",
                 "keep the store in memory only: nothing survives the process (tests and "
                 "benchmarks); wins over --state-dir",
                 o.in_memory);
  flags.add("state-sync-interval", "DURATION", "30s",
            "write a snapshot of the store this often while running (off the serving thread; "
            "only when it changed) and remove the log it covers; 0: only on stop",
            duration_setter(o.state_sync_interval, true));
  flags.add("store", "URL", "the embedded store (--state-dir)",
            "etcd://HOST:PORT[,HOST:PORT...]: keep the store in etcd and run as one of several "
            "managers; the one holding the etcd leadership runs the Dispatcher, the others "
            "forward agents' calls to it",
            [&o](std::string_view v) -> std::optional<std::string> {
              o.etcd_endpoints.clear();
              if (v.empty()) return std::nullopt;
              constexpr std::string_view scheme = "etcd://";
              if (!v.starts_with(scheme)) return "want etcd://HOST:PORT[,HOST:PORT...]";
              v.remove_prefix(scheme.size());
              while (true) {
                auto comma = v.find(',');
                auto ep = v.substr(0, comma);
                auto colon = ep.rfind(':');
                std::uint64_t port = 0;
                if (ep.empty() || colon == std::string_view::npos || colon == 0 ||
                    cli::parse_uint(ep.substr(colon + 1), 1, 65535, port)) {
                  return "\"" + std::string(ep) + "\" is not HOST:PORT";
                }
                o.etcd_endpoints.emplace_back(ep);
                if (comma == std::string_view::npos) break;
                v.remove_prefix(comma + 1);
              }
              return std::nullopt;
            });
  flags.add("etcd-prefix", "PREFIX", o.etcd_prefix,
            "keys dispatchd keeps in etcd start with this (one cluster per prefix)",
            [&o](std::string_view v) -> std::optional<std::string> {
              if (v.empty() || v.front() != '/') return "want a key prefix starting with /";
              o.etcd_prefix = std::string(v);
              if (!o.etcd_prefix.ends_with('/')) o.etcd_prefix += '/';
              return std::nullopt;
            });
  flags.add("etcd-ca", "FILE", "",
            "talk to etcd over TLS, checking its certificate against this CA bundle (PEM)",
            string_setter(o.etcd_ca));
  flags.add("etcd-cert", "FILE", "", "client certificate for etcd (PEM; with --etcd-key)",
            string_setter(o.etcd_cert));
  flags.add("etcd-key", "FILE", "", "client private key for etcd (PEM)", string_setter(o.etcd_key));
  flags.add("etcd-lease-ttl", "DURATION", "5s",
            "this manager's etcd lease: when the manager dies, the others see it leave (and a "
            "new leader takes over) within this time; whole seconds, at least 2s",
            [&o](std::string_view v) -> std::optional<std::string> {
              auto d = cli::parse_duration(v);
              if (!d) return "not a duration (write it like 300ms, 5s or 1m30s)";
              if (*d < std::chrono::seconds(2) || *d % std::chrono::seconds(1) != d->zero()) {
                return "want whole seconds, at least 2s";
              }
              o.etcd_lease_ttl = std::chrono::duration_cast<std::chrono::seconds>(*d);
              return std::nullopt;
            });
  flags.add("tls-cert", "FILE", "",
            "server certificate chain (PEM); its CN is this manager's node ID and its O the "
            "cluster organisation",
            string_setter(o.server.tls.cert));
  flags.add("tls-key", "FILE", "", "server private key (PEM)", string_setter(o.server.tls.key));
  flags.add("tls-ca", "FILE", "",
            "CA bundle (PEM) that client certificates must chain to; also sent to agents as "
            "the cluster root CA",
            string_setter(o.server.tls.ca));
  flags.add_bool("tls-openssl-records",
                 "keep OpenSSL's record layer (and its ~20 KB of state) for every connection; by "
                 "default a TLS 1.3 connection frees it after the handshake and its records are "
                 "protected by dispatchd itself (TLS 1.2 keeps OpenSSL's either way)",
                 o.server.tls.openssl_records);
  flags.add("tls-handshake-timeout", "DURATION", "10s",
            "close connections that have not finished the TLS handshake by then",
            duration_setter(o.server.tls_handshake_timeout, false));
  flags.add("advertise-addr", "HOST:PORT", "the bound --listen address",
            "manager address handed to agents in SessionMessage.managers",
            string_setter(o.advertise));
  flags.add("node-id", "ID", o.server.dispatcher.manager_node_id,
            "this manager's node ID in insecure mode (with TLS: the CN of its certificate)",
            string_setter(o.server.dispatcher.manager_node_id));
  flags.add("cluster-id", "ID", o.server.dispatcher.cluster_id,
            "cluster organisation in insecure mode (with TLS: the O of the server certificate)",
            string_setter(o.server.dispatcher.cluster_id));
  flags.add("heartbeat-period", "DURATION", "5s", "heartbeat period given to agents",
            duration_setter(o.server.dispatcher.heartbeat_period, false));
  flags.add("heartbeat-epsilon", "DURATION", "500ms",
            "random jitter added to each heartbeat period (period ± epsilon)",
            duration_setter(o.server.dispatcher.heartbeat_epsilon, true));
  flags.add("grace-multiplier", "N", std::to_string(o.server.dispatcher.grace_multiplier),
            "a node is down after period × N without a heartbeat (× 2N right after start-up)",
            uint_setter(o.server.dispatcher.grace_multiplier, 1, 1000));
  flags.add("rate-limit-period", "DURATION", "8s",
            "window in which a node may register 3 times (0 disables the limit)",
            duration_setter(o.server.dispatcher.rate_limit_period, true));
  flags.add("batch-interval", "DURATION", "100ms",
            "longest a task or node status update waits before it is written (an upper bound: "
            "group commit writes as soon as the previous write is done)",
            duration_setter(o.server.dispatcher.batch_interval, false));
  flags.add("batch-max-items", "N", std::to_string(o.server.dispatcher.batch_max_items),
            "most status updates written in one store transaction",
            uint_setter(o.server.dispatcher.batch_max_items, 1, 10000000));
  flags.add_bool("require-known-nodes",
                 "refuse sessions from nodes without a node object (SwarmKit's \"node not "
                 "found\"); by default an authorized caller's node object is created",
                 o.server.dispatcher.require_known_nodes);
  flags.add("node-down-period", "DURATION", "24h",
            "a node down this long has its assigned and running tasks marked ORPHANED",
            duration_setter(o.server.dispatcher.node_down_period, false));
  flags.add("watch-buffer", "N", std::to_string(o.server.dispatcher.watch_buffer),
            "events one stream may have waiting; past it the stream ends with UNAVAILABLE and "
            "the agent resynchronises",
            uint_setter(o.server.dispatcher.watch_buffer, 1, 100000000));
  flags.add("log-subscriber-buffer", "BYTES", "1MiB",
            "task log messages one SubscribeLogs subscriber may have waiting; past it the "
            "subscription ends with RESOURCE_EXHAUSTED, so a slow reader never holds up the "
            "agents publishing",
            size_setter(o.server.logs.subscriber_buffer, 1024, 1ull << 30));
  flags.add("max-recv-msg-size", "BYTES", "4MiB",
            "largest gRPC request message accepted (larger: RESOURCE_EXHAUSTED)",
            size_setter(o.server.grpc.max_receive_message_size, 1024, 1ull << 31));
  flags.add("max-concurrent-streams", "N", std::to_string(o.server.h2.max_concurrent_streams),
            "HTTP/2 streams (calls) one connection may have open at once",
            uint_setter(o.server.h2.max_concurrent_streams, 1, 1u << 31));
  flags.add("max-connections", "N", std::to_string(o.server.max_connections),
            "connections served at once; more are refused",
            uint_setter(o.server.max_connections, 1, 10000000));
  flags.add("max-handshakes", "N", std::to_string(o.server.max_handshakes),
            "TLS handshakes run at once past their ClientHello; more wait their turn (oldest "
            "first, newest first once the oldest waited 1s), and one stalled for 2s while others "
            "wait loses its place (0: no limit)",
            uint_setter(o.server.max_handshakes, 0, 10000000));
  flags.add("tls-handshake-threads", "N|auto", "auto",
            "threads that run the TLS handshakes' cryptography, so a reconnecting fleet is not "
            "bound by the io thread; auto: one less than the CPUs this process may run on, at "
            "most 4 (0: handshakes on the io thread)",
            [&o](std::string_view v) -> std::optional<std::string> {
              if (v == "auto") {
                o.server.tls_handshake_threads = net::default_handshake_threads();
                return std::nullopt;
              }
              std::uint64_t n = 0;
              if (auto err = cli::parse_uint(v, 0, 64, n)) return err;
              o.server.tls_handshake_threads = static_cast<unsigned>(n);
              return std::nullopt;
            });
  flags.add("drain-timeout", "DURATION", "5s",
            "on shutdown, how long in-flight calls may take after GOAWAY",
            duration_setter(o.server.h2.drain_timeout, true));
  flags.add("preface-timeout", "DURATION", "10s",
            "close connections that have not sent the HTTP/2 preface by then",
            duration_setter(o.server.h2.preface_timeout, false));
  flags.add("keepalive-time", "DURATION", "2m",
            "PING a connection that has sent nothing for this long (0 disables keepalive)",
            duration_setter(o.server.h2.keepalive_time, true));
  flags.add("keepalive-timeout", "DURATION", "20s",
            "close a connection that does not answer a keepalive PING within this time",
            duration_setter(o.server.h2.keepalive_timeout, false));
  flags.add("write-stall-timeout", "DURATION", "1m",
            "close a connection whose peer accepts no data for this long while data waits "
            "(a peer that stopped reading, or holds its flow-control window at zero)",
            duration_setter(o.server.h2.write_stall_timeout, false));
  flags.add("log-level", "LEVEL", "info", "debug, info, warn, error or off",
            [&o](std::string_view v) -> std::optional<std::string> {
              if (!log::parse_level(v, o.log_level)) return "want debug, info, warn, error or off";
              return std::nullopt;
            });
  flags.add("log-format", "FORMAT", "text", "text or json",
            [&o](std::string_view v) -> std::optional<std::string> {
              if (v != "text" && v != "json") return "want text or json";
              o.log_format = v == "json" ? log::Format::json : log::Format::text;
              return std::nullopt;
            });
  flags.add("log-buffer", "BYTES", "1MiB",
            "log lines wait here for stderr, written by a thread of their own so that a stderr "
            "nobody reads never stalls the server; lines that do not fit are dropped and counted "
            "(0: write each line to stderr at once, blocking)",
            size_setter(o.log_buffer, 0, 1ull << 30));
}

constexpr std::string_view kSummary =
    "Serves docker.swarmkit.v1.Dispatcher to SwarmKit agents over HTTP/2 "
    "gRPC, with grpc.health.v1.Health, server reflection and the "
    "dispatchd.control.v1.Control operator API (see dispatchctl).\n\n"
    "Every flag can also be set from the environment: --foo-bar from "
    "DISPATCHD_FOO_BAR. Flags on the command line win.";

// Values that are fine alone but not together; returns the first complaint.
std::optional<std::string> check(const DaemonOptions& d) {
  const Options& o = d.server;
  if (o.dispatcher.heartbeat_epsilon >= o.dispatcher.heartbeat_period) {
    return "--heartbeat-epsilon (" + cli::format_duration(o.dispatcher.heartbeat_epsilon) +
           ") must be smaller than --heartbeat-period (" +
           cli::format_duration(o.dispatcher.heartbeat_period) + ")";
  }
  if (!o.admin_listen.empty() && o.admin_listen == o.listen) {
    return "--admin-listen and --listen are both " + o.listen +
           ": the admin endpoint needs its own port";
  }
  if (o.insecure && (!o.tls.cert.empty() || !o.tls.key.empty() || !o.tls.ca.empty())) {
    return "--insecure turns TLS off but --tls-cert/--tls-key/--tls-ca were given: choose one";
  }
  if (o.insecure && o.tls.openssl_records) {
    return "--tls-openssl-records has no effect with --insecure (no TLS): choose one";
  }
  if (!d.etcd_endpoints.empty() && (d.in_memory || !d.state_dir.empty())) {
    return std::string(d.in_memory ? "--in-memory" : "--state-dir") +
           " has no effect with --store etcd://... (etcd holds the store): choose one";
  }
  if (d.etcd_endpoints.empty() && (!d.etcd_ca.empty() || !d.etcd_cert.empty())) {
    return "--etcd-ca/--etcd-cert need --store etcd://...";
  }
  if (d.etcd_cert.empty() != d.etcd_key.empty()) {
    return "--etcd-cert and --etcd-key go together";
  }
  if (!d.etcd_cert.empty() && d.etcd_ca.empty()) {
    return "--etcd-cert needs --etcd-ca (a client certificate is sent over TLS only)";
  }
  if (o.h2.keepalive_time.count() > 0 && o.h2.keepalive_timeout >= o.h2.keepalive_time) {
    return "--keepalive-timeout must be shorter than --keepalive-time";
  }
  return std::nullopt;
}

}  // namespace

std::expected<CommandLine, std::string> parse_command_line(std::span<const std::string_view> args,
                                                           std::span<const std::string_view> env) {
  CommandLine out;
  Flags flags;
  add_flags(flags, out.options);
  if (auto err = flags.parse_env(env, "DISPATCHD", out.options.unknown_env)) {
    return std::unexpected(std::move(*err));
  }
  if (auto err = flags.parse(args, out.help)) return std::unexpected(std::move(*err));
  if (out.help) return out;
  if (auto err = check(out.options)) return std::unexpected(std::move(*err));
  return out;
}

std::string help_text() {
  DaemonOptions defaults;
  Flags flags;
  add_flags(flags, defaults);
  return flags.usage("dispatchd", kSummary);
}

}  // namespace dispatchd::app
