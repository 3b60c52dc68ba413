#pragma once
// Server: our gRPC layer over h2. Routes by :path, validates the request, arms grpc-timeout,
// and runs a handler adapter in the stream's coroutine.
//
// Unary handler:            awaitable<std::expected<Resp, Status>>(ServerContext&, const Req&)
// Server-streaming handler: awaitable<Status>(ServerContext&, const Req&, Writer<Resp>&)
// Client-streaming handler: awaitable<std::expected<Resp, Status>>(ServerContext&, Reader<Req>&)
// Bidi-streaming handler:   awaitable<Status>(ServerContext&, Reader<Req>&, Writer<Resp>&)

#include <array>
#include <expected>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "dispatchd/co/intrusive_list.hpp"
#include "dispatchd/co/timer_wheel.hpp"
#include "dispatchd/grpc/codec.hpp"
#include "dispatchd/grpc/server_call.hpp"
#include "dispatchd/grpc/status.hpp"
#include "dispatchd/h2/connection.hpp"
#include "dispatchd/metrics.hpp"

namespace dispatchd::grpc {

struct ServerOptions {
  std::size_t max_receive_message_size = kDefaultMaxMessageSize;
};

// What a request that is not valid protobuf ends the call with (grpc-go's words).
Status unmarshal_error();

template <class Req>
class Reader {
 public:
  explicit Reader(ServerCall& call) : call_(call) {}
  // The next request; nullopt once the client has half-closed. Errors end the call: return them.
  asio::awaitable<std::expected<std::optional<Req>, Status>> read() {
    auto bytes = co_await call_.read_message();
    if (!bytes) co_return std::unexpected(bytes.error());
    if (!*bytes) co_return std::optional<Req>();
    std::optional<Req> req(std::in_place);
    if (!req->ParseFromString(**bytes)) co_return std::unexpected(unmarshal_error());
    co_return req;
  }

 private:
  ServerCall& call_;
};

template <class Resp>
class Writer {
 public:
  explicit Writer(ServerCall& call) : call_(call) {}
  // Waits while the peer's flow-control window is full. False once the call is over.
  asio::awaitable<bool> write(const Resp& msg) {
    return call_.write(h2::Segment::own(encode_message(msg)));
  }
  // A message already framed (prefix included), possibly shared with other streams.
  asio::awaitable<bool> write_framed(h2::Segment framed) { return call_.write(std::move(framed)); }
  asio::awaitable<bool> write_framed(std::vector<h2::Segment> pieces) {
    return call_.write(std::move(pieces));
  }

 private:
  ServerCall& call_;
};

struct MethodStats {
  std::array<std::uint64_t, 17> by_code{};
  std::uint64_t started = 0;
  const char* type = "unary";  // grpc-prometheus' grpc_type: unary, server_stream, bidi_stream
  metrics::Histogram latency;  // from the request headers to the status
};

// Serves a set of methods elsewhere while it says so, in place of their own handlers: a
// follower manager forwards the Dispatcher's calls to the leader (proxy::Forwarder). Asked once
// per call of those methods, after the deadline is armed.
class CallDiverter {
 public:
  virtual bool diverting() const noexcept = 0;
  virtual asio::awaitable<Status> serve(ServerCall& call) = 0;

 protected:
  ~CallDiverter() = default;
};

class Server : public h2::RequestSink {
 public:
  using Invoker = std::function<asio::awaitable<Status>(ServerCall&)>;

  explicit Server(co::TimerWheel& wheel, ServerOptions options = {});
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  template <class Req, class Resp, class F>
  void add_unary(std::string path, F handler) {
    add_method(std::move(path), "unary",
               [h = std::move(handler)](ServerCall& call) -> asio::awaitable<Status> {
                 auto bytes = co_await call.read_request();
                 if (!bytes) co_return bytes.error();
                 Req req;
                 if (!req.ParseFromString(*bytes)) co_return unmarshal_error();
                 std::expected<Resp, Status> r = co_await h(call.context(), req);
                 if (!r) co_return r.error();
                 call.send(h2::Segment::own(encode_message(*r)));
                 co_return Status::ok();
               });
  }

  template <class Req, class Resp, class F>
  void add_server_streaming(std::string path, F handler) {
    add_method(std::move(path), "server_stream",
               [h = std::move(handler)](ServerCall& call) -> asio::awaitable<Status> {
                 auto bytes = co_await call.read_request();
                 if (!bytes) co_return bytes.error();
                 Req req;
                 if (!req.ParseFromString(*bytes)) co_return unmarshal_error();
                 Writer<Resp> writer(call);
                 co_return co_await h(call.context(), req, writer);
               });
  }

  template <class Req, class Resp, class F>
  void add_client_streaming(std::string path, F handler) {
    add_method(std::move(path), "client_stream",
               [h = std::move(handler)](ServerCall& call) -> asio::awaitable<Status> {
                 Reader<Req> reader(call);
                 std::expected<Resp, Status> r = co_await h(call.context(), reader);
                 if (!r) co_return r.error();
                 call.send(h2::Segment::own(encode_message(*r)));
                 co_return Status::ok();
               });
  }

  template <class Req, class Resp, class F>
  void add_bidi_streaming(std::string path, F handler) {
    add_method(std::move(path), "bidi_stream",
               [h = std::move(handler)](ServerCall& call) -> asio::awaitable<Status> {
                 Reader<Req> reader(call);
                 Writer<Resp> writer(call);
                 co_return co_await h(call.context(), reader, writer);
               });
  }

  // h2::RequestSink
  asio::awaitable<void> on_request(h2::StreamRef stream) override;

  // Calls of `paths` (methods added already) go to `d` whenever d->diverting(); nullptr: never.
  // Returns how many of `paths` are known methods.
  std::size_t divert(const std::vector<std::string_view>& paths, CallDiverter* d);

  // Cancels every call in flight (shutdown). Their handlers see ServerContext::cancelled().
  void cancel_all() noexcept;
  std::size_t active_calls() const noexcept { return active_calls_; }
  const MethodStats* stats(std::string_view path) const;
  const std::map<std::string, MethodStats, std::less<>>& all_stats() const { return stats_; }

 private:
  struct Method {
    Invoker invoke;
    MethodStats* stats;
    CallDiverter* diverter = nullptr;
  };
  // What route() found for a request.
  struct Routed {
    Method* method = nullptr;  // null: no such method
    bool refused = false;      // not gRPC: answered over HTTP already
    bool run = false;          // run the method; otherwise the call ends with route's `result`
  };
  void add_method(std::string path, const char* type, Invoker invoke);
  // Validates and routes a request, arms its deadline (grpc-timeout).
  Routed route(ServerCall& call, Status& result);
  // The method's handler, or its diverter's while that diverts.
  static asio::awaitable<Status> invoke(Method& m, ServerCall& call);
  asio::awaitable<void> serve(std::unique_ptr<ServerCall> call);

  co::TimerWheel& wheel_;
  ServerOptions options_;
  std::map<std::string, Method, std::less<>> methods_;
  std::map<std::string, MethodStats, std::less<>> stats_;
  MethodStats unknown_stats_;
  co::IntrusiveList<ServerCall> calls_;
  std::size_t active_calls_ = 0;
};

}  // namespace dispatchd::grpc
