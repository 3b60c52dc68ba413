#pragma once
// select: wait until at least one source is ready and report which, consuming nothing.
//
// A source is anything with `bool ready() const` whose producer notifies the Wakeup passed here
// when it becomes ready (Event::Listener, Watch<T>::Subscription, Queue<T>, ...). select scans
// the sources, returns a bit mask of the ready ones if any, and otherwise parks on the Wakeup and
// scans again. Nothing is taken from any source, picked or not: the caller drains what it wants
// and the rest stays where it was (docs/architecture.md, "The select rule").
//
// Why not race the sources' own async receives: when two complete in the same turn, the loser's
// value is destroyed with its operation (asio 1.22's `||` does exactly that). Here no parked
// operation ever holds data, so there is nothing to lose. Two rules for callers: a source must
// stay ready() until the caller has taken what made it ready (level, not edge), and the caller
// re-checks its sources before every park (select does), so a notify() that arrives while the
// caller is busy is not needed: the next scan sees the state it announced.

#include <asio/awaitable.hpp>
#include <cstdint>

#include "dispatchd/co/wakeup.hpp"

namespace dispatchd::co {

using ReadyMask = std::uint32_t;

template <class... Sources>
ReadyMask ready_mask(const Sources&... sources) {
  static_assert(sizeof...(Sources) <= 32);
  ReadyMask mask = 0;
  unsigned i = 0;
  ((mask |= (sources.ready() ? ReadyMask{1} << i : 0), ++i), ...);
  return mask;
}

template <class... Sources>
asio::awaitable<ReadyMask> select(Wakeup& wakeup, const Sources&... sources) {
  for (;;) {
    if (ReadyMask m = ready_mask(sources...)) co_return m;
    co_await wakeup.async_park();
  }
}

constexpr bool picked(ReadyMask m, unsigned index) {
  return (m >> index) & 1u;
}

}  // namespace dispatchd::co
