// The real dispatchctl binary's `health` command against an in-process dispatchd: plaintext and
// mutual TLS, exit status 0 only when SERVING, and non-zero when the server is gone.

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>

#include "support/certs.hpp"
#include "support/process.hpp"
#include "support/test_server.hpp"

namespace {

using dispatchd::test::ProcessResult;
using dispatchd::test::run_process;
using dispatchd::test::TestServer;

ProcessResult ctl(std::vector<std::string> args, std::map<std::string, std::string> env = {}) {
  args.insert(args.begin(), DISPATCHCTL_PATH);
  return run_process(args, env, std::chrono::seconds(30), {"DISPATCHCTL_", "GRPC_"});
}

using dispatchd::test::show;

const std::string& cert_dir() {
  static const std::string dir =
      dispatchd::test::make_test_certs("ctl-health", "--nodes 1 --test-variants");
  return dir;
}

TEST(DispatchctlHealth, InsecureServingExitsZero) {
  TestServer server;
  auto r = ctl({"--insecure", "--addr", server.address(), "health"});
  EXPECT_EQ(r.exit_status, 0) << show(r);
  EXPECT_EQ(r.out, "SERVING\n");
  EXPECT_EQ(r.err, "");

  r = ctl({"--insecure", "--addr=" + server.address(), "health", "--service",
           "docker.swarmkit.v1.Dispatcher"});
  EXPECT_EQ(r.exit_status, 0) << show(r);
  EXPECT_EQ(r.out, "SERVING\n");
}

TEST(DispatchctlHealth, GlobalFlagsFromTheEnvironment) {
  TestServer server;
  auto r = ctl({"health"}, {{"DISPATCHCTL_ADDR", server.address()},
                            {"DISPATCHCTL_INSECURE", "true"},
                            {"DISPATCHCTL_JSON", "1"}});
  EXPECT_EQ(r.exit_status, 0) << show(r);
  EXPECT_EQ(r.out, "{\"status\":\"SERVING\"}\n");
}

TEST(DispatchctlHealth, NotServingExitsNonZero) {
  TestServer server;
  server.call([&] {
    server.server().health().set_status("", dispatchd::grpc::HealthService::not_serving);
    return 0;
  });
  auto r = ctl({"--insecure", "--addr", server.address(), "health"});
  EXPECT_EQ(r.exit_status, 1) << show(r);
  EXPECT_EQ(r.out, "NOT_SERVING\n");
}

TEST(DispatchctlHealth, UnknownServiceIsNotFound) {
  TestServer server;
  auto r = ctl({"--insecure", "--addr", server.address(), "health", "--service=nope"});
  EXPECT_EQ(r.exit_status, 1) << show(r);
  EXPECT_EQ(r.out, "");
  EXPECT_EQ(r.err, "dispatchctl: NOT_FOUND: unknown service\n");
}

TEST(DispatchctlHealth, StoppedServerExitsNonZero) {
  std::string addr;
  {
    TestServer server;
    addr = server.address();
    auto up = ctl({"--insecure", "--addr", addr, "health"});
    ASSERT_EQ(up.exit_status, 0) << show(up);
    ASSERT_TRUE(server.stop());
  }
  auto r = ctl({"--insecure", "--addr", addr, "--timeout", "5s", "health"});
  EXPECT_EQ(r.exit_status, 1) << show(r);
  EXPECT_FALSE(r.timed_out);
  EXPECT_EQ(r.out, "");
  EXPECT_TRUE(r.err.starts_with("dispatchctl: UNAVAILABLE: ")) << r.err;
}

TEST(DispatchctlHealth, UnreachableAddressHitsTheDeadline) {
  // 192.0.2.0/24 is TEST-NET-1: nothing answers, so only the deadline ends the call (or the
  // host has no route and the connect fails at once).
  auto r = ctl({"--insecure", "--addr", "192.0.2.1:9", "--timeout", "300ms", "health"});
  EXPECT_EQ(r.exit_status, 1) << show(r);
  EXPECT_TRUE(r.err.starts_with("dispatchctl: DEADLINE_EXCEEDED: ") ||
              r.err.starts_with("dispatchctl: UNAVAILABLE: "))
      << r.err;
}

class DispatchctlHealthTls : public ::testing::Test {
 protected:
  static dispatchd::app::Options options() {
    auto o = TestServer::default_options();
    o.insecure = false;
    o.tls = {cert_dir() + "/server.pem", cert_dir() + "/server.key", cert_dir() + "/ca.pem"};
    return o;
  }
  DispatchctlHealthTls() : server_(options()) {}

  std::vector<std::string> tls_args(const std::string& cert) {
    std::vector<std::string> a = {"--addr", server_.address(), "--tls-ca", cert_dir() + "/ca.pem"};
    if (!cert.empty()) {
      a.insert(a.end(), {"--tls-cert", cert_dir() + "/" + cert + ".pem", "--tls-key",
                         cert_dir() + "/" + cert + ".key"});
    }
    return a;
  }

  TestServer server_;
};

TEST_F(DispatchctlHealthTls, OperatorCertificate) {
  auto args = tls_args("ctl");
  args.push_back("health");
  auto r = ctl(args);
  EXPECT_EQ(r.exit_status, 0) << show(r);
  EXPECT_EQ(r.out, "SERVING\n");
}

TEST_F(DispatchctlHealthTls, WithoutAClientCertificate) {
  // The container HEALTHCHECK has only the CA: health needs no client certificate.
  auto args = tls_args("");
  args.push_back("health");
  auto r = ctl(args);
  EXPECT_EQ(r.exit_status, 0) << show(r);
  EXPECT_EQ(r.out, "SERVING\n");
}

TEST_F(DispatchctlHealthTls, UntrustedServerFailsTheHandshake) {
  // Verifying the server with some other CA must fail: dispatchctl really checks the server.
  auto r = ctl({"--addr", server_.address(), "--tls-ca", cert_dir() + "/other-ca.pem", "--timeout",
                "5s", "health"});
  EXPECT_EQ(r.exit_status, 1) << show(r);
  EXPECT_TRUE(r.err.starts_with("dispatchctl: UNAVAILABLE: ")) << r.err;
}

TEST_F(DispatchctlHealthTls, ServerNameIsVerified) {
  auto args = tls_args("ctl");
  args.insert(args.end(), {"--server-name", "not-the-manager", "--timeout", "5s", "health"});
  auto r = ctl(args);
  EXPECT_EQ(r.exit_status, 1) << show(r);
  EXPECT_TRUE(r.err.starts_with("dispatchctl: UNAVAILABLE: ")) << r.err;
}

TEST_F(DispatchctlHealthTls, PlaintextClientCannotTalkToATlsServer) {
  auto r = ctl({"--insecure", "--addr", server_.address(), "--timeout", "5s", "health"});
  EXPECT_NE(r.exit_status, 0) << show(r);
}

TEST_F(DispatchctlHealthTls, MissingCaFileIsAClearError) {
  auto r = ctl({"--addr", server_.address(), "--tls-ca", cert_dir() + "/absent.pem", "health"});
  EXPECT_EQ(r.exit_status, 1) << show(r);
  EXPECT_EQ(r.err, "dispatchctl: cannot read --tls-ca " + cert_dir() +
                       "/absent.pem: No such file or directory\n");
}

}  // namespace
