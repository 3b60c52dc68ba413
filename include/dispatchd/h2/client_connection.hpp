#pragma once
// ClientConnection: one HTTP/2 client connection driving an nghttp2 client session from a reader
// and a writer coroutine, as the server's Connection does. nghttp2 callbacks only record state
// in the ClientStream they concern and wake whoever waits on it; requests, DATA and resets are
// submitted from coroutines, never from inside nghttp2.
//
// The owner spawns run(), opens streams with open() while usable(), and closes the connection
// with close() (now) or shutdown() (GOAWAY, then close once the open streams finished). When
// run() returns every stream has been closed with kConnectionLost or its own code.

#include <nghttp2/nghttp2.h>

#include <asio/awaitable.hpp>
#include <chrono>
#include <cstdint>
#include <expected>
#include <memory>
#include <span>
#include <string>
#include <unordered_map>
#include <vector>

#include "dispatchd/co/timer_wheel.hpp"
#include "dispatchd/co/wakeup.hpp"
#include "dispatchd/h2/connection.hpp"
#include "dispatchd/h2/stream.hpp"
#include "dispatchd/net/transport.hpp"

namespace dispatchd::h2 {

struct ClientSettings {
  std::uint32_t initial_window_size = 1 << 20;  // per stream, for responses
  std::uint32_t connection_window_size = 1 << 20;
  std::uint32_t max_header_list_size = 64 * 1024;
  std::uint32_t header_table_size = 4096;
  // A stream's window reopens only as its reader consumes what arrived (ClientStream::consume),
  // so a slow reader makes the server hold back instead of our buffer growing: at most
  // initial_window_size bytes wait per stream. The connection window still reopens on receipt,
  // so one stalled stream never blocks the others. Off: windows reopen on receipt.
  bool reader_flow_control = false;
};

class ClientConnection;

// One request stream as the upper layer sees it. The owner (a gRPC call) reads the response
// state after every wakeup; the connection fills it in from nghttp2 callbacks.
class ClientStream {
 public:
  ClientStream(const ClientStream&) = delete;
  ClientStream& operator=(const ClientStream&) = delete;
  ~ClientStream();

  std::int32_t id() const noexcept { return id_; }

  // Response state.
  bool headers_received() const noexcept { return headers_received_; }
  const std::vector<Header>& headers() const noexcept { return headers_; }
  const std::vector<Header>& trailers() const noexcept { return trailers_; }
  // The response ended with END_STREAM (trailers, or headers only).
  bool ended() const noexcept { return ended_; }
  // nghttp2 closed the stream; close_code() is the RST_STREAM code, 0, or kConnectionLost.
  bool closed() const noexcept { return closed_; }
  std::uint32_t close_code() const noexcept { return close_code_; }
  // Response DATA received and not yet consumed.
  std::string& input() noexcept { return in_; }
  // True once the deadline set with set_deadline passed.
  bool expired() const noexcept { return expired_; }

  // The one coroutine waiting on this stream parks here; every change notifies it.
  co::Wakeup& wakeup() noexcept { return wakeup_; }
  // Sends every notification to `w` instead (nullptr: back to wakeup()), for a coroutine that
  // waits on this stream and on something else at once (a proxy relaying a call).
  void set_waiter(co::Wakeup* w) noexcept { waiter_ = w ? w : &wakeup_; }

  // Queues request DATA; `end` half-closes the request after it.
  void send(std::string bytes, bool end);
  // Request bytes queued and not yet taken by nghttp2 (which takes them as the server's window
  // allows); the waiter is notified when this drops to zero.
  std::size_t pending_output() const noexcept { return out_.size() - out_off_; }
  // The reader took `n` bytes out of input(): reopens the stream's window by as much when the
  // connection has reader_flow_control (nothing otherwise).
  void consume(std::size_t n);
  // RST_STREAM (e.g. NGHTTP2_CANCEL); the stream is closed from our side at once.
  void reset(std::uint32_t error_code);
  // Marks the stream expired (and wakes its owner) at `deadline`.
  void set_deadline(co::TimerWheel::Clock::time_point deadline);

  ClientConnection& connection() noexcept { return *conn_; }

 private:
  friend class ClientConnection;
  friend struct ClientCallbacks;
  class Deadline final : public co::TimerWheel::Entry {
   public:
    explicit Deadline(ClientStream& s) : s_(s) {}

   private:
    void on_expire() override {
      s_.expired_ = true;
      s_.waiter_->notify();
    }
    ClientStream& s_;
  };

  explicit ClientStream(std::shared_ptr<ClientConnection> conn) : conn_(std::move(conn)) {}
  long read_data(std::uint8_t* buf, std::size_t length, std::uint32_t* flags);
  void on_closed(std::uint32_t code);

  std::shared_ptr<ClientConnection> conn_;
  std::int32_t id_ = 0;
  std::vector<Header> headers_, trailers_;
  std::string in_;
  std::string out_;
  std::size_t out_off_ = 0;
  bool out_end_ = false;
  bool eof_sent_ = false;
  bool deferred_ = false;
  bool headers_received_ = false;
  bool ended_ = false;
  bool closed_ = false;
  bool expired_ = false;
  std::uint32_t close_code_ = 0;
  co::Wakeup wakeup_;
  co::Wakeup* waiter_ = &wakeup_;
  Deadline deadline_{*this};
};

class ClientConnection : public std::enable_shared_from_this<ClientConnection> {
 public:
  ClientConnection(std::unique_ptr<net::Transport> transport, co::TimerWheel& wheel,
                   const ClientSettings& settings = {});
  ClientConnection(const ClientConnection&) = delete;
  ClientConnection& operator=(const ClientConnection&) = delete;
  ~ClientConnection();

  // Drives the connection until it is closed (by either side); then fails every open stream.
  asio::awaitable<void> run();

  // A new request stream with `headers` (pseudo-headers first), `body` as its first DATA and
  // END_STREAM after it when `end`. Fails when the connection is closing or closed.
  std::expected<std::shared_ptr<ClientStream>, std::string> open(std::span<const Header> headers,
                                                                 std::string body, bool end);

  // Sends GOAWAY; the connection closes once every open stream has finished.
  void shutdown();
  // Closes the socket now; every stream is closed with kConnectionLost.
  void close() noexcept;

  // Open, and the server has not sent GOAWAY: new streams may be opened.
  bool usable() const noexcept { return session_ && !dead_ && !goaway_ && !shutting_down_; }
  bool closed() const noexcept { return dead_; }
  // Why the connection was lost, when a read or write failed ("read: ...", with what the
  // transport knows, such as a TLS alert); empty otherwise.
  const std::string& failure() const noexcept { return failure_; }
  bool reader_flow_control() const noexcept { return reader_flow_control_; }
  // The server sent GOAWAY.
  bool goaway_received() const noexcept { return goaway_; }
  std::size_t open_streams() const noexcept { return streams_.size(); }
  const std::string& peer() const noexcept { return transport_->peer(); }
  co::TimerWheel& wheel() noexcept { return wheel_; }
  net::Transport& transport() noexcept { return *transport_; }
  // Woken whenever the connection's own state changes (GOAWAY, closed).
  void set_state_waiter(co::Wakeup* w) noexcept { state_waiter_ = w; }

  // Used by ClientStream.
  nghttp2_session* session() noexcept { return session_; }
  void want_write() noexcept { writer_wakeup_.notify(); }

 private:
  friend struct ClientCallbacks;
  asio::awaitable<void> read_loop();
  asio::awaitable<void> write_loop();
  // Records (and logs at debug) why a read or write ended the connection.
  void note_failure(const char* what, std::error_code ec);
  void fail_streams() noexcept;
  void notify_state() noexcept {
    if (state_waiter_) state_waiter_->notify();
  }
  ClientStream* stream(std::int32_t id) noexcept;

  int on_header(const nghttp2_frame* frame, const std::uint8_t* name, std::size_t namelen,
                const std::uint8_t* value, std::size_t valuelen);
  int on_frame_recv(const nghttp2_frame* frame);
  int on_data_chunk(std::int32_t stream_id, const std::uint8_t* data, std::size_t len);
  int on_stream_close(std::int32_t stream_id, std::uint32_t error_code);

  std::unique_ptr<net::Transport> transport_;
  co::TimerWheel& wheel_;
  nghttp2_session* session_ = nullptr;
  std::unordered_map<std::int32_t, std::shared_ptr<ClientStream>> streams_;
  co::Wakeup writer_wakeup_;
  co::Wakeup writer_done_wakeup_;
  co::Wakeup* state_waiter_ = nullptr;
  std::string out_;
  // DATA received during one mem_recv, given back to the connection window after it returns.
  std::size_t unconsumed_connection_bytes_ = 0;
  bool reader_flow_control_ = false;
  bool dead_ = false;
  std::string failure_;
  bool received_ = false;  // any byte from the server after the handshake
  bool goaway_ = false;
  bool shutting_down_ = false;
  bool reader_done_ = false;
  bool writer_running_ = false;
};

}  // namespace dispatchd::h2
