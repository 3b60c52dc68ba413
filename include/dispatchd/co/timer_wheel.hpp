#pragma once
// TimerWheel: one asio timer for any number of deadlines (heartbeats, grpc-timeout, handshake
// and drain timeouts). An Entry is embedded in its owner and linked into a hashed wheel slot, so
// arming, re-arming and cancelling allocate nothing and cost O(1); 100k heartbeat timers cost
// 100k list hooks, not 100k asio timers.
//
// Resolution is one tick (default 5 ms): an entry fires within one tick after its deadline. The
// driving timer runs only while entries are armed.

#include <asio/io_context.hpp>
#include <asio/steady_timer.hpp>
#include <chrono>
#include <cstdint>
#include <vector>

#include "dispatchd/co/intrusive_list.hpp"

namespace dispatchd::co {

class TimerWheel {
 public:
  using Clock = std::chrono::steady_clock;

  class Entry : public ListHook {
   public:
    Entry() = default;
    Entry(const Entry&) = delete;
    Entry& operator=(const Entry&) = delete;
    // Destroying an armed entry disarms it.
    virtual ~Entry() {
      if (linked() && wheel_) --wheel_->count_;
    }
    bool armed() const noexcept { return linked(); }
    Clock::time_point deadline() const noexcept { return deadline_; }

   protected:
    // Runs on the io_context thread when the deadline passes. The entry is already disarmed and
    // may be re-armed from here.
    virtual void on_expire() = 0;

   private:
    friend class TimerWheel;
    TimerWheel* wheel_ = nullptr;
    Clock::time_point deadline_{};
    std::int64_t tick_ = 0;
  };

  explicit TimerWheel(asio::io_context& io, Clock::duration tick = std::chrono::milliseconds(5),
                      std::size_t slots = 4096);
  TimerWheel(const TimerWheel&) = delete;
  TimerWheel& operator=(const TimerWheel&) = delete;
  ~TimerWheel();

  void arm(Entry& e, Clock::time_point deadline);
  void arm_after(Entry& e, Clock::duration d) { arm(e, Clock::now() + d); }
  void disarm(Entry& e) noexcept;
  std::size_t armed_count() const noexcept { return count_; }
  // How far behind the event loop runs: how late the driving timer is (if it is overdue now) or
  // was when it last fired, within the last second. Zero when the loop keeps up, or when nothing
  // has been armed for a second.
  Clock::duration lag(Clock::time_point now) const noexcept;
  asio::io_context& io() noexcept { return io_; }

 private:
  std::int64_t tick_of(Clock::time_point t) const;
  void start_timer();
  void on_timer();

  asio::io_context& io_;
  asio::steady_timer timer_;
  Clock::duration tick_;
  Clock::time_point origin_;
  std::vector<IntrusiveList<Entry>> slots_;
  std::int64_t current_tick_ = 0;  // every slot up to and including this tick has been processed
  std::size_t count_ = 0;
  bool timer_running_ = false;
  Clock::duration last_lateness_{};  // of the driving timer, when it last fired
  Clock::time_point last_fired_{};
  bool* alive_ = nullptr;  // detects destruction from inside a callback
};

// An Entry that calls a function object; handy for owners that hold several deadlines.
template <class F>
class TimerCallback final : public TimerWheel::Entry {
 public:
  explicit TimerCallback(F f) : f_(std::move(f)) {}

 private:
  void on_expire() override { f_(); }
  F f_;
};

}  // namespace dispatchd::co
