// dispatchd's command line parsed in process: every value reaches its field, bad values and
// bad combinations are refused with the flag's name, and nothing outside the result changes.

#include "dispatchd/app/options.hpp"

#include <gtest/gtest.h>

#include <chrono>
#include <initializer_list>
#include <string>
#include <string_view>
#include <vector>

namespace dispatchd::app {
namespace {

using namespace std::chrono_literals;

std::expected<CommandLine, std::string> parse(std::initializer_list<std::string_view> args,
                                              std::initializer_list<std::string_view> env = {}) {
  std::vector<std::string_view> a(args), e(env);
  return parse_command_line(a, e);
}

// The options a command line produced, failing the test when it was refused.
DaemonOptions accepted(std::initializer_list<std::string_view> args,
                       std::initializer_list<std::string_view> env = {}) {
  auto r = parse(args, env);
  EXPECT_TRUE(r.has_value()) << r.error();
  if (!r) return {};
  EXPECT_FALSE(r->help);
  return r->options;
}

std::string refused(std::initializer_list<std::string_view> args,
                    std::initializer_list<std::string_view> env = {}) {
  auto r = parse(args, env);
  EXPECT_FALSE(r.has_value());
  return r ? std::string() : r.error();
}

TEST(OptionsTest, NoArgumentsGiveTheDocumentedDefaults) {
  auto o = accepted({});
  EXPECT_EQ(o.server.listen, "127.0.0.1:4242");
  EXPECT_EQ(o.server.admin_listen, "127.0.0.1:9242");
  EXPECT_FALSE(o.server.insecure);
  EXPECT_FALSE(o.server.tls.openssl_records);
  EXPECT_EQ(o.server.tls_handshake_timeout, 10s);
  EXPECT_EQ(o.server.dispatcher.heartbeat_period, 5s);
  EXPECT_EQ(o.server.dispatcher.heartbeat_epsilon, 500ms);
  EXPECT_EQ(o.server.dispatcher.grace_multiplier, 3);
  EXPECT_EQ(o.server.dispatcher.rate_limit_period, 8s);
  EXPECT_EQ(o.server.dispatcher.batch_interval, 100ms);
  EXPECT_EQ(o.server.dispatcher.node_down_period, 24h);
  EXPECT_EQ(o.server.dispatcher.manager_node_id, "manager-1");
  EXPECT_EQ(o.server.dispatcher.cluster_id, "dispatchd");
  EXPECT_EQ(o.server.grpc.max_receive_message_size, 4u << 20);
  EXPECT_EQ(o.server.max_connections, 200000u);
  EXPECT_EQ(o.server.max_handshakes, 256u);
  EXPECT_EQ(o.server.h2.drain_timeout, 5s);
  EXPECT_EQ(o.server.h2.keepalive_time, 2min);
  EXPECT_EQ(o.server.h2.keepalive_timeout, 20s);
  EXPECT_EQ(o.server.h2.write_stall_timeout, 1min);
  EXPECT_EQ(o.advertise, "");
  EXPECT_EQ(o.state_dir, "");  // the daemon picks default_state_dir()
  EXPECT_FALSE(o.in_memory);   // durable by default
  EXPECT_EQ(o.state_sync_interval, 30s);
  EXPECT_EQ(o.log_level, log::Level::info);
  EXPECT_EQ(o.log_format, log::Format::text);
  EXPECT_EQ(o.log_buffer, 1u << 20);
  EXPECT_TRUE(o.unknown_env.empty());
}

TEST(OptionsTest, GoDurationsInBothSpellings) {
  auto o = accepted({"--heartbeat-period", "1m30s", "--heartbeat-epsilon=300ms",
                     "--state-sync-interval=0", "--drain-timeout", "1.5s", "--keepalive-time=0"});
  EXPECT_EQ(o.server.dispatcher.heartbeat_period, 90s);
  EXPECT_EQ(o.server.dispatcher.heartbeat_epsilon, 300ms);
  EXPECT_EQ(o.state_sync_interval, 0ms);
  EXPECT_EQ(o.server.h2.drain_timeout, 1500ms);
  EXPECT_EQ(o.server.h2.keepalive_time, 0ms);
}

TEST(OptionsTest, StringsNumbersSizesAndEnumsReachTheirFields) {
  auto o = accepted({"--insecure", "--listen=127.0.0.1:0", "--admin-listen=", "--advertise-addr",
                     "10.0.0.1:4242", "--state-dir", "/var/lib/d", "--grace-multiplier", "7",
                     "--max-recv-msg-size", "2KiB", "--log-buffer=0", "--log-level", "debug",
                     "--log-format=json", "--require-known-nodes=false", "--node-id", "m-2",
                     "--cluster-id=org"});
  EXPECT_TRUE(o.server.insecure);
  EXPECT_EQ(o.server.listen, "127.0.0.1:0");
  EXPECT_EQ(o.server.admin_listen, "");
  EXPECT_EQ(o.advertise, "10.0.0.1:4242");
  EXPECT_EQ(o.state_dir, "/var/lib/d");
  EXPECT_EQ(o.server.dispatcher.grace_multiplier, 7);
  EXPECT_EQ(o.server.grpc.max_receive_message_size, 2048u);
  EXPECT_EQ(o.log_buffer, 0u);
  EXPECT_EQ(o.log_level, log::Level::debug);
  EXPECT_EQ(o.log_format, log::Format::json);
  EXPECT_FALSE(o.server.dispatcher.require_known_nodes);
  EXPECT_EQ(o.server.dispatcher.manager_node_id, "m-2");
  EXPECT_EQ(o.server.dispatcher.cluster_id, "org");
}

TEST(OptionsTest, BadValuesNameTheFlag) {
  EXPECT_EQ(refused({"--heartbeat-period", "soon"}),
            "invalid value for --heartbeat-period: not a duration (write it like 300ms, 5s or "
            "1m30s)");
  EXPECT_EQ(refused({"--heartbeat-period=0"}),
            "invalid value for --heartbeat-period: must be positive");
  EXPECT_EQ(refused({"--drain-timeout=-1s"}),
            "invalid value for --drain-timeout: must not be negative");
  EXPECT_EQ(refused({"--max-connections", "0"}),
            "invalid value for --max-connections: must be between 1 and 10000000");
  EXPECT_EQ(refused({"--grace-multiplier", "three"}),
            "invalid value for --grace-multiplier: not a whole number");
  EXPECT_EQ(refused({"--max-recv-msg-size", "5XB"}),
            "invalid value for --max-recv-msg-size: unknown size unit \"XB\" (use KiB, MiB or "
            "GiB)");
  EXPECT_EQ(refused({"--log-level", "loud"}),
            "invalid value for --log-level: want debug, info, warn, error or off");
  EXPECT_EQ(refused({"--log-format", "xml"}), "invalid value for --log-format: want text or json");
  EXPECT_EQ(refused({"--listen="}), "invalid value for --listen: must not be empty");
  EXPECT_EQ(refused({"--insecure=maybe"}),
            "invalid value for --insecure: want true or false, got \"maybe\"");
}

TEST(OptionsTest, HandshakeThreadsAreANumberOrAuto) {
  EXPECT_EQ(accepted({}).server.tls_handshake_threads, net::default_handshake_threads());
  EXPECT_EQ(accepted({"--tls-handshake-threads", "0"}).server.tls_handshake_threads, 0u);
  EXPECT_EQ(accepted({"--tls-handshake-threads=3"}).server.tls_handshake_threads, 3u);
  EXPECT_EQ(accepted({"--tls-handshake-threads=0", "--tls-handshake-threads", "auto"})
                .server.tls_handshake_threads,
            net::default_handshake_threads());
  EXPECT_EQ(refused({"--tls-handshake-threads", "65"}),
            "invalid value for --tls-handshake-threads: must be between 0 and 64");
  EXPECT_EQ(refused({"--tls-handshake-threads", "many"}),
            "invalid value for --tls-handshake-threads: not a whole number");
}

TEST(OptionsTest, UnknownFlagsMissingValuesAndOperandsAreRefused) {
  EXPECT_EQ(refused({"--no-such-flag"}), "unknown flag --no-such-flag (see --help)");
  EXPECT_EQ(refused({"--no-such-flag=1"}), "unknown flag --no-such-flag (see --help)");
  EXPECT_EQ(refused({"--insecure", "--heartbeat-period"}), "flag --heartbeat-period needs a value");
  EXPECT_EQ(refused({"serve"}), "unexpected argument \"serve\" (flags start with --)");
  EXPECT_EQ(refused({"-x"}), "unexpected argument \"-x\" (flags start with --)");
  // The first problem on the line is the one reported.
  EXPECT_EQ(refused({"--heartbeat-period", "soon", "--no-such-flag"}),
            "invalid value for --heartbeat-period: not a duration (write it like 300ms, 5s or "
            "1m30s)");
}

TEST(OptionsTest, CombinationsThatCannotWorkAreRefused) {
  EXPECT_EQ(refused({"--insecure", "--tls-openssl-records"}),
            "--tls-openssl-records has no effect with --insecure (no TLS): choose one");
  EXPECT_EQ(refused({"--insecure", "--tls-ca", "/ca.pem"}),
            "--insecure turns TLS off but --tls-cert/--tls-key/--tls-ca were given: choose one");
  EXPECT_EQ(refused({"--heartbeat-period", "1s", "--heartbeat-epsilon", "1s"}),
            "--heartbeat-epsilon (1s) must be smaller than --heartbeat-period (1s)");
  EXPECT_EQ(refused({"--listen", "127.0.0.1:4300", "--admin-listen=127.0.0.1:4300"}),
            "--admin-listen and --listen are both 127.0.0.1:4300: the admin endpoint needs its "
            "own port");
  EXPECT_EQ(refused({"--keepalive-time", "10s", "--keepalive-timeout", "10s"}),
            "--keepalive-timeout must be shorter than --keepalive-time");
  // Each alone is fine; keepalive off takes any timeout; no admin endpoint shares no port.
  accepted({"--insecure"});
  accepted({"--tls-openssl-records"});
  accepted({"--keepalive-time", "0", "--keepalive-timeout", "10s"});
  accepted({"--listen", "127.0.0.1:4300", "--admin-listen="});
}

TEST(OptionsTest, EtcdStoreTakesEndpointsPrefixTlsAndLease) {
  auto o = accepted({});
  EXPECT_TRUE(o.etcd_endpoints.empty());  // the embedded store
  EXPECT_EQ(o.etcd_prefix, "/dispatchd/");
  EXPECT_EQ(o.etcd_lease_ttl, 5s);

  o = accepted({"--store", "etcd://127.0.0.1:2379,etcd-2.example:2379,[::1]:2479",
                "--etcd-prefix=/prod/swarm", "--etcd-lease-ttl", "10s", "--etcd-ca", "/ca.pem",
                "--etcd-cert", "/c.pem", "--etcd-key", "/k.pem"});
  EXPECT_EQ(o.etcd_endpoints,
            (std::vector<std::string>{"127.0.0.1:2379", "etcd-2.example:2379", "[::1]:2479"}));
  EXPECT_EQ(o.etcd_prefix, "/prod/swarm/");
  EXPECT_EQ(o.etcd_lease_ttl, 10s);
  EXPECT_EQ(o.etcd_ca, "/ca.pem");

  EXPECT_EQ(refused({"--store", "http://127.0.0.1:2379"}),
            "invalid value for --store: want etcd://HOST:PORT[,HOST:PORT...]");
  EXPECT_EQ(refused({"--store", "etcd://127.0.0.1:2379,"}),
            "invalid value for --store: \"\" is not HOST:PORT");
  EXPECT_EQ(refused({"--store", "etcd://127.0.0.1"}),
            "invalid value for --store: \"127.0.0.1\" is not HOST:PORT");
  EXPECT_EQ(refused({"--etcd-prefix", "dispatchd"}),
            "invalid value for --etcd-prefix: want a key prefix starting with /");
  EXPECT_EQ(refused({"--etcd-lease-ttl", "1500ms"}),
            "invalid value for --etcd-lease-ttl: want whole seconds, at least 2s");
  EXPECT_EQ(refused({"--store", "etcd://a:1", "--in-memory"}),
            "--in-memory has no effect with --store etcd://... (etcd holds the store): choose one");
  EXPECT_EQ(refused({"--store", "etcd://a:1", "--state-dir", "/var/lib/x"}),
            "--state-dir has no effect with --store etcd://... (etcd holds the store): choose "
            "one");
  EXPECT_EQ(refused({"--etcd-ca", "/ca.pem"}), "--etcd-ca/--etcd-cert need --store etcd://...");
  EXPECT_EQ(refused({"--store", "etcd://a:1", "--etcd-ca", "/ca.pem", "--etcd-cert", "/c.pem"}),
            "--etcd-cert and --etcd-key go together");
  EXPECT_EQ(refused({"--store", "etcd://a:1", "--etcd-cert", "/c.pem", "--etcd-key", "/k.pem"}),
            "--etcd-cert needs --etcd-ca (a client certificate is sent over TLS only)");
}

TEST(OptionsTest, EnvironmentFillsInAndTheCommandLineWins) {
  auto o = accepted({"--heartbeat-period", "10s"},
                    {"DISPATCHD_HEARTBEAT_PERIOD=2s", "DISPATCHD_LOG_FORMAT=json",
                     "DISPATCHD_INSECURE=true", "DISPATCHD_HEARTBEAT_PERIDO=1s", "HOME=/root"});
  EXPECT_EQ(o.server.dispatcher.heartbeat_period, 10s);
  EXPECT_EQ(o.log_format, log::Format::json);
  EXPECT_TRUE(o.server.insecure);
  EXPECT_EQ(o.unknown_env, std::vector<std::string>{"DISPATCHD_HEARTBEAT_PERIDO"});
  EXPECT_EQ(refused({}, {"DISPATCHD_GRACE_MULTIPLIER=zero"}),
            "invalid value for DISPATCHD_GRACE_MULTIPLIER (--grace-multiplier): not a whole "
            "number");
  // A combination made of a variable and a flag is checked like one made of two flags.
  EXPECT_EQ(refused({"--tls-openssl-records"}, {"DISPATCHD_INSECURE=1"}),
            "--tls-openssl-records has no effect with --insecure (no TLS): choose one");
}

TEST(OptionsTest, HelpSkipsTheCombinationChecksButNotBadValues) {
  for (auto h : {"--help", "-h", "-help"}) {
    auto r = parse({"--insecure", "--tls-openssl-records", h});
    ASSERT_TRUE(r.has_value()) << h << ": " << r.error();
    EXPECT_TRUE(r->help) << h;
  }
  EXPECT_EQ(refused({"--help", "--no-such-flag"}), "unknown flag --no-such-flag (see --help)");
}

TEST(OptionsTest, HelpListsEveryFlagWithItsDefault) {
  auto help = help_text();
  EXPECT_TRUE(help.starts_with("Usage: dispatchd [flags]\n\nServes docker.swarmkit.v1.Dispatcher"))
      << help;
  for (std::string_view line :
       {"  --listen HOST:PORT              address for agents to connect to (default "
        "127.0.0.1:4242)\n",
        "  --heartbeat-epsilon DURATION    random jitter added to each heartbeat period (period ± "
        "epsilon) (default 500ms)\n",
        "  --tls-handshake-timeout DURATION\n                                  close connections",
        "  --log-format FORMAT             text or json (default text)\n",
        "  --help                          show this help\n"}) {
    EXPECT_NE(help.find(line), std::string::npos) << line;
  }
}

}  // namespace
}  // namespace dispatchd::app
