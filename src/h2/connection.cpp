#include "dispatchd/h2/connection.hpp"

#include <array>
#include <cstring>
#include <string_view>
#include <vector>

#include "dispatchd/log.hpp"

namespace dispatchd::h2 {

namespace {
constexpr std::size_t kReadBufferSize = 64 * 1024;
constexpr std::size_t kWriteBatch = 64 * 1024;
// nghttp2's own default, stated here because the flood rule relies on it.
constexpr std::size_t kMaxOutboundAcks = 1000;
// nghttp2's reset limit, as a multiple of ours.
constexpr std::uint64_t kResetBackstop = 10;
constexpr std::string_view kClientMagic = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

// One read buffer for the whole thread: bytes are handed to nghttp2 before the next read.
std::uint8_t* read_buffer() {
  thread_local std::array<std::uint8_t, kReadBufferSize> buf;
  return buf.data();
}
}  // namespace

// nghttp2 callbacks: each casts user_data once and forwards.
struct Callbacks {
  static Connection& self(void* ud) { return *static_cast<Connection*>(ud); }

  static int on_begin_frame(nghttp2_session*, const nghttp2_frame_hd* hd, void* ud) {
    return self(ud).on_begin_frame(*hd);
  }
  static int on_begin_headers(nghttp2_session*, const nghttp2_frame* frame, void* ud) {
    return self(ud).on_begin_headers(frame);
  }
  static int on_header(nghttp2_session*, const nghttp2_frame* frame, const std::uint8_t* name,
                       std::size_t namelen, const std::uint8_t* value, std::size_t valuelen,
                       std::uint8_t, void* ud) {
    return self(ud).on_header(frame, name, namelen, value, valuelen);
  }
  static int on_frame_recv(nghttp2_session*, const nghttp2_frame* frame, void* ud) {
    return self(ud).on_frame_recv(frame);
  }
  static int on_data_chunk_recv(nghttp2_session*, std::uint8_t, std::int32_t stream_id,
                                const std::uint8_t* data, std::size_t len, void* ud) {
    return self(ud).on_data_chunk(stream_id, data, len);
  }
  static int on_stream_close(nghttp2_session*, std::int32_t stream_id, std::uint32_t error_code,
                             void* ud) {
    return self(ud).on_stream_close(stream_id, error_code);
  }
  static int on_error(nghttp2_session*, int code, const char* msg, std::size_t len, void* ud) {
    log::debug("{}: http2: {} ({})", self(ud).peer(), std::string_view(msg, len),
               nghttp2_strerror(code));
    return 0;
  }
};

Connection::Connection(std::unique_ptr<net::Transport> transport, RequestSink& sink,
                       const Settings& settings, co::TimerWheel& wheel)
    : transport_(std::move(transport)),
      sink_(sink),
      settings_(settings),
      wheel_(wheel),
      handlers_(wheel.io().get_executor()) {
  nghttp2_session_callbacks* cbs = nullptr;
  nghttp2_session_callbacks_new(&cbs);
  nghttp2_session_callbacks_set_on_begin_frame_callback(cbs, &Callbacks::on_begin_frame);
  nghttp2_session_callbacks_set_on_begin_headers_callback(cbs, &Callbacks::on_begin_headers);
  nghttp2_session_callbacks_set_on_header_callback(cbs, &Callbacks::on_header);
  nghttp2_session_callbacks_set_on_frame_recv_callback(cbs, &Callbacks::on_frame_recv);
  nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cbs, &Callbacks::on_data_chunk_recv);
  nghttp2_session_callbacks_set_on_stream_close_callback(cbs, &Callbacks::on_stream_close);
  nghttp2_session_callbacks_set_error_callback2(cbs, &Callbacks::on_error);
  nghttp2_option* opt = nullptr;
  nghttp2_option_new(&opt);
  // Our responses repeat a handful of headers; a small encoder table is enough.
  nghttp2_option_set_max_deflate_dynamic_table_size(opt, 1024);
  nghttp2_option_set_max_continuations(opt, settings_.max_continuations);
  // A peer that sends PINGs or SETTINGS but does not read the ACKs: at most this many queue up
  // before nghttp2 gives up on it (FLOODED, answered with ENHANCE_YOUR_CALM).
  nghttp2_option_set_max_outbound_ack(opt, kMaxOutboundAcks);
  // nghttp2's own rapid-reset guard is a backstop behind ours (which answers ENHANCE_YOUR_CALM).
  // It counts every reset, answered streams too, so it sits well above ours.
  nghttp2_option_set_stream_reset_rate_limit(
      opt, settings_.reset_burst * kResetBackstop,
      static_cast<std::uint64_t>(settings_.reset_rate * kResetBackstop));
  // nghttp2 keeps every closed peer stream (up to MAX_CONCURRENT_STREAMS, 4096, per connection)
  // for RFC 7540 priorities, which we do not use: an agent's Heartbeat every 5 s would pile up a
  // stream object per call for hours (~1.5 MiB per connection at the cap). Drop them at close.
  nghttp2_option_set_no_closed_streams(opt, 1);
  // Flow control of request DATA is ours (docs/architecture.md, "Flow control of requests"):
  // the connection's window comes back as soon as DATA is read, a stream's only as its handler
  // takes the messages, so a peer ahead of its handler is held back by the stream window.
  nghttp2_option_set_no_auto_window_update(opt, 1);
  nghttp2_session_server_new3(&session_, cbs, this, opt, frame_memory_.nghttp2());
  nghttp2_option_del(opt);
  nghttp2_session_callbacks_del(cbs);

  const nghttp2_settings_entry iv[] = {
      {NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, settings_.max_concurrent_streams},
      {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, settings_.initial_window_size},
      {NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, settings_.max_header_list_size},
      {NGHTTP2_SETTINGS_HEADER_TABLE_SIZE, settings_.header_table_size},
  };
  nghttp2_submit_settings(session_, NGHTTP2_FLAG_NONE, iv, std::size(iv));
}

Connection::~Connection() {
  if (session_) nghttp2_session_del(session_);
}

asio::awaitable<void> Connection::run() {
  auto self = shared_from_this();
  wheel_.arm_after(deadline_, settings_.preface_timeout);
  last_recv_ = std::chrono::steady_clock::now();
  if (settings_.keepalive_time.count() > 0) wheel_.arm_after(keepalive_, settings_.keepalive_time);
  if (settings_.write_stall_timeout.count() > 0) {
    wheel_.arm_after(stall_check_, settings_.write_stall_timeout);
  }
  writer_running_ = true;
  handlers_.spawn(write_loop());

  co_await read_loop();

  // Let the writer flush what is queued (GOAWAY, final frames), bounded by the drain timeout.
  reader_done_ = true;
  if (dead_) {
    transport_->close();
  } else if (!deadline_.armed()) {
    wheel_.arm_after(deadline_, settings_.drain_timeout);
  }
  writer_wakeup_.notify();
  while (writer_running_)
    co_await writer_done_wakeup_.async_park();
  transport_->close();
  dead_ = true;
  wheel_.disarm(deadline_);
  wheel_.disarm(keepalive_);
  wheel_.disarm(stall_check_);
  wheel_.disarm(frame_release_);
  fail_streams();
  co_await handlers_.join();
  nghttp2_session_del(session_);
  session_ = nullptr;
}

asio::awaitable<void> Connection::read_loop() {
  std::uint8_t* buf = read_buffer();
  for (;;) {
    if (dead_ || !nghttp2_session_want_read(session_)) co_return;
    if (auto ec = co_await transport_->wait(transport_->read_blocked_on()); ec) {
      dead_ = true;
      co_return;
    }
    for (;;) {
      if (dead_) co_return;
      std::error_code ec;
      std::size_t n = transport_->read_some({buf, kReadBufferSize}, ec);
      if (ec == asio::error::would_block) break;
      if (ec || n == 0) {
        if (ec && ec != asio::error::eof && ec != asio::error::connection_reset) {
          log::debug("{}: read: {}", peer(), ec.message());
        }
        dead_ = true;
        co_return;
      }
      stats_.bytes_in += n;
      std::span<const std::uint8_t> data(buf, n);
      if (!preface_seen_ && reject_non_h2(data)) co_return;
      last_recv_ = std::chrono::steady_clock::now();
      ping_outstanding_ = false;
      receiving_ = true;
      ssize_t rv = nghttp2_session_mem_recv(session_, data.data(), data.size());
      receiving_ = false;
      if (rv >= 0 && !calm_down_) return_windows();
      if (calm_down_) {
        nghttp2_session_terminate_session(session_, NGHTTP2_ENHANCE_YOUR_CALM);
        writer_wakeup_.notify();
        co_return;
      }
      if (rv < 0) {
        bool flooded = rv == NGHTTP2_ERR_FLOODED;
        if (flooded) {
          // Over nghttp2's cap on queued PING/SETTINGS ACKs: the peer sends but does not read.
          log::warn(
              "{}: closing connection: {} unread PING/SETTINGS ACKs queued "
              "(GOAWAY ENHANCE_YOUR_CALM)",
              peer(), kMaxOutboundAcks);
          calmed_ = true;
        } else if (unexpected_stream_id_ != 0) {
          log::info(
              "{}: closing connection: HEADERS on stream {}, which the client skipped before "
              "opening stream {} (RFC 9113 §5.1.1)",
              peer(), unexpected_stream_id_, highest_stream_id_);
        } else {
          log::info("{}: closing connection: HTTP/2 error: {}", peer(), nghttp2_strerror(rv));
        }
        close_reason_ =
            unexpected_stream_id_ != 0 ? "unexpected stream identifier" : nghttp2_strerror(rv);
        nghttp2_session_terminate_session(
            session_, flooded ? NGHTTP2_ENHANCE_YOUR_CALM : NGHTTP2_PROTOCOL_ERROR);
        writer_wakeup_.notify();
        co_return;
      }
      // Receiving queues frames too (SETTINGS ACK, WINDOW_UPDATE, PING ACK): always flush.
      writer_wakeup_.notify();
      if (n < kReadBufferSize && !transport_->has_buffered_input()) break;
    }
  }
}

bool Connection::reject_non_h2(std::span<const std::uint8_t> data) {
  // Compare what has arrived so far with the client connection preface.
  std::size_t already = static_cast<std::size_t>(stats_.bytes_in) - data.size();
  if (already >= kClientMagic.size()) return false;
  std::size_t n = std::min(data.size(), kClientMagic.size() - already);
  if (std::memcmp(data.data(), kClientMagic.data() + already, n) == 0) {
    // The client speaks HTTP/2 so far: our SETTINGS may go out now.
    client_spoke_h2_ = true;
    writer_wakeup_.notify();
    return false;
  }
  std::string_view head(reinterpret_cast<const char*>(data.data()), std::min<std::size_t>(n, 16));
  bool http1 = already == 0 && (head.starts_with("GET ") || head.starts_with("POST ") ||
                                head.starts_with("PUT ") || head.starts_with("HEAD ") ||
                                head.starts_with("OPTIONS ") || head.starts_with("DELETE ") ||
                                head.starts_with("PATCH ") || head.starts_with("CONNECT "));
  if (http1) {
    log::info("{}: refused an HTTP/1.1 request: this server speaks HTTP/2 only", peer());
    static constexpr std::string_view body =
        "This is a gRPC server: it speaks HTTP/2 only. Use an HTTP/2 client (h2 over TLS with "
        "ALPN, or h2c with prior knowledge).\n";
    early_reply_ =
        "HTTP/1.1 505 HTTP Version Not Supported\r\nContent-Type: text/plain\r\nConnection: "
        "close\r\nContent-Length: " +
        std::to_string(body.size()) + "\r\n\r\n" + std::string(body);
  } else {
    log::info("{}: closing connection: invalid HTTP/2 connection preface", peer());
  }
  nghttp2_session_terminate_session(session_, NGHTTP2_PROTOCOL_ERROR);
  if (!early_reply_.empty()) {
    // Drop nghttp2's own frames: an HTTP/1.1 client only understands the plain reply.
    reader_done_ = true;
  }
  writer_wakeup_.notify();
  return true;
}

// The writer: the only caller of nghttp2_session_mem_send (docs/architecture.md, "The h2 write
// loop and backpressure"). Callbacks, the reader and the streams never write; they notify
// writer_wakeup_, and each round pulls every frame nghttp2 has ready, up to kWriteBatch, so many
// small frames go out in one write. Response DATA leaves only as the peer's flow-control windows
// allow: a stream with nothing queued answers NGHTTP2_ERR_DEFERRED and is resumed by its next
// enqueue, and a handler's write waits until its stream has drained, so a peer that stops
// reading holds one message per stream here, not a growing queue.
// When idle the batch string is freed and the frame buffer's pages are released later
// (frame_release_delay). The loop ends when the connection is dead, when the reader has ended
// and everything queued is out, or when nghttp2 wants neither to read nor to write (after
// GOAWAY, once the last stream closed).
asio::awaitable<void> Connection::write_loop() {
  for (;;) {
    if (dead_) break;
    bool early_only = false;
    if (early_reply_.empty() && !client_spoke_h2_ && !reader_done_) {
      // Our SETTINGS wait for the client's first bytes: a client that is not speaking HTTP/2
      // (HTTP/1.1, TLS to a plaintext port) gets a plain answer, not binary frames.
      co_await writer_wakeup_.async_park();
      continue;
    }
    if (!early_reply_.empty()) {
      out_ = std::move(early_reply_);
      early_reply_.clear();
      early_only = true;
    } else {
      while (out_.size() < kWriteBatch) {
        const std::uint8_t* data = nullptr;
        ssize_t n = nghttp2_session_mem_send(session_, &data);
        if (n < 0) {
          log::info("{}: closing connection: HTTP/2 error: {}", peer(), nghttp2_strerror(n));
          dead_ = true;
          break;
        }
        if (n == 0) {
          frames_drained_ = true;
          break;
        }
        frames_drained_ = false;
        frame_memory_.note_written();
        out_.append(reinterpret_cast<const char*>(data), static_cast<std::size_t>(n));
      }
    }
    if (out_.empty()) {
      if (dead_ || reader_done_ ||
          (!nghttp2_session_want_read(session_) && !nghttp2_session_want_write(session_))) {
        break;
      }
      std::string().swap(out_);  // an idle connection holds no output buffer
      if (frame_memory_.dirty() && !frame_release_.armed()) {
        wheel_.arm_after(frame_release_, settings_.frame_release_delay);
      }
      co_await writer_wakeup_.async_park();
      continue;
    }
    if (!dead_) {
      auto ec = co_await net::write_all(
          *transport_, {reinterpret_cast<const std::uint8_t*>(out_.data()), out_.size()},
          stats_.bytes_out);
      if (ec) {
        if (ec != asio::error::operation_aborted) {
          log::debug("{}: write: {}", peer(), ec.message());
        }
        dead_ = true;
      }
    }
    out_.clear();
    if (early_only) break;
  }
  std::string().swap(out_);
  // Nothing more will be written: stop the reader too.
  transport_->close();
  writer_running_ = false;
  writer_done_wakeup_.notify();
}

void Connection::on_frame_release() {
  // Only between frames: a frame bigger than what one write takes may still be half in the buffer.
  if (frames_drained_ && frame_memory_.release_idle()) ++stats_.frame_pages_released;
}

void Connection::shutdown() {
  if (shutting_down_ || dead_ || !session_) return;
  shutting_down_ = true;
  nghttp2_submit_goaway(session_, NGHTTP2_FLAG_NONE,
                        nghttp2_session_get_last_proc_stream_id(session_), NGHTTP2_NO_ERROR,
                        nullptr, 0);
  wheel_.arm_after(deadline_, settings_.drain_timeout);
  writer_wakeup_.notify();
}

void Connection::close() noexcept {
  if (dead_) return;
  dead_ = true;
  transport_->close();
  writer_wakeup_.notify();
}

void Connection::on_deadline() {
  if (!preface_seen_ && !shutting_down_ && !reader_done_) {
    log::info("{}: closing connection: no HTTP/2 preface within {} ms", peer(),
              settings_.preface_timeout.count());
  } else if (open_streams_ > 0) {
    log::info("{}: closing connection: drain timeout with {} streams open", peer(), open_streams_);
  }
  close();
}

void Connection::calm_down(const char* what) {
  if (calm_down_) return;
  calm_down_ = true;
  calmed_ = true;
  close_reason_ = std::string("too many ") + what;
  log::warn("{}: closing connection: too many {} (GOAWAY ENHANCE_YOUR_CALM)", peer(), what);
}

bool Connection::control_frame_allowed(std::uint64_t& mark,
                                       std::chrono::steady_clock::time_point now) {
  // A busy peer's PINGs and SETTINGS answer our traffic: grpc-go and grpc-core send a PING with
  // the DATA they receive (bandwidth estimation) and SETTINGS when the estimate grows. Such a
  // frame is free; only one that follows the peer's previous frame of its kind with no HEADERS
  // or DATA of ours in between takes a token, as grpc-go's server counts ping strikes.
  bool answers_our_traffic = responses_sent_ != mark;
  mark = responses_sent_;
  if (answers_our_traffic) return true;
  return control_frames_.take(settings_.control_burst, settings_.control_rate, now);
}

void Connection::on_keepalive() {
  if (dead_ || !session_) return;
  auto now = std::chrono::steady_clock::now();
  auto idle = now - last_recv_;
  if (idle < settings_.keepalive_time) {
    wheel_.arm(keepalive_, last_recv_ + settings_.keepalive_time);
    return;
  }
  if (!ping_outstanding_) {
    ping_outstanding_ = true;
    nghttp2_submit_ping(session_, NGHTTP2_FLAG_NONE, nullptr);
    writer_wakeup_.notify();
    wheel_.arm_after(keepalive_, settings_.keepalive_timeout);
    return;
  }
  close_reason_ = "keepalive timeout";
  log::info("{}: closing connection: no answer to a keepalive PING within {} ms", peer(),
            settings_.keepalive_timeout.count());
  close();
}

std::size_t Connection::retained_streams() const {
  if (session_ == nullptr) return 0;
  std::size_t n = 0;
  std::vector<nghttp2_stream*> todo{nghttp2_session_get_root_stream(session_)};
  while (!todo.empty()) {
    nghttp2_stream* s = todo.back();
    todo.pop_back();
    for (auto* c = nghttp2_stream_get_first_child(s); c; c = nghttp2_stream_get_next_sibling(c)) {
      todo.push_back(c);
      ++n;
    }
  }
  return n;
}

bool Connection::streams_waiting() const noexcept {
  bool pending = false;
  const_cast<co::IntrusiveList<Stream>&>(streams_).for_each([&](Stream& s) {
    if (s.pending_bytes() > 0) pending = true;
  });
  return pending;
}

void Connection::on_stall_check() {
  if (dead_ || !session_) return;
  // Stalled: something waits to be sent and nothing moved since the last check — neither bytes
  // to the socket nor stream DATA to nghttp2 (PING ACKs alone do not keep a stream alive).
  bool socket_stalled = !out_.empty() && stats_.bytes_out == stall_bytes_out_;
  bool streams_stalled = streams_waiting() && stats_.data_out == stall_data_out_;
  if (socket_stalled || streams_stalled) {
    close_reason_ = "write stall";
    log::info("{}: closing connection: the peer accepted no data for {} ms", peer(),
              settings_.write_stall_timeout.count());
    close();
    return;
  }
  stall_bytes_out_ = stats_.bytes_out;
  stall_data_out_ = stats_.data_out;
  wheel_.arm_after(stall_check_, settings_.write_stall_timeout);
}

void Connection::fail_streams() noexcept {
  while (Stream* s = streams_.front())
    s->on_closed(kConnectionLost);
  open_streams_ = 0;
}

}  // namespace dispatchd::h2
