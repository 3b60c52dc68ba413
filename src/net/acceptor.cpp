#include "dispatchd/net/acceptor.hpp"

#include <asio/experimental/as_tuple.hpp>
#include <asio/ip/v6_only.hpp>
#include <asio/steady_timer.hpp>
#include <asio/use_awaitable.hpp>

#include "dispatchd/log.hpp"
#include "dispatchd/net/tcp_transport.hpp"

namespace dispatchd::net {

std::expected<asio::ip::tcp::endpoint, std::string> resolve_listen_address(std::string_view addr) {
  std::string host;
  std::string port;
  if (!addr.empty() && addr[0] == '[') {
    auto close = addr.find(']');
    if (close == std::string_view::npos || close + 1 >= addr.size() || addr[close + 1] != ':') {
      return std::unexpected("invalid address \"" + std::string(addr) + "\": want [IPv6]:PORT");
    }
    host = addr.substr(1, close - 1);
    port = addr.substr(close + 2);
  } else {
    auto colon = addr.rfind(':');
    if (colon == std::string_view::npos) {
      return std::unexpected("invalid address \"" + std::string(addr) + "\": missing port");
    }
    host = addr.substr(0, colon);
    port = addr.substr(colon + 1);
  }
  if (port.empty() || port.find_first_not_of("0123456789") != std::string::npos ||
      port.size() > 5 || std::stoul(port) > 65535) {
    return std::unexpected("invalid port in address \"" + std::string(addr) + "\"");
  }
  auto p = static_cast<unsigned short>(std::stoul(port));
  if (host.empty()) return asio::ip::tcp::endpoint(asio::ip::tcp::v6(), p);
  std::error_code ec;
  auto ip = asio::ip::make_address(host, ec);
  if (!ec) return asio::ip::tcp::endpoint(ip, p);
  asio::io_context io;
  asio::ip::tcp::resolver r(io);
  auto results = r.resolve(host, port, asio::ip::resolver_base::passive, ec);
  if (ec || results.empty()) {
    return std::unexpected("cannot resolve \"" + host +
                           "\": " + (ec ? ec.message() : std::string("no address")));
  }
  return results.begin()->endpoint();
}

std::expected<asio::ip::tcp::endpoint, std::string> Acceptor::listen(
    const asio::ip::tcp::endpoint& ep, int backlog) {
  std::error_code ec;
  acceptor_.open(ep.protocol(), ec);
  if (!ec) acceptor_.set_option(asio::ip::tcp::acceptor::reuse_address(true), ec);
  if (!ec && ep.address().is_v6() && ep.address().is_unspecified()) {
    acceptor_.set_option(asio::ip::v6_only(false), ec);
  }
  if (!ec) acceptor_.bind(ep, ec);
  if (!ec) acceptor_.listen(backlog, ec);
  if (!ec) acceptor_.non_blocking(true, ec);
  if (ec) {
    std::error_code ignored;
    acceptor_.close(ignored);
    return std::unexpected("cannot listen on " + endpoint_string(ep) + ": " + ec.message());
  }
  auto bound = acceptor_.local_endpoint(ec);
  if (ec) return std::unexpected(ec.message());
  return bound;
}

asio::awaitable<void> Acceptor::run(OnAccept on_accept) {
  using asio::experimental::as_tuple;
  while (acceptor_.is_open()) {
    auto [ec, socket] = co_await acceptor_.async_accept(as_tuple(asio::use_awaitable));
    if (ec == asio::error::operation_aborted || !acceptor_.is_open()) break;
    if (ec) {
      log::warn("accept: {}", ec.message());
      // Out of descriptors and the like: back off briefly instead of spinning.
      asio::steady_timer t(acceptor_.get_executor(), std::chrono::milliseconds(50));
      co_await t.async_wait(as_tuple(asio::use_awaitable));
      continue;
    }
    on_accept(std::move(socket));
  }
}

void Acceptor::close() noexcept {
  std::error_code ec;
  acceptor_.close(ec);
}

}  // namespace dispatchd::net
