#pragma once
// A minimal intrusive doubly-linked list. Objects embed a ListHook; linking allocates nothing,
// which keeps per-session bookkeeping (listeners, timers, subscribers) allocation-free.

#include <cassert>
#include <cstddef>

namespace dispatchd::co {

class ListHook {
 public:
  ListHook() = default;
  ListHook(const ListHook&) = delete;
  ListHook& operator=(const ListHook&) = delete;
  ~ListHook() { unlink(); }

  bool linked() const noexcept { return next_ != nullptr; }

  void unlink() noexcept {
    if (!next_) return;
    prev_->next_ = next_;
    next_->prev_ = prev_;
    next_ = prev_ = nullptr;
  }

 private:
  template <class T>
  friend class IntrusiveList;
  ListHook* prev_ = nullptr;
  ListHook* next_ = nullptr;
};

// T must derive from ListHook (publicly). The list does not own its elements; an element unlinks
// itself when destroyed.
template <class T>
class IntrusiveList {
 public:
  IntrusiveList() noexcept { head_.prev_ = head_.next_ = &head_; }
  IntrusiveList(const IntrusiveList&) = delete;
  IntrusiveList& operator=(const IntrusiveList&) = delete;
  ~IntrusiveList() { clear(); }

  bool empty() const noexcept { return head_.next_ == &head_; }

  void push_back(T& item) noexcept {
    ListHook& h = item;
    assert(!h.linked());
    h.prev_ = head_.prev_;
    h.next_ = &head_;
    head_.prev_->next_ = &h;
    head_.prev_ = &h;
  }

  T* front() noexcept { return empty() ? nullptr : static_cast<T*>(head_.next_); }

  T* pop_front() noexcept {
    T* t = front();
    if (t) static_cast<ListHook&>(*t).unlink();
    return t;
  }

  T* back() noexcept { return empty() ? nullptr : static_cast<T*>(head_.prev_); }

  T* pop_back() noexcept {
    T* t = back();
    if (t) static_cast<ListHook&>(*t).unlink();
    return t;
  }

  void clear() noexcept {
    while (!empty())
      head_.next_->unlink();
  }

  // Moves every element of `other` to the end of this list.
  void splice_back(IntrusiveList& other) noexcept {
    if (other.empty()) return;
    ListHook* first = other.head_.next_;
    ListHook* last = other.head_.prev_;
    other.head_.prev_ = other.head_.next_ = &other.head_;
    first->prev_ = head_.prev_;
    last->next_ = &head_;
    head_.prev_->next_ = first;
    head_.prev_ = last;
  }

  // Calls f(T&) for each element. f may unlink the element it is given (but no other).
  template <class F>
  void for_each(F&& f) {
    ListHook* h = head_.next_;
    while (h != &head_) {
      ListHook* next = h->next_;
      f(*static_cast<T*>(h));
      h = next;
    }
  }
  template <class F>
  void for_each(F&& f) const {
    const ListHook* h = head_.next_;
    while (h != &head_) {
      f(*static_cast<const T*>(h));
      h = h->next_;
    }
  }

  std::size_t size() const noexcept {
    std::size_t n = 0;
    for (const ListHook* h = head_.next_; h != &head_; h = h->next_)
      ++n;
    return n;
  }

 private:
  ListHook head_;
};

}  // namespace dispatchd::co
