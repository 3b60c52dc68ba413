#include "dispatchd/admin/http_response.hpp"

#include <fmt/format.h>

#include <ctime>
#include <iterator>

#include "dispatchd/admin/http_parser.hpp"
#include "dispatchd/log.hpp"

namespace dispatchd::admin {

std::string_view reason_phrase(int status) {
  switch (status) {
    case 200:
      return "OK";
    case 201:
      return "Created";
    case 202:
      return "Accepted";
    case 204:
      return "No Content";
    case 301:
      return "Moved Permanently";
    case 302:
      return "Found";
    case 304:
      return "Not Modified";
    case 400:
      return "Bad Request";
    case 401:
      return "Unauthorized";
    case 403:
      return "Forbidden";
    case 404:
      return "Not Found";
    case 405:
      return "Method Not Allowed";
    case 408:
      return "Request Timeout";
    case 413:
      return "Content Too Large";
    case 429:
      return "Too Many Requests";
    case 431:
      return "Request Header Fields Too Large";
    case 500:
      return "Internal Server Error";
    case 501:
      return "Not Implemented";
    case 503:
      return "Service Unavailable";
    case 505:
      return "HTTP Version Not Supported";
    default:
      return "";  // the reason phrase is optional; the space before it is not
  }
}

std::string http_date() {
  std::time_t t = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[64];
  auto n = std::strftime(buf, sizeof buf, "%a, %d %b %Y %H:%M:%S GMT", &tm);
  return std::string(buf, n);
}

Response error_response(int status, std::string_view body) {
  Response r;
  r.status = status;
  r.body = body;
  return r;
}

void append_response(std::string& out, Response r, std::string_view date, bool head_only,
                     bool close, bool keep_alive) {
  if (r.status < 200 || r.status > 599) {
    log::warn("admin: handler returned status {}; sending 500", r.status);
    r = error_response(500, "internal server error\n");
  }
  if (!is_field_value(r.content_type) || r.content_type.empty()) {
    log::warn("admin: invalid Content-Type from handler; sending application/octet-stream");
    r.content_type = "application/octet-stream";
  }
  auto o = std::back_inserter(out);
  fmt::format_to(o, "HTTP/1.1 {} {}\r\nDate: {}\r\n", r.status, reason_phrase(r.status), date);
  if (r.status == 405) out += "Allow: GET, HEAD\r\n";
  bool no_content = r.status == 204;  // must carry neither body nor Content-Length
  if (!no_content) {
    fmt::format_to(o, "Content-Type: {}\r\nContent-Length: {}\r\n", r.content_type, r.body.size());
  }
  if (close) {
    out += "Connection: close\r\n";
  } else if (keep_alive) {
    out += "Connection: keep-alive\r\n";
  }
  out += "\r\n";
  if (!head_only && !no_content) out += r.body;
}

}  // namespace dispatchd::admin
