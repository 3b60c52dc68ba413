#include "dispatchd/dispatcher/cluster_fields.hpp"

#include <google/protobuf/util/time_util.h>

#include <optional>

#include "dispatchd/log.hpp"
#include "dispatcher.pb.h"

namespace dispatchd::dispatcher {

namespace api = ::docker::swarmkit::v1;
using google::protobuf::util::TimeUtil;

class ClusterFields::Follower final : public store::Watcher {
 public:
  explicit Follower(ClusterFields& f) : fields_(f) {}
  void on_event(const store::Event& e) override { fields_.on_changed(e); }

 private:
  ClusterFields& fields_;
};

namespace {
// The cluster's heartbeat period, if it sets a positive one.
std::optional<std::chrono::nanoseconds> period_of(const api::Cluster& c) {
  if (!c.spec().dispatcher().has_heartbeat_period()) return std::nullopt;
  std::chrono::nanoseconds d(
      TimeUtil::DurationToNanoseconds(c.spec().dispatcher().heartbeat_period()));
  if (d.count() <= 0) return std::nullopt;
  return d;
}
}  // namespace

ClusterFields::ClusterFields(store::Store& store, std::size_t watch_buffer,
                             std::function<void(std::chrono::nanoseconds)> on_period)
    : store_(store), on_period_(std::move(on_period)), updates_(watch_buffer) {}

ClusterFields::~ClusterFields() = default;

void ClusterFields::start() {
  auto c = store_.view([](const store::ReadTx& tx) { return tx.cluster(); });
  if (auto d = c ? period_of(*c) : std::nullopt) {
    period_ = *d;
    on_period_(*d);
  }
  rebuild();
  cluster_follower_ = std::make_unique<Follower>(*this);
  store_.watch(*cluster_follower_, {store::ObjectType::cluster, ""});
  managers_follower_ = std::make_unique<Follower>(*this);
  store_.watch(*managers_follower_, {store::ObjectType::managers, ""});
}

void ClusterFields::stop() {
  cluster_follower_.reset();
  managers_follower_.reset();
  updates_.close();
}

void ClusterFields::rebuild() {
  api::SessionMessage m;
  store_.view([&](const store::ReadTx& tx) {
    for (const auto& p : tx.managers())
      *m.add_managers() = p;
    auto c = tx.cluster();
    for (const auto& k : c->network_bootstrap_keys())
      *m.add_network_bootstrap_keys() = k;
    m.set_rootca(c->root_ca().ca_cert());
    return 0;
  });
  current_.encoded = std::make_shared<const std::string>(m.SerializeAsString());
}

void ClusterFields::on_changed(const store::Event& e) {
  if (e.type == store::ObjectType::cluster) {
    if (auto d = period_of(e.as<api::Cluster>()); d && *d != period_) {
      log::info("heartbeat period changed to {} ms", d->count() / 1000000);
      period_ = *d;
      on_period_(*d);
    }
  }
  rebuild();
  updates_.publish(current_);
}

}  // namespace dispatchd::dispatcher
