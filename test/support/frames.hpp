#pragma once
// A raw HTTP/2 frame builder and reader for hostile-input tests (RFC 9113 §4.1, §6; RFC 7541).
// Unlike an HTTP/2 library it sends whatever it is asked to: a HEADERS frame that never ends,
// a reset for a stream opened one frame earlier, a SETTINGS frame thousands of times over.
// Header blocks use HPACK literals and plain indices only, never Huffman coding.

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace dispatchd::test::frames {

enum Type : std::uint8_t {
  kData = 0x0,
  kHeaders = 0x1,
  kPriority = 0x2,
  kRstStream = 0x3,
  kSettings = 0x4,
  kPing = 0x6,
  kGoaway = 0x7,
  kWindowUpdate = 0x8,
  kContinuation = 0x9,
};

enum Flag : std::uint8_t {
  kNoFlags = 0x0,
  kEndStream = 0x1,
  kAck = 0x1,
  kEndHeaders = 0x4,
};

enum Setting : std::uint16_t {
  kHeaderTableSize = 0x1,
  kEnablePush = 0x2,
  kMaxConcurrentStreams = 0x3,
  kInitialWindowSize = 0x4,
  kMaxFrameSize = 0x5,
  kMaxHeaderListSize = 0x6,
};

// HTTP/2 error codes seen in GOAWAY and RST_STREAM.
inline constexpr std::uint32_t kNoError = 0x0;
inline constexpr std::uint32_t kProtocolError = 0x1;
inline constexpr std::uint32_t kInternalError = 0x2;
inline constexpr std::uint32_t kCancel = 0x8;
inline constexpr std::uint32_t kCompressionError = 0x9;
inline constexpr std::uint32_t kEnhanceYourCalm = 0xb;

inline constexpr std::string_view kPreface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
inline constexpr std::size_t kMaxFrameSizeDefault = 16384;

using HeaderList = std::vector<std::pair<std::string, std::string>>;

inline void put_u16(std::string& out, std::uint16_t v) {
  out += static_cast<char>(v >> 8);
  out += static_cast<char>(v);
}

inline void put_u32(std::string& out, std::uint32_t v) {
  out += static_cast<char>(v >> 24);
  out += static_cast<char>(v >> 16);
  out += static_cast<char>(v >> 8);
  out += static_cast<char>(v);
}

inline std::uint32_t get_u32(std::string_view in, std::size_t at) {
  return (static_cast<std::uint32_t>(static_cast<std::uint8_t>(in[at])) << 24) |
         (static_cast<std::uint32_t>(static_cast<std::uint8_t>(in[at + 1])) << 16) |
         (static_cast<std::uint32_t>(static_cast<std::uint8_t>(in[at + 2])) << 8) |
         static_cast<std::uint32_t>(static_cast<std::uint8_t>(in[at + 3]));
}

// Any frame: 9-byte header, then the payload as given (its length is not checked).
inline std::string frame(std::uint8_t type, std::uint8_t flags, std::uint32_t stream_id,
                         std::string_view payload) {
  std::string out;
  out.reserve(9 + payload.size());
  auto n = static_cast<std::uint32_t>(payload.size());
  out += static_cast<char>(n >> 16);
  out += static_cast<char>(n >> 8);
  out += static_cast<char>(n);
  out += static_cast<char>(type);
  out += static_cast<char>(flags);
  put_u32(out, stream_id & 0x7fffffffu);
  out.append(payload);
  return out;
}

inline std::string settings(
    const std::vector<std::pair<std::uint16_t, std::uint32_t>>& entries = {}) {
  std::string payload;
  for (const auto& [id, value] : entries) {
    put_u16(payload, id);
    put_u32(payload, value);
  }
  return frame(kSettings, kNoFlags, 0, payload);
}

inline std::string settings_ack() {
  return frame(kSettings, kAck, 0, {});
}

inline std::string ping(std::uint64_t opaque = 0) {
  std::string payload;
  put_u32(payload, static_cast<std::uint32_t>(opaque >> 32));
  put_u32(payload, static_cast<std::uint32_t>(opaque));
  return frame(kPing, kNoFlags, 0, payload);
}

// The answer to a PING: its 8 opaque bytes echoed with ACK.
inline std::string ping_ack(std::string_view opaque) {
  return frame(kPing, kAck, 0, opaque);
}

inline std::string headers(std::uint32_t stream_id, std::string_view block,
                           std::uint8_t flags = kEndHeaders) {
  return frame(kHeaders, flags, stream_id, block);
}

inline std::string continuation(std::uint32_t stream_id, std::string_view block, bool end_headers) {
  return frame(kContinuation, end_headers ? kEndHeaders : kNoFlags, stream_id, block);
}

inline std::string rst_stream(std::uint32_t stream_id, std::uint32_t code = kCancel) {
  std::string payload;
  put_u32(payload, code);
  return frame(kRstStream, kNoFlags, stream_id, payload);
}

// PRIORITY (RFC 9113 §6.3, deprecated but legal in every stream state).
inline std::string priority(std::uint32_t stream_id, std::uint32_t depends_on,
                            std::uint8_t weight) {
  std::string payload;
  put_u32(payload, depends_on & 0x7fffffffu);
  payload += static_cast<char>(weight);
  return frame(kPriority, kNoFlags, stream_id, payload);
}

inline std::string window_update(std::uint32_t stream_id, std::uint32_t increment) {
  std::string payload;
  put_u32(payload, increment & 0x7fffffffu);
  return frame(kWindowUpdate, kNoFlags, stream_id, payload);
}

inline std::string data(std::uint32_t stream_id, std::string_view payload, bool end_stream) {
  return frame(kData, end_stream ? kEndStream : kNoFlags, stream_id, payload);
}

inline std::string goaway(std::uint32_t last_stream_id, std::uint32_t code) {
  std::string payload;
  put_u32(payload, last_stream_id & 0x7fffffffu);
  put_u32(payload, code);
  return frame(kGoaway, kNoFlags, 0, payload);
}

// A header block split over HEADERS and as many CONTINUATION frames as `chunk` requires.
inline std::string header_sequence(std::uint32_t stream_id, std::string_view block,
                                   std::size_t chunk = kMaxFrameSizeDefault,
                                   std::uint8_t headers_flags = kNoFlags) {
  std::string out;
  std::size_t first = std::min(chunk, block.size());
  bool only = first == block.size();
  out += headers(stream_id, block.substr(0, first),
                 static_cast<std::uint8_t>(headers_flags | (only ? kEndHeaders : kNoFlags)));
  for (std::size_t off = first; off < block.size(); off += chunk) {
    std::size_t n = std::min(chunk, block.size() - off);
    out += continuation(stream_id, block.substr(off, n), off + n == block.size());
  }
  return out;
}

// HPACK (RFC 7541 §5.1): an integer with an N-bit prefix; `first` holds the pattern bits above it.
inline void hpack_int(std::string& out, int prefix_bits, std::uint8_t first, std::uint64_t v) {
  const std::uint64_t max_prefix = (1u << prefix_bits) - 1;
  if (v < max_prefix) {
    out += static_cast<char>(first | v);
    return;
  }
  out += static_cast<char>(first | max_prefix);
  v -= max_prefix;
  while (v >= 128) {
    out += static_cast<char>((v & 0x7f) | 0x80);
    v >>= 7;
  }
  out += static_cast<char>(v);
}

inline void hpack_string(std::string& out, std::string_view s) {
  hpack_int(out, 7, 0x00, s.size());  // H = 0: no Huffman coding
  out.append(s);
}

// §6.2.2: literal header field without indexing, new name.
inline std::string hpack_literal(std::string_view name, std::string_view value) {
  std::string out(1, '\0');
  hpack_string(out, name);
  hpack_string(out, value);
  return out;
}

// §6.2.1: literal header field with incremental indexing, new name (enters the dynamic table).
inline std::string hpack_literal_indexed(std::string_view name, std::string_view value) {
  std::string out(1, '\x40');
  hpack_string(out, name);
  hpack_string(out, value);
  return out;
}

// §6.1: indexed header field (62 is the newest dynamic table entry).
inline std::string hpack_indexed(std::uint64_t index) {
  std::string out;
  hpack_int(out, 7, 0x80, index);
  return out;
}

inline std::string hpack_block(const HeaderList& headers) {
  std::string out;
  for (const auto& [name, value] : headers)
    out += hpack_literal(name, value);
  return out;
}

// The header block of a gRPC request for `path`, with `extra` headers after the standard ones.
inline std::string grpc_request_block(std::string_view path, const HeaderList& extra = {}) {
  HeaderList h = {{":method", "POST"},
                  {":scheme", "http"},
                  {":path", std::string(path)},
                  {":authority", "localhost"},
                  {"content-type", "application/grpc"},
                  {"te", "trailers"}};
  h.insert(h.end(), extra.begin(), extra.end());
  return hpack_block(h);
}

struct Frame {
  std::uint8_t type = 0;
  std::uint8_t flags = 0;
  std::uint32_t stream_id = 0;
  std::string payload;
};

// The complete frames at the start of `bytes` (a server's output: no preface). An incomplete
// last frame is left out; `consumed` says how far parsing got.
inline std::vector<Frame> parse(std::string_view bytes, std::size_t* consumed = nullptr) {
  std::vector<Frame> out;
  std::size_t off = 0;
  while (bytes.size() - off >= 9) {
    auto b = [&](std::size_t i) { return static_cast<std::uint8_t>(bytes[off + i]); };
    std::size_t len = (std::size_t{b(0)} << 16) | (std::size_t{b(1)} << 8) | b(2);
    if (bytes.size() - off - 9 < len) break;
    Frame f;
    f.type = b(3);
    f.flags = b(4);
    f.stream_id = get_u32(bytes, off + 5) & 0x7fffffffu;
    f.payload.assign(bytes.substr(off + 9, len));
    out.push_back(std::move(f));
    off += 9 + len;
  }
  if (consumed) *consumed = off;
  return out;
}

// The error code of a GOAWAY or RST_STREAM frame.
inline std::optional<std::uint32_t> error_code(const Frame& f) {
  if (f.type == kGoaway && f.payload.size() >= 8) return get_u32(f.payload, 4);
  if (f.type == kRstStream && f.payload.size() >= 4) return get_u32(f.payload, 0);
  return std::nullopt;
}

}  // namespace dispatchd::test::frames
