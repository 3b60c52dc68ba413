#pragma once

#include <string_view>

namespace dispatchd::auth {

// Whether s is well-formed UTF-8. Identity strings end up in proto3 `string` fields, which must
// be UTF-8.
bool valid_utf8(std::string_view s);

}  // namespace dispatchd::auth
