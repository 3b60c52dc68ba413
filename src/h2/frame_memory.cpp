#include "dispatchd/h2/frame_memory.hpp"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <functional>

namespace dispatchd::h2 {

namespace {
constexpr std::size_t kMappingBytes = FramePool::kSlotBytes * FramePool::kSlotsPerMapping;
}

FramePool::~FramePool() {
  for (std::uint8_t* m : mappings_)
    munmap(m, kMappingBytes);
}

FramePool& FramePool::local() {
  thread_local FramePool pool;
  return pool;
}

void* FramePool::allocate(std::size_t n) noexcept {
  if (n > kSlotBytes) return nullptr;
  if (free_.empty()) {
    void* m =
        mmap(nullptr, kMappingBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) return nullptr;
    auto* base = static_cast<std::uint8_t*>(m);
    mappings_.insert(std::upper_bound(mappings_.begin(), mappings_.end(), base), base);
    free_.reserve(free_.size() + kSlotsPerMapping);
    // Handed out from the lowest address up.
    for (std::size_t i = kSlotsPerMapping; i-- > 0;)
      free_.push_back(base + i * kSlotBytes);
  }
  void* p = free_.back();
  free_.pop_back();
  ++in_use_;
  return p;
}

bool FramePool::owns(const void* p) const noexcept {
  auto* q = static_cast<const std::uint8_t*>(p);
  auto it = std::upper_bound(mappings_.begin(), mappings_.end(), q,
                             [](const std::uint8_t* a, const std::uint8_t* b) {
                               return std::less<const std::uint8_t*>()(a, b);
                             });
  if (it == mappings_.begin()) return false;
  const std::uint8_t* base = *std::prev(it);
  return q < base + kMappingBytes;
}

void FramePool::release_pages(void* p) noexcept {
  madvise(p, kSlotBytes, MADV_DONTNEED);
  ++releases_;
}

void FramePool::deallocate(void* p) noexcept {
  if (!p) return;
  release_pages(p);
  free_.push_back(p);
  --in_use_;
}

FrameMemory::FrameMemory() noexcept
    : pool_(FramePool::local()), mem_{this, &on_malloc, &on_free, &on_calloc, &on_realloc} {}

bool FrameMemory::release_idle() noexcept {
  if (!dirty_ || !framebuf_) return false;
  pool_.release_pages(framebuf_);
  dirty_ = false;
  return true;
}

void* FrameMemory::take_slot(std::size_t size) noexcept {
  // Only the frame buffer itself (the session's first allocation of that size): other buffers of
  // that size are short-lived (a huge header block), and a slot costs an madvise when it is freed.
  if (had_framebuf_ || size < FramePool::kMinBytes || size > FramePool::kSlotBytes) return nullptr;
  void* p = pool_.allocate(size);
  if (p) {
    framebuf_ = p;
    had_framebuf_ = true;
  }
  return p;
}

void* FrameMemory::on_malloc(std::size_t size, void* self) {
  if (void* p = static_cast<FrameMemory*>(self)->take_slot(size)) return p;
  return std::malloc(size);
}

void FrameMemory::on_free(void* ptr, void* self) {
  if (!ptr) return;
  auto& m = *static_cast<FrameMemory*>(self);
  if (ptr == m.framebuf_) {  // the one pool allocation
    m.framebuf_ = nullptr;
    m.dirty_ = false;
    m.pool_.deallocate(ptr);
    return;
  }
  std::free(ptr);
}

void* FrameMemory::on_calloc(std::size_t nmemb, std::size_t size, void* self) {
  if (size != 0 && nmemb > SIZE_MAX / size) return nullptr;
  // Pool slots are fresh or released pages: they read as zeros already.
  if (void* p = static_cast<FrameMemory*>(self)->take_slot(nmemb * size)) return p;
  return std::calloc(nmemb, size);
}

void* FrameMemory::on_realloc(void* ptr, std::size_t size, void* self) {
  auto& m = *static_cast<FrameMemory*>(self);
  if (!ptr) return on_malloc(size, self);
  if (ptr != m.framebuf_) return std::realloc(ptr, size);
  if (size <= FramePool::kSlotBytes) return ptr;  // the slot already has room
  void* q = std::malloc(size);
  if (!q) return nullptr;
  std::memcpy(q, ptr, FramePool::kSlotBytes);
  on_free(ptr, self);
  return q;
}

}  // namespace dispatchd::h2
