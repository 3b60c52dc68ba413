#include "dispatchd/grpc/metadata.hpp"

#include <array>
#include <cstdint>
#include <limits>

namespace dispatchd::grpc {

std::optional<std::chrono::nanoseconds> parse_grpc_timeout(std::string_view v) {
  if (v.size() < 2 || v.size() > 9) return std::nullopt;
  std::int64_t n = 0;
  for (char c : v.substr(0, v.size() - 1)) {
    if (c < '0' || c > '9') return std::nullopt;
    n = n * 10 + (c - '0');
  }
  std::int64_t unit_ns;
  switch (v.back()) {
    case 'H':
      unit_ns = 3600LL * 1000000000LL;
      break;
    case 'M':
      unit_ns = 60LL * 1000000000LL;
      break;
    case 'S':
      unit_ns = 1000000000LL;
      break;
    case 'm':
      unit_ns = 1000000LL;
      break;
    case 'u':
      unit_ns = 1000LL;
      break;
    case 'n':
      unit_ns = 1;
      break;
    default:
      return std::nullopt;
  }
  // Like grpc-go: a value beyond the nanosecond range means "as long as can be said".
  if (n > std::numeric_limits<std::int64_t>::max() / unit_ns) {
    return std::chrono::nanoseconds::max();
  }
  return std::chrono::nanoseconds(n * unit_ns);
}

std::string format_grpc_timeout(std::chrono::nanoseconds d) {
  std::int64_t n = d.count();
  if (n < 0) n = 0;
  // Pick the finest unit whose value fits in 8 digits.
  static constexpr std::array<std::pair<std::int64_t, char>, 6> units = {{{1, 'n'},
                                                                          {1000, 'u'},
                                                                          {1000000, 'm'},
                                                                          {1000000000, 'S'},
                                                                          {60000000000, 'M'},
                                                                          {3600000000000, 'H'}}};
  for (auto [div, unit] : units) {
    std::int64_t v = n / div + (n % div != 0 ? 1 : 0);  // round up without overflow
    if (v < 100000000) return std::to_string(v) + unit;
  }
  return "99999999H";
}

std::string percent_encode(std::string_view s) {
  static constexpr char hex[] = "0123456789ABCDEF";
  std::string out;
  out.reserve(s.size());
  for (unsigned char c : s) {
    if (c >= 0x20 && c <= 0x7e && c != '%') {
      out += static_cast<char>(c);
    } else {
      out += '%';
      out += hex[c >> 4];
      out += hex[c & 15];
    }
  }
  return out;
}

namespace {
int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}
}  // namespace

std::string percent_decode(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (std::size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '%' && i + 2 < s.size()) {
      int hi = hex_value(s[i + 1]), lo = hex_value(s[i + 2]);
      if (hi >= 0 && lo >= 0) {
        out += static_cast<char>(hi * 16 + lo);
        i += 2;
        continue;
      }
    }
    out += s[i];
  }
  return out;
}

namespace {
constexpr char kB64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
int b64_value(char c) {
  if (c >= 'A' && c <= 'Z') return c - 'A';
  if (c >= 'a' && c <= 'z') return c - 'a' + 26;
  if (c >= '0' && c <= '9') return c - '0' + 52;
  if (c == '+') return 62;
  if (c == '/') return 63;
  return -1;
}
}  // namespace

std::optional<std::string> base64_decode(std::string_view s) {
  // Unpadded, or padded to a whole number of 4-character groups (as grpc-go accepts).
  std::size_t pad = 0;
  while (pad < s.size() && s[s.size() - 1 - pad] == '=')
    ++pad;
  if (pad > 0 && (pad > 2 || s.size() % 4 != 0)) return std::nullopt;
  s.remove_suffix(pad);
  if (s.size() % 4 == 1) return std::nullopt;
  std::string out;
  out.reserve(s.size() * 3 / 4);
  std::uint32_t acc = 0;
  int bits = 0;
  for (char c : s) {
    int v = b64_value(c);
    if (v < 0) return std::nullopt;
    acc = (acc << 6) | static_cast<std::uint32_t>(v);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out += static_cast<char>((acc >> bits) & 0xff);
    }
  }
  return out;
}

std::string base64_encode(std::string_view s) {
  std::string out;
  out.reserve((s.size() + 2) / 3 * 4);
  std::size_t i = 0;
  for (; i + 3 <= s.size(); i += 3) {
    std::uint32_t v = (std::uint32_t(static_cast<unsigned char>(s[i])) << 16) |
                      (std::uint32_t(static_cast<unsigned char>(s[i + 1])) << 8) |
                      std::uint32_t(static_cast<unsigned char>(s[i + 2]));
    out += kB64[(v >> 18) & 63];
    out += kB64[(v >> 12) & 63];
    out += kB64[(v >> 6) & 63];
    out += kB64[v & 63];
  }
  std::size_t rest = s.size() - i;
  if (rest > 0) {
    std::uint32_t v = std::uint32_t(static_cast<unsigned char>(s[i])) << 16;
    if (rest == 2) v |= std::uint32_t(static_cast<unsigned char>(s[i + 1])) << 8;
    out += kB64[(v >> 18) & 63];
    out += kB64[(v >> 12) & 63];
    out += rest == 2 ? kB64[(v >> 6) & 63] : '=';
    out += '=';
  }
  return out;
}

}  // namespace dispatchd::grpc
