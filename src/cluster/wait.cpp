#include "wait.hpp"

#include <functional>

#include "dispatchd/co/scope.hpp"
#include "dispatchd/co/select.hpp"

namespace dispatchd::cluster::detail {

namespace {

struct Flag {
  const bool* value;
  bool ready() const noexcept { return *value; }
};

// Cancels `watcher` when `a` or `b` is set before `done`.
asio::awaitable<void> cancel_on(etcd::Watcher& watcher, co::Event& a, co::Event& b,
                                co::Event& done) {
  co::Wakeup wakeup;
  co::Event::Listener la(a, wakeup), lb(b, wakeup), ld(done, wakeup);
  auto m = co_await co::select(wakeup, la, lb, ld);
  if (!co::picked(m, 2)) watcher.cancel();
}

}  // namespace

asio::awaitable<void> pause(co::TimerWheel& wheel, co::TimerWheel::Clock::duration d, co::Event& a,
                            co::Event& b) {
  co::Wakeup wakeup;
  bool expired = false;
  co::TimerCallback<std::function<void()>> timer([&] {
    expired = true;
    wakeup.notify();
  });
  wheel.arm_after(timer, d);
  co::Event::Listener la(a, wakeup), lb(b, wakeup);
  co_await co::select(wakeup, la, lb, Flag{&expired});
  wheel.disarm(timer);
}

asio::awaitable<etcd::Result<etcd::pb::WatchResponse>> next_unless(co::TimerWheel& wheel,
                                                                   etcd::Watcher& watcher,
                                                                   co::Event& a, co::Event& b) {
  if (a.is_set() || b.is_set()) {
    watcher.cancel();
    co_return std::unexpected(Status(StatusCode::cancelled, "wait cancelled"));
  }
  co::Event done;
  co::Scope scope(wheel.io().get_executor());
  scope.spawn(cancel_on(watcher, a, b, done));
  auto r = co_await watcher.next();
  done.set();
  co_await scope.join();
  co_return r;
}

}  // namespace dispatchd::cluster::detail
