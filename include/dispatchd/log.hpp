#pragma once
// Logging: one line per event on stderr, human-readable or JSON. Level filtering happens before
// formatting so that debug lines cost nothing in production.

#include <fmt/format.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace dispatchd::log {

enum class Level { debug = 0, info = 1, warn = 2, error = 3, off = 4 };
enum class Format { text, json };

void set_level(Level l);
void set_format(Format f);
Level level();
bool parse_level(std::string_view s, Level& out);
void write(Level l, std::string_view msg);

// Moves writing to stderr off the calling threads: lines go into a pipe of `buffer_bytes` that a
// thread of its own drains into stderr, so a stderr nobody reads (a stuck terminal, a full
// container log pipe) never blocks the io thread. A line that does not fit is dropped and counted;
// the next line that fits is preceded by one saying how many were dropped. Lines longer than the
// pipe's atomic write size (4 KiB) are cut there. Without it (tests, tools) lines are written
// synchronously. Returns an error message, or "" on success.
std::string start_async(std::size_t buffer_bytes);
// Writes what is buffered, then goes back to synchronous writes. Call at exit.
void stop_async();
// Lines dropped because the buffer was full.
std::uint64_t dropped_lines();
// One line as write() prints it. JSON: {"ts","level","msg"} plus one field per logfmt-style
// `key=value` word of the message (session lines: node, session, peer, reason, duration). Text:
// the message as is, control characters escaped.
std::string format_line(Level l, Format f, std::string_view ts, std::string_view msg);

template <class... Args>
void emit(Level l, fmt::format_string<Args...> fmt, Args&&... args) {
  if (l < level()) return;
  write(l, fmt::format(fmt, std::forward<Args>(args)...));
}

template <class... Args>
void debug(fmt::format_string<Args...> fmt, Args&&... args) {
  emit(Level::debug, fmt, std::forward<Args>(args)...);
}
template <class... Args>
void info(fmt::format_string<Args...> fmt, Args&&... args) {
  emit(Level::info, fmt, std::forward<Args>(args)...);
}
template <class... Args>
void warn(fmt::format_string<Args...> fmt, Args&&... args) {
  emit(Level::warn, fmt, std::forward<Args>(args)...);
}
template <class... Args>
void error(fmt::format_string<Args...> fmt, Args&&... args) {
  emit(Level::error, fmt, std::forward<Args>(args)...);
}

}  // namespace dispatchd::log
