#pragma once
// HTTP/1.1 responses of the admin endpoint: what a handler returns, and its serialisation
// (status line, Date, Content-Type, Content-Length, Connection) as the server writes it.

#include <string>
#include <string_view>

namespace dispatchd::admin {

struct Response {
  int status = 200;
  std::string content_type = "text/plain; charset=utf-8";
  std::string body;
};

// A plain-text response with `status` and `body`.
Response error_response(int status, std::string_view body);

// RFC 9110's reason phrase for the statuses the endpoint uses; empty for others.
std::string_view reason_phrase(int status);

// The current time as an HTTP Date field value (IMF-fixdate).
std::string http_date();

// Serialises one response. `head_only`: HEAD, the same fields but no body. `close`: the
// connection ends after it. `keep_alive`: an HTTP/1.0 client asked to keep it open.
void append_response(std::string& out, Response r, std::string_view date, bool head_only,
                     bool close, bool keep_alive);

}  // namespace dispatchd::admin
