// The Assignments and Tasks streams (docs/behaviour.md §5, §8): the node's tasks (and their
// secrets, configs, volumes), first complete, then in batches of changes.

#include <map>

#include "dispatchd/co/queue.hpp"
#include "dispatchd/co/select.hpp"
#include "dispatchd/dispatcher/assignment_set.hpp"
#include "dispatchd/dispatcher/services.hpp"

namespace dispatchd::dispatcher {

namespace {

// The batching window of docs/behaviour.md §8.1: a batch is sent when it holds `limit` changes,
// or `wait` after its latest change. One timer on the wheel, disarmed when destroyed.
class BatchWindow final : public co::TimerWheel::Entry {
 public:
  BatchWindow(co::TimerWheel& wheel, co::Wakeup& wakeup, const Config& c)
      : wheel_(wheel),
        wakeup_(wakeup),
        wait_(std::chrono::duration_cast<co::TimerWheel::Clock::duration>(c.assignment_batch_wait)),
        limit_(c.assignment_batch_limit) {}

  // A new, empty batch.
  void open() {
    wheel_.disarm(*this);
    changes_ = 0;
    fired_ = false;
  }
  // Room for more changes in this batch.
  bool room() const noexcept { return changes_ < limit_; }
  // One change: the window closes `wait` from now.
  void changed() {
    ++changes_;
    wheel_.arm_after(*this, wait_);
  }
  // After a wake-up: whether the batch is ready to send. A window that closed empty reopens.
  bool complete() {
    if (!room()) return true;
    if (fired_) {
      if (changes_ > 0) return true;
      fired_ = false;
    }
    return false;
  }
  // For co::select: the window closed.
  bool ready() const noexcept { return fired_; }

 private:
  void on_expire() override {
    fired_ = true;
    wakeup_.notify();
  }

  co::TimerWheel& wheel_;
  co::Wakeup& wakeup_;
  co::TimerWheel::Clock::duration wait_;
  std::size_t limit_;
  std::size_t changes_ = 0;
  bool fired_ = false;
};

}  // namespace

asio::awaitable<Status> serve_assignments(Services& s, grpc::ServerContext& ctx,
                                          const api::AssignmentsRequest& req,
                                          grpc::Writer<api::AssignmentsMessage>& writer) {
  auto id = admit(s, ctx, req.session_id());
  if (!id) co_return id.error();
  ctx.release_metadata();  // read by admit, not needed again
  const std::string node_id = id->node_id;

  co::Wakeup wakeup;
  co::Queue<store::Event> task_events(wakeup, s.config.watch_buffer);
  co::Queue<store::Event> volume_events(wakeup, s.config.watch_buffer);
  QueueWatcher task_watcher(task_events), volume_watcher(volume_events);
  // Task creations are not watched: a task is created unassigned and assigned by an update.
  s.store.watch(task_watcher, {store::ObjectType::task, node_id, false, true, true});
  s.store.watch(volume_watcher, {store::ObjectType::volume, node_id, false, true, false});
  AssignmentSet set(node_id);
  s.store.view([&](const store::ReadTx& tx) {
    for (const auto& t : tx.tasks_of_node(node_id))
      set.add_or_update_task(tx, t);
    for (const auto& v : tx.volumes()) {
      for (const auto& ps : v->publish_status()) {
        if (ps.node_id() == node_id) {
          set.add_or_update_volume(tx, v);
          break;
        }
      }
    }
    return 0;
  });
  Counted open(s.counters.open_streams);
  co::Event::Listener cancelled(ctx.cancelled(), wakeup);
  co::Event::Listener stopped(s.stopped, wakeup);
  BatchWindow window(s.wheel, wakeup, s.config);

  // Each message is built and encoded in a plain function, so that it (copies of the node's tasks
  // and secrets) is freed before the stream waits: an idle stream holds only its encoding until
  // the write is done.
  std::uint64_t sequence = 0;
  auto send_changes = [&] {
    api::AssignmentsMessage msg;
    if (sequence == 0) {
      msg.set_type(api::AssignmentsMessage::COMPLETE);
    } else {
      msg.set_type(api::AssignmentsMessage::INCREMENTAL);
      msg.set_applies_to(std::to_string(sequence));
    }
    msg.set_results_in(std::to_string(++sequence));
    for (auto& c : set.take_changes())
      *msg.add_changes() = std::move(c);
    return writer.write(msg);
  };
  if (!co_await send_changes()) co_return canceled_status();

  for (;;) {
    if (stopped.ready()) co_return canceled_status();
    if (auto r = s.registry.check_session(node_id, req.session_id()); !r) co_return r.error();
    window.open();
    do {
      co_await co::select(wakeup, cancelled, stopped, task_events, volume_events, window);
      if (cancelled.ready() || stopped.ready()) co_return canceled_status();
      if (task_events.overflowed() || volume_events.overflowed()) {
        ++s.counters.watch_overflows;
        co_return fell_behind("assignment", s.config.watch_buffer);
      }
      while (window.room() && !task_events.empty()) {
        store::Event e = task_events.pop();
        bool changed = e.kind == store::EventKind::remove
                           ? set.remove_task(e.as<api::Task>())
                           : s.store.view([&](const store::ReadTx& tx) {
                               return set.add_or_update_task(tx, e.ptr<api::Task>());
                             });
        if (changed) window.changed();
      }
      while (window.room() && !volume_events.empty()) {
        store::Event e = volume_events.pop();
        bool changed = s.store.view([&](const store::ReadTx& tx) {
          auto v = tx.volume(e.as<api::Volume>().id());
          return v ? set.add_or_update_volume(tx, v) : false;
        });
        if (changed) window.changed();
      }
    } while (!window.complete());
    window.open();
    if (!co_await send_changes()) co_return canceled_status();
  }
}

asio::awaitable<Status> serve_tasks(Services& s, grpc::ServerContext& ctx,
                                    const api::TasksRequest& req,
                                    grpc::Writer<api::TasksMessage>& writer) {
  auto id = admit(s, ctx, req.session_id());
  if (!id) co_return id.error();
  ctx.release_metadata();  // read by admit, not needed again
  const std::string node_id = id->node_id;

  co::Wakeup wakeup;
  co::Queue<store::Event> events(wakeup, s.config.watch_buffer);
  QueueWatcher watcher(events);
  s.store.watch(watcher, {store::ObjectType::task, node_id});
  std::map<std::string, store::Ptr<api::Task>> known;
  s.store.view([&](const store::ReadTx& tx) {
    for (auto& t : tx.tasks_of_node(node_id))
      known[t->id()] = t;
    return 0;
  });
  Counted open(s.counters.open_streams);
  co::Event::Listener cancelled(ctx.cancelled(), wakeup);
  co::Event::Listener stopped(s.stopped, wakeup);
  BatchWindow window(s.wheel, wakeup, s.config);

  for (;;) {
    if (stopped.ready()) co_return canceled_status();
    if (auto r = s.registry.check_session(node_id, req.session_id()); !r) co_return r.error();
    // Built and encoded in a plain function: the copies of the tasks are freed before the wait.
    auto send_tasks = [&] {
      api::TasksMessage msg;
      for (const auto& [tid, t] : known) {
        if (t->status().state() >= api::ASSIGNED) *msg.add_tasks() = *t;
      }
      return writer.write(msg);
    };
    if (!co_await send_tasks()) co_return canceled_status();
    window.open();
    do {
      co_await co::select(wakeup, cancelled, stopped, events, window);
      if (cancelled.ready() || stopped.ready()) co_return canceled_status();
      if (events.overflowed()) {
        ++s.counters.watch_overflows;
        co_return fell_behind("task", s.config.watch_buffer);
      }
      while (window.room() && !events.empty()) {
        store::Event e = events.pop();
        const auto& t = e.as<api::Task>();
        bool counts = true;
        if (e.kind == store::EventKind::remove) {
          known.erase(t.id());
        } else {
          auto it = known.find(t.id());
          if (e.kind == store::EventKind::update && it != known.end() &&
              tasks_stably_equal(*it->second, t) && t.status().state() > api::ASSIGNED) {
            counts = false;
          }
          known[t.id()] = e.ptr<api::Task>();
        }
        if (counts) window.changed();
      }
    } while (!window.complete());
    window.open();
  }
}

}  // namespace dispatchd::dispatcher
