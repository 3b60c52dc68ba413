#include "dispatchd/net/tcp_transport.hpp"

#include <asio/experimental/as_tuple.hpp>
#include <asio/use_awaitable.hpp>

namespace dispatchd::net {

std::string endpoint_string(const asio::ip::tcp::endpoint& ep) {
  std::string addr = ep.address().to_string();
  if (ep.address().is_v6()) return "[" + addr + "]:" + std::to_string(ep.port());
  return addr + ":" + std::to_string(ep.port());
}

TcpTransport::TcpTransport(asio::ip::tcp::socket socket) : socket_(std::move(socket)) {
  std::error_code ec;
  socket_.non_blocking(true, ec);
  socket_.set_option(asio::ip::tcp::no_delay(true), ec);
  auto ep = socket_.remote_endpoint(ec);
  if (!ec) peer_ = endpoint_string(ep);
}

std::size_t TcpTransport::read_some(std::span<std::uint8_t> buf, std::error_code& ec) {
  std::size_t n = socket_.read_some(asio::buffer(buf.data(), buf.size()), ec);
  if (ec == asio::error::try_again) ec = asio::error::would_block;
  return n;
}

std::size_t TcpTransport::write_some(std::span<const std::uint8_t> buf, std::error_code& ec) {
  std::size_t n = socket_.write_some(asio::buffer(buf.data(), buf.size()), ec);
  if (ec == asio::error::try_again) ec = asio::error::would_block;
  return n;
}

asio::awaitable<std::error_code> TcpTransport::wait(Direction d) {
  auto [ec] = co_await socket_.async_wait(
      d == Direction::read ? asio::ip::tcp::socket::wait_read : asio::ip::tcp::socket::wait_write,
      asio::experimental::as_tuple(asio::use_awaitable));
  if (!ec && !socket_.is_open()) ec = asio::error::operation_aborted;
  co_return ec;
}

void TcpTransport::close() noexcept {
  std::error_code ec;
  socket_.shutdown(asio::ip::tcp::socket::shutdown_both, ec);
  socket_.close(ec);
}

}  // namespace dispatchd::net
