#pragma once
// The write-ahead log (docs/architecture.md, "Durability"): every committed store transaction
// is one record, and a change is acknowledged only once its record is on disk.
//
// Layout, in the state directory: segments `wal-<first index, 16 hex digits>.log`, each a header
// ("DSPDWAL\n" then the format version as a little-endian u32) and records: payload length (u32
// LE), CRC-32C of the payload (u32 LE), payload (a state.v1.JournalRecord). Records are in
// commit order with strictly increasing indexes; a segment is named by the index of its first
// record, so the names sort in log order.
//
// Group commit: the io thread encodes a record at commit (Store::Journal) and queues it; one
// writer thread writes and fdatasyncs a batch at a time, then posts the batch's last index back
// (Store::mark_durable). Whatever is committed while a batch is being written joins the next
// one, so under load one fsync covers many transactions and the io thread never blocks.

#include <asio/executor_work_guard.hpp>
#include <asio/io_context.hpp>
#include <asio/thread_pool.hpp>
#include <cstdint>
#include <expected>
#include <functional>
#include <span>
#include <string>
#include <vector>

#include "dispatchd/status.hpp"
#include "dispatchd/store/store.hpp"
#include "state.pb.h"

namespace dispatchd::app {

inline constexpr std::uint32_t kWalFormat = 1;

// CRC-32C (Castagnoli), as the log's records carry it.
std::uint32_t crc32c(std::span<const std::uint8_t> data, std::uint32_t crc = 0);

// The record of one committed transaction.
state::v1::JournalRecord journal_record(std::uint64_t prev, std::uint64_t index,
                                        std::span<const store::Change> changes);

struct WalStats {
  std::uint64_t records = 0;   // appended
  std::uint64_t batches = 0;   // written (one fdatasync each)
  std::uint64_t bytes = 0;     // of records written
  std::uint64_t segments = 0;  // created
  double sync_seconds = 0;     // spent in write + fdatasync, summed
};

class Wal final : public store::Journal {
 public:
  // `on_failure` runs on the io thread, once, when a batch cannot be written; the store's
  // durability waits then fail with UNAVAILABLE. Nothing is written before the first commit:
  // the first batch starts a new segment.
  Wal(asio::io_context& io, store::Store& store, std::string dir,
      std::function<void(const Status&)> on_failure);
  Wal(const Wal&) = delete;
  Wal& operator=(const Wal&) = delete;
  ~Wal() override;

  void append(std::uint64_t prev, std::uint64_t index,
              std::span<const store::Change> changes) override;
  // The next batch starts a new segment (before a snapshot, so that the segments it covers
  // can be removed once it is written).
  void rotate() noexcept { rotate_ = true; }
  // After the io thread has ended: writes what is still queued, ends the writer thread, closes
  // the segment. Returns the failure, if any.
  Status stop();

  const WalStats& stats() const noexcept { return stats_; }
  bool failed() const noexcept { return failed_; }
  // Bytes queued for the next batch.
  std::size_t queued_bytes() const noexcept { return queued_.size(); }

 private:
  struct Batch {
    std::string bytes;
    std::uint64_t first_index = 0;
    std::uint64_t last_index = 0;
    bool new_segment = false;
  };
  void start_batch();
  // On the writer thread (or in stop()): returns the error text, empty when written and synced.
  std::string write_batch(const Batch& b, double& seconds);
  void finish_batch(const std::string& error, std::uint64_t last_index, std::size_t bytes,
                    double seconds);

  asio::io_context& io_;
  store::Store& store_;
  const std::string dir_;
  std::function<void(const Status&)> on_failure_;
  asio::thread_pool writer_{1};
  // io thread side.
  std::string queued_;
  std::uint64_t queued_first_ = 0;
  std::uint64_t queued_last_ = 0;
  bool in_flight_ = false;
  bool rotate_ = true;
  bool failed_ = false;
  bool stopped_ = false;
  WalStats stats_;
  state::v1::JournalRecord scratch_;
  std::string encoded_;
  // Writer thread side (the writer is one thread; stop() runs after it is joined).
  int fd_ = -1;
};

struct WalRecovery {
  std::size_t segments = 0;
  std::uint64_t records = 0;     // whole records read
  std::uint64_t last_index = 0;  // of the last record (0: none)
  std::uint64_t cut_bytes = 0;   // removed from the newest segment's tail
  std::string cut_segment;       // which segment was cut ("" if none)
  std::uint64_t cut_offset = 0;  // where
  std::string cut_reason;        // torn or corrupt
};

// Reads every segment in `dir` in order and hands each record to `apply` (which skips what a
// snapshot already holds). A torn or corrupt tail of the newest segment is cut back to its last
// whole record (the file is truncated; a segment left without a record is removed). Damage
// anywhere else, a segment of another format, a record that `apply` refuses or indexes that do
// not increase are refused with a message saying what to do.
std::expected<WalRecovery, std::string> recover_wal(
    const std::string& dir, const std::function<Status(const state::v1::JournalRecord&)>& apply);

// Removes the segments whose every record is at or below `covered` (a snapshot at that index is
// on disk): those followed by a segment starting at or below covered + 1. `all`: every segment
// (after the final snapshot of a graceful stop). Returns how many were removed.
std::size_t prune_wal(const std::string& dir, std::uint64_t covered, bool all = false);

// The segment file names in `dir`, in log order.
std::vector<std::string> wal_segments(const std::string& dir);

}  // namespace dispatchd::app
