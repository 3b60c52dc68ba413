#pragma once
// The store in etcd (issue 16; the key layout is docs/architecture.md, "The store in etcd"):
// under a prefix P (ending in '/'), one key per object `P o/<type>/<id>` whose value is the
// object's protobuf serialization as the leader's store stamped it, and `P index`, the decimal
// store index of the last commit written. The manager list is not stored here (each manager
// derives it from `P managers/`).
//
// A write too large for one etcd transaction (etcd's --max-txn-ops and request size) goes as
// several, and `P partial` exists from the first of them to the last: the last writes `P index`
// and deletes `P partial`. Readers take such a write as one: load() reads the store as it was
// just before `P partial` was created, and a Replica publishes nothing until `P index` is
// written. A new leader writes back what a dead one left half-written (EtcdJournal::rewrite).
//
// load() reads it all at one revision (a follower's starting point, or a new leader's); the
// writes come from write_all() (seeding an empty prefix) and EtcdJournal (every commit after).

#include <asio/awaitable.hpp>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "dispatchd/cluster/fence.hpp"
#include "dispatchd/etcd/client.hpp"
#include "dispatchd/store/store.hpp"
#include "state.pb.h"

namespace dispatchd::cluster {

template <class T>
using Result = std::expected<T, Status>;

// Keys.
std::string object_key(std::string_view prefix, store::ObjectType type, std::string_view id);
std::string index_key(std::string_view prefix);
std::string partial_key(std::string_view prefix);
// The serialization of a store object (`object` points to the api type `type` names).
std::string encode_object(store::ObjectType type, const void* object);

// What a key under the prefix holds.
struct StoredKey {
  enum Kind : std::uint8_t { object, index, partial, other } kind = other;
  store::ObjectType type = store::ObjectType::node;
  std::string id;
};
// `key` must start with `prefix`. A key under `P o/` of an unknown type is DATA_LOSS.
Result<StoredKey> parse_key(std::string_view prefix, std::string_view key);
// Parses a stored object; DATA_LOSS naming `key` when it does not parse or has another ID.
Result<std::shared_ptr<const void>> decode_object(store::ObjectType type, std::string_view id,
                                                  std::string_view value, std::string_view key);
// Parses `P index`; DATA_LOSS naming `key` when it is not a decimal number.
Result<std::uint64_t> decode_index(std::string_view value, std::string_view key);

struct Loaded {
  // format 1, index from `P index`, every object (no managers). Meaningless when `empty`.
  dispatchd::state::v1::StoreSnapshot snapshot;
  // The etcd revision the whole range was read at: watch from revision + 1.
  std::int64_t revision = 0;
  // No `P index` yet: nothing stored, or a seed (write_all) that never finished, whose leftovers
  // the next write_all clears.
  bool empty = true;
  // `P partial` was there: a write cut into several transactions is unfinished (still being
  // written, or left half-written by a dead leader). The store was read as it was before it.
  bool unfinished = false;
};

// One consistent read of the prefix at one revision, paged by `page_size` keys. Corrupt values
// are DATA_LOSS with the key named; a revision compacted between pages is OUT_OF_RANGE (read
// again). When `P partial` exists the read is made again at the revision before its creation,
// so that no part of an unfinished write is in the snapshot; a Replica started from there sees
// its parts and publishes them together once the write is whole.
asio::awaitable<Result<Loaded>> load(etcd::Client& client, std::string prefix,
                                     std::int64_t page_size = 1000);

// How writes are cut into etcd transactions.
struct TxnLimits {
  // etcd's --max-txn-ops (default 128): operations per transaction, `P index` included.
  std::size_t max_ops = 128;
  // Keys plus values per transaction; etcd refuses requests above --max-request-bytes (1.5 MiB
  // by default). An object larger than this still goes, alone.
  std::size_t max_bytes = 1u << 20;
};

// Seeds an empty prefix with a store's whole content (the first leader of a new cluster, or the
// import of a --state-dir snapshot): first clears what an unfinished seed left under `P o/`,
// then writes the objects in transactions within `limits`, `P index` last (with `P partial`
// from the first to the last when there are several). Every transaction is
// fenced: ABORTED "no longer the leader" when the fence fails; FAILED_PRECONDITION when the
// prefix already holds a store (`P index` exists). Client errors are returned as they are.
asio::awaitable<Status> write_all(etcd::Client& client, std::string prefix,
                                  const store::Capture& capture, const Fence& fence,
                                  TxnLimits limits = {});

// One key's write within a batch: a put, or a delete when `value` is empty.
struct KeyWrite {
  std::string key;
  std::optional<std::string> value;
};
// Cuts `writes` into transactions within `limits`, leaving room in each for two more operations
// (`P partial` in the first, `P index` and the removal of `P partial` in the last). Always at
// least one (possibly empty) chunk.
std::vector<std::vector<KeyWrite>> chunk_writes(std::vector<KeyWrite> writes,
                                                const TxnLimits& limits);
// A write's approximate size in a request.
std::size_t write_bytes(const KeyWrite& w);
// The transaction operation for a write: a put, or a delete.
etcd::pb::RequestOp to_op(KeyWrite w);
// Adds the bookkeeping keys to chunks from chunk_writes: `P index` = `index` to the last one;
// when there are several, `P partial` (= `index`) to the first and its removal to the last; when
// there is one, the removal of `P partial` only if `clear_partial` (a new leader's first write,
// which may follow a dead leader's unfinished one).
void add_bookkeeping(std::vector<std::vector<KeyWrite>>& chunks, std::string_view prefix,
                     std::uint64_t index, bool clear_partial);

// An object named by type and ID (the keys of an unfinished write).
struct ObjectName {
  store::ObjectType type = store::ObjectType::node;
  std::string id;
};

}  // namespace dispatchd::cluster
