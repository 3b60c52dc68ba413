#pragma once

// Memory for nghttp2's per-session frame buffer.
//
// Every nghttp2 session allocates, when it is created, one buffer as big as a whole frame
// (16,394 bytes) that it serialises outgoing frames into, and keeps it until the session ends. An
// agent's connection writes only small frames, so only the buffer's first page is ever written;
// but where malloc hands out memory that earlier work already wrote (a TLS handshake, a closed
// connection), all of it is resident: about 16 KB per idle connection. So that buffer comes from a
// page-aligned slot of our own mappings:
//
//  - the pages of a slot that nothing wrote are never resident;
//  - a freed slot's pages go back to the kernel (MADV_DONTNEED) before the slot is reused;
//  - when a connection has had no frame pending in its buffer for a while, it gives the written
//    pages back too (FrameMemory::release_idle), so an idle connection holds none of them; its
//    next frame faults in one zeroed page.
//
// One pool per thread (FramePool::local()); a connection allocates, frees and releases on the
// thread it was created on.

#include <nghttp2/nghttp2.h>

#include <cstddef>
#include <cstdint>
#include <vector>

namespace dispatchd::h2 {

class FramePool {
 public:
  // The sizes FrameMemory takes from the pool.
  static constexpr std::size_t kMinBytes = 12 * 1024;
  static constexpr std::size_t kSlotBytes = 20 * 1024;  // five pages: a whole frame and its header
  static constexpr std::size_t kSlotsPerMapping = 256;  // 5 MiB of address space per mapping

  FramePool() = default;
  FramePool(const FramePool&) = delete;
  FramePool& operator=(const FramePool&) = delete;
  ~FramePool();

  // The calling thread's pool.
  static FramePool& local();

  // A page-aligned slot for n <= kSlotBytes bytes (nullptr if the kernel refuses a mapping).
  void* allocate(std::size_t n) noexcept;
  // p from allocate(); its pages go back to the kernel now.
  void deallocate(void* p) noexcept;
  bool owns(const void* p) const noexcept;
  // p's content is not needed any more: its pages go back to the kernel (it stays allocated and
  // reads as zeros).
  void release_pages(void* p) noexcept;

  std::size_t slots_in_use() const noexcept { return in_use_; }
  std::size_t slots_mapped() const noexcept { return mappings_.size() * kSlotsPerMapping; }
  std::uint64_t releases() const noexcept { return releases_; }

 private:
  std::vector<std::uint8_t*> mappings_;  // sorted by address
  std::vector<void*> free_;
  std::size_t in_use_ = 0;
  std::uint64_t releases_ = 0;
};

// The nghttp2_mem of one session: malloc for everything but the frame buffer (the session's first
// allocation of 12-20 KiB), which comes from the thread's FramePool; remembered so that the
// connection can give its pages back while it is idle.
class FrameMemory {
 public:
  FrameMemory() noexcept;
  FrameMemory(const FrameMemory&) = delete;
  FrameMemory& operator=(const FrameMemory&) = delete;

  // For nghttp2_session_*_new3; nghttp2 copies it. This object must outlive the session.
  nghttp2_mem* nghttp2() noexcept { return &mem_; }

  // Call only when nghttp2 has no frame pending in its buffer: after nghttp2_session_mem_send
  // returned 0. Drops the buffer's pages if any were written since the last release; returns
  // whether it did.
  bool release_idle() noexcept;
  // nghttp2_session_mem_send returned a frame: the buffer's pages were written.
  void note_written() noexcept { dirty_ = framebuf_ != nullptr; }
  bool dirty() const noexcept { return dirty_; }
  const void* frame_buffer() const noexcept { return framebuf_; }

 private:
  void* take_slot(std::size_t size) noexcept;
  static void* on_malloc(std::size_t size, void* self);
  static void on_free(void* ptr, void* self);
  static void* on_calloc(std::size_t nmemb, std::size_t size, void* self);
  static void* on_realloc(void* ptr, std::size_t size, void* self);

  FramePool& pool_;
  void* framebuf_ = nullptr;
  bool had_framebuf_ = false;
  bool dirty_ = false;
  nghttp2_mem mem_;
};

}  // namespace dispatchd::h2
