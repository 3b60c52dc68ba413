#include "dispatchd/h2/client_connection.hpp"

#include <array>
#include <asio/co_spawn.hpp>
#include <asio/detached.hpp>
#include <cstring>
#include <string_view>

#include "dispatchd/h2/nv.hpp"
#include "dispatchd/log.hpp"
#include "dispatchd/net/tls_stream.hpp"

namespace dispatchd::h2 {

namespace {
constexpr std::size_t kClientReadBufferSize = 64 * 1024;
constexpr std::size_t kClientWriteBatch = 64 * 1024;

std::uint8_t* client_read_buffer() {
  thread_local std::array<std::uint8_t, kClientReadBufferSize> buf;
  return buf.data();
}
}  // namespace

// nghttp2 callbacks: each casts user_data once and forwards.
struct ClientCallbacks {
  static ClientConnection& self(void* ud) { return *static_cast<ClientConnection*>(ud); }

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
  static ssize_t read_data(nghttp2_session*, std::int32_t, std::uint8_t* buf, std::size_t length,
                           std::uint32_t* flags, nghttp2_data_source* source, void*) {
    return static_cast<ClientStream*>(source->ptr)->read_data(buf, length, flags);
  }
};

// ---------------------------------------------------------------------------------------------
// ClientStream

ClientStream::~ClientStream() = default;

void ClientStream::send(std::string bytes, bool end) {
  if (closed_ || eof_sent_ || out_end_) return;
  if (out_.empty()) {
    out_ = std::move(bytes);
    out_off_ = 0;
  } else {
    out_ += bytes;
  }
  out_end_ = end;
  nghttp2_session* s = conn_->session();
  if (deferred_ && s) {
    deferred_ = false;
    nghttp2_session_resume_data(s, id_);
  }
  conn_->want_write();
}

void ClientStream::reset(std::uint32_t error_code) {
  if (closed_) return;
  if (nghttp2_session* s = conn_->session(); s && !conn_->closed()) {
    nghttp2_submit_rst_stream(s, NGHTTP2_FLAG_NONE, id_, error_code);
    conn_->want_write();
  }
}

void ClientStream::consume(std::size_t n) {
  if (n == 0 || closed_ || !conn_->reader_flow_control()) return;
  if (nghttp2_session* s = conn_->session(); s && !conn_->closed()) {
    nghttp2_session_consume_stream(s, id_, n);
    conn_->want_write();
  }
}

void ClientStream::set_deadline(co::TimerWheel::Clock::time_point deadline) {
  if (closed_) return;
  conn_->wheel().arm(deadline_, deadline);
}

long ClientStream::read_data(std::uint8_t* buf, std::size_t length, std::uint32_t* flags) {
  std::size_t n = std::min(length, out_.size() - out_off_);
  if (n > 0) std::memcpy(buf, out_.data() + out_off_, n);
  out_off_ += n;
  if (out_off_ == out_.size()) {
    if (n > 0) waiter_->notify();  // a relay may queue its next message now
    std::string().swap(out_);
    out_off_ = 0;
    if (out_end_) {
      *flags |= NGHTTP2_DATA_FLAG_EOF;
      eof_sent_ = true;
    } else if (n == 0) {
      deferred_ = true;
      return NGHTTP2_ERR_DEFERRED;
    }
  }
  return static_cast<long>(n);
}

void ClientStream::on_closed(std::uint32_t code) {
  if (closed_) return;
  closed_ = true;
  close_code_ = code;
  conn_->wheel().disarm(deadline_);
  std::string().swap(out_);
  waiter_->notify();
}

// ---------------------------------------------------------------------------------------------
// ClientConnection

ClientConnection::ClientConnection(std::unique_ptr<net::Transport> transport, co::TimerWheel& wheel,
                                   const ClientSettings& settings)
    : transport_(std::move(transport)),
      wheel_(wheel),
      reader_flow_control_(settings.reader_flow_control) {
  nghttp2_session_callbacks* cbs = nullptr;
  nghttp2_session_callbacks_new(&cbs);
  nghttp2_session_callbacks_set_on_header_callback(cbs, &ClientCallbacks::on_header);
  nghttp2_session_callbacks_set_on_frame_recv_callback(cbs, &ClientCallbacks::on_frame_recv);
  nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cbs,
                                                            &ClientCallbacks::on_data_chunk_recv);
  nghttp2_session_callbacks_set_on_stream_close_callback(cbs, &ClientCallbacks::on_stream_close);
  nghttp2_option* opt = nullptr;
  nghttp2_option_new(&opt);
  nghttp2_option_set_max_deflate_dynamic_table_size(opt, 1024);
  if (reader_flow_control_) nghttp2_option_set_no_auto_window_update(opt, 1);
  nghttp2_session_client_new2(&session_, cbs, this, opt);
  nghttp2_option_del(opt);
  nghttp2_session_callbacks_del(cbs);

  const nghttp2_settings_entry iv[] = {
      {NGHTTP2_SETTINGS_ENABLE_PUSH, 0},
      {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, settings.initial_window_size},
      {NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, settings.max_header_list_size},
      {NGHTTP2_SETTINGS_HEADER_TABLE_SIZE, settings.header_table_size},
  };
  nghttp2_submit_settings(session_, NGHTTP2_FLAG_NONE, iv, std::size(iv));
  if (settings.connection_window_size > 65535) {
    nghttp2_session_set_local_window_size(
        session_, NGHTTP2_FLAG_NONE, 0, static_cast<std::int32_t>(settings.connection_window_size));
  }
}

ClientConnection::~ClientConnection() {
  if (session_) nghttp2_session_del(session_);
}

std::expected<std::shared_ptr<ClientStream>, std::string> ClientConnection::open(
    std::span<const Header> headers, std::string body, bool end) {
  if (!usable()) {
    if (!dead_) return std::unexpected("connection closing");
    return std::unexpected(failure_.empty() ? "connection closed"
                                            : "connection closed: " + failure_);
  }
  std::shared_ptr<ClientStream> s(new ClientStream(shared_from_this()));
  NvList nv(headers);
  std::int32_t id;
  if (body.empty() && end) {
    s->eof_sent_ = true;
    id = nghttp2_submit_request(session_, nullptr, nv.data(), nv.size(), nullptr, nullptr);
  } else {
    s->out_ = std::move(body);
    s->out_end_ = end;
    nghttp2_data_provider dp{};
    dp.source.ptr = s.get();
    dp.read_callback = &ClientCallbacks::read_data;
    id = nghttp2_submit_request(session_, nullptr, nv.data(), nv.size(), &dp, nullptr);
  }
  if (id < 0) return std::unexpected(std::string("cannot open a stream: ") + nghttp2_strerror(id));
  s->id_ = id;
  streams_.emplace(id, s);
  want_write();
  return s;
}

ClientStream* ClientConnection::stream(std::int32_t id) noexcept {
  auto it = streams_.find(id);
  return it == streams_.end() ? nullptr : it->second.get();
}

asio::awaitable<void> ClientConnection::run() {
  auto self = shared_from_this();
  writer_running_ = true;
  asio::co_spawn(wheel_.io().get_executor(), write_loop(), asio::detached);

  co_await read_loop();

  reader_done_ = true;
  writer_wakeup_.notify();
  while (writer_running_)
    co_await writer_done_wakeup_.async_park();
  transport_->close();
  dead_ = true;
  fail_streams();
  nghttp2_session_del(session_);
  session_ = nullptr;
  notify_state();
}

asio::awaitable<void> ClientConnection::read_loop() {
  std::uint8_t* buf = client_read_buffer();
  for (;;) {
    if (dead_ || !nghttp2_session_want_read(session_)) co_return;
    if (auto ec = co_await transport_->wait(transport_->read_blocked_on()); ec) {
      dead_ = true;
      co_return;
    }
    for (;;) {
      if (dead_) co_return;
      std::error_code ec;
      std::size_t n = transport_->read_some({buf, kClientReadBufferSize}, ec);
      if (ec == asio::error::would_block) break;
      if (ec || n == 0) {
        if (ec && ec != asio::error::eof && ec != asio::error::connection_reset) {
          note_failure("read", ec);
        }
        dead_ = true;
        co_return;
      }
      received_ = true;
      ssize_t rv = nghttp2_session_mem_recv(session_, buf, n);
      if (rv >= 0 && unconsumed_connection_bytes_ > 0) {
        nghttp2_session_consume_connection(session_, unconsumed_connection_bytes_);
        unconsumed_connection_bytes_ = 0;
      }
      if (rv < 0) {
        log::info("{}: closing client connection: HTTP/2 error: {}", peer(), nghttp2_strerror(rv));
        nghttp2_session_terminate_session(session_, NGHTTP2_PROTOCOL_ERROR);
        writer_wakeup_.notify();
        co_return;
      }
      writer_wakeup_.notify();
      if (n < kClientReadBufferSize && !transport_->has_buffered_input()) break;
    }
  }
}

asio::awaitable<void> ClientConnection::write_loop() {
  auto self = shared_from_this();
  for (;;) {
    if (dead_) break;
    while (out_.size() < kClientWriteBatch) {
      const std::uint8_t* data = nullptr;
      ssize_t n = nghttp2_session_mem_send(session_, &data);
      if (n < 0) {
        log::info("{}: closing client connection: HTTP/2 error: {}", peer(), nghttp2_strerror(n));
        dead_ = true;
        break;
      }
      if (n == 0) break;
      out_.append(reinterpret_cast<const char*>(data), static_cast<std::size_t>(n));
    }
    if (out_.empty()) {
      if (dead_ || reader_done_ || (shutting_down_ && streams_.empty()) ||
          (!nghttp2_session_want_read(session_) && !nghttp2_session_want_write(session_))) {
        break;
      }
      std::string().swap(out_);
      co_await writer_wakeup_.async_park();
      continue;
    }
    if (!dead_) {
      std::uint64_t written = 0;
      auto ec = co_await net::write_all(
          *transport_, {reinterpret_cast<const std::uint8_t*>(out_.data()), out_.size()}, written);
      if (ec) {
        if (ec != asio::error::operation_aborted) note_failure("write", ec);
        dead_ = true;
      }
    }
    out_.clear();
  }
  std::string().swap(out_);
  transport_->close();  // the reader stops too
  writer_running_ = false;
  writer_done_wakeup_.notify();
}

void ClientConnection::shutdown() {
  if (shutting_down_ || dead_ || !session_) return;
  shutting_down_ = true;
  nghttp2_submit_goaway(session_, NGHTTP2_FLAG_NONE, 0, NGHTTP2_NO_ERROR, nullptr, 0);
  writer_wakeup_.notify();
  notify_state();
}

void ClientConnection::close() noexcept {
  if (dead_) return;
  dead_ = true;
  transport_->close();
  writer_wakeup_.notify();
  notify_state();
}

void ClientConnection::note_failure(const char* what, std::error_code ec) {
  // A TLS transport keeps OpenSSL's account of a failed read or write (the peer's alert).
  auto* tls = dynamic_cast<const net::TlsStream*>(transport_.get());
  std::string detail = tls ? tls->handshake_error() : std::string();
  // A TLS 1.3 server checks our certificate after our side of the handshake has ended: when it
  // refuses it, its alert may be lost with the connection's reset.
  if (tls && detail.empty() && !received_) {
    detail =
        "the server ended the connection before sending anything; did it refuse our client "
        "certificate?";
  }
  failure_ = std::string(what) + ": " + ec.message() + (detail.empty() ? "" : " (" + detail + ")");
  log::debug("{}: {}", peer(), failure_);
}

void ClientConnection::fail_streams() noexcept {
  auto streams = std::move(streams_);
  streams_.clear();
  for (auto& [id, s] : streams)
    s->on_closed(kConnectionLost);
}

int ClientConnection::on_header(const nghttp2_frame* frame, const std::uint8_t* name,
                                std::size_t namelen, const std::uint8_t* value,
                                std::size_t valuelen) {
  if (frame->hd.type != NGHTTP2_HEADERS) return 0;
  ClientStream* s = stream(frame->hd.stream_id);
  if (!s) return 0;
  Header h{std::string(reinterpret_cast<const char*>(name), namelen),
           std::string(reinterpret_cast<const char*>(value), valuelen)};
  if (frame->headers.cat == NGHTTP2_HCAT_RESPONSE) {
    s->headers_.push_back(std::move(h));
  } else if (frame->headers.cat == NGHTTP2_HCAT_HEADERS) {
    s->trailers_.push_back(std::move(h));
  }
  return 0;
}

int ClientConnection::on_frame_recv(const nghttp2_frame* frame) {
  switch (frame->hd.type) {
    case NGHTTP2_HEADERS:
    case NGHTTP2_DATA: {
      ClientStream* s = stream(frame->hd.stream_id);
      if (!s) break;
      if (frame->hd.type == NGHTTP2_HEADERS && frame->headers.cat == NGHTTP2_HCAT_RESPONSE) {
        s->headers_received_ = true;
      }
      if (frame->hd.flags & NGHTTP2_FLAG_END_STREAM) s->ended_ = true;
      s->waiter_->notify();
      break;
    }
    case NGHTTP2_GOAWAY:
      goaway_ = true;
      notify_state();
      break;
    default:
      break;
  }
  return 0;
}

int ClientConnection::on_data_chunk(std::int32_t stream_id, const std::uint8_t* data,
                                    std::size_t len) {
  if (reader_flow_control_) unconsumed_connection_bytes_ += len;
  if (ClientStream* s = stream(stream_id)) {
    s->in_.append(reinterpret_cast<const char*>(data), len);
    s->waiter_->notify();
  }
  return 0;
}

int ClientConnection::on_stream_close(std::int32_t stream_id, std::uint32_t error_code) {
  auto it = streams_.find(stream_id);
  if (it == streams_.end()) return 0;
  std::shared_ptr<ClientStream> s = std::move(it->second);
  streams_.erase(it);
  s->on_closed(error_code);
  if (shutting_down_ && streams_.empty()) writer_wakeup_.notify();
  return 0;
}

}  // namespace dispatchd::h2
