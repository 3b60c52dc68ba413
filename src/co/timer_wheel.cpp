#include "dispatchd/co/timer_wheel.hpp"

#include <algorithm>

namespace dispatchd::co {

TimerWheel::TimerWheel(asio::io_context& io, Clock::duration tick, std::size_t slots)
    : io_(io), timer_(io), tick_(tick), origin_(Clock::now()), slots_(slots == 0 ? 1 : slots) {}

TimerWheel::~TimerWheel() {
  if (alive_) *alive_ = false;
  for (auto& s : slots_)
    s.clear();
}

std::int64_t TimerWheel::tick_of(Clock::time_point t) const {
  auto d = t - origin_;
  if (d <= Clock::duration::zero()) return 0;
  // Round up: an entry never fires before its deadline.
  return (d + tick_ - Clock::duration(1)) / tick_;
}

void TimerWheel::arm(Entry& e, Clock::time_point deadline) {
  if (e.linked()) {
    e.unlink();
    --count_;
  }
  e.wheel_ = this;
  e.deadline_ = deadline;
  e.tick_ = std::max(tick_of(deadline), current_tick_ + 1);
  slots_[static_cast<std::size_t>(e.tick_) % slots_.size()].push_back(e);
  ++count_;
  start_timer();
}

void TimerWheel::disarm(Entry& e) noexcept {
  if (!e.linked()) return;
  e.unlink();
  --count_;
}

void TimerWheel::start_timer() {
  if (timer_running_ || count_ == 0) return;
  timer_running_ = true;
  timer_.expires_at(origin_ + tick_ * (current_tick_ + 1));
  timer_.async_wait([this](std::error_code ec) {
    if (ec) return;  // cancelled: the wheel is being destroyed
    timer_running_ = false;
    last_fired_ = Clock::now();
    last_lateness_ = last_fired_ - timer_.expiry();
    on_timer();
  });
}

TimerWheel::Clock::duration TimerWheel::lag(Clock::time_point now) const noexcept {
  Clock::duration lag{};
  if (timer_running_ && now > timer_.expiry()) lag = now - timer_.expiry();
  if (now - last_fired_ < std::chrono::seconds(1)) lag = std::max(lag, last_lateness_);
  return lag;
}

void TimerWheel::on_timer() {
  const std::int64_t now_tick = (Clock::now() - origin_) / tick_;
  const std::int64_t n = static_cast<std::int64_t>(slots_.size());
  std::int64_t first = current_tick_ + 1;
  // After a long stall every slot is visited once; entries carry their own tick.
  if (now_tick - first >= n) first = now_tick - n + 1;
  IntrusiveList<Entry> due;
  for (std::int64_t t = first; t <= now_tick; ++t) {
    auto& slot = slots_[static_cast<std::size_t>(t) % slots_.size()];
    slot.for_each([&](Entry& e) {
      if (e.tick_ <= now_tick) {
        e.unlink();
        due.push_back(e);  // still counted: a callback may disarm it before it fires
      }
    });
  }
  current_tick_ = std::max(current_tick_, now_tick);
  bool alive = true;
  alive_ = &alive;
  while (Entry* e = due.pop_front()) {
    --count_;
    e->on_expire();
    if (!alive) return;
  }
  alive_ = nullptr;
  start_timer();
}

}  // namespace dispatchd::co
