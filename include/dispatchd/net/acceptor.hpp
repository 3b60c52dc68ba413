#pragma once
// Listening socket and accept loop.

#include <asio/awaitable.hpp>
#include <asio/io_context.hpp>
#include <asio/ip/tcp.hpp>
#include <expected>
#include <functional>
#include <string>
#include <string_view>

namespace dispatchd::net {

// "host:port", "[v6]:port" or ":port" (every interface). Resolves at start-up only.
std::expected<asio::ip::tcp::endpoint, std::string> resolve_listen_address(std::string_view addr);

class Acceptor {
 public:
  using OnAccept = std::function<void(asio::ip::tcp::socket)>;

  explicit Acceptor(asio::io_context& io) : acceptor_(io) {}
  std::expected<asio::ip::tcp::endpoint, std::string> listen(const asio::ip::tcp::endpoint& ep,
                                                             int backlog = 4096);
  // Accepts until close(). Transient errors (EMFILE, ECONNABORTED) are logged and retried.
  asio::awaitable<void> run(OnAccept on_accept);
  void close() noexcept;
  bool is_open() const noexcept { return acceptor_.is_open(); }

 private:
  asio::ip::tcp::acceptor acceptor_;
};

}  // namespace dispatchd::net
