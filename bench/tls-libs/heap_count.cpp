// Live heap bytes of the whole process, counted in malloc's own block sizes, with a resettable
// high-water mark: the server defines malloc and friends over glibc's, so the TLS libraries'
// allocations are counted too. Single-threaded by design (the server is).
#include "heap_count.hpp"

#include <malloc.h>

#include <cstddef>

extern "C" {
void* __libc_malloc(size_t size);
void* __libc_calloc(size_t count, size_t size);
void* __libc_realloc(void* ptr, size_t size);
void* __libc_memalign(size_t alignment, size_t size);
void __libc_free(void* ptr);
}

namespace {

size_t live_bytes = 0;
size_t peak_bytes = 0;

void* counted(void* ptr) {
  if (ptr != nullptr) {
    live_bytes += malloc_usable_size(ptr);
    if (live_bytes > peak_bytes) peak_bytes = live_bytes;
  }
  return ptr;
}

void uncount(void* ptr) {
  if (ptr != nullptr) live_bytes -= malloc_usable_size(ptr);
}

}  // namespace

namespace tlslibs {

size_t heap_live() {
  return live_bytes;
}
size_t heap_peak() {
  return peak_bytes;
}
void heap_reset_peak() {
  peak_bytes = live_bytes;
}

}  // namespace tlslibs

extern "C" {

void* malloc(size_t size) noexcept {
  return counted(__libc_malloc(size));
}
void* calloc(size_t count, size_t size) noexcept {
  return counted(__libc_calloc(count, size));
}
void free(void* ptr) noexcept {
  uncount(ptr);
  __libc_free(ptr);
}
void* realloc(void* ptr, size_t size) noexcept {
  size_t old = ptr != nullptr ? malloc_usable_size(ptr) : 0;
  void* moved = __libc_realloc(ptr, size);
  if (moved != nullptr || size == 0) live_bytes -= old;
  return counted(moved);
}
// glibc's own reallocarray calls its internal realloc, past the one above.
void* reallocarray(void* ptr, size_t count, size_t size) noexcept {
  if (size != 0 && count > static_cast<size_t>(-1) / size) return nullptr;
  return realloc(ptr, count * size);
}
void* memalign(size_t alignment, size_t size) noexcept {
  return counted(__libc_memalign(alignment, size));
}
void* aligned_alloc(size_t alignment, size_t size) noexcept {
  return counted(__libc_memalign(alignment, size));
}
int posix_memalign(void** out, size_t alignment, size_t size) noexcept {
  void* ptr = counted(__libc_memalign(alignment, size));
  if (ptr == nullptr) return 12;  // ENOMEM
  *out = ptr;
  return 0;
}

}  // extern "C"
