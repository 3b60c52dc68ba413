#pragma once
// One HTTP/2 request stream on the server side, as the upper (gRPC) layer sees it.
//
// Ownership: the Connection holds one reference while nghttp2 knows the stream; the coroutine
// that serves the request holds another (StreamRef). The object dies when both are gone, and it
// keeps its Connection alive until then. All methods run on the io_context thread.

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "dispatchd/co/intrusive_list.hpp"
#include "dispatchd/co/wakeup.hpp"

namespace dispatchd::h2 {

class Connection;

struct Header {
  std::string name;
  std::string value;
};

// What the request's HEADERS said, kept apart from the Stream so that a long-lived stream can
// free it (Stream::release_headers) once its handler has read what it needs: the header list,
// its strings and this block are ~400 B that an idle Session stream would otherwise keep.
struct RequestHead {
  std::string method, content_type;
  std::vector<Header> headers;   // not the pseudo-headers
  std::size_t header_bytes = 0;  // decoded size so far (SETTINGS_MAX_HEADER_LIST_SIZE)
};

// Callbacks from the connection into the upper layer. They run inside nghttp2 callbacks, so they
// must not call back into the stream's submit functions; they record state and notify wakeups.
class StreamListener {
 public:
  virtual ~StreamListener() = default;
  // Request DATA. The bytes count against the stream's flow-control window until the listener
  // hands them back with Stream::return_window (at once, or when its reader takes them).
  virtual void on_data(std::span<const std::uint8_t> data) = 0;
  virtual void on_end_stream() = 0;
  // The stream is gone: reset by the peer (error_code from RST_STREAM), closed normally
  // (error_code 0 after both sides ended), or lost with its connection.
  virtual void on_close(std::uint32_t error_code) = 0;
};

// A piece of outgoing DATA. `keep` owns the bytes (possibly shared by many streams: a message
// encoded once and sent to many sessions is never copied per stream before nghttp2).
struct Segment {
  std::shared_ptr<const void> keep;
  const std::uint8_t* data = nullptr;
  std::size_t size = 0;

  static Segment own(std::string bytes);
  static Segment shared(std::shared_ptr<const std::string> bytes);
};

class Stream : public co::ListHook {
 public:
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;
  ~Stream();

  std::int32_t id() const noexcept { return id_; }
  // The request's headers; none once released.
  const std::vector<Header>& headers() const noexcept;
  // First value of a header (names are lower case on the wire); empty if absent.
  std::string_view header(std::string_view name) const noexcept;
  std::string_view method() const noexcept { return head_ ? head_->method : std::string_view(); }
  std::string_view path() const noexcept { return path_; }
  std::string_view content_type() const noexcept {
    return head_ ? head_->content_type : std::string_view();
  }
  const std::string& peer() const noexcept;
  Connection& connection() noexcept { return *conn_; }

  // Frees the request headers, method and content type once the upper layer has taken what it
  // needs (the path stays).
  void release_headers() noexcept { head_.reset(); }

  void set_listener(StreamListener* l) noexcept { listener_ = l; }
  // The listener has taken (or dropped) `n` bytes of request DATA: the peer may send that many
  // more. Until then they count against the stream's flow-control window.
  void return_window(std::size_t n);

  // True once nghttp2 has closed the stream (reset, finished, or the connection is gone).
  bool closed() const noexcept { return closed_; }
  // The HTTP/2 error code it closed with, or kConnectionLost.
  std::uint32_t close_code() const noexcept { return close_code_; }
  bool response_started() const noexcept { return response_started_; }
  bool finished() const noexcept { return finishing_; }

  // When the client gives up on the request, as the upper layer read it from the request (gRPC's
  // grpc-timeout), counted from when the server saw it; none without a deadline. A reset at that
  // time is the client's deadline, not a rapid reset.
  void set_deadline(std::chrono::steady_clock::time_point t) noexcept { deadline_ = t; }
  std::optional<std::chrono::steady_clock::time_point> deadline() const noexcept {
    if (deadline_ == std::chrono::steady_clock::time_point{}) return std::nullopt;
    return deadline_;
  }

  // Response HEADERS without END_STREAM; DATA and trailers follow.
  void submit_headers(std::span<const Header> headers);
  // Response HEADERS with END_STREAM: the whole response (gRPC "trailers-only").
  void submit_trailers_only(std::span<const Header> headers);
  // Queues DATA. The writer should wait (wait_drained) before queueing much more: bytes leave
  // only as fast as the peer's flow-control window allows.
  void enqueue(Segment s);
  // Queues several segments; an idle stream takes the vector as its queue (no copy, no
  // allocation).
  void enqueue(std::vector<Segment> pieces);
  std::size_t pending_bytes() const noexcept { return pending_bytes_; }
  // Ends a started response: trailers after every queued DATA byte.
  void finish(std::vector<Header> trailers);
  // RST_STREAM with the given HTTP/2 error code.
  void reset(std::uint32_t error_code);

  // Wakes `w` whenever queued bytes drain to zero or the stream closes (one waiter).
  void set_drain_waiter(co::Wakeup* w) noexcept { drain_waiter_ = w; }

  void add_ref() noexcept { ++refs_; }
  void release() noexcept;

  // nghttp2's data source callback (internal).
  long read_data_for_nghttp2(std::uint8_t* buf, std::size_t length, std::uint32_t* flags);

 private:
  friend class Connection;
  Stream(std::shared_ptr<Connection> conn, std::int32_t id);

  bool usable() const noexcept;
  void resume();
  void on_closed(std::uint32_t error_code);
  void notify_drained() {
    if (drain_waiter_) drain_waiter_->notify();
  }

  std::shared_ptr<Connection> conn_;
  std::int32_t id_;
  unsigned refs_ = 0;
  bool closed_ = false;
  std::uint32_t close_code_ = 0;
  bool response_started_ = false;
  bool finishing_ = false;
  bool deferred_ = false;
  bool eof_sent_ = false;
  std::string path_;
  std::unique_ptr<RequestHead> head_ = std::make_unique<RequestHead>();
  std::vector<Header> trailers_;
  std::vector<Segment> out_;
  std::size_t out_head_ = 0;    // index of the first unsent segment
  std::size_t out_offset_ = 0;  // bytes of out_[out_head_] already sent
  std::size_t pending_bytes_ = 0;
  std::chrono::steady_clock::time_point deadline_{};  // the epoch: none (8 bytes, not 16)
  StreamListener* listener_ = nullptr;
  co::Wakeup* drain_waiter_ = nullptr;
};

// Intrusive reference to a Stream.
class StreamRef {
 public:
  StreamRef() = default;
  explicit StreamRef(Stream* s) noexcept : s_(s) {
    if (s_) s_->add_ref();
  }
  StreamRef(const StreamRef& o) noexcept : StreamRef(o.s_) {}
  StreamRef(StreamRef&& o) noexcept : s_(std::exchange(o.s_, nullptr)) {}
  StreamRef& operator=(StreamRef o) noexcept {
    std::swap(s_, o.s_);
    return *this;
  }
  ~StreamRef() {
    if (s_) s_->release();
  }
  Stream* get() const noexcept { return s_; }
  Stream* operator->() const noexcept { return s_; }
  Stream& operator*() const noexcept { return *s_; }
  explicit operator bool() const noexcept { return s_ != nullptr; }

 private:
  Stream* s_ = nullptr;
};

}  // namespace dispatchd::h2
