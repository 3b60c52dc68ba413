#include "dispatchd/cli/duration.hpp"

#include <gtest/gtest.h>

#include <chrono>
#include <cstdint>
#include <optional>
#include <string_view>
#include <vector>

// Expectations are Go's time.ParseDuration and time.Duration.String(), which is what Docker
// and SwarmKit users write and read.
namespace dispatchd::cli {
namespace {

using namespace std::chrono_literals;
using std::chrono::nanoseconds;

// ------------------------------------------------------------------------------------------
// parse_duration

TEST(ParseDurationTest, ParsesMilliseconds) {
  EXPECT_EQ(parse_duration("300ms"), 300ms);
}

TEST(ParseDurationTest, ParsesNegativeFractionalHours) {
  EXPECT_EQ(parse_duration("-1.5h"), -90min);
}

TEST(ParseDurationTest, ParsesHoursAndMinutes) {
  EXPECT_EQ(parse_duration("2h45m"), 165min);
}

TEST(ParseDurationTest, ParsesMinutesAndSeconds) {
  EXPECT_EQ(parse_duration("1m30s"), 90s);
}

TEST(ParseDurationTest, ParsesFractionalSeconds) {
  EXPECT_EQ(parse_duration("1.5s"), 1500ms);
}

TEST(ParseDurationTest, ParsesBareZero) {
  EXPECT_EQ(parse_duration("0"), 0ns);
}

TEST(ParseDurationTest, ParsesSignedZero) {
  EXPECT_EQ(parse_duration("-0"), 0ns);
  EXPECT_EQ(parse_duration("+0"), 0ns);
  EXPECT_EQ(parse_duration("0s"), 0ns);
}

TEST(ParseDurationTest, ParsesMicrosecondsWithMicroSign) {
  EXPECT_EQ(parse_duration("1\xC2\xB5s"), 1us);  // U+00B5 MICRO SIGN
}

TEST(ParseDurationTest, ParsesMicrosecondsWithGreekMu) {
  EXPECT_EQ(parse_duration("1\xCE\xBCs"), 1us);  // U+03BC GREEK SMALL LETTER MU
}

TEST(ParseDurationTest, ParsesMicrosecondsWithUs) {
  EXPECT_EQ(parse_duration("1us"), 1us);
}

TEST(ParseDurationTest, ParsesNanoseconds) {
  EXPECT_EQ(parse_duration("100ns"), 100ns);
}

TEST(ParseDurationTest, ParsesPlusSign) {
  EXPECT_EQ(parse_duration("+5s"), 5s);
}

TEST(ParseDurationTest, ParsesFractionWithoutLeadingDigits) {
  EXPECT_EQ(parse_duration(".5s"), 500ms);
}

TEST(ParseDurationTest, ParsesFractionWithoutTrailingDigits) {
  EXPECT_EQ(parse_duration("1.s"), 1s);
}

TEST(ParseDurationTest, ParsesEveryUnitInOneString) {
  EXPECT_EQ(parse_duration("1h2m3s4ms5us6ns"), 1h + 2min + 3s + 4ms + 5us + 6ns);
}

TEST(ParseDurationTest, ParsesUnitsInAnyOrder) {
  EXPECT_EQ(parse_duration("30s1m"), 90s);
}

TEST(ParseDurationTest, ParsesNanosecondPrecisionFraction) {
  EXPECT_EQ(parse_duration("1.000000001s"), 1s + 1ns);
}

// Go converts each fractional part with uint64(float64(f) * (unit/scale)): it truncates.
TEST(ParseDurationTest, TruncatesSubNanosecondFractionsLikeGo) {
  EXPECT_EQ(parse_duration("1.9ns"), 1ns);
  EXPECT_EQ(parse_duration("0.5ns"), 0ns);
  EXPECT_EQ(parse_duration("-1.9ns"), -1ns);
}

TEST(ParseDurationTest, ParsesLargestDuration) {
  EXPECT_EQ(parse_duration("9223372036854775807ns"), nanoseconds::max());
  EXPECT_EQ(parse_duration("2562047h47m16.854775807s"), nanoseconds::max());
}

TEST(ParseDurationTest, ParsesMostNegativeDuration) {
  EXPECT_EQ(parse_duration("-9223372036854775808ns"), nanoseconds::min());
}

TEST(ParseDurationTest, RejectsOverflow) {
  for (std::string_view s :
       {"9223372036854775808ns", "2562048h", "99999999999999999999ns", "-9223372036854775809ns"}) {
    EXPECT_EQ(parse_duration(s), std::nullopt) << s;
  }
}

TEST(ParseDurationTest, RejectsEmpty) {
  EXPECT_EQ(parse_duration(""), std::nullopt);
}

TEST(ParseDurationTest, RejectsNumberWithoutUnit) {
  for (std::string_view s : {"5", "1.5", "00", "-5", "1h30"}) {
    EXPECT_EQ(parse_duration(s), std::nullopt) << s;
  }
}

TEST(ParseDurationTest, RejectsUnitWithoutNumber) {
  for (std::string_view s : {"s", "ms", "-s", ".s", "h1m"}) {
    EXPECT_EQ(parse_duration(s), std::nullopt) << s;
  }
}

TEST(ParseDurationTest, RejectsUnknownUnit) {
  for (std::string_view s : {"1x", "1S", "1d", "1sec", "1H", "1M"}) {
    EXPECT_EQ(parse_duration(s), std::nullopt) << s;
  }
}

TEST(ParseDurationTest, RejectsDoubledSign) {
  EXPECT_EQ(parse_duration("--1s"), std::nullopt);
  EXPECT_EQ(parse_duration("+-1s"), std::nullopt);
}

TEST(ParseDurationTest, RejectsLoneSign) {
  EXPECT_EQ(parse_duration("-"), std::nullopt);
  EXPECT_EQ(parse_duration("+"), std::nullopt);
}

TEST(ParseDurationTest, RejectsSecondDecimalPoint) {
  EXPECT_EQ(parse_duration("1.2.3s"), std::nullopt);
}

TEST(ParseDurationTest, RejectsLoneDecimalPoint) {
  EXPECT_EQ(parse_duration("."), std::nullopt);
  EXPECT_EQ(parse_duration(".s"), std::nullopt);
}

TEST(ParseDurationTest, RejectsSignInsideLaterComponent) {
  EXPECT_EQ(parse_duration("1h-30m"), std::nullopt);
}

TEST(ParseDurationTest, RejectsWhitespace) {
  for (std::string_view s : {" 1s", "1s ", "1 s", "1h 30m"}) {
    EXPECT_EQ(parse_duration(s), std::nullopt) << s;
  }
}

// ------------------------------------------------------------------------------------------
// format_duration

TEST(FormatDurationTest, FormatsZeroAsZeroSeconds) {
  EXPECT_EQ(format_duration(0ns), "0s");
}

TEST(FormatDurationTest, FormatsFractionalSeconds) {
  EXPECT_EQ(format_duration(1500ms), "1.5s");
}

TEST(FormatDurationTest, FormatsMinutesAndSeconds) {
  EXPECT_EQ(format_duration(90s), "1m30s");
}

TEST(FormatDurationTest, FormatsWholeHoursWithZeroMinutesAndSeconds) {
  EXPECT_EQ(format_duration(3h), "3h0m0s");
}

TEST(FormatDurationTest, FormatsMilliseconds) {
  EXPECT_EQ(format_duration(300ms), "300ms");
}

TEST(FormatDurationTest, FormatsMicrosecondsWithMicroSign) {
  EXPECT_EQ(format_duration(1500ns), "1.5\xC2\xB5s");
}

TEST(FormatDurationTest, FormatsNanoseconds) {
  EXPECT_EQ(format_duration(100ns), "100ns");
}

TEST(FormatDurationTest, FormatsNanosecondPrecisionSeconds) {
  EXPECT_EQ(format_duration(1s + 1ns), "1.000000001s");
}

TEST(FormatDurationTest, FormatsHoursWithFractionalSeconds) {
  EXPECT_EQ(format_duration(1h + 500ms), "1h0m0.5s");
}

TEST(FormatDurationTest, FormatsNegativeDuration) {
  EXPECT_EQ(format_duration(-90min), "-1h30m0s");
  EXPECT_EQ(format_duration(-1500ns), "-1.5\xC2\xB5s");
}

TEST(FormatDurationTest, FormatsLargestDuration) {
  EXPECT_EQ(format_duration(nanoseconds::max()), "2562047h47m16.854775807s");
}

TEST(FormatDurationTest, FormatsMostNegativeDuration) {
  EXPECT_EQ(format_duration(nanoseconds::min()), "-2562047h47m16.854775808s");
}

// 1, 10, ..., 10^18: every power of ten that fits in int64.
std::vector<std::int64_t> powers_of_ten() {
  std::vector<std::int64_t> out{1};
  while (out.size() < 19)
    out.push_back(out.back() * 10);
  return out;
}

TEST(FormatDurationTest, ParseOfFormatIsIdentity) {
  std::vector<nanoseconds> durations = {1ns,   999ns,  1us,   1001ns, 999999ns,
                                        1ms,   1500ms, 59s,   60s,    61s,
                                        3599s, 3600s,  3601s, -7s,    nanoseconds::max()};
  // Powers of ten times a few mantissas, up to 7e18ns (just under the int64 limit).
  for (std::int64_t p : powers_of_ten()) {
    for (std::int64_t m : {1, 3, 7}) {
      durations.push_back(nanoseconds(p * m));
      durations.push_back(nanoseconds(-(p * m + 1)));
    }
  }
  for (nanoseconds d : durations) {
    std::string text = format_duration(d);
    EXPECT_EQ(parse_duration(text), d) << d.count() << "ns -> " << text;
  }
}

}  // namespace
}  // namespace dispatchd::cli
