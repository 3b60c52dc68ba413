// h2load (nghttp2-client), a real HTTP/2 load generator, against our server.

#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <array>
#include <cstdio>
#include <fstream>
#include <regex>

#include "dispatcher.grpc.pb.h"
#include "support/agent.hpp"
#include "support/raw_client.hpp"
#include "support/test_server.hpp"

namespace {

namespace api = docker::swarmkit::v1;
using dispatchd::test::TestServer;

std::string run(const std::string& cmd, int& status) {
  std::string out;
  FILE* p = ::popen(cmd.c_str(), "r");
  if (!p) {
    status = -1;
    return out;
  }
  std::array<char, 4096> buf;
  std::size_t n;
  while ((n = std::fread(buf.data(), 1, buf.size(), p)) > 0)
    out.append(buf.data(), n);
  status = ::pclose(p);
  return out;
}

TEST(H2LoadTest, TwentyThousandHeartbeatsOverTenConnectionsAllSucceed) {
  std::string h2load = H2LOAD_PATH;
  if (h2load.empty() || h2load.ends_with("NOTFOUND")) {
    GTEST_FAIL() << "h2load not found: install nghttp2-client (scripts/install-deps.sh does)";
  }
  TestServer server;
  dispatchd::test::Agent agent(server);
  auto session = dispatchd::test::open_session(agent.stub(), "bench-node");
  ASSERT_TRUE(session->ok);
  const api::SessionMessage& first = session->first;

  api::HeartbeatRequest hb;
  hb.set_session_id(first.session_id());
  std::string body_path = ::testing::TempDir() + "/heartbeat.bin";
  {
    std::ofstream f(body_path, std::ios::binary);
    f << dispatchd::test::grpc_frame(hb.SerializeAsString());
  }
  std::string cmd = h2load + " -n 20000 -c 10 -m 10 -d " + body_path +
                    " -H 'content-type: application/grpc' -H 'te: trailers'"
                    " -H 'node-id: bench-node' http://" +
                    server.address() + "/docker.swarmkit.v1.Dispatcher/Heartbeat 2>&1";
  int status = 0;
  std::string out = run(cmd, status);
  ASSERT_EQ(status, 0) << out;
  std::smatch m;
  ASSERT_TRUE(std::regex_search(out, m, std::regex(R"((\d+) succeeded, (\d+) failed)"))) << out;
  EXPECT_EQ(m[1].str(), "20000") << out;
  EXPECT_EQ(m[2].str(), "0") << out;
  if (std::regex_search(out, m, std::regex(R"(finished in [^,]+, ([\d.]+) req/s)"))) {
    std::printf("h2load: %s Heartbeat calls/s (in-process server, unpinned, debug-level numbers)\n",
                m[1].str().c_str());
  }
  // h2load counts HTTP 200s; the gRPC verdict is in the trailers, so ask the server what it
  // answered: every call OK.
  auto ok = server.call([&] {
    const auto* st = server.server().grpc().stats("/docker.swarmkit.v1.Dispatcher/Heartbeat");
    return st ? st->by_code[0] : 0;
  });
  EXPECT_EQ(ok, 20000u);
  session->stream->cancel();
  session->stream->finish();
}

}  // namespace
