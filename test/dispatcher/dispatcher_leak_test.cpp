// Sessions dropped by their clients leave nothing behind (docs/behaviour.md §0.3, §4.8).
// Over the wire, judged by the real gRPC C++ client (test/support/agent.hpp).

#include <gtest/gtest.h>

#include "support/agent.hpp"

namespace {

using namespace dispatchd::test;  // the agent and the setup helpers (support/agent.hpp)

// =============================================================================================
// Resources (docs/behaviour.md §0.3, §4.8): sessions dropped by their clients leave nothing behind

TEST(DispatcherSessionTest, ThousandsOfDroppedSessionsLeaveNothingBehind) {
  constexpr int kChannels = 8;
  constexpr int kPerChannel = 250;
  constexpr int kSessions = kChannels * kPerChannel;
  const auto t0 = Clock::now();
  TestServer server;
  const auto baseline = server.call([&] { return server.server().store().watcher_count(); });

  struct Call {
    grpc::ClientContext ctx;
    api::SessionMessage first;
    grpc::Status status;
    std::unique_ptr<grpc::ClientAsyncReader<api::SessionMessage>> reader;
  };
  enum Op : std::uintptr_t { op_started = 0, op_read = 1, op_finished = 2 };
  auto tag = [](int i, Op op) {
    return reinterpret_cast<void*>(static_cast<std::uintptr_t>(i) * 4 + op);
  };
  std::vector<std::shared_ptr<grpc::Channel>> channels;
  std::vector<std::unique_ptr<api::Dispatcher::Stub>> stubs;
  for (int c = 0; c < kChannels; ++c) {
    channels.push_back(channel_to(server, /*own_connection=*/true));
    stubs.push_back(api::Dispatcher::NewStub(channels.back()));
  }
  grpc::CompletionQueue cq;
  std::vector<std::unique_ptr<Call>> calls(kSessions);
  for (int i = 0; i < kSessions; ++i) {
    calls[i] = std::make_unique<Call>();
    calls[i]->ctx.AddMetadata("node-id", "leak-" + std::to_string(i));
    api::SessionRequest req;
    req.mutable_description()->set_hostname("leak-" + std::to_string(i));
    calls[i]->reader =
        stubs[i % kChannels]->AsyncSession(&calls[i]->ctx, req, &cq, tag(i, op_started));
  }
  auto next = [&](int& index, Op& op, bool& ok) {
    void* t;
    auto st = cq.AsyncNext(&t, &ok, std::chrono::system_clock::now() + 30s);
    if (st != grpc::CompletionQueue::GOT_EVENT) return false;
    auto v = reinterpret_cast<std::uintptr_t>(t);
    index = static_cast<int>(v / 4);
    op = static_cast<Op>(v % 4);
    return true;
  };
  int first_messages = 0;
  while (first_messages < kSessions) {
    int i;
    Op op;
    bool ok;
    ASSERT_TRUE(next(i, op, ok)) << first_messages << " sessions started";
    ASSERT_TRUE(ok) << "session " << i << " op " << op;
    if (op == op_started) {
      calls[i]->reader->Read(&calls[i]->first, tag(i, op_read));
    } else {
      ASSERT_EQ(op, op_read);
      ASSERT_EQ(calls[i]->first.node().id(), "leak-" + std::to_string(i));
      ++first_messages;
    }
  }
  EXPECT_EQ(server.call([&] { return server.server().dispatcher().open_sessions(); }),
            static_cast<std::size_t>(kSessions));
  EXPECT_EQ(server.call([&] { return server.server().store().watcher_count(); }),
            baseline + kSessions);

  // Half are cancelled (RST_STREAM); the other half vanish with their connections.
  int cancelled = 0;
  for (int i = 0; i < kSessions; ++i) {
    if (i % kChannels < kChannels / 2) {
      calls[i]->ctx.TryCancel();
      calls[i]->reader->Finish(&calls[i]->status, tag(i, op_finished));
      ++cancelled;
    }
  }
  while (cancelled > 0) {
    int i;
    Op op;
    bool ok;
    ASSERT_TRUE(next(i, op, ok));
    ASSERT_EQ(op, op_finished);
    EXPECT_EQ(calls[i]->status.error_code(), grpc::StatusCode::CANCELLED);
    --cancelled;
  }
  for (int i = 0; i < kSessions; ++i) {
    if (i % kChannels >= kChannels / 2) calls[i].reset();  // unfinished: grpc++ cancels it
  }
  for (int c = kChannels / 2; c < kChannels; ++c) {
    stubs[c].reset();
    channels[c].reset();
  }

  EXPECT_TRUE(server.eventually(
      [&] {
        auto& s = server.server();
        return s.dispatcher().open_sessions() == 0 && s.store().watcher_count() == baseline &&
               s.dispatcher().cluster_watchers() == 0 && s.grpc().active_calls() == 0;
      },
      20s))
      << "open sessions "
      << server.call([&] { return server.server().dispatcher().open_sessions(); }) << ", watchers "
      << server.call([&] { return server.server().store().watcher_count(); }) << " (baseline "
      << baseline << ")";
  // Registrations outlive their streams until heartbeat expiry.
  EXPECT_EQ(server.call([&] { return server.server().dispatcher().registered_nodes(); }),
            static_cast<std::size_t>(kSessions));

  calls.clear();
  stubs.clear();
  channels.clear();
  cq.Shutdown();
  void* t;
  bool ok;
  while (cq.Next(&t, &ok)) {
  }
  // Every coroutine, timer and socket must be gone for stop() to succeed.
  EXPECT_TRUE(server.stop());
  EXPECT_EQ(server.server().wheel().armed_count(), 0u);
  EXPECT_LT(Clock::now() - t0, 30s);
}

}  // namespace
