#include "dispatchd/grpc/codec.hpp"

#include <algorithm>

namespace dispatchd::grpc {

MessageDecoder::Result MessageDecoder::feed(std::span<const std::uint8_t>& data) {
  if (failed_) return Result::error;
  while (!data.empty()) {
    if (!have_payload_) {
      std::size_t n = std::min(kPrefixSize - have_prefix_, data.size());
      std::copy_n(data.begin(), n, prefix_ + have_prefix_);
      have_prefix_ += n;
      data = data.subspan(n);
      if (have_prefix_ < kPrefixSize) return Result::need_more;
      if (prefix_[0] > 1) {
        failed_ = true;
        status_ = Status(StatusCode::internal,
                         "grpc: invalid message compression flag " + std::to_string(prefix_[0]));
        return Result::error;
      }
      if (prefix_[0] == 1) {
        failed_ = true;
        status_ = Status(StatusCode::unimplemented,
                         "grpc: received a compressed message, but compression is not supported "
                         "(only identity encoding)");
        return Result::error;
      }
      length_ = (std::uint32_t{prefix_[1]} << 24) | (std::uint32_t{prefix_[2]} << 16) |
                (std::uint32_t{prefix_[3]} << 8) | std::uint32_t{prefix_[4]};
      if (length_ > max_) {
        failed_ = true;
        status_ = Status(StatusCode::resource_exhausted,
                         "grpc: received message larger than max (" + std::to_string(length_) +
                             " vs. " + std::to_string(max_) + ")");
        return Result::error;
      }
      have_payload_ = true;
      payload_.clear();
      // Reserve what has a chance of arriving soon, not what the prefix announces: a peer could
      // announce 4 MiB on every stream and send nothing more.
      payload_.reserve(std::min<std::size_t>(length_, 64 * 1024));
    }
    std::size_t n = std::min<std::size_t>(length_ - payload_.size(), data.size());
    payload_.append(reinterpret_cast<const char*>(data.data()), n);
    data = data.subspan(n);
    if (payload_.size() == length_) {
      have_payload_ = false;
      have_prefix_ = 0;
      ++messages_;
      return Result::message;
    }
  }
  return Result::need_more;
}

void write_prefix(std::uint8_t* out, std::uint32_t length, bool compressed) {
  out[0] = compressed ? 1 : 0;
  out[1] = static_cast<std::uint8_t>(length >> 24);
  out[2] = static_cast<std::uint8_t>(length >> 16);
  out[3] = static_cast<std::uint8_t>(length >> 8);
  out[4] = static_cast<std::uint8_t>(length);
}

std::string encode_message(const google::protobuf::MessageLite& msg) {
  std::size_t size = msg.ByteSizeLong();
  std::string out(kPrefixSize + size, '\0');
  write_prefix(reinterpret_cast<std::uint8_t*>(out.data()), static_cast<std::uint32_t>(size));
  msg.SerializeWithCachedSizesToArray(reinterpret_cast<std::uint8_t*>(out.data()) + kPrefixSize);
  return out;
}

std::string frame_payload(std::string_view payload) {
  std::string out(kPrefixSize + payload.size(), '\0');
  write_prefix(reinterpret_cast<std::uint8_t*>(out.data()),
               static_cast<std::uint32_t>(payload.size()));
  out.replace(kPrefixSize, payload.size(), payload);
  return out;
}

}  // namespace dispatchd::grpc
