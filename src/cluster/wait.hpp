#pragma once
// Waits of the cluster layer that end early when one of two events is set (a caller's cancel, a
// member gone, a watch stopped): a pause between retries, and the next response of an etcd watch.
// Internal to src/cluster.

#include <asio/awaitable.hpp>

#include "dispatchd/co/event.hpp"
#include "dispatchd/co/timer_wheel.hpp"
#include "dispatchd/etcd/client.hpp"

namespace dispatchd::cluster::detail {

// Returns after `d`, or as soon as `a` or `b` is set.
asio::awaitable<void> pause(co::TimerWheel& wheel, co::TimerWheel::Clock::duration d, co::Event& a,
                            co::Event& b);

// Watcher::next(); when `a` or `b` is set first, the watch is cancelled and the result is
// CANCELLED. A response that arrived first is returned even if an event was set meanwhile, so the
// caller checks its events after every call.
asio::awaitable<etcd::Result<etcd::pb::WatchResponse>> next_unless(co::TimerWheel& wheel,
                                                                   etcd::Watcher& watcher,
                                                                   co::Event& a, co::Event& b);

}  // namespace dispatchd::cluster::detail
