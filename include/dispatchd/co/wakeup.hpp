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
#include <utility>

namespace dispatchd::co {

namespace detail {
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
