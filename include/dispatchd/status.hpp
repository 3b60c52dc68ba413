#pragma once
// gRPC status codes and the Status value carried by std::expected across layers. Below every
// layer: the store, the gRPC layer and dispatchctl use it without linking one another.

#include <cstdint>
#include <string>
#include <string_view>

namespace dispatchd {

enum class StatusCode : int {
  ok = 0,
  cancelled = 1,
  unknown = 2,
  invalid_argument = 3,
  deadline_exceeded = 4,
  not_found = 5,
  already_exists = 6,
  permission_denied = 7,
  resource_exhausted = 8,
  failed_precondition = 9,
  aborted = 10,
  out_of_range = 11,
  unimplemented = 12,
  internal = 13,
  unavailable = 14,
  data_loss = 15,
  unauthenticated = 16,
};

// grpc-go's names ("PermissionDenied"), which its error strings and go-grpc-prometheus labels use;
// "Code(N)" outside the known range.
std::string status_code_name(StatusCode c);
// The protocol's names ("PERMISSION_DENIED"), as grpc++ and the gRPC docs spell them;
// "CODE(N)" outside the known range.
std::string status_code_constant(int code);

class Status {
 public:
  Status() = default;
  Status(StatusCode code, std::string message) : code_(code), message_(std::move(message)) {}

  static Status ok() { return {}; }
  bool is_ok() const noexcept { return code_ == StatusCode::ok; }
  StatusCode code() const noexcept { return code_; }
  const std::string& message() const noexcept { return message_; }
  // "rpc error: code = PermissionDenied desc = ..." as grpc-go renders a status error.
  std::string go_error_string() const;

  friend bool operator==(const Status&, const Status&) = default;

 private:
  StatusCode code_ = StatusCode::ok;
  std::string message_;
};

}  // namespace dispatchd
