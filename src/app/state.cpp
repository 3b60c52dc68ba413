#include "dispatchd/app/state.hpp"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>

#include "dispatchd/log.hpp"
#include "errno_text.hpp"

namespace dispatchd::app {

namespace {
bool write_all(int fd, const std::string& data) {
  std::size_t off = 0;
  while (off < data.size()) {
    ssize_t n = ::write(fd, data.data() + off, data.size() - off);
    if (n < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    off += static_cast<std::size_t>(n);
  }
  return true;
}
}  // namespace

std::expected<StateDir, std::string> StateDir::open(const std::string& dir) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) return std::unexpected("state directory " + dir + ": " + ec.message());
  if (!std::filesystem::is_directory(dir, ec)) {
    return std::unexpected("state directory " + dir + " is not a directory");
  }
  std::string lock = dir + "/lock";
  int fd = ::open(lock.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (fd < 0) return std::unexpected(errno_text("state directory " + dir + " is not writable"));
  if (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
    int e = errno;
    ::close(fd);
    if (e == EWOULDBLOCK) {
      return std::unexpected("state directory " + dir + " is in use by another dispatchd");
    }
    errno = e;
    return std::unexpected(errno_text("state directory " + dir + ": lock"));
  }
  return StateDir(dir, fd);
}

StateDir::StateDir(StateDir&& o) noexcept : dir_(std::move(o.dir_)), lock_fd_(o.lock_fd_) {
  o.lock_fd_ = -1;
}

StateDir::~StateDir() {
  if (lock_fd_ >= 0) ::close(lock_fd_);  // releases the lock
}

std::expected<std::optional<state::v1::StoreSnapshot>, std::string> StateDir::load() const {
  std::string f = file();
  int fd = ::open(f.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    if (errno == ENOENT) return std::nullopt;
    return std::unexpected(errno_text(f));
  }
  std::string data;
  char buf[65536];
  for (;;) {
    ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      ::close(fd);
      return std::unexpected(errno_text(f));
    }
    if (n == 0) break;
    data.append(buf, static_cast<std::size_t>(n));
  }
  ::close(fd);
  state::v1::StoreSnapshot s;
  if (!s.ParseFromString(data)) {
    return std::unexpected(f +
                           " is not a dispatchd state file (corrupt or truncated); move it "
                           "away to start empty");
  }
  return s;
}

std::expected<std::size_t, std::string> StateDir::save(const state::v1::StoreSnapshot& s) const {
  std::string data;
  if (!s.SerializeToString(&data)) return std::unexpected("state: cannot serialize the store");
  std::string f = file(), tmp = f + ".tmp";
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return std::unexpected(errno_text(tmp));
  if (!write_all(fd, data) || ::fsync(fd) != 0) {
    auto err = errno_text(tmp);
    ::close(fd);
    ::unlink(tmp.c_str());
    return std::unexpected(err);
  }
  ::close(fd);
  if (::rename(tmp.c_str(), f.c_str()) != 0) {
    auto err = errno_text("rename " + tmp);
    ::unlink(tmp.c_str());
    return std::unexpected(err);
  }
  int dfd = ::open(dir_.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    ::fsync(dfd);
    ::close(dfd);
  }
  return data.size();
}

std::string default_state_dir() {
  if (::geteuid() == 0) return "/var/lib/dispatchd";
  if (const char* x = std::getenv("XDG_STATE_HOME"); x && *x == '/')
    return std::string(x) + "/dispatchd";
  if (const char* h = std::getenv("HOME"); h && *h)
    return std::string(h) + "/.local/state/dispatchd";
  return "/var/lib/dispatchd";
}

StateSyncer::StateSyncer(const StateDir& dir, std::function<void(std::uint64_t)> after_save)
    : dir_(dir), after_save_(std::move(after_save)), thread_([this] { run(); }) {}

StateSyncer::~StateSyncer() {
  stop();
}

void StateSyncer::submit(store::Capture c) {
  std::lock_guard lock(mu_);
  if (stopping_) return;
  pending_ = std::move(c);
  cv_.notify_one();
}

void StateSyncer::stop() {
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
    pending_.reset();
    cv_.notify_one();
  }
  if (thread_.joinable()) thread_.join();
}

std::uint64_t StateSyncer::writes() const {
  std::lock_guard lock(mu_);
  return writes_;
}

void StateSyncer::run() {
  for (;;) {
    store::Capture c;
    {
      std::unique_lock lock(mu_);
      cv_.wait(lock, [&] { return stopping_ || pending_.has_value(); });
      if (stopping_) return;
      c = std::move(*pending_);
      pending_.reset();
    }
    auto snap = c.to_snapshot();
    c = {};  // the objects the store has replaced since go now, off the io thread
    auto bytes = dir_.save(snap);
    if (!bytes) {
      log::warn("state sync to {} failed: {}", dir_.file(), bytes.error());
      continue;
    }
    log::debug("state synced to {}: index {}, {} nodes, {} tasks, {} bytes", dir_.file(),
               snap.index(), snap.nodes_size(), snap.tasks_size(), *bytes);
    if (after_save_) after_save_(snap.index());
    std::lock_guard lock(mu_);
    ++writes_;
  }
}

}  // namespace dispatchd::app
