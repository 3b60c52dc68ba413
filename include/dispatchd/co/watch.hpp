#pragma once
// Watch<T>: broadcast to many subscribers with a bounded buffer per subscriber.
//
// Events are stored once, in a ring shared by all subscribers; a subscriber is only a cursor and
// a list hook, so 100k subscribers cost a few dozen bytes each and a publish copies nothing per
// subscriber. A subscriber that falls more than `limit` events behind is overflowed: it is
// removed from the watch, told so (ready() becomes true, overflowed() reports it) and counted.
// Nothing is ever skipped silently, and a slow subscriber never slows the publisher.
//
// A paced watch (pace()) wakes its subscribers in batches, one batch per turn of the executor:
// what the woken subscribers post (their streams' writes) runs before the next batch is woken,
// so with 100k subscribers the first messages leave while the last are still being encoded,
// rather than after all of them (BENCHMARKS.md, issue 14's fan-out). Waking is all that is
// deferred: an event is in every subscriber's reach (has_next()) the moment it is published, and
// a subscriber that scans for another reason sees it.

#include <asio/any_io_executor.hpp>
#include <asio/post.hpp>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <limits>
#include <memory>
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
  ~Watch() {
    close();
    if (alive_) *alive_ = false;
  }

  // From now on wake at most `batch` subscribers per publish() or turn of `ex`, the rest in
  // handlers posted to `ex` (the thread that publishes).
  void pace(asio::any_io_executor ex, std::size_t batch) {
    ex_ = std::move(ex);
    batch_ = batch == 0 ? 1 : batch;
  }

  void publish(T v) {
    if (closed_) return;
    items_.push_back(std::move(v));
    ++head_;
    std::uint64_t min_cursor = head_;
    // Overflows the subscriber if it is too far behind (and wakes it to say so); else keeps the
    // lowest cursor. True if it is still subscribed.
    auto check = [&](Subscription& s) {
      if (head_ - s.cursor_ > limit_) {
        s.overflowed_ = true;
        s.unlink();
        ++overflows_;
        s.wakeup_->notify();
        return false;
      }
      if (s.cursor_ < min_cursor) min_cursor = s.cursor_;
      return true;
    };
    if (!ex_) {
      subscribers_.for_each([&](Subscription& s) {
        if (check(s)) s.wakeup_->notify();
      });
    } else {
      // Those not yet woken for an earlier event stay first in line.
      waking_.for_each(check);
      subscribers_.for_each(check);
      waking_.splice_back(subscribers_);
      wake_some();
    }
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
    for (auto* list : {&waking_, &subscribers_}) {
      while (Subscription* s = list->pop_front()) {
        s->closed_ = true;
        s->wakeup_->notify();
      }
    }
  }

  std::size_t subscriber_count() const { return subscribers_.size() + waking_.size(); }
  std::uint64_t overflow_count() const { return overflows_; }
  std::size_t buffered() const { return items_.size(); }
  // Subscribers with an event that a paced watch has not woken yet.
  std::size_t waiting_to_wake() const { return waking_.size(); }

 private:
  // Wakes the next batch of waking_ and, if some are left, posts the next turn.
  void wake_some() {
    for (std::size_t n = 0; n < batch_; ++n) {
      Subscription* s = waking_.pop_front();
      if (s == nullptr) return;
      subscribers_.push_back(*s);
      s->wakeup_->notify();
    }
    if (waking_.empty() || wake_posted_) return;
    wake_posted_ = true;
    if (!alive_) alive_ = std::make_shared<bool>(true);
    asio::post(ex_, [this, alive = alive_] {
      if (!*alive) return;
      wake_posted_ = false;
      wake_some();
    });
  }

  std::size_t limit_;
  std::deque<T> items_;
  std::uint64_t base_ = 0;  // sequence number of items_.front()
  std::uint64_t head_ = 0;  // sequence number of the next event
  std::uint64_t overflows_ = 0;
  bool closed_ = false;
  // Woken for every event so far; still to be woken (a paced watch only), in order.
  IntrusiveList<Subscription> subscribers_, waking_;
  asio::any_io_executor ex_;
  std::size_t batch_ = 0;
  bool wake_posted_ = false;
  std::shared_ptr<bool> alive_;  // false once the watch is gone (a posted turn checks it)
};

}  // namespace dispatchd::co
