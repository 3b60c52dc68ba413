#pragma once
// Watch<T>: broadcast to many subscribers with a bounded buffer per subscriber.
//
// Events are stored once, in a ring shared by all subscribers; a subscriber is only a cursor and
// a list hook, so 100k subscribers cost a few dozen bytes each and a publish copies nothing per
// subscriber. A subscriber that falls more than `limit` events behind is overflowed: it is
// removed from the watch, told so (ready() becomes true, overflowed() reports it) and counted.
// Nothing is ever skipped silently, and a slow subscriber never slows the publisher.

#include <cstddef>
#include <cstdint>
#include <deque>
#include <limits>
#include <utility>

#include "dispatchd/co/intrusive_list.hpp"
#include "dispatchd/co/wakeup.hpp"

namespace dispatchd::co {

template <class T>
class Watch {
 public:
  class Subscription : public ListHook {
   public:
    // Sees the events published after it was created.
    Subscription(Watch& w, Wakeup& wakeup) : watch_(&w), wakeup_(&wakeup), cursor_(w.head_) {
      if (w.closed_) {
        closed_ = true;
      } else {
        w.subscribers_.push_back(*this);
      }
    }
    Subscription(const Subscription&) = delete;
    Subscription& operator=(const Subscription&) = delete;

    bool has_next() const noexcept { return !overflowed_ && cursor_ < watch_->head_; }
    // Ready when there is an event to take or the subscription has ended (overflow or close).
    bool ready() const noexcept { return has_next() || overflowed_ || ended(); }
    bool overflowed() const noexcept { return overflowed_; }
    // Closed by the publisher and fully drained.
    bool ended() const noexcept { return closed_ && cursor_ >= watch_->head_; }

    // Precondition: has_next().
    const T& next() noexcept {
      const T& v = watch_->items_[cursor_ - watch_->base_];
      ++cursor_;
      return v;
    }

    std::uint64_t pending() const noexcept { return overflowed_ ? 0 : watch_->head_ - cursor_; }

   private:
    friend class Watch;
    Watch* watch_;
    Wakeup* wakeup_;
    std::uint64_t cursor_;
    bool overflowed_ = false;
    bool closed_ = false;
  };

  explicit Watch(std::size_t limit) : limit_(limit == 0 ? 1 : limit) {}
  Watch(const Watch&) = delete;
  Watch& operator=(const Watch&) = delete;
  ~Watch() { close(); }

  void publish(T v) {
    if (closed_) return;
    items_.push_back(std::move(v));
    ++head_;
    std::uint64_t min_cursor = head_;
    subscribers_.for_each([&](Subscription& s) {
      if (head_ - s.cursor_ > limit_) {
        s.overflowed_ = true;
        s.unlink();
        ++overflows_;
      } else if (s.cursor_ < min_cursor) {
        min_cursor = s.cursor_;
      }
      s.wakeup_->notify();
    });
    // Keep only what some subscriber has not read yet.
    while (base_ < min_cursor) {
      items_.pop_front();
      ++base_;
    }
  }

  // Subscribers drain what is buffered and then see ended().
  void close() {
    if (closed_) return;
    closed_ = true;
    while (Subscription* s = subscribers_.pop_front()) {
      s->closed_ = true;
      s->wakeup_->notify();
    }
  }

  std::size_t subscriber_count() const { return subscribers_.size(); }
  std::uint64_t overflow_count() const { return overflows_; }
  std::size_t buffered() const { return items_.size(); }

 private:
  std::size_t limit_;
  std::deque<T> items_;
  std::uint64_t base_ = 0;  // sequence number of items_.front()
  std::uint64_t head_ = 0;  // sequence number of the next event
  std::uint64_t overflows_ = 0;
  bool closed_ = false;
  IntrusiveList<Subscription> subscribers_;
};

}  // namespace dispatchd::co
