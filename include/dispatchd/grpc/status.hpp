#pragma once
// The gRPC layer's names for the status type, which lives below every layer
// (dispatchd/status.hpp).

#include "dispatchd/status.hpp"

namespace dispatchd::grpc {

using dispatchd::Status;
using dispatchd::status_code_constant;
using dispatchd::status_code_name;
using dispatchd::StatusCode;

}  // namespace dispatchd::grpc
