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
