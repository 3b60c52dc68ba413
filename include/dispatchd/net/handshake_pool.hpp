#pragma once
// HandshakePool: the TLS handshakes' public-key cryptography on threads of their own.
//
// A full mutual-TLS handshake costs the server ~0.8 ms of CPU here (an ECDHE key share, a
// signature, two signature checks and OpenSSL 3's decoding around them), ~4× what the same
// agent's connection, registration and streams cost. On the io thread, a fleet reconnecting
// after a restart is bound by that: ~1,200 handshakes a second per core, so 100k agents need
// ~2 minutes. With a pool, the io thread only moves bytes and each SSL_do_handshake step runs
// on a pool thread: the herd scales with the cores the process is given.
//
// The rule that keeps this simple: an SSL object in a handshake is touched by one thread at a
// time. The io thread posts one step (SSL_do_handshake until it would block or ends) and does
// nothing with that SSL or its socket until the step's result is posted back; OpenSSL's callbacks
// during the step (ALPN, ClientHello, client-chain check, key log) touch only the SSL's own
// transport object, never the io thread's state. Nothing else crosses threads.

#include <openssl/ssl.h>

#include <asio/awaitable.hpp>
#include <asio/thread_pool.hpp>
#include <functional>
#include <string>

namespace dispatchd::net {

// The outcome of one SSL_do_handshake call, read on the thread that made it (OpenSSL's error
// queue and errno are that thread's).
struct HandshakeStep {
  int ret = 0;         // SSL_do_handshake's return value
  int ssl_error = 0;   // SSL_get_error (SSL_ERROR_NONE when ret == 1)
  int sys_errno = 0;   // errno, for SSL_ERROR_SYSCALL
  std::string errors;  // OpenSSL's queued errors, for a failure (SSL_ERROR_SSL and the like)

  // Runs the step on the calling thread.
  static HandshakeStep run(SSL* ssl);
  // What a call of `ssl` that returned `ret` left on this thread: errno, SSL_get_error, and for
  // a failure the queued errors (the queue is emptied either way). The read and write paths use
  // it too.
  static HandshakeStep capture(SSL* ssl, int ret);
};

class HandshakePool {
 public:
  explicit HandshakePool(unsigned threads);
  // Waits for steps in flight to finish (their results are posted to their io executors).
  ~HandshakePool();
  HandshakePool(const HandshakePool&) = delete;
  HandshakePool& operator=(const HandshakePool&) = delete;

  unsigned threads() const noexcept { return threads_; }

  // One handshake step of `ssl` on a pool thread; the coroutine resumes on its own executor,
  // which counts the step as outstanding work until then.
  asio::awaitable<HandshakeStep> step(SSL* ssl);

  // Tests: runs on the pool thread before each step.
  std::function<void()> before_step;

 private:
  unsigned threads_;
  asio::thread_pool pool_;
};

// The threads a pool gets by default: one less than the CPUs this process may run on
// (sched_getaffinity), at most 4; 0 (handshakes on the io thread) on one CPU.
unsigned default_handshake_threads();

}  // namespace dispatchd::net
