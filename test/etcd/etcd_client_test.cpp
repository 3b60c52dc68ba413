// dispatchd::etcd::Client against a real etcd (Debian's etcd-server): one member, or a
// three-member cluster. Skipped only when /usr/bin/etcd is missing.

#include <gtest/gtest.h>

#include <asio/co_spawn.hpp>
#include <asio/io_context.hpp>
#include <csignal>
#include <functional>
#include <optional>

#include "dispatchd/etcd/client.hpp"
#include "support/drive.hpp"
#include "support/etcd_cluster.hpp"

namespace {

using dispatchd::Status;
using dispatchd::StatusCode;
using dispatchd::etcd::Client;
using dispatchd::etcd::ClientOptions;
using dispatchd::etcd::LeaseKeeper;
using dispatchd::etcd::WatchOptions;
using dispatchd::test::EtcdCluster;
using dispatchd::test::EtcdTls;
namespace etcd = dispatchd::etcd;
namespace pb = etcdserverpb;
using namespace std::chrono_literals;
using SteadyClock = std::chrono::steady_clock;

class EtcdClientTest : public ::testing::Test {
 protected:
  void start(std::size_t members = 1, ClientOptions options = {},
             std::optional<EtcdTls> tls = std::nullopt) {
    if (!EtcdCluster::available()) GTEST_SKIP() << EtcdCluster::kBinary << " is not installed";
    // As dispatchd does (src/app/main.cpp): OpenSSL writes to a socket etcd has closed.
    std::signal(SIGPIPE, SIG_IGN);
    cluster_ = std::make_unique<EtcdCluster>(members, 30s, std::move(tls));
    ASSERT_TRUE(cluster_->started()) << cluster_->error();
    if (options.endpoints.empty()) options.endpoints = cluster_->endpoints();
    auto c = Client::create(wheel_, std::move(options));
    ASSERT_TRUE(c) << c.error().message();
    client_ = std::move(*c);
  }

  // Closes the client, then lets what it had running (the connection's reader, a stream's
  // coroutine parked on it) see the close and end, so that no coroutine frame, and no
  // connection it holds, outlives the io_context.
  void TearDown() override {
    client_.reset();
    io_.restart();
    io_.run_for(300ms);
  }

  // Drives the io_context until the coroutine finishes (bounded).
  template <class T>
  T run(asio::awaitable<T> a, std::chrono::seconds limit = 30s) {
    return dispatchd::test::drive(io_, std::move(a), limit);
  }

  // Drives the io_context until `done` holds; false at the limit.
  bool run_until(const std::function<bool()>& done, std::chrono::seconds limit = 30s) {
    return dispatchd::test::drive_until(io_, done, limit, 50ms);
  }

  std::int64_t put(const std::string& k, const std::string& v, std::int64_t lease = 0) {
    auto r = run(client_->put(k, v, lease));
    EXPECT_TRUE(r) << r.error().message();
    return r ? r->header().revision() : 0;
  }

  asio::io_context io_{1};
  dispatchd::co::TimerWheel wheel_{io_};
  std::unique_ptr<EtcdCluster> cluster_;
  std::unique_ptr<Client> client_;
};

TEST(EtcdEndpointTest, ParsesHostPortAndSchemes) {
  auto a = etcd::parse_endpoint("127.0.0.1:2379");
  ASSERT_TRUE(a);
  EXPECT_EQ(a->host, "127.0.0.1");
  EXPECT_EQ(a->port, 2379);
  EXPECT_FALSE(a->tls);
  auto b = etcd::parse_endpoint("https://[::1]:2379");
  ASSERT_TRUE(b);
  EXPECT_EQ(b->host, "::1");
  EXPECT_TRUE(b->tls);
  EXPECT_EQ(b->authority(), "[::1]:2379");
  EXPECT_FALSE(etcd::parse_endpoint("etcd:0"));
  EXPECT_FALSE(etcd::parse_endpoint("etcd"));
  EXPECT_FALSE(etcd::parse_endpoint("unix://x:1"));
  EXPECT_EQ(etcd::prefix_end("a/"), "a0");
  EXPECT_EQ(etcd::prefix_end("a\xff"), "b");
  EXPECT_EQ(etcd::prefix_end("\xff"), std::string(1, '\0'));
}

TEST_F(EtcdClientTest, PutGetDelete) {
  start();
  auto r1 = put("/t/a", "1");
  auto r2 = put("/t/b", "2");
  EXPECT_GT(r2, r1);
  auto one = run(client_->range("/t/a"));
  ASSERT_TRUE(one) << one.error().message();
  ASSERT_EQ(one->kvs_size(), 1);
  EXPECT_EQ(one->kvs(0).value(), "1");
  EXPECT_EQ(one->kvs(0).mod_revision(), r1);
  auto all = run(client_->range("/t/", etcd::prefix_end("/t/")));
  ASSERT_TRUE(all);
  EXPECT_EQ(all->count(), 2);
  auto old = run(client_->range("/t/a", {}, r1 - 1));
  ASSERT_TRUE(old);
  EXPECT_EQ(old->kvs_size(), 0);  // not written yet at that revision
  auto del = run(client_->delete_range("/t/", etcd::prefix_end("/t/"), true));
  ASSERT_TRUE(del) << del.error().message();
  EXPECT_EQ(del->deleted(), 2);
  ASSERT_EQ(del->prev_kvs_size(), 2);
  auto none = run(client_->range("/t/", etcd::prefix_end("/t/")));
  ASSERT_TRUE(none);
  EXPECT_EQ(none->count(), 0);
}

TEST_F(EtcdClientTest, TxnFencesOnModRevision) {
  start();
  // mod_revision 0: only while the key does not exist.
  auto created = run(client_->put_if_mod_revision("/f/k", "v1", 0));
  ASSERT_TRUE(created) << created.error().message();
  EXPECT_TRUE(created->succeeded());
  auto rev1 = created->header().revision();
  auto again = run(client_->put_if_mod_revision("/f/k", "x", 0));
  ASSERT_TRUE(again);
  EXPECT_FALSE(again->succeeded());

  auto next = run(client_->put_if_mod_revision("/f/k", "v2", rev1));
  ASSERT_TRUE(next);
  EXPECT_TRUE(next->succeeded());
  // A writer still holding rev1 is fenced off and sees the current state.
  auto stale = run(client_->put_if_mod_revision("/f/k", "stale", rev1));
  ASSERT_TRUE(stale);
  EXPECT_FALSE(stale->succeeded());
  ASSERT_EQ(stale->responses_size(), 1);
  const auto& kvs = stale->responses(0).response_range().kvs();
  ASSERT_EQ(kvs.size(), 1);
  EXPECT_EQ(kvs[0].value(), "v2");
  EXPECT_EQ(kvs[0].mod_revision(), next->header().revision());
  auto now = run(client_->range("/f/k"));
  ASSERT_TRUE(now);
  EXPECT_EQ(now->kvs(0).value(), "v2");
}

TEST_F(EtcdClientTest, KeepAliveKeepsTheKeyAndRevokeRemovesIt) {
  start();
  auto lease = run(client_->lease_grant(2s));
  ASSERT_TRUE(lease) << lease.error().message();
  put("/l/k", "v", lease->id());
  LeaseKeeper keeper(*client_, lease->id(), std::chrono::seconds(lease->ttl()));
  std::optional<Status> ended;
  asio::co_spawn(io_, keeper.run(), [&](std::exception_ptr, Status s) { ended = s; });
  // Six renewals, a third of the TTL apart: well past the TTL.
  auto t0 = SteadyClock::now();
  ASSERT_TRUE(run_until([&] { return keeper.renewals() >= 7 || ended; }));
  ASSERT_FALSE(ended) << ended->message();
  EXPECT_GT(SteadyClock::now() - t0, std::chrono::seconds(lease->ttl()));
  auto kept = run(client_->range("/l/k"));
  ASSERT_TRUE(kept);
  EXPECT_EQ(kept->kvs_size(), 1);
  keeper.stop();
  ASSERT_TRUE(run_until([&] { return ended.has_value(); }));
  EXPECT_TRUE(ended->is_ok()) << ended->message();

  auto revoked = run(client_->lease_revoke(lease->id()));
  ASSERT_TRUE(revoked) << revoked.error().message();
  auto gone = run(client_->range("/l/k"));
  ASSERT_TRUE(gone);
  EXPECT_EQ(gone->kvs_size(), 0);
  // Keeping a revoked lease alive reports its loss.
  LeaseKeeper late(*client_, lease->id(), 2s);
  auto st = run(late.run());
  EXPECT_EQ(st.code(), StatusCode::not_found) << st.message();
}

TEST_F(EtcdClientTest, LeaseExpiresWithoutKeepAlive) {
  start();
  auto lease = run(client_->lease_grant(1s));
  ASSERT_TRUE(lease) << lease.error().message();
  auto granted = SteadyClock::now();
  auto rev = put("/e/k", "v", lease->id());
  auto w = run(client_->watch({.key = "/e/k", .start_revision = rev + 1}));
  ASSERT_TRUE(w) << w.error().message();
  auto resp = run((*w)->next(), 20s);
  ASSERT_TRUE(resp) << resp.error().message();
  ASSERT_EQ(resp->events_size(), 1);
  EXPECT_EQ(resp->events(0).type(), mvccpb::Event::DELETE);
  auto after = SteadyClock::now() - granted;
  // Not before the TTL etcd granted (it raises short TTLs to its minimum).
  EXPECT_GE(after, std::chrono::seconds(lease->ttl()) - 100ms);
  std::printf(
      "lease TTL asked 1 s, granted %lld s, key deleted after %lld ms\n",
      static_cast<long long>(lease->ttl()),
      static_cast<long long>(std::chrono::duration_cast<std::chrono::milliseconds>(after).count()));
}

TEST_F(EtcdClientTest, WatchFromPastRevisionDeliversEveryEventOnceInOrder) {
  start();
  std::vector<std::int64_t> revs;
  for (int i = 0; i < 100; ++i)
    revs.push_back(put("/w/" + std::to_string(i % 7), std::to_string(i)));
  auto del = run(client_->delete_range("/w/3"));
  ASSERT_TRUE(del);
  revs.push_back(del->header().revision());
  auto w = run(client_->watch(
      {.key = "/w/", .range_end = etcd::prefix_end("/w/"), .start_revision = revs[0]}));
  ASSERT_TRUE(w) << w.error().message();
  // Live events after the watch exists, then a sentinel.
  for (int i = 0; i < 20; ++i)
    revs.push_back(put("/w/live", std::to_string(i)));
  auto sentinel = put("/w/sentinel", "end");
  std::vector<std::int64_t> seen;
  std::vector<std::string> values;
  while (seen.empty() || seen.back() != sentinel) {
    auto r = run((*w)->next());
    ASSERT_TRUE(r) << r.error().message();
    for (const auto& e : r->events()) {
      seen.push_back(e.kv().mod_revision());
      values.push_back(e.type() == mvccpb::Event::DELETE ? "<deleted>" : e.kv().value());
    }
  }
  revs.push_back(sentinel);
  EXPECT_EQ(seen, revs);
  EXPECT_EQ(values[0], "0");
  EXPECT_EQ(values[100], "<deleted>");
}

TEST_F(EtcdClientTest, SlowWatcherIsHeldBackByFlowControlAndLosesNothing) {
  ClientOptions o;
  o.stream_window = 64 * 1024;
  start(1, o);
  auto w = run(client_->watch({.key = "/s/", .range_end = etcd::prefix_end("/s/")}));
  ASSERT_TRUE(w) << w.error().message();
  // ~1.5 MB of events while the watcher reads nothing; the writes share its connection.
  const std::string value(1024, 'x');
  std::int64_t last = 0;
  for (int t = 0; t < 15; ++t) {
    std::vector<pb::RequestOp> ops;
    for (int i = 0; i < 100; ++i)
      ops.push_back(etcd::op_put("/s/" + std::to_string(t) + "/" + std::to_string(i), value));
    auto r = run(client_->txn({}, std::move(ops)));
    ASSERT_TRUE(r) << r.error().message();
    last = r->header().revision();
  }
  EXPECT_GT((*w)->buffered_bytes(), 0u);
  EXPECT_LE((*w)->buffered_bytes(), 64u * 1024);
  std::size_t events = 0;
  std::int64_t prev = 0;
  while (prev != last) {
    auto r = run((*w)->next());
    ASSERT_TRUE(r) << r.error().message();
    for (const auto& e : r->events()) {
      ++events;
      EXPECT_GE(e.kv().mod_revision(), prev);
      prev = e.kv().mod_revision();
    }
  }
  EXPECT_EQ(events, 1500u);
}

TEST_F(EtcdClientTest, WatchOnCompactedRevisionReportsCompaction) {
  start();
  auto r1 = put("/c/k", "1");
  put("/c/k", "2");
  auto r3 = put("/c/k", "3");
  auto c = run(client_->compact(r3));
  ASSERT_TRUE(c) << c.error().message();
  auto w = run(client_->watch({.key = "/c/k", .start_revision = r1}));
  ASSERT_TRUE(w) << w.error().message();
  auto r = run((*w)->next());
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code(), StatusCode::out_of_range) << r.error().message();
  EXPECT_EQ((*w)->compact_revision(), r3);
  // A compacted revision cannot be read either.
  auto old = run(client_->range("/c/k", {}, r1));
  ASSERT_FALSE(old);
  EXPECT_EQ(old.error().code(), StatusCode::out_of_range);
}

TEST_F(EtcdClientTest, EtcdKilledCallsFailUnavailableWithinTheirDeadline) {
  start();
  put("/k/k", "v");
  auto w = run(client_->watch({.key = "/k/k"}));
  ASSERT_TRUE(w);
  auto lease = run(client_->lease_grant(2s));
  ASSERT_TRUE(lease);
  LeaseKeeper keeper(*client_, lease->id(), std::chrono::seconds(lease->ttl()));
  std::optional<Status> lost;
  asio::co_spawn(io_, keeper.run(), [&](std::exception_ptr, Status s) { lost = s; });
  ASSERT_TRUE(run_until([&] { return keeper.renewals() >= 1 || lost; }));
  cluster_->kill(0);
  auto t0 = SteadyClock::now();
  auto r = run(client_->range("/k/k", {}, 0, 2000ms));
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code(), StatusCode::unavailable) << r.error().message();
  auto p = run(client_->put("/k/k", "w", 0, 2000ms));
  ASSERT_FALSE(p);
  EXPECT_EQ(p.error().code(), StatusCode::unavailable) << p.error().message();
  EXPECT_LT(SteadyClock::now() - t0, 4500ms);
  auto ev = run((*w)->next());
  ASSERT_FALSE(ev);
  EXPECT_EQ(ev.error().code(), StatusCode::unavailable) << ev.error().message();
  // The keeper cannot renew: it reports the lease lost once the last renewal's TTL ran out.
  ASSERT_TRUE(run_until([&] { return lost.has_value(); }, 10s));
  EXPECT_EQ(lost->code(), StatusCode::deadline_exceeded) << lost->message();
  EXPECT_LE(SteadyClock::now(), keeper.expiry() + 500ms);
}

TEST_F(EtcdClientTest, ClusterClientSkipsADeadFirstEndpoint) {
  if (!EtcdCluster::available()) GTEST_SKIP() << EtcdCluster::kBinary << " is not installed";
  cluster_ = std::make_unique<EtcdCluster>(3);
  ASSERT_TRUE(cluster_->started()) << cluster_->error();
  cluster_->kill(0);
  ClientOptions o;
  o.endpoints = cluster_->endpoints();
  auto c = Client::create(wheel_, o);
  ASSERT_TRUE(c);
  client_ = std::move(*c);
  // Two of three members are a quorum; if the dead one led, a new election takes a moment.
  std::optional<std::int64_t> rev;
  auto deadline = SteadyClock::now() + 20s;
  while (!rev && SteadyClock::now() < deadline) {
    auto r = run(client_->put("/m/k", "v"));
    if (r) rev = r->header().revision();
  }
  ASSERT_TRUE(rev);
  EXPECT_NE(client_->current_endpoint().authority(), cluster_->endpoint(0));
  auto got = run(client_->range("/m/k"));
  ASSERT_TRUE(got) << got.error().message();
  EXPECT_EQ(got->kvs(0).mod_revision(), *rev);
}

// etcd serving its clients over mutual TLS (--client-cert-auth): with the CA and a client
// certificate, KV, watches and leases work as in plaintext.
TEST_F(EtcdClientTest, MutualTlsServesKvWatchesAndLeases) {
  const EtcdTls tls = EtcdTls::make();
  ClientOptions o;
  o.ca_file = tls.ca;
  o.cert_file = tls.dir + "/node-1.pem";
  o.key_file = tls.dir + "/node-1.key";
  start(1, o, tls);
  ASSERT_TRUE(client_->current_endpoint().tls);
  auto w = run(client_->watch({.key = "/tls/k"}));
  ASSERT_TRUE(w) << w.error().message();
  auto rev = put("/tls/k", "v");
  ASSERT_GT(rev, 0);
  auto got = run(client_->range("/tls/k"));
  ASSERT_TRUE(got) << got.error().message();
  EXPECT_EQ(got->kvs(0).value(), "v");
  auto ev = run((*w)->next());
  ASSERT_TRUE(ev) << ev.error().message();
  ASSERT_EQ(ev->events_size(), 1);
  EXPECT_EQ(ev->events(0).kv().mod_revision(), rev);
  auto lease = run(client_->lease_grant(2s));
  ASSERT_TRUE(lease) << lease.error().message();
  LeaseKeeper keeper(*client_, lease->id(), std::chrono::seconds(lease->ttl()));
  std::optional<Status> ended;
  asio::co_spawn(io_, keeper.run(), [&](std::exception_ptr, Status s) { ended = s; });
  EXPECT_TRUE(run_until([&] { return keeper.renewals() >= 1 || ended; }));
  EXPECT_GE(keeper.renewals(), 1u);
  keeper.stop();
  EXPECT_TRUE(run_until([&] { return ended.has_value(); }));
  EXPECT_EQ(client_->connects(), 1u);
}

// What a client with the wrong CA hears, within the call's deadline: the endpoint and the TLS
// problem, not a bare "unavailable". (Through dispatchd: cluster_managers_test's EtcdTlsTest.)
TEST_F(EtcdClientTest, MutualTlsWrongCaOrNoClientCertificateFailInTimeNamingTheEndpoint) {
  const EtcdTls tls = EtcdTls::make();
  // The server's certificate does not chain to the CA we trust.
  ClientOptions o;
  o.ca_file = tls.dir + "/other-ca.pem";
  o.cert_file = tls.dir + "/node-1.pem";
  o.key_file = tls.dir + "/node-1.key";
  o.request_timeout = 3000ms;
  start(1, o, tls);
  auto t0 = SteadyClock::now();
  auto r = run(client_->range("/any"), 10s);
  EXPECT_LT(SteadyClock::now() - t0, 4s);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code(), StatusCode::unavailable) << r.error().message();
  EXPECT_NE(r.error().message().find("https://" + cluster_->endpoint(0) +
                                     ": TLS handshake: server certificate"),
            std::string::npos)
      << r.error().message();

  // A client etcd refuses (no client certificate, with --client-cert-auth) fails within its
  // deadline too, on the same loop right after the failed handshake above.
  ClientOptions no_cert;
  no_cert.endpoints = cluster_->endpoints();
  no_cert.ca_file = tls.ca;
  no_cert.request_timeout = 3000ms;
  auto c = Client::create(wheel_, std::move(no_cert));
  ASSERT_TRUE(c) << c.error().message();
  t0 = SteadyClock::now();
  auto refused = run((*c)->range("/any"), 10s);
  EXPECT_LT(SteadyClock::now() - t0, 4s);
  ASSERT_FALSE(refused);
  EXPECT_EQ(refused.error().code(), StatusCode::unavailable) << refused.error().message();
  EXPECT_NE(refused.error().message().find("https://" + cluster_->endpoint(0)), std::string::npos)
      << refused.error().message();
  c->reset();
}

}  // namespace
