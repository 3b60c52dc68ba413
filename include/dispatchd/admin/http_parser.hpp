#pragma once
// HTTP/1.1 request heads (RFC 9112) as the admin endpoint reads them: the request line, header
// fields and the empty line, parsed only once the whole head is buffered, bounded in size, and
// strict where leniency lets requests be smuggled (bare CR, obs-fold, conflicting
// Content-Length, Transfer-Encoding). Bodies are never accepted. Pure functions, no I/O.

#include <cstddef>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace dispatchd::admin {

struct Request {
  std::string method;
  std::string path;       // request target up to '?', not percent-decoded
  std::string query;      // after '?', without it
  int version_minor = 1;  // HTTP/1.<minor>
  // Field names lower-cased, values with surrounding whitespace removed, in arrival order.
  std::vector<std::pair<std::string, std::string>> headers;

  // The first value of header `name` (lower-case), or empty.
  std::string_view header(std::string_view name) const noexcept;
};

// One request head at the start of a buffer, or why there is none yet.
struct ParsedHead {
  enum class State { incomplete, complete, error } state = State::incomplete;
  std::size_t consumed = 0;  // bytes of this request head, terminator included
  Request req;
  bool keep_alive = true;
  int error_status = 0;
  std::string_view error_body;  // static text
};

// Parses one request head at the start of `buf`. Nothing is consumed until the whole head
// (request line, fields, empty line) is there; a head that does not fit in `max_bytes` is an
// error (431), so the caller never buffers more than that for one request. Other errors carry
// the status and body to answer with before closing the connection (the framing of whatever
// follows cannot be trusted).
ParsedHead parse_head(std::string_view buf, std::size_t max_bytes);

// Field values: visible ASCII, obs-text, space and tab. CR, LF, NUL and other controls are
// rejected (a bare CR is how request smuggling starts).
bool is_field_value(std::string_view s);

}  // namespace dispatchd::admin
