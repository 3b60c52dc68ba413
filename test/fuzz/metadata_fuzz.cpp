// Metadata and duration parsers on arbitrary strings, with their round trips.
//
// The whole input is the string under test. Its first 8 bytes, read as an integer, are also
// used as a duration for the format-then-parse round trips.

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <optional>
#include <string>
#include <string_view>

#include "dispatchd/app/duration.hpp"
#include "dispatchd/grpc/metadata.hpp"

namespace {

using std::chrono::nanoseconds;
namespace grpc = dispatchd::grpc;
namespace app = dispatchd::app;

void check(bool ok, const char* what, std::string_view input) {
  if (ok) return;
  std::fprintf(stderr, "metadata_fuzz: invariant violated: %s\ninput (%zu bytes): \"", what,
               input.size());
  for (unsigned char c : input) {
    if (c >= 0x20 && c < 0x7f && c != '"' && c != '\\') {
      std::fputc(c, stderr);
    } else {
      std::fprintf(stderr, "\\x%02x", c);
    }
  }
  std::fprintf(stderr, "\"\n");
  std::abort();
}

// grpc-timeout, computed independently: 1..8 digits and a unit; values past the int64
// nanosecond range saturate.
std::optional<nanoseconds> reference_timeout(std::string_view v) {
  if (v.size() < 2 || v.size() > 9) return std::nullopt;
  __int128 n = 0;
  for (char c : v.substr(0, v.size() - 1)) {
    if (c < '0' || c > '9') return std::nullopt;
    n = n * 10 + (c - '0');
  }
  __int128 unit;
  switch (v.back()) {
    case 'H':
      unit = __int128{3600} * 1000000000;
      break;
    case 'M':
      unit = __int128{60} * 1000000000;
      break;
    case 'S':
      unit = 1000000000;
      break;
    case 'm':
      unit = 1000000;
      break;
    case 'u':
      unit = 1000;
      break;
    case 'n':
      unit = 1;
      break;
    default:
      return std::nullopt;
  }
  __int128 ns = n * unit;
  if (ns > std::numeric_limits<std::int64_t>::max()) return nanoseconds::max();
  return nanoseconds(static_cast<std::int64_t>(ns));
}

std::int64_t unit_of(char c) {
  switch (c) {
    case 'H':
      return 3600LL * 1000000000LL;
    case 'M':
      return 60LL * 1000000000LL;
    case 'S':
      return 1000000000LL;
    case 'm':
      return 1000000LL;
    case 'u':
      return 1000LL;
    default:
      return 1;
  }
}

void check_grpc_timeout(std::string_view s) {
  check(grpc::parse_grpc_timeout(s) == reference_timeout(s), "parse_grpc_timeout", s);
}

void check_timeout_round_trip(std::int64_t n, std::string_view input) {
  // format(d) rounds up to the finest unit whose value fits in 8 digits: parsing it back gives
  // d or a little more, never less, and never more than one unit above.
  if (n < 0) n = n == std::numeric_limits<std::int64_t>::min() ? 0 : -n;
  const nanoseconds d(n);
  const std::string f = grpc::format_grpc_timeout(d);
  check(f.size() >= 2 && f.size() <= 9, "format_grpc_timeout: 1..8 digits and a unit", input);
  auto back = grpc::parse_grpc_timeout(f);
  check(back.has_value(), "format_grpc_timeout output parses", input);
  check(*back >= d, "format_grpc_timeout never rounds down", input);
  check(__int128{back->count()} - d.count() < unit_of(f.back()),
        "format_grpc_timeout rounds up by less than one unit", input);
}

void check_percent(std::string_view s) {
  const std::string enc = grpc::percent_encode(s);
  for (unsigned char c : enc)
    check(c >= 0x20 && c <= 0x7e, "percent_encode output is printable ASCII", s);
  check(grpc::percent_decode(enc) == s, "percent_decode(percent_encode(x)) == x", s);
  const std::string dec = grpc::percent_decode(s);
  check(dec.size() <= s.size(), "percent_decode never grows", s);
  if (s.find('%') == std::string_view::npos) check(dec == s, "no '%': decoding is identity", s);
}

void check_base64(std::string_view s) {
  const std::string enc = grpc::base64_encode(s);
  check(enc.size() == (s.size() + 2) / 3 * 4, "base64_encode length", s);
  auto dec = grpc::base64_decode(enc);
  check(dec && *dec == s, "base64_decode(base64_encode(x)) == x", s);
  std::string_view unpadded(enc);
  while (!unpadded.empty() && unpadded.back() == '=')
    unpadded.remove_suffix(1);
  auto dec2 = grpc::base64_decode(unpadded);
  check(dec2 && *dec2 == s, "unpadded base64 decodes too", s);

  // Arbitrary text: whatever decodes has the size its characters imply, and re-encoding it
  // gives text of the same length (the decoder may accept non-zero trailing bits).
  if (auto v = grpc::base64_decode(s)) {
    std::string_view body = s;
    while (!body.empty() && body.back() == '=')
      body.remove_suffix(1);
    check(v->size() == body.size() * 6 / 8, "base64_decode output size", s);
    std::string again = grpc::base64_encode(*v);
    while (!again.empty() && again.back() == '=')
      again.pop_back();
    check(again.size() == body.size(), "re-encoded length", s);
    auto v2 = grpc::base64_decode(again);
    check(v2 && *v2 == *v, "decode(encode(decode(x))) == decode(x)", s);
  }
}

void check_duration(std::string_view s) {
  auto d = app::parse_duration(s);
  if (d) {
    const std::string f = app::format_duration(*d);
    auto back = app::parse_duration(f);
    check(back.has_value(), "format_duration output parses", s);
    check(*back == *d, "parse_duration(format_duration(d)) == d", s);
  }
  // A sign in front: "+x" is x, "-x" is -x (and only -2^63 has no positive counterpart).
  if (!s.empty() && s[0] != '+' && s[0] != '-') {
    std::string plus = "+" + std::string(s), minus = "-" + std::string(s);
    check(app::parse_duration(plus) == d, "parse_duration(\"+x\") == parse_duration(x)", s);
    auto neg = app::parse_duration(minus);
    if (d) {
      check(neg.has_value() && *neg == -*d, "parse_duration(\"-x\") == -parse_duration(x)", s);
    } else if (neg) {
      check(neg->count() == std::numeric_limits<std::int64_t>::min(),
            "only -2^63 parses with a minus sign alone", s);
    }
  }
}

void check_duration_round_trip(std::int64_t n, std::string_view input) {
  const nanoseconds d(n);
  auto back = app::parse_duration(app::format_duration(d));
  check(back.has_value() && *back == d, "parse_duration(format_duration(n)) == n", input);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view s(reinterpret_cast<const char*>(data), size);
  check_grpc_timeout(s);
  check_percent(s);
  check_base64(s);
  check_duration(s);
  if (size >= 8) {
    std::int64_t n;
    std::memcpy(&n, data, sizeof n);
    check_timeout_round_trip(n, s);
    check_duration_round_trip(n, s);
  }
  return 0;
}
