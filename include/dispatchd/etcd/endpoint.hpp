#pragma once
// An etcd endpoint as operators write it: "HOST:PORT", "http://HOST:PORT" (both h2c) or
// "https://HOST:PORT" (TLS); an IPv6 host in brackets ("[::1]:2379").

#include <cstdint>
#include <expected>
#include <string>
#include <string_view>

namespace dispatchd::etcd {

struct Endpoint {
  std::string host;  // without brackets
  std::uint16_t port = 0;
  bool tls = false;

  // "HOST:PORT" as an :authority (brackets around an IPv6 host).
  std::string authority() const;
  // The scheme and the authority, as written back in messages.
  std::string to_string() const;
};

// The endpoint, or why `text` is not one.
std::expected<Endpoint, std::string> parse_endpoint(std::string_view text);

}  // namespace dispatchd::etcd
