// The store's key layout in etcd, the consistent load, and the seeding of an empty prefix.

#include "dispatchd/cluster/etcd_store.hpp"

#include <charconv>
#include <utility>

#include "dispatchd/cluster/manager_keys.hpp"

namespace dispatchd::cluster {

namespace {

namespace api = store::api;
namespace pb = etcd::pb;
using store::ObjectType;

constexpr std::string_view kObjects = "o/";
constexpr std::string_view kIndex = "index";
constexpr std::string_view kPartial = "partial";
// Per-operation framing in a request, beyond its key and value.
constexpr std::size_t kOpOverhead = 16;

std::optional<ObjectType> type_named(std::string_view name) {
  for (auto t : {ObjectType::node, ObjectType::task, ObjectType::secret, ObjectType::config,
                 ObjectType::volume, ObjectType::cluster}) {
    if (name == store::object_type_name(t)) return t;
  }
  return std::nullopt;
}

Status data_loss(std::string_view key, const std::string& what) {
  return Status(StatusCode::data_loss, "etcd key " + std::string(key) + ": " + what);
}

template <class T>
Result<std::shared_ptr<const void>> parse_as(std::string_view id, std::string_view value,
                                             std::string_view key) {
  auto obj = std::make_shared<T>();
  if (!obj->ParseFromArray(value.data(), static_cast<int>(value.size()))) {
    return std::unexpected(data_loss(key, "the value is not a readable object"));
  }
  if (obj->id() != id) {
    return std::unexpected(data_loss(key, "the object has ID \"" + obj->id() + "\""));
  }
  return std::shared_ptr<const void>(std::move(obj));
}

Status not_leader() {
  return Status(StatusCode::aborted, "no longer the leader");
}

}  // namespace

std::string object_key(std::string_view prefix, ObjectType type, std::string_view id) {
  std::string k;
  k.reserve(prefix.size() + 12 + id.size());
  k.append(prefix).append(kObjects).append(store::object_type_name(type)).append("/").append(id);
  return k;
}

std::string index_key(std::string_view prefix) {
  return std::string(prefix) + std::string(kIndex);
}

std::string partial_key(std::string_view prefix) {
  return std::string(prefix) + std::string(kPartial);
}

std::string encode_object(ObjectType type, const void* o) {
  std::string out;
  switch (type) {
    case ObjectType::node:
      static_cast<const api::Node*>(o)->SerializeToString(&out);
      break;
    case ObjectType::task:
      static_cast<const api::Task*>(o)->SerializeToString(&out);
      break;
    case ObjectType::secret:
      static_cast<const api::Secret*>(o)->SerializeToString(&out);
      break;
    case ObjectType::config:
      static_cast<const api::Config*>(o)->SerializeToString(&out);
      break;
    case ObjectType::volume:
      static_cast<const api::Volume*>(o)->SerializeToString(&out);
      break;
    case ObjectType::cluster:
      static_cast<const api::Cluster*>(o)->SerializeToString(&out);
      break;
    case ObjectType::managers:
      break;
  }
  return out;
}

Result<StoredKey> parse_key(std::string_view prefix, std::string_view key) {
  StoredKey k;
  std::string_view rel = key.substr(std::min(prefix.size(), key.size()));
  if (rel == kIndex) {
    k.kind = StoredKey::index;
    return k;
  }
  if (rel == kPartial) {
    k.kind = StoredKey::partial;
    return k;
  }
  if (!rel.starts_with(kObjects)) return k;
  rel.remove_prefix(kObjects.size());
  auto slash = rel.find('/');
  auto type = slash == std::string_view::npos ? std::nullopt : type_named(rel.substr(0, slash));
  if (!type || slash + 1 == rel.size()) {
    return std::unexpected(data_loss(key, "not a key of a known object type"));
  }
  k.kind = StoredKey::object;
  k.type = *type;
  k.id = std::string(rel.substr(slash + 1));
  return k;
}

Result<std::shared_ptr<const void>> decode_object(ObjectType type, std::string_view id,
                                                  std::string_view value, std::string_view key) {
  switch (type) {
    case ObjectType::node:
      return parse_as<api::Node>(id, value, key);
    case ObjectType::task:
      return parse_as<api::Task>(id, value, key);
    case ObjectType::secret:
      return parse_as<api::Secret>(id, value, key);
    case ObjectType::config:
      return parse_as<api::Config>(id, value, key);
    case ObjectType::volume:
      return parse_as<api::Volume>(id, value, key);
    case ObjectType::cluster:
      return parse_as<api::Cluster>(id, value, key);
    case ObjectType::managers:
      break;
  }
  return std::unexpected(data_loss(key, "the manager list is not stored as an object"));
}

Result<std::uint64_t> decode_index(std::string_view value, std::string_view key) {
  std::uint64_t v = 0;
  auto [end, ec] = std::from_chars(value.data(), value.data() + value.size(), v);
  if (value.empty() || ec != std::errc() || end != value.data() + value.size()) {
    return std::unexpected(data_loss(key, "the store index is not a decimal number"));
  }
  return v;
}

namespace {

// One paged read of the prefix, at `revision` (0: the newest). `partial_created`: the
// create_revision of `P partial`, 0 when absent.
struct Read {
  Loaded loaded;
  std::int64_t partial_created = 0;
};

asio::awaitable<Result<Read>> read_prefix(etcd::Client& client, const std::string& prefix,
                                          std::int64_t page_size, std::int64_t revision) {
  Read read;
  Loaded& out = read.loaded;
  out.snapshot.set_format(1);
  auto& snap = out.snapshot;
  const std::string end = etcd::prefix_end(prefix);
  pb::RangeRequest req;
  req.set_key(prefix);
  req.set_range_end(end);
  req.set_limit(page_size);
  if (revision != 0) {
    req.set_revision(revision);
    out.revision = revision;
  }
  for (;;) {
    auto r = co_await client.range(req);
    if (!r) co_return std::unexpected(r.error());
    // Every page is read at the revision of the first, so the whole is one consistent state.
    if (out.revision == 0) {
      out.revision = r->header().revision();
      req.set_revision(out.revision);
    }
    for (const auto& kv : r->kvs()) {
      auto k = parse_key(prefix, kv.key());
      if (!k) co_return std::unexpected(k.error());
      if (k->kind == StoredKey::index) {
        auto idx = decode_index(kv.value(), kv.key());
        if (!idx) co_return std::unexpected(idx.error());
        snap.set_index(*idx);
        out.empty = false;
        continue;
      }
      if (k->kind == StoredKey::partial) {
        read.partial_created = kv.create_revision();
        continue;
      }
      if (k->kind != StoredKey::object) continue;
      auto obj = decode_object(k->type, k->id, kv.value(), kv.key());
      if (!obj) co_return std::unexpected(obj.error());
      const void* o = obj->get();
      switch (k->type) {
        case ObjectType::node:
          *snap.add_nodes() = *static_cast<const api::Node*>(o);
          break;
        case ObjectType::task:
          *snap.add_tasks() = *static_cast<const api::Task*>(o);
          break;
        case ObjectType::secret:
          *snap.add_secrets() = *static_cast<const api::Secret*>(o);
          break;
        case ObjectType::config:
          *snap.add_configs() = *static_cast<const api::Config*>(o);
          break;
        case ObjectType::volume:
          *snap.add_volumes() = *static_cast<const api::Volume*>(o);
          break;
        case ObjectType::cluster:
          if (snap.has_cluster()) {
            co_return std::unexpected(data_loss(kv.key(), "a second cluster object"));
          }
          *snap.mutable_cluster() = *static_cast<const api::Cluster*>(o);
          break;
        case ObjectType::managers:
          break;
      }
    }
    if (!r->more() || r->kvs_size() == 0) break;
    // Keys come in order: the next page starts just after the last key of this one.
    req.set_key(r->kvs(r->kvs_size() - 1).key() + std::string(1, '\0'));
  }
  co_return read;
}

}  // namespace

asio::awaitable<Result<Loaded>> load(etcd::Client& client, std::string prefix,
                                     std::int64_t page_size) {
  auto now = co_await read_prefix(client, prefix, page_size, 0);
  if (!now) co_return std::unexpected(now.error());
  if (now->partial_created == 0) co_return std::move(now->loaded);
  // A write cut into several transactions is unfinished: read the store as it was before its
  // first part. The replica started from there replays the parts and publishes them at once.
  const std::int64_t whole = now->partial_created - 1;
  auto before = co_await read_prefix(client, prefix, page_size, whole);
  if (!before) {
    const Status& e = before.error();
    if (e.code() != StatusCode::out_of_range) co_return std::unexpected(e);
    co_return std::unexpected(
        Status(StatusCode::out_of_range,
               "the store in etcd has an unfinished write begun at revision " +
                   std::to_string(now->partial_created) + " and etcd compacted revision " +
                   std::to_string(whole) +
                   ", the last one before it: try again once the leader has written it back (" +
                   e.message() + ")"));
  }
  before->loaded.unfinished = true;
  co_return std::move(before->loaded);
}

pb::RequestOp to_op(KeyWrite w) {
  if (w.value) return etcd::op_put(std::move(w.key), std::move(*w.value));
  return etcd::op_delete(std::move(w.key));
}

std::size_t write_bytes(const KeyWrite& w) {
  return w.key.size() + (w.value ? w.value->size() : 0) + kOpOverhead;
}

std::vector<std::vector<KeyWrite>> chunk_writes(std::vector<KeyWrite> writes,
                                                const TxnLimits& limits) {
  // Two places in every chunk are kept for the bookkeeping keys (add_bookkeeping); which chunk
  // is first and last (and whether they are one) is known only at the end.
  const std::size_t max_ops = limits.max_ops > 2 ? limits.max_ops - 2 : 1;
  std::vector<std::vector<KeyWrite>> chunks(1);
  std::size_t bytes = 0;
  for (auto& w : writes) {
    const std::size_t b = write_bytes(w);
    auto& cur = chunks.back();
    if (!cur.empty() && (cur.size() >= max_ops || bytes + b > limits.max_bytes)) {
      chunks.emplace_back();
      bytes = 0;
    }
    chunks.back().push_back(std::move(w));
    bytes += b;
  }
  return chunks;
}

void add_bookkeeping(std::vector<std::vector<KeyWrite>>& chunks, std::string_view prefix,
                     std::uint64_t index, bool clear_partial) {
  if (chunks.empty()) chunks.emplace_back();
  const bool cut = chunks.size() > 1;
  if (cut) chunks.front().push_back({partial_key(prefix), std::to_string(index)});
  auto& last = chunks.back();
  last.push_back({index_key(prefix), std::to_string(index)});
  if (cut || clear_partial) last.push_back({partial_key(prefix), std::nullopt});
}

asio::awaitable<Status> write_all(etcd::Client& client, std::string prefix,
                                  const store::Capture& capture, const Fence& fence,
                                  TxnLimits limits) {
  const std::string objects = prefix + std::string(kObjects);
  const std::string index = index_key(prefix);
  {
    // Clear leftovers of a seed that never finished, but only while the prefix holds no store.
    // (A separate transaction: etcd refuses a delete range and puts inside it in one.)
    // (No braced lists in a coroutine: GCC 12 miscompiles initializer_lists in coroutine frames.)
    std::vector<pb::Compare> cmp;
    cmp.push_back(fence_compare(fence));
    cmp.push_back(etcd::compare_version(index, pb::Compare::EQUAL, 0));
    std::vector<pb::RequestOp> ops;
    ops.push_back(etcd::op_delete(objects, etcd::prefix_end(objects)));
    std::vector<pb::RequestOp> otherwise;
    otherwise.push_back(etcd::op_range(fence.key));
    auto r = co_await client.txn(std::move(cmp), std::move(ops), std::move(otherwise));
    if (!r) co_return r.error();
    if (!r->succeeded()) {
      const auto& kvs = r->responses(0).response_range().kvs();
      if (kvs.empty() || kvs[0].create_revision() != fence.create_revision) co_return not_leader();
      co_return Status(StatusCode::failed_precondition,
                       "etcd prefix " + prefix + " already holds a store");
    }
  }
  std::vector<KeyWrite> writes;
  auto add = [&](ObjectType type, const auto& items) {
    for (const auto& x : items)
      writes.push_back({object_key(prefix, type, x->id()), encode_object(type, x.get())});
  };
  if (capture.cluster) {
    writes.push_back({object_key(prefix, ObjectType::cluster, capture.cluster->id()),
                      encode_object(ObjectType::cluster, capture.cluster.get())});
  }
  add(ObjectType::node, capture.nodes);
  add(ObjectType::task, capture.tasks);
  add(ObjectType::secret, capture.secrets);
  add(ObjectType::config, capture.configs);
  add(ObjectType::volume, capture.volumes);
  auto chunks = chunk_writes(std::move(writes), limits);
  // An unfinished seed may have left `P partial`: clear it with the last part.
  add_bookkeeping(chunks, prefix, capture.index, /*clear_partial=*/true);
  for (std::size_t i = 0; i < chunks.size(); ++i) {
    std::vector<pb::RequestOp> ops;
    ops.reserve(chunks[i].size());
    for (auto& w : chunks[i])
      ops.push_back(to_op(std::move(w)));
    std::vector<pb::Compare> cmp;
    cmp.push_back(fence_compare(fence));
    auto r = co_await client.txn(std::move(cmp), std::move(ops));
    if (!r) co_return r.error();
    if (!r->succeeded()) co_return not_leader();
  }
  co_return Status::ok();
}

}  // namespace dispatchd::cluster
