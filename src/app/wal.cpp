#include "dispatchd/app/wal.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <asio/post.hpp>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>

#include "dispatchd/log.hpp"
#include "errno_text.hpp"

namespace dispatchd::app {

namespace {

namespace fs = std::filesystem;
using state::v1::JournalChange;
using state::v1::JournalRecord;

constexpr char kMagic[8] = {'D', 'S', 'P', 'D', 'W', 'A', 'L', '\n'};
constexpr std::size_t kHeaderSize = sizeof kMagic + 4;
constexpr std::size_t kRecordHeader = 8;
// A record larger than this is damage, not data (the largest object, a secret, is 500 KiB; a
// batch flush holds at most --batch-max-items of them).
constexpr std::uint32_t kMaxRecord = 256u << 20;

std::array<std::uint32_t, 256> make_crc_table() {
  std::array<std::uint32_t, 256> t{};
  for (std::uint32_t i = 0; i < 256; ++i) {
    std::uint32_t c = i;
    for (int k = 0; k < 8; ++k)
      c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;  // reflected Castagnoli polynomial
    t[i] = c;
  }
  return t;
}

void put_u32(std::string& out, std::uint32_t v) {
  for (int i = 0; i < 4; ++i)
    out.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}

std::uint32_t get_u32(const std::uint8_t* p) {
  return std::uint32_t(p[0]) | std::uint32_t(p[1]) << 8 | std::uint32_t(p[2]) << 16 |
         std::uint32_t(p[3]) << 24;
}

bool write_all(int fd, const char* data, std::size_t size) {
  while (size > 0) {
    ssize_t n = ::write(fd, data, size);
    if (n < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    data += n;
    size -= static_cast<std::size_t>(n);
  }
  return true;
}

void sync_dir(const std::string& dir) {
  int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    ::fsync(dfd);
    ::close(dfd);
  }
}

std::string segment_name(std::uint64_t first_index) {
  char buf[40];
  std::snprintf(buf, sizeof buf, "wal-%016llx.log", static_cast<unsigned long long>(first_index));
  return buf;
}

// The first index a segment name carries, or nullopt if `name` is not a segment's.
std::optional<std::uint64_t> segment_start(const std::string& name) {
  if (name.size() != 24 || name.rfind("wal-", 0) != 0 || name.substr(20) != ".log")
    return std::nullopt;
  std::uint64_t v = 0;
  for (char c : name.substr(4, 16)) {
    int d = (c >= '0' && c <= '9') ? c - '0' : (c >= 'a' && c <= 'f') ? c - 'a' + 10 : -1;
    if (d < 0) return std::nullopt;
    v = v << 4 | static_cast<std::uint64_t>(d);
  }
  return v;
}

JournalChange::Type journal_type(store::ObjectType t) {
  switch (t) {
    case store::ObjectType::node:
      return JournalChange::NODE;
    case store::ObjectType::task:
      return JournalChange::TASK;
    case store::ObjectType::secret:
      return JournalChange::SECRET;
    case store::ObjectType::config:
      return JournalChange::CONFIG;
    case store::ObjectType::volume:
      return JournalChange::VOLUME;
    case store::ObjectType::cluster:
      return JournalChange::CLUSTER;
    case store::ObjectType::managers:
      return JournalChange::MANAGERS;
  }
  return JournalChange::NODE;
}

bool read_file(const std::string& path, std::string& out) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;
  out.clear();
  char buf[65536];
  for (;;) {
    ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      ::close(fd);
      return n == 0;
    }
    out.append(buf, static_cast<std::size_t>(n));
  }
}

}  // namespace

std::uint32_t crc32c(std::span<const std::uint8_t> data, std::uint32_t crc) {
  static const auto table = make_crc_table();
  crc = ~crc;
  for (std::uint8_t b : data)
    crc = table[(crc ^ b) & 0xff] ^ (crc >> 8);
  return ~crc;
}

JournalRecord journal_record(std::uint64_t prev, std::uint64_t index,
                             std::span<const store::Change> changes) {
  JournalRecord r;
  r.set_prev_index(prev);
  r.set_index(index);
  for (const auto& c : changes) {
    auto* j = r.add_changes();
    j->set_type(journal_type(c.type));
    j->set_id(c.id);
    if (c.kind == store::EventKind::remove) {
      j->set_kind(JournalChange::REMOVE);
      continue;
    }
    j->set_kind(JournalChange::PUT);
    const void* o = c.object.get();
    switch (c.type) {
      case store::ObjectType::node:
        static_cast<const store::api::Node*>(o)->SerializeToString(j->mutable_object());
        break;
      case store::ObjectType::task:
        static_cast<const store::api::Task*>(o)->SerializeToString(j->mutable_object());
        break;
      case store::ObjectType::secret:
        static_cast<const store::api::Secret*>(o)->SerializeToString(j->mutable_object());
        break;
      case store::ObjectType::config:
        static_cast<const store::api::Config*>(o)->SerializeToString(j->mutable_object());
        break;
      case store::ObjectType::volume:
        static_cast<const store::api::Volume*>(o)->SerializeToString(j->mutable_object());
        break;
      case store::ObjectType::cluster:
        static_cast<const store::api::Cluster*>(o)->SerializeToString(j->mutable_object());
        break;
      case store::ObjectType::managers: {
        state::v1::ManagerList m;
        for (const auto& p : *static_cast<const store::ManagerList*>(o))
          *m.add_managers() = p;
        m.SerializeToString(j->mutable_object());
        break;
      }
    }
  }
  return r;
}

// ---- Wal ----------------------------------------------------------------------------------

Wal::Wal(asio::io_context& io, store::Store& store, std::string dir,
         std::function<void(const Status&)> on_failure)
    : io_(io), store_(store), dir_(std::move(dir)), on_failure_(std::move(on_failure)) {}

Wal::~Wal() {
  stop();
}

void Wal::append(std::uint64_t prev, std::uint64_t index, std::span<const store::Change> changes) {
  if (failed_ || stopped_) return;
  scratch_ = journal_record(prev, index, changes);
  encoded_.clear();
  scratch_.SerializeToString(&encoded_);
  const auto* p = reinterpret_cast<const std::uint8_t*>(encoded_.data());
  if (queued_.empty()) queued_first_ = index;
  put_u32(queued_, static_cast<std::uint32_t>(encoded_.size()));
  put_u32(queued_, crc32c({p, encoded_.size()}));
  queued_ += encoded_;
  queued_last_ = index;
  ++stats_.records;
  if (!in_flight_) start_batch();
}

void Wal::start_batch() {
  Batch b;
  b.bytes.swap(queued_);
  b.first_index = queued_first_;
  b.last_index = queued_last_;
  b.new_segment = std::exchange(rotate_, false);
  if (b.new_segment) ++stats_.segments;
  in_flight_ = true;
  asio::post(writer_, [this, b = std::move(b), guard = asio::make_work_guard(io_)]() mutable {
    double seconds = 0;
    std::string err = write_batch(b, seconds);
    asio::post(io_,
               [this, err = std::move(err), last = b.last_index, size = b.bytes.size(), seconds,
                guard = std::move(guard)] { finish_batch(err, last, size, seconds); });
  });
}

std::string Wal::write_batch(const Batch& b, double& seconds) {
  auto t0 = std::chrono::steady_clock::now();
  std::string header;
  if (b.new_segment || fd_ < 0) {
    if (fd_ >= 0) ::close(std::exchange(fd_, -1));
    std::string path = dir_ + "/" + segment_name(b.first_index);
    fd_ = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_APPEND | O_CLOEXEC, 0600);
    if (fd_ < 0) return errno_text(path);
    header.assign(kMagic, sizeof kMagic);
    put_u32(header, kWalFormat);
  }
  bool ok = (header.empty() || write_all(fd_, header.data(), header.size())) &&
            write_all(fd_, b.bytes.data(), b.bytes.size()) && ::fdatasync(fd_) == 0;
  if (!ok) return errno_text(dir_ + "/" + segment_name(b.first_index));
  if (!header.empty()) sync_dir(dir_);  // the new segment's name is durable too
  seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return {};
}

void Wal::finish_batch(const std::string& error, std::uint64_t last_index, std::size_t bytes,
                       double seconds) {
  in_flight_ = false;
  if (!error.empty()) {
    failed_ = true;
    Status st(StatusCode::unavailable, "the write-ahead log failed: " + error);
    log::error("{}", st.message());
    store_.journal_failed(st);
    if (on_failure_) on_failure_(st);
    return;
  }
  ++stats_.batches;
  stats_.bytes += bytes;
  stats_.sync_seconds += seconds;
  store_.mark_durable(last_index);
  if (!queued_.empty() && !stopped_) start_batch();
}

Status Wal::stop() {
  if (stopped_)
    return failed_ ? Status(StatusCode::unavailable, "write-ahead log failed") : Status::ok();
  stopped_ = true;
  writer_.join();  // a batch in flight is written; its completion no longer runs
  Status st = Status::ok();
  if (!failed_ && !queued_.empty()) {
    Batch b;
    b.bytes.swap(queued_);
    b.first_index = queued_first_;
    b.last_index = queued_last_;
    b.new_segment = rotate_;
    double seconds = 0;
    if (auto err = write_batch(b, seconds); !err.empty()) {
      failed_ = true;
      st = Status(StatusCode::unavailable, "the write-ahead log failed: " + err);
      log::error("{}", st.message());
    } else {
      ++stats_.batches;
      store_.mark_durable(b.last_index);
    }
  }
  if (fd_ >= 0) ::close(std::exchange(fd_, -1));
  return st;
}

// ---- recovery and compaction ----------------------------------------------------------------

std::vector<std::string> wal_segments(const std::string& dir) {
  std::vector<std::pair<std::uint64_t, std::string>> found;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    auto name = e.path().filename().string();
    if (auto start = segment_start(name)) found.emplace_back(*start, name);
  }
  std::sort(found.begin(), found.end());
  std::vector<std::string> out;
  for (auto& [start, name] : found)
    out.push_back(std::move(name));
  return out;
}

std::expected<WalRecovery, std::string> recover_wal(
    const std::string& dir, const std::function<Status(const JournalRecord&)>& apply) {
  WalRecovery r;
  auto segments = wal_segments(dir);
  r.segments = segments.size();
  std::string data;
  for (std::size_t i = 0; i < segments.size(); ++i) {
    const bool newest = i + 1 == segments.size();
    const std::string path = dir + "/" + segments[i];
    if (!read_file(path, data)) return std::unexpected(errno_text(path));
    // Cuts the newest segment back to `keep` bytes (or removes it), or refuses an older one.
    auto damaged = [&](std::size_t keep, const std::string& why) -> std::optional<std::string> {
      if (!newest) {
        return path + ": " + why + " at offset " + std::to_string(keep) +
               ", in a segment that later ones follow: the log is damaged, not torn. Restore "
               "the state directory from a backup, or move this segment and the later ones "
               "away to start from what comes before it (what they hold is lost)";
      }
      r.cut_segment = path;
      r.cut_offset = keep;
      r.cut_bytes = data.size() - keep;
      r.cut_reason = why;
      if (keep <= kHeaderSize) {
        if (::unlink(path.c_str()) != 0) return errno_text("remove " + path);
      } else if (::truncate(path.c_str(), static_cast<off_t>(keep)) != 0) {
        return errno_text("truncate " + path);
      }
      sync_dir(dir);
      return std::nullopt;
    };
    if (data.size() < kHeaderSize) {
      if (std::memcmp(data.data(), kMagic, std::min(data.size(), sizeof kMagic)) != 0)
        return std::unexpected(path + " is not a dispatchd write-ahead log segment");
      if (auto err = damaged(0, "torn segment header")) return std::unexpected(*err);
      continue;
    }
    if (std::memcmp(data.data(), kMagic, sizeof kMagic) != 0)
      return std::unexpected(path + " is not a dispatchd write-ahead log segment");
    const auto* base = reinterpret_cast<const std::uint8_t*>(data.data());
    if (std::uint32_t v = get_u32(base + sizeof kMagic); v != kWalFormat) {
      return std::unexpected(path + " is write-ahead log format " + std::to_string(v) +
                             "; this build reads format " + std::to_string(kWalFormat) +
                             ". Run the dispatchd version that wrote it, or move the state "
                             "directory away to start empty");
    }
    std::size_t off = kHeaderSize;
    while (off < data.size()) {
      if (data.size() - off < kRecordHeader) {
        if (auto err = damaged(off, "torn record header")) return std::unexpected(*err);
        break;
      }
      std::uint32_t len = get_u32(base + off), crc = get_u32(base + off + 4);
      if (len > kMaxRecord) {
        if (auto err = damaged(off, "impossible record length " + std::to_string(len)))
          return std::unexpected(*err);
        break;
      }
      if (data.size() - off - kRecordHeader < len) {
        if (auto err = damaged(off, "torn record")) return std::unexpected(*err);
        break;
      }
      std::span<const std::uint8_t> payload(base + off + kRecordHeader, len);
      JournalRecord rec;
      if (crc32c(payload) != crc || !rec.ParseFromArray(payload.data(), static_cast<int>(len))) {
        if (auto err = damaged(off, "corrupt record (checksum mismatch)"))
          return std::unexpected(*err);
        break;
      }
      if (rec.index() <= rec.prev_index() || (r.records > 0 && rec.prev_index() != r.last_index)) {
        return std::unexpected(
            path + ": the record at offset " + std::to_string(off) + " continues index " +
            std::to_string(rec.prev_index()) + ", the one before it ends at index " +
            std::to_string(r.last_index) +
            ": records are missing (a segment was removed?). Restore the state directory from a "
            "backup");
      }
      if (Status st = apply(rec); !st.is_ok())
        return std::unexpected(path + ": record " + std::to_string(rec.index()) + ": " +
                               st.message());
      r.last_index = rec.index();
      ++r.records;
      off += kRecordHeader + len;
    }
  }
  return r;
}

std::size_t prune_wal(const std::string& dir, std::uint64_t covered, bool all) {
  auto segments = wal_segments(dir);
  std::size_t removed = 0;
  for (std::size_t i = 0; i < segments.size(); ++i) {
    bool covered_whole =
        all || (i + 1 < segments.size() && *segment_start(segments[i + 1]) <= covered + 1);
    if (!covered_whole) continue;
    std::string path = dir + "/" + segments[i];
    if (::unlink(path.c_str()) == 0) {
      ++removed;
    } else {
      log::warn("write-ahead log: cannot remove {}: {}", path, std::strerror(errno));
    }
  }
  if (removed > 0) sync_dir(dir);
  return removed;
}

}  // namespace dispatchd::app
