#pragma once
// The state directory (--state-dir): snapshots of the store (store.pb, written periodically and
// when the server stops gracefully) and the write-ahead log of every change since the last one
// (wal.hpp). Read back at start, so that every acknowledged change survives a restart or a crash.
// Blocking file I/O: call these before the io thread runs or after it ended.

#include <condition_variable>
#include <cstdint>
#include <expected>
#include <functional>
#include <mutex>
#include <optional>
#include <string>
#include <thread>

#include "dispatchd/store/store.hpp"
#include "state.pb.h"

namespace dispatchd::app {

// Where the state lives unless --state-dir says otherwise: /var/lib/dispatchd for root, else
// $XDG_STATE_HOME/dispatchd, else ~/.local/state/dispatchd.
std::string default_state_dir();

class StateDir {
 public:
  // Creates the directory if needed, checks that it is writable and locks it (one server per
  // directory).
  static std::expected<StateDir, std::string> open(const std::string& dir);
  StateDir(StateDir&& o) noexcept;
  StateDir& operator=(StateDir&&) = delete;
  StateDir(const StateDir&) = delete;
  ~StateDir();

  // The snapshot written by the last graceful stop, or nullopt for a fresh directory.
  std::expected<std::optional<state::v1::StoreSnapshot>, std::string> load() const;
  // Replaces the snapshot atomically (write, fsync, rename, fsync the directory). Returns the
  // bytes written.
  std::expected<std::size_t, std::string> save(const state::v1::StoreSnapshot& s) const;

  const std::string& path() const noexcept { return dir_; }
  std::string file() const { return dir_ + "/store.pb"; }

 private:
  StateDir(std::string dir, int lock_fd) : dir_(std::move(dir)), lock_fd_(lock_fd) {}
  std::string dir_;
  int lock_fd_ = -1;
};

// Periodic snapshots (--state-sync-interval) without blocking the io thread: the io thread hands
// over a store::Capture (pointer copies); a thread of its own builds the snapshot and writes it.
// While a write runs, a newer capture replaces any that waits (only the newest matters).
class StateSyncer {
 public:
  // `after_save(index)` runs on the syncer's thread once a snapshot at `index` is on disk (the
  // write-ahead log it covers can go).
  StateSyncer(const StateDir& dir, std::function<void(std::uint64_t)> after_save = {});
  StateSyncer(const StateSyncer&) = delete;
  StateSyncer& operator=(const StateSyncer&) = delete;
  ~StateSyncer();  // stop()

  void submit(store::Capture c);
  // Waits for a write in progress, drops a waiting capture, ends the thread. Call before the
  // final save so that the two never write at once.
  void stop();
  std::uint64_t writes() const;

 private:
  void run();
  const StateDir& dir_;
  std::function<void(std::uint64_t)> after_save_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::optional<store::Capture> pending_;
  bool stopping_ = false;
  std::uint64_t writes_ = 0;
  std::thread thread_;
};

}  // namespace dispatchd::app
