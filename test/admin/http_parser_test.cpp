// The admin endpoint's request-head parser and response writer on their own, without sockets
// (http_server_test.cpp drives the same code through real connections).

#include "dispatchd/admin/http_parser.hpp"

#include <gtest/gtest.h>

#include <string>
#include <string_view>

#include "dispatchd/admin/http_response.hpp"

namespace dispatchd::admin {
namespace {

using State = ParsedHead::State;

TEST(HttpParser, ParsesAHeadOnlyOnceItIsComplete) {
  std::string_view head = "GET /metrics?x=1 HTTP/1.1\r\nHost: a\r\nAccept:  text/plain \r\n\r\n";
  for (std::size_t n = 0; n < head.size(); ++n) {
    EXPECT_EQ(parse_head(head.substr(0, n), 8192).state, State::incomplete) << n;
  }
  std::string two = std::string(head) + "GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n";
  auto p = parse_head(two, 8192);
  ASSERT_EQ(p.state, State::complete);
  EXPECT_EQ(p.consumed, head.size());
  EXPECT_EQ(p.req.method, "GET");
  EXPECT_EQ(p.req.path, "/metrics");
  EXPECT_EQ(p.req.query, "x=1");
  EXPECT_EQ(p.req.version_minor, 1);
  EXPECT_EQ(p.req.header("accept"), "text/plain");
  EXPECT_TRUE(p.keep_alive);
  auto second = parse_head(std::string_view(two).substr(p.consumed), 8192);
  ASSERT_EQ(second.state, State::complete);
  EXPECT_EQ(second.req.path, "/healthz");
}

TEST(HttpParser, ConnectionPersistenceFollowsTheVersion) {
  EXPECT_FALSE(parse_head("GET / HTTP/1.0\r\n\r\n", 8192).keep_alive);
  EXPECT_TRUE(parse_head("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n", 8192).keep_alive);
  EXPECT_FALSE(
      parse_head("GET / HTTP/1.1\r\nHost: a\r\nConnection: x, close\r\n\r\n", 8192).keep_alive);
}

TEST(HttpParser, AbsoluteFormIgnoresTheAuthority) {
  auto p = parse_head("GET http://example.com/readyz?q HTTP/1.1\r\nHost: a\r\n\r\n", 8192);
  ASSERT_EQ(p.state, State::complete);
  EXPECT_EQ(p.req.path, "/readyz");
  EXPECT_EQ(p.req.query, "q");
}

TEST(HttpParser, RefusesWhatCouldSmuggleARequest) {
  struct Case {
    std::string_view head;
    int status;
  };
  for (const auto& c : {
           Case{"GET / HTTP/1.1\r\nHost: a\r\nX: a\rb\r\n\r\n", 400},
           Case{"GET / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n", 400},
           Case{"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1, 2\r\n\r\n", 400},
           Case{"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n", 413},
           Case{"GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n", 400},
           Case{"GET / HTTP/1.1\r\n\r\n", 400},
           Case{"GET / HTTP/2.0\r\n\r\n", 505},
           Case{"GET /a b HTTP/1.1\r\n\r\n", 400},
       }) {
    auto p = parse_head(c.head, 8192);
    EXPECT_EQ(p.state, State::error) << c.head;
    EXPECT_EQ(p.error_status, c.status) << c.head;
  }
  auto big = parse_head("GET / HTTP/1.1\r\nHost: " + std::string(100, 'a'), 64);
  EXPECT_EQ(big.state, State::error);
  EXPECT_EQ(big.error_status, 431);
}

TEST(HttpResponse, HeadKeepsTheFieldsAndDropsTheBody) {
  std::string out;
  append_response(out, Response{200, "text/plain", "ok\n"}, "D", true, false, false);
  EXPECT_EQ(out,
            "HTTP/1.1 200 OK\r\nDate: D\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n\r\n");
  out.clear();
  append_response(out, error_response(405, "no\n"), "D", false, true, false);
  EXPECT_EQ(out,
            "HTTP/1.1 405 Method Not Allowed\r\nDate: D\r\nAllow: GET, HEAD\r\nContent-Type: "
            "text/plain; charset=utf-8\r\nContent-Length: 3\r\nConnection: close\r\n\r\nno\n");
}

TEST(HttpResponse, BadHandlerOutputIsMadeSafe) {
  std::string out;
  append_response(out, Response{204, "text/plain", "x"}, "D", false, false, true);
  EXPECT_EQ(out, "HTTP/1.1 204 No Content\r\nDate: D\r\nConnection: keep-alive\r\n\r\n");
  out.clear();
  append_response(out, Response{99, "text/plain", "x"}, "D", false, false, false);
  EXPECT_TRUE(out.starts_with("HTTP/1.1 500 Internal Server Error\r\n")) << out;
  out.clear();
  append_response(out, Response{200, "a\r\nX: y", "x"}, "D", false, false, false);
  EXPECT_NE(out.find("Content-Type: application/octet-stream\r\n"), std::string::npos) << out;
}

}  // namespace
}  // namespace dispatchd::admin
