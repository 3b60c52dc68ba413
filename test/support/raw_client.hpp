#pragma once
// A small blocking HTTP/2 client for tests that need what grpc++ will not send: arbitrary DATA
// payloads, odd headers, byte-level splits, a non-HTTP/2 preface. Frames are produced by an
// nghttp2 client session; the bytes can be sent as they come or split by the test.

#include <nghttp2/nghttp2.h>

#include <chrono>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace dispatchd::test {

struct RawResponse {
  std::vector<std::pair<std::string, std::string>> headers;   // first HEADERS
  std::vector<std::pair<std::string, std::string>> trailers;  // second HEADERS, if any
  std::string data;
  bool closed = false;
  std::uint32_t close_code = 0;
  bool reset_by_server = false;

  std::optional<std::string> header(const std::string& name) const;
  std::optional<std::string> trailer(const std::string& name) const;
  // grpc-status from the trailers, or from the headers of a trailers-only response.
  std::optional<int> grpc_status() const;
  std::string grpc_message() const;
};

class RawClient {
 public:
  explicit RawClient(unsigned short port);
  RawClient(const RawClient&) = delete;
  RawClient& operator=(const RawClient&) = delete;
  ~RawClient();

  // Queues the client preface and SETTINGS (not yet sent).
  void start();
  // Queues a request; returns its stream ID. `body` (if any) is sent as DATA.
  std::int32_t request(const std::vector<std::pair<std::string, std::string>>& headers,
                       std::optional<std::string> body, bool end_stream = true);
  // Queues a gRPC call: POST, content-type application/grpc, te: trailers, path, extra headers.
  std::int32_t grpc_call(const std::string& path, const std::string& framed_body,
                         const std::vector<std::pair<std::string, std::string>>& extra = {});
  void rst_stream(std::int32_t stream_id, std::uint32_t code = NGHTTP2_CANCEL);
  void ping();
  int ping_acks() const { return ping_acks_; }
  // The sum of the WINDOW_UPDATE increments the server sent for a stream (0: the connection).
  std::int64_t window_increments(std::int32_t stream_id) const {
    auto it = window_increments_.find(stream_id);
    return it == window_increments_.end() ? 0 : it->second;
  }

  // Everything nghttp2 has queued, as bytes (removed from the session's queue).
  std::string take_output();
  // Writes bytes to the socket exactly as given.
  void send_raw(const std::string& bytes);
  // Sends whatever nghttp2 has queued.
  void flush() { send_raw(take_output()); }

  // Reads and processes input until `done()` or timeout. Returns done().
  template <class Pred>
  bool pump_until(Pred done, std::chrono::milliseconds timeout = std::chrono::seconds(10)) {
    auto deadline = std::chrono::steady_clock::now() + timeout;
    while (!done()) {
      flush();
      auto now = std::chrono::steady_clock::now();
      if (now >= deadline || eof_) return done();
      read_once(std::chrono::duration_cast<std::chrono::milliseconds>(deadline - now));
    }
    return true;
  }
  // Waits for the stream to close.
  const RawResponse& wait(std::int32_t stream_id,
                          std::chrono::milliseconds timeout = std::chrono::seconds(10));
  // Raw bytes read while no nghttp2 session parsing was wanted (see read_raw_until_eof).
  std::string read_raw_until_eof(std::chrono::milliseconds timeout = std::chrono::seconds(10));

  const RawResponse& response(std::int32_t stream_id) { return responses_[stream_id]; }
  bool eof() const { return eof_; }
  bool goaway_received() const { return goaway_; }
  std::uint32_t goaway_code() const { return goaway_code_; }
  std::int32_t goaway_last_stream() const { return goaway_last_stream_; }

 private:
  void read_once(std::chrono::milliseconds timeout);
  static int on_header(nghttp2_session*, const nghttp2_frame*, const std::uint8_t*, std::size_t,
                       const std::uint8_t*, std::size_t, std::uint8_t, void*);
  static int on_data(nghttp2_session*, std::uint8_t, std::int32_t, const std::uint8_t*, std::size_t,
                     void*);
  static int on_close(nghttp2_session*, std::int32_t, std::uint32_t, void*);
  static int on_frame_recv(nghttp2_session*, const nghttp2_frame*, void*);
  static ssize_t read_body(nghttp2_session*, std::int32_t, std::uint8_t*, std::size_t,
                           std::uint32_t*, nghttp2_data_source*, void*);

  int fd_ = -1;
  nghttp2_session* session_ = nullptr;
  std::map<std::int32_t, RawResponse> responses_;
  std::map<std::int32_t, std::pair<std::string, std::size_t>> bodies_;
  std::map<std::int32_t, bool> body_end_stream_;
  bool eof_ = false;
  bool goaway_ = false;
  int ping_acks_ = 0;
  std::map<std::int32_t, std::int64_t> window_increments_;
  std::uint32_t goaway_code_ = 0;
  std::int32_t goaway_last_stream_ = 0;
};

// A gRPC frame: flag byte, 4-byte big-endian length, payload.
std::string grpc_frame(const std::string& payload, std::uint8_t flag = 0);

}  // namespace dispatchd::test
