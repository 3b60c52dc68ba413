#include "dispatchd/cluster/manager_watch.hpp"

#include <algorithm>

#include "dispatchd/co/select.hpp"
#include "dispatchd/log.hpp"
#include "wait.hpp"

namespace dispatchd::cluster {

namespace {

namespace api = ::docker::swarmkit::v1;

bool same_managers(const store::ManagerList& a, const store::ManagerList& b) {
  return std::equal(a.begin(), a.end(), b.begin(), b.end(), [](const auto& x, const auto& y) {
    return x.peer().node_id() == y.peer().node_id() && x.peer().addr() == y.peer().addr() &&
           x.weight() == y.weight();
  });
}

Membership build_membership(const std::map<std::string, mvccpb::KeyValue>& kvs,
                            const std::string& leader_key, const std::string& managers_prefix,
                            std::int64_t revision) {
  Membership m;
  m.revision = revision;
  for (const auto& [key, kv] : kvs) {
    if (key == leader_key) {
      m.leader.node_id = kv.value();
      m.leader.create_revision = kv.create_revision();
      continue;
    }
    if (!key.starts_with(managers_prefix)) continue;
    api::WeightedPeer peer;
    if (!peer.ParseFromString(kv.value())) {
      log::warn("cluster: {} does not hold a WeightedPeer; ignored", key);
      continue;
    }
    // The key names the manager; a value saying otherwise is not trusted over it.
    peer.mutable_peer()->set_node_id(key.substr(managers_prefix.size()));
    m.managers.push_back(std::move(peer));
  }
  std::sort(m.managers.begin(), m.managers.end(),
            [](const auto& a, const auto& b) { return a.peer().node_id() < b.peer().node_id(); });
  for (const auto& p : m.managers)
    if (p.peer().node_id() == m.leader.node_id) m.leader.addr = p.peer().addr();
  return m;
}

}  // namespace

asio::awaitable<etcd::Result<Membership>> read_membership(etcd::Client& client,
                                                          std::string_view prefix) {
  auto leader = leader_key(prefix);
  auto managers = managers_prefix(prefix);
  auto r = co_await client.range(leader, membership_range_end(prefix));
  if (!r) co_return std::unexpected(r.error());
  std::map<std::string, mvccpb::KeyValue> kvs;
  for (const auto& kv : r->kvs())
    kvs.emplace(kv.key(), kv);
  co_return build_membership(kvs, leader, managers, r->header().revision());
}

ManagerWatch::ManagerWatch(etcd::Client& client, ManagerWatchOptions options)
    : client_(client), options_(std::move(options)) {
  options_.prefix = normalize_prefix(options_.prefix);
  leader_key_ = leader_key(options_.prefix);
  managers_prefix_ = cluster::managers_prefix(options_.prefix);
  range_end_ = membership_range_end(options_.prefix);
}

ManagerWatch::~ManagerWatch() = default;

bool ManagerWatch::relevant(const std::string& key) const {
  return key == leader_key_ || key.starts_with(managers_prefix_);
}

Membership ManagerWatch::build(std::int64_t revision) const {
  return build_membership(kvs_, leader_key_, managers_prefix_, revision);
}

void ManagerWatch::report_if_changed(std::int64_t revision) {
  Membership next = build(revision);
  bool changed = changes_ == 0 || !same_managers(next.managers, current_.managers) ||
                 next.leader != current_.leader;
  current_ = std::move(next);
  if (!changed) return;
  ++changes_;
  log::debug("cluster: {} managers, leader {} (etcd revision {})", current_.managers.size(),
             current_.leader.node_id.empty() ? "none" : current_.leader.node_id, revision);
  if (options_.on_change) options_.on_change(current_);
  auto fired = std::exchange(changed_, std::make_shared<co::Event>());
  fired->set();
}

asio::awaitable<Status> ManagerWatch::run() {
  auto& wheel = client_.wheel();
  co::Event never;
  bool first = true;
  while (!stop_.is_set()) {
    auto r = co_await client_.range(leader_key_, range_end_);
    if (!r) {
      log::debug("cluster: reading the managers: {}", r.error().message());
      co_await detail::pause(wheel, options_.retry, stop_, never);
      continue;
    }
    kvs_.clear();
    for (const auto& kv : r->kvs())
      if (relevant(kv.key())) kvs_.emplace(kv.key(), kv);
    if (!first) ++resyncs_;
    first = false;
    std::int64_t revision = r->header().revision();
    report_if_changed(revision);

    // Built before the co_await: GCC 12 mishandles braced temporaries in one.
    etcd::WatchOptions after_read{
        .key = leader_key_, .range_end = range_end_, .start_revision = revision + 1};
    auto watcher = co_await client_.watch(std::move(after_read));
    if (!watcher) {
      log::debug("cluster: watching the managers: {}", watcher.error().message());
      co_await detail::pause(wheel, options_.retry, stop_, never);
      continue;
    }
    for (;;) {
      auto resp = co_await detail::next_unless(wheel, **watcher, stop_, never);
      if (!resp) {
        if (resp.error().code() == StatusCode::out_of_range) {
          log::info("cluster: manager watch compacted ({}); reading again", resp.error().message());
        } else if (!stop_.is_set()) {
          log::debug("cluster: manager watch ended ({}); reading again", resp.error().message());
        }
        break;
      }
      for (const auto& e : resp->events()) {
        if (!relevant(e.kv().key())) continue;
        if (e.type() == mvccpb::Event::DELETE) {
          kvs_.erase(e.kv().key());
        } else {
          kvs_[e.kv().key()] = e.kv();
        }
      }
      report_if_changed(resp->header().revision());
    }
  }
  changed_->set();
  co_return Status::ok();
}

void ManagerWatch::stop() {
  stop_.set();
}

asio::awaitable<bool> ManagerWatch::wait_change(std::uint64_t seen, co::Event* cancel) {
  co::Event never;
  co::Event& cancelled = cancel != nullptr ? *cancel : never;
  for (;;) {
    if (changes_ > seen) co_return true;
    if (stop_.is_set() || cancelled.is_set()) co_return false;
    auto changed = changed_;
    co::Wakeup wakeup;
    co::Event::Listener lc(*changed, wakeup), ls(stop_, wakeup), lx(cancelled, wakeup);
    co_await co::select(wakeup, lc, ls, lx);
  }
}

}  // namespace dispatchd::cluster
