#include "dispatchd/etcd/endpoint.hpp"

#include <charconv>

namespace dispatchd::etcd {

std::string Endpoint::authority() const {
  std::string h = host.find(':') != std::string::npos ? "[" + host + "]" : host;
  return h + ":" + std::to_string(port);
}

std::string Endpoint::to_string() const {
  return (tls ? "https://" : "http://") + authority();
}

std::expected<Endpoint, std::string> parse_endpoint(std::string_view text) {
  Endpoint ep;
  std::string_view rest = text;
  if (rest.starts_with("https://")) {
    ep.tls = true;
    rest.remove_prefix(8);
  } else if (rest.starts_with("http://")) {
    rest.remove_prefix(7);
  } else if (rest.find("://") != std::string_view::npos) {
    return std::unexpected("etcd endpoint \"" + std::string(text) +
                           "\": the scheme must be http or https");
  }
  if (rest.ends_with('/')) rest.remove_suffix(1);
  std::string_view host, port;
  if (rest.starts_with('[')) {
    auto close = rest.find(']');
    if (close == std::string_view::npos || close + 1 >= rest.size() || rest[close + 1] != ':') {
      return std::unexpected("etcd endpoint \"" + std::string(text) + "\": expected [HOST]:PORT");
    }
    host = rest.substr(1, close - 1);
    port = rest.substr(close + 2);
  } else {
    auto colon = rest.rfind(':');
    if (colon == std::string_view::npos || rest.find(':') != colon) {
      return std::unexpected("etcd endpoint \"" + std::string(text) + "\": expected HOST:PORT");
    }
    host = rest.substr(0, colon);
    port = rest.substr(colon + 1);
  }
  unsigned p = 0;
  auto [end, ec] = std::from_chars(port.data(), port.data() + port.size(), p);
  if (host.empty() || port.empty() || ec != std::errc() || end != port.data() + port.size() ||
      p == 0 || p > 65535) {
    return std::unexpected("etcd endpoint \"" + std::string(text) +
                           "\": expected HOST:PORT with a port from 1 to 65535");
  }
  ep.host = std::string(host);
  ep.port = static_cast<std::uint16_t>(p);
  return ep;
}

}  // namespace dispatchd::etcd
