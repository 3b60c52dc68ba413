// The command-line syntax dispatchd and dispatchctl share (dispatchd/cli/args.hpp), in both
// dialects, and the value setters of the flag table.

#include "dispatchd/cli/args.hpp"

#include <gtest/gtest.h>

#include <cstdint>
#include <initializer_list>
#include <string>
#include <utility>
#include <vector>

#include "dispatchd/cli/flags.hpp"

namespace dispatchd::cli {
namespace {

const std::vector<FlagSpec> kSpecs = {
    {"addr", 0, false, "HOST:PORT", "where to connect", "127.0.0.1:4242"},
    {"quiet", 'q', true, "", "print less", ""},
    {"state", 0, false, "STATE", "filter", ""},
};

constexpr Syntax kDispatchd{false, Syntax::Operands::refused, " (see --help)"};
constexpr Syntax kCommand{true, Syntax::Operands::mixed, ""};
constexpr Syntax kGlobal{true, Syntax::Operands::end_flags, ""};

// What parse_args reported: every flag as "shown=value", then the operands, or the error.
struct Outcome {
  std::vector<std::string> seen;
  std::expected<ParseResult, std::string> result;
};

Outcome run(std::initializer_list<std::string_view> args, const Syntax& syntax,
            std::string_view refuse = "") {
  Outcome o;
  std::vector<std::string_view> a(args);
  o.result = parse_args(
      a, kSpecs, syntax,
      [&](const FlagSpec& spec, std::string_view shown,
          std::string_view v) -> std::optional<std::string> {
        if (!refuse.empty() && v == refuse) return "refused";
        o.seen.push_back(std::string(shown) + "=" + std::string(v) + " (" + spec.name + ")");
        return std::nullopt;
      });
  return o;
}

std::string error(const Outcome& o) {
  return o.result ? "(accepted)" : o.result.error();
}

TEST(CliArgs, BothSpellingsAndBoolsInOrder) {
  for (const Syntax* s : {&kDispatchd, &kCommand}) {
    auto o = run({"--addr", "a:1", "--state=x=y", "--quiet", "--quiet=false", "--state="}, *s);
    ASSERT_TRUE(o.result) << o.result.error();
    EXPECT_EQ(o.seen, (std::vector<std::string>{"--addr=a:1 (addr)", "--state=x=y (state)",
                                                "--quiet=true (quiet)", "--quiet=false (quiet)",
                                                "--state= (state)"}));
  }
}

TEST(CliArgs, BoolValuesAreGoBoolsAndNeverTheNextArgument) {
  auto o = run({"--quiet=T", "-q=0", "-q", "x"}, kCommand);
  ASSERT_TRUE(o.result) << o.result.error();
  EXPECT_EQ(o.seen, (std::vector<std::string>{"--quiet=true (quiet)", "-q=false (quiet)",
                                              "-q=true (quiet)"}));
  EXPECT_EQ(o.result->operands, std::vector<std::string>{"x"});
  EXPECT_EQ(error(run({"--quiet=yes"}, kDispatchd)),
            "invalid value for --quiet: want true or false, got \"yes\"");
}

TEST(CliArgs, ErrorsNameTheFlagAsWritten) {
  EXPECT_EQ(error(run({"--nope"}, kDispatchd)), "unknown flag --nope (see --help)");
  EXPECT_EQ(error(run({"--nope=1"}, kCommand)), "unknown flag --nope");
  EXPECT_EQ(error(run({"-x"}, kCommand)), "unknown flag -x");
  EXPECT_EQ(error(run({"-qq"}, kCommand)), "unknown flag -qq");
  EXPECT_EQ(error(run({"--state"}, kCommand)), "flag --state needs a value");
  EXPECT_EQ(error(run({"--addr", "bad", "--nope"}, kDispatchd, "bad")),
            "invalid value for --addr: refused");
  EXPECT_EQ(error(run({"-q=maybe"}, kCommand)),
            "invalid value for -q: want true or false, got \"maybe\"");
}

TEST(CliArgs, DispatchdDialectRefusesOperandsAndShortFlags) {
  EXPECT_EQ(error(run({"serve"}, kDispatchd)),
            "unexpected argument \"serve\" (flags start with --)");
  EXPECT_EQ(error(run({"-q"}, kDispatchd)), "unexpected argument \"-q\" (flags start with --)");
  EXPECT_EQ(error(run({"--"}, kDispatchd)), "unknown flag -- (see --help)");
  for (auto h : {"--help", "-h", "-help"}) {
    auto o = run({"--quiet", h}, kDispatchd);
    ASSERT_TRUE(o.result) << h;
    EXPECT_TRUE(o.result->help) << h;
  }
  EXPECT_FALSE(run({"--quiet"}, kDispatchd).result->help);
}

TEST(CliArgs, CommandDialectMixesOperandsAndDoubleDashEndsFlags) {
  auto o = run({"a", "--state", "s", "b", "--", "--quiet", "-h"}, kCommand);
  ASSERT_TRUE(o.result) << o.result.error();
  EXPECT_EQ(o.seen, std::vector<std::string>{"--state=s (state)"});
  EXPECT_EQ(o.result->operands, (std::vector<std::string>{"a", "b", "--quiet", "-h"}));
  EXPECT_FALSE(o.result->help);
  EXPECT_EQ(error(run({"-help"}, kCommand)), "unknown flag -help");
  auto dash = run({"-"}, kCommand);
  ASSERT_TRUE(dash.result);
  EXPECT_EQ(dash.result->operands, std::vector<std::string>{"-"});
}

TEST(CliArgs, GlobalDialectStopsAtTheFirstOperand) {
  auto o = run({"-q", "node", "ls", "--state", "x", "--nope"}, kGlobal);
  ASSERT_TRUE(o.result) << o.result.error();
  EXPECT_EQ(o.seen, std::vector<std::string>{"-q=true (quiet)"});
  EXPECT_EQ(o.result->operands, (std::vector<std::string>{"node", "ls", "--state", "x", "--nope"}));
}

TEST(CliArgs, EnvironmentNames) {
  EXPECT_EQ(env_name("DISPATCHD", "tls-handshake-timeout"), "DISPATCHD_TLS_HANDSHAKE_TIMEOUT");
  EXPECT_EQ(env_name("DISPATCHCTL", "addr"), "DISPATCHCTL_ADDR");
}

TEST(CliArgs, HelpAlignsToTheWidestFlagOrToAFixedColumn) {
  EXPECT_EQ(flags_help(kSpecs),
            "  --addr HOST:PORT   where to connect (default 127.0.0.1:4242)\n"
            "  -q, --quiet        print less\n"
            "  --state STATE      filter\n");
  EXPECT_EQ(flags_help(kSpecs, 12),
            "  --addr HOST:PORT\n"
            "            where to connect (default 127.0.0.1:4242)\n"
            "  -q, --quiet\n"
            "            print less\n"
            "  --state STATE\n"
            "            filter\n");
  EXPECT_EQ(flags_help(std::span(kSpecs).subspan(1, 1), 16), "  -q, --quiet   print less\n");
}

TEST(CliSetters, SizesWithUnitsAndTheirLimits) {
  std::size_t n = 7;
  auto set = size_setter(n, 1024, std::uint64_t{1} << 31);
  EXPECT_EQ(set("4MiB"), std::nullopt);
  EXPECT_EQ(n, 4u << 20);
  EXPECT_EQ(set("2048"), std::nullopt);
  EXPECT_EQ(n, 2048u);
  EXPECT_EQ(set("1k"), std::nullopt);
  EXPECT_EQ(n, 1024u);
  EXPECT_EQ(set("1023"), "must be between 1024 and 2147483648 bytes");
  EXPECT_EQ(set("3G"), "must be between 1024 and 2147483648 bytes");
  EXPECT_EQ(set("4XB"), "unknown size unit \"XB\" (use KiB, MiB or GiB)");
  EXPECT_EQ(set("MiB"), "not a size (e.g. 4194304 or 4MiB)");
  EXPECT_EQ(n, 1024u);
}

// 2^34 GiB is 2^64 bytes: the product wraps to 0, which a limit starting at 0 (--log-buffer)
// used to accept as "0: write each line at once".
TEST(CliSetters, ASizeTooLargeForSixtyFourBitsIsRefusedNotWrapped) {
  std::size_t n = 7;
  auto set = size_setter(n, 0, std::uint64_t{1} << 30);
  EXPECT_EQ(set("17179869184GiB"), "must be between 0 and 1073741824 bytes");
  EXPECT_EQ(set("18014398509481984K"), "must be between 0 and 1073741824 bytes");
  EXPECT_EQ(n, 7u);
}

TEST(CliSetters, NumbersStringsAndDurations) {
  int k = 0;
  auto set_k = uint_setter(k, 1, 1000);
  EXPECT_EQ(set_k("12"), std::nullopt);
  EXPECT_EQ(k, 12);
  EXPECT_EQ(set_k("0"), "must be between 1 and 1000");
  EXPECT_EQ(set_k("1e3"), "not a whole number");
  EXPECT_EQ(set_k("-1"), "not a whole number");
  std::string s = "x";
  EXPECT_EQ(string_setter(s)(""), "must not be empty");
  EXPECT_EQ(string_setter(s, true)(""), std::nullopt);
  EXPECT_EQ(s, "");
  std::chrono::milliseconds d{1};
  EXPECT_EQ(duration_setter(d, false)("1m30s"), std::nullopt);
  EXPECT_EQ(d, std::chrono::seconds(90));
  EXPECT_EQ(duration_setter(d, false)("0"), "must be positive");
  EXPECT_EQ(duration_setter(d, false)("-1s"), "must be positive");
  EXPECT_EQ(duration_setter(d, true)("-1s"), "must not be negative");
  EXPECT_EQ(duration_setter(d, true)("0"), std::nullopt);
  EXPECT_EQ(duration_setter(d, true)("soon"), "not a duration (write it like 300ms, 5s or 1m30s)");
}

}  // namespace
}  // namespace dispatchd::cli
