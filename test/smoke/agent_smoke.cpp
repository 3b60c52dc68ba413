// agent_smoke: what a SwarmKit worker does first, against a dispatchd running elsewhere (the
// container test, scripts/container-test.sh). The real grpc++ client, mutual TLS with a worker
// certificate from scripts/gen-certs.sh:
//   1. grpc.health.v1.Health/Check ("" and the Dispatcher service) is SERVING;
//   2. Session: the first SessionMessage names this node (the certificate's CN), carries a
//      session ID and a non-empty manager list;
//   3. Heartbeat with that session ID returns a period > 0.
// --health-only stops after 1 (a readiness probe). Exits 0 when all hold, 1 (with the reason on
// stderr) otherwise, 2 on bad usage. Not a CTest test: it needs a server started outside the test
// run.
//
//   agent_smoke --addr HOST:PORT --certs DIR [--node node-1] [--server-name swarm-manager]
//               [--timeout-seconds 10] [--health-only]

#include <grpcpp/grpcpp.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <string_view>

#include "dispatcher.grpc.pb.h"
#include "grpc/health/v1/health.grpc.pb.h"

namespace {

namespace api = docker::swarmkit::v1;
namespace health = grpc::health::v1;

struct Args {
  std::string addr;
  std::string certs;
  std::string node = "node-1";
  std::string server_name = "swarm-manager";
  int timeout_seconds = 10;
  bool health_only = false;
};

[[noreturn]] void fail(const std::string& what) {
  std::fprintf(stderr, "agent_smoke: FAIL: %s\n", what.c_str());
  std::exit(1);
}

std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) fail("cannot read " + path);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

std::string describe(const grpc::Status& st) {
  return std::to_string(static_cast<int>(st.error_code())) + " \"" + st.error_message() + "\"";
}

bool parse(int argc, char** argv, Args& a) {
  for (int i = 1; i < argc; ++i) {
    std::string_view k = argv[i];
    if (k == "--health-only") {
      a.health_only = true;
      continue;
    }
    if (i + 1 >= argc) return false;
    std::string v = argv[++i];
    if (k == "--addr") {
      a.addr = v;
    } else if (k == "--certs") {
      a.certs = v;
    } else if (k == "--node") {
      a.node = v;
    } else if (k == "--server-name") {
      a.server_name = v;
    } else if (k == "--timeout-seconds") {
      a.timeout_seconds = std::atoi(v.c_str());
      if (a.timeout_seconds <= 0) return false;
    } else {
      return false;
    }
  }
  return !a.addr.empty() && !a.certs.empty();
}

}  // namespace

int main(int argc, char** argv) {
  Args a;
  if (!parse(argc, argv, a)) {
    std::fputs(
        "usage: agent_smoke --addr HOST:PORT --certs DIR [--node node-1] "
        "[--server-name swarm-manager] [--timeout-seconds 10] [--health-only]\n",
        stderr);
    return 2;
  }
  auto deadline = [&] {
    return std::chrono::system_clock::now() + std::chrono::seconds(a.timeout_seconds);
  };

  grpc::SslCredentialsOptions tls;
  tls.pem_root_certs = read_file(a.certs + "/ca.pem");
  tls.pem_cert_chain = read_file(a.certs + "/" + a.node + ".pem");
  tls.pem_private_key = read_file(a.certs + "/" + a.node + ".key");
  grpc::ChannelArguments args;
  args.SetSslTargetNameOverride(a.server_name);  // as agents dial
  auto channel = grpc::CreateCustomChannel(a.addr, grpc::SslCredentials(tls), args);

  // 1. Health.
  auto health_stub = health::Health::NewStub(channel);
  for (const char* service : {"", "docker.swarmkit.v1.Dispatcher"}) {
    grpc::ClientContext ctx;
    ctx.set_deadline(deadline());
    health::HealthCheckRequest req;
    req.set_service(service);
    health::HealthCheckResponse resp;
    grpc::Status st = health_stub->Check(&ctx, req, &resp);
    if (!st.ok()) fail(std::string("Health/Check(\"") + service + "\"): " + describe(st));
    if (resp.status() != health::HealthCheckResponse::SERVING) {
      fail(std::string("Health/Check(\"") + service + "\") is " +
           health::HealthCheckResponse::ServingStatus_Name(resp.status()) + ", not SERVING");
    }
    std::printf("agent_smoke: ok: Health/Check(\"%s\") SERVING\n", service);
  }
  if (a.health_only) return 0;

  // 2. Session.
  auto stub = api::Dispatcher::NewStub(channel);
  grpc::ClientContext session_ctx;
  session_ctx.set_deadline(deadline());
  auto session = stub->Session(&session_ctx, api::SessionRequest());
  api::SessionMessage first;
  if (!session->Read(&first)) {
    fail("Session ended before its first message: " + describe(session->Finish()));
  }
  if (first.node().id() != a.node) {
    fail("first SessionMessage names node \"" + first.node().id() + "\", want \"" + a.node + "\"");
  }
  if (first.session_id().empty()) fail("first SessionMessage has no session ID");
  if (first.managers_size() == 0) fail("first SessionMessage has no managers");
  std::printf("agent_smoke: ok: Session: node %s, session %s, manager %s at %s\n",
              first.node().id().c_str(), first.session_id().c_str(),
              first.managers(0).peer().node_id().c_str(), first.managers(0).peer().addr().c_str());

  // 3. Heartbeat, while the session is open.
  {
    grpc::ClientContext ctx;
    ctx.set_deadline(deadline());
    api::HeartbeatRequest req;
    req.set_session_id(first.session_id());
    api::HeartbeatResponse resp;
    grpc::Status st = stub->Heartbeat(&ctx, req, &resp);
    if (!st.ok()) fail("Heartbeat: " + describe(st));
    auto period_ms = resp.period().seconds() * 1000 + resp.period().nanos() / 1000000;
    if (period_ms <= 0) fail("Heartbeat period is " + std::to_string(period_ms) + " ms");
    std::printf("agent_smoke: ok: Heartbeat: period %lld ms\n", static_cast<long long>(period_ms));
  }

  session_ctx.TryCancel();
  session->Finish();
  std::puts("agent_smoke: PASS");
  return 0;
}
