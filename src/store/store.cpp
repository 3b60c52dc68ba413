#include "dispatchd/store/store.hpp"

#include <google/protobuf/util/time_util.h>

#include <algorithm>
#include <type_traits>

namespace dispatchd::store {

const char* object_type_name(ObjectType t) {
  switch (t) {
    case ObjectType::node:
      return "node";
    case ObjectType::task:
      return "task";
    case ObjectType::secret:
      return "secret";
    case ObjectType::config:
      return "config";
    case ObjectType::volume:
      return "volume";
    case ObjectType::cluster:
      return "cluster";
    case ObjectType::managers:
      return "managers";
  }
  return "object";
}

// ---- type plumbing ---------------------------------------------------------------------------

template <>
Store::Table<api::Node>& Store::table<api::Node>() {
  return nodes_;
}
template <>
Store::Table<api::Task>& Store::table<api::Task>() {
  return tasks_;
}
template <>
Store::Table<api::Secret>& Store::table<api::Secret>() {
  return secrets_;
}
template <>
Store::Table<api::Config>& Store::table<api::Config>() {
  return configs_;
}
template <>
Store::Table<api::Volume>& Store::table<api::Volume>() {
  return volumes_;
}
template <>
const Store::Table<api::Node>& Store::table<api::Node>() const {
  return nodes_;
}
template <>
const Store::Table<api::Task>& Store::table<api::Task>() const {
  return tasks_;
}
template <>
const Store::Table<api::Secret>& Store::table<api::Secret>() const {
  return secrets_;
}
template <>
const Store::Table<api::Config>& Store::table<api::Config>() const {
  return configs_;
}
template <>
const Store::Table<api::Volume>& Store::table<api::Volume>() const {
  return volumes_;
}
template <>
ObjectType Store::type_of<api::Node>() {
  return ObjectType::node;
}
template <>
ObjectType Store::type_of<api::Task>() {
  return ObjectType::task;
}
template <>
ObjectType Store::type_of<api::Secret>() {
  return ObjectType::secret;
}
template <>
ObjectType Store::type_of<api::Config>() {
  return ObjectType::config;
}
template <>
ObjectType Store::type_of<api::Volume>() {
  return ObjectType::volume;
}

namespace {
template <class T>
Ptr<T> lookup(const std::unordered_map<std::string, Ptr<T>>& t, std::string_view id) {
  auto it = t.find(std::string(id));
  return it == t.end() ? nullptr : it->second;
}
template <class T>
std::vector<Ptr<T>> all(const std::unordered_map<std::string, Ptr<T>>& t) {
  std::vector<Ptr<T>> out;
  out.reserve(t.size());
  for (const auto& [id, p] : t)
    out.push_back(p);
  return out;
}
}  // namespace

// ---- reads -----------------------------------------------------------------------------------

Ptr<api::Node> ReadTx::node(std::string_view id) const {
  return lookup(s_.nodes_, id);
}
Ptr<api::Task> ReadTx::task(std::string_view id) const {
  return lookup(s_.tasks_, id);
}
Ptr<api::Secret> ReadTx::secret(std::string_view id) const {
  return lookup(s_.secrets_, id);
}
Ptr<api::Config> ReadTx::config(std::string_view id) const {
  return lookup(s_.configs_, id);
}
Ptr<api::Volume> ReadTx::volume(std::string_view id) const {
  return lookup(s_.volumes_, id);
}
Ptr<api::Cluster> ReadTx::cluster() const {
  return s_.cluster_;
}
const ManagerList& ReadTx::managers() const {
  return *s_.managers_;
}
std::vector<Ptr<api::Node>> ReadTx::nodes() const {
  return all(s_.nodes_);
}
std::vector<Ptr<api::Task>> ReadTx::tasks() const {
  return all(s_.tasks_);
}
std::vector<Ptr<api::Volume>> ReadTx::volumes() const {
  return all(s_.volumes_);
}
std::vector<Ptr<api::Secret>> ReadTx::secrets() const {
  return all(s_.secrets_);
}
std::vector<Ptr<api::Config>> ReadTx::configs() const {
  return all(s_.configs_);
}

std::size_t ReadTx::task_count() const noexcept {
  return s_.tasks_.size();
}
std::size_t ReadTx::task_count_of_node(std::string_view node_id) const {
  auto it = s_.tasks_by_node_.find(std::string(node_id));
  return it == s_.tasks_by_node_.end() ? 0 : it->second.size();
}
std::vector<Ptr<api::Task>> ReadTx::tasks_of_node(std::string_view node_id) const {
  std::vector<Ptr<api::Task>> out;
  auto it = s_.tasks_by_node_.find(std::string(node_id));
  if (it == s_.tasks_by_node_.end()) return out;
  out.reserve(it->second.size());
  for (const auto& id : it->second) {
    if (auto t = lookup(s_.tasks_, id)) out.push_back(std::move(t));
  }
  return out;
}

// ---- writes ----------------------------------------------------------------------------------

Status WriteTx::create(api::Node n) {
  return w_.put(std::move(n), true);
}
Status WriteTx::update(api::Node n) {
  return w_.put(std::move(n), false);
}
Status WriteTx::remove_node(std::string_view id) {
  return w_.erase<api::Node>(id);
}
Status WriteTx::create(api::Task t) {
  return w_.put(std::move(t), true);
}
Status WriteTx::update(api::Task t) {
  return w_.put(std::move(t), false);
}
Status WriteTx::remove_task(std::string_view id) {
  return w_.erase<api::Task>(id);
}
Status WriteTx::create(api::Secret x) {
  return w_.put(std::move(x), true);
}
Status WriteTx::update(api::Secret x) {
  return w_.put(std::move(x), false);
}
Status WriteTx::remove_secret(std::string_view id) {
  return w_.erase<api::Secret>(id);
}
Status WriteTx::create(api::Config x) {
  return w_.put(std::move(x), true);
}
Status WriteTx::update(api::Config x) {
  return w_.put(std::move(x), false);
}
Status WriteTx::remove_config(std::string_view id) {
  return w_.erase<api::Config>(id);
}
Status WriteTx::create(api::Volume x) {
  return w_.put(std::move(x), true);
}
Status WriteTx::update(api::Volume x) {
  return w_.put(std::move(x), false);
}
Status WriteTx::remove_volume(std::string_view id) {
  return w_.erase<api::Volume>(id);
}
std::size_t WriteTx::changes() const noexcept {
  return w_.pending_.size();
}

Status WriteTx::update(api::Cluster c) {
  w_.stamp(c.mutable_meta(), false);
  auto p = std::make_shared<const api::Cluster>(std::move(c));
  Change ch{EventKind::update, ObjectType::cluster, p->id(), p, w_.cluster_};
  w_.cluster_ = p;
  w_.pending_.push_back(std::move(ch));
  return Status::ok();
}

void WriteTx::set_managers(ManagerList m) {
  auto p = std::make_shared<const ManagerList>(std::move(m));
  Change ch{EventKind::update, ObjectType::managers, "", p, w_.managers_};
  w_.managers_ = p;
  w_.pending_.push_back(std::move(ch));
}

Store::Store(std::string cluster_id) {
  api::Cluster c;
  c.set_id(cluster_id);
  c.mutable_spec()->mutable_annotations()->set_name("default");
  stamp(c.mutable_meta(), true);
  cluster_ = std::make_shared<const api::Cluster>(std::move(c));
  managers_ = std::make_shared<const ManagerList>();
  durable_index_ = index_;
}

void Store::stamp(api::Meta* meta, bool create) {
  ++index_;
  meta->mutable_version()->set_index(index_);
  auto now = google::protobuf::util::TimeUtil::NanosecondsToTimestamp(
      std::chrono::duration_cast<std::chrono::nanoseconds>(
          std::chrono::system_clock::now().time_since_epoch())
          .count());
  if (create) *meta->mutable_created_at() = now;
  *meta->mutable_updated_at() = now;
}

template <class T>
Status Store::put(T obj, bool create) {
  auto& t = table<T>();
  auto it = t.find(obj.id());
  if (create && it != t.end()) {
    return Status(StatusCode::already_exists,
                  std::string(object_type_name(type_of<T>())) + " " + obj.id() + " already exists");
  }
  if (!create && it == t.end()) {
    return Status(StatusCode::not_found,
                  std::string(object_type_name(type_of<T>())) + " " + obj.id() + " not found");
  }
  if (obj.id().empty()) return Status(StatusCode::invalid_argument, "object without an ID");
  if (!create && it->second->has_meta()) {
    // Keep the creation time across updates.
    *obj.mutable_meta()->mutable_created_at() = it->second->meta().created_at();
  }
  stamp(obj.mutable_meta(), create);
  auto p = std::make_shared<const T>(std::move(obj));
  Change ch{create ? EventKind::create : EventKind::update, type_of<T>(), p->id(), p, nullptr};
  if (!create) ch.old = it->second;
  if constexpr (std::is_same_v<T, api::Task>) {
    index_task(create ? nullptr : static_cast<const api::Task*>(it->second.get()), p.get());
  }
  t[p->id()] = p;
  pending_.push_back(std::move(ch));
  return Status::ok();
}

template <class T>
Status Store::erase(std::string_view id) {
  auto& t = table<T>();
  auto it = t.find(std::string(id));
  if (it == t.end()) {
    return Status(StatusCode::not_found, std::string(object_type_name(type_of<T>())) + " " +
                                             std::string(id) + " not found");
  }
  Change ch{EventKind::remove, type_of<T>(), it->first, it->second, nullptr};
  if constexpr (std::is_same_v<T, api::Task>) {
    index_task(static_cast<const api::Task*>(it->second.get()), nullptr);
  }
  t.erase(it);
  pending_.push_back(std::move(ch));
  return Status::ok();
}

void Store::index_task(const api::Task* old_task, const api::Task* new_task) {
  if (old_task && (!new_task || old_task->node_id() != new_task->node_id())) {
    auto it = tasks_by_node_.find(old_task->node_id());
    if (it != tasks_by_node_.end()) {
      it->second.erase(old_task->id());
      if (it->second.empty()) tasks_by_node_.erase(it);
    }
  }
  if (new_task && !new_task->node_id().empty())
    tasks_by_node_[new_task->node_id()].insert(new_task->id());
}

void Store::rollback() {
  for (auto it = pending_.rbegin(); it != pending_.rend(); ++it) {
    const Change& c = *it;
    auto restore = [&](auto& tbl, auto tag) {
      using T = decltype(tag);
      if (c.kind == EventKind::create) {
        tbl.erase(c.id);
      } else if (c.kind == EventKind::update) {
        tbl[c.id] = std::static_pointer_cast<const T>(c.old);
      } else {
        tbl[c.id] = std::static_pointer_cast<const T>(c.object);
      }
    };
    switch (c.type) {
      case ObjectType::node:
        restore(nodes_, api::Node{});
        break;
      case ObjectType::task: {
        const auto* now =
            c.kind == EventKind::remove ? nullptr : static_cast<const api::Task*>(c.object.get());
        const auto* before = c.kind == EventKind::create
                                 ? nullptr
                                 : static_cast<const api::Task*>(
                                       (c.kind == EventKind::update ? c.old : c.object).get());
        index_task(now, before);
        restore(tasks_, api::Task{});
        break;
      }
      case ObjectType::secret:
        restore(secrets_, api::Secret{});
        break;
      case ObjectType::config:
        restore(configs_, api::Config{});
        break;
      case ObjectType::volume:
        restore(volumes_, api::Volume{});
        break;
      case ObjectType::cluster:
        cluster_ = std::static_pointer_cast<const api::Cluster>(c.old);
        break;
      case ObjectType::managers:
        managers_ = std::static_pointer_cast<const ManagerList>(c.old);
        break;
    }
  }
  pending_.clear();
}

Status Store::update(const std::function<Status(WriteTx&)>& f) {
  if (in_tx_) return Status(StatusCode::internal, "nested store transaction");
  in_tx_ = true;
  const std::uint64_t start = index_;
  WriteTx tx(*this);
  Status st = f(tx);
  in_tx_ = false;
  if (!st.is_ok()) {
    rollback();
    index_ = start;  // nothing saw the stamps of the undone changes
    return st;
  }
  std::vector<Change> changes;
  changes.swap(pending_);
  if (changes.empty()) return st;
  ++commits_;
  // Every commit moves the index (removals and the manager list stamp nothing), so that the
  // journal's records and durability waits can name it.
  if (index_ == start) ++index_;
  if (journal_ && !journal_error_) {
    journal_->append(start, index_, changes);
  } else if (!journal_) {
    durable_index_ = index_;
  }
  for (const auto& c : changes)
    publish(c);
  return st;
}

namespace {

// The ID of a replicated object, whatever its type (nullptr for the manager list).
const std::string* remote_id(ObjectType type, const void* o) {
  switch (type) {
    case ObjectType::node:
      return &static_cast<const api::Node*>(o)->id();
    case ObjectType::task:
      return &static_cast<const api::Task*>(o)->id();
    case ObjectType::secret:
      return &static_cast<const api::Secret*>(o)->id();
    case ObjectType::config:
      return &static_cast<const api::Config*>(o)->id();
    case ObjectType::volume:
      return &static_cast<const api::Volume*>(o)->id();
    case ObjectType::cluster:
      return &static_cast<const api::Cluster*>(o)->id();
    case ObjectType::managers:
      break;
  }
  return nullptr;
}

}  // namespace

Status Store::apply_remote(std::span<const RemoteChange> changes, std::uint64_t index) {
  if (in_tx_) return Status(StatusCode::failed_precondition, "remote changes inside a transaction");
  if (journal_) {
    return Status(StatusCode::failed_precondition,
                  "remote changes to a store with a journal (only the leader writes)");
  }
  // Check everything first: a refused batch leaves the store as it was.
  for (const auto& c : changes) {
    const char* kind = object_type_name(c.type);
    if (c.type == ObjectType::managers) {
      return Status(StatusCode::invalid_argument, "the manager list is not replicated");
    }
    if (!c.object) {
      if (c.type == ObjectType::cluster) {
        return Status(StatusCode::invalid_argument, "the cluster object cannot be removed");
      }
      continue;
    }
    const std::string* id = remote_id(c.type, c.object.get());
    if (*id != c.id) {
      return Status(StatusCode::invalid_argument,
                    std::string(kind) + " " + c.id + " has ID \"" + *id + "\"");
    }
    if (c.type == ObjectType::cluster && c.id != cluster_->id()) {
      return Status(StatusCode::failed_precondition, "the change belongs to cluster \"" + c.id +
                                                         "\", this server is \"" + cluster_->id() +
                                                         "\"");
    }
  }
  std::vector<Change> applied;
  applied.reserve(changes.size());
  for (const auto& c : changes) {
    auto apply = [&](auto& table, auto tag) {
      using T = decltype(tag);
      auto it = table.find(c.id);
      const T* before = it == table.end() ? nullptr : it->second.get();
      if (!c.object) {
        if (!before) return;
        if constexpr (std::is_same_v<T, api::Task>) index_task(before, nullptr);
        applied.push_back(Change{EventKind::remove, c.type, c.id, it->second, nullptr});
        table.erase(it);
        return;
      }
      auto p = std::static_pointer_cast<const T>(c.object);
      if constexpr (std::is_same_v<T, api::Task>) index_task(before, p.get());
      if (!before) {
        applied.push_back(Change{EventKind::create, c.type, c.id, p, nullptr});
        table.emplace(c.id, std::move(p));
      } else {
        applied.push_back(Change{EventKind::update, c.type, c.id, p, it->second});
        it->second = std::move(p);
      }
    };
    switch (c.type) {
      case ObjectType::node:
        apply(nodes_, api::Node{});
        break;
      case ObjectType::task:
        apply(tasks_, api::Task{});
        break;
      case ObjectType::secret:
        apply(secrets_, api::Secret{});
        break;
      case ObjectType::config:
        apply(configs_, api::Config{});
        break;
      case ObjectType::volume:
        apply(volumes_, api::Volume{});
        break;
      case ObjectType::cluster: {
        auto p = std::static_pointer_cast<const api::Cluster>(c.object);
        applied.push_back(Change{EventKind::update, c.type, c.id, p, cluster_});
        cluster_ = std::move(p);
        break;
      }
      case ObjectType::managers:
        break;
    }
  }
  if (!applied.empty()) ++commits_;
  index_ = std::max(index_, index);
  mark_durable(index_);
  for (const auto& c : applied)
    publish(c);
  return Status::ok();
}

void Store::set_journal(Journal* j) noexcept {
  journal_ = j;
  if (!j) mark_durable(index_);
}

void Store::mark_durable(std::uint64_t index) {
  if (index <= durable_index_) return;
  durable_index_ = index;
  durable_waiters_.for_each([&](DurableWaiter& w) {
    if (w.index <= index) w.wakeup->notify();
  });
}

void Store::journal_failed(Status why) {
  if (journal_error_) return;
  journal_error_ = std::move(why);
  durable_waiters_.for_each([](DurableWaiter& w) { w.wakeup->notify(); });
}

asio::awaitable<Status> Store::wait_durable(std::uint64_t index, co::Event* cancel) {
  if (durable_index_ >= index) co_return Status::ok();
  co::Wakeup wakeup;
  DurableWaiter w;
  w.index = index;
  w.wakeup = &wakeup;
  durable_waiters_.push_back(w);
  std::optional<co::Event::Listener> cancelled;
  if (cancel) cancelled.emplace(*cancel, wakeup);
  for (;;) {
    if (durable_index_ >= index) co_return Status::ok();
    if (journal_error_) co_return *journal_error_;
    if (cancel && cancel->is_set()) co_return Status(StatusCode::cancelled, "call cancelled");
    co_await wakeup.async_park();
  }
}

void Store::watch(Watcher& w, Filter f) {
  w.unlink();
  auto& ws = watchers_[static_cast<int>(f.type)];
  if (f.key.empty()) {
    ws.all.push_back(w);
  } else {
    ws.by_key[f.key].push_back(w);
  }
  w.filter_ = std::move(f);
}

std::size_t Store::watcher_count() const noexcept {
  std::size_t n = 0;
  for (const auto& ws : watchers_) {
    n += ws.all.size();
    for (const auto& [k, l] : ws.by_key)
      n += l.size();
  }
  return n;
}

void Store::deliver(co::IntrusiveList<Watcher>& list, const Event& e) {
  list.for_each([&](Watcher& w) {
    const Filter& f = w.filter_;
    bool want = (e.kind == EventKind::create && f.create) ||
                (e.kind == EventKind::update && f.update) ||
                (e.kind == EventKind::remove && f.remove);
    if (want) w.on_event(e);
  });
}

void Store::publish(const Change& c) {
  Event e{c.kind, c.type, c.object, c.old};
  auto& ws = watchers_[static_cast<int>(c.type)];
  deliver(ws.all, e);
  if (ws.by_key.empty()) return;
  auto by = [&](const std::string& key) {
    auto it = ws.by_key.find(key);
    if (it == ws.by_key.end()) return;
    if (it->second.empty()) {
      ws.by_key.erase(it);
      return;
    }
    deliver(it->second, e);
  };
  switch (c.type) {
    case ObjectType::node:
      by(c.id);
      break;
    case ObjectType::task:
      // Filtered on the new task: a task moved to another node is seen by the new node only.
      by(static_cast<const api::Task*>(c.object.get())->node_id());
      break;
    case ObjectType::volume: {
      const auto* v = static_cast<const api::Volume*>(c.object.get());
      std::set<std::string> seen;
      for (const auto& ps : v->publish_status()) {
        if (seen.insert(ps.node_id()).second) by(ps.node_id());
      }
      break;
    }
    default:
      break;
  }
}

}  // namespace dispatchd::store
