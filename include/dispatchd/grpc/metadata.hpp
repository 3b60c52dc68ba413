#pragma once
// Metadata helpers: grpc-timeout, grpc-message percent-encoding, base64 for "-bin" keys.

#include <chrono>
#include <optional>
#include <string>
#include <string_view>

namespace dispatchd::grpc {

// "TimeoutValue TimeoutUnit": at most 8 ASCII digits and one of H M S m u n.
std::optional<std::chrono::nanoseconds> parse_grpc_timeout(std::string_view v);
std::string format_grpc_timeout(std::chrono::nanoseconds d);

// grpc-message: bytes outside 0x20..0x7E and '%' become %XX.
std::string percent_encode(std::string_view s);
std::string percent_decode(std::string_view s);

// Padded or unpadded standard base64 (gRPC accepts both for "-bin" values).
std::optional<std::string> base64_decode(std::string_view s);
std::string base64_encode(std::string_view s);

}  // namespace dispatchd::grpc
