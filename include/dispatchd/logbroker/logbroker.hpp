#pragma once
// SwarmKit's task log services (proto/logbroker.proto, docs/behaviour.md §15): operators
// subscribe to logs with Logs.SubscribeLogs; agents learn the subscriptions that concern them on
// LogBroker.ListenSubscriptions and publish the matching messages with LogBroker.PublishLogs.
// Everything runs on the io thread. Each subscriber's queue is bounded in bytes: a subscriber
// that falls that far behind is cut off (§0.11), so a slow reader never stalls a publishing agent.

#include <cstddef>
#include <cstdint>
#include <expected>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "dispatchd/auth/authorizer.hpp"
#include "dispatchd/co/event.hpp"
#include "dispatchd/grpc/server.hpp"
#include "dispatchd/store/store.hpp"
#include "logbroker.pb.h"

namespace dispatchd::logbroker {

namespace api = ::docker::swarmkit::v1;

struct Config {
  // Bytes of log messages one subscriber may have waiting; past it the subscription ends with
  // RESOURCE_EXHAUSTED (a single message larger than this still gets through alone).
  std::size_t subscriber_buffer = 1 << 20;
};

// Every published message ends up delivered, dropped or discarded (or still queued).
struct LogBrokerStats {
  std::uint64_t subscriptions = 0;        // SubscribeLogs calls that started a subscription
  std::uint64_t subscribers_cut_off = 0;  // ended because their queue was full
  std::uint64_t messages_published = 0;   // in batches accepted from agents
  std::uint64_t messages_delivered = 0;   // written to their subscriber
  std::uint64_t messages_dropped = 0;     // lost when their subscriber was cut off
  std::uint64_t messages_discarded = 0;   // published for a subscription already ended
};

class LogBroker {
 public:
  LogBroker(store::Store& store, const auth::Authorizer& authorizer, Config config = {});
  LogBroker(const LogBroker&) = delete;
  LogBroker& operator=(const LogBroker&) = delete;
  ~LogBroker();

  void add_to(grpc::Server& server);
  // Ends every subscriber (CANCELLED) and every ListenSubscriptions stream (OK); later calls are
  // refused.
  void stop();

  std::size_t listeners() const noexcept { return listener_count_; }
  std::size_t active_subscriptions() const noexcept { return subscriptions_.size(); }
  std::size_t buffered_bytes() const noexcept;
  const LogBrokerStats& stats() const noexcept { return stats_; }
  const Config& config() const noexcept { return config_; }

  struct Subscription;
  struct Listener;

 private:
  asio::awaitable<Status> subscribe(grpc::ServerContext& ctx, const api::SubscribeLogsRequest& req,
                                    grpc::Writer<api::SubscribeLogsMessage>& writer);
  asio::awaitable<Status> listen(grpc::ServerContext& ctx,
                                 grpc::Writer<api::SubscriptionMessage>& writer);
  asio::awaitable<std::expected<api::PublishLogsResponse, Status>> publish(
      grpc::ServerContext& ctx, grpc::Reader<api::PublishLogsMessage>& reader);

  // The nodes a new subscription involves (SwarmKit's matching), then it is registered and sent
  // to their listeners; nodes without one are done at once ("node X is not available").
  void start_subscription(const std::shared_ptr<Subscription>& sub);
  // A node joins a running subscription (follow mode: a matching task was assigned).
  void add_node(Subscription& sub, const std::string& node_id);
  // The node will publish nothing more for `sub` (`error`: why its part may be incomplete).
  void node_done(Subscription& sub, const std::string& node_id, const std::string& error);
  // Unregisters `sub` and tells the nodes still involved to stop (close = true). Idempotent.
  void end_subscription(Subscription& sub);
  // Queues what a node must hear about `sub` on each of its listeners.
  void notify_node(const std::string& node_id, const Subscription& sub, bool close);
  void deliver(Subscription& sub, const api::PublishLogsMessage& m);

  store::Store& store_;
  const auth::Authorizer& authorizer_;
  Config config_;
  bool running_ = true;
  co::Event stopped_;
  std::map<std::string, std::shared_ptr<Subscription>> subscriptions_;
  std::unordered_map<std::string, std::vector<Listener*>> listeners_;
  std::size_t listener_count_ = 0;
  LogBrokerStats stats_;
};

}  // namespace dispatchd::logbroker
