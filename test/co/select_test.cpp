#include "dispatchd/co/select.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <asio/co_spawn.hpp>
#include <asio/io_context.hpp>
#include <asio/post.hpp>
#include <asio/use_awaitable.hpp>
#include <bit>
#include <chrono>
#include <cstddef>
#include <exception>
#include <numeric>
#include <random>
#include <vector>

#include "dispatchd/co/event.hpp"
#include "dispatchd/co/queue.hpp"
#include "dispatchd/co/watch.hpp"

// Queue<T> is the canonical select source and has no test file of its own; its tests live here.

#include "coroutine_runner.hpp"

namespace dispatchd::co {
namespace {

using namespace std::chrono_literals;

using testing::Outcome;
using testing::record;

using testing::iota;

// ---------------------------------------------------------------------------------------------
// Queue

TEST(QueueTest, PopsInFifoOrder) {
  Wakeup w;
  Queue<int> q(w, 16);
  EXPECT_FALSE(q.ready());
  for (int v = 0; v < 10; ++v)
    EXPECT_TRUE(q.push(v));
  EXPECT_TRUE(q.ready());
  EXPECT_EQ(q.size(), 10u);
  std::vector<int> got;
  while (!q.empty())
    got.push_back(q.pop());
  EXPECT_EQ(got, iota(0, 10));
  EXPECT_FALSE(q.ready());
}

TEST(QueueTest, PushPastTheLimitMarksOverflowed) {
  Wakeup w;
  Queue<int> q(w, 3);
  EXPECT_TRUE(q.push(1));
  EXPECT_TRUE(q.push(2));
  EXPECT_TRUE(q.push(3));
  EXPECT_FALSE(q.overflowed());

  EXPECT_FALSE(q.push(4));
  EXPECT_TRUE(q.overflowed());
  EXPECT_TRUE(q.ready());
  // Once overflowed it stays so: a later push neither succeeds nor clears the flag.
  EXPECT_FALSE(q.push(5));
  EXPECT_TRUE(q.overflowed());
  EXPECT_TRUE(q.ready());
}

TEST(QueueTest, CloseMakesItReady) {
  Wakeup w;
  Queue<int> q(w, 3);
  EXPECT_FALSE(q.ready());
  q.close();
  EXPECT_TRUE(q.closed());
  EXPECT_TRUE(q.ready());
  EXPECT_TRUE(q.empty());
  EXPECT_FALSE(q.push(1)) << "a closed queue must refuse pushes";
  EXPECT_TRUE(q.empty());
}

// Counts live objects, moved-from ones included: each one occupies queue storage.
struct Tracked {
  static inline int live = 0;
  int value = 0;
  explicit Tracked(int v) : value(v) { ++live; }
  Tracked(const Tracked& o) : value(o.value) { ++live; }
  Tracked(Tracked&& o) noexcept : value(o.value) { ++live; }
  Tracked& operator=(const Tracked&) = default;
  Tracked& operator=(Tracked&&) noexcept = default;
  ~Tracked() { --live; }
};

// Disabled: fails against queue.hpp as of this writing (see the co_test report). pop() only
// advances head_ and releases storage when the queue becomes empty, so a consumer that never
// quite catches up keeps every consumed slot: memory grows with the total number of pushes, not
// with `limit`.
TEST(QueueTest, StorageStaysBoundedWhenTheQueueNeverEmpties) {
  Wakeup w;
  {
    Queue<Tracked> q(w, 8);
    ASSERT_TRUE(q.push(Tracked(0)));
    for (int v = 1; v <= 10000; ++v) {
      ASSERT_TRUE(q.push(Tracked(v)));
      EXPECT_EQ(q.pop().value, v - 1);
      // One item is always left: the queue never becomes empty.
      ASSERT_LE(Tracked::live, 64) << "after " << v << " pushes";
    }
  }
  EXPECT_EQ(Tracked::live, 0);
}

TEST(QueueTest, OverflowAndCloseWakeTheConsumer) {
  asio::io_context io;
  Wakeup w;
  Queue<int> overflowing(w, 1);
  Queue<int> closing(w, 1);
  ASSERT_TRUE(overflowing.push(1));
  std::vector<ReadyMask> masks;
  Outcome outcome;
  asio::co_spawn(
      io,
      [&]() -> asio::awaitable<void> {
        overflowing.pop();
        co_await w.async_park();
        masks.push_back(ready_mask(overflowing, closing));
        co_await w.async_park();
        masks.push_back(ready_mask(overflowing, closing));
      },
      record(outcome));
  io.poll();
  ASSERT_TRUE(w.parked());
  ASSERT_TRUE(overflowing.push(2));  // the consumer has not run yet
  EXPECT_FALSE(overflowing.push(3));
  io.poll();
  ASSERT_TRUE(w.parked());
  closing.close();
  testing::run_to_completion(io, 30s);
  EXPECT_TRUE(outcome.done);
  EXPECT_EQ(masks, (std::vector<ReadyMask>{0b01, 0b11}));
}

// ---------------------------------------------------------------------------------------------
// select

TEST(SelectTest, PickedReadsOneBit) {
  static_assert(picked(0b101, 0));
  static_assert(!picked(0b101, 1));
  static_assert(picked(0b101, 2));
  static_assert(picked(ReadyMask{1} << 31, 31));
  EXPECT_EQ(ready_mask(), 0u);
}

TEST(SelectTest, ConsumesNothingFromAnySource) {
  asio::io_context io;
  Wakeup w;
  Queue<int> q1(w, 8);
  Queue<int> q2(w, 8);
  Watch<int> watch(8);
  Watch<int>::Subscription sub(watch, w);
  Event event;
  Event::Listener listener(event, w);

  q1.push(10);
  q2.push(20);
  q2.push(21);
  watch.publish(30);

  std::vector<ReadyMask> masks;
  std::vector<int> q2_after;
  int sub_after = -1;
  Outcome outcome;
  asio::co_spawn(
      io,
      [&]() -> asio::awaitable<void> {
        masks.push_back(co_await select(w, q1, q2, sub, listener));
        // Take from q1 only; the others must still be reported, with their data intact.
        q1.pop();
        masks.push_back(co_await select(w, q1, q2, sub, listener));
        // Selecting again without taking anything reports the same.
        masks.push_back(co_await select(w, q1, q2, sub, listener));
        while (!q2.empty())
          q2_after.push_back(q2.pop());
        sub_after = sub.next();
        // Nothing is ready now: this parks until the event is set.
        masks.push_back(co_await select(w, q1, q2, sub, listener));
      },
      record(outcome));
  io.poll();
  ASSERT_EQ(masks.size(), 3u);
  EXPECT_TRUE(w.parked());

  event.set();
  testing::run_to_completion(io, 30s);
  EXPECT_TRUE(outcome.done);
  EXPECT_FALSE(outcome.error);
  EXPECT_EQ(masks, (std::vector<ReadyMask>{0b0111, 0b0110, 0b0110, 0b1000}));
  EXPECT_EQ(q2_after, (std::vector<int>{20, 21}));
  EXPECT_EQ(sub_after, 30);
}

TEST(SelectTest, ReturnsWithoutParkingWhenASourceIsAlreadyReady) {
  asio::io_context io;
  Wakeup w;
  Queue<int> q1(w, 8);
  Queue<int> q2(w, 8);
  q2.push(1);
  ReadyMask mask = 0;
  bool parked_after = true;
  Outcome outcome;
  asio::co_spawn(
      io,
      [&]() -> asio::awaitable<void> {
        mask = co_await select(w, q1, q2);
        parked_after = w.parked();
      },
      record(outcome));
  // Nobody notifies: the select can only finish if it never parks.
  testing::run_to_completion(io, 30s);
  EXPECT_TRUE(outcome.done);
  EXPECT_FALSE(outcome.error);
  EXPECT_EQ(mask, 0b10u);
  EXPECT_FALSE(parked_after);
  EXPECT_EQ(q2.size(), 1u);
}

TEST(SelectTest, ParksUntilASourceBecomesReady) {
  asio::io_context io;
  Wakeup w;
  Queue<int> q1(w, 8);
  Queue<int> q2(w, 8);
  ReadyMask mask = 0;
  Outcome outcome;
  asio::co_spawn(
      io, [&]() -> asio::awaitable<void> { mask = co_await select(w, q1, q2); }, record(outcome));
  io.poll();
  EXPECT_FALSE(outcome.done);
  EXPECT_TRUE(w.parked());

  q2.push(5);
  testing::run_to_completion(io, 30s);
  EXPECT_TRUE(outcome.done);
  EXPECT_EQ(mask, 0b10u);
}

TEST(SelectTest, SpuriousWakeupParksAgain) {
  asio::io_context io;
  Wakeup w;
  Queue<int> q(w, 8);
  ReadyMask mask = 0;
  Outcome outcome;
  asio::co_spawn(
      io, [&]() -> asio::awaitable<void> { mask = co_await select(w, q); }, record(outcome));
  io.poll();
  ASSERT_TRUE(w.parked());

  w.notify();  // nothing became ready
  io.poll();
  EXPECT_FALSE(outcome.done) << "select returned although no source was ready";
  EXPECT_TRUE(w.parked());

  q.push(1);
  testing::run_to_completion(io, 30s);
  EXPECT_TRUE(outcome.done);
  EXPECT_EQ(mask, 0b1u);
}

// ---------------------------------------------------------------------------------------------
// Stress (docs/architecture.md, "The select rule"): every source made ready at once, many
// thousands of times; every event must arrive exactly once and in order per source.

constexpr int kRounds = 20000;

bool has_item(const Queue<int>& q) {
  return !q.empty();
}
int take(Queue<int>& q) {
  return q.pop();
}
bool has_item(const Watch<int>::Subscription& s) {
  return s.has_next();
}
int take(Watch<int>::Subscription& s) {
  return s.next();
}
std::size_t backlog(const Queue<int>& q) {
  return q.size();
}
std::size_t backlog(const Watch<int>::Subscription& s) {
  return s.pending();
}

struct Tally {
  std::array<std::vector<int>, 3> got;
  std::size_t selects = 0;
  std::size_t mask_mismatches = 0;  // select reported other than what was ready
  std::size_t several_ready = 0;    // select found more than one source ready
  std::size_t left_behind = 0;      // a turn that left a ready source untouched
  std::size_t yields = 0;           // the consumer ran the producer while not parked
  std::size_t empty_picks = 0;      // a source was reported but had nothing to take
  std::size_t max_backlog = 0;      // the most items one source held at a select
};

template <class Source>
asio::awaitable<void> consume(asio::io_context& io, Wakeup& w, std::array<Source*, 3> src,
                              const Event::Listener& stop, Tally& t) {
  std::minstd_rand rng(7);
  for (;;) {
    const ReadyMask m = co_await select(w, *src[0], *src[1], *src[2], stop);
    ++t.selects;
    if (m != ready_mask(*src[0], *src[1], *src[2], stop)) ++t.mask_mismatches;
    if (std::popcount(m & 0b111u) > 1) ++t.several_ready;
    for (unsigned i = 0; i < 3; ++i) {
      if (picked(m, i) && !has_item(*src[i])) ++t.empty_picks;
      t.max_backlog = std::max(t.max_backlog, backlog(*src[i]));
    }

    const unsigned start = static_cast<unsigned>(rng() % 3);
    switch (rng() % 4) {
      case 0:    // one item from one source
      case 1: {  // everything from one source
        const bool all = (rng() % 2) == 0;
        for (unsigned k = 0; k < 3; ++k) {
          const unsigned i = (start + k) % 3;
          if (!has_item(*src[i])) continue;
          do {
            t.got[i].push_back(take(*src[i]));
          } while (all && has_item(*src[i]));
          for (unsigned j = 0; j < 3; ++j) {
            if (j != i && has_item(*src[j])) {
              ++t.left_behind;
              break;
            }
          }
          break;
        }
        break;
      }
      case 2:  // everything from every source
        for (unsigned i = 0; i < 3; ++i) {
          while (has_item(*src[i]))
            t.got[i].push_back(take(*src[i]));
        }
        break;
      default:  // everything, then let the producer run while this coroutine is not parked
        for (unsigned i = 0; i < 3; ++i) {
          while (has_item(*src[i]))
            t.got[i].push_back(take(*src[i]));
        }
        ++t.yields;
        co_await asio::post(io, asio::use_awaitable);
        break;
    }

    if (picked(m, 3) && !has_item(*src[0]) && !has_item(*src[1]) && !has_item(*src[2])) break;
  }
}

// `push(v)` makes all three sources ready with v, without suspending in between. Mostly the
// producer yields at random; every fourth stretch of 500 rounds it never yields, so the sources
// also fill up deep while the consumer is not running.
template <class Push>
asio::awaitable<void> produce(asio::io_context& io, Push push, Event& stop) {
  std::minstd_rand rng(11);
  for (int v = 0; v < kRounds; ++v) {
    push(v);
    const bool burst = (v / 500) % 4 == 3;
    if (!burst && rng() % 3 == 0) co_await asio::post(io, asio::use_awaitable);
  }
  stop.set();
}

void expect_every_event_once_in_order(const Tally& t) {
  EXPECT_EQ(t.mask_mismatches, 0u);
  EXPECT_EQ(t.empty_picks, 0u);
  std::size_t total = 0;
  for (std::size_t i = 0; i < 3; ++i) {
    EXPECT_EQ(t.got[i], iota(0, kRounds)) << "source " << i;
    total += t.got[i].size();
  }
  EXPECT_EQ(total, 3u * kRounds);
  // The run exercised what it claims to.
  EXPECT_GT(t.several_ready, 0u);
  EXPECT_GT(t.left_behind, 0u);
  EXPECT_GT(t.yields, 0u);
  EXPECT_GE(t.max_backlog, 100u);
}

TEST(SelectTest, StressQueuesDeliverEveryValueExactlyOnceInOrder) {
  asio::io_context io;
  Wakeup w;
  Queue<int> q1(w, kRounds + 1);
  Queue<int> q2(w, kRounds + 1);
  Queue<int> q3(w, kRounds + 1);
  Event stop;
  Event::Listener stop_listener(stop, w);
  std::size_t refused = 0;
  Tally tally;
  Outcome consumer;
  Outcome producer;

  asio::co_spawn(io, consume<Queue<int>>(io, w, {&q1, &q2, &q3}, stop_listener, tally),
                 record(consumer));
  std::array<Queue<int>*, 3> qs{&q1, &q2, &q3};
  auto push = [&](int v) {
    // Rotate which source is pushed first, so each is the one whose push notifies.
    for (int k = 0; k < 3; ++k) {
      if (!qs[static_cast<std::size_t>((v + k) % 3)]->push(v)) ++refused;
    }
  };
  asio::co_spawn(io, produce(io, push, stop), record(producer));

  testing::run_to_completion(io, 30s);
  ASSERT_TRUE(consumer.done);
  ASSERT_TRUE(producer.done);
  EXPECT_FALSE(consumer.error);
  EXPECT_FALSE(producer.error);
  EXPECT_EQ(refused, 0u);
  expect_every_event_once_in_order(tally);
  EXPECT_TRUE(q1.empty() && q2.empty() && q3.empty());
}

TEST(SelectTest, StressWatchSubscriptionsDeliverEveryEventExactlyOnceInOrder) {
  asio::io_context io;
  Wakeup w;
  Watch<int> w1(kRounds + 1);
  Watch<int> w2(kRounds + 1);
  Watch<int> w3(kRounds + 1);
  Watch<int>::Subscription s1(w1, w);
  Watch<int>::Subscription s2(w2, w);
  Watch<int>::Subscription s3(w3, w);
  Event stop;
  Event::Listener stop_listener(stop, w);
  Tally tally;
  Outcome consumer;
  Outcome producer;

  asio::co_spawn(io,
                 consume<Watch<int>::Subscription>(io, w, {&s1, &s2, &s3}, stop_listener, tally),
                 record(consumer));
  std::array<Watch<int>*, 3> watches{&w1, &w2, &w3};
  auto publish = [&](int v) {
    for (int k = 0; k < 3; ++k)
      watches[static_cast<std::size_t>((v + k) % 3)]->publish(v);
  };
  asio::co_spawn(io, produce(io, publish, stop), record(producer));

  testing::run_to_completion(io, 30s);
  ASSERT_TRUE(consumer.done);
  ASSERT_TRUE(producer.done);
  EXPECT_FALSE(consumer.error);
  EXPECT_FALSE(producer.error);
  expect_every_event_once_in_order(tally);
  for (const auto* watch : watches)
    EXPECT_EQ(watch->overflow_count(), 0u);
  EXPECT_FALSE(s1.has_next() || s2.has_next() || s3.has_next());
}

}  // namespace
}  // namespace dispatchd::co
