#include "dispatchd/id.hpp"

#include <sys/random.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <stdexcept>

namespace dispatchd {

namespace {
void random_bytes(std::uint8_t* out, std::size_t n) {
  // Refilled in blocks: one getrandom(2) per 256 IDs, never blocking once the pool is seeded.
  thread_local std::array<std::uint8_t, 17 * 256> pool;
  thread_local std::size_t left = 0;
  while (n > 0) {
    if (left == 0) {
      std::size_t got = 0;
      while (got < pool.size()) {
        ssize_t r = getrandom(pool.data() + got, pool.size() - got, 0);
        if (r <= 0) throw std::runtime_error("getrandom failed");
        got += static_cast<std::size_t>(r);
      }
      left = pool.size();
    }
    std::size_t take = std::min(n, left);
    std::copy_n(pool.data() + (pool.size() - left), take, out);
    // Never hand the same bytes out twice.
    std::fill_n(pool.data() + (pool.size() - left), take, 0);
    left -= take;
    out += take;
    n -= take;
  }
}
}  // namespace

std::string new_id() {
  std::array<std::uint8_t, 17> num;
  random_bytes(num.data(), num.size());
  num[0] |= 0x80;
  static constexpr char digits[] = "0123456789abcdefghijklmnopqrstuvwxyz";
  std::string out;
  // Repeated division of the big-endian number by 36.
  bool nonzero = true;
  while (nonzero) {
    std::uint32_t rem = 0;
    nonzero = false;
    for (auto& b : num) {
      std::uint32_t cur = (rem << 8) | b;
      b = static_cast<std::uint8_t>(cur / 36);
      rem = cur % 36;
      if (b) nonzero = true;
    }
    out.push_back(digits[rem]);
  }
  std::reverse(out.begin(), out.end());
  // 2^135 needs 27 base-36 digits; drop the first, keep 25.
  return out.substr(1, 25);
}

}  // namespace dispatchd
