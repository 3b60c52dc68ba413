#pragma once
// Wakeup: the single place where a coroutine parks. Producers never hand data to a parked
// operation; they change state the coroutine owns (a queue, a flag, a cursor) and call notify().
// The coroutine re-scans its sources after every wakeup, so a notify that arrives while it is
// busy is not needed: the scan sees the state. This is what makes `select` lossless
// (docs/architecture.md, "The select rule").

#include <asio/associated_executor.hpp>
#include <asio/async_result.hpp>
#include <asio/post.hpp>
#include <asio/use_awaitable.hpp>
#include <cstddef>
#include <new>
#include <utility>

namespace dispatchd::co {

namespace detail {
// Freed parking blocks of one size, kept for the next park on this thread: every Session
// message, Heartbeat and stream write parks at least once, and a fan-out parks 100k coroutines
// at once, so a malloc and a free per park were a measurable share of the io thread
// (BENCHMARKS.md, issue 14). Bounded: beyond kMaxFree blocks go back to the heap.
template <std::size_t Size>
class ParkPool {
 public:
  static void* take() {
    auto& f = list();
    if (f.head == nullptr) return ::operator new(Size);
    Node* n = f.head;
    f.head = n->next;
    --f.count;
    return n;
  }
  static void give(void* p) noexcept {
    auto& f = list();
    if (f.count >= kMaxFree) {
      ::operator delete(p);
      return;
    }
    f.head = new (p) Node{f.head};
    ++f.count;
  }
  // Blocks kept on this thread now.
  static std::size_t kept() noexcept { return list().count; }
  static constexpr std::size_t kMaxFree = 4096;

 private:
  struct Node {
    Node* next;
  };
  static_assert(Size >= sizeof(Node));
  struct FreeList {
    Node* head = nullptr;
    std::size_t count = 0;
    ~FreeList() {
      while (head != nullptr)
        ::operator delete(std::exchange(head, head->next));
    }
  };
  static FreeList& list() {
    thread_local FreeList f;
    return f;
  }
};

class Parked {
 public:
  virtual ~Parked() = default;
  // Posts the handler to its executor and deletes *this. Resumption is never inline, so a
  // notifier (often inside an nghttp2 callback) never re-enters the waiter's code.
  virtual void resume() = 0;
};

template <class Handler>
class ParkedHandler final : public Parked {
 public:
  explicit ParkedHandler(Handler&& h) : handler_(std::move(h)) {}
  static void* operator new(std::size_t) { return ParkPool<sizeof(ParkedHandler)>::take(); }
  static void operator delete(void* p) noexcept { ParkPool<sizeof(ParkedHandler)>::give(p); }
  void resume() override {
    Handler h = std::move(handler_);
    auto ex = asio::get_associated_executor(h);
    delete this;
    asio::post(ex, std::move(h));
  }

 private:
  Handler handler_;
};
}  // namespace detail

class Wakeup {
 public:
  Wakeup() = default;
  Wakeup(const Wakeup&) = delete;
  Wakeup& operator=(const Wakeup&) = delete;
  ~Wakeup() { delete std::exchange(parked_, nullptr); }

  // Resumes the parked coroutine, if any (posted). Without a parked coroutine it does nothing:
  // the owner scans its sources before it parks again.
  void notify() noexcept {
    if (auto* p = std::exchange(parked_, nullptr)) p->resume();
  }

  bool parked() const noexcept { return parked_ != nullptr; }

  // Parks until the next notify(). Only one coroutine may park on a Wakeup at a time.
  template <class Token = asio::use_awaitable_t<>>
  auto async_park(Token&& token = {}) {
    return asio::async_initiate<Token, void()>(
        [this](auto handler) {
          using H = decltype(handler);
          parked_ = new detail::ParkedHandler<H>(std::move(handler));
        },
        token);
  }

 private:
  detail::Parked* parked_ = nullptr;
};

}  // namespace dispatchd::co
