#include "dispatchd/h2/stream.hpp"

#include <nghttp2/nghttp2.h>

#include <cstring>

#include "dispatchd/h2/connection.hpp"
#include "dispatchd/h2/nv.hpp"

namespace dispatchd::h2 {

namespace {
ssize_t on_read_data(nghttp2_session*, std::int32_t, std::uint8_t* buf, std::size_t length,
                     std::uint32_t* flags, nghttp2_data_source* source, void*) {
  return static_cast<Stream*>(source->ptr)->read_data_for_nghttp2(buf, length, flags);
}
}  // namespace

Segment Segment::own(std::string bytes) {
  auto p = std::make_shared<const std::string>(std::move(bytes));
  Segment s;
  s.data = reinterpret_cast<const std::uint8_t*>(p->data());
  s.size = p->size();
  s.keep = std::move(p);
  return s;
}

Segment Segment::shared(std::shared_ptr<const std::string> bytes) {
  Segment s;
  s.data = reinterpret_cast<const std::uint8_t*>(bytes->data());
  s.size = bytes->size();
  s.keep = std::move(bytes);
  return s;
}

Stream::Stream(std::shared_ptr<Connection> conn, std::int32_t id)
    : conn_(std::move(conn)), id_(id) {}

Stream::~Stream() = default;

const std::string& Stream::peer() const noexcept {
  return conn_->peer();
}

const std::vector<Header>& Stream::headers() const noexcept {
  static const std::vector<Header> none;
  return head_ ? head_->headers : none;
}

std::string_view Stream::header(std::string_view name) const noexcept {
  for (const auto& h : headers()) {
    if (h.name == name) return h.value;
  }
  return {};
}

void Stream::return_window(std::size_t n) {
  if (!closed_) conn_->return_stream_window(id_, n);
}

void Stream::release() noexcept {
  if (--refs_ == 0) delete this;
}

bool Stream::usable() const noexcept {
  return !closed_ && conn_->alive();
}

void Stream::submit_headers(std::span<const Header> headers) {
  if (!usable() || response_started_) return;
  NvList nv(headers);
  nghttp2_data_provider prd;
  prd.source.ptr = this;
  prd.read_callback = on_read_data;
  if (nghttp2_submit_response(conn_->session(), id_, nv.data(), nv.size(), &prd) == 0) {
    response_started_ = true;
    conn_->note_headers_sent();
    conn_->want_write();
  }
}

void Stream::submit_trailers_only(std::span<const Header> headers) {
  if (!usable() || response_started_) return;
  NvList nv(headers);
  if (nghttp2_submit_response(conn_->session(), id_, nv.data(), nv.size(), nullptr) == 0) {
    response_started_ = true;
    conn_->note_headers_sent();
    finishing_ = true;
    eof_sent_ = true;
    conn_->want_write();
  }
}

void Stream::enqueue(Segment s) {
  if (!usable() || !response_started_ || finishing_ || s.size == 0) return;
  pending_bytes_ += s.size;
  out_.push_back(std::move(s));
  resume();
}

void Stream::enqueue(std::vector<Segment> pieces) {
  if (!usable() || !response_started_ || finishing_) return;
  std::size_t bytes = 0;
  for (const auto& p : pieces)
    bytes += p.size;
  if (bytes == 0) return;
  if (out_head_ == out_.size()) {
    out_ = std::move(pieces);
    out_head_ = 0;
    out_offset_ = 0;
  } else {
    out_.reserve(out_.size() + pieces.size());
    for (auto& p : pieces)
      out_.push_back(std::move(p));
  }
  pending_bytes_ += bytes;
  resume();
}

void Stream::finish(std::vector<Header> trailers) {
  if (!usable() || !response_started_ || finishing_) return;
  finishing_ = true;
  trailers_ = std::move(trailers);
  resume();
}

void Stream::resume() {
  if (deferred_) {
    deferred_ = false;
    nghttp2_session_resume_data(conn_->session(), id_);
  }
  conn_->want_write();
}

void Stream::reset(std::uint32_t error_code) {
  if (!usable()) return;
  nghttp2_submit_rst_stream(conn_->session(), NGHTTP2_FLAG_NONE, id_, error_code);
  conn_->want_write();
}

long Stream::read_data_for_nghttp2(std::uint8_t* buf, std::size_t length, std::uint32_t* flags) {
  std::size_t n = 0;
  while (n < length && out_head_ < out_.size()) {
    Segment& seg = out_[out_head_];
    std::size_t take = std::min(length - n, seg.size - out_offset_);
    std::memcpy(buf + n, seg.data + out_offset_, take);
    n += take;
    out_offset_ += take;
    if (out_offset_ == seg.size) {
      seg.keep.reset();
      ++out_head_;
      out_offset_ = 0;
    }
  }
  pending_bytes_ -= n;
  conn_->note_data_sent(n);
  if (out_head_ == out_.size()) {
    std::vector<Segment>().swap(out_);  // an idle stream holds no queue
    out_head_ = 0;
  }
  if (pending_bytes_ == 0) {
    if (finishing_) {
      *flags |= NGHTTP2_DATA_FLAG_EOF;
      eof_sent_ = true;
      if (!trailers_.empty()) {
        *flags |= NGHTTP2_DATA_FLAG_NO_END_STREAM;
        NvList nv(trailers_);
        // nghttp2 documents submit_trailer as safe inside the data source read callback.
        nghttp2_submit_trailer(conn_->session(), id_, nv.data(), nv.size());
        std::vector<Header>().swap(trailers_);
      }
    } else if (n == 0) {
      deferred_ = true;
      return NGHTTP2_ERR_DEFERRED;
    }
    notify_drained();
  }
  return static_cast<long>(n);
}

void Stream::on_closed(std::uint32_t error_code) {
  if (closed_) return;
  closed_ = true;
  close_code_ = error_code;
  unlink();
  std::vector<Segment>().swap(out_);
  out_head_ = out_offset_ = 0;
  pending_bytes_ = 0;
  if (listener_) listener_->on_close(error_code);
  notify_drained();
  release();  // the connection's reference; may delete *this
}

}  // namespace dispatchd::h2
