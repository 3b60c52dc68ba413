#include "dispatchd/app/duration.hpp"

#include <cmath>
#include <cstdint>
#include <limits>

namespace dispatchd::app {

std::optional<std::chrono::nanoseconds> parse_duration(std::string_view s) {
  if (s.empty()) return std::nullopt;
  bool negative = false;
  if (s[0] == '-' || s[0] == '+') {
    negative = s[0] == '-';
    s.remove_prefix(1);
  }
  if (s == "0") return std::chrono::nanoseconds(0);
  if (s.empty()) return std::nullopt;
  long double total = 0;
  while (!s.empty()) {
    // number: digits [. digits]
    std::size_t i = 0;
    long double whole = 0, frac = 0, scale = 1;
    bool digits = false;
    while (i < s.size() && s[i] >= '0' && s[i] <= '9') {
      whole = whole * 10 + (s[i] - '0');
      ++i;
      digits = true;
    }
    if (i < s.size() && s[i] == '.') {
      ++i;
      while (i < s.size() && s[i] >= '0' && s[i] <= '9') {
        frac = frac * 10 + (s[i] - '0');
        scale *= 10;
        ++i;
        digits = true;
      }
    }
    if (!digits) return std::nullopt;
    s.remove_prefix(i);
    std::size_t u = 0;
    while (u < s.size() && !(s[u] >= '0' && s[u] <= '9') && s[u] != '.')
      ++u;
    std::string_view unit = s.substr(0, u);
    s.remove_prefix(u);
    long double mult;
    if (unit == "ns") {
      mult = 1;
    } else if (unit == "us" || unit == "\xC2\xB5s" || unit == "\xCE\xBCs") {
      mult = 1e3;
    } else if (unit == "ms") {
      mult = 1e6;
    } else if (unit == "s") {
      mult = 1e9;
    } else if (unit == "m") {
      mult = 60e9;
    } else if (unit == "h") {
      mult = 3600e9;
    } else {
      return std::nullopt;  // missing or unknown unit
    }
    total += (whole + frac / scale) * mult;
    if (total > static_cast<long double>(std::numeric_limits<std::int64_t>::max())) {
      return std::nullopt;
    }
  }
  auto ns = static_cast<std::int64_t>(std::llround(total));
  return std::chrono::nanoseconds(negative ? -ns : ns);
}

std::string format_duration(std::chrono::nanoseconds d) {
  std::int64_t n = d.count();
  if (n == 0) return "0s";
  std::string sign = n < 0 ? "-" : "";
  std::uint64_t u = n < 0 ? static_cast<std::uint64_t>(-n) : static_cast<std::uint64_t>(n);
  auto frac = [](std::uint64_t v, std::uint64_t div, const char* unit) {
    std::string s = std::to_string(v / div);
    std::uint64_t r = v % div;
    if (r) {
      std::string f = std::to_string(r + div).substr(1);
      while (!f.empty() && f.back() == '0')
        f.pop_back();
      s += "." + f;
    }
    return s + unit;
  };
  if (u < 1000) return sign + std::to_string(u) + "ns";
  if (u < 1000000) return sign + frac(u, 1000, "µs");
  if (u < 1000000000) return sign + frac(u, 1000000, "ms");
  std::string out;
  std::uint64_t h = u / 3600000000000ULL;
  u %= 3600000000000ULL;
  std::uint64_t m = u / 60000000000ULL;
  u %= 60000000000ULL;
  if (h) out += std::to_string(h) + "h";
  if (h || m) out += std::to_string(m) + "m";
  out += frac(u, 1000000000ULL, "s");
  return sign + out;
}

}  // namespace dispatchd::app
