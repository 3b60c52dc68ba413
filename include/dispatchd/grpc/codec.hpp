#pragma once
// The gRPC message framing: a 1-byte compressed flag, a 4-byte big-endian length, the payload.

#include <google/protobuf/message_lite.h>

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "dispatchd/grpc/status.hpp"

namespace dispatchd::grpc {

inline constexpr std::size_t kPrefixSize = 5;
inline constexpr std::size_t kDefaultMaxMessageSize = 4 * 1024 * 1024;

// Incremental decoder: feed bytes as DATA frames deliver them, split anywhere.
class MessageDecoder {
 public:
  explicit MessageDecoder(std::size_t max_message_size = kDefaultMaxMessageSize)
      : max_(max_message_size) {}

  enum class Result { need_more, message, error };

  // Consumes bytes from `data` (advancing it) until one message is complete or an error is
  // found. On `message`, take() returns the payload. On `error`, status() says why; the decoder
  // stays in error.
  Result feed(std::span<const std::uint8_t>& data);
  std::string take() { return std::move(payload_); }
  const Status& status() const noexcept { return status_; }
  // Bytes of a message that has started but not finished (for "truncated at END_STREAM").
  bool mid_message() const noexcept { return have_prefix_ > 0 || have_payload_; }
  std::size_t messages() const noexcept { return messages_; }

 private:
  std::size_t max_;
  std::uint8_t prefix_[kPrefixSize]{};
  std::size_t have_prefix_ = 0;
  bool have_payload_ = false;
  std::uint32_t length_ = 0;
  std::string payload_;
  Status status_;
  bool failed_ = false;
  std::size_t messages_ = 0;
};

// Prefix + serialized message in one buffer.
std::string encode_message(const google::protobuf::MessageLite& msg);
void write_prefix(std::uint8_t* out, std::uint32_t length, bool compressed = false);
// Prefix + an already serialized payload (a proxy passing a message on).
std::string frame_payload(std::string_view payload);

}  // namespace dispatchd::grpc
