#include "dispatchd/grpc/spliced_message.hpp"

#include <google/protobuf/message_lite.h>

#include <cstdint>

#include "dispatchd/grpc/codec.hpp"

namespace dispatchd::grpc {

namespace {

constexpr std::uint32_t kLengthDelimited = 2;  // protobuf wire type

void append_varint(std::string& out, std::uint64_t v) {
  while (v >= 0x80) {
    out += static_cast<char>((v & 0x7f) | 0x80);
    v >>= 7;
  }
  out += static_cast<char>(v);
}

}  // namespace

SplicedMessage::SplicedMessage() : head_(kPrefixSize, '\0') {}

void SplicedMessage::tag_and_length(int number, std::size_t length) {
  append_varint(head_, (static_cast<std::uint64_t>(number) << 3) | kLengthDelimited);
  append_varint(head_, length);
}

SplicedMessage& SplicedMessage::bytes_field(int number, std::string_view value) {
  tag_and_length(number, value.size());
  head_.append(value);
  return *this;
}

SplicedMessage& SplicedMessage::message_field(int number, const google::protobuf::MessageLite& m) {
  std::size_t n = m.ByteSizeLong();
  tag_and_length(number, n);
  std::size_t at = head_.size();
  head_.resize(at + n);
  m.SerializeWithCachedSizesToArray(reinterpret_cast<std::uint8_t*>(head_.data() + at));
  return *this;
}

std::vector<h2::Segment> SplicedMessage::finish(std::shared_ptr<const std::string> tail) {
  std::size_t tail_size = tail ? tail->size() : 0;
  std::size_t total = head_.size() - kPrefixSize + tail_size;
  write_prefix(reinterpret_cast<std::uint8_t*>(head_.data()), static_cast<std::uint32_t>(total));
  std::vector<h2::Segment> pieces;
  pieces.push_back(h2::Segment::own(std::move(head_)));
  if (tail_size > 0) pieces.push_back(h2::Segment::shared(std::move(tail)));
  return pieces;
}

}  // namespace dispatchd::grpc
