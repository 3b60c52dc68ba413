#pragma once
// The duration parser lives in the command-line library (dispatchd/cli/duration.hpp); these
// names stay for the code that knows it as app:: (the fleet simulator, the fuzz targets).

#include "dispatchd/cli/duration.hpp"

namespace dispatchd::app {

using cli::format_duration;
using cli::parse_duration;

}  // namespace dispatchd::app
