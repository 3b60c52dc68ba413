#include "dispatchd/net/handshake_pool.hpp"

#include <openssl/err.h>
#include <sched.h>

#include <algorithm>
#include <asio/async_result.hpp>
#include <asio/executor_work_guard.hpp>
#include <asio/post.hpp>
#include <asio/use_awaitable.hpp>
#include <cerrno>

#include "dispatchd/net/tls_stream.hpp"

namespace dispatchd::net {

HandshakeStep HandshakeStep::run(SSL* ssl) {
  ERR_clear_error();
  errno = 0;
  int ret = SSL_do_handshake(ssl);
  if (ret == 1) return HandshakeStep{.ret = 1};
  return capture(ssl, ret);
}

HandshakeStep HandshakeStep::capture(SSL* ssl, int ret) {
  HandshakeStep s{.ret = ret, .sys_errno = errno};
  s.ssl_error = SSL_get_error(ssl, ret);
  switch (s.ssl_error) {
    case SSL_ERROR_WANT_READ:
    case SSL_ERROR_WANT_WRITE:
    case SSL_ERROR_ZERO_RETURN:
    case SSL_ERROR_SYSCALL:
      ERR_clear_error();
      break;
    default:  // a failure: what OpenSSL queued says why
      s.errors = openssl_errors();
  }
  return s;
}

HandshakePool::HandshakePool(unsigned threads) : threads_(threads), pool_(threads) {}

HandshakePool::~HandshakePool() {
  pool_.join();
}

asio::awaitable<HandshakeStep> HandshakePool::step(SSL* ssl) {
  auto initiate = [this, ssl](auto handler) {
    // The io executor keeps running (io_context::run does not return) until the result is back.
    auto work = asio::make_work_guard(asio::get_associated_executor(handler));
    asio::post(pool_, [this, ssl, handler = std::move(handler), work = std::move(work)]() mutable {
      if (before_step) before_step();
      HandshakeStep s = HandshakeStep::run(ssl);
      auto io = work.get_executor();
      asio::post(io, [handler = std::move(handler), s = std::move(s),
                      work = std::move(work)]() mutable { std::move(handler)(std::move(s)); });
    });
  };
  co_return co_await asio::async_initiate<const asio::use_awaitable_t<>&, void(HandshakeStep)>(
      std::move(initiate), asio::use_awaitable);
}

unsigned default_handshake_threads() {
  cpu_set_t set;
  CPU_ZERO(&set);
  int cpus = sched_getaffinity(0, sizeof set, &set) == 0 ? CPU_COUNT(&set) : 1;
  return static_cast<unsigned>(std::clamp(cpus - 1, 0, 4));
}

}  // namespace dispatchd::net
