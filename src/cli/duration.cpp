#include "dispatchd/cli/duration.hpp"

#include <cstdint>
#include <limits>

namespace dispatchd::cli {

std::optional<std::chrono::nanoseconds> parse_duration(std::string_view s) {
  // Follows Go's time.ParseDuration: [-+]?([0-9]*(\.[0-9]*)?[a-z]+)+, each fraction truncated
  // to whole nanoseconds, magnitude at most 2^63 (2^63 - 1 when positive).
  constexpr std::uint64_t kLimit = std::uint64_t{1} << 63;
  bool negative = false;
  if (!s.empty() && (s[0] == '-' || s[0] == '+')) {
    negative = s[0] == '-';
    s.remove_prefix(1);
  }
  if (s == "0") return std::chrono::nanoseconds(0);
  if (s.empty()) return std::nullopt;
  std::uint64_t total = 0;
  auto is_digit = [](char c) { return c >= '0' && c <= '9'; };
  while (!s.empty()) {
    if (!(s[0] == '.' || is_digit(s[0]))) return std::nullopt;
    std::uint64_t whole = 0;
    bool pre = false;
    while (!s.empty() && is_digit(s[0])) {
      if (whole > (kLimit - 1) / 10) return std::nullopt;  // overflow
      whole = whole * 10 + static_cast<std::uint64_t>(s[0] - '0');
      if (whole > kLimit) return std::nullopt;
      s.remove_prefix(1);
      pre = true;
    }
    std::uint64_t frac = 0;
    double scale = 1;
    bool post = false;
    if (!s.empty() && s[0] == '.') {
      s.remove_prefix(1);
      bool overflow = false;
      while (!s.empty() && is_digit(s[0])) {
        if (!overflow) {
          if (frac > (kLimit - 1) / 10) {
            overflow = true;  // later digits are ignored, as in Go
          } else {
            frac = frac * 10 + static_cast<std::uint64_t>(s[0] - '0');
            scale *= 10;
          }
        }
        s.remove_prefix(1);
        post = true;
      }
    }
    if (!pre && !post) return std::nullopt;
    std::size_t u = 0;
    while (u < s.size() && s[u] != '.' && !is_digit(s[u]))
      ++u;
    if (u == 0) return std::nullopt;  // missing unit
    std::string_view unit = s.substr(0, u);
    s.remove_prefix(u);
    std::uint64_t mult;
    if (unit == "ns") {
      mult = 1;
    } else if (unit == "us" || unit == "\xC2\xB5s" || unit == "\xCE\xBCs") {
      mult = 1000;
    } else if (unit == "ms") {
      mult = 1000000;
    } else if (unit == "s") {
      mult = 1000000000;
    } else if (unit == "m") {
      mult = 60ull * 1000000000;
    } else if (unit == "h") {
      mult = 3600ull * 1000000000;
    } else {
      return std::nullopt;
    }
    if (whole > kLimit / mult) return std::nullopt;
    std::uint64_t v = whole * mult;
    if (frac > 0) {
      v += static_cast<std::uint64_t>(static_cast<double>(frac) *
                                      (static_cast<double>(mult) / scale));
      if (v > kLimit) return std::nullopt;
    }
    total += v;
    if (total > kLimit) return std::nullopt;
  }
  if (negative) {
    return std::chrono::nanoseconds(total == kLimit ? std::numeric_limits<std::int64_t>::min()
                                                    : -static_cast<std::int64_t>(total));
  }
  if (total > kLimit - 1) return std::nullopt;
  return std::chrono::nanoseconds(static_cast<std::int64_t>(total));
}

std::string format_duration(std::chrono::nanoseconds d) {
  std::int64_t n = d.count();
  if (n == 0) return "0s";
  std::string sign = n < 0 ? "-" : "";
  // Negate in unsigned arithmetic: -INT64_MIN does not fit in int64.
  std::uint64_t u = n < 0 ? ~static_cast<std::uint64_t>(n) + 1 : static_cast<std::uint64_t>(n);
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

}  // namespace dispatchd::cli
