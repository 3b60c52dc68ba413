#include "dispatchd/co/event.hpp"

#include <gtest/gtest.h>

#include <array>
#include <asio/co_spawn.hpp>
#include <asio/detached.hpp>
#include <asio/io_context.hpp>
#include <asio/use_awaitable.hpp>
#include <chrono>
#include <exception>
#include <memory>
#include <vector>

#include "coroutine_runner.hpp"

namespace dispatchd::co {
namespace {

using namespace std::chrono_literals;

using testing::Outcome;
using testing::record;
using testing::run_to_completion;

// Parks twice on `w`, counting each resumption; the second park shows whether a later,
// unexpected notify arrives.
asio::awaitable<void> count_wakeups(Wakeup& w, int& wakeups) {
  co_await w.async_park();
  ++wakeups;
  co_await w.async_park();
  ++wakeups;
}

TEST(EventTest, SetWakesEveryListenerOnce) {
  asio::io_context io;
  Event event;
  std::array<Wakeup, 3> wakeups;
  std::array<std::unique_ptr<Event::Listener>, 3> listeners;
  std::array<int, 3> count{};
  std::array<Outcome, 3> outcome;
  for (std::size_t i = 0; i < 3; ++i) {
    listeners[i] = std::make_unique<Event::Listener>(event, wakeups[i]);
    asio::co_spawn(io, count_wakeups(wakeups[i], count[i]), record(outcome[i]));
  }
  io.poll();
  EXPECT_EQ(event.listener_count(), 3u);
  for (std::size_t i = 0; i < 3; ++i) {
    EXPECT_TRUE(wakeups[i].parked());
    EXPECT_FALSE(listeners[i]->ready());
  }

  event.set();
  io.poll();

  EXPECT_EQ(event.listener_count(), 0u);
  for (std::size_t i = 0; i < 3; ++i) {
    EXPECT_EQ(count[i], 1) << "listener " << i;
    EXPECT_TRUE(listeners[i]->ready());
    EXPECT_TRUE(wakeups[i].parked()) << "listener " << i << " woken more than once";
  }

  // Let the coroutines finish.
  for (auto& w : wakeups)
    w.notify();
  run_to_completion(io);
  for (const auto& o : outcome) {
    EXPECT_TRUE(o.done);
    EXPECT_FALSE(o.error);
  }
}

TEST(EventTest, SetIsIdempotent) {
  asio::io_context io;
  Event event;
  Wakeup wakeup;
  Event::Listener listener(event, wakeup);
  int count = 0;
  Outcome outcome;
  asio::co_spawn(io, count_wakeups(wakeup, count), record(outcome));
  io.poll();

  event.set();
  io.poll();
  ASSERT_EQ(count, 1);
  ASSERT_TRUE(wakeup.parked());

  event.set();
  io.poll();
  EXPECT_TRUE(event.is_set());
  EXPECT_TRUE(listener.ready());
  EXPECT_EQ(count, 1) << "a second set() notified the listener again";
  EXPECT_TRUE(wakeup.parked());

  wakeup.notify();
  run_to_completion(io);
  EXPECT_TRUE(outcome.done);
  EXPECT_FALSE(outcome.error);
}

TEST(EventTest, ListenerOnAlreadySetEventIsReady) {
  Event event;
  event.set();
  Wakeup wakeup;
  Event::Listener listener(event, wakeup);
  EXPECT_TRUE(listener.ready());
  EXPECT_TRUE(event.ready());
  // Nothing is left to notify it about, so it is not linked.
  EXPECT_EQ(event.listener_count(), 0u);
}

TEST(EventTest, ListenerIsNotReadyUntilSet) {
  Event event;
  Wakeup wakeup;
  Event::Listener listener(event, wakeup);
  EXPECT_FALSE(listener.ready());
  EXPECT_FALSE(event.is_set());
  event.set();
  EXPECT_TRUE(listener.ready());
  EXPECT_TRUE(event.is_set());
}

TEST(EventTest, WaitReturnsImmediatelyWhenSet) {
  asio::io_context io;
  Event event;
  event.set();
  Outcome outcome;
  asio::co_spawn(
      io, [&]() -> asio::awaitable<void> { co_await event.wait(); }, record(outcome));
  // Nobody will ever notify again: the wait can only finish if it does not park.
  run_to_completion(io);
  EXPECT_TRUE(outcome.done);
  EXPECT_FALSE(outcome.error);
  EXPECT_EQ(event.listener_count(), 0u);
}

TEST(EventTest, WaitResumesWhenSetLater) {
  asio::io_context io;
  Event event;
  std::array<Outcome, 2> outcome;
  for (auto& o : outcome) {
    asio::co_spawn(
        io, [&]() -> asio::awaitable<void> { co_await event.wait(); }, record(o));
  }
  io.poll();
  EXPECT_FALSE(outcome[0].done);
  EXPECT_FALSE(outcome[1].done);
  EXPECT_EQ(event.listener_count(), 2u);

  event.set();
  run_to_completion(io);
  for (const auto& o : outcome) {
    EXPECT_TRUE(o.done);
    EXPECT_FALSE(o.error);
  }
  EXPECT_EQ(event.listener_count(), 0u);
}

TEST(EventTest, DestroyingListenerUnlinksIt) {
  asio::io_context io;
  Event event;
  Wakeup kept_wakeup;
  Event::Listener kept(event, kept_wakeup);
  {
    Wakeup gone_wakeup;
    Event::Listener gone(event, gone_wakeup);
    EXPECT_EQ(event.listener_count(), 2u);
  }
  EXPECT_EQ(event.listener_count(), 1u);

  // set() must touch only the live listener (ASan reports it if it reached the destroyed one).
  int count = 0;
  Outcome outcome;
  asio::co_spawn(io, count_wakeups(kept_wakeup, count), record(outcome));
  io.poll();
  event.set();
  io.poll();
  EXPECT_EQ(count, 1);
  EXPECT_EQ(event.listener_count(), 0u);

  kept_wakeup.notify();
  run_to_completion(io);
  EXPECT_TRUE(outcome.done);
}

TEST(EventTest, ListenersMayOutliveTheirRegistrationAfterSet) {
  // A listener destroyed after set() (already unlinked by set) must not disturb the event.
  Event event;
  Wakeup a;
  Wakeup b;
  auto first = std::make_unique<Event::Listener>(event, a);
  Event::Listener second(event, b);
  event.set();
  first.reset();
  EXPECT_TRUE(second.ready());
  EXPECT_EQ(event.listener_count(), 0u);
}

// Parked coroutines take their blocks from a per-thread pool: a block given back is the next
// one taken, and the pool keeps at most kMaxFree (the rest go back to the heap).
TEST(ParkPoolTest, AGivenBlockIsTakenAgainAndThePoolIsBounded) {
  using Pool = detail::ParkPool<40>;
  void* a = Pool::take();
  Pool::give(a);
  EXPECT_EQ(Pool::kept(), 1u);
  void* b = Pool::take();
  EXPECT_EQ(a, b);
  EXPECT_EQ(Pool::kept(), 0u);
  std::vector<void*> many;
  for (std::size_t i = 0; i < Pool::kMaxFree + 10; ++i)
    many.push_back(Pool::take());
  many.push_back(b);
  for (void* p : many)
    Pool::give(p);
  EXPECT_EQ(Pool::kept(), Pool::kMaxFree);
}

// Many coroutines parked at once (a fan-out parks every session), each woken once, all resume;
// then they park again on pooled blocks and resume again.
TEST(ParkPoolTest, ManyParkedAtOnceAllResumeTwice) {
  asio::io_context io;
  constexpr int kN = 5000;
  std::vector<std::unique_ptr<Wakeup>> wakeups;
  std::vector<int> counts(kN, 0);
  for (int i = 0; i < kN; ++i) {
    wakeups.push_back(std::make_unique<Wakeup>());
    asio::co_spawn(io, count_wakeups(*wakeups.back(), counts[static_cast<std::size_t>(i)]),
                   asio::detached);
  }
  io.poll();
  for (auto& w : wakeups)
    ASSERT_TRUE(w->parked());
  for (int round = 1; round <= 2; ++round) {
    for (auto& w : wakeups)
      w->notify();
    io.poll();
    for (int c : counts)
      ASSERT_EQ(c, round);
  }
}

}  // namespace
}  // namespace dispatchd::co
