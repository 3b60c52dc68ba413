#include "dispatchd/etcd/client.hpp"

#include <asio/co_spawn.hpp>
#include <asio/detached.hpp>
#include <asio/experimental/as_tuple.hpp>
#include <asio/experimental/awaitable_operators.hpp>
#include <asio/ip/tcp.hpp>
#include <asio/steady_timer.hpp>
#include <asio/this_coro.hpp>
#include <asio/use_awaitable.hpp>

#include "dispatchd/h2/client_connection.hpp"
#include "dispatchd/log.hpp"
#include "dispatchd/net/tcp_transport.hpp"
#include "dispatchd/net/tls_client.hpp"

namespace dispatchd::etcd {

namespace {

constexpr std::string_view kRange = "/etcdserverpb.KV/Range";
constexpr std::string_view kPut = "/etcdserverpb.KV/Put";
constexpr std::string_view kDeleteRange = "/etcdserverpb.KV/DeleteRange";
constexpr std::string_view kTxn = "/etcdserverpb.KV/Txn";
constexpr std::string_view kCompact = "/etcdserverpb.KV/Compact";
constexpr std::string_view kWatch = "/etcdserverpb.Watch/Watch";
constexpr std::string_view kLeaseGrant = "/etcdserverpb.Lease/LeaseGrant";
constexpr std::string_view kLeaseRevoke = "/etcdserverpb.Lease/LeaseRevoke";
constexpr std::string_view kLeaseKeepAlive = "/etcdserverpb.Lease/LeaseKeepAlive";
constexpr std::string_view kLeaseTimeToLive = "/etcdserverpb.Lease/LeaseTimeToLive";

pb::Compare make_compare(std::string key, pb::Compare::CompareResult result,
                         pb::Compare::CompareTarget target) {
  pb::Compare c;
  c.set_key(std::move(key));
  c.set_result(result);
  c.set_target(target);
  return c;
}

Clock::time_point deadline_after(Timeout timeout, std::chrono::milliseconds fallback) {
  return Clock::now() + timeout.value_or(fallback);
}

}  // namespace

std::string prefix_end(std::string_view prefix) {
  std::string end(prefix);
  while (!end.empty()) {
    auto& last = reinterpret_cast<unsigned char&>(end.back());
    if (last < 0xff) {
      ++last;
      return end;
    }
    end.pop_back();
  }
  return std::string(1, '\0');
}

pb::Compare compare_mod_revision(std::string key, pb::Compare::CompareResult result,
                                 std::int64_t revision) {
  auto c = make_compare(std::move(key), result, pb::Compare::MOD);
  c.set_mod_revision(revision);
  return c;
}

pb::Compare compare_create_revision(std::string key, pb::Compare::CompareResult result,
                                    std::int64_t revision) {
  auto c = make_compare(std::move(key), result, pb::Compare::CREATE);
  c.set_create_revision(revision);
  return c;
}

pb::Compare compare_version(std::string key, pb::Compare::CompareResult result,
                            std::int64_t version) {
  auto c = make_compare(std::move(key), result, pb::Compare::VERSION);
  c.set_version(version);
  return c;
}

pb::Compare compare_value(std::string key, pb::Compare::CompareResult result, std::string value) {
  auto c = make_compare(std::move(key), result, pb::Compare::VALUE);
  c.set_value(std::move(value));
  return c;
}

pb::Compare compare_lease(std::string key, pb::Compare::CompareResult result, std::int64_t lease) {
  auto c = make_compare(std::move(key), result, pb::Compare::LEASE);
  c.set_lease(lease);
  return c;
}

pb::RequestOp op_put(std::string key, std::string value, std::int64_t lease) {
  pb::RequestOp op;
  auto* p = op.mutable_request_put();
  p->set_key(std::move(key));
  p->set_value(std::move(value));
  p->set_lease(lease);
  return op;
}

pb::RequestOp op_range(std::string key, std::string range_end) {
  pb::RequestOp op;
  auto* r = op.mutable_request_range();
  r->set_key(std::move(key));
  r->set_range_end(std::move(range_end));
  return op;
}

pb::RequestOp op_delete(std::string key, std::string range_end) {
  pb::RequestOp op;
  auto* d = op.mutable_request_delete_range();
  d->set_key(std::move(key));
  d->set_range_end(std::move(range_end));
  return op;
}

// ---------------------------------------------------------------------------------------------
// Client: connections

Result<std::unique_ptr<Client>> Client::create(co::TimerWheel& wheel, ClientOptions options) {
  if (options.endpoints.empty()) {
    return std::unexpected(Status(StatusCode::invalid_argument, "no etcd endpoint given"));
  }
  std::vector<Endpoint> eps;
  bool any_tls = false;
  for (const auto& text : options.endpoints) {
    auto ep = parse_endpoint(text);
    if (!ep) return std::unexpected(Status(StatusCode::invalid_argument, ep.error()));
    any_tls = any_tls || ep->tls;
    eps.push_back(std::move(*ep));
  }
  std::unique_ptr<Client> c(new Client(wheel, std::move(options), std::move(eps)));
  if (any_tls) {
    if (c->options_.ca_file.empty()) {
      return std::unexpected(
          Status(StatusCode::invalid_argument, "https etcd endpoints need a CA file"));
    }
    auto ctx = net::TlsClientContext::load(c->options_.ca_file);
    if (!ctx) return std::unexpected(Status(StatusCode::invalid_argument, ctx.error()));
    c->tls_ = std::move(*ctx);
    if (c->options_.cert_file.empty() != c->options_.key_file.empty()) {
      return std::unexpected(Status(StatusCode::invalid_argument,
                                    "an etcd client certificate needs both a cert and a key"));
    }
    if (!c->options_.cert_file.empty()) {
      auto cert = net::TlsClientCertificate::load(c->options_.cert_file, c->options_.key_file);
      if (!cert) return std::unexpected(Status(StatusCode::invalid_argument, cert.error()));
      c->tls_cert_ = std::move(*cert);
    }
  }
  return c;
}

Client::Client(co::TimerWheel& wheel, ClientOptions options, std::vector<Endpoint> endpoints)
    : wheel_(wheel), options_(std::move(options)), endpoints_(std::move(endpoints)) {}

Client::~Client() {
  if (conn_) conn_->close();
}

void Client::drop_connection() {
  if (!conn_) return;
  // Calls still running on it keep it (their streams hold it) until they end.
  conn_->shutdown();
  conn_.reset();
  current_ = (current_ + 1) % endpoints_.size();
}

grpc::CallOptions Client::call_options(Clock::time_point deadline) const {
  grpc::CallOptions o;
  o.timeout = std::max<Clock::duration>(deadline - Clock::now(), std::chrono::milliseconds(1));
  o.authority = endpoints_[current_].authority();
  o.scheme = endpoints_[current_].tls ? "https" : "http";
  o.max_message_size = options_.max_message_size;
  return o;
}

asio::awaitable<Result<std::unique_ptr<net::Transport>>> Client::connect_transport(
    const Endpoint& ep) {
  // Named, not `ep.tls ? tls_ : nullptr` in the call: GCC 12 destroys that conditional's
  // shared_ptr temporary twice inside a co_await expression, and each connection took one
  // reference from the TLS context, freeing it at the second connection (a crash in SSL_new).
  std::shared_ptr<net::TlsClientContext> tls = ep.tls ? tls_ : nullptr;
  const std::string& server_name = options_.server_name.empty() ? ep.host : options_.server_name;
  auto t = co_await net::connect(co_await asio::this_coro::executor, ep.host,
                                 std::to_string(ep.port), tls, tls_cert_, server_name);
  if (!t) co_return std::unexpected(Status(StatusCode::unavailable, t.error()));
  co_return std::move(*t);
}

asio::awaitable<Result<std::shared_ptr<h2::ClientConnection>>> Client::dial(
    const Endpoint& ep, Clock::time_point deadline) {
  using namespace asio::experimental::awaitable_operators;
  asio::steady_timer timer(co_await asio::this_coro::executor, deadline);
  // Whichever ends first cancels the other: a silent endpoint costs at most the dial timeout.
  auto r = co_await (connect_transport(ep) ||
                     timer.async_wait(asio::experimental::as_tuple(asio::use_awaitable)));
  if (r.index() == 1) {
    co_return std::unexpected(Status(StatusCode::unavailable, "no answer before the deadline"));
  }
  auto& tr = std::get<0>(r);
  if (!tr) co_return std::unexpected(tr.error());
  h2::ClientSettings settings;
  settings.reader_flow_control = true;
  settings.initial_window_size = options_.stream_window;
  // Room for every stream's window at once, so a stalled watcher never holds up other calls.
  settings.connection_window_size = std::max<std::uint32_t>(options_.stream_window, 16u << 20);
  co_return std::make_shared<h2::ClientConnection>(std::move(*tr), wheel_, settings);
}

asio::awaitable<Result<std::shared_ptr<h2::ClientConnection>>> Client::connection(
    Clock::time_point deadline) {
  if (conn_ && conn_->usable()) co_return conn_;
  if (conn_) drop_connection();
  std::string failures;
  for (std::size_t tried = 0; tried < endpoints_.size(); ++tried) {
    auto now = Clock::now();
    if (now >= deadline) break;
    const Endpoint ep = endpoints_[current_];
    auto c = co_await dial(ep, std::min<Clock::time_point>(deadline, now + options_.dial_timeout));
    // Another call may have connected meanwhile: use its connection, let ours go.
    if (conn_ && conn_->usable()) {
      if (c) (*c)->close();
      co_return conn_;
    }
    if (c) {
      conn_ = std::move(*c);
      ++connects_;
      asio::co_spawn(wheel_.io(), conn_->run(), asio::detached);
      log::debug("etcd: connected to {}", ep.to_string());
      co_return conn_;
    }
    log::debug("etcd: {}: {}", ep.to_string(), c.error().message());
    failures += (failures.empty() ? "" : "; ") + ep.to_string() + ": " + c.error().message();
    current_ = (current_ + 1) % endpoints_.size();
  }
  co_return std::unexpected(
      Status(StatusCode::unavailable,
             "no etcd endpoint answered" +
                 (failures.empty() ? " before the deadline" : " (" + failures + ")")));
}

asio::awaitable<Result<grpc::ClientCall>> Client::open_stream(std::string_view path,
                                                              Clock::time_point deadline) {
  auto conn = co_await connection(deadline);
  if (!conn) co_return std::unexpected(conn.error());
  auto o = call_options(deadline);
  o.timeout.reset();  // a stream lives until it is ended
  auto call = grpc::ClientCall::start(**conn, path, o, std::string(), false);
  if (!call) drop_connection();
  co_return call;
}

asio::awaitable<Status> Client::call(std::string_view path,
                                     const google::protobuf::MessageLite& request,
                                     google::protobuf::MessageLite& response, Timeout timeout,
                                     bool idempotent) {
  auto deadline = deadline_after(timeout, options_.request_timeout);
  for (std::size_t attempt = 0;; ++attempt) {
    auto conn = co_await connection(deadline);
    if (!conn) co_return conn.error();
    const std::string endpoint = endpoints_[current_].to_string();
    Status st = co_await grpc::unary_call(**conn, path, request, response, call_options(deadline));
    if (st.code() != StatusCode::unavailable) co_return st;
    // Which member failed, and why (a member that refuses our TLS client certificate does so
    // after the handshake, as a TLS alert on the connection).
    st = Status(st.code(), endpoint + ": " + st.message());
    // The connection failed, or this member cannot serve (no leader, stopping): the next call
    // goes to the next endpoint; a read moves on now, while its deadline allows.
    if (conn_ == *conn) drop_connection();
    if (!idempotent || attempt + 1 >= endpoints_.size() || Clock::now() >= deadline) co_return st;
    response.Clear();
  }
}

template <class Response>
asio::awaitable<Result<Response>> Client::unary(std::string_view path,
                                                const google::protobuf::MessageLite& request,
                                                Timeout timeout, bool idempotent) {
  Response response;
  Status st = co_await call(path, request, response, timeout, idempotent);
  if (!st.is_ok()) co_return std::unexpected(std::move(st));
  co_return response;
}

// ---------------------------------------------------------------------------------------------
// Client: KV and leases

asio::awaitable<Result<pb::RangeResponse>> Client::range(std::string key, std::string range_end,
                                                         std::int64_t revision, Timeout timeout) {
  pb::RangeRequest req;
  req.set_key(std::move(key));
  req.set_range_end(std::move(range_end));
  req.set_revision(revision);
  co_return co_await range(req, timeout);
}

asio::awaitable<Result<pb::RangeResponse>> Client::range(const pb::RangeRequest& request,
                                                         Timeout timeout) {
  co_return co_await unary<pb::RangeResponse>(kRange, request, timeout, true);
}

asio::awaitable<Result<pb::PutResponse>> Client::put(std::string key, std::string value,
                                                     std::int64_t lease, Timeout timeout) {
  pb::PutRequest req;
  req.set_key(std::move(key));
  req.set_value(std::move(value));
  req.set_lease(lease);
  co_return co_await unary<pb::PutResponse>(kPut, req, timeout);
}

asio::awaitable<Result<pb::DeleteRangeResponse>> Client::delete_range(std::string key,
                                                                      std::string range_end,
                                                                      bool prev_kv,
                                                                      Timeout timeout) {
  pb::DeleteRangeRequest req;
  req.set_key(std::move(key));
  req.set_range_end(std::move(range_end));
  req.set_prev_kv(prev_kv);
  co_return co_await unary<pb::DeleteRangeResponse>(kDeleteRange, req, timeout);
}

asio::awaitable<Result<pb::TxnResponse>> Client::txn(std::vector<pb::Compare> compare,
                                                     std::vector<pb::RequestOp> success,
                                                     std::vector<pb::RequestOp> failure,
                                                     Timeout timeout) {
  pb::TxnRequest req;
  for (auto& c : compare)
    *req.add_compare() = std::move(c);
  for (auto& op : success)
    *req.add_success() = std::move(op);
  for (auto& op : failure)
    *req.add_failure() = std::move(op);
  co_return co_await unary<pb::TxnResponse>(kTxn, req, timeout);
}

asio::awaitable<Result<pb::TxnResponse>> Client::put_if_mod_revision(std::string key,
                                                                     std::string value,
                                                                     std::int64_t mod_revision,
                                                                     std::int64_t lease,
                                                                     Timeout timeout) {
  std::vector<pb::Compare> cmp{compare_mod_revision(key, pb::Compare::EQUAL, mod_revision)};
  std::vector<pb::RequestOp> success{op_put(key, std::move(value), lease)};
  std::vector<pb::RequestOp> failure{op_range(std::move(key))};
  co_return co_await txn(std::move(cmp), std::move(success), std::move(failure), timeout);
}

asio::awaitable<Result<pb::CompactionResponse>> Client::compact(std::int64_t revision,
                                                                bool physical, Timeout timeout) {
  pb::CompactionRequest req;
  req.set_revision(revision);
  req.set_physical(physical);
  co_return co_await unary<pb::CompactionResponse>(kCompact, req, timeout);
}

asio::awaitable<Result<pb::LeaseGrantResponse>> Client::lease_grant(std::chrono::seconds ttl,
                                                                    std::int64_t id,
                                                                    Timeout timeout) {
  pb::LeaseGrantRequest req;
  req.set_ttl(ttl.count());
  req.set_id(id);
  auto r = co_await unary<pb::LeaseGrantResponse>(kLeaseGrant, req, timeout);
  // etcd 3.4 reports some refusals in the response instead of the status.
  if (r && !r->error().empty()) {
    co_return std::unexpected(Status(StatusCode::failed_precondition, r->error()));
  }
  co_return r;
}

asio::awaitable<Result<pb::LeaseRevokeResponse>> Client::lease_revoke(std::int64_t id,
                                                                      Timeout timeout) {
  pb::LeaseRevokeRequest req;
  req.set_id(id);
  co_return co_await unary<pb::LeaseRevokeResponse>(kLeaseRevoke, req, timeout);
}

asio::awaitable<Result<pb::LeaseTimeToLiveResponse>> Client::lease_time_to_live(std::int64_t id,
                                                                                bool keys,
                                                                                Timeout timeout) {
  pb::LeaseTimeToLiveRequest req;
  req.set_id(id);
  req.set_keys(keys);
  co_return co_await unary<pb::LeaseTimeToLiveResponse>(kLeaseTimeToLive, req, timeout, true);
}

// ---------------------------------------------------------------------------------------------
// Watch

asio::awaitable<Result<std::unique_ptr<Watcher>>> Client::watch(WatchOptions options) {
  auto deadline = deadline_after(options.create_timeout, options_.request_timeout);
  auto call = co_await open_stream(kWatch, deadline);
  if (!call) co_return std::unexpected(call.error());
  std::unique_ptr<Watcher> w(new Watcher(std::move(*call), options.progress_notify));

  pb::WatchRequest req;
  auto* create = req.mutable_create_request();
  create->set_key(std::move(options.key));
  create->set_range_end(std::move(options.range_end));
  create->set_start_revision(options.start_revision);
  create->set_prev_kv(options.prev_kv);
  create->set_progress_notify(options.progress_notify);
  w->call_.send(req);

  // The first answer says whether the watch exists; events never come before it.
  co::TimerCallback expire([&w] { w->call_.cancel(); });
  wheel_.arm(expire, deadline);
  pb::WatchResponse first;
  bool got = co_await w->call_.read(first);
  bool expired = !expire.armed();
  wheel_.disarm(expire);
  if (!got) {
    if (expired) {
      co_return std::unexpected(
          Status(StatusCode::deadline_exceeded, "etcd did not create the watch in time"));
    }
    if (w->call_.status().code() == StatusCode::unavailable) drop_connection();
    co_return std::unexpected(w->call_.status());
  }
  if (!first.created()) {
    w->call_.cancel();
    co_return std::unexpected(
        Status(StatusCode::internal, "etcd answered a watch request without creating it"));
  }
  if (first.canceled()) {
    w->call_.cancel();
    co_return std::unexpected(
        Status(StatusCode::invalid_argument, "etcd refused the watch: " + first.cancel_reason()));
  }
  w->id_ = first.watch_id();
  w->created_revision_ = first.header().revision();
  co_return w;
}

Watcher::~Watcher() {
  call_.cancel();
}

void Watcher::cancel() {
  if (ended_) return;
  ended_ = Status(StatusCode::cancelled, "watch cancelled by the client");
  call_.cancel();
}

asio::awaitable<Result<pb::WatchResponse>> Watcher::next() {
  for (;;) {
    if (ended_) co_return std::unexpected(*ended_);
    pb::WatchResponse resp;
    if (!co_await call_.read(resp)) {
      if (!ended_) {
        ended_ = call_.status().is_ok()
                     ? Status(StatusCode::unavailable, "etcd ended the watch stream")
                     : call_.status();
      }
      continue;
    }
    if (resp.watch_id() != id_) continue;  // one watch per stream: not ours to report
    if (resp.compact_revision() != 0) {
      compact_revision_ = resp.compact_revision();
      ended_ = Status(StatusCode::out_of_range, "etcd watch: revisions before " +
                                                    std::to_string(compact_revision_) +
                                                    " have been compacted");
      call_.cancel();
      continue;
    }
    if (resp.canceled()) {
      ended_ = Status(StatusCode::cancelled,
                      "etcd cancelled the watch" +
                          (resp.cancel_reason().empty() ? "" : ": " + resp.cancel_reason()));
      call_.cancel();
      continue;
    }
    if (resp.events_size() == 0 && !progress_notify_) continue;
    co_return resp;
  }
}

// ---------------------------------------------------------------------------------------------
// LeaseKeeper

LeaseKeeper::LeaseKeeper(Client& client, std::int64_t lease_id, std::chrono::seconds ttl)
    : client_(client),
      id_(lease_id),
      ttl_(ttl),
      expiry_(Clock::now() + ttl),
      timer_([this] { wakeup_.notify(); }),
      watchdog_([this] {
        if (stream_) stream_->cancel();
      }) {}

LeaseKeeper::~LeaseKeeper() {
  client_.wheel().disarm(timer_);
  client_.wheel().disarm(watchdog_);
}

void LeaseKeeper::stop() {
  stopping_ = true;
  if (stream_) stream_->cancel();
  wakeup_.notify();
}

asio::awaitable<void> LeaseKeeper::pause_until(Clock::time_point t) {
  if (stopping_ || Clock::now() >= t) co_return;
  client_.wheel().arm(timer_, t);
  co_await wakeup_.async_park();
  client_.wheel().disarm(timer_);
}

asio::awaitable<Status> LeaseKeeper::renew_once(Clock::time_point deadline) {
  if (!stream_ || stream_->done()) {
    stream_.reset();
    auto call = co_await client_.open_stream(kLeaseKeepAlive, deadline);
    if (!call) co_return call.error();
    stream_ = std::move(*call);
  }
  pb::LeaseKeepAliveRequest req;
  req.set_id(id_);
  auto sent = Clock::now();
  stream_->send(req);
  pb::LeaseKeepAliveResponse resp;
  // A member that stopped answering must not hold the renewal past the deadline.
  client_.wheel().arm(watchdog_, deadline);
  bool got = co_await stream_->read(resp);
  client_.wheel().disarm(watchdog_);
  if (!got) {
    Status st = stream_->status();
    stream_.reset();
    co_return st.is_ok() ? Status(StatusCode::unavailable, "etcd ended the keep-alive stream") : st;
  }
  if (resp.ttl() <= 0) {
    co_return Status(StatusCode::not_found,
                     "etcd lease " + std::to_string(id_) + " expired or was revoked");
  }
  ttl_ = std::chrono::seconds(resp.ttl());
  expiry_ = sent + ttl_;
  ++renewals_;
  co_return Status::ok();
}

asio::awaitable<Status> LeaseKeeper::run() {
  auto next = Clock::now();
  for (;;) {
    co_await pause_until(next);
    if (stopping_) break;
    auto now = Clock::now();
    if (now >= expiry_) {
      co_return Status(StatusCode::deadline_exceeded,
                       "etcd lease " + std::to_string(id_) + " not renewed within its TTL");
    }
    // One attempt may take at most a third of the TTL and never past the expiry.
    auto deadline = std::min<Clock::time_point>(
        expiry_,
        now + std::max<Clock::duration>(std::chrono::duration_cast<Clock::duration>(ttl_) / 3,
                                        std::chrono::milliseconds(500)));
    Status st = co_await renew_once(deadline);
    if (stopping_) break;
    if (st.code() == StatusCode::not_found) co_return st;
    if (st.is_ok()) {
      next = Clock::now() +
             std::max<Clock::duration>(std::chrono::duration_cast<Clock::duration>(ttl_) / 3,
                                       std::chrono::milliseconds(100));
    } else {
      log::debug("etcd: lease {} renewal failed: {}", id_, st.message());
      next = std::min<Clock::time_point>(expiry_, Clock::now() + std::chrono::milliseconds(200));
    }
  }
  if (stream_) stream_->cancel();
  stream_.reset();
  co_return Status::ok();
}

}  // namespace dispatchd::etcd
