#include "dispatchd/dispatcher/assignment_set.hpp"

#include <google/protobuf/util/message_differencer.h>

#include <tuple>
#include <utility>

namespace dispatchd::dispatcher {

namespace {

using Action = api::AssignmentChange::AssignmentAction;
constexpr Action kUpdate = api::AssignmentChange::UPDATE;
constexpr Action kRemove = api::AssignmentChange::REMOVE;

// Agents apply secrets and configs before tasks; a message lists them in that order too, which
// also makes messages deterministic (SwarmKit's order is Go map order).
int rank(api::ResourceType type) {
  switch (type) {
    case api::SECRET:
      return 0;
    case api::CONFIG:
      return 1;
    case api::VOLUME:
      return 2;
    case api::TASK:
      return 3;
    default:
      return 4;
  }
}

const api::ContainerSpec* container_of(const api::Task& task) {
  return task.spec().has_container() ? &task.spec().container() : nullptr;
}

}  // namespace

// SwarmKit's TasksEqualStable: every field but `status` and `meta` equal, and a set empty
// submessage differs from an absent one (Go's deep equality), which EQUAL comparison keeps.
bool tasks_stably_equal(const api::Task& a, const api::Task& b) {
  static const auto* const status = api::Task::descriptor()->FindFieldByName("status");
  static const auto* const meta = api::Task::descriptor()->FindFieldByName("meta");
  google::protobuf::util::MessageDifferencer differencer;
  differencer.IgnoreField(status);
  differencer.IgnoreField(meta);
  return differencer.Compare(a, b);
}

bool AssignmentSet::Key::operator<(const Key& o) const {
  return std::forward_as_tuple(rank(type), id) < std::forward_as_tuple(rank(o.type), o.id);
}

AssignmentSet::AssignmentSet(std::string node_id) : node_id_(std::move(node_id)) {}

bool AssignmentSet::add_or_update_task(const store::ReadTx& tx, const store::Ptr<api::Task>& task) {
  const auto state = task->status().state();
  // Tasks below ASSIGNED belong to the orchestrator and scheduler, not to any node yet.
  if (state < api::ASSIGNED) return false;

  auto known = tasks_.find(task->id());
  if (known != tasks_.end()) {
    // ASSIGNED and below are set by the manager, so such a task is re-sent even unchanged; above
    // it, a change of status alone comes from the agent itself and is not echoed back.
    if (state > api::ASSIGNED && tasks_stably_equal(*known->second, *task)) {
      known->second = task;
      if (state > api::RUNNING) return release_task_dependencies(*task);
      return false;
    }
  } else if (state <= api::RUNNING) {
    // A task first seen beyond RUNNING has finished on the node already: it needs nothing more.
    add_task_dependencies(tx, *task);
  }
  tasks_[task->id()] = task;
  emit({api::TASK, task->id()}, kUpdate, task);
  return true;
}

bool AssignmentSet::remove_task(const api::Task& task) {
  auto known = tasks_.find(task.id());
  if (known == tasks_.end()) return false;
  emit({api::TASK, task.id()}, kRemove, std::monostate{});
  tasks_.erase(known);
  // A task removal is a modification whether or not a dependency went with it.
  release_task_dependencies(task);
  return true;
}

bool AssignmentSet::add_or_update_volume(const store::ReadTx& tx,
                                         const store::Ptr<api::Volume>& volume) {
  const api::VolumePublishStatus* status = nullptr;
  for (const auto& entry : volume->publish_status()) {
    if (entry.node_id() == node_id_) {
      status = &entry;
      break;
    }
  }
  // Not yet published to this node: the node has nothing to do with it.
  if (status == nullptr || status->state() < api::VolumePublishStatus::PUBLISHED) return false;

  const auto state = status->state();
  auto tracked = volumes_.find(volume->id());
  if (tracked != volumes_.end() && tracked->second == state) return false;

  if (state == api::VolumePublishStatus::PENDING_UNPUBLISH) {
    // The node has confirmed the unpublish; it was told to drop the volume already.
    if (tracked == volumes_.end()) return false;
    volumes_.erase(tracked);
    bool modified = false;
    for (const auto& secret : volume->spec().secrets()) {
      if (release_dependency({api::SECRET, secret.secret()}, volume->id())) modified = true;
    }
    return modified;
  }

  for (const auto& secret : volume->spec().secrets()) {
    Key key{api::SECRET, secret.secret()};
    if (users_[key].empty()) assign_secret(tx, key);
    users_[key].insert(volume->id());
  }

  api::VolumeAssignment assignment;
  assignment.set_id(volume->id());
  assignment.set_volume_id(volume->volume_info().volume_id());
  if (volume->spec().has_driver()) *assignment.mutable_driver() = volume->spec().driver();
  *assignment.mutable_volume_context() = volume->volume_info().volume_context();
  *assignment.mutable_publish_context() = status->publish_context();
  if (volume->spec().has_access_mode()) {
    *assignment.mutable_access_mode() = volume->spec().access_mode();
  }
  *assignment.mutable_secrets() = volume->spec().secrets();

  volumes_[volume->id()] = state;
  emit({api::VOLUME, volume->id()},
       state == api::VolumePublishStatus::PENDING_NODE_UNPUBLISH ? kRemove : kUpdate,
       std::move(assignment));
  return true;
}

std::vector<api::AssignmentChange> AssignmentSet::take_changes() {
  std::vector<api::AssignmentChange> out;
  out.reserve(changes_.size());
  for (auto& [key, pending] : changes_) {
    api::AssignmentChange& change = out.emplace_back();
    change.set_action(pending.action);
    api::Assignment* assignment = change.mutable_assignment();
    if (auto* task = std::get_if<store::Ptr<api::Task>>(&pending.object)) {
      *assignment->mutable_task() = **task;
    } else if (auto* secret = std::get_if<store::Ptr<api::Secret>>(&pending.object)) {
      *assignment->mutable_secret() = **secret;
    } else if (auto* config = std::get_if<store::Ptr<api::Config>>(&pending.object)) {
      *assignment->mutable_config() = **config;
    } else if (auto* volume = std::get_if<api::VolumeAssignment>(&pending.object)) {
      *assignment->mutable_volume() = std::move(*volume);
    } else {
      switch (key.type) {
        case api::TASK:
          assignment->mutable_task()->set_id(key.id);
          break;
        case api::SECRET:
          assignment->mutable_secret()->set_id(key.id);
          break;
        case api::CONFIG:
          assignment->mutable_config()->set_id(key.id);
          break;
        default:
          assignment->mutable_volume()->set_id(key.id);
          break;
      }
    }
  }
  changes_.clear();
  return out;
}

void AssignmentSet::add_task_dependencies(const store::ReadTx& tx, const api::Task& task) {
  for (const auto& ref : task.spec().resource_references()) {
    Key key{ref.resource_type(), ref.resource_id()};
    auto users = users_.find(key);
    if (users == users_.end() || users->second.empty()) {
      if (key.type == api::SECRET) {
        assign_secret(tx, key);
      } else if (key.type == api::CONFIG) {
        assign_config(tx, key);
      } else {
        continue;  // only secrets and configs are dependencies a node is sent
      }
    }
    users_[key].insert(task.id());
  }

  const api::ContainerSpec* container = container_of(task);
  if (container == nullptr) return;
  for (const auto& ref : container->secrets()) {
    Key key{api::SECRET, ref.secret_id()};
    // Keyed on this task rather than on "anyone": a secret shared by several tasks is sent
    // again for each new one (SwarmKit does this so that per-task driver secrets work).
    auto users = users_.find(key);
    if (users == users_.end() || !users->second.contains(task.id())) assign_secret(tx, key);
    users_[key].insert(task.id());
  }
  for (const auto& ref : container->configs()) {
    Key key{api::CONFIG, ref.config_id()};
    auto users = users_.find(key);
    if (users == users_.end() || users->second.empty()) assign_config(tx, key);
    users_[key].insert(task.id());
  }
}

bool AssignmentSet::release_task_dependencies(const api::Task& task) {
  bool modified = false;
  for (const auto& ref : task.spec().resource_references()) {
    if (ref.resource_type() != api::SECRET && ref.resource_type() != api::CONFIG) continue;
    if (release_dependency({ref.resource_type(), ref.resource_id()}, task.id())) modified = true;
  }
  const api::ContainerSpec* container = container_of(task);
  if (container == nullptr) return modified;
  for (const auto& ref : container->secrets()) {
    if (release_dependency({api::SECRET, ref.secret_id()}, task.id())) modified = true;
  }
  for (const auto& ref : container->configs()) {
    if (release_dependency({api::CONFIG, ref.config_id()}, task.id())) modified = true;
  }
  return modified;
}

bool AssignmentSet::release_dependency(const Key& key, const std::string& user) {
  auto users = users_.find(key);
  if (users != users_.end()) {
    users->second.erase(user);
    if (!users->second.empty()) return false;
    users_.erase(users);
  }
  // Emitted even when the dependency was never sent or was removed already, as SwarmKit does.
  emit(key, kRemove, std::monostate{});
  return true;
}

void AssignmentSet::assign_secret(const store::ReadTx& tx, const Key& key) {
  users_.try_emplace(key);
  auto secret = tx.secret(key.id);
  // Secret drivers are not supported (docs/behaviour.md §0.8): such a secret is skipped like a
  // missing one.
  if (!secret || secret->spec().has_driver()) return;
  emit(key, kUpdate, std::move(secret));
}

void AssignmentSet::assign_config(const store::ReadTx& tx, const Key& key) {
  users_[key].clear();
  auto config = tx.config(key.id);
  if (!config) return;
  emit(key, kUpdate, std::move(config));
}

void AssignmentSet::emit(Key key, Action action, Object object) {
  changes_.insert_or_assign(std::move(key), Pending{action, std::move(object)});
}

}  // namespace dispatchd::dispatcher
