#pragma once
// Header lists as nghttp2_nv arrays (nghttp2 copies names and values on submit).

#include <nghttp2/nghttp2.h>

#include <span>
#include <vector>

#include "dispatchd/h2/stream.hpp"

namespace dispatchd::h2 {

class NvList {
 public:
  explicit NvList(std::span<const Header> headers) {
    nv_.reserve(headers.size());
    for (const auto& h : headers) {
      nv_.push_back(nghttp2_nv{
          const_cast<std::uint8_t*>(reinterpret_cast<const std::uint8_t*>(h.name.data())),
          const_cast<std::uint8_t*>(reinterpret_cast<const std::uint8_t*>(h.value.data())),
          h.name.size(), h.value.size(), NGHTTP2_NV_FLAG_NONE});
    }
  }
  const nghttp2_nv* data() const noexcept { return nv_.data(); }
  std::size_t size() const noexcept { return nv_.size(); }

 private:
  std::vector<nghttp2_nv> nv_;
};

}  // namespace dispatchd::h2
