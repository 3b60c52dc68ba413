#pragma once
// What the Dispatcher's calls are written against: its collaborators, owned by the Dispatcher
// and handed to each call (docs/architecture.md, "The Dispatcher"). The calls never see the
// Dispatcher itself.

#include <asio/awaitable.hpp>
#include <cstdint>
#include <expected>
#include <string>
#include <type_traits>

#include "dispatchd/auth/authorizer.hpp"
#include "dispatchd/co/event.hpp"
#include "dispatchd/co/queue.hpp"
#include "dispatchd/co/timer_wheel.hpp"
#include "dispatchd/dispatcher/cluster_fields.hpp"
#include "dispatchd/dispatcher/config.hpp"
#include "dispatchd/dispatcher/node_registry.hpp"
#include "dispatchd/dispatcher/status_batcher.hpp"
#include "dispatchd/grpc/server.hpp"
#include "dispatchd/store/store.hpp"
#include "dispatcher.pb.h"

namespace dispatchd::dispatcher {

struct StreamCounters {
  std::size_t open_sessions = 0;
  std::size_t open_streams = 0;  // Assignments and Tasks
  std::uint64_t watch_overflows = 0;
};

// A store watcher that queues a stream's events: the events themselves (Queue<store::Event>) or
// the objects they carry (Queue<store::Ptr<T>>).
template <class T>
class QueueWatcher final : public store::Watcher {
 public:
  explicit QueueWatcher(co::Queue<T>& q) : q_(q) {}
  void on_event(const store::Event& e) override {
    if constexpr (std::is_same_v<T, store::Event>) {
      q_.push(e);
    } else {
      q_.push(e.ptr<typename T::element_type>());
    }
  }

 private:
  co::Queue<T>& q_;
};

// Counts itself in `n` while it lives (open sessions, open streams).
class Counted {
 public:
  explicit Counted(std::size_t& n) : n_(n) { ++n_; }
  ~Counted() { --n_; }
  Counted(const Counted&) = delete;
  Counted& operator=(const Counted&) = delete;

 private:
  std::size_t& n_;
};

struct Services {
  const Config& config;
  const bool& running;  // between Dispatcher::start() and stop()
  co::Event& stopped;   // set by Dispatcher::stop()
  co::TimerWheel& wheel;
  store::Store& store;
  const auth::Authorizer& authorizer;
  StatusBatcher& batcher;
  NodeRegistry& registry;
  ClusterFields& cluster;
  StreamCounters& counters;
};

// Common answers (SwarmKit's texts).
Status stopped_status();   // ABORTED "dispatcher is stopped"
Status canceled_status();  // CANCELLED "context canceled"
// Until every change committed so far is on disk (docs/behaviour.md §0.5): OK; the write-ahead
// log's failure (UNAVAILABLE); CANCELLED "context canceled" if the call is cancelled first.
asio::awaitable<Status> stored(Services& s, grpc::ServerContext& ctx);
Status fell_behind(const char* what, std::size_t limit);

// What every call but Session does first: the dispatcher runs, the caller is an agent, and
// `session_id` is its node's current session.
std::expected<auth::Identity, Status> admit(Services& s, const grpc::ServerContext& ctx,
                                            const std::string& session_id,
                                            NodeRegistry::Registration** registration = nullptr);

// The streaming calls (docs/behaviour.md §4, §5, §8).
asio::awaitable<Status> serve_session(Services& s, grpc::ServerContext& ctx,
                                      const api::SessionRequest& req,
                                      grpc::Writer<api::SessionMessage>& writer);
asio::awaitable<Status> serve_assignments(Services& s, grpc::ServerContext& ctx,
                                          const api::AssignmentsRequest& req,
                                          grpc::Writer<api::AssignmentsMessage>& writer);
asio::awaitable<Status> serve_tasks(Services& s, grpc::ServerContext& ctx,
                                    const api::TasksRequest& req,
                                    grpc::Writer<api::TasksMessage>& writer);

}  // namespace dispatchd::dispatcher
