#pragma once
// One HTTP/1.1 GET over a plain socket, for tests of the operators' endpoint; every wait is
// bounded by poll().

#include <string>

namespace dispatchd::test {

struct HttpReply {
  int status = 0;  // 0: no HTTP answer (refused, closed, timed out)
  std::string body;
};

// `host` is an IPv4 address ("127.0.0.1").
HttpReply http_get(const std::string& host, unsigned short port, const std::string& path);

}  // namespace dispatchd::test
