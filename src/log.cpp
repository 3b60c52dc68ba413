#include "dispatchd/log.hpp"

#include <unistd.h>

#include <chrono>
#include <ctime>
#include <string>

namespace dispatchd::log {
namespace {
Level g_level = Level::info;
Format g_format = Format::text;

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
}  // namespace

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
  std::string line;
  line.reserve(msg.size() + 64);
  if (g_format == Format::json) {
    line += fmt::format("{{\"ts\":\"{}.{:03d}Z\",\"level\":\"{}\",\"msg\":\"", ts,
                        static_cast<int>(ms.count()), name(l));
    json_escape(line, msg);
    line += "\"}\n";
  } else {
    line += fmt::format("{}.{:03d}Z {:5} {}\n", ts, static_cast<int>(ms.count()), name(l), msg);
  }
  // One write(2) per line keeps lines whole when several processes share stderr.
  const char* p = line.data();
  std::size_t left = line.size();
  while (left > 0) {
    ssize_t n = ::write(STDERR_FILENO, p, left);
    if (n <= 0) break;
    p += n;
    left -= static_cast<std::size_t>(n);
  }
}

}  // namespace dispatchd::log
