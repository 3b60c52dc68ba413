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
  durable_index_ = index_;
  return Status::ok();
}

Status Store::replay(const dispatchd::state::v1::JournalRecord& r) {
  using dispatchd::state::v1::JournalChange;
  if (in_tx_) return Status(StatusCode::failed_precondition, "replay inside a transaction");
  if (r.index() <= index_) return Status::ok();
  if (r.prev_index() != index_) {
    return Status(StatusCode::data_loss,
                  "the log continues from index " + std::to_string(r.prev_index()) +
                      " but the snapshot ends at index " + std::to_string(index_) +
                      ": the snapshot (store.pb) that covers the records before it is missing or "
                      "older than the log. Restore it from a backup, or move the state "
                      "directory's contents away to start empty");
  }
  auto bad = [&](const std::string& what) {
    return Status(StatusCode::data_loss, "record " + std::to_string(r.index()) + ": " + what);
  };
  auto apply = [&](auto& table, const JournalChange& c, auto tag) -> Status {
    using T = decltype(tag);
    if (c.kind() == JournalChange::REMOVE) {
      if constexpr (std::is_same_v<T, api::Task>) {
        auto it = table.find(c.id());
        if (it != table.end()) index_task(it->second.get(), nullptr);
      }
      table.erase(c.id());
      return Status::ok();
    }
    auto obj = std::make_shared<T>();
    if (!obj->ParseFromString(c.object())) return bad("unreadable object " + c.id());
    if (obj->id() != c.id()) return bad("object " + c.id() + " has ID " + obj->id());
    auto it = table.find(c.id());
    if constexpr (std::is_same_v<T, api::Task>) {
      index_task(it == table.end() ? nullptr : it->second.get(), obj.get());
    }
    table[c.id()] = std::move(obj);
    return Status::ok();
  };
  for (const auto& c : r.changes()) {
    Status st;
    switch (c.type()) {
      case JournalChange::NODE:
        st = apply(nodes_, c, api::Node{});
        break;
      case JournalChange::TASK:
        st = apply(tasks_, c, api::Task{});
        break;
      case JournalChange::SECRET:
        st = apply(secrets_, c, api::Secret{});
        break;
      case JournalChange::CONFIG:
        st = apply(configs_, c, api::Config{});
        break;
      case JournalChange::VOLUME:
        st = apply(volumes_, c, api::Volume{});
        break;
      case JournalChange::CLUSTER: {
        auto cl = std::make_shared<api::Cluster>();
        if (!cl->ParseFromString(c.object())) return bad("unreadable cluster");
        if (cl->id() != cluster_->id()) {
          return Status(StatusCode::failed_precondition, "the log belongs to cluster \"" +
                                                             cl->id() + "\", this server is \"" +
                                                             cluster_->id() + "\"");
        }
        cluster_ = std::move(cl);
        break;
      }
      case JournalChange::MANAGERS: {
        dispatchd::state::v1::ManagerList m;
        if (!m.ParseFromString(c.object())) return bad("unreadable manager list");
        managers_ = std::make_shared<const ManagerList>(m.managers().begin(), m.managers().end());
        break;
      }
      default:
        return bad("unknown object type " + std::to_string(c.type()));
    }
    if (!st.is_ok()) return st;
  }
  index_ = r.index();
  durable_index_ = index_;
  return Status::ok();
}

}  // namespace dispatchd::store
