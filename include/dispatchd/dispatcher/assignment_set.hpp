#pragma once
// What one node's Assignments stream has told the node (docs/behaviour.md §8.2, §8.3).
//
// The set tracks the tasks the node knows, which task or volume uses which secret or config,
// the publish state of each volume, and the changes accumulated since the last message. A
// dependency is sent when its first user arrives and removed when its last user goes; a
// removal is emitted even for a dependency that was never sent, as SwarmKit does (clients
// ignore unknown removals).

#include <cstddef>
#include <map>
#include <set>
#include <string>
#include <unordered_map>
#include <variant>
#include <vector>

#include "dispatchd/store/store.hpp"
#include "dispatcher.pb.h"

namespace dispatchd::dispatcher {

namespace api = ::docker::swarmkit::v1;

// The state of one Assignments stream for one node (docs/behaviour.md §8.2, §8.3): which
// tasks, secrets, configs and volumes the node has been told about, who uses which dependency,
// and the changes accumulated since the last message.
// Tasks that differ at most in `status` and `meta` (docs/behaviour.md §8.2, §14): such an
// update is not a change worth sending.
bool tasks_stably_equal(const api::Task& a, const api::Task& b);

class AssignmentSet {
 public:
  explicit AssignmentSet(std::string node_id);

  // Each returns true when it counts as a modification (docs/behaviour.md §8.1, batching).
  bool add_or_update_task(const store::ReadTx& tx, const store::Ptr<api::Task>& task);
  bool remove_task(const api::Task& task);  // from a task delete event
  bool add_or_update_volume(const store::ReadTx& tx, const store::Ptr<api::Volume>& volume);

  bool has_changes() const { return !changes_.empty(); }
  // The accumulated changes (one per (resource type, ID), a later change replacing an earlier
  // one within a batch): secrets, then configs, then volumes, then tasks, each by ID. Clears
  // them.
  std::vector<api::AssignmentChange> take_changes();
  std::size_t task_count() const { return tasks_.size(); }

 private:
  struct Key {
    api::ResourceType type;
    std::string id;
    bool operator<(const Key& o) const;
  };

  // What a pending change carries; monostate = the ID alone (a task/secret/config REMOVE).
  using Object = std::variant<std::monostate, store::Ptr<api::Task>, store::Ptr<api::Secret>,
                              store::Ptr<api::Config>, api::VolumeAssignment>;
  struct Pending {
    api::AssignmentChange::AssignmentAction action;
    Object object;
  };

  void add_task_dependencies(const store::ReadTx& tx, const api::Task& task);
  bool release_task_dependencies(const api::Task& task);
  bool release_dependency(const Key& key, const std::string& user);
  void assign_secret(const store::ReadTx& tx, const Key& key);
  void assign_config(const store::ReadTx& tx, const Key& key);
  void emit(Key key, api::AssignmentChange::AssignmentAction action, Object object);

  std::string node_id_;
  std::unordered_map<std::string, store::Ptr<api::Task>> tasks_;
  std::unordered_map<std::string, api::VolumePublishStatus::State> volumes_;
  // (type, ID) of a secret or config -> the IDs of the tasks and volumes using it.
  std::map<Key, std::set<std::string>> users_;
  std::map<Key, Pending> changes_;
};

}  // namespace dispatchd::dispatcher
