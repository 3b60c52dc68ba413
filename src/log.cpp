#include "dispatchd/log.hpp"

#include <fcntl.h>
#include <limits.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <ctime>
#include <future>
#include <string>
#include <thread>
#include <utility>

namespace dispatchd::log {
namespace {
Level g_level = Level::info;
Format g_format = Format::text;

// Asynchronous mode: the write end of the pipe (non-blocking) and its drainer.
int g_pipe_w = -1;
int g_pipe_r = -1;
std::thread g_drainer;
std::future<void> g_drained;  // ready when the drainer has written everything and ended
std::atomic<std::uint64_t> g_dropped{0};
std::atomic<std::uint64_t> g_unreported{0};

void write_all(int fd, const char* p, std::size_t left) {
  while (left > 0) {
    ssize_t n = ::write(fd, p, left);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return;
    p += n;
    left -= static_cast<std::size_t>(n);
  }
}

// One write to the pipe; lines up to PIPE_BUF bytes go in whole or not at all.
bool try_enqueue(const std::string& line) {
  for (;;) {
    ssize_t n = ::write(g_pipe_w, line.data(), line.size());
    if (n >= 0) return true;
    if (errno != EINTR) return false;
  }
}

const char* name(Level l) {
  switch (l) {
    case Level::debug:
      return "debug";
    case Level::info:
      return "info";
    case Level::warn:
      return "warn";
    case Level::error:
      return "error";
    default:
      return "off";
  }
}

void json_escape(std::string& out, std::string_view s) {
  for (char c : s) {
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\t':
        out += "\\t";
        break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          out += fmt::format("\\u{:04x}", static_cast<unsigned>(c));
        } else {
          out += c;
        }
    }
  }
}
// A logfmt-style `key=value` word: a lower-case key, a value without spaces.
bool is_field(std::string_view word, std::size_t& eq) {
  eq = word.find('=');
  if (eq == 0 || eq == std::string_view::npos || eq + 1 == word.size()) return false;
  for (std::size_t i = 0; i < eq; ++i) {
    char c = word[i];
    if (!((c >= 'a' && c <= 'z') || c == '_' || (i > 0 && c >= '0' && c <= '9'))) return false;
  }
  return true;
}

// Text lines keep one event per line whatever a peer put into a name: control characters are
// written as \xNN.
void text_escape(std::string& out, std::string_view s) {
  for (char c : s) {
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) {
      out += fmt::format("\\x{:02x}", static_cast<unsigned>(static_cast<unsigned char>(c)));
    } else {
      out += c;
    }
  }
}
}  // namespace

std::string format_line(Level l, Format f, std::string_view ts, std::string_view msg) {
  std::string line;
  line.reserve(msg.size() + 64);
  if (f == Format::json) {
    // The words of the message go to "msg"; its key=value words become fields of their own.
    std::string text, fields;
    std::size_t pos = 0;
    while (pos <= msg.size()) {
      auto sp = msg.find(' ', pos);
      std::string_view word =
          msg.substr(pos, sp == std::string_view::npos ? std::string_view::npos : sp - pos);
      std::size_t eq = 0;
      if (is_field(word, eq)) {
        fields += ",\"";
        fields += word.substr(0, eq);
        fields += "\":\"";
        json_escape(fields, word.substr(eq + 1));
        fields += '"';
      } else if (!word.empty()) {
        if (!text.empty()) text += ' ';
        text += word;
      }
      if (sp == std::string_view::npos) break;
      pos = sp + 1;
    }
    line += fmt::format("{{\"ts\":\"{}\",\"level\":\"{}\",\"msg\":\"", ts, name(l));
    json_escape(line, text);
    line += '"';
    line += fields;
    line += "}\n";
  } else {
    line += fmt::format("{} {:5} ", ts, name(l));
    text_escape(line, msg);
    line += '\n';
  }
  return line;
}

void set_level(Level l) {
  g_level = l;
}
void set_format(Format f) {
  g_format = f;
}
Level level() {
  return g_level;
}

bool parse_level(std::string_view s, Level& out) {
  for (Level l : {Level::debug, Level::info, Level::warn, Level::error, Level::off}) {
    if (s == name(l)) {
      out = l;
      return true;
    }
  }
  return false;
}

void write(Level l, std::string_view msg) {
  auto now = std::chrono::system_clock::now();
  auto secs = std::chrono::system_clock::to_time_t(now);
  auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch()) % 1000;
  std::tm tm{};
  gmtime_r(&secs, &tm);
  char ts[32];
  std::strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%S", &tm);
  std::string line =
      format_line(l, g_format, fmt::format("{}.{:03d}Z", ts, static_cast<int>(ms.count())), msg);
  if (g_pipe_w < 0) {
    // One write(2) per line keeps lines whole when several processes share stderr.
    write_all(STDERR_FILENO, line.data(), line.size());
    return;
  }
  if (line.size() > PIPE_BUF) {
    line.resize(PIPE_BUF - 4);
    line += "...\n";
  }
  if (auto n = g_unreported.exchange(0, std::memory_order_relaxed); n > 0) {
    auto report = format_line(Level::warn, g_format,
                              fmt::format("{}.{:03d}Z", ts, static_cast<int>(ms.count())),
                              fmt::format("log: {} lines dropped: stderr is not keeping up", n));
    if (!try_enqueue(report)) {
      g_unreported.fetch_add(n + 1, std::memory_order_relaxed);
      g_dropped.fetch_add(1, std::memory_order_relaxed);
      return;
    }
  }
  if (!try_enqueue(line)) {
    g_unreported.fetch_add(1, std::memory_order_relaxed);
    g_dropped.fetch_add(1, std::memory_order_relaxed);
  }
}

std::string start_async(std::size_t buffer_bytes) {
  if (g_pipe_w >= 0) return "";
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) return std::string("pipe: ") + std::strerror(errno);
  // The kernel rounds up to a power-of-two number of pages and refuses more than
  // /proc/sys/fs/pipe-max-size to unprivileged processes; the default 64 KiB stays then.
  if (buffer_bytes > 0) ::fcntl(fds[1], F_SETPIPE_SZ, static_cast<int>(buffer_bytes));
  ::fcntl(fds[1], F_SETFL, ::fcntl(fds[1], F_GETFL) | O_NONBLOCK);
  g_pipe_r = fds[0];
  std::promise<void> drained;
  g_drained = drained.get_future();
  g_drainer = std::thread([r = fds[0], drained = std::move(drained)]() mutable {
    char buf[65536];
    for (;;) {
      ssize_t n = ::read(r, buf, sizeof buf);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) break;
      write_all(STDERR_FILENO, buf, static_cast<std::size_t>(n));
    }
    drained.set_value();
  });
  g_pipe_w = fds[1];
  return "";
}

void stop_async() {
  if (g_pipe_w < 0) return;
  int w = std::exchange(g_pipe_w, -1);
  ::close(w);  // the drainer writes what is left, reads EOF and ends
  // ...unless stderr itself is stuck (nobody reads it): then exit without the rest rather than
  // hang in write(2) forever.
  if (g_drained.wait_for(std::chrono::seconds(2)) == std::future_status::ready) {
    g_drainer.join();
    ::close(std::exchange(g_pipe_r, -1));
  } else {
    g_drainer.detach();
  }
}

std::uint64_t dropped_lines() {
  return g_dropped.load(std::memory_order_relaxed);
}

}  // namespace dispatchd::log
