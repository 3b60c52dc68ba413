#include "dispatchd/status.hpp"

#include <array>

namespace dispatchd {

namespace {

struct CodeNames {
  std::string_view go;        // grpc-go's codes.Code.String()
  std::string_view constant;  // the protocol's name
};

constexpr std::array<CodeNames, 17> kNames = {{
    {"OK", "OK"},
    {"Canceled", "CANCELLED"},
    {"Unknown", "UNKNOWN"},
    {"InvalidArgument", "INVALID_ARGUMENT"},
    {"DeadlineExceeded", "DEADLINE_EXCEEDED"},
    {"NotFound", "NOT_FOUND"},
    {"AlreadyExists", "ALREADY_EXISTS"},
    {"PermissionDenied", "PERMISSION_DENIED"},
    {"ResourceExhausted", "RESOURCE_EXHAUSTED"},
    {"FailedPrecondition", "FAILED_PRECONDITION"},
    {"Aborted", "ABORTED"},
    {"OutOfRange", "OUT_OF_RANGE"},
    {"Unimplemented", "UNIMPLEMENTED"},
    {"Internal", "INTERNAL"},
    {"Unavailable", "UNAVAILABLE"},
    {"DataLoss", "DATA_LOSS"},
    {"Unauthenticated", "UNAUTHENTICATED"},
}};

}  // namespace

std::string status_code_name(StatusCode c) {
  auto i = static_cast<std::size_t>(c);
  if (i < kNames.size()) return std::string(kNames[i].go);
  return "Code(" + std::to_string(static_cast<int>(c)) + ")";
}

std::string status_code_constant(int code) {
  if (code >= 0 && static_cast<std::size_t>(code) < kNames.size()) {
    return std::string(kNames[static_cast<std::size_t>(code)].constant);
  }
  return "CODE(" + std::to_string(code) + ")";
}

std::string Status::go_error_string() const {
  return "rpc error: code = " + status_code_name(code_) + " desc = " + message_;
}

}  // namespace dispatchd
