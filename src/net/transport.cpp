#include "dispatchd/net/transport.hpp"

#include <asio/error.hpp>

namespace dispatchd::net {

asio::awaitable<std::error_code> write_all(Transport& t, std::span<const std::uint8_t> bytes,
                                           std::uint64_t& written) {
  std::size_t off = 0;
  while (off < bytes.size()) {
    std::error_code ec;
    std::size_t n = t.write_some(bytes.subspan(off), ec);
    if (ec == asio::error::would_block) {
      if (auto wec = co_await t.wait(t.write_blocked_on()); wec) co_return wec;
      continue;
    }
    if (ec) co_return ec;
    off += n;
    written += n;
  }
  co_return std::error_code();
}

}  // namespace dispatchd::net
