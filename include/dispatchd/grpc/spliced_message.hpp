#pragma once
// A gRPC message (its 5-byte length prefix included) put together from fields encoded here and a
// tail of fields encoded once elsewhere and shared, by reference, between many messages. The
// Dispatcher sends every Session the same manager list, keys and root CA this way without
// copying them per session. Protobuf allows it: an encoded message is the concatenation of its
// encoded fields, and a parser takes them in any order.

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "dispatchd/h2/stream.hpp"

namespace google::protobuf {
class MessageLite;
}

namespace dispatchd::grpc {

class SplicedMessage {
 public:
  // Room for `n` bytes of fields: one allocation for the whole head.
  SplicedMessage& reserve(std::size_t n);
  // A length-delimited field (string, bytes) numbered `number`.
  SplicedMessage& bytes_field(int number, std::string_view value);
  // An embedded message field numbered `number`.
  SplicedMessage& message_field(int number, const google::protobuf::MessageLite& m);

  // The message: the fields above, then `tail` (already encoded fields of the same message type;
  // null or empty for none), as DATA segments ready for a stream. Call it once, last.
  std::vector<h2::Segment> finish(std::shared_ptr<const std::string> tail) {
    return frame(head_, std::move(tail));
  }
  // The fields added so far, without a prefix: a run a caller keeps and frames again with each
  // new tail (a Session's own fields change far less often than the cluster's).
  std::string take_fields() && { return std::move(head_); }

  // One message of `fields` (copied, after the prefix, into one allocation) and `tail` (by
  // reference).
  static std::vector<h2::Segment> frame(std::string_view fields,
                                        std::shared_ptr<const std::string> tail);

 private:
  void tag_and_length(int number, std::size_t length);
  std::string head_;
};

}  // namespace dispatchd::grpc
