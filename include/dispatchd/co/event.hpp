#pragma once
// One-shot Event: once set it stays set. Any number of Wakeups listen to it through Listener
// objects (intrusive, no allocation); set() notifies each of them once.

#include <asio/awaitable.hpp>

#include "dispatchd/co/intrusive_list.hpp"
#include "dispatchd/co/wakeup.hpp"

namespace dispatchd::co {

class Event {
 public:
  class Listener : public ListHook {
   public:
    Listener(Event& e, Wakeup& w) : event_(&e), wakeup_(&w) {
      if (!e.set_) e.listeners_.push_back(*this);
    }
    bool ready() const noexcept { return event_->set_; }

   private:
    friend class Event;
    Event* event_;
    Wakeup* wakeup_;
  };

  Event() = default;
  Event(const Event&) = delete;
  Event& operator=(const Event&) = delete;

  bool is_set() const noexcept { return set_; }
  bool ready() const noexcept { return set_; }

  void set() noexcept {
    if (set_) return;
    set_ = true;
    while (Listener* l = listeners_.pop_front())
      l->wakeup_->notify();
  }

  // Convenience for a coroutine that waits on this event alone.
  asio::awaitable<void> wait() {
    if (set_) co_return;
    Wakeup w;
    Listener l(*this, w);
    while (!set_)
      co_await w.async_park();
  }

  std::size_t listener_count() const { return listeners_.size(); }

 private:
  bool set_ = false;
  IntrusiveList<Listener> listeners_;
};

}  // namespace dispatchd::co
