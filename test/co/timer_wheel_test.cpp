#include "dispatchd/co/timer_wheel.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <asio/io_context.hpp>
#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <random>
#include <thread>
#include <utility>
#include <vector>

namespace dispatchd::co {
namespace {

using namespace std::chrono_literals;
using Clock = TimerWheel::Clock;

constexpr Clock::duration kTick = 1ms;

// An entry that records every expiry: when it happened (taken first thing), which deadline it
// was armed for, and what the wheel looked like from inside the callback.
class Probe final : public TimerWheel::Entry {
 public:
  struct Fire {
    Clock::time_point at;
    Clock::time_point deadline;
    bool armed_inside;
  };

  Probe() = default;
  explicit Probe(std::function<void(Probe&)> then) : then_(std::move(then)) {}

  void then(std::function<void(Probe&)> f) { then_ = std::move(f); }
  std::size_t fired() const { return fires.size(); }

  std::vector<Fire> fires;
  std::vector<const Probe*>* log = nullptr;

 private:
  void on_expire() override {
    const auto now = Clock::now();
    fires.push_back({now, deadline(), armed()});
    if (log) log->push_back(this);
    if (then_) then_(*this);
  }

  std::function<void(Probe&)> then_;
};

// The wheel's driving timer is the only work: a stopped io_context means nothing is armed and the
// wheel has gone idle.
void run_until_idle(asio::io_context& io) {
  io.run_for(10s);
  EXPECT_TRUE(io.stopped()) << "the wheel still had work: its driving timer did not stop";
}

void expect_fired_once_after_deadline(const Probe& p, Clock::time_point deadline) {
  ASSERT_EQ(p.fired(), 1u);
  EXPECT_EQ(p.fires[0].deadline, deadline);
  EXPECT_GE(p.fires[0].at, deadline)
      << "fired "
      << std::chrono::duration_cast<std::chrono::microseconds>(deadline - p.fires[0].at).count()
      << "us early";
  EXPECT_FALSE(p.armed());
}

TEST(TimerWheelTest, EntriesFireAfterTheirDeadlineNeverBefore) {
  asio::io_context io;
  TimerWheel wheel(io, kTick);
  std::array<Probe, 4> probes;
  const auto start = Clock::now();
  const std::array<Clock::duration, 4> delays{0ms, 1500us, 7ms, 20ms};
  for (std::size_t i = 0; i < probes.size(); ++i)
    wheel.arm(probes[i], start + delays[i]);
  EXPECT_EQ(wheel.armed_count(), 4u);

  run_until_idle(io);
  for (std::size_t i = 0; i < probes.size(); ++i) {
    SCOPED_TRACE(i);
    expect_fired_once_after_deadline(probes[i], start + delays[i]);
  }
  EXPECT_EQ(wheel.armed_count(), 0u);
}

TEST(TimerWheelTest, EntriesFireInDeadlineOrder) {
  asio::io_context io;
  TimerWheel wheel(io, kTick);
  std::array<Probe, 8> probes;
  std::vector<const Probe*> log;
  // Deadlines 3 ticks apart, armed in shuffled order.
  std::array<std::size_t, 8> arm_order{5, 2, 7, 0, 3, 6, 1, 4};
  const auto start = Clock::now();
  for (std::size_t i : arm_order) {
    probes[i].log = &log;
    wheel.arm(probes[i], start + 2ms + 3 * kTick * static_cast<int>(i));
  }

  run_until_idle(io);
  ASSERT_EQ(log.size(), probes.size());
  for (std::size_t i = 0; i < probes.size(); ++i) {
    EXPECT_EQ(log[i], &probes[i]) << "position " << i;
    EXPECT_EQ(probes[i].fired(), 1u);
  }
}

TEST(TimerWheelTest, ArmingInThePastFiresOnTheNextTickNotInline) {
  asio::io_context io;
  TimerWheel wheel(io, kTick);
  Probe p;
  const auto armed_at = Clock::now();
  wheel.arm(p, armed_at - 1s);
  EXPECT_EQ(p.fired(), 0u) << "on_expire ran inside arm()";
  EXPECT_TRUE(p.armed());
  run_until_idle(io);
  ASSERT_EQ(p.fired(), 1u);
  // "Next tick" with a generous margin: an entry put in an already-processed slot would wait a
  // whole revolution of the wheel (4096 ticks).
  EXPECT_LT(p.fires[0].at - armed_at, 1s);
}

TEST(TimerWheelTest, EntryReArmedIntoThePastFromItsCallbackFiresOnTheNextTick) {
  asio::io_context io;
  TimerWheel wheel(io, kTick);
  Probe p([&](Probe& self) {
    if (self.fired() == 1) wheel.arm(self, self.deadline());  // already passed
  });
  wheel.arm_after(p, 2ms);
  run_until_idle(io);
  ASSERT_EQ(p.fired(), 2u);
  EXPECT_LT(p.fires[1].at - p.fires[0].at, 1s) << "waited a revolution of the wheel";
}

TEST(TimerWheelTest, DisarmPreventsFiring) {
  asio::io_context io;
  TimerWheel wheel(io, kTick);
  Probe kept;
  Probe disarmed;
  const auto deadline = Clock::now() + 5ms;
  wheel.arm(kept, deadline);
  wheel.arm(disarmed, deadline);
  wheel.disarm(disarmed);
  EXPECT_FALSE(disarmed.armed());
  EXPECT_EQ(wheel.armed_count(), 1u);

  run_until_idle(io);
  EXPECT_EQ(kept.fired(), 1u);
  EXPECT_EQ(disarmed.fired(), 0u);
  EXPECT_EQ(wheel.armed_count(), 0u);
}

TEST(TimerWheelTest, DisarmingEverythingLetsTheWheelGoIdle) {
  asio::io_context io;
  TimerWheel wheel(io, kTick);
  Probe p;
  wheel.arm_after(p, 1h);
  wheel.disarm(p);
  run_until_idle(io);
  EXPECT_EQ(p.fired(), 0u);
}

TEST(TimerWheelTest, AnIdleWheelHasNoWork) {
  asio::io_context io;
  TimerWheel wheel(io, kTick);
  io.run_for(1s);
  EXPECT_TRUE(io.stopped());
}

TEST(TimerWheelTest, ReArmMovesTheDeadlineLater) {
  asio::io_context io;
  TimerWheel wheel(io, kTick);
  Probe p;
  const auto start = Clock::now();
  wheel.arm(p, start + 2ms);
  const auto later = start + 30ms;
  wheel.arm(p, later);
  EXPECT_EQ(wheel.armed_count(), 1u) << "re-arming counted the entry twice";
  EXPECT_EQ(p.deadline(), later);

  run_until_idle(io);
  expect_fired_once_after_deadline(p, later);
}

TEST(TimerWheelTest, ReArmMovesTheDeadlineEarlier) {
  asio::io_context io;
  TimerWheel wheel(io, kTick);
  Probe p;
  Probe marker;  // fires at the original deadline: p must have fired before it
  std::vector<const Probe*> log;
  p.log = &log;
  marker.log = &log;
  const auto start = Clock::now();
  wheel.arm(p, start + 200ms);
  wheel.arm(marker, start + 200ms);
  const auto earlier = start + 3ms;
  wheel.arm(p, earlier);
  EXPECT_EQ(wheel.armed_count(), 2u);

  run_until_idle(io);
  expect_fired_once_after_deadline(p, earlier);
  EXPECT_EQ(log, (std::vector<const Probe*>{&p, &marker}));
}

TEST(TimerWheelTest, EntryReArmedFromItsOwnCallbackFiresAgain) {
  asio::io_context io;
  TimerWheel wheel(io, kTick);
  std::vector<std::size_t> armed_count_inside;
  Probe p([&](Probe& self) {
    armed_count_inside.push_back(wheel.armed_count());
    if (self.fired() < 3) wheel.arm_after(self, 2ms);
  });
  wheel.arm_after(p, 2ms);

  run_until_idle(io);
  ASSERT_EQ(p.fired(), 3u);
  for (std::size_t i = 0; i < 3; ++i) {
    SCOPED_TRACE(i);
    EXPECT_FALSE(p.fires[i].armed_inside) << "the entry must be disarmed when on_expire runs";
    EXPECT_GE(p.fires[i].at, p.fires[i].deadline);
    if (i > 0) {
      EXPECT_GE(p.fires[i].deadline, p.fires[i - 1].at + 2ms);
    }
  }
  EXPECT_EQ(armed_count_inside, (std::vector<std::size_t>{0, 0, 0}));
  EXPECT_EQ(wheel.armed_count(), 0u);
}

TEST(TimerWheelTest, DisarmingAnotherDueEntryFromACallbackPreventsItFiring) {
  asio::io_context io;
  TimerWheel wheel(io, kTick);
  Probe a;
  Probe b;
  // Same deadline: both are due in the same pass; whichever runs first disarms the other.
  a.then([&](Probe&) { wheel.disarm(b); });
  b.then([&](Probe&) { wheel.disarm(a); });
  const auto deadline = Clock::now() + 3ms;
  wheel.arm(a, deadline);
  wheel.arm(b, deadline);

  run_until_idle(io);
  EXPECT_EQ(a.fired() + b.fired(), 1u);
  EXPECT_FALSE(a.armed());
  EXPECT_FALSE(b.armed());
  EXPECT_EQ(wheel.armed_count(), 0u);
}

TEST(TimerWheelTest, ReArmingAnotherDueEntryFromACallbackMovesIt) {
  asio::io_context io;
  TimerWheel wheel(io, kTick);
  Probe a;
  Probe b;
  const auto deadline = Clock::now() + 3ms;
  std::optional<Clock::time_point> moved_to;
  auto push_other = [&](Probe& other) {
    return [&](Probe&) {
      if (moved_to) return;
      moved_to = Clock::now() + 15ms;
      wheel.arm(other, *moved_to);
    };
  };
  a.then(push_other(b));
  b.then(push_other(a));
  wheel.arm(a, deadline);
  wheel.arm(b, deadline);

  run_until_idle(io);
  ASSERT_TRUE(moved_to);
  ASSERT_EQ(a.fired(), 1u);
  ASSERT_EQ(b.fired(), 1u);
  // The one that was moved fired at its new deadline, not the shared one.
  const Probe& moved = a.fires[0].deadline == *moved_to ? a : b;
  EXPECT_EQ(moved.fires[0].deadline, *moved_to);
  EXPECT_GE(moved.fires[0].at, *moved_to);
  EXPECT_EQ(wheel.armed_count(), 0u);
}

TEST(TimerWheelTest, ArmedCountIsExact) {
  asio::io_context io;
  TimerWheel wheel(io, kTick);
  std::vector<std::size_t> inside;
  auto note = [&](Probe&) { inside.push_back(wheel.armed_count()); };
  Probe a(note);
  Probe b(note);
  Probe c(note);
  EXPECT_EQ(wheel.armed_count(), 0u);

  const auto start = Clock::now();
  wheel.arm(a, start + 2ms);
  wheel.arm(b, start + 4ms);
  wheel.arm(c, start + 6ms);
  EXPECT_EQ(wheel.armed_count(), 3u);
  wheel.arm(b, start + 5ms);  // re-arm
  EXPECT_EQ(wheel.armed_count(), 3u);
  wheel.disarm(c);
  EXPECT_EQ(wheel.armed_count(), 2u);
  wheel.disarm(c);  // already disarmed
  EXPECT_EQ(wheel.armed_count(), 2u);
  wheel.arm(c, start + 6ms);
  EXPECT_EQ(wheel.armed_count(), 3u);

  run_until_idle(io);
  // Seen from each callback: the ones still waiting (a due-but-not-yet-run entry counts).
  EXPECT_EQ(inside, (std::vector<std::size_t>{2, 1, 0}));
  EXPECT_EQ(wheel.armed_count(), 0u);
}

TEST(TimerWheelTest, EntriesMoreThanOneRevolutionAwayWaitForTheirOwnTick) {
  asio::io_context io;
  constexpr std::size_t kSlots = 8;
  TimerWheel wheel(io, kTick, kSlots);
  std::array<Probe, 3> probes;
  std::vector<const Probe*> log;
  const auto start = Clock::now();
  std::array<Clock::time_point, 3> deadlines;
  // Exactly one revolution apart: all three share a slot.
  for (std::size_t i = 0; i < probes.size(); ++i) {
    probes[i].log = &log;
    deadlines[i] = start + 2ms + kTick * static_cast<int>(kSlots * i);
    wheel.arm(probes[i], deadlines[i]);
  }

  run_until_idle(io);
  for (std::size_t i = 0; i < probes.size(); ++i) {
    SCOPED_TRACE(i);
    expect_fired_once_after_deadline(probes[i], deadlines[i]);
  }
  EXPECT_EQ(log, (std::vector<const Probe*>{&probes[0], &probes[1], &probes[2]}));
}

TEST(TimerWheelTest, OverdueEntriesFireOnceAfterAStall) {
  asio::io_context io;
  constexpr std::size_t kSlots = 8;
  TimerWheel wheel(io, kTick, kSlots);
  std::array<Probe, 30> probes;
  std::array<Clock::time_point, 30> deadlines;
  const auto start = Clock::now();
  for (std::size_t i = 0; i < probes.size(); ++i) {
    deadlines[i] = start + kTick * static_cast<int>(i + 1);
    wheel.arm(probes[i], deadlines[i]);
  }
  // Simulates an io thread that was busy for several revolutions of the wheel (this is the
  // condition under test, not synchronisation).
  std::this_thread::sleep_for(kTick * static_cast<int>(kSlots * 5));

  run_until_idle(io);
  for (std::size_t i = 0; i < probes.size(); ++i) {
    SCOPED_TRACE(i);
    expect_fired_once_after_deadline(probes[i], deadlines[i]);
  }
  EXPECT_EQ(wheel.armed_count(), 0u);
}

TEST(TimerWheelTest, TenThousandRandomEntriesFireOnceThenTheWheelGoesIdle) {
  constexpr std::size_t kEntries = 10000;
  asio::io_context io;
  TimerWheel wheel(io, kTick);
  auto probes = std::make_unique<Probe[]>(kEntries);
  std::vector<Clock::time_point> deadlines(kEntries);
  std::vector<const Probe*> log;
  log.reserve(kEntries);
  std::mt19937 rng(42);
  std::uniform_int_distribution<int> offset_us(0, 200'000);
  const auto start = Clock::now();
  for (std::size_t i = 0; i < kEntries; ++i) {
    probes[i].log = &log;
    deadlines[i] = start + std::chrono::microseconds(offset_us(rng));
    wheel.arm(probes[i], deadlines[i]);
  }
  EXPECT_EQ(wheel.armed_count(), kEntries);

  run_until_idle(io);
  EXPECT_EQ(wheel.armed_count(), 0u);
  ASSERT_EQ(log.size(), kEntries);
  std::size_t wrong = 0;
  for (std::size_t i = 0; i < kEntries; ++i) {
    const Probe& p = probes[i];
    if (p.fired() != 1 || p.fires[0].at < deadlines[i] || p.armed()) ++wrong;
  }
  EXPECT_EQ(wrong, 0u) << "entries that fired other than once, early, or stayed armed";
  // Deadline order, up to the resolution of one tick.
  Clock::time_point latest_so_far = Clock::time_point::min();
  std::size_t out_of_order = 0;
  for (const Probe* p : log) {
    const auto d = p->fires[0].deadline;
    if (d + kTick < latest_so_far) ++out_of_order;
    latest_so_far = std::max(latest_so_far, d);
  }
  EXPECT_EQ(out_of_order, 0u);
}

TEST(TimerWheelTest, WheelMayBeDestroyedFromACallback) {
  asio::io_context io;
  std::optional<TimerWheel> wheel(std::in_place, io, kTick);
  Probe a;
  Probe b;
  a.then([&](Probe&) { wheel.reset(); });
  b.then([&](Probe&) { wheel.reset(); });
  const auto deadline = Clock::now() + 2ms;
  wheel->arm(a, deadline);
  wheel->arm(b, deadline);

  run_until_idle(io);
  EXPECT_FALSE(wheel);
  EXPECT_EQ(a.fired() + b.fired(), 1u) << "an entry fired after its wheel was destroyed";
  EXPECT_FALSE(a.armed());
  EXPECT_FALSE(b.armed());
}

TEST(TimerWheelTest, DestroyingTheWheelDisarmsItsEntries) {
  asio::io_context io;
  Probe p;
  {
    TimerWheel wheel(io, kTick);
    wheel.arm_after(p, 1ms);
  }
  EXPECT_FALSE(p.armed());
  run_until_idle(io);
  EXPECT_EQ(p.fired(), 0u);
}

TEST(TimerWheelTest, TimerCallbackCallsItsFunction) {
  asio::io_context io;
  TimerWheel wheel(io, kTick);
  int calls = 0;
  TimerCallback callback([&] { ++calls; });
  wheel.arm_after(callback, 2ms);
  run_until_idle(io);
  EXPECT_EQ(calls, 1);
}

// An owner may go away with its deadline still armed; if the wheel kept counting the entry, its
// driving timer would tick forever and the io_context would never run out of work.
TEST(TimerWheelTest, DestroyingAnArmedEntryDisarmsIt) {
  asio::io_context io;
  TimerWheel wheel(io, kTick);
  {
    Probe p;
    wheel.arm_after(p, 2ms);
  }
  EXPECT_EQ(wheel.armed_count(), 0u);
  io.run_for(1s);
  EXPECT_TRUE(io.stopped()) << "the wheel kept ticking for an entry that no longer exists";
}

TEST(TimerWheelTest, DestroyingAnotherDueEntryFromACallbackPreventsItFiring) {
  asio::io_context io;
  TimerWheel wheel(io, kTick);
  auto a = std::make_unique<Probe>();
  auto b = std::make_unique<Probe>();
  int fired = 0;
  // Same deadline: both are due in the same pass; whichever runs first destroys the other.
  a->then([&](Probe&) {
    ++fired;
    b.reset();
  });
  b->then([&](Probe&) {
    ++fired;
    a.reset();
  });
  const auto deadline = Clock::now() + 3ms;
  wheel.arm(*a, deadline);
  wheel.arm(*b, deadline);

  run_until_idle(io);
  EXPECT_EQ(fired, 1);
  EXPECT_EQ(wheel.armed_count(), 0u);
  EXPECT_TRUE(!a != !b) << "exactly one entry should remain";
}

// lag(): how far behind the loop runs, seen from the driving timer. Nothing armed: no lag. A
// loop that does not get to the wheel for 30 ms: the timer is that overdue, and after it fires
// its lateness is remembered for a second.
TEST(TimerWheelTest, LagIsHowLateTheDrivingTimerRuns) {
  asio::io_context io;
  TimerWheel wheel(io, kTick);
  EXPECT_EQ(wheel.lag(Clock::now()), Clock::duration::zero());

  Probe p;
  wheel.arm_after(p, 1s);
  io.poll();  // the timer is armed for the next tick; the loop keeps up
  EXPECT_LT(wheel.lag(Clock::now()), 30ms);
  // The thread is busy elsewhere (standing in for a loaded loop) for 30 ms.
  const auto busy_until = Clock::now() + 30ms;
  while (Clock::now() < busy_until) {
  }
  EXPECT_GE(wheel.lag(Clock::now()), 28ms);  // overdue by nearly all of it (one tick of slack)
  io.run_one();                              // the driving timer fires, late
  const auto fired = Clock::now();
  EXPECT_GE(wheel.lag(fired), 28ms);  // remembered
  wheel.disarm(p);
  io.run();  // the wheel goes idle
  EXPECT_EQ(wheel.lag(fired + 2s), Clock::duration::zero()) << "remembered for too long";
}

}  // namespace
}  // namespace dispatchd::co
