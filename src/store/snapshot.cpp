// The store's state as one value: captured on the io thread (objects are shared, not copied),
// turned into the state directory's snapshot message off it, and restored at start.

#include <algorithm>

#include "dispatchd/store/store.hpp"

namespace dispatchd::store {

Capture Store::capture() const {
  Capture c;
  c.index = index_;
  c.cluster = cluster_;
  c.managers = managers_;
  auto take = [](const auto& table, auto& out) {
    out.reserve(table.size());
    for (const auto& [id, p] : table)
      out.push_back(p);
  };
  take(nodes_, c.nodes);
  take(tasks_, c.tasks);
  take(secrets_, c.secrets);
  take(configs_, c.configs);
  take(volumes_, c.volumes);
  return c;
}

dispatchd::state::v1::StoreSnapshot Capture::to_snapshot() const {
  dispatchd::state::v1::StoreSnapshot s;
  s.set_format(1);
  s.set_index(index);
  if (cluster) *s.mutable_cluster() = *cluster;
  if (managers) {
    for (const auto& m : *managers)
      *s.add_managers() = m;
  }
  for (const auto& x : nodes)
    *s.add_nodes() = *x;
  for (const auto& x : tasks)
    *s.add_tasks() = *x;
  for (const auto& x : secrets)
    *s.add_secrets() = *x;
  for (const auto& x : configs)
    *s.add_configs() = *x;
  for (const auto& x : volumes)
    *s.add_volumes() = *x;
  return s;
}

Status Store::restore(const dispatchd::state::v1::StoreSnapshot& s) {
  if (in_tx_) return Status(StatusCode::failed_precondition, "restore inside a transaction");
  if (s.format() != 1) {
    return Status(StatusCode::invalid_argument,
                  "unknown state format " + std::to_string(s.format()) + " (this build reads 1)");
  }
  for (const auto& list : watchers_) {
    if (!list.all.empty() || !list.by_key.empty()) {
      return Status(StatusCode::failed_precondition, "restore while the store is watched");
    }
  }
  if (s.has_cluster() && s.cluster().id() != cluster_->id()) {
    return Status(StatusCode::failed_precondition, "the state belongs to cluster \"" +
                                                       s.cluster().id() + "\", this server is \"" +
                                                       cluster_->id() + "\"");
  }
  auto load = [](auto& table, const auto& items, const char* kind) -> Status {
    table.clear();
    for (const auto& x : items) {
      if (x.id().empty())
        return Status(StatusCode::invalid_argument, std::string(kind) + " without an ID");
      using T = std::decay_t<decltype(x)>;
      if (!table.emplace(x.id(), std::make_shared<const T>(x)).second) {
        return Status(StatusCode::invalid_argument, std::string(kind) + " " + x.id() + " twice");
      }
    }
    return Status::ok();
  };
  Status st;
  if (st = load(nodes_, s.nodes(), "node"); !st.is_ok()) return st;
  if (st = load(tasks_, s.tasks(), "task"); !st.is_ok()) return st;
  if (st = load(secrets_, s.secrets(), "secret"); !st.is_ok()) return st;
  if (st = load(configs_, s.configs(), "config"); !st.is_ok()) return st;
  if (st = load(volumes_, s.volumes(), "volume"); !st.is_ok()) return st;
  tasks_by_node_.clear();
  for (const auto& [id, t] : tasks_)
    index_task(nullptr, t.get());
  if (s.has_cluster()) {
    cluster_ = std::make_shared<const api::Cluster>(s.cluster());
  }
  managers_ = std::make_shared<const ManagerList>(s.managers().begin(), s.managers().end());
  index_ = std::max(index_, s.index());
  return Status::ok();
}

}  // namespace dispatchd::store
