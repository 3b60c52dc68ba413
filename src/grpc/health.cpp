#include "dispatchd/grpc/health.hpp"

#include <optional>

#include "dispatchd/co/event.hpp"
#include "dispatchd/co/select.hpp"
#include "grpc/health/v1/health.pb.h"

namespace dispatchd::grpc {

namespace hv1 = ::grpc::health::v1;

HealthService::HealthService() {
  statuses_[""] = serving;
}

HealthService::ServingStatus HealthService::current(const std::string& service) const {
  auto it = statuses_.find(service);
  return it == statuses_.end() ? service_unknown : it->second;
}

void HealthService::set_status(const std::string& service, ServingStatus status) {
  auto& s = statuses_[service];
  if (s == status) return;
  s = status;
  changes_.publish({service, status});
}

void HealthService::shutdown() {
  for (auto& [name, st] : statuses_) {
    if (st != not_serving) {
      st = not_serving;
      changes_.publish({name, st});
    }
  }
}

void HealthService::add_to(Server& server) {
  server.add_unary<hv1::HealthCheckRequest, hv1::HealthCheckResponse>(
      "/grpc.health.v1.Health/Check",
      [this](ServerContext&, const hv1::HealthCheckRequest& req)
          -> asio::awaitable<std::expected<hv1::HealthCheckResponse, Status>> {
        auto it = statuses_.find(req.service());
        if (it == statuses_.end()) {
          co_return std::unexpected(Status(StatusCode::not_found, "unknown service"));
        }
        hv1::HealthCheckResponse resp;
        resp.set_status(static_cast<hv1::HealthCheckResponse::ServingStatus>(it->second));
        co_return resp;
      });

  server.add_server_streaming<hv1::HealthCheckRequest, hv1::HealthCheckResponse>(
      "/grpc.health.v1.Health/Watch",
      [this](ServerContext& ctx, const hv1::HealthCheckRequest& req,
             Writer<hv1::HealthCheckResponse>& writer) -> asio::awaitable<Status> {
        co::Wakeup wakeup;
        co::Event::Listener cancelled(ctx.cancelled(), wakeup);
        std::optional<co::Watch<std::pair<std::string, ServingStatus>>::Subscription> sub;
        sub.emplace(changes_, wakeup);
        ServingStatus last = current(req.service());
        hv1::HealthCheckResponse resp;
        resp.set_status(static_cast<hv1::HealthCheckResponse::ServingStatus>(last));
        if (!co_await writer.write(resp))
          co_return Status(StatusCode::cancelled, "context canceled");
        for (;;) {
          auto ready = co_await co::select(wakeup, cancelled, *sub);
          if (co::picked(ready, 0)) co_return Status(StatusCode::cancelled, "context canceled");
          // Only the latest status matters, so an overflowed subscription just resubscribes.
          while (sub->has_next())
            sub->next();
          if (sub->overflowed() || sub->ended()) sub.emplace(changes_, wakeup);
          ServingStatus now = current(req.service());
          if (now == last) continue;
          last = now;
          resp.set_status(static_cast<hv1::HealthCheckResponse::ServingStatus>(now));
          if (!co_await writer.write(resp))
            co_return Status(StatusCode::cancelled, "context canceled");
        }
      });
}

}  // namespace dispatchd::grpc
