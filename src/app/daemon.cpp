#include "dispatchd/app/daemon.hpp"

#include <fmt/ranges.h>

#include <asio/co_spawn.hpp>
#include <asio/io_context.hpp>
#include <asio/post.hpp>
#include <asio/signal_set.hpp>
#include <asio/steady_timer.hpp>
#include <chrono>
#include <csignal>
#include <cstddef>
#include <cstdio>
#include <functional>
#include <optional>
#include <thread>
#include <utility>

#include "dispatchd/app/cluster.hpp"
#include "dispatchd/app/server.hpp"
#include "dispatchd/app/state.hpp"
#include "dispatchd/app/wal.hpp"
#include "dispatchd/cluster/etcd_journal.hpp"
#include "dispatchd/cluster/manager_watch.hpp"
#include "dispatchd/log.hpp"
#include "dispatchd/net/tcp_transport.hpp"

// jemalloc's control interface, when dispatchd runs on jemalloc (linked, or preloaded); null on
// any other malloc (glibc's, the sanitizers').
extern "C" int mallctl(const char* name, void* oldp, std::size_t* oldlenp, void* newp,
                       std::size_t newlen) __attribute__((weak));

namespace dispatchd::app {

namespace {

// jemalloc returns freed pages to the system as its decay curve says (dirty_decay_ms, 10 s), but
// only when some thread asks it for memory: an idle server whose 10k sessions ended kept ~45 MB
// that a busy one would have returned (BENCHMARKS.md, issue 14). A tick from the io thread once a
// second lets the decay progress, as jemalloc's own background thread would, without a thread of
// jemalloc's in the process. What it returns is what the curve allows, no more.
class AllocatorDecay {
 public:
  explicit AllocatorDecay(asio::io_context& io) : timer_(io) {
    if (mallctl != nullptr) arm();
  }
  void cancel() { timer_.cancel(); }

 private:
  void arm() {
    timer_.expires_after(std::chrono::seconds(1));
    timer_.async_wait([this](std::error_code ec) {
      if (ec) return;
      // "arena.<MALLCTL_ARENAS_ALL>.decay": every arena's purge as far as the decay curve goes.
      (void)mallctl("arena.4096.decay", nullptr, nullptr, nullptr, 0);
      arm();
    });
  }
  asio::steady_timer timer_;
};

// SIGHUP reloads the certificate and key: the files are read on a thread of their own and the
// new context is handed back to the io thread. Live connections keep the context they started
// with. One reload runs at a time.
class CertificateReloader {
 public:
  CertificateReloader(asio::io_context& io, Server& server, net::TlsFiles files)
      : io_(io), server_(server), files_(std::move(files)) {}

  // On the io thread.
  void reload() {
    if (reloading_) {
      log::info("SIGHUP: a reload is already running");
      return;
    }
    reloading_ = true;
    join();
    thread_ = std::thread([this] {
      auto tls = ReloadedTls::load(files_);
      asio::post(io_, [this, tls = std::move(tls)]() mutable {
        reloading_ = false;
        if (!tls) {
          log::error("SIGHUP: certificates not reloaded, keeping the old ones: {}", tls.error());
          return;
        }
        const auto cn = tls->server->common_name();
        const auto org = tls->server->organization();
        server_.reload_tls(std::move(*tls));
        log::info(
            "SIGHUP: certificates reloaded (CN {}, O {}); new connections, and new calls "
            "forwarded to the leader, use them",
            cn, org);
      });
    });
  }

  // After the io thread has ended (a reload's result then goes nowhere).
  void join() {
    if (thread_.joinable()) thread_.join();
  }

 private:
  asio::io_context& io_;
  Server& server_;
  const net::TlsFiles files_;
  std::thread thread_;
  bool reloading_ = false;
};

// The final write of the store, once nothing changes it any more. Logs the outcome.
bool save_state(const StateDir& dir, const store::Store& store) {
  auto snap = store.snapshot();
  auto bytes = dir.save(snap);
  if (!bytes) {
    log::error("state NOT saved to {}: {}", dir.file(), bytes.error());
    return false;
  }
  log::info("state saved to {}: {} nodes, {} tasks, {} bytes", dir.file(), snap.nodes_size(),
            snap.tasks_size(), *bytes);
  return true;
}

}  // namespace

int run_daemon(DaemonOptions d) {
  Options& opt = d.server;
  log::set_level(d.log_level);
  log::set_format(d.log_format);

  auto refuse = [](const std::string& msg) {
    std::fprintf(stderr, "dispatchd: %s\n", msg.c_str());
    return 2;
  };
  for (const auto& name : d.unknown_env) {
    log::warn("ignoring environment variable {}: no such flag (see --help)", name);
  }

  const bool clustered = !d.etcd_endpoints.empty();
  opt.defer_dispatcher = clustered;
  std::optional<StateDir> statedir;
  std::optional<dispatchd::state::v1::StoreSnapshot> saved;
  if (d.in_memory && !d.state_dir.empty()) {
    log::warn("--in-memory: the store is not kept in {} (--state-dir ignored)", d.state_dir);
  }
  if (!d.in_memory && !clustered) {
    if (d.state_dir.empty()) d.state_dir = default_state_dir();
    auto dir = StateDir::open(d.state_dir);
    if (!dir) return refuse(dir.error());
    auto loaded = dir->load();
    if (!loaded) return refuse(loaded.error());
    saved = std::move(*loaded);
    statedir.emplace(std::move(*dir));
  }

  std::shared_ptr<net::TlsContext> tls;
  if (!opt.insecure) {
    auto ctx = prepare_tls(opt);
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
  if (d.log_buffer > 0) {
    if (auto err = log::start_async(d.log_buffer); !err.empty()) {
      log::warn("log lines are written synchronously: {}", err);
    }
  }

  asio::io_context io(1);
  // Signal handlers go in before the listening line is logged: a SIGTERM from a supervisor that
  // saw the server start must stop it gracefully, never kill it (asio queues the signal until
  // the wait below is armed).
  asio::signal_set signals(io, SIGINT, SIGTERM, SIGHUP);
  Server server(io, opt);
  if (tls) server.set_tls(tls);
  if (saved) {
    auto st = server.store().restore(*saved);
    if (!st.is_ok()) {
      return refuse("state directory " + statedir->path() + ": " + st.message() +
                    " (move the state directory's contents away to start empty)");
    }
    log::info("state restored from {}: {} nodes, {} tasks, index {}", statedir->file(),
              saved->nodes_size(), saved->tasks_size(), saved->index());
    saved.reset();
  }
  // The write-ahead log: replay what followed the snapshot, then log every commit from here on.
  std::optional<Wal> wal;
  bool wal_failed = false;
  if (statedir) {
    auto& store = server.store();
    auto rec = recover_wal(statedir->path(),
                           [&](const state::v1::JournalRecord& r) { return store.replay(r); });
    if (!rec) return refuse("state directory " + statedir->path() + ": " + rec.error());
    if (!rec->cut_segment.empty()) {
      log::warn(
          "write-ahead log: cut {} bytes at offset {} of {} ({}); the last whole record "
          "is index {}. Nothing cut was acknowledged to a client",
          rec->cut_bytes, rec->cut_offset, rec->cut_segment, rec->cut_reason, rec->last_index);
    }
    if (rec->records > 0) {
      log::info("write-ahead log: {} records in {} segments read; store index {}", rec->records,
                rec->segments, store.index());
    }
    wal.emplace(io, store, statedir->path(), [&](const Status& why) {
      // Nothing can be acknowledged any more: stop serving, exit non-zero.
      log::error("stopping: {}", why.message());
      wal_failed = true;
      server.stop();
    });
    store.set_journal(&*wal);
    server.add_metrics([&w = *wal](metrics::Writer& m) {
      const auto& st = w.stats();
      m.scalar("dispatchd_wal_records_total", "counter",
               "Store transactions appended to the write-ahead log.", double(st.records));
      m.scalar("dispatchd_wal_syncs_total", "counter",
               "Batches written and fdatasync'ed (group commit: one per batch).",
               double(st.batches));
      m.scalar("dispatchd_wal_bytes_total", "counter", "Bytes written to the write-ahead log.",
               double(st.bytes));
      m.scalar("dispatchd_wal_segments_total", "counter", "Write-ahead log segments started.",
               double(st.segments));
      m.scalar("dispatchd_wal_sync_seconds_total", "counter",
               "Time the log's writer thread spent writing and syncing.", st.sync_seconds);
    });
  }
  auto bound = server.listen();
  if (!bound) {
    log::error("{}", bound.error());
    return 1;
  }
  // The manager list agents receive names this server.
  std::string addr = d.advertise.empty() ? net::endpoint_string(*bound) : d.advertise;
  server.dispatcher().set_manager_addr(addr);
  std::optional<ClusterManager> cluster;
  if (clustered) {
    ClusterOptions co;
    for (const auto& ep : d.etcd_endpoints) {
      co.etcd.endpoints.push_back((d.etcd_ca.empty() ? "http://" : "https://") + ep);
    }
    co.etcd.ca_file = d.etcd_ca;
    co.etcd.cert_file = d.etcd_cert;
    co.etcd.key_file = d.etcd_key;
    co.prefix = d.etcd_prefix;
    co.node_id = opt.dispatcher.manager_node_id;
    co.advertise_addr = addr;
    co.lease_ttl = d.etcd_lease_ttl;
    cluster.emplace(server, std::move(co));
    server.add_metrics([&c = *cluster](metrics::Writer& m) {
      m.scalar("dispatchd_cluster_leader", "gauge",
               "1 while this manager leads the cluster (runs the Dispatcher), 0 as a follower.",
               c.leader() ? 1 : 0);
      m.scalar("dispatchd_cluster_leader_terms_total", "counter",
               "Times this process was elected leader.", double(c.terms()));
      const cluster::Membership* ms = c.membership();
      m.scalar("dispatchd_cluster_managers", "gauge", "Live managers registered in etcd.",
               ms ? double(ms->managers.size()) : 0);
      if (const cluster::EtcdJournal* j = c.journal()) {
        const auto& st = j->stats();
        m.scalar("dispatchd_etcd_txns_total", "counter",
                 "Store writes committed to etcd (transactions; group commit).", double(st.txns));
        m.scalar("dispatchd_etcd_commits_total", "counter",
                 "Store transactions appended to the etcd journal.", double(st.commits));
        m.scalar("dispatchd_etcd_txn_failures_total", "counter",
                 "etcd transactions that failed (retried, or ending the leadership).",
                 double(st.failures));
        m.scalar("dispatchd_etcd_wait_seconds_total", "counter",
                 "Time spent waiting for etcd to commit the store's writes.", st.wait_seconds);
      }
    });
  }
  if (opt.insecure) {
    log::warn(
        "insecure mode: plaintext HTTP/2 and no authentication; any client can claim any "
        "node ID. Use TLS outside tests and benchmarks.");
  }
  log::info("dispatchd listening on {} ({}, node {}, cluster {}, advertised as {})",
            net::endpoint_string(*bound), opt.insecure ? "h2c plaintext" : "mutual TLS",
            opt.dispatcher.manager_node_id, opt.dispatcher.cluster_id, addr);
  if (!opt.insecure) {
    log::info("TLS handshakes on {}",
              opt.tls_handshake_threads == 0
                  ? std::string("the io thread")
                  : fmt::format("{} thread{} of their own", opt.tls_handshake_threads,
                                opt.tls_handshake_threads == 1 ? "" : "s"));
  }
  if (auto admin = server.admin_endpoint()) {
    log::info("admin endpoint on http://{} (/metrics, /healthz, /readyz)",
              net::endpoint_string(*admin));
  }

  CertificateReloader reloader(io, server, opt.tls);
  std::function<void(std::error_code, int)> on_signal = [&](std::error_code ec, int sig) {
    if (ec) return;
    if (sig == SIGHUP) {
      if (!tls) {
        log::info("SIGHUP: nothing to reload in insecure mode");
      } else {
        reloader.reload();
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
  std::optional<StateSyncer> syncer;
  asio::steady_timer sync_timer(io);
  std::uint64_t synced_index = server.store().index();
  std::function<void(std::error_code)> on_sync_timer = [&](std::error_code ec) {
    if (ec) return;
    if (server.store().index() != synced_index) {
      synced_index = server.store().index();
      // Later records go to a new segment, so the ones the snapshot covers can be removed.
      if (wal) wal->rotate();
      syncer->submit(server.store().capture());
    }
    sync_timer.expires_after(d.state_sync_interval);
    sync_timer.async_wait(on_sync_timer);
  };
  if (statedir && d.state_sync_interval.count() > 0) {
    syncer.emplace(*statedir, [dir = statedir->path()](std::uint64_t index) {
      if (auto n = prune_wal(dir, index); n > 0)
        log::debug("write-ahead log: {} segments covered by the snapshot at index {} removed", n,
                   index);
    });
    sync_timer.expires_after(d.state_sync_interval);
    sync_timer.async_wait(on_sync_timer);
  }
  AllocatorDecay allocator_decay(io);
  bool done = false;
  co::Event server_done;
  bool cluster_failed = false;
  if (cluster) {
    log::info("store in etcd at {} under {}; this manager follows until it is elected leader",
              fmt::join(d.etcd_endpoints, ","), d.etcd_prefix);
    asio::co_spawn(io, cluster->run(server_done), [&](std::exception_ptr e, Status st) {
      if (e || !st.is_ok()) cluster_failed = true;
    });
  }
  asio::co_spawn(io, server.run(), [&](std::exception_ptr e) {
    done = true;
    server_done.set();
    signals.cancel();
    sync_timer.cancel();
    allocator_decay.cancel();
    if (e) {
      try {
        std::rethrow_exception(e);
      } catch (const std::exception& ex) {
        log::error("server failed: {}", ex.what());
      }
    }
  });
  io.run();
  reloader.join();
  int rc = done && !wal_failed && !cluster_failed ? 0 : 1;
  if (syncer) syncer->stop();  // never two writers at once
  // The io thread has ended: every acknowledged change is in the store and in the log.
  if (wal) {
    if (!wal->stop().is_ok()) rc = 1;
    server.store().set_journal(nullptr);
  }
  // Even after the log failed: the snapshot holds more than the log, never less.
  if (statedir) {
    if (!save_state(*statedir, server.store())) {
      rc = 1;
    } else if (wal) {
      prune_wal(statedir->path(), 0, true);  // the snapshot holds everything
    }
  }
  log::info("dispatchd stopped");
  return rc;
}

}  // namespace dispatchd::app
