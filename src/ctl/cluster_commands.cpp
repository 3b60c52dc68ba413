// dispatchctl health, managers ... and keys ...: the server's health and the cluster-wide
// fields every Session carries (the manager list, the network bootstrap keys).

#include "dispatchd/ctl/command.hpp"
#include "dispatchd/ctl/format.hpp"
#include "grpc/health/v1/health.grpc.pb.h"

namespace dispatchd::ctl {

namespace api = docker::swarmkit::v1;
namespace cv1 = dispatchd::control::v1;
namespace hv1 = ::grpc::health::v1;

namespace {

const FlagSpec kServiceFlag{"service", 0, false, "NAME",
                            "service to check (default \"\": the server as a whole)"};

}  // namespace

void add_health_command(std::vector<Command>& cmds) {
  cmds.push_back({"health",
                  "",
                  "check grpc.health.v1.Health; exit 0 only when SERVING",
                  {kServiceFlag},
                  0,
                  0,
                  [](Context& c, const ParsedArgs& a) {
                    hv1::HealthCheckRequest req;
                    req.set_service(a.last("service").value_or(""));
                    hv1::HealthCheckResponse resp;
                    auto ctx = c.call();
                    auto st = hv1::Health::NewStub(c.channel())->Check(ctx.get(), req, &resp);
                    if (!st.ok()) return c.fail(st);
                    if (c.opt.json) {
                      c.json(resp);
                    } else {
                      c.out += hv1::HealthCheckResponse::ServingStatus_Name(resp.status()) + "\n";
                    }
                    return resp.status() == hv1::HealthCheckResponse::SERVING ? 0 : 1;
                  }});
}

void add_cluster_commands(std::vector<Command>& cmds) {
  cmds.push_back({"managers ls",
                  "",
                  "list the managers every Session carries",
                  {},
                  0,
                  0,
                  [](Context& c, const ParsedArgs&) {
                    return unary(c, &Stub::GetManagers, cv1::GetManagersRequest{},
                                 [](const auto& resp) { return format_manager_table(resp); });
                  }});
  cmds.push_back(
      {"managers set",
       "NODE_ID=ADDR[@WEIGHT]...",
       "replace the manager list (weight default " + std::to_string(kDefaultManagerWeight) + ")",
       {},
       1,
       SIZE_MAX,
       [](Context& c, const ParsedArgs& a) {
         cv1::SetManagersRequest req;
         for (const auto& p : a.positionals) {
           auto m = parse_manager(p);
           if (!m) throw UsageError("invalid manager " + m.error());
           *req.add_managers() = std::move(*m);
         }
         return unary(c, &Stub::SetManagers, req);
       }});

  cmds.push_back({"keys ls",
                  "",
                  "list the cluster's network bootstrap keys",
                  {},
                  0,
                  0,
                  [](Context& c, const ParsedArgs&) {
                    return unary(c, &Stub::GetNetworkKeys, cv1::GetNetworkKeysRequest{},
                                 [](const auto& resp) { return format_key_table(resp); });
                  }});
  cmds.push_back({"keys set",
                  "SUBSYSTEM:BASE64KEY:LAMPORT...",
                  "replace the network bootstrap keys (algorithm AES_128_GCM)",
                  {},
                  1,
                  SIZE_MAX,
                  [](Context& c, const ParsedArgs& a) {
                    cv1::SetNetworkKeysRequest req;
                    for (const auto& p : a.positionals) {
                      auto k = parse_network_key(p);
                      if (!k) throw UsageError("invalid key " + k.error());
                      *req.add_keys() = std::move(*k);
                    }
                    return unary(c, &Stub::SetNetworkKeys, req);
                  }});

  cmds.push_back({"cluster root-ca",
                  "",
                  "print the cluster root CA certificate(s) every Session carries (PEM)",
                  {},
                  0,
                  0,
                  [](Context& c, const ParsedArgs&) {
                    return unary(c, &Stub::GetRootCA, cv1::GetRootCARequest{},
                                 [](const auto& resp) { return resp.ca_cert_pem(); });
                  }});
  cmds.push_back({"cluster set-root-ca",
                  "FILE|-",
                  "replace the cluster root CA every Session carries with the PEM in FILE (- for "
                  "stdin); every open Session gets it at once",
                  {},
                  1,
                  1,
                  [](Context& c, const ParsedArgs& a) {
                    cv1::SetRootCARequest req;
                    req.set_ca_cert_pem(read_file_or_stdin("root CA", a.positionals[0]));
                    return unary(c, &Stub::SetRootCA, req);
                  }});
}

}  // namespace dispatchd::ctl
