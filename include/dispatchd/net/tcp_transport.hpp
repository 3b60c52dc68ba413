#pragma once

#include <asio/ip/tcp.hpp>

#include "dispatchd/net/transport.hpp"

namespace dispatchd::net {

// Plaintext TCP (h2c with prior knowledge).
class TcpTransport final : public Transport {
 public:
  explicit TcpTransport(asio::ip::tcp::socket socket);

  std::size_t read_some(std::span<std::uint8_t> buf, std::error_code& ec) override;
  std::size_t write_some(std::span<const std::uint8_t> buf, std::error_code& ec) override;
  asio::awaitable<std::error_code> wait(Direction d) override;
  void close() noexcept override;
  bool is_open() const noexcept override { return socket_.is_open(); }
  const std::string& peer() const noexcept override { return peer_; }

 private:
  asio::ip::tcp::socket socket_;
  std::string peer_;
};

// "ip:port" (IPv6 in brackets).
std::string endpoint_string(const asio::ip::tcp::endpoint& ep);

}  // namespace dispatchd::net
