#include "dispatchd/auth/utf8.hpp"

#include <cstddef>

namespace dispatchd::auth {

// Well-formed UTF-8 as the Unicode standard defines it (and Go's utf8.ValidString checks it):
// the shortest encoding of a code point in 0..U+D7FF or U+E000..U+10FFFF. The lead byte gives
// the length; every continuation byte is 80..BF, except that the first one's range is narrowed
// after four lead bytes, which is what rules out the three kinds of ill-formed sequences that a
// check of the bit patterns alone lets through:
//   E0 followed by 80..9F   an overlong 3-byte form (below U+0800)
//   ED followed by A0..BF   a surrogate (U+D800..U+DFFF)
//   F0 followed by 80..8F   an overlong 4-byte form (below U+10000)
//   F4 followed by 90..BF   above U+10FFFF
// and lead bytes C0, C1 (overlong 2-byte forms) and F5..FF (above U+10FFFF, or no UTF-8 at
// all) are never valid.
bool valid_utf8(std::string_view s) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const auto* const end = p + s.size();
  while (p != end) {
    const unsigned char lead = *p;
    if (lead < 0x80) {
      ++p;
      continue;
    }
    std::size_t continuations = 0;
    unsigned char first_min = 0x80;
    unsigned char first_max = 0xbf;
    if (lead >= 0xc2 && lead <= 0xdf) {
      continuations = 1;
    } else if (lead >= 0xe0 && lead <= 0xef) {
      continuations = 2;
      if (lead == 0xe0) first_min = 0xa0;
      if (lead == 0xed) first_max = 0x9f;
    } else if (lead >= 0xf0 && lead <= 0xf4) {
      continuations = 3;
      if (lead == 0xf0) first_min = 0x90;
      if (lead == 0xf4) first_max = 0x8f;
    } else {
      return false;  // a continuation byte without a lead, C0, C1 or F5..FF
    }
    if (static_cast<std::size_t>(end - p) <= continuations) return false;
    if (p[1] < first_min || p[1] > first_max) return false;
    for (std::size_t k = 2; k <= continuations; ++k) {
      if (p[k] < 0x80 || p[k] > 0xbf) return false;
    }
    p += continuations + 1;
  }
  return true;
}

}  // namespace dispatchd::auth
