#pragma once
// Logging: one line per event on stderr, human-readable or JSON. Level filtering happens before
// formatting so that debug lines cost nothing in production.

#include <fmt/format.h>

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
