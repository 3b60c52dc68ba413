#pragma once
// The docker.swarmkit.v1.Dispatcher service.
//
// Foundation stage: Session registers the node (a fresh session ID, an older session of the
// node superseded), sends the first SessionMessage and stays open until the client goes away,
// the session is superseded, or the dispatcher stops (final message, then ABORTED). Heartbeat
// checks the session and answers with the period. The full SwarmKit semantics build on this.

#include <chrono>
#include <cstdint>
#include <expected>
#include <memory>
#include <random>
#include <string>
#include <unordered_map>
#include <vector>

#include "dispatchd/co/event.hpp"
#include "dispatchd/co/intrusive_list.hpp"
#include "dispatchd/co/wakeup.hpp"
#include "dispatchd/grpc/server.hpp"
#include "dispatchd/grpc/status.hpp"

namespace dispatchd::dispatcher {

struct Config {
  std::chrono::nanoseconds heartbeat_period = std::chrono::seconds(5);
  std::chrono::nanoseconds heartbeat_epsilon = std::chrono::milliseconds(500);
  // The manager list this dispatcher hands to agents (spec §0.1).
  std::string manager_node_id = "manager-1";
  std::string manager_addr = "127.0.0.1:4242";
  // The cluster organisation (insecure mode: --cluster-id).
  std::string cluster_id = "dispatchd";
};

// Who is calling: from the verified certificate, or (insecure mode) from request metadata.
struct Identity {
  std::string node_id;
  std::vector<std::string> roles;
  std::string org;
};

class Dispatcher {
 public:
  explicit Dispatcher(Config config);
  Dispatcher(const Dispatcher&) = delete;
  Dispatcher& operator=(const Dispatcher&) = delete;

  void add_to(grpc::Server& server);
  // Every open Session gets its final message and ends with ABORTED; later calls are refused.
  void stop();
  bool running() const noexcept { return running_; }
  void set_manager_addr(std::string addr) { config_.manager_addr = std::move(addr); }
  std::size_t open_sessions() const noexcept { return open_sessions_; }
  std::size_t registered_nodes() const noexcept { return nodes_.size(); }

 private:
  struct NodeRecord {
    std::string session_id;
    // Set when a newer registration supersedes this session.
    std::shared_ptr<co::Event> superseded = std::make_shared<co::Event>();
  };

  std::expected<Identity, grpc::Status> identity(const grpc::ServerContext& ctx) const;
  std::chrono::nanoseconds choose_period();

  Config config_;
  bool running_ = true;
  co::Event stopped_;
  std::unordered_map<std::string, NodeRecord> nodes_;
  std::size_t open_sessions_ = 0;
  std::minstd_rand rng_{std::random_device{}()};
};

}  // namespace dispatchd::dispatcher
