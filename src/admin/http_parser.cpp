#include "dispatchd/admin/http_parser.hpp"

#include <algorithm>
#include <charconv>
#include <cstdint>

namespace dispatchd::admin {

namespace {

bool is_digit(char c) {
  return c >= '0' && c <= '9';
}

bool is_tchar(unsigned char c) {
  if ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')) return true;
  return std::string_view("!#$%&'*+-.^_`|~").find(static_cast<char>(c)) != std::string_view::npos;
}

bool is_token(std::string_view s) {
  return !s.empty() && std::all_of(s.begin(), s.end(),
                                   [](char c) { return is_tchar(static_cast<unsigned char>(c)); });
}

char ascii_lower(char c) {
  return c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : c;
}

bool iequals(std::string_view a, std::string_view b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
           return ascii_lower(x) == ascii_lower(y);
         });
}

std::string_view trim(std::string_view s) {
  auto b = s.find_first_not_of(" \t");
  if (b == std::string_view::npos) return {};
  auto e = s.find_last_not_of(" \t");
  return s.substr(b, e - b + 1);
}

// Calls f(element) for each non-empty element of a comma-separated list.
template <class F>
void for_each_list_element(std::string_view s, F&& f) {
  while (!s.empty()) {
    auto comma = s.find(',');
    auto elem = trim(s.substr(0, comma));
    if (!elem.empty()) f(elem);
    if (comma == std::string_view::npos) break;
    s.remove_prefix(comma + 1);
  }
}

ParsedHead fail(int status, std::string_view body) {
  ParsedHead p;
  p.state = ParsedHead::State::error;
  p.error_status = status;
  p.error_body = body;
  return p;
}

// Splits "origin-form" or "absolute-form" into path and query.
bool parse_target(std::string_view target, Request& req) {
  // One-character paths by count, not from a literal: GCC 12 at -O3 reports a false -Wrestrict
  // on assigning a short literal to a std::string (as in src/ctl/parse.cpp).
  if (target == "*") {
    req.path.assign(1, '*');
    return true;
  }
  if (target.front() != '/') {
    // absolute-form: servers must accept it (RFC 9112 3.2.2); the authority is ignored.
    std::string_view rest;
    if (target.size() > 7 && iequals(target.substr(0, 7), "http://")) {
      rest = target.substr(7);
    } else if (target.size() > 8 && iequals(target.substr(0, 8), "https://")) {
      rest = target.substr(8);
    } else {
      return false;
    }
    auto slash = rest.find_first_of("/?");
    if (slash == 0) return false;  // no authority
    target = slash == std::string_view::npos ? std::string_view("/") : rest.substr(slash);
    if (target.front() == '?') {
      req.path.assign(1, '/');
      req.query = target.substr(1);
      return true;
    }
  }
  if (target.find('#') != std::string_view::npos) return false;  // fragments are never sent
  auto q = target.find('?');
  req.path = target.substr(0, q);
  if (q != std::string_view::npos) req.query = target.substr(q + 1);
  return true;
}

}  // namespace

bool is_field_value(std::string_view s) {
  return std::all_of(s.begin(), s.end(), [](char ch) {
    auto c = static_cast<unsigned char>(ch);
    return c == '\t' || (c >= 0x20 && c != 0x7f);
  });
}

std::string_view Request::header(std::string_view name) const noexcept {
  for (const auto& [k, v] : headers)
    if (k == name) return v;
  return {};
}

ParsedHead parse_head(std::string_view buf, std::size_t max_bytes) {
  constexpr auto npos = std::string_view::npos;
  // RFC 9112 2.2: empty lines before the request line are ignored (some clients send CRLF
  // after a request); they count toward the limit.
  std::size_t begin = 0;
  for (;;) {
    if (begin < buf.size() && buf[begin] == '\n') {
      ++begin;
    } else if (begin + 1 < buf.size() && buf[begin] == '\r' && buf[begin + 1] == '\n') {
      begin += 2;
    } else {
      break;
    }
  }
  // Find the empty line that ends the head. LF alone is accepted as a line end (RFC 9112 2.2).
  std::vector<std::string_view> lines;
  std::size_t end = npos;
  for (std::size_t pos = begin;;) {
    auto nl = buf.find('\n', pos);
    if (nl == npos || nl >= max_bytes) break;
    auto line = buf.substr(pos, nl - pos);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (line.empty()) {
      end = nl + 1;
      break;
    }
    lines.push_back(line);
    pos = nl + 1;
  }
  if (end == npos) {
    if (buf.size() >= max_bytes) return fail(431, "request header too large\n");
    return {};
  }
  if (end > max_bytes) return fail(431, "request header too large\n");

  ParsedHead p;
  p.state = ParsedHead::State::complete;
  p.consumed = end;
  Request& req = p.req;

  // request-line = method SP request-target SP HTTP-version
  std::string_view rl = lines.front();
  auto sp1 = rl.find(' ');
  auto sp2 = sp1 == npos ? npos : rl.find(' ', sp1 + 1);
  if (sp2 == npos || rl.find(' ', sp2 + 1) != npos) return fail(400, "bad request line\n");
  auto method = rl.substr(0, sp1);
  auto target = rl.substr(sp1 + 1, sp2 - sp1 - 1);
  auto version = rl.substr(sp2 + 1);
  if (!is_token(method) || target.empty()) return fail(400, "bad request line\n");
  for (char ch : target) {
    auto c = static_cast<unsigned char>(ch);
    if (c <= 0x20 || c >= 0x7f) return fail(400, "bad request target\n");
  }
  if (version == "HTTP/1.1") {
    req.version_minor = 1;
  } else if (version == "HTTP/1.0") {
    req.version_minor = 0;
  } else if (version.size() == 8 && version.starts_with("HTTP/") && is_digit(version[5]) &&
             version[6] == '.' && is_digit(version[7])) {
    return fail(505, "HTTP version not supported\n");
  } else {
    return fail(400, "bad request line\n");
  }
  req.method = method;
  if (!parse_target(target, req)) return fail(400, "bad request target\n");

  // field-line = field-name ":" OWS field-value OWS; no obs-fold, no space before the colon.
  int hosts = 0;
  bool has_length = false;
  std::uint64_t length = 0;
  bool connection_close = false;
  bool connection_keep_alive = false;
  for (std::size_t i = 1; i < lines.size(); ++i) {
    std::string_view line = lines[i];
    auto colon = line.find(':');
    if (colon == npos || !is_token(line.substr(0, colon))) return fail(400, "bad header field\n");
    auto value = trim(line.substr(colon + 1));
    if (!is_field_value(value)) return fail(400, "bad header field\n");
    std::string name(line.substr(0, colon));
    std::transform(name.begin(), name.end(), name.begin(), ascii_lower);
    if (name == "host") {
      ++hosts;
    } else if (name == "content-length") {
      // A list of identical values is tolerated (RFC 9112 6.3); anything else is an error.
      bool bad = false;
      for_each_list_element(value, [&](std::string_view v) {
        std::uint64_t n = 0;
        auto [ptr, ec] = std::from_chars(v.data(), v.data() + v.size(), n);
        if (ec == std::errc::result_out_of_range && std::all_of(v.begin(), v.end(), is_digit)) {
          n = UINT64_MAX;
        } else if (ec != std::errc() || ptr != v.data() + v.size()) {
          bad = true;
          return;
        }
        if (has_length && n != length) bad = true;
        has_length = true;
        length = n;
      });
      if (bad || !has_length) return fail(400, "bad Content-Length\n");
    } else if (name == "transfer-encoding") {
      return fail(400, "request bodies are not accepted\n");
    } else if (name == "connection") {
      for_each_list_element(value, [&](std::string_view v) {
        if (iequals(v, "close")) connection_close = true;
        if (iequals(v, "keep-alive")) connection_keep_alive = true;
      });
    }
    req.headers.emplace_back(std::move(name), value);
  }
  if (hosts > 1 || (req.version_minor == 1 && hosts == 0)) return fail(400, "bad Host\n");
  if (length > 0) return fail(413, "request bodies are not accepted\n");
  p.keep_alive =
      req.version_minor == 1 ? !connection_close : connection_keep_alive && !connection_close;
  return p;
}

}  // namespace dispatchd::admin
