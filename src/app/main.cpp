// dispatchd: the agent-facing Dispatcher of a SwarmKit-compatible cluster manager.

#include <unistd.h>

#include <asio/co_spawn.hpp>
#include <asio/detached.hpp>
#include <asio/io_context.hpp>
#include <asio/signal_set.hpp>
#include <asio/steady_timer.hpp>
#include <charconv>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <iterator>
#include <thread>

#include "dispatchd/app/duration.hpp"
#include "dispatchd/app/flags.hpp"
#include "dispatchd/app/server.hpp"
#include "dispatchd/app/state.hpp"
#include "dispatchd/log.hpp"
#include "dispatchd/net/tcp_transport.hpp"

namespace {

using namespace dispatchd;

template <class Rep, class Period>
app::Flags::Setter duration_setter(std::chrono::duration<Rep, Period>& target, bool allow_zero) {
  return [&target, allow_zero](std::string_view v) -> std::optional<std::string> {
    auto d = app::parse_duration(v);
    if (!d) return "not a duration (write it like 300ms, 5s or 1m30s)";
    if (d->count() < 0 || (!allow_zero && d->count() == 0)) {
      return allow_zero ? "must not be negative" : "must be positive";
    }
    target = std::chrono::duration_cast<std::chrono::duration<Rep, Period>>(*d);
    return std::nullopt;
  };
}

template <class T>
app::Flags::Setter uint_setter(T& target, std::uint64_t min, std::uint64_t max) {
  return [&target, min, max](std::string_view v) -> std::optional<std::string> {
    std::uint64_t n = 0;
    auto [p, ec] = std::from_chars(v.data(), v.data() + v.size(), n);
    if (ec != std::errc() || p != v.data() + v.size()) return "not a whole number";
    if (n < min || n > max) {
      return "must be between " + std::to_string(min) + " and " + std::to_string(max);
    }
    target = static_cast<T>(n);
    return std::nullopt;
  };
}

// Bytes: a number with an optional KiB/MiB/GiB (or K/M/G) suffix.
app::Flags::Setter size_setter(std::size_t& target, std::uint64_t min, std::uint64_t max) {
  return [&target, min, max](std::string_view v) -> std::optional<std::string> {
    std::uint64_t n = 0;
    auto [p, ec] = std::from_chars(v.data(), v.data() + v.size(), n);
    if (ec != std::errc() || p == v.data()) return "not a size (e.g. 4194304 or 4MiB)";
    std::string_view unit(p, v.data() + v.size() - p);
    std::uint64_t mult = 1;
    if (unit == "" || unit == "B") {
      mult = 1;
    } else if (unit == "KiB" || unit == "K" || unit == "k") {
      mult = 1024;
    } else if (unit == "MiB" || unit == "M") {
      mult = 1024 * 1024;
    } else if (unit == "GiB" || unit == "G") {
      mult = 1024ull * 1024 * 1024;
    } else {
      return "unknown size unit \"" + std::string(unit) + "\" (use KiB, MiB or GiB)";
    }
    n *= mult;
    if (n < min || n > max) {
      return "must be between " + std::to_string(min) + " and " + std::to_string(max) + " bytes";
    }
    target = n;
    return std::nullopt;
  };
}

app::Flags::Setter string_setter(std::string& target, bool allow_empty = false) {
  return [&target, allow_empty](std::string_view v) -> std::optional<std::string> {
    if (!allow_empty && v.empty()) return "must not be empty";
    target = v;
    return std::nullopt;
  };
}

}  // namespace

int main(int argc, char** argv) {
  // OpenSSL writes to sockets with write(2): a peer that has gone must give EPIPE, not a
  // process-killing SIGPIPE.
  std::signal(SIGPIPE, SIG_IGN);
  app::Options opt;
  std::string log_level = "info";
  std::string log_format = "text";
  std::size_t log_buffer = 1 << 20;
  std::string advertise;

  app::Flags flags;
  flags.add("listen", "HOST:PORT", opt.listen, "address for agents to connect to",
            string_setter(opt.listen));
  flags.add_bool("insecure",
                 "plaintext HTTP/2 (h2c) without TLS; callers name themselves with the node-id, "
                 "node-role and node-org metadata. Nothing is authenticated: tests and benchmarks "
                 "only",
                 opt.insecure);
  flags.add("admin-listen", "HOST:PORT", opt.admin_listen,
            "HTTP endpoint for operators: /metrics (Prometheus), /healthz, /readyz; empty "
            "disables it",
            string_setter(opt.admin_listen, true));
  std::string state_dir;
  flags.add("state-dir", "DIR", "",
            "keep the store (nodes, tasks, acknowledged status updates) in DIR across graceful "
            "restarts; empty: in memory only",
            string_setter(state_dir, true));
  std::chrono::milliseconds state_sync_interval{30000};
  flags.add("state-sync-interval", "DURATION", "30s",
            "with --state-dir, also write the store this often while running (off the serving "
            "thread; only when it changed), bounding what a crash loses; 0: only on stop",
            duration_setter(state_sync_interval, true));
  flags.add("tls-cert", "FILE", "",
            "server certificate chain (PEM); its CN is this manager's node ID and its O the "
            "cluster organisation",
            string_setter(opt.tls.cert));
  flags.add("tls-key", "FILE", "", "server private key (PEM)", string_setter(opt.tls.key));
  flags.add("tls-ca", "FILE", "",
            "CA bundle (PEM) that client certificates must chain to; also sent to agents as "
            "the cluster root CA",
            string_setter(opt.tls.ca));
  flags.add_bool("tls-openssl-records",
                 "keep OpenSSL's record layer (and its ~20 KB of state) for every connection; by "
                 "default a TLS 1.3 connection frees it after the handshake and its records are "
                 "protected by dispatchd itself (TLS 1.2 keeps OpenSSL's either way)",
                 opt.tls.openssl_records);
  flags.add("tls-handshake-timeout", "DURATION", "10s",
            "close connections that have not finished the TLS handshake by then",
            duration_setter(opt.tls_handshake_timeout, false));
  flags.add("advertise-addr", "HOST:PORT", "the bound --listen address",
            "manager address handed to agents in SessionMessage.managers",
            string_setter(advertise));
  flags.add("node-id", "ID", opt.dispatcher.manager_node_id,
            "this manager's node ID in insecure mode (with TLS: the CN of its certificate)",
            string_setter(opt.dispatcher.manager_node_id));
  flags.add("cluster-id", "ID", opt.dispatcher.cluster_id,
            "cluster organisation in insecure mode (with TLS: the O of the server certificate)",
            string_setter(opt.dispatcher.cluster_id));
  flags.add("heartbeat-period", "DURATION", "5s", "heartbeat period given to agents",
            duration_setter(opt.dispatcher.heartbeat_period, false));
  flags.add("heartbeat-epsilon", "DURATION", "500ms",
            "random jitter added to each heartbeat period (period ± epsilon)",
            duration_setter(opt.dispatcher.heartbeat_epsilon, true));
  flags.add("grace-multiplier", "N", std::to_string(opt.dispatcher.grace_multiplier),
            "a node is down after period × N without a heartbeat (× 2N right after start-up)",
            uint_setter(opt.dispatcher.grace_multiplier, 1, 1000));
  flags.add("rate-limit-period", "DURATION", "8s",
            "window in which a node may register 3 times (0 disables the limit)",
            duration_setter(opt.dispatcher.rate_limit_period, true));
  flags.add("batch-interval", "DURATION", "100ms",
            "longest a task or node status update waits before it is written (an upper bound: "
            "group commit writes as soon as the previous write is done)",
            duration_setter(opt.dispatcher.batch_interval, false));
  flags.add("batch-max-items", "N", std::to_string(opt.dispatcher.batch_max_items),
            "most status updates written in one store transaction",
            uint_setter(opt.dispatcher.batch_max_items, 1, 10000000));
  flags.add_bool("require-known-nodes",
                 "refuse sessions from nodes without a node object (SwarmKit's \"node not "
                 "found\"); by default an authorized caller's node object is created",
                 opt.dispatcher.require_known_nodes);
  flags.add("node-down-period", "DURATION", "24h",
            "a node down this long has its assigned and running tasks marked ORPHANED",
            duration_setter(opt.dispatcher.node_down_period, false));
  flags.add("watch-buffer", "N", std::to_string(opt.dispatcher.watch_buffer),
            "events one stream may have waiting; past it the stream ends with UNAVAILABLE and "
            "the agent resynchronises",
            uint_setter(opt.dispatcher.watch_buffer, 1, 100000000));
  flags.add("max-recv-msg-size", "BYTES", "4MiB",
            "largest gRPC request message accepted (larger: RESOURCE_EXHAUSTED)",
            size_setter(opt.grpc.max_receive_message_size, 1024, 1ull << 31));
  flags.add("max-concurrent-streams", "N", std::to_string(opt.h2.max_concurrent_streams),
            "HTTP/2 streams (calls) one connection may have open at once",
            uint_setter(opt.h2.max_concurrent_streams, 1, 1u << 31));
  flags.add("max-connections", "N", std::to_string(opt.max_connections),
            "connections served at once; more are refused",
            uint_setter(opt.max_connections, 1, 10000000));
  flags.add("max-handshakes", "N", std::to_string(opt.max_handshakes),
            "TLS handshakes run at once past their ClientHello; more wait their turn (oldest "
            "first, newest first once the oldest waited 1s), and one stalled for 2s while others "
            "wait loses its place (0: no limit)",
            uint_setter(opt.max_handshakes, 0, 10000000));
  flags.add("drain-timeout", "DURATION", "5s",
            "on shutdown, how long in-flight calls may take after GOAWAY",
            duration_setter(opt.h2.drain_timeout, true));
  flags.add("preface-timeout", "DURATION", "10s",
            "close connections that have not sent the HTTP/2 preface by then",
            duration_setter(opt.h2.preface_timeout, false));
  flags.add("keepalive-time", "DURATION", "2m",
            "PING a connection that has sent nothing for this long (0 disables keepalive)",
            duration_setter(opt.h2.keepalive_time, true));
  flags.add("keepalive-timeout", "DURATION", "20s",
            "close a connection that does not answer a keepalive PING within this time",
            duration_setter(opt.h2.keepalive_timeout, false));
  flags.add("write-stall-timeout", "DURATION", "1m",
            "close a connection whose peer accepts no data for this long while data waits "
            "(a peer that stopped reading, or holds its flow-control window at zero)",
            duration_setter(opt.h2.write_stall_timeout, false));
  flags.add("log-level", "LEVEL", log_level, "debug, info, warn, error or off",
            [&](std::string_view v) -> std::optional<std::string> {
              log::Level l;
              if (!log::parse_level(v, l)) return "want debug, info, warn, error or off";
              log_level = v;
              return std::nullopt;
            });
  flags.add("log-format", "FORMAT", log_format, "text or json",
            [&](std::string_view v) -> std::optional<std::string> {
              if (v != "text" && v != "json") return "want text or json";
              log_format = v;
              return std::nullopt;
            });
  flags.add("log-buffer", "BYTES", "1MiB",
            "log lines wait here for stderr, written by a thread of their own so that a stderr "
            "nobody reads never stalls the server; lines that do not fit are dropped and counted "
            "(0: write each line to stderr at once, blocking)",
            size_setter(log_buffer, 0, 1ull << 30));

  bool help = false;
  std::vector<std::string> unknown_env;
  if (auto err = flags.parse_env(environ, "DISPATCHD", unknown_env)) {
    std::fprintf(stderr, "dispatchd: %s\n", err->c_str());
    return 2;
  }
  if (auto err = flags.parse(argc, argv, help)) {
    std::fprintf(stderr, "dispatchd: %s\n", err->c_str());
    return 2;
  }
  if (help) {
    std::fputs(flags
                   .usage("dispatchd",
                          "Serves docker.swarmkit.v1.Dispatcher to SwarmKit agents over HTTP/2 "
                          "gRPC, with grpc.health.v1.Health, server reflection and the "
                          "dispatchd.control.v1.Control operator API (see dispatchctl).\n\n"
                          "Every flag can also be set from the environment: --foo-bar from "
                          "DISPATCHD_FOO_BAR. Flags on the command line win.")
                   .c_str(),
               stdout);
    return 0;
  }
  log::Level level;
  log::parse_level(log_level, level);
  log::set_level(level);
  log::set_format(log_format == "json" ? log::Format::json : log::Format::text);

  // Values that are fine alone but not together.
  auto refuse = [](const std::string& msg) {
    std::fprintf(stderr, "dispatchd: %s\n", msg.c_str());
    return 2;
  };
  if (opt.dispatcher.heartbeat_epsilon >= opt.dispatcher.heartbeat_period) {
    return refuse("--heartbeat-epsilon (" + app::format_duration(opt.dispatcher.heartbeat_epsilon) +
                  ") must be smaller than --heartbeat-period (" +
                  app::format_duration(opt.dispatcher.heartbeat_period) + ")");
  }
  if (!opt.admin_listen.empty() && opt.admin_listen == opt.listen) {
    return refuse("--admin-listen and --listen are both " + opt.listen +
                  ": the admin endpoint needs its own port");
  }
  if (opt.insecure && (!opt.tls.cert.empty() || !opt.tls.key.empty() || !opt.tls.ca.empty())) {
    return refuse(
        "--insecure turns TLS off but --tls-cert/--tls-key/--tls-ca were given: choose one");
  }
  if (opt.insecure && opt.tls.openssl_records) {
    return refuse("--tls-openssl-records has no effect with --insecure (no TLS): choose one");
  }
  if (opt.h2.keepalive_time.count() > 0 && opt.h2.keepalive_timeout >= opt.h2.keepalive_time) {
    return refuse("--keepalive-timeout must be shorter than --keepalive-time");
  }
  for (const auto& name : unknown_env) {
    log::warn("ignoring environment variable {}: no such flag (see --help)", name);
  }

  std::optional<app::StateDir> statedir;
  std::optional<dispatchd::state::v1::StoreSnapshot> saved;
  if (!state_dir.empty()) {
    auto dir = app::StateDir::open(state_dir);
    if (!dir) return refuse(dir.error());
    auto loaded = dir->load();
    if (!loaded) return refuse(loaded.error());
    saved = std::move(*loaded);
    statedir.emplace(std::move(*dir));
  }

  std::shared_ptr<net::TlsContext> tls;
  if (!opt.insecure) {
    auto ctx = app::prepare_tls(opt);
    if (!ctx) {
      std::fprintf(stderr, "dispatchd: %s\n", ctx.error().c_str());
      return 2;
    }
    tls = *ctx;
  }

  // From here on stderr is written by a thread of its own (stopped, and drained, at return).
  struct AsyncLog {
    ~AsyncLog() { log::stop_async(); }
  } async_log;
  if (log_buffer > 0) {
    if (auto err = log::start_async(log_buffer); !err.empty()) {
      log::warn("log lines are written synchronously: {}", err);
    }
  }

  asio::io_context io(1);
  // Signal handlers go in before the listening line is logged: a SIGTERM from a supervisor that
  // saw the server start must stop it gracefully, never kill it (asio queues the signal until
  // the wait below is armed).
  asio::signal_set signals(io, SIGINT, SIGTERM, SIGHUP);
  app::Server server(io, opt);
  if (tls) server.set_tls(tls);
  if (saved) {
    auto st = server.store().restore(*saved);
    if (!st.is_ok()) {
      return refuse("state directory " + statedir->path() + ": " + st.message() +
                    " (move store.pb away to start empty)");
    }
    log::info("state restored from {}: {} nodes, {} tasks, index {}", statedir->file(),
              saved->nodes_size(), saved->tasks_size(), saved->index());
    saved.reset();
  }
  auto bound = server.listen();
  if (!bound) {
    log::error("{}", bound.error());
    return 1;
  }
  // The manager list agents receive names this server.
  std::string addr = advertise.empty() ? net::endpoint_string(*bound) : advertise;
  server.dispatcher().set_manager_addr(addr);
  if (opt.insecure) {
    log::warn(
        "insecure mode: plaintext HTTP/2 and no authentication; any client can claim any "
        "node ID. Use TLS outside tests and benchmarks.");
  }
  log::info("dispatchd listening on {} ({}, node {}, cluster {}, advertised as {})",
            net::endpoint_string(*bound), opt.insecure ? "h2c plaintext" : "mutual TLS",
            opt.dispatcher.manager_node_id, opt.dispatcher.cluster_id, addr);
  if (auto admin = server.admin_endpoint()) {
    log::info("admin endpoint on http://{} (/metrics, /healthz, /readyz)",
              net::endpoint_string(*admin));
  }

  // SIGHUP reloads the certificate and key; the files are read off the io thread and the new
  // context is handed back to it. Live connections keep the context they started with.
  std::thread reloader;
  bool reloading = false;
  std::function<void(std::error_code, int)> on_signal = [&](std::error_code ec, int sig) {
    if (ec) return;
    if (sig == SIGHUP) {
      if (!tls) {
        log::info("SIGHUP: nothing to reload in insecure mode");
      } else if (reloading) {
        log::info("SIGHUP: a reload is already running");
      } else {
        reloading = true;
        if (reloader.joinable()) reloader.join();
        reloader = std::thread([&io, &server, &reloading, files = opt.tls] {
          auto ctx = net::TlsContext::load(files);
          asio::post(io, [&server, &reloading, ctx = std::move(ctx)] {
            reloading = false;
            if (!ctx) {
              log::error("SIGHUP: certificates not reloaded, keeping the old ones: {}",
                         ctx.error());
              return;
            }
            server.set_tls(*ctx);
            log::info("SIGHUP: certificates reloaded (CN {}, O {}); new connections use them",
                      (*ctx)->common_name(), (*ctx)->organization());
          });
        });
      }
      signals.async_wait(on_signal);
      return;
    }
    log::info("received {}, shutting down", sig == SIGINT ? "SIGINT" : "SIGTERM");
    server.stop();
  };
  signals.async_wait(on_signal);
  // Periodic state sync: the io thread only captures (pointer copies); the writer thread does
  // the rest.
  std::optional<app::StateSyncer> syncer;
  asio::steady_timer sync_timer(io);
  std::uint64_t synced_index = server.store().index();
  std::function<void(std::error_code)> on_sync_timer = [&](std::error_code ec) {
    if (ec) return;
    if (server.store().index() != synced_index) {
      synced_index = server.store().index();
      syncer->submit(server.store().capture());
    }
    sync_timer.expires_after(state_sync_interval);
    sync_timer.async_wait(on_sync_timer);
  };
  if (statedir && state_sync_interval.count() > 0) {
    syncer.emplace(*statedir);
    sync_timer.expires_after(state_sync_interval);
    sync_timer.async_wait(on_sync_timer);
  }
  bool done = false;
  asio::co_spawn(io, server.run(), [&](std::exception_ptr e) {
    done = true;
    signals.cancel();
    sync_timer.cancel();
    if (e) {
      try {
        std::rethrow_exception(e);
      } catch (const std::exception& ex) {
        log::error("server failed: {}", ex.what());
      }
    }
  });
  io.run();
  if (reloader.joinable()) reloader.join();
  int rc = done ? 0 : 1;
  if (syncer) syncer->stop();  // never two writers at once
  if (statedir) {
    // The io thread has ended: every acknowledged status update is in the store.
    auto snap = server.store().snapshot();
    auto bytes = statedir->save(snap);
    if (!bytes) {
      log::error("state NOT saved to {}: {}", statedir->file(), bytes.error());
      rc = 1;
    } else {
      log::info("state saved to {}: {} nodes, {} tasks, {} bytes", statedir->file(),
                snap.nodes_size(), snap.tasks_size(), *bytes);
    }
  }
  log::info("dispatchd stopped");
  return rc;
}
