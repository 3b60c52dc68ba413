#include "dispatchd/grpc/spliced_message.hpp"

#include <google/protobuf/message_lite.h>

#include <cstdint>
#include <cstring>

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

SplicedMessage& SplicedMessage::reserve(std::size_t n) {
  head_.reserve(n);
  return *this;
}

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

std::vector<h2::Segment> SplicedMessage::frame(std::string_view fields,
                                               std::shared_ptr<const std::string> tail) {
  std::size_t tail_size = tail ? tail->size() : 0;
  std::size_t head_size = kPrefixSize + fields.size();
  auto head = std::make_shared_for_overwrite<std::uint8_t[]>(head_size);
  write_prefix(head.get(), static_cast<std::uint32_t>(fields.size() + tail_size));
  std::memcpy(head.get() + kPrefixSize, fields.data(), fields.size());
  std::vector<h2::Segment> pieces;
  pieces.reserve(2);
  h2::Segment first;
  first.data = head.get();
  first.size = head_size;
  first.keep = std::move(head);
  pieces.push_back(std::move(first));
  if (tail_size > 0) pieces.push_back(h2::Segment::shared(std::move(tail)));
  return pieces;
}

}  // namespace dispatchd::grpc
