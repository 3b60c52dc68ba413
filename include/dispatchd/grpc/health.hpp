#pragma once
// grpc.health.v1.Health: Check and Watch over a table of service → serving status.

#include <map>
#include <string>
#include <utility>

#include "dispatchd/co/watch.hpp"
#include "dispatchd/grpc/server.hpp"

namespace dispatchd::grpc {

class HealthService {
 public:
  // Values of grpc.health.v1.HealthCheckResponse.ServingStatus.
  enum ServingStatus : int { unknown = 0, serving = 1, not_serving = 2, service_unknown = 3 };

  HealthService();
  void add_to(Server& server);
  // "" is the server as a whole.
  void set_status(const std::string& service, ServingStatus status);
  // Every service NOT_SERVING (graceful shutdown).
  void shutdown();
  std::size_t watchers() const { return changes_.subscriber_count(); }

 private:
  ServingStatus current(const std::string& service) const;
  std::map<std::string, ServingStatus, std::less<>> statuses_;
  co::Watch<std::pair<std::string, ServingStatus>> changes_{256};
};

}  // namespace dispatchd::grpc
