#include "dispatchd/grpc/status.hpp"

#include <array>

namespace dispatchd::grpc {

std::string status_code_name(StatusCode c) {
  // grpc-go's spelling (codes.Code.String()), which its error strings use.
  static constexpr std::array<std::string_view, 17> names = {
      "OK",       "Canceled",       "Unknown",          "InvalidArgument",   "DeadlineExceeded",
      "NotFound", "AlreadyExists",  "PermissionDenied", "ResourceExhausted", "FailedPrecondition",
      "Aborted",  "OutOfRange",     "Unimplemented",    "Internal",          "Unavailable",
      "DataLoss", "Unauthenticated"};
  auto i = static_cast<std::size_t>(c);
  if (i < names.size()) return std::string(names[i]);
  return "Code(" + std::to_string(static_cast<int>(c)) + ")";
}

std::string Status::go_error_string() const {
  return "rpc error: code = " + status_code_name(code_) + " desc = " + message_;
}

}  // namespace dispatchd::grpc
