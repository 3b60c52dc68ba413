#include "support/raw_client.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>
#include <stdexcept>

namespace dispatchd::test {

namespace {
std::optional<std::string> find(const std::vector<std::pair<std::string, std::string>>& v,
                                const std::string& name) {
  for (const auto& [k, val] : v) {
    if (k == name) return val;
  }
  return std::nullopt;
}
}  // namespace

std::optional<std::string> RawResponse::header(const std::string& name) const {
  return find(headers, name);
}
std::optional<std::string> RawResponse::trailer(const std::string& name) const {
  return find(trailers, name);
}
std::optional<int> RawResponse::grpc_status() const {
  auto v = trailer("grpc-status");
  if (!v) v = header("grpc-status");
  if (!v) return std::nullopt;
  return std::stoi(*v);
}
std::string RawResponse::grpc_message() const {
  auto v = trailer("grpc-message");
  if (!v) v = header("grpc-message");
  return v.value_or("");
}

std::string grpc_frame(const std::string& payload, std::uint8_t flag) {
  std::string out(5, '\0');
  out[0] = static_cast<char>(flag);
  std::uint32_t n = static_cast<std::uint32_t>(payload.size());
  out[1] = static_cast<char>(n >> 24);
  out[2] = static_cast<char>(n >> 16);
  out[3] = static_cast<char>(n >> 8);
  out[4] = static_cast<char>(n);
  return out + payload;
}

RawClient::RawClient(unsigned short port) {
  fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd_ < 0) throw std::runtime_error("socket");
  int one = 1;
  ::setsockopt(fd_, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
    throw std::runtime_error(std::string("connect: ") + std::strerror(errno));
  }
  nghttp2_session_callbacks* cbs;
  nghttp2_session_callbacks_new(&cbs);
  nghttp2_session_callbacks_set_on_header_callback(cbs, on_header);
  nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cbs, on_data);
  nghttp2_session_callbacks_set_on_stream_close_callback(cbs, on_close);
  nghttp2_session_callbacks_set_on_frame_recv_callback(cbs, on_frame_recv);
  nghttp2_session_client_new(&session_, cbs, this);
  nghttp2_session_callbacks_del(cbs);
}

RawClient::~RawClient() {
  if (session_) nghttp2_session_del(session_);
  if (fd_ >= 0) ::close(fd_);
}

void RawClient::start() {
  nghttp2_settings_entry iv[] = {{NGHTTP2_SETTINGS_ENABLE_PUSH, 0}};
  nghttp2_submit_settings(session_, NGHTTP2_FLAG_NONE, iv, 1);
}

std::int32_t RawClient::request(const std::vector<std::pair<std::string, std::string>>& headers,
                                std::optional<std::string> body, bool end_stream) {
  std::vector<nghttp2_nv> nv;
  for (const auto& [k, v] : headers) {
    nv.push_back({const_cast<std::uint8_t*>(reinterpret_cast<const std::uint8_t*>(k.data())),
                  const_cast<std::uint8_t*>(reinterpret_cast<const std::uint8_t*>(v.data())),
                  k.size(), v.size(), NGHTTP2_NV_FLAG_NONE});
  }
  std::int32_t id;
  if (body) {
    nghttp2_data_provider prd;
    prd.source.ptr = nullptr;
    prd.read_callback = read_body;
    id = nghttp2_submit_request(session_, nullptr, nv.data(), nv.size(), &prd, nullptr);
    bodies_[id] = {std::move(*body), 0};
    body_end_stream_[id] = end_stream;
  } else {
    id = nghttp2_submit_headers(session_, end_stream ? NGHTTP2_FLAG_END_STREAM : NGHTTP2_FLAG_NONE,
                                -1, nullptr, nv.data(), nv.size(), nullptr);
  }
  if (id < 0) throw std::runtime_error(std::string("submit: ") + nghttp2_strerror(id));
  responses_[id];
  return id;
}

std::int32_t RawClient::grpc_call(const std::string& path, const std::string& framed_body,
                                  const std::vector<std::pair<std::string, std::string>>& extra) {
  std::vector<std::pair<std::string, std::string>> h = {{":method", "POST"},
                                                        {":scheme", "http"},
                                                        {":authority", "localhost"},
                                                        {":path", path},
                                                        {"content-type", "application/grpc"},
                                                        {"te", "trailers"}};
  for (const auto& e : extra) {
    bool replaced = false;
    for (auto& x : h) {
      if (x.first == e.first) {
        x.second = e.second;
        replaced = true;
      }
    }
    if (!replaced) h.push_back(e);
  }
  return request(h, framed_body);
}

void RawClient::rst_stream(std::int32_t stream_id, std::uint32_t code) {
  nghttp2_submit_rst_stream(session_, NGHTTP2_FLAG_NONE, stream_id, code);
}

void RawClient::ping() {
  std::uint8_t opaque[8] = {1, 2, 3, 4, 5, 6, 7, 8};
  nghttp2_submit_ping(session_, NGHTTP2_FLAG_NONE, opaque);
}

std::string RawClient::take_output() {
  std::string out;
  for (;;) {
    const std::uint8_t* data;
    ssize_t n = nghttp2_session_mem_send(session_, &data);
    if (n <= 0) break;
    out.append(reinterpret_cast<const char*>(data), static_cast<std::size_t>(n));
  }
  return out;
}

void RawClient::send_raw(const std::string& bytes) {
  std::size_t off = 0;
  while (off < bytes.size()) {
    ssize_t n = ::send(fd_, bytes.data() + off, bytes.size() - off, MSG_NOSIGNAL);
    if (n <= 0) {
      eof_ = true;
      return;
    }
    off += static_cast<std::size_t>(n);
  }
}

void RawClient::read_once(std::chrono::milliseconds timeout) {
  pollfd p{fd_, POLLIN, 0};
  int r = ::poll(&p, 1, static_cast<int>(timeout.count()));
  if (r <= 0) return;
  char buf[16384];
  ssize_t n = ::recv(fd_, buf, sizeof buf, 0);
  if (n <= 0) {
    eof_ = true;
    return;
  }
  nghttp2_session_mem_recv(session_, reinterpret_cast<const std::uint8_t*>(buf),
                           static_cast<std::size_t>(n));
}

const RawResponse& RawClient::wait(std::int32_t stream_id, std::chrono::milliseconds timeout) {
  pump_until([&] { return responses_[stream_id].closed; }, timeout);
  return responses_[stream_id];
}

std::string RawClient::read_raw_until_eof(std::chrono::milliseconds timeout) {
  std::string out;
  auto deadline = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < deadline) {
    pollfd p{fd_, POLLIN, 0};
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    if (::poll(&p, 1, static_cast<int>(std::max<long>(left.count(), 1))) <= 0) break;
    char buf[4096];
    ssize_t n = ::recv(fd_, buf, sizeof buf, 0);
    if (n <= 0) {
      eof_ = true;
      break;
    }
    out.append(buf, static_cast<std::size_t>(n));
  }
  return out;
}

int RawClient::on_header(nghttp2_session*, const nghttp2_frame* frame, const std::uint8_t* name,
                         std::size_t namelen, const std::uint8_t* value, std::size_t valuelen,
                         std::uint8_t, void* ud) {
  auto* self = static_cast<RawClient*>(ud);
  auto& r = self->responses_[frame->hd.stream_id];
  std::pair<std::string, std::string> h{
      std::string(reinterpret_cast<const char*>(name), namelen),
      std::string(reinterpret_cast<const char*>(value), valuelen)};
  if (frame->headers.cat == NGHTTP2_HCAT_HEADERS && !r.headers.empty()) {
    r.trailers.push_back(std::move(h));
  } else {
    r.headers.push_back(std::move(h));
  }
  return 0;
}

int RawClient::on_data(nghttp2_session*, std::uint8_t, std::int32_t stream_id,
                       const std::uint8_t* data, std::size_t len, void* ud) {
  static_cast<RawClient*>(ud)->responses_[stream_id].data.append(
      reinterpret_cast<const char*>(data), len);
  return 0;
}

int RawClient::on_close(nghttp2_session*, std::int32_t stream_id, std::uint32_t code, void* ud) {
  auto& r = static_cast<RawClient*>(ud)->responses_[stream_id];
  r.closed = true;
  r.close_code = code;
  return 0;
}

int RawClient::on_frame_recv(nghttp2_session*, const nghttp2_frame* frame, void* ud) {
  auto* self = static_cast<RawClient*>(ud);
  if (frame->hd.type == NGHTTP2_GOAWAY) {
    self->goaway_ = true;
    self->goaway_code_ = frame->goaway.error_code;
    self->goaway_last_stream_ = frame->goaway.last_stream_id;
  } else if (frame->hd.type == NGHTTP2_PING && (frame->hd.flags & NGHTTP2_FLAG_ACK)) {
    ++self->ping_acks_;
  } else if (frame->hd.type == NGHTTP2_RST_STREAM) {
    self->responses_[frame->hd.stream_id].reset_by_server = true;
  } else if (frame->hd.type == NGHTTP2_WINDOW_UPDATE) {
    self->window_increments_[frame->hd.stream_id] += frame->window_update.window_size_increment;
  }
  return 0;
}

ssize_t RawClient::read_body(nghttp2_session*, std::int32_t stream_id, std::uint8_t* buf,
                             std::size_t length, std::uint32_t* flags, nghttp2_data_source*,
                             void* ud) {
  auto* self = static_cast<RawClient*>(ud);
  auto& [body, off] = self->bodies_[stream_id];
  std::size_t n = std::min(length, body.size() - off);
  std::memcpy(buf, body.data() + off, n);
  off += n;
  if (off == body.size()) {
    *flags |= NGHTTP2_DATA_FLAG_EOF;
    if (!self->body_end_stream_[stream_id]) *flags |= NGHTTP2_DATA_FLAG_NO_END_STREAM;
  }
  return static_cast<ssize_t>(n);
}

}  // namespace dispatchd::test
