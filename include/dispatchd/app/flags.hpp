#pragma once
// The flag table lives in the command-line library (dispatchd/cli/flags.hpp); this name stays
// for the code that knows it as app::Flags (the fleet simulator).

#include "dispatchd/cli/flags.hpp"

namespace dispatchd::app {

using Flags = cli::Flags;

}  // namespace dispatchd::app
