#include "dispatchd/grpc/server.hpp"

#include "dispatchd/grpc/metadata.hpp"
#include "dispatchd/log.hpp"

namespace dispatchd::grpc {

namespace {
bool is_grpc_content_type(std::string_view ct) {
  constexpr std::string_view base = "application/grpc";
  if (!ct.starts_with(base)) return false;
  if (ct.size() == base.size()) return true;
  char next = ct[base.size()];
  if (next == ';') return true;
  return ct.substr(base.size()) == "+proto" || ct.starts_with("application/grpc+proto;");
}

// A request that is not gRPC at all (another method, another content type) gets an HTTP answer a
// generic client can read: the status, a short text body saying why, and for gRPC clients that
// got here by mistake the grpc-status and grpc-message headers too.
void refuse_http(h2::Stream& s, std::string_view http_status, const Status& st) {
  std::vector<h2::Header> h = {{":status", std::string(http_status)},
                               {"content-type", "text/plain; charset=utf-8"},
                               {"grpc-status", std::to_string(static_cast<int>(st.code()))},
                               {"grpc-message", percent_encode(st.message())}};
  s.submit_headers(h);
  s.enqueue(h2::Segment::own(st.message() + "\n"));
  s.finish({});
}

// "/package.Service/Method" → {service, method}; false if malformed.
bool split_path(std::string_view path, std::string_view& service, std::string_view& method) {
  if (path.size() < 3 || path[0] != '/') return false;
  auto slash = path.find('/', 1);
  if (slash == std::string_view::npos || slash == 1 || slash + 1 >= path.size()) return false;
  service = path.substr(1, slash - 1);
  method = path.substr(slash + 1);
  return method.find('/') == std::string_view::npos;
}
}  // namespace

Server::Server(co::TimerWheel& wheel, ServerOptions options) : wheel_(wheel), options_(options) {}

Status unmarshal_error() {
  return Status(StatusCode::internal, "grpc: error unmarshalling request: invalid protobuf");
}

void Server::add_method(std::string path, const char* type, Invoker invoke) {
  MethodStats* st = &stats_[path];
  st->type = type;
  methods_[std::move(path)] = Method{std::move(invoke), st};
}

std::size_t Server::divert(const std::vector<std::string_view>& paths, CallDiverter* d) {
  std::size_t n = 0;
  for (auto path : paths) {
    auto it = methods_.find(path);
    if (it == methods_.end()) continue;
    it->second.diverter = d;
    ++n;
  }
  return n;
}

const MethodStats* Server::stats(std::string_view path) const {
  auto it = stats_.find(path);
  return it == stats_.end() ? nullptr : &it->second;
}

void Server::cancel_all() noexcept {
  calls_.for_each([](ServerCall& c) { c.cancel(); });
}

asio::awaitable<void> Server::on_request(h2::StreamRef stream) {
  // Not a coroutine: the call must listen to the stream before nghttp2 delivers its DATA.
  auto call =
      std::make_unique<ServerCall>(std::move(stream), wheel_, options_.max_receive_message_size);
  return serve(std::move(call));
}

Server::Routed Server::route(ServerCall& call, Status& result) {
  h2::Stream& s = call.stream();
  if (s.method() != "POST") {
    refuse_http(s, "415",
                Status(StatusCode::internal,
                       "invalid gRPC request method \"" + std::string(s.method()) + "\""));
    return {.method = nullptr, .refused = true, .run = false};
  }
  if (!is_grpc_content_type(s.content_type())) {
    refuse_http(s, "415",
                Status(StatusCode::invalid_argument, "invalid gRPC request content-type \"" +
                                                         std::string(s.content_type()) + "\""));
    return {.method = nullptr, .refused = true, .run = false};
  }
  auto it = methods_.find(s.path());
  if (it == methods_.end()) {
    std::string_view service, method;
    if (!split_path(s.path(), service, method)) {
      result = Status(StatusCode::unimplemented,
                      "malformed method name: \"" + std::string(s.path()) + "\"");
    } else {
      bool known_service = false;
      for (const auto& [path, m] : methods_) {
        std::string_view ps, pm;
        if (split_path(path, ps, pm) && ps == service) {
          known_service = true;
          break;
        }
      }
      result = known_service
                   ? Status(StatusCode::unimplemented, "unknown method " + std::string(method) +
                                                           " for service " + std::string(service))
                   : Status(StatusCode::unimplemented, "unknown service " + std::string(service));
    }
    return {};
  }
  Method* m = &it->second;
  ++m->stats->started;
  if (auto t = call.metadata("grpc-timeout")) {
    if (auto d = parse_grpc_timeout(*t)) {
      call.set_timeout(*d);
    } else {
      result =
          Status(StatusCode::internal, "transport: malformed grpc-timeout: " + std::string(*t));
      return {.method = m, .refused = false, .run = false};
    }
  }
  if (auto enc = call.metadata("grpc-encoding"); enc && *enc != "identity") {
    result = Status(
        StatusCode::unimplemented,
        "grpc: Decompressor is not installed for grpc-encoding \"" + std::string(*enc) + "\"");
    return {.method = m, .refused = false, .run = false};
  }
  return {.method = m, .refused = false, .run = true};
}

asio::awaitable<Status> Server::invoke(Method& m, ServerCall& call) {
  if (CallDiverter* d = m.diverter; d && d->diverting()) return d->serve(call);
  return m.invoke(call);
}

asio::awaitable<void> Server::serve(std::unique_ptr<ServerCall> call) {
  calls_.push_back(*call);
  ++active_calls_;
  struct Leave {
    std::size_t& n;
    ~Leave() { --n; }
  } leave{active_calls_};

  // Everything that does not wait is in route(): this frame lives as long as the call, a
  // Session's as long as its stream, and GCC keeps every local of a coroutine in its frame.
  const auto started = std::chrono::steady_clock::now();
  Status result;
  const Routed r = route(*call, result);
  if (r.refused) co_return;
  MethodStats* stats = r.method ? r.method->stats : &unknown_stats_;
  if (r.run) {
    try {
      result = co_await invoke(*r.method, *call);
    } catch (const std::exception& e) {
      log::error("{} {}: handler threw: {}", call->peer(), call->stream().path(), e.what());
      result = Status(StatusCode::unknown, "internal error");
    }
    if (call->deadline_exceeded()) {
      result = Status(StatusCode::deadline_exceeded, "context deadline exceeded");
    } else if (call->is_cancelled() && call->stream().closed()) {
      result = Status(StatusCode::cancelled, "context canceled");
    }
  }
  call->finish(result);
  ++stats->by_code[static_cast<std::size_t>(result.code())];
  if (stats != &unknown_stats_) stats->latency.observe(std::chrono::steady_clock::now() - started);
}

}  // namespace dispatchd::grpc
