#include "dispatchd/grpc/metadata.hpp"

#include <gtest/gtest.h>

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace dispatchd::grpc {
namespace {

using namespace std::chrono_literals;
using std::chrono::nanoseconds;

std::string all_byte_values() {
  std::string s;
  for (int c = 0; c < 256; ++c)
    s += static_cast<char>(c);
  return s;
}

// ------------------------------------------------------------------------------------------
// grpc-timeout

TEST(GrpcTimeoutTest, ParsesEveryUnit) {
  const std::vector<std::pair<std::string_view, nanoseconds>> cases = {
      {"7H", 7h}, {"7M", 7min}, {"7S", 7s}, {"7m", 7ms}, {"7u", 7us}, {"7n", 7ns}};
  for (auto [text, want] : cases) {
    EXPECT_EQ(parse_grpc_timeout(text), want) << text;
  }
}

TEST(GrpcTimeoutTest, ParsesZero) {
  // format_grpc_timeout emits "0n" for an expired deadline, so it must parse.
  EXPECT_EQ(parse_grpc_timeout("0n"), 0ns);
}

TEST(GrpcTimeoutTest, AcceptsEightDigits) {
  EXPECT_EQ(parse_grpc_timeout("99999999S"), 99999999s);
  EXPECT_EQ(parse_grpc_timeout("12345678m"), 12345678ms);
}

TEST(GrpcTimeoutTest, AcceptsLeadingZeros) {
  EXPECT_EQ(parse_grpc_timeout("00000005S"), 5s);
}

TEST(GrpcTimeoutTest, RejectsNineDigits) {
  EXPECT_EQ(parse_grpc_timeout("100000000n"), std::nullopt);
  EXPECT_EQ(parse_grpc_timeout("000000001S"), std::nullopt);
}

TEST(GrpcTimeoutTest, RejectsEmpty) {
  EXPECT_EQ(parse_grpc_timeout(""), std::nullopt);
}

TEST(GrpcTimeoutTest, RejectsMissingUnit) {
  EXPECT_EQ(parse_grpc_timeout("5"), std::nullopt);
  EXPECT_EQ(parse_grpc_timeout("12345678"), std::nullopt);
}

TEST(GrpcTimeoutTest, RejectsUnitWithoutDigits) {
  EXPECT_EQ(parse_grpc_timeout("S"), std::nullopt);
  EXPECT_EQ(parse_grpc_timeout("n"), std::nullopt);
}

TEST(GrpcTimeoutTest, RejectsUnknownUnit) {
  for (std::string_view v : {"5s", "5h", "5x", "5D", "5U", "5N"}) {
    EXPECT_EQ(parse_grpc_timeout(v), std::nullopt) << v;
  }
}

TEST(GrpcTimeoutTest, RejectsNonDigits) {
  for (std::string_view v : {"1a5S", " 5S", "5 S", "1.5S", "+5S", "0x5S"}) {
    EXPECT_EQ(parse_grpc_timeout(v), std::nullopt) << v;
  }
}

TEST(GrpcTimeoutTest, RejectsNegative) {
  EXPECT_EQ(parse_grpc_timeout("-5S"), std::nullopt);
  EXPECT_EQ(parse_grpc_timeout("-1n"), std::nullopt);
}

TEST(GrpcTimeoutTest, ParsesLargestMinutesWithoutOverflow) {
  EXPECT_EQ(parse_grpc_timeout("99999999M"), std::chrono::minutes(99999999));
}

TEST(GrpcTimeoutTest, ParsesLargestHoursThatFitInNanoseconds) {
  EXPECT_EQ(parse_grpc_timeout("2562047H"), std::chrono::hours(2562047));
}

// 99999999H does not fit in int64 nanoseconds; grpc-go's decodeTimeout clamps it to
// math.MaxInt64 rather than overflowing. grpc-go itself sends "2562048H" for the largest
// time.Duration, so this is reachable from a real client.
TEST(GrpcTimeoutTest, ClampsHoursBeyondNanosecondRangeToMaximum) {
  EXPECT_EQ(parse_grpc_timeout("2562048H"), nanoseconds::max());
  EXPECT_EQ(parse_grpc_timeout("99999999H"), nanoseconds::max());
}

TEST(GrpcTimeoutTest, FormatsInFinestUnitThatFitsEightDigits) {
  EXPECT_EQ(format_grpc_timeout(1ns), "1n");
  EXPECT_EQ(format_grpc_timeout(99999999ns), "99999999n");
  EXPECT_EQ(format_grpc_timeout(100000000ns), "100000u");
  EXPECT_EQ(format_grpc_timeout(1s), "1000000u");
  EXPECT_EQ(format_grpc_timeout(99999999ms), "99999999m");
  EXPECT_EQ(format_grpc_timeout(100000s), "100000S");
}

TEST(GrpcTimeoutTest, FormatsByRoundingUpSoTheDeadlineIsNeverShortened) {
  EXPECT_EQ(format_grpc_timeout(100000001ns), "100001u");
}

TEST(GrpcTimeoutTest, FormatsNonPositiveAsZero) {
  EXPECT_EQ(format_grpc_timeout(0ns), "0n");
  EXPECT_EQ(format_grpc_timeout(-5s), "0n");
}

// grpc-go's encodeTimeout gives "2562047H" and "2562048H" here; the rounding-up division must
// not overflow int64 on the way.
TEST(GrpcTimeoutTest, FormatsLongestHoursWithoutOverflow) {
  EXPECT_EQ(format_grpc_timeout(std::chrono::hours(2562047)), "2562047H");
}

TEST(GrpcTimeoutTest, FormatsMaximumDurationWithoutOverflow) {
  EXPECT_EQ(format_grpc_timeout(nanoseconds::max()), "2562048H");
}

// 1, 10, ..., 10^18: every power of ten that fits in int64.
std::vector<std::int64_t> powers_of_ten() {
  std::vector<std::int64_t> out{1};
  while (out.size() < 19)
    out.push_back(out.back() * 10);
  return out;
}

nanoseconds unit_of(const std::string& formatted) {
  switch (formatted.back()) {
    case 'H':
      return 1h;
    case 'M':
      return 1min;
    case 'S':
      return 1s;
    case 'm':
      return 1ms;
    case 'u':
      return 1us;
    default:
      return 1ns;
  }
}

TEST(GrpcTimeoutTest, FormatRoundTripsToAtLeastTheDurationAndWithinOneUnit) {
  std::vector<nanoseconds> durations = {1ns,    999ns, 12345678ns, 99999999ns, 100000001ns,
                                        1500ms, 90s,   1h,         1h + 1ns,   27h + 3min + 7ns};
  // Powers of ten times a few mantissas, up to 7e18ns (just under the int64 limit).
  for (std::int64_t p : powers_of_ten()) {
    for (std::int64_t m : {1, 3, 7}) {
      durations.push_back(nanoseconds(p * m));
      durations.push_back(nanoseconds(p * m + 1));
    }
  }
  for (nanoseconds d : durations) {
    std::string text = format_grpc_timeout(d);
    SCOPED_TRACE(std::to_string(d.count()) + "ns -> " + text);
    EXPECT_LE(text.size(), 9u);
    auto back = parse_grpc_timeout(text);
    ASSERT_TRUE(back.has_value());
    EXPECT_GE(*back, d);
    EXPECT_LT(*back - d, unit_of(text));
  }
}

// ------------------------------------------------------------------------------------------
// grpc-message percent-encoding

TEST(PercentEncodeTest, LeavesPrintableAsciiUnchangedExceptPercent) {
  std::string printable;
  for (char c = 0x20; c <= 0x7e; ++c) {
    if (c != '%') printable += c;
  }
  EXPECT_EQ(percent_encode(printable), printable);
}

TEST(PercentEncodeTest, EncodesPercentAs25) {
  EXPECT_EQ(percent_encode("100%"), "100%25");
  EXPECT_EQ(percent_encode("%%"), "%25%25");
}

TEST(PercentEncodeTest, EncodesNonAsciiUtf8BytesAsUpperCaseHex) {
  EXPECT_EQ(percent_encode("h\xC3\xA9llo"), "h%C3%A9llo");
  EXPECT_EQ(percent_encode("\xE2\x82\xAC"), "%E2%82%AC");
  EXPECT_EQ(percent_encode("\xFF"), "%FF");
}

TEST(PercentEncodeTest, EncodesControlCharactersAsUpperCaseHex) {
  EXPECT_EQ(percent_encode(std::string_view("\0", 1)), "%00");
  EXPECT_EQ(percent_encode("a\tb\r\nc"), "a%09b%0D%0Ac");
  EXPECT_EQ(percent_encode("\x1f\x7f"), "%1F%7F");
}

TEST(PercentEncodeTest, EncodesEveryByteToPrintableAscii) {
  for (char c : percent_encode(all_byte_values())) {
    EXPECT_TRUE(c >= 0x20 && c <= 0x7e) << static_cast<int>(static_cast<unsigned char>(c));
  }
}

TEST(PercentDecodeTest, InvertsEncodeForAllByteValues) {
  const std::string bytes = all_byte_values();
  EXPECT_EQ(percent_decode(percent_encode(bytes)), bytes);
}

TEST(PercentDecodeTest, InvertsEncodeForUtf8Message) {
  const std::string msg = "d\xC3\xA9j\xC3\xA0 vu: 100% \xE2\x9C\x93\n";
  EXPECT_EQ(percent_decode(percent_encode(msg)), msg);
}

TEST(PercentDecodeTest, DecodesLowerCaseHex) {
  EXPECT_EQ(percent_decode("%c3%a9"), "\xC3\xA9");
}

TEST(PercentDecodeTest, DecodesEscapeAtEndOfString) {
  EXPECT_EQ(percent_decode("abc%41"), "abcA");
}

TEST(PercentDecodeTest, LeavesMalformedEscapesAsTheyAre) {
  for (std::string_view s : {"%", "%G1", "abc%2", "%1", "%zz", "100%", "%4G"}) {
    EXPECT_EQ(percent_decode(s), s) << s;
  }
}

TEST(PercentDecodeTest, KeepsLonePercentAndDecodesTheEscapeAfterIt) {
  // grpc-go's decodeGrpcMessage: "%%41" -> "%A".
  EXPECT_EQ(percent_decode("%%41"), "%A");
}

// ------------------------------------------------------------------------------------------
// base64 for "-bin" metadata

const std::vector<std::pair<std::string_view, std::string_view>> kRfc4648Padded = {
    {"", ""},
    {"f", "Zg=="},
    {"fo", "Zm8="},
    {"foo", "Zm9v"},
    {"foob", "Zm9vYg=="},
    {"fooba", "Zm9vYmE="},
    {"foobar", "Zm9vYmFy"}};

std::string strip_padding(std::string s) {
  while (!s.empty() && s.back() == '=')
    s.pop_back();
  return s;
}

TEST(Base64Test, DecodesRfc4648VectorsPadded) {
  for (auto [plain, encoded] : kRfc4648Padded) {
    EXPECT_EQ(base64_decode(encoded), std::string(plain)) << encoded;
  }
}

TEST(Base64Test, DecodesRfc4648VectorsUnpadded) {
  for (auto [plain, encoded] : kRfc4648Padded) {
    std::string unpadded = strip_padding(std::string(encoded));
    EXPECT_EQ(base64_decode(unpadded), std::string(plain)) << unpadded;
  }
}

// The gRPC spec lets a sender pad or not (it recommends not); either way the alphabet and
// bit layout are RFC 4648's.
TEST(Base64Test, EncodesRfc4648VectorsWithOrWithoutPadding) {
  for (auto [plain, encoded] : kRfc4648Padded) {
    std::string got = base64_encode(plain);
    EXPECT_TRUE(got == encoded || got == strip_padding(std::string(encoded)))
        << plain << " -> " << got;
  }
}

TEST(Base64Test, RejectsCharactersOutsideStandardAlphabet) {
  for (std::string_view s : {"Zm9v!A==", "Zm9-", "Zm9_", "Zm 9v", "Zg=a", "Zg==Zg=="}) {
    EXPECT_EQ(base64_decode(s), std::nullopt) << s;
  }
}

TEST(Base64Test, RejectsLengthOneModFour) {
  for (std::string_view s : {"Z", "Zm9vY", "Zm9vYmFyZ"}) {
    EXPECT_EQ(base64_decode(s), std::nullopt) << s;
  }
}

// grpc-go's decodeBinHeader uses StdEncoding when len%4 == 0 and RawStdEncoding otherwise, so
// padding is accepted only when it completes the final quantum.
TEST(Base64Test, RejectsPaddingThatDoesNotCompleteTheFinalQuantum) {
  for (std::string_view s : {"=", "Zg=", "Zg===", "Zm9v=", "Zm9v===="}) {
    EXPECT_EQ(base64_decode(s), std::nullopt) << s;
  }
}

TEST(Base64Test, RoundTripsAllByteValues) {
  const std::string bytes = all_byte_values();
  EXPECT_EQ(base64_decode(base64_encode(bytes)), bytes);
}

TEST(Base64Test, RoundTripsEveryLengthUnpadded) {
  const std::string bytes = all_byte_values();
  for (std::size_t n = 0; n <= bytes.size(); ++n) {
    std::string prefix = bytes.substr(0, n);
    EXPECT_EQ(base64_decode(strip_padding(base64_encode(prefix))), prefix) << "length " << n;
  }
}

}  // namespace
}  // namespace dispatchd::grpc
