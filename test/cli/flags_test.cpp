#include "dispatchd/cli/flags.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <charconv>
#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "dispatchd/cli/duration.hpp"

namespace dispatchd::cli {
namespace {

using namespace std::chrono_literals;

// One flag of each kind the server has: a string, a duration, a number and a bool. Every
// setter records what it was given so the tests can see exactly what reached it.
class FlagsTest : public ::testing::Test {
 protected:
  FlagsTest() {
    flags_.add("listen", "HOST:PORT", "0.0.0.0:4242", "address to listen on",
               [this](std::string_view v) -> std::optional<std::string> {
                 listen_ = std::string(v);
                 ++listen_calls_;
                 return std::nullopt;
               });
    flags_.add("heartbeat-period", "DURATION", "5s", "heartbeat period",
               [this](std::string_view v) -> std::optional<std::string> {
                 auto d = parse_duration(v);
                 if (!d) return "not a duration";
                 period_ = *d;
                 return std::nullopt;
               });
    flags_.add("max-connections", "N", "1000", "connection limit",
               [this](std::string_view v) -> std::optional<std::string> {
                 std::uint64_t n = 0;
                 auto [p, ec] = std::from_chars(v.data(), v.data() + v.size(), n);
                 if (ec != std::errc() || p != v.data() + v.size()) return "not a whole number";
                 max_connections_ = n;
                 return std::nullopt;
               });
    flags_.add("advertise-addr", "HOST:PORT", "", "address handed to agents",
               [this](std::string_view v) -> std::optional<std::string> {
                 advertise_ = std::string(v);
                 return std::nullopt;
               });
    flags_.add_bool("insecure", "plaintext h2c", insecure_);
  }

  std::optional<std::string> parse(std::vector<const char*> args) {
    args.insert(args.begin(), "dispatchd");
    return flags_.parse(static_cast<int>(args.size()), args.data(), help_);
  }

  Flags flags_;
  bool help_ = false;
  std::string listen_ = "unset";
  int listen_calls_ = 0;
  std::chrono::nanoseconds period_ = 0ns;
  std::uint64_t max_connections_ = 0;
  std::string advertise_ = "unset";
  bool insecure_ = false;
};

TEST_F(FlagsTest, AcceptsNoArguments) {
  EXPECT_EQ(parse({}), std::nullopt);
  EXPECT_EQ(listen_calls_, 0);
}

TEST_F(FlagsTest, AcceptsStringValueAsNextArgument) {
  EXPECT_EQ(parse({"--listen", "127.0.0.1:80"}), std::nullopt);
  EXPECT_EQ(listen_, "127.0.0.1:80");
}

TEST_F(FlagsTest, AcceptsStringValueAfterEqualsSign) {
  EXPECT_EQ(parse({"--listen=127.0.0.1:80"}), std::nullopt);
  EXPECT_EQ(listen_, "127.0.0.1:80");
}

TEST_F(FlagsTest, AcceptsDurationValueAsNextArgument) {
  EXPECT_EQ(parse({"--heartbeat-period", "300ms"}), std::nullopt);
  EXPECT_EQ(period_, 300ms);
}

TEST_F(FlagsTest, AcceptsDurationValueAfterEqualsSign) {
  EXPECT_EQ(parse({"--heartbeat-period=1m30s"}), std::nullopt);
  EXPECT_EQ(period_, 90s);
}

TEST_F(FlagsTest, AcceptsNumberValueAsNextArgument) {
  EXPECT_EQ(parse({"--max-connections", "7"}), std::nullopt);
  EXPECT_EQ(max_connections_, 7u);
}

TEST_F(FlagsTest, AcceptsNumberValueAfterEqualsSign) {
  EXPECT_EQ(parse({"--max-connections=7"}), std::nullopt);
  EXPECT_EQ(max_connections_, 7u);
}

TEST_F(FlagsTest, AcceptsSeveralFlagsInOneCommandLine) {
  EXPECT_EQ(
      parse({"--listen", "a:1", "--insecure", "--max-connections=3", "--heartbeat-period", "2s"}),
      std::nullopt);
  EXPECT_EQ(listen_, "a:1");
  EXPECT_TRUE(insecure_);
  EXPECT_EQ(max_connections_, 3u);
  EXPECT_EQ(period_, 2s);
}

TEST_F(FlagsTest, SplitsAtFirstEqualsSignOnly) {
  EXPECT_EQ(parse({"--listen=a=b"}), std::nullopt);
  EXPECT_EQ(listen_, "a=b");
}

TEST_F(FlagsTest, PassesEmptyValueAfterEqualsSignToSetter) {
  EXPECT_EQ(parse({"--listen="}), std::nullopt);
  EXPECT_EQ(listen_calls_, 1);
  EXPECT_EQ(listen_, "");
}

TEST_F(FlagsTest, PassesEmptyNextArgumentToSetter) {
  EXPECT_EQ(parse({"--listen", ""}), std::nullopt);
  EXPECT_EQ(listen_calls_, 1);
  EXPECT_EQ(listen_, "");
}

TEST_F(FlagsTest, LaterOccurrenceOverridesEarlier) {
  EXPECT_EQ(parse({"--listen", "a:1", "--listen=b:2"}), std::nullopt);
  EXPECT_EQ(listen_, "b:2");
}

TEST_F(FlagsTest, BoolFlagStandsAlone) {
  EXPECT_EQ(parse({"--insecure"}), std::nullopt);
  EXPECT_TRUE(insecure_);
}

TEST_F(FlagsTest, BoolFlagAloneDoesNotConsumeNextArgument) {
  EXPECT_EQ(parse({"--insecure", "--listen", "a:1"}), std::nullopt);
  EXPECT_TRUE(insecure_);
  EXPECT_EQ(listen_, "a:1");
}

TEST_F(FlagsTest, BoolFlagAcceptsEqualsTrue) {
  EXPECT_EQ(parse({"--insecure=true"}), std::nullopt);
  EXPECT_TRUE(insecure_);
}

TEST_F(FlagsTest, BoolFlagAcceptsEqualsFalse) {
  insecure_ = true;
  EXPECT_EQ(parse({"--insecure=false"}), std::nullopt);
  EXPECT_FALSE(insecure_);
}

TEST_F(FlagsTest, BoolFlagRejectsOtherValues) {
  auto err = parse({"--insecure=maybe"});
  ASSERT_TRUE(err.has_value());
  EXPECT_NE(err->find("--insecure"), std::string::npos) << *err;
  EXPECT_NE(err->find("maybe"), std::string::npos) << *err;
  EXPECT_FALSE(insecure_);
}

TEST_F(FlagsTest, UnknownFlagErrorNamesTheFlag) {
  auto err = parse({"--no-such-flag"});
  ASSERT_TRUE(err.has_value());
  EXPECT_NE(err->find("--no-such-flag"), std::string::npos) << *err;
}

TEST_F(FlagsTest, UnknownFlagWithValueErrorNamesTheFlag) {
  auto err = parse({"--no-such-flag=3"});
  ASSERT_TRUE(err.has_value());
  EXPECT_NE(err->find("--no-such-flag"), std::string::npos) << *err;
}

TEST_F(FlagsTest, MissingValueIsAnError) {
  auto err = parse({"--listen"});
  ASSERT_TRUE(err.has_value());
  EXPECT_NE(err->find("--listen"), std::string::npos) << *err;
  EXPECT_EQ(listen_calls_, 0);
}

TEST_F(FlagsTest, SetterErrorIsPrefixedWithFlagName) {
  auto err = parse({"--max-connections", "lots"});
  ASSERT_TRUE(err.has_value());
  auto name = err->find("--max-connections");
  auto reason = err->find("not a whole number");
  ASSERT_NE(name, std::string::npos) << *err;
  ASSERT_NE(reason, std::string::npos) << *err;
  EXPECT_LT(name, reason) << *err;
  EXPECT_TRUE(err->ends_with("not a whole number")) << *err;
}

TEST_F(FlagsTest, DoubleDashHelpSetsHelp) {
  EXPECT_EQ(parse({"--help"}), std::nullopt);
  EXPECT_TRUE(help_);
}

TEST_F(FlagsTest, DashHSetsHelp) {
  EXPECT_EQ(parse({"-h"}), std::nullopt);
  EXPECT_TRUE(help_);
}

TEST_F(FlagsTest, HelpIsClearedWhenNotAsked) {
  help_ = true;
  EXPECT_EQ(parse({"--insecure"}), std::nullopt);
  EXPECT_FALSE(help_);
}

TEST_F(FlagsTest, PositionalArgumentIsRejected) {
  auto err = parse({"serve"});
  ASSERT_TRUE(err.has_value());
  EXPECT_NE(err->find("serve"), std::string::npos) << *err;
}

TEST_F(FlagsTest, PositionalArgumentAfterFlagsIsRejected) {
  auto err = parse({"--listen", "a:1", "extra"});
  ASSERT_TRUE(err.has_value());
  EXPECT_NE(err->find("extra"), std::string::npos) << *err;
}

TEST_F(FlagsTest, UsageListsEveryFlagName) {
  std::string usage = flags_.usage("dispatchd", "Serves the Dispatcher.");
  for (std::string_view name : {"--listen", "--heartbeat-period", "--max-connections",
                                "--advertise-addr", "--insecure", "--help"}) {
    EXPECT_NE(usage.find(name), std::string::npos) << name << " missing from:\n" << usage;
  }
}

TEST_F(FlagsTest, UsageListsEveryDefault) {
  std::string usage = flags_.usage("dispatchd", "Serves the Dispatcher.");
  for (std::string_view def : {"0.0.0.0:4242", "5s", "1000", "false"}) {
    EXPECT_NE(usage.find(def), std::string::npos) << def << " missing from:\n" << usage;
  }
}

TEST_F(FlagsTest, UsageShowsEachDefaultOnItsFlagsLine) {
  std::string usage = flags_.usage("dispatchd", "Serves the Dispatcher.");
  auto line_of = [&](std::string_view needle) {
    auto at = usage.find(needle);
    return at == std::string::npos
               ? std::string::npos
               : static_cast<std::size_t>(std::count(usage.begin(), usage.begin() + at, '\n'));
  };
  EXPECT_EQ(line_of("--listen"), line_of("0.0.0.0:4242")) << usage;
  EXPECT_EQ(line_of("--heartbeat-period"), line_of("(default 5s)")) << usage;
  EXPECT_EQ(line_of("--insecure"), line_of("(default false)")) << usage;
}

TEST_F(FlagsTest, UsageNamesProgramAndSummary) {
  std::string usage = flags_.usage("dispatchd", "Serves the Dispatcher.");
  EXPECT_NE(usage.find("dispatchd"), std::string::npos) << usage;
  EXPECT_NE(usage.find("Serves the Dispatcher."), std::string::npos) << usage;
}

TEST_F(FlagsTest, EnvironmentSetsFlagsWithThePrefixAndDashesAsUnderscores) {
  const char* env[] = {"DISPATCHD_LISTEN=10.0.0.1:4242",
                       "DISPATCHD_HEARTBEAT_PERIOD=2s",
                       "DISPATCHD_INSECURE=true",
                       "PATH=/bin",
                       "OTHER_LISTEN=x",
                       nullptr};
  std::vector<std::string> unknown;
  EXPECT_EQ(flags_.parse_env(env, "DISPATCHD", unknown), std::nullopt);
  EXPECT_EQ(listen_, "10.0.0.1:4242");
  EXPECT_EQ(period_, 2s);
  EXPECT_TRUE(insecure_);
  EXPECT_TRUE(unknown.empty());
}

TEST_F(FlagsTest, CommandLineWinsOverEnvironment) {
  const char* env[] = {"DISPATCHD_LISTEN=10.0.0.1:4242", "DISPATCHD_MAX_CONNECTIONS=7", nullptr};
  std::vector<std::string> unknown;
  ASSERT_EQ(flags_.parse_env(env, "DISPATCHD", unknown), std::nullopt);
  ASSERT_EQ(parse({"--listen", "127.0.0.1:1"}), std::nullopt);
  EXPECT_EQ(listen_, "127.0.0.1:1");
  EXPECT_EQ(max_connections_, 7u);
}

TEST_F(FlagsTest, BadEnvironmentValueNamesTheVariableAndTheFlag) {
  const char* env[] = {"DISPATCHD_HEARTBEAT_PERIOD=soon", nullptr};
  std::vector<std::string> unknown;
  auto err = flags_.parse_env(env, "DISPATCHD", unknown);
  ASSERT_TRUE(err);
  EXPECT_NE(err->find("DISPATCHD_HEARTBEAT_PERIOD"), std::string::npos) << *err;
  EXPECT_NE(err->find("--heartbeat-period"), std::string::npos) << *err;
}

TEST_F(FlagsTest, UnknownPrefixedVariablesAreReported) {
  const char* env[] = {"DISPATCHD_LISTNE=1.2.3.4:1", "DISPATCHD_LISTEN=1.2.3.4:2", nullptr};
  std::vector<std::string> unknown;
  EXPECT_EQ(flags_.parse_env(env, "DISPATCHD", unknown), std::nullopt);
  EXPECT_EQ(unknown, std::vector<std::string>{"DISPATCHD_LISTNE"});
  EXPECT_EQ(listen_, "1.2.3.4:2");
  EXPECT_EQ(Flags::env_name("DISPATCHD", "tls-handshake-timeout"),
            "DISPATCHD_TLS_HANDSHAKE_TIMEOUT");
}

}  // namespace
}  // namespace dispatchd::cli
