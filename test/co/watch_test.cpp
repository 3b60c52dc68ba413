#include "dispatchd/co/watch.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <asio/co_spawn.hpp>
#include <asio/io_context.hpp>
#include <asio/post.hpp>
#include <asio/use_awaitable.hpp>
#include <chrono>
#include <exception>
#include <memory>
#include <numeric>
#include <string>
#include <vector>

#include "coroutine_runner.hpp"
#include "dispatchd/co/select.hpp"

namespace dispatchd::co {
namespace {

using namespace std::chrono_literals;

using testing::Outcome;
using testing::record;
using testing::run_to_completion;

std::vector<int> drain(Watch<int>::Subscription& s) {
  std::vector<int> out;
  while (s.has_next())
    out.push_back(s.next());
  return out;
}

using testing::iota;

TEST(WatchTest, SubscriberSeesOnlyEventsPublishedAfterSubscribing) {
  Watch<int> watch(16);
  // An earlier subscriber keeps 1 and 2 buffered; the late one must still not see them.
  Wakeup early_wakeup;
  Watch<int>::Subscription early(watch, early_wakeup);
  watch.publish(1);
  watch.publish(2);
  ASSERT_EQ(watch.buffered(), 2u);
  Wakeup wakeup;
  Watch<int>::Subscription sub(watch, wakeup);
  EXPECT_FALSE(sub.ready());
  EXPECT_EQ(sub.pending(), 0u);

  watch.publish(3);
  watch.publish(4);
  EXPECT_TRUE(sub.ready());
  EXPECT_EQ(sub.pending(), 2u);
  EXPECT_EQ(drain(sub), (std::vector<int>{3, 4}));
  EXPECT_FALSE(sub.ready());
  EXPECT_EQ(drain(early), (std::vector<int>{1, 2, 3, 4}));
}

TEST(WatchTest, PublishWakesTheSubscribersCoroutine) {
  asio::io_context io;
  Watch<int> watch(16);
  Wakeup wakeup;
  Watch<int>::Subscription sub(watch, wakeup);
  std::vector<int> got;
  Outcome outcome;
  asio::co_spawn(
      io,
      [&]() -> asio::awaitable<void> {
        co_await select(wakeup, sub);
        got = drain(sub);
      },
      record(outcome));
  io.poll();
  ASSERT_TRUE(wakeup.parked());

  watch.publish(7);
  run_to_completion(io);
  EXPECT_TRUE(outcome.done);
  EXPECT_FALSE(outcome.error);
  EXPECT_EQ(got, std::vector<int>{7});
}

// Each subscriber runs its own coroutine; the publisher interleaves with both.
TEST(WatchTest, TwoSubscribersEachGetEveryEventExactlyOnce) {
  constexpr int kEvents = 5000;
  asio::io_context io;
  Watch<int> watch(kEvents + 1);
  std::array<Wakeup, 2> wakeups;
  std::array<std::unique_ptr<Watch<int>::Subscription>, 2> subs;
  std::array<std::vector<int>, 2> got;
  std::array<Outcome, 3> outcome;

  for (std::size_t i = 0; i < 2; ++i) {
    subs[i] = std::make_unique<Watch<int>::Subscription>(watch, wakeups[i]);
    asio::co_spawn(
        io,
        [&, i]() -> asio::awaitable<void> {
          auto& sub = *subs[i];
          while (!sub.ended()) {
            co_await select(wakeups[i], sub);
            while (sub.has_next())
              got[i].push_back(sub.next());
          }
        },
        record(outcome[i]));
  }
  asio::co_spawn(
      io,
      [&]() -> asio::awaitable<void> {
        for (int v = 0; v < kEvents; ++v) {
          watch.publish(v);
          if (v % 7 == 0) co_await asio::post(io, asio::use_awaitable);
        }
        watch.close();
      },
      record(outcome[2]));

  run_to_completion(io);
  for (const auto& o : outcome) {
    EXPECT_TRUE(o.done);
    EXPECT_FALSE(o.error);
  }
  EXPECT_EQ(got[0], iota(0, kEvents));
  EXPECT_EQ(got[1], iota(0, kEvents));
  EXPECT_EQ(watch.overflow_count(), 0u);
}

TEST(WatchTest, OverflowClosesOnlyTheSlowSubscriber) {
  constexpr int kLimit = 4;
  Watch<int> watch(kLimit);
  Wakeup fast_wakeup;
  Wakeup slow_wakeup;
  Watch<int>::Subscription fast(watch, fast_wakeup);
  Watch<int>::Subscription slow(watch, slow_wakeup);
  std::vector<int> fast_got;

  // Exactly `limit` behind is still fine.
  for (int v = 0; v < kLimit; ++v) {
    watch.publish(v);
    fast_got.push_back(fast.next());
  }
  EXPECT_FALSE(slow.overflowed());
  EXPECT_EQ(slow.pending(), static_cast<std::uint64_t>(kLimit));
  EXPECT_EQ(watch.subscriber_count(), 2u);
  EXPECT_EQ(watch.overflow_count(), 0u);

  // One more and the slow subscriber is out.
  watch.publish(kLimit);
  // It no longer pins the buffer: only the event the fast subscriber has not read is kept.
  EXPECT_EQ(watch.buffered(), 1u);
  fast_got.push_back(fast.next());
  EXPECT_TRUE(slow.overflowed());
  EXPECT_TRUE(slow.ready()) << "an overflowed subscriber must be reported by select";
  EXPECT_FALSE(slow.has_next());
  EXPECT_FALSE(slow.ended());
  EXPECT_EQ(slow.pending(), 0u);
  EXPECT_EQ(watch.subscriber_count(), 1u);
  EXPECT_EQ(watch.overflow_count(), 1u);

  // The fast subscriber keeps receiving everything; the slow one stays out and is counted once.
  for (int v = kLimit + 1; v < 100; ++v) {
    watch.publish(v);
    fast_got.push_back(fast.next());
  }
  EXPECT_EQ(fast_got, iota(0, 100));
  EXPECT_FALSE(fast.overflowed());
  EXPECT_TRUE(slow.overflowed());
  EXPECT_FALSE(slow.has_next());
  EXPECT_EQ(watch.subscriber_count(), 1u);
  EXPECT_EQ(watch.overflow_count(), 1u);
  // The overflowed subscriber no longer pins the buffer: only the latest event is kept (it was
  // read after it was published; the next publish trims it).
  EXPECT_EQ(watch.buffered(), 1u);
}

TEST(WatchTest, OverflowWakesTheSlowSubscriber) {
  asio::io_context io;
  Watch<int> watch(2);
  Wakeup wakeup;
  Watch<int>::Subscription sub(watch, wakeup);
  watch.publish(1);
  watch.publish(2);
  ReadyMask mask = 0;
  bool overflowed_when_woken = false;
  Outcome outcome;
  // Parks without draining: simulates a consumer busy elsewhere whose wakeup fires on overflow.
  asio::co_spawn(
      io,
      [&]() -> asio::awaitable<void> {
        co_await wakeup.async_park();
        mask = ready_mask(sub);
        overflowed_when_woken = sub.overflowed();
      },
      record(outcome));
  io.poll();
  ASSERT_TRUE(wakeup.parked());

  watch.publish(3);
  run_to_completion(io);
  EXPECT_TRUE(outcome.done);
  EXPECT_TRUE(overflowed_when_woken);
  EXPECT_EQ(mask, 1u);
}

TEST(WatchTest, PublishingTrimsItemsEveryoneHasRead) {
  Watch<int> watch(64);
  Wakeup wa;
  Wakeup wb;
  Watch<int>::Subscription a(watch, wa);
  Watch<int>::Subscription b(watch, wb);

  for (int v = 0; v < 10; ++v)
    watch.publish(v);
  EXPECT_EQ(watch.buffered(), 10u);

  EXPECT_EQ(drain(a), iota(0, 10));
  for (int i = 0; i < 5; ++i)
    b.next();
  watch.publish(10);
  // b has not read 5..9 yet, and nobody has read 10.
  EXPECT_EQ(watch.buffered(), 6u);

  EXPECT_EQ(drain(a), std::vector<int>{10});
  EXPECT_EQ(drain(b), iota(5, 11));
  watch.publish(11);
  EXPECT_EQ(watch.buffered(), 1u);

  EXPECT_EQ(drain(a), std::vector<int>{11});
  EXPECT_EQ(drain(b), std::vector<int>{11});
  watch.publish(12);
  EXPECT_EQ(watch.buffered(), 1u);
}

TEST(WatchTest, PublishingWithoutSubscribersBuffersNothing) {
  Watch<int> watch(8);
  for (int v = 0; v < 100; ++v)
    watch.publish(v);
  EXPECT_EQ(watch.buffered(), 0u);
  EXPECT_EQ(watch.overflow_count(), 0u);
}

TEST(WatchTest, DestroyedSubscriptionLeavesTheWatch) {
  Watch<int> watch(8);
  Wakeup w;
  Watch<int>::Subscription kept(watch, w);
  {
    Wakeup gone_wakeup;
    Watch<int>::Subscription gone(watch, gone_wakeup);
    EXPECT_EQ(watch.subscriber_count(), 2u);
    watch.publish(1);
  }
  EXPECT_EQ(watch.subscriber_count(), 1u);
  // Publishing must not touch the destroyed subscriber (ASan would report it), nor count it as
  // an overflow.
  for (int v = 2; v < 20; ++v) {
    watch.publish(v);
    kept.next();
  }
  EXPECT_EQ(watch.overflow_count(), 0u);
}

TEST(WatchTest, CloseLetsSubscribersDrainThenEnd) {
  Watch<std::string> watch(8);
  Wakeup w;
  Watch<std::string>::Subscription sub(watch, w);
  watch.publish("a");
  watch.publish("b");
  watch.publish("c");
  EXPECT_EQ(sub.next(), "a");

  watch.close();
  EXPECT_EQ(watch.subscriber_count(), 0u);
  EXPECT_FALSE(sub.ended()) << "ended before the buffered events were drained";
  EXPECT_TRUE(sub.ready());
  ASSERT_TRUE(sub.has_next());
  EXPECT_EQ(sub.next(), "b");
  ASSERT_TRUE(sub.has_next());
  EXPECT_EQ(sub.next(), "c");
  EXPECT_FALSE(sub.has_next());
  EXPECT_TRUE(sub.ended());
  EXPECT_TRUE(sub.ready()) << "an ended subscription must be reported by select";
  EXPECT_FALSE(sub.overflowed());

  // Publishing after close is ignored.
  watch.publish("d");
  EXPECT_FALSE(sub.has_next());
  EXPECT_TRUE(sub.ended());
}

TEST(WatchTest, CloseWakesParkedSubscribers) {
  asio::io_context io;
  Watch<int> watch(8);
  Wakeup w;
  Watch<int>::Subscription sub(watch, w);
  std::vector<int> got;
  Outcome outcome;
  asio::co_spawn(
      io,
      [&]() -> asio::awaitable<void> {
        while (!sub.ended()) {
          co_await select(w, sub);
          while (sub.has_next())
            got.push_back(sub.next());
        }
      },
      record(outcome));
  io.poll();
  watch.publish(1);
  watch.publish(2);
  watch.close();
  run_to_completion(io);
  EXPECT_TRUE(outcome.done);
  EXPECT_FALSE(outcome.error);
  EXPECT_EQ(got, (std::vector<int>{1, 2}));
}

TEST(WatchTest, SubscribingToAClosedWatchEndsImmediately) {
  Watch<int> watch(8);
  watch.publish(1);
  watch.close();
  Wakeup w;
  Watch<int>::Subscription sub(watch, w);
  EXPECT_TRUE(sub.ended());
  EXPECT_TRUE(sub.ready());
  EXPECT_FALSE(sub.has_next());
  EXPECT_EQ(watch.subscriber_count(), 0u);
}

// A paced watch wakes `batch` subscribers per turn of the executor. What a woken subscriber
// posts (in the server: its stream's write) runs before the next batch is woken, while every
// subscriber can take the event from the moment it is published.
struct PacedRun {
  std::vector<std::string> log;  // "wN": subscriber N woke with the event; "pN": what N posted ran
  std::vector<std::vector<int>> got;
};

PacedRun run_fan_out(std::size_t subscribers, std::size_t batch, bool paced) {
  asio::io_context io;
  Watch<int> watch(16);
  if (paced) watch.pace(io.get_executor(), batch);
  std::vector<std::unique_ptr<Wakeup>> wakeups;
  std::vector<std::unique_ptr<Watch<int>::Subscription>> subs;
  std::vector<Outcome> outcome(subscribers);
  PacedRun run;
  run.got.resize(subscribers);
  for (std::size_t i = 0; i < subscribers; ++i) {
    wakeups.push_back(std::make_unique<Wakeup>());
    subs.push_back(std::make_unique<Watch<int>::Subscription>(watch, *wakeups[i]));
    asio::co_spawn(
        io,
        [&, i]() -> asio::awaitable<void> {
          co_await select(*wakeups[i], *subs[i]);
          run.got[i] = drain(*subs[i]);
          run.log.push_back("w" + std::to_string(i));
          asio::post(io, [&run, i] { run.log.push_back("p" + std::to_string(i)); });
        },
        record(outcome[i]));
  }
  io.poll();  // every coroutine parks
  watch.publish(7);
  // The event is in every subscriber's reach at once; only the waking is spread out.
  for (const auto& s : subs)
    EXPECT_TRUE(s->has_next());
  std::size_t woken = 0;
  for (const auto& w : wakeups)
    woken += w->parked() ? 0 : 1;
  EXPECT_EQ(woken, paced ? std::min(batch, subscribers) : subscribers);
  EXPECT_EQ(watch.waiting_to_wake(), paced ? subscribers - woken : 0u);
  run_to_completion(io);
  for (const auto& o : outcome) {
    EXPECT_TRUE(o.done);
    EXPECT_FALSE(o.error);
  }
  EXPECT_EQ(watch.waiting_to_wake(), 0u);
  return run;
}

std::ptrdiff_t position(const std::vector<std::string>& log, const std::string& entry) {
  auto it = std::find(log.begin(), log.end(), entry);
  EXPECT_NE(it, log.end()) << entry;
  return it - log.begin();
}

TEST(WatchTest, PacedWatchRunsWhatABatchPostedBeforeWakingTheNext) {
  auto run = run_fan_out(7, 3, true);
  for (const auto& got : run.got)
    EXPECT_EQ(got, std::vector<int>{7});
  // Batches {0,1,2}, {3,4,5}, {6}: each batch's posts run before the next batch wakes.
  for (int i : {0, 1, 2})
    EXPECT_LT(position(run.log, "p" + std::to_string(i)), position(run.log, "w3"));
  for (int i : {3, 4, 5})
    EXPECT_LT(position(run.log, "p" + std::to_string(i)), position(run.log, "w6"));
  // In subscription order.
  for (int i = 0; i + 1 < 7; ++i)
    EXPECT_LT(position(run.log, "w" + std::to_string(i)),
              position(run.log, "w" + std::to_string(i + 1)));
}

TEST(WatchTest, UnpacedWatchWakesEveryoneBeforeAnyPostRuns) {
  auto run = run_fan_out(7, 3, false);
  for (const auto& got : run.got)
    EXPECT_EQ(got, std::vector<int>{7});
  EXPECT_LT(position(run.log, "w6"), position(run.log, "p0"));
}

TEST(WatchTest, PacedWatchOutlivedByItsPostedTurnAndItsWaitingSubscribers) {
  asio::io_context io;
  std::vector<std::unique_ptr<Wakeup>> wakeups;
  std::vector<std::unique_ptr<Watch<int>::Subscription>> subs;
  {
    auto watch = std::make_unique<Watch<int>>(16);
    watch->pace(io.get_executor(), 1);
    for (int i = 0; i < 4; ++i) {
      wakeups.push_back(std::make_unique<Wakeup>());
      subs.push_back(std::make_unique<Watch<int>::Subscription>(*watch, *wakeups.back()));
    }
    watch->publish(1);
    EXPECT_EQ(watch->waiting_to_wake(), 3u);
    // A waiting subscriber leaves; a second event overflows nobody and keeps the order.
    subs[2].reset();
    EXPECT_EQ(watch->waiting_to_wake(), 2u);
    watch->publish(2);
    EXPECT_EQ(watch->subscriber_count(), 3u);
    EXPECT_EQ(drain(*subs[3]), (std::vector<int>{1, 2}));
    // The watch goes while its next turn is posted; its subscriptions outlive it unread.
  }
  run_to_completion(io);  // the posted turn finds the watch gone (ASan would see a use)
}

TEST(WatchTest, PacedWatchOverflowsASubscriberStillWaitingToWake) {
  asio::io_context io;
  Watch<int> watch(2);
  watch.pace(io.get_executor(), 1);
  Wakeup first_wakeup, slow_wakeup;
  Watch<int>::Subscription first(watch, first_wakeup), slow(watch, slow_wakeup);
  for (int v = 0; v < 3; ++v) {
    watch.publish(v);
    drain(first);
  }
  EXPECT_TRUE(slow.overflowed());
  EXPECT_FALSE(first.overflowed());
  EXPECT_EQ(watch.overflow_count(), 1u);
  EXPECT_EQ(watch.subscriber_count(), 1u);
  run_to_completion(io);
  EXPECT_EQ(watch.waiting_to_wake(), 0u);
}

}  // namespace
}  // namespace dispatchd::co
