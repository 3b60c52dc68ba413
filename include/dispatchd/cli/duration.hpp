#pragma once
// Durations as Docker and SwarmKit users write them (Go's time.ParseDuration): "300ms", "5s",
// "1m30s", "1.5h", "0". Units: ns, us (or µs), ms, s, m, h.

#include <chrono>
#include <optional>
#include <string>
#include <string_view>

namespace dispatchd::cli {

std::optional<std::chrono::nanoseconds> parse_duration(std::string_view s);
// Go's time.Duration.String() form: "5s", "1m30s", "300ms".
std::string format_duration(std::chrono::nanoseconds d);

}  // namespace dispatchd::cli
