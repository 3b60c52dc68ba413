#pragma once
// Queue<T>: a bounded FIFO owned by one consumer. push() appends and notifies the consumer's
// Wakeup; past the limit the queue is marked overflowed instead of growing or dropping silently.

#include <cstddef>
#include <utility>
#include <vector>

#include "dispatchd/co/wakeup.hpp"

namespace dispatchd::co {

template <class T>
class Queue {
 public:
  Queue(Wakeup& w, std::size_t limit) : wakeup_(&w), limit_(limit) {}

  // Returns false (and marks the queue overflowed) when the queue is full.
  bool push(T v) {
    if (overflowed_ || closed_) return false;
    if (size() >= limit_) {
      overflowed_ = true;
      std::vector<T>().swap(items_);
      head_ = 0;
      wakeup_->notify();
      return false;
    }
    items_.push_back(std::move(v));
    wakeup_->notify();
    return true;
  }

  void close() {
    closed_ = true;
    wakeup_->notify();
  }

  bool ready() const noexcept { return !empty() || overflowed_ || closed_; }
  bool empty() const noexcept { return head_ == items_.size(); }
  bool overflowed() const noexcept { return overflowed_; }
  bool closed() const noexcept { return closed_; }
  std::size_t size() const noexcept { return items_.size() - head_; }

  // Precondition: !empty().
  T pop() {
    T v = std::move(items_[head_++]);
    if (head_ == items_.size()) {
      std::vector<T>().swap(items_);  // an idle queue holds no memory
      head_ = 0;
    } else if (head_ >= 32 && head_ * 2 >= items_.size()) {
      // A consumer that never quite catches up must not keep every slot it has read.
      items_.erase(items_.begin(), items_.begin() + static_cast<std::ptrdiff_t>(head_));
      head_ = 0;
    }
    return v;
  }

 private:
  Wakeup* wakeup_;
  std::size_t limit_;
  std::vector<T> items_;
  std::size_t head_ = 0;
  bool overflowed_ = false;
  bool closed_ = false;
};

}  // namespace dispatchd::co
