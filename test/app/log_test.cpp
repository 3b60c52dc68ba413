#include "dispatchd/log.hpp"

#include <gtest/gtest.h>

namespace dispatchd::log {
namespace {

TEST(LogTest, JsonLinesCarrySessionFieldsOfTheirOwn) {
  auto line = format_line(Level::info, Format::json, "2026-01-02T03:04:05.006Z",
                          "session ended node=node-a session=abc peer=10.0.0.1:5 "
                          "reason=client-gone duration=1500ms");
  EXPECT_EQ(line,
            "{\"ts\":\"2026-01-02T03:04:05.006Z\",\"level\":\"info\",\"msg\":\"session ended\","
            "\"node\":\"node-a\",\"session\":\"abc\",\"peer\":\"10.0.0.1:5\",\"reason\":"
            "\"client-gone\",\"duration\":\"1500ms\"}\n");
}

TEST(LogTest, JsonEscapesWhatAPeerControls) {
  auto line = format_line(Level::warn, Format::json, "t", "node x\"y\n=1 node=a\"b");
  EXPECT_EQ(line,
            "{\"ts\":\"t\",\"level\":\"warn\",\"msg\":\"node x\\\"y\\n=1\",\"node\":\"a\\\"b\"}\n");
}

TEST(LogTest, TextLinesStayOneLineWhateverANameContains) {
  auto line = format_line(Level::info, Format::text, "t", "session started node=evil\ninfo fake");
  EXPECT_EQ(line, "t info  session started node=evil\\x0ainfo fake\n");
}

TEST(LogTest, WordsWithoutAKeyStayInTheMessage) {
  auto line = format_line(Level::error, Format::json, "t", "a=b=c =x Key=v 1=2 plain");
  EXPECT_EQ(line,
            "{\"ts\":\"t\",\"level\":\"error\",\"msg\":\"=x Key=v 1=2 plain\",\"a\":\"b=c\"}\n");
}

}  // namespace
}  // namespace dispatchd::log
