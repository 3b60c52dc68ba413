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
  SplicedMessage();

  // A length-delimited field (string, bytes) numbered `number`.
  SplicedMessage& bytes_field(int number, std::string_view value);
  // An embedded message field numbered `number`.
  SplicedMessage& message_field(int number, const google::protobuf::MessageLite& m);

  // The message: the fields above, then `tail` (already encoded fields of the same message type;
  // null or empty for none), as DATA segments ready for a stream. Call it once, last.
  std::vector<h2::Segment> finish(std::shared_ptr<const std::string> tail);

 private:
  void tag_and_length(int number, std::size_t length);
  std::string head_;
};

}  // namespace dispatchd::grpc
