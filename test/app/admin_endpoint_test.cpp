// The operators' HTTP endpoint of a whole server: what agents and operators do over gRPC shows
// up in /metrics, and /readyz follows the server's life.

#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <chrono>
#include <regex>
#include <string>

#include "control.grpc.pb.h"
#include "dispatcher.grpc.pb.h"
#include "support/agent.hpp"
#include "support/grpc_client.hpp"
#include "support/http_get.hpp"
#include "support/test_server.hpp"

namespace {

namespace api = docker::swarmkit::v1;
namespace pb = dispatchd::control::v1;
using dispatchd::test::HttpReply;
using dispatchd::test::TestServer;
using namespace std::chrono_literals;

// GET on the admin endpoint (loopback).
HttpReply http_get(unsigned short port, const std::string& path) {
  return dispatchd::test::http_get("127.0.0.1", port, path);
}

// The value of the sample whose line starts with `series` (name and labels, exactly).
std::optional<double> sample(const std::string& text, const std::string& series) {
  std::size_t at = 0;
  while ((at = text.find(series + " ", at)) != std::string::npos) {
    if (at == 0 || text[at - 1] == '\n') {
      auto eol = text.find('\n', at);
      return std::stod(text.substr(at + series.size() + 1, eol - at - series.size() - 1));
    }
    at += series.size();
  }
  return std::nullopt;
}

std::unique_ptr<grpc::ClientContext> as(const std::string& node_id, const std::string& role = {}) {
  return dispatchd::test::client_context(dispatchd::test::as_node(node_id, role), 20s);
}

TEST(AdminEndpointTest, MetricsCountWhatAgentsAndOperatorsDo) {
  TestServer server;
  auto port = server.call([&] { return server.server().admin_endpoint()->port(); });
  auto channel = grpc::CreateChannel(server.address(), grpc::InsecureChannelCredentials());
  auto dispatcher = api::Dispatcher::NewStub(channel);
  auto control = pb::Control::NewStub(channel);

  auto session = dispatchd::test::open_session(*dispatcher, "node-a");
  ASSERT_TRUE(session->ok);
  const api::SessionMessage& first = session->first;
  for (int i = 0; i < 3; ++i) {
    api::HeartbeatRequest hb;
    hb.set_session_id(first.session_id());
    api::HeartbeatResponse resp;
    auto ctx = as("node-a");
    ASSERT_TRUE(dispatcher->Heartbeat(ctx.get(), hb, &resp).ok());
  }
  {
    api::HeartbeatRequest hb;
    hb.set_session_id("not-the-session");
    api::HeartbeatResponse resp;
    auto ctx = as("node-a");
    EXPECT_EQ(dispatcher->Heartbeat(ctx.get(), hb, &resp).error_code(),
              grpc::StatusCode::INVALID_ARGUMENT);
  }
  pb::UpdateNodeRequest drain;
  drain.set_node_id("node-a");
  drain.set_availability(api::NodeSpec::DRAIN);
  pb::UpdateNodeResponse drained;
  auto octx = as("ops", "swarm-manager");
  ASSERT_TRUE(control->UpdateNode(octx.get(), drain, &drained).ok());

  auto reply = http_get(port, "/metrics");
  ASSERT_EQ(reply.status, 200);
  const std::string& m = reply.body;
  const std::string hb_labels =
      "grpc_type=\"unary\",grpc_service=\"docker.swarmkit.v1.Dispatcher\",grpc_method="
      "\"Heartbeat\"";
  EXPECT_EQ(sample(m, "grpc_server_started_total{" + hb_labels + "}"), 4);
  EXPECT_EQ(sample(m, "grpc_server_handled_total{" + hb_labels + ",grpc_code=\"OK\"}"), 3);
  EXPECT_EQ(sample(m, "grpc_server_handled_total{" + hb_labels + ",grpc_code=\"InvalidArgument\"}"),
            1);
  EXPECT_EQ(sample(m, "grpc_server_handling_seconds_count{" + hb_labels + "}"), 4);
  EXPECT_EQ(sample(m,
                   "grpc_server_started_total{grpc_type=\"server_stream\",grpc_service=\"docker."
                   "swarmkit.v1.Dispatcher\",grpc_method=\"Session\"}"),
            1);
  EXPECT_EQ(sample(m, "dispatchd_sessions{state=\"streaming\"}"), 1);
  EXPECT_EQ(sample(m, "dispatchd_sessions{state=\"registered\"}"), 1);
  EXPECT_EQ(sample(m, "dispatchd_nodes{state=\"ready\"}"), 1);
  EXPECT_EQ(sample(m, "dispatchd_nodes_availability{availability=\"drain\"}"), 1);
  EXPECT_EQ(sample(m, "dispatchd_connections"), 1);
  EXPECT_GT(sample(m, "dispatchd_received_bytes_total").value_or(0), 0);
  EXPECT_GT(sample(m, "dispatchd_sent_bytes_total").value_or(0), 0);
  EXPECT_GT(sample(m, "process_resident_memory_bytes").value_or(0), 0);
  EXPECT_EQ(sample(m, "dispatchd_ready"), 1);
  // Every line is a comment or `series value`.
  std::regex line(R"(^(#.*|[a-zA-Z_:][a-zA-Z0-9_:]*(\{.*\})? [-+0-9.eEInfa]+)$)");
  std::size_t start = 0;
  while (start < m.size()) {
    auto eol = m.find('\n', start);
    std::string l = m.substr(start, eol - start);
    EXPECT_TRUE(std::regex_match(l, line)) << l;
    start = eol + 1;
  }

  EXPECT_EQ(http_get(port, "/healthz").status, 200);
  EXPECT_EQ(http_get(port, "/readyz").status, 200);
  EXPECT_EQ(http_get(port, "/nope").status, 404);
  session->stream->cancel();
}

TEST(AdminEndpointTest, ReadyzFailsOnceTheServerStops) {
  TestServer server;
  auto port = server.call([&] { return server.server().admin_endpoint()->port(); });
  ASSERT_EQ(http_get(port, "/readyz").status, 200);
  server.call([&] {
    server.server().stop();
    return 0;
  });
  // Between stop() and the last connection's drain the endpoint answers "draining"; once
  // everything has drained it is closed. Either way the server is no longer ready.
  auto r = http_get(port, "/readyz");
  EXPECT_TRUE(r.status == 503 || r.status == 0) << r.status;
  EXPECT_TRUE(server.stop());
}

TEST(AdminEndpointTest, AnAdminAddressInUseIsAStartupError) {
  TestServer first;
  auto port = first.call([&] { return first.server().admin_endpoint()->port(); });
  asio::io_context io;
  auto opt = TestServer::default_options();
  opt.admin_listen = "127.0.0.1:" + std::to_string(port);
  dispatchd::app::Server second(io, opt);
  auto bound = second.listen();
  ASSERT_FALSE(bound.has_value());
  EXPECT_NE(bound.error().find("127.0.0.1:" + std::to_string(port)), std::string::npos)
      << bound.error();
}

}  // namespace
