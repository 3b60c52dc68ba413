// dispatchctl's command line: global flags and DISPATCHCTL_* variables, command flags, usage
// errors (exit status 2 before any connection is made).

#include "dispatchd/ctl/args.hpp"

#include <gtest/gtest.h>

#include <map>

#include "dispatchd/ctl/cli.hpp"
#include "dispatchd/status.hpp"

namespace {

using namespace dispatchd::ctl;
using namespace std::chrono_literals;
using Args = std::vector<std::string>;

Getenv env(std::map<std::string, std::string> vars = {}) {
  return [vars](const std::string& name) -> std::optional<std::string> {
    auto it = vars.find(name);
    if (it == vars.end()) return std::nullopt;
    return it->second;
  };
}

TEST(GlobalFlags, Defaults) {
  auto g = parse_global(Args{"node", "ls"}, env());
  ASSERT_TRUE(g) << g.error();
  EXPECT_EQ(g->options.addr, "127.0.0.1:4242");
  EXPECT_EQ(g->options.server_name, "swarm-manager");
  EXPECT_EQ(g->options.node_id, "dispatchctl");
  EXPECT_EQ(g->options.org, "dispatchd");
  EXPECT_EQ(g->options.timeout, 10s);
  EXPECT_FALSE(g->options.insecure);
  EXPECT_FALSE(g->options.json);
  EXPECT_EQ(g->rest, (Args{"node", "ls"}));
}

TEST(GlobalFlags, BothSpellingsAndGoDurations) {
  auto g =
      parse_global(Args{"--addr", "10.0.0.1:1", "--timeout=1m30s", "--tls-ca=ca.pem", "--tls-cert",
                        "c.pem", "--tls-key=c.key", "--server-name", "x", "--insecure",
                        "--json=true", "--node-id=op", "--org", "o", "health", "--service", "s"},
                   env());
  ASSERT_TRUE(g) << g.error();
  EXPECT_EQ(g->options.addr, "10.0.0.1:1");
  EXPECT_EQ(g->options.timeout, 90s);
  EXPECT_EQ(g->options.tls_ca, "ca.pem");
  EXPECT_EQ(g->options.tls_cert, "c.pem");
  EXPECT_EQ(g->options.tls_key, "c.key");
  EXPECT_EQ(g->options.server_name, "x");
  EXPECT_TRUE(g->options.insecure);
  EXPECT_TRUE(g->options.json);
  EXPECT_EQ(g->options.node_id, "op");
  EXPECT_EQ(g->options.org, "o");
  // Flags after the command belong to the command.
  EXPECT_EQ(g->rest, (Args{"health", "--service", "s"}));
}

TEST(GlobalFlags, EnvironmentVariablesAndFlagsWin) {
  auto vars = env({{"DISPATCHCTL_ADDR", "env:1"},
                   {"DISPATCHCTL_TLS_CA", "env-ca.pem"},
                   {"DISPATCHCTL_SERVER_NAME", "env-name"},
                   {"DISPATCHCTL_INSECURE", "true"},
                   {"DISPATCHCTL_TIMEOUT", "300ms"},
                   {"DISPATCHCTL_NODE_ID", "env-node"},
                   {"DISPATCHCTL_JSON", "1"}});
  auto g = parse_global(Args{"health"}, vars);
  ASSERT_TRUE(g) << g.error();
  EXPECT_EQ(g->options.addr, "env:1");
  EXPECT_EQ(g->options.tls_ca, "env-ca.pem");
  EXPECT_EQ(g->options.server_name, "env-name");
  EXPECT_TRUE(g->options.insecure);
  EXPECT_EQ(g->options.timeout, 300ms);
  EXPECT_EQ(g->options.node_id, "env-node");
  EXPECT_TRUE(g->options.json);

  g = parse_global(Args{"--addr=flag:2", "--insecure=false", "--timeout", "2s", "health"}, vars);
  ASSERT_TRUE(g) << g.error();
  EXPECT_EQ(g->options.addr, "flag:2");
  EXPECT_FALSE(g->options.insecure);
  EXPECT_EQ(g->options.timeout, 2s);
}

TEST(GlobalFlags, Errors) {
  auto e = parse_global(Args{"--timeout", "5", "health"}, env());
  ASSERT_FALSE(e);
  EXPECT_NE(e.error().find("--timeout"), std::string::npos) << e.error();
  EXPECT_FALSE(parse_global(Args{"--timeout=0s", "health"}, env()));
  EXPECT_FALSE(parse_global(Args{"--insecure=maybe", "health"}, env()));
  EXPECT_FALSE(parse_global(Args{"--addr"}, env()));
  EXPECT_FALSE(parse_global(Args{"--bogus", "health"}, env()));
  e = parse_global(Args{"health"}, env({{"DISPATCHCTL_TIMEOUT", "soon"}}));
  ASSERT_FALSE(e);
  EXPECT_NE(e.error().find("DISPATCHCTL_TIMEOUT"), std::string::npos) << e.error();
}

TEST(CommandFlags, MixedWithOperandsRepeatedAndShort) {
  const std::vector<FlagSpec> specs = {
      {"state", 0, false, "S", ""}, {"quiet", 'q', true, "", ""}, {"force", 'f', true, "", ""}};
  auto p = parse_args(Args{"id1", "--state", "ready", "--state=down", "-q", "id2", "--force=false",
                           "--", "--not-a-flag"},
                      specs);
  ASSERT_TRUE(p) << p.error();
  EXPECT_EQ(p->all("state"), (Args{"ready", "down"}));
  EXPECT_EQ(p->last("state"), "down");
  EXPECT_TRUE(p->flag("quiet"));
  EXPECT_TRUE(p->has("force"));
  EXPECT_FALSE(p->flag("force"));
  EXPECT_EQ(p->positionals, (Args{"id1", "id2", "--not-a-flag"}));
  EXPECT_FALSE(p->help);

  EXPECT_FALSE(parse_args(Args{"--state"}, specs));
  EXPECT_FALSE(parse_args(Args{"-x"}, specs));
  EXPECT_FALSE(parse_args(Args{"--quiet=2"}, specs));
  auto h = parse_args(Args{"-h"}, specs);
  ASSERT_TRUE(h);
  EXPECT_TRUE(h->help);
}

struct Run {
  int status;
  std::string out, err;
};

Run run_ctl(Args args, std::map<std::string, std::string> vars = {}) {
  Run r;
  r.status = run(args, env(std::move(vars)), r.out, r.err);
  return r;
}

// Usage errors exit 2 with a message naming the problem and never dial: --addr points
// nowhere routable, so a connection attempt would show up as exit status 1.
TEST(Usage, ErrorsExitTwoWithAClearMessage) {
  struct Case {
    Args args;
    std::string message;
  };
  const std::vector<Case> cases = {
      {{}, "dispatchctl: no command given"},
      {{"frobnicate"}, "unknown command \"frobnicate\""},
      {{"node"}, "node needs a command"},
      {{"node", "list"}, "unknown command \"node list\""},
      {{"node", "inspect"}, "node inspect needs ID"},
      {{"node", "inspect", "a", "b"}, "node inspect needs ID (got 2 arguments)"},
      {{"node", "ls", "extra"}, "node ls takes no arguments"},
      {{"node", "ls", "--state", "sleepy"},
       "invalid value for --state: \"sleepy\" is not one of unknown, down, ready, disconnected"},
      {{"node", "ls", "--addr", "x"}, "unknown flag --addr"},
      {{"node", "update", "n1"}, "nothing to update"},
      {{"node", "update", "n1", "--role", "boss"}, "invalid value for --role"},
      {{"task", "create"}, "task create needs --node ID"},
      {{"task", "create", "--node", "n1", "--state", "bogus"}, "invalid value for --state"},
      {{"managers", "set"}, "managers set needs NODE_ID=ADDR[@WEIGHT]..."},
      {{"managers", "set", "m1=a:1", "m2"}, "invalid manager \"m2\""},
      {{"keys", "set", "gossip:!!:1"}, "invalid key \"gossip:!!:1\""},
      {{"--timeout", "forever", "health"}, "invalid value for --timeout"},
      {{"--tls-cert", "c.pem", "health"}, "--tls-cert and --tls-key go together"},
  };
  for (const auto& c : cases) {
    Args args = {"--addr", "192.0.2.1:9", "--timeout", "1ms"};
    args.insert(args.end(), c.args.begin(), c.args.end());
    auto r = run_ctl(args);
    std::string shown;
    for (const auto& a : c.args)
      shown += a + " ";
    EXPECT_EQ(r.status, 2) << shown << r.err;
    EXPECT_NE(r.err.find(c.message), std::string::npos) << shown << "\n" << r.err;
    EXPECT_TRUE(r.err.starts_with("dispatchctl: ")) << r.err;
    EXPECT_TRUE(r.out.empty()) << r.out;
  }
}

TEST(Usage, HelpExitsZeroOnStdout) {
  auto r = run_ctl({"--help"});
  EXPECT_EQ(r.status, 0);
  EXPECT_NE(r.out.find("Usage: dispatchctl [global flags] COMMAND"), std::string::npos);
  for (const char* cmd : {"health", "node ls", "node inspect ID", "node drain ID", "node rm ID",
                          "task create", "task ls", "task rm ID", "managers set", "keys set"}) {
    EXPECT_NE(r.out.find(cmd), std::string::npos) << cmd;
  }
  for (const char* flag : {"--addr", "--tls-ca", "--tls-cert", "--tls-key", "--server-name",
                           "--insecure", "--timeout", "--json"}) {
    EXPECT_NE(r.out.find(flag), std::string::npos) << flag;
  }

  r = run_ctl({"node", "ls", "--help"});
  EXPECT_EQ(r.status, 0);
  EXPECT_NE(r.out.find("Usage: dispatchctl node ls [flags]"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("-q, --quiet"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("--availability A"), std::string::npos) << r.out;

  r = run_ctl({"node", "--help"});
  EXPECT_EQ(r.status, 0);
  EXPECT_NE(r.out.find("dispatchctl node drain ID"), std::string::npos) << r.out;

  r = run_ctl({"-h", "task", "create"});
  EXPECT_EQ(r.status, 0);
  EXPECT_NE(r.out.find("--desired-state STATE"), std::string::npos) << r.out;
}

TEST(StatusCodeName, GrpcNames) {
  EXPECT_EQ(dispatchd::status_code_constant(7), "PERMISSION_DENIED");
  EXPECT_EQ(dispatchd::status_code_constant(14), "UNAVAILABLE");
  EXPECT_EQ(dispatchd::status_code_constant(9), "FAILED_PRECONDITION");
  EXPECT_EQ(dispatchd::status_code_constant(16), "UNAUTHENTICATED");
  EXPECT_EQ(dispatchd::status_code_constant(99), "CODE(99)");
}

}  // namespace
