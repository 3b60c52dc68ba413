// nghttp2's frame buffer in pages of our own: what is resident, when it goes back to the kernel,
// and that the session works across a release.

#include "dispatchd/h2/frame_memory.hpp"

#include <gtest/gtest.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "grpc/health/v1/health.pb.h"
#include "support/raw_client.hpp"
#include "support/test_server.hpp"
#include "support/test_service.hpp"

namespace {

using dispatchd::h2::FrameMemory;
using dispatchd::h2::FramePool;

const std::size_t kPage = static_cast<std::size_t>(sysconf(_SC_PAGESIZE));

// Pages of [p, p + n) that are resident.
std::size_t resident_pages(const void* p, std::size_t n) {
  std::vector<unsigned char> v((n + kPage - 1) / kPage);
  EXPECT_EQ(mincore(const_cast<void*>(p), n, v.data()), 0) << std::strerror(errno);
  std::size_t r = 0;
  for (unsigned char c : v)
    r += c & 1;
  return r;
}

TEST(FramePoolTest, SlotsArePageAlignedAndOnlyWrittenPagesAreResident) {
  FramePool pool;
  void* p = pool.allocate(16394);
  ASSERT_NE(p, nullptr);
  EXPECT_EQ(reinterpret_cast<std::uintptr_t>(p) % kPage, 0u);
  EXPECT_TRUE(pool.owns(p));
  EXPECT_TRUE(pool.owns(static_cast<char*>(p) + 16393));
  int on_stack = 0;
  EXPECT_FALSE(pool.owns(&on_stack));
  EXPECT_EQ(resident_pages(p, FramePool::kSlotBytes), 0u);
  std::memset(p, 0xab, 100);
  EXPECT_EQ(resident_pages(p, FramePool::kSlotBytes), 1u);
  pool.release_pages(p);
  EXPECT_EQ(resident_pages(p, FramePool::kSlotBytes), 0u);
  EXPECT_EQ(static_cast<unsigned char*>(p)[0], 0u);  // released pages read as zeros
  EXPECT_EQ(pool.slots_in_use(), 1u);
  pool.deallocate(p);
  EXPECT_EQ(pool.slots_in_use(), 0u);
}

TEST(FramePoolTest, FreedSlotsAreReusedCleanAndMappingsGrow) {
  FramePool pool;
  std::vector<void*> slots;
  for (std::size_t i = 0; i < FramePool::kSlotsPerMapping + 1; ++i) {
    slots.push_back(pool.allocate(FramePool::kSlotBytes));
    ASSERT_NE(slots.back(), nullptr);
    std::memset(slots.back(), 1, FramePool::kSlotBytes);
  }
  EXPECT_EQ(pool.slots_mapped(), 2 * FramePool::kSlotsPerMapping);
  EXPECT_EQ(pool.allocate(FramePool::kSlotBytes + 1), nullptr);
  void* last = slots.back();
  pool.deallocate(last);
  EXPECT_EQ(resident_pages(last, FramePool::kSlotBytes), 0u);
  void* again = pool.allocate(100);
  EXPECT_EQ(again, last);
  EXPECT_EQ(static_cast<unsigned char*>(again)[FramePool::kSlotBytes - 1], 0u);
  slots.back() = again;
  for (void* p : slots)
    pool.deallocate(p);
  EXPECT_EQ(pool.slots_in_use(), 0u);
}

// A real nghttp2 session on FrameMemory: its frame buffer is a pool slot, written pages go back on
// release_idle, and frames serialised after a release are intact.
TEST(FrameMemoryTest, SessionFrameBufferIsReleasedWhileIdleAndStillWorks) {
  FrameMemory mem;
  nghttp2_session_callbacks* cbs = nullptr;
  nghttp2_session_callbacks_new(&cbs);
  nghttp2_session* session = nullptr;
  ASSERT_EQ(nghttp2_session_client_new3(&session, cbs, nullptr, nullptr, mem.nghttp2()), 0);
  nghttp2_session_callbacks_del(cbs);
  const void* buf = mem.frame_buffer();
  ASSERT_NE(buf, nullptr);
  EXPECT_TRUE(FramePool::local().owns(buf));
  EXPECT_FALSE(mem.dirty());
  EXPECT_FALSE(mem.release_idle());  // nothing written yet

  auto send_all = [&] {
    std::string out;
    const std::uint8_t* data = nullptr;
    for (ssize_t n; (n = nghttp2_session_mem_send(session, &data)) > 0;) {
      mem.note_written();
      out.append(reinterpret_cast<const char*>(data), static_cast<std::size_t>(n));
    }
    return out;
  };
  nghttp2_submit_settings(session, NGHTTP2_FLAG_NONE, nullptr, 0);
  std::string first = send_all();
  ASSERT_GE(first.size(), 24u + 9u);  // preface + SETTINGS
  EXPECT_TRUE(mem.dirty());
  EXPECT_GE(resident_pages(buf, FramePool::kSlotBytes), 1u);
  EXPECT_TRUE(mem.release_idle());
  EXPECT_EQ(resident_pages(buf, FramePool::kSlotBytes), 0u);
  EXPECT_FALSE(mem.dirty());

  const std::uint8_t opaque[8] = {1, 2, 3, 4, 5, 6, 7, 8};
  nghttp2_submit_ping(session, NGHTTP2_FLAG_NONE, opaque);
  std::string ping = send_all();
  ASSERT_EQ(ping.size(), 17u);
  EXPECT_EQ(static_cast<unsigned char>(ping[3]), NGHTTP2_PING);
  EXPECT_EQ(ping.substr(9), std::string(reinterpret_cast<const char*>(opaque), 8));
  nghttp2_session_del(session);
  EXPECT_EQ(mem.frame_buffer(), nullptr);
}

// Only the session's frame buffer takes a slot: later buffers of that size (a huge header block)
// are short-lived and come from malloc, zeroed where calloc is asked for.
TEST(FrameMemoryTest, OnlyTheFirstFrameSizedAllocationTakesASlot) {
  FrameMemory mem;
  nghttp2_mem* m = mem.nghttp2();
  void* small = m->malloc(100, m->mem_user_data);
  EXPECT_FALSE(FramePool::local().owns(small));
  void* first = m->realloc(nullptr, 16394, m->mem_user_data);
  EXPECT_TRUE(FramePool::local().owns(first));
  EXPECT_EQ(mem.frame_buffer(), first);
  void* second = m->malloc(16394, m->mem_user_data);
  EXPECT_FALSE(FramePool::local().owns(second));
  std::memset(second, 0xff, 16394);
  m->free(second, m->mem_user_data);
  auto* zeroed = static_cast<unsigned char*>(m->calloc(1, 16394, m->mem_user_data));
  EXPECT_FALSE(FramePool::local().owns(zeroed));
  EXPECT_EQ(std::count(zeroed, zeroed + 16394, 0), 16394);
  m->free(zeroed, m->mem_user_data);
  const std::size_t in_use = FramePool::local().slots_in_use();
  m->free(first, m->mem_user_data);
  EXPECT_EQ(FramePool::local().slots_in_use(), in_use - 1);
  EXPECT_EQ(mem.frame_buffer(), nullptr);
  m->free(small, m->mem_user_data);
}

// The server gives an idle connection's frame buffer back, and serves it normally afterwards.
TEST(FrameMemoryTest, ServerReleasesIdleConnectionsFrameBuffer) {
  auto options = dispatchd::test::TestServer::default_options();
  options.h2.frame_release_delay = std::chrono::milliseconds(20);
  dispatchd::test::TestServiceState state;
  dispatchd::test::TestServer server(
      options, [&](dispatchd::app::Server& s) { add_test_service(s.grpc(), state); });
  auto releases = [&] { return server.call([] { return FramePool::local().releases(); }); };
  const std::uint64_t before = releases();

  grpc::health::v1::HealthCheckRequest req;
  const std::string body = dispatchd::test::grpc_frame(req.SerializeAsString());
  dispatchd::test::RawClient c(server.port());
  c.start();
  const auto& r1 = c.wait(c.grpc_call("/grpc.health.v1.Health/Check", body));
  ASSERT_TRUE(r1.closed);
  EXPECT_EQ(r1.grpc_status(), 0);
  ASSERT_TRUE(server.eventually([&] { return FramePool::local().releases() > before; },
                                std::chrono::seconds(10)));
  const std::uint64_t after_idle = releases();

  // Served normally after the release; and released again once idle.
  const auto& r2 = c.wait(c.grpc_call("/grpc.health.v1.Health/Check", body));
  ASSERT_TRUE(r2.closed);
  EXPECT_EQ(r2.grpc_status(), 0);
  EXPECT_EQ(r2.data, r1.data);
  ASSERT_TRUE(server.eventually([&] { return FramePool::local().releases() > after_idle; },
                                std::chrono::seconds(10)));
}

}  // namespace
