// The server's own heap counter (heap_count.cpp): live bytes and a resettable high-water mark.
#pragma once

#include <cstddef>

namespace tlslibs {

size_t heap_live();
size_t heap_peak();
void heap_reset_peak();

}  // namespace tlslibs
