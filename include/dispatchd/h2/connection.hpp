#pragma once
// Connection: one HTTP/2 server connection driving an nghttp2_session from two coroutines.
//
// The reader waits for readability, reads into one buffer shared by the thread, and feeds
// nghttp2. The writer pulls every pending frame out of nghttp2 into a batch and writes it with
// few system calls; it holds no buffer while idle. nghttp2 is never re-entered from its own
// callbacks: they only record state and wake the writer, which calls mem_send afterwards.
//
// Streams whose request headers are complete are handed to a RequestSink, which returns the
// coroutine that serves them. The connection runs those in its scope and joins them before it
// ends, so no handler outlives the connection.

#include <nghttp2/nghttp2.h>

#include <algorithm>
#include <asio/awaitable.hpp>
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>

#include "dispatchd/co/intrusive_list.hpp"
#include "dispatchd/co/scope.hpp"
#include "dispatchd/co/timer_wheel.hpp"
#include "dispatchd/co/wakeup.hpp"
#include "dispatchd/h2/frame_memory.hpp"
#include "dispatchd/h2/stream.hpp"
#include "dispatchd/net/transport.hpp"

namespace dispatchd::h2 {

// Error code given to StreamListener::on_close when the connection itself went away. Outside
// the range of HTTP/2 error codes.
inline constexpr std::uint32_t kConnectionLost = 0x10000;

struct Settings {
  std::uint32_t max_concurrent_streams = 4096;
  std::uint32_t initial_window_size = 65535;
  std::uint32_t max_header_list_size = 16 * 1024;
  std::uint32_t header_table_size = 4096;
  // Graceful shutdown: how long in-flight streams may take after GOAWAY.
  std::chrono::milliseconds drain_timeout{5000};
  // A connection that has not sent a valid HTTP/2 preface by then is closed.
  std::chrono::milliseconds preface_timeout{10000};
  // Stream resets from the peer before the server answered the stream: a burst, then so many per
  // second; beyond that the connection is closed with GOAWAY ENHANCE_YOUR_CALM (rapid reset,
  // CVE-2023-44487).
  std::uint32_t reset_burst = 1000;
  double reset_rate = 100;
  // PING and SETTINGS frames from the peer, likewise; but a PING (SETTINGS) that follows HEADERS
  // or DATA from us since the peer's previous PING (SETTINGS) is not counted: busy grpc-go and
  // grpc-core clients send one with the data they receive.
  std::uint32_t control_burst = 500;
  double control_rate = 50;
  // CONTINUATION frames allowed after one HEADERS frame.
  std::size_t max_continuations = 8;
  // Output that makes no progress this long (the peer stopped reading, or holds a zero window)
  // closes the connection.
  std::chrono::milliseconds write_stall_timeout{60000};
  // After this long without a frame from the peer the server PINGs; without an answer within
  // keepalive_timeout the connection is closed. Zero disables keepalive.
  std::chrono::milliseconds keepalive_time{120000};
  std::chrono::milliseconds keepalive_timeout{20000};
  // After the writer has been idle this long, the written pages of nghttp2's frame buffer go back
  // to the kernel (frame_memory.hpp). Longer than an agent's heartbeat period (5 s by default): a
  // release and the page fault of the next reply cost more CPU than a heartbeat's own work on a
  // virtual machine (+30% server CPU for 5,000 agents heartbeating every 5 s with 1 s;
  // BENCHMARKS.md, "nghttp2's frame buffer in pages of our own"), for one page per connection. So
  // only connections that really go quiet give it back.
  std::chrono::milliseconds frame_release_delay{30000};
};

// A token bucket: `burst` events at once, refilled at `rate` per second.
class RateLimit {
 public:
  bool take(double burst, double rate, std::chrono::steady_clock::time_point now) {
    if (!started_) {
      tokens_ = burst;
      last_ = now;
      started_ = true;
    }
    tokens_ = std::min(burst, tokens_ + rate * std::chrono::duration<double>(now - last_).count());
    last_ = now;
    if (tokens_ < 1) return false;
    tokens_ -= 1;
    return true;
  }

 private:
  double tokens_ = 0;
  std::chrono::steady_clock::time_point last_{};
  bool started_ = false;
};

class RequestSink {
 public:
  virtual ~RequestSink() = default;
  // Runs inside an nghttp2 callback when a request's headers are complete: set the stream's
  // listener now (DATA may follow in the same read) and return the coroutine that serves it.
  virtual asio::awaitable<void> on_request(StreamRef stream) = 0;
};

struct ConnectionStats {
  std::uint64_t bytes_in = 0;
  std::uint64_t bytes_out = 0;
  std::uint64_t streams = 0;
  std::uint64_t data_out = 0;  // stream DATA bytes handed to nghttp2
  std::uint64_t pings_in = 0;  // PING frames from the peer (not ACKs)
  // RST_STREAM of unanswered streams at their deadline, reached while the server ran behind:
  // not counted as rapid reset.
  std::uint64_t resets_at_deadline = 0;
  std::uint64_t frame_pages_released = 0;  // idle spells after which the frame buffer was dropped

  // Totals over several connections (every field).
  ConnectionStats& operator+=(const ConnectionStats& o) noexcept {
    bytes_in += o.bytes_in;
    bytes_out += o.bytes_out;
    streams += o.streams;
    data_out += o.data_out;
    pings_in += o.pings_in;
    resets_at_deadline += o.resets_at_deadline;
    frame_pages_released += o.frame_pages_released;
    return *this;
  }
};
static_assert(sizeof(ConnectionStats) == 7 * sizeof(std::uint64_t),
              "a new ConnectionStats field must be added in operator+= too");

class Connection : public std::enable_shared_from_this<Connection>, public co::ListHook {
 public:
  Connection(std::unique_ptr<net::Transport> transport, RequestSink& sink, const Settings& settings,
             co::TimerWheel& wheel);
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;
  ~Connection();

  // Serves the connection until it is closed, then joins every stream handler.
  asio::awaitable<void> run();

  // GOAWAY; in-flight streams may finish within the drain timeout, then the socket is closed.
  void shutdown();
  // Closes the socket now; every stream is cancelled.
  void close() noexcept;

  const std::string& peer() const noexcept { return transport_->peer(); }
  std::size_t open_streams() const noexcept { return open_streams_; }
  // Stream objects nghttp2 still holds for this connection, open or closed (its priority tree).
  std::size_t retained_streams() const;
  const ConnectionStats& stats() const noexcept { return stats_; }
  net::Transport& transport() noexcept { return *transport_; }

  // Why the connection was closed by the server ("" if it was not, or closed normally).
  const std::string& close_reason() const noexcept { return close_reason_; }
  // The server closed the connection with GOAWAY ENHANCE_YOUR_CALM (a flood of resets, PINGs,
  // SETTINGS, or unread ACKs).
  bool calmed() const noexcept { return calmed_; }

  // Used by Stream.
  nghttp2_session* session() noexcept { return session_; }
  void note_data_sent(std::size_t n) noexcept {
    stats_.data_out += n;
    if (n > 0) ++responses_sent_;
  }
  // A response HEADERS frame (or trailers-only response) was submitted.
  void note_headers_sent() noexcept { ++responses_sent_; }
  void want_write() noexcept { writer_wakeup_.notify(); }
  // `n` bytes of the stream's request DATA were taken by its reader: the peer may send them again
  // (a WINDOW_UPDATE once nghttp2 finds enough returned). Inside nghttp2 callbacks this is
  // deferred until nghttp2 returns.
  void return_stream_window(std::int32_t stream_id, std::size_t n);
  bool alive() const noexcept { return session_ != nullptr && !dead_; }

 private:
  friend struct Callbacks;
  class Deadline final : public co::TimerWheel::Entry {
   public:
    explicit Deadline(Connection& c) : c_(c) {}

   private:
    void on_expire() override { c_.on_deadline(); }
    Connection& c_;
  };

  class Periodic final : public co::TimerWheel::Entry {
   public:
    using Fn = void (Connection::*)();
    Periodic(Connection& c, Fn f) : c_(c), f_(f) {}

   private:
    void on_expire() override { (c_.*f_)(); }
    Connection& c_;
    Fn f_;
  };

  asio::awaitable<void> read_loop();
  void on_keepalive();
  void on_stall_check();
  void on_frame_release();
  void calm_down(const char* what);
  // The PING/SETTINGS flood rule; `mark` is where responses_sent_ stood at the peer's previous
  // frame of the same kind.
  bool control_frame_allowed(std::uint64_t& mark, std::chrono::steady_clock::time_point now);
  // Some stream has DATA queued that nghttp2 has not taken (waiting for the peer's window).
  bool streams_waiting() const noexcept;
  asio::awaitable<void> write_loop();
  bool reject_non_h2(std::span<const std::uint8_t> data);
  void on_deadline();
  void fail_streams() noexcept;

  // nghttp2 callbacks
  int on_begin_frame(const nghttp2_frame_hd& hd);
  int on_begin_headers(const nghttp2_frame* frame);
  int on_header(const nghttp2_frame* frame, const std::uint8_t* name, std::size_t namelen,
                const std::uint8_t* value, std::size_t valuelen);
  int on_frame_recv(const nghttp2_frame* frame);
  int on_data_chunk(std::int32_t stream_id, const std::uint8_t* data, std::size_t len);
  int on_stream_close(std::int32_t stream_id, std::uint32_t error_code);
  // After nghttp2_session_mem_recv: the connection window for every DATA byte read, and the
  // stream windows returned meanwhile.
  void return_windows();

  std::unique_ptr<net::Transport> transport_;
  RequestSink& sink_;
  Settings settings_;
  co::TimerWheel& wheel_;
  FrameMemory frame_memory_;  // outlives session_
  nghttp2_session* session_ = nullptr;
  co::Scope handlers_;
  co::Wakeup writer_wakeup_;
  co::Wakeup writer_done_wakeup_;
  co::IntrusiveList<Stream> streams_;
  Deadline deadline_{*this};
  Periodic keepalive_{*this, &Connection::on_keepalive};
  Periodic stall_check_{*this, &Connection::on_stall_check};
  // Gives the frame buffer's pages back once the writer has been idle for a while.
  Periodic frame_release_{*this, &Connection::on_frame_release};
  bool frames_drained_ = true;  // nghttp2 has no frame pending in its buffer
  RateLimit resets_, control_frames_;
  // HEADERS and DATA frames handed to nghttp2, and its value at the peer's last PING / SETTINGS.
  std::uint64_t responses_sent_ = 0, ping_mark_ = 0, settings_mark_ = 0;
  std::chrono::steady_clock::time_point last_recv_{};
  bool ping_outstanding_ = false;
  bool calm_down_ = false;
  bool calmed_ = false;
  std::uint64_t stall_bytes_out_ = 0, stall_data_out_ = 0;
  std::string close_reason_;
  std::size_t open_streams_ = 0;
  // Client stream IDs: the highest one opened, the ranges it skipped (implicitly closed, never
  // opened: HEADERS on one is an unexpected stream identifier, RFC 9113 §5.1.1), and the one
  // that broke that rule.
  std::int32_t highest_stream_id_ = -1;
  std::vector<std::pair<std::int32_t, std::int32_t>> skipped_stream_ids_;
  std::int32_t unexpected_stream_id_ = 0;
  ConnectionStats stats_;
  std::string out_;
  bool receiving_ = false;  // inside nghttp2_session_mem_recv
  std::size_t connection_window_to_return_ = 0;
  std::vector<std::pair<std::int32_t, std::size_t>> stream_windows_to_return_;
  bool preface_seen_ = false;
  bool client_spoke_h2_ = false;  // the first bytes matched the client preface
  bool dead_ = false;             // socket closed or fatal error: stop everything
  bool reader_done_ = false;      // no more input will be processed
  bool writer_running_ = false;
  bool shutting_down_ = false;
  std::string early_reply_;  // a plain HTTP/1.1 error for non-HTTP/2 clients
};

}  // namespace dispatchd::h2
