#pragma once
// The in-memory cluster store: nodes, tasks, secrets, configs, volumes, the `default` cluster
// and the manager list.
//
// Objects are immutable snapshots (shared_ptr<const T>): a reader, an event and a message being
// sent can hold one while writers replace it. A write transaction applies changes as it goes,
// rolls them back if the transaction fails, and on commit publishes one event per change, in
// order, to the watchers whose filter matches. Everything runs on the io_context thread and a
// transaction never suspends, so `view` then `watch` in the same synchronous step is an atomic
// snapshot-plus-subscription (view_and_watch): no change is missed or seen twice.

#include <asio/awaitable.hpp>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "dispatchd/co/event.hpp"
#include "dispatchd/co/intrusive_list.hpp"
#include "dispatchd/status.hpp"
#include "objects.pb.h"
#include "state.pb.h"

namespace dispatchd::store {

namespace api = ::docker::swarmkit::v1;

template <class T>
using Ptr = std::shared_ptr<const T>;

using ManagerList = std::vector<api::WeightedPeer>;

enum class ObjectType : std::uint8_t { node, task, secret, config, volume, cluster, managers };
enum class EventKind : std::uint8_t { create, update, remove };

const char* object_type_name(ObjectType t);

struct Event {
  EventKind kind;
  ObjectType type;
  std::shared_ptr<const void> object;  // the new object (the removed one for `remove`)
  std::shared_ptr<const void> old;     // updates: the previous object

  template <class T>
  const T& as() const {
    return *static_cast<const T*>(object.get());
  }
  template <class T>
  Ptr<T> ptr() const {
    return std::static_pointer_cast<const T>(object);
  }
  template <class T>
  const T* old_as() const {
    return static_cast<const T*>(old.get());
  }
};

// Which events a watcher wants. `key` narrows by node: for nodes the node ID, for tasks the
// (new) task's node_id, for volumes any node with a publish-status entry. Empty = all.
struct Filter {
  ObjectType type;
  std::string key;
  bool create = true;
  bool update = true;
  bool remove = true;
};

class Watcher : public co::ListHook {
 public:
  virtual ~Watcher() = default;
  // Runs synchronously at commit. Must not touch the store: record the event and wake up.
  virtual void on_event(const Event& e) = 0;

 private:
  friend class Store;
  Filter filter_;
};

class Store;

// One change of a committed transaction: the object after it (the removed one for `remove`).
struct Change {
  EventKind kind;
  ObjectType type;
  std::string id;
  std::shared_ptr<const void> object;
  std::shared_ptr<const void> old;
};

// One change made by another manager's store and replicated to this one (issue 16): the object
// as that store wrote it (the api type named by `type`), or null when it was removed.
struct RemoteChange {
  ObjectType type;
  std::string id;
  std::shared_ptr<const void> object;
};

// Told of every commit, in order, before any watcher sees it: the write-ahead log
// (docs/architecture.md, "Durability"). `prev` and `index` are the store's index before and
// after the commit; the
// journal later calls Store::mark_durable(index) once the commit is on disk, or
// Store::journal_failed() if it never will be. Runs on the io thread and must not block.
class Journal {
 public:
  virtual ~Journal() = default;
  virtual void append(std::uint64_t prev, std::uint64_t index, std::span<const Change> changes) = 0;
};

class ReadTx {
 public:
  explicit ReadTx(const Store& s) : s_(s) {}
  Ptr<api::Node> node(std::string_view id) const;
  Ptr<api::Task> task(std::string_view id) const;
  Ptr<api::Secret> secret(std::string_view id) const;
  Ptr<api::Config> config(std::string_view id) const;
  Ptr<api::Volume> volume(std::string_view id) const;
  Ptr<api::Cluster> cluster() const;  // the `default` cluster (always present)
  const ManagerList& managers() const;

  std::vector<Ptr<api::Node>> nodes() const;
  std::vector<Ptr<api::Task>> tasks() const;
  std::vector<Ptr<api::Task>> tasks_of_node(std::string_view node_id) const;
  // Counts, from the tables and the node index, without collecting the objects.
  std::size_t task_count() const noexcept;
  std::size_t task_count_of_node(std::string_view node_id) const;
  std::vector<Ptr<api::Volume>> volumes() const;
  std::vector<Ptr<api::Secret>> secrets() const;
  std::vector<Ptr<api::Config>> configs() const;

 protected:
  const Store& s_;
};

class WriteTx : public ReadTx {
 public:
  explicit WriteTx(Store& s) : ReadTx(s), w_(s) {}
  // create: fails with ALREADY_EXISTS; update/remove: NOT_FOUND. Writes stamp meta.version with
  // the store's next index and meta.updated_at (created_at on create).
  Status create(api::Node n);
  Status update(api::Node n);
  Status remove_node(std::string_view id);
  Status create(api::Task t);
  Status update(api::Task t);
  Status remove_task(std::string_view id);
  Status create(api::Secret x);
  Status update(api::Secret x);
  Status remove_secret(std::string_view id);
  Status create(api::Config x);
  Status update(api::Config x);
  Status remove_config(std::string_view id);
  Status create(api::Volume x);
  Status update(api::Volume x);
  Status remove_volume(std::string_view id);
  Status update(api::Cluster c);
  void set_managers(ManagerList m);

  std::size_t changes() const noexcept;

 private:
  Store& w_;
};

// Every object of the store at one index, by reference: taking one costs a pointer copy per
// object; the objects are immutable, so another thread may turn it into a snapshot while the
// store goes on changing.
struct Capture {
  std::uint64_t index = 0;
  Ptr<api::Cluster> cluster;
  std::shared_ptr<const ManagerList> managers;
  std::vector<Ptr<api::Node>> nodes;
  std::vector<Ptr<api::Task>> tasks;
  std::vector<Ptr<api::Secret>> secrets;
  std::vector<Ptr<api::Config>> configs;
  std::vector<Ptr<api::Volume>> volumes;

  dispatchd::state::v1::StoreSnapshot to_snapshot() const;
};

class Store {
 public:
  // The `default` cluster's ID is the cluster organisation.
  explicit Store(std::string cluster_id);
  Store(const Store&) = delete;
  Store& operator=(const Store&) = delete;

  template <class F>
  decltype(auto) view(F&& f) const {
    ReadTx tx(*this);
    return f(tx);
  }

  // Runs f(WriteTx&) -> Status. On error every change is undone and nothing published.
  Status update(const std::function<Status(WriteTx&)>& f);

  // Snapshot plus subscription with nothing missed or doubled (docs/architecture.md, "The store
  // and its watch contract"): call watch() and then view() in one synchronous step, with no
  // co_await between them. Commits never suspend and publish before update() returns, so every
  // commit is either wholly in the view (and was published before the watcher existed) or wholly
  // after it (and reaches the watcher). A backend that commits asynchronously must keep this.
  void watch(Watcher& w, Filter f);
  void unwatch(Watcher& w) noexcept { w.unlink(); }
  std::size_t watcher_count() const noexcept;

  // Everything, for the state directory (objects are shared, so this copies each one once).
  dispatchd::state::v1::StoreSnapshot snapshot() const { return capture().to_snapshot(); }
  Capture capture() const;
  // Replaces the contents with a snapshot, without events: only before anything watches or
  // writes (start-up). Objects keep their meta; the index continues from the snapshot's.
  Status restore(const dispatchd::state::v1::StoreSnapshot& s);
  // Applies one write-ahead log record after restore(), without events (start-up only). Records
  // at or below the current index are already in the snapshot and are skipped; the first one
  // after must continue the current index (DATA_LOSS otherwise).
  Status replay(const dispatchd::state::v1::JournalRecord& r);
  // A follower's replica (issue 16): applies what the leader committed as one transaction that
  // publishes its events like update() does, so view-then-watch holds on the follower too.
  // Objects are kept exactly as given (meta is not stamped again). A put of an absent object is a
  // create, of a present one an update; removing an absent object is skipped. `index` becomes
  // the store's index if it is above it. Refused (nothing applied) inside a transaction, with a
  // journal (only the leader writes), for a manager list, a removed cluster, an object whose ID
  // is not `id` or a cluster of another ID.
  Status apply_remote(std::span<const RemoteChange> changes, std::uint64_t index);

  // Durability. Without a journal every commit is durable when it returns.
  void set_journal(Journal* j) noexcept;
  std::uint64_t durable_index() const noexcept { return durable_index_; }
  void mark_durable(std::uint64_t index);
  // The journal cannot write any more: every wait, now and later, fails with `why`.
  void journal_failed(Status why);
  // Until every commit up to `index` is durable: OK; the journal's failure; or CANCELLED when
  // `cancel` is set first.
  asio::awaitable<Status> wait_durable(std::uint64_t index, co::Event* cancel = nullptr);

  std::uint64_t commits() const noexcept { return commits_; }
  std::uint64_t index() const noexcept { return index_; }

 private:
  friend class ReadTx;
  friend class WriteTx;

  template <class T>
  using Table = std::unordered_map<std::string, Ptr<T>>;

  template <class T>
  Table<T>& table();
  template <class T>
  const Table<T>& table() const;
  template <class T>
  static ObjectType type_of();

  template <class T>
  Status put(T obj, bool create);
  template <class T>
  Status erase(std::string_view id);
  void index_task(const api::Task* old_task, const api::Task* new_task);
  void stamp(api::Meta* meta, bool create);
  void rollback();
  void publish(const Change& c);
  void deliver(co::IntrusiveList<Watcher>& list, const Event& e);

  Table<api::Node> nodes_;
  Table<api::Task> tasks_;
  Table<api::Secret> secrets_;
  Table<api::Config> configs_;
  Table<api::Volume> volumes_;
  Ptr<api::Cluster> cluster_;
  Ptr<ManagerList> managers_;
  std::unordered_map<std::string, std::set<std::string>> tasks_by_node_;

  // Watchers: by type, those with a key in a map by key, the rest in a list.
  struct Watchers {
    co::IntrusiveList<Watcher> all;
    std::unordered_map<std::string, co::IntrusiveList<Watcher>> by_key;
  };
  Watchers watchers_[7];

  std::vector<Change> pending_;
  bool in_tx_ = false;
  std::uint64_t index_ = 0;
  std::uint64_t commits_ = 0;

  struct DurableWaiter : co::ListHook {
    std::uint64_t index = 0;
    co::Wakeup* wakeup = nullptr;
  };
  Journal* journal_ = nullptr;
  std::uint64_t durable_index_ = 0;
  std::optional<Status> journal_error_;
  co::IntrusiveList<DurableWaiter> durable_waiters_;
};

}  // namespace dispatchd::store
