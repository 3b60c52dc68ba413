// MessageDecoder fed arbitrary bytes, split arbitrarily, checked against a one-shot reference.
//
// Input: byte 0 picks the maximum message size, byte 1 the number N (0..15) of chunk sizes, the
// next N bytes are chunk sizes used in turn (0 feeds an empty span), the rest is the stream.
// With N == 0 the stream arrives in one piece.

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "dispatchd/grpc/codec.hpp"

namespace {

using dispatchd::grpc::kPrefixSize;
using dispatchd::grpc::MessageDecoder;
using dispatchd::grpc::Status;
using dispatchd::grpc::StatusCode;

void check(bool ok, const char* what) {
  if (ok) return;
  std::fprintf(stderr, "decoder_fuzz: invariant violated: %s\n", what);
  std::abort();
}

std::size_t max_size_for(std::uint8_t b) {
  // Small limits make "too large" reachable; the default is what the server runs with.
  static constexpr std::size_t kLimits[] = {0, 1, 4, 5, 16, 255, 256, 4096};
  if (b < 8) return kLimits[b];
  if (b == 0xff) return dispatchd::grpc::kDefaultMaxMessageSize;
  return b;
}

// What a decoder that sees the whole stream at once must report.
struct Expected {
  struct Message {
    std::size_t end;  // offset just past the payload
    std::string_view payload;
  };
  std::vector<Message> messages;
  std::optional<StatusCode> error;
  std::size_t error_at = 0;  // bytes consumed when the error is reported (the prefix included)
  bool mid_message = false;  // the stream stops inside a prefix or a payload
};

Expected reference(std::string_view in, std::size_t max) {
  Expected e;
  std::size_t pos = 0;
  while (pos < in.size()) {
    if (in.size() - pos < kPrefixSize) {
      e.mid_message = true;
      break;
    }
    auto byte = [&](std::size_t i) { return static_cast<std::uint8_t>(in[pos + i]); };
    std::uint32_t len = (std::uint32_t{byte(1)} << 24) | (std::uint32_t{byte(2)} << 16) |
                        (std::uint32_t{byte(3)} << 8) | std::uint32_t{byte(4)};
    if (byte(0) > 1) {
      e.error = StatusCode::internal;
    } else if (byte(0) == 1) {
      e.error = StatusCode::unimplemented;
    } else if (len > max) {
      e.error = StatusCode::resource_exhausted;
    }
    if (e.error) {
      e.error_at = pos + kPrefixSize;
      break;
    }
    if (in.size() - pos - kPrefixSize < len) {
      e.mid_message = true;
      break;
    }
    e.messages.push_back({pos + kPrefixSize + len, in.substr(pos + kPrefixSize, len)});
    pos += kPrefixSize + len;
  }
  return e;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 2) return 0;
  const std::size_t max = max_size_for(data[0]);
  const std::size_t nsplits = data[1] & 15;
  if (size < 2 + nsplits) return 0;
  const std::span<const std::uint8_t> splits(data + 2, nsplits);
  const std::span<const std::uint8_t> stream(data + 2 + nsplits, size - 2 - nsplits);
  const std::string_view text(reinterpret_cast<const char*>(stream.data()), stream.size());
  const Expected want = reference(text, max);

  MessageDecoder decoder(max);
  check(!decoder.mid_message() && decoder.messages() == 0, "a fresh decoder is empty");
  std::size_t consumed = 0;
  std::size_t got = 0;
  bool failed = false;
  std::size_t next_split = 0;
  std::size_t empty_run = 0;
  for (;;) {
    std::size_t n = stream.size() - consumed;
    if (nsplits > 0) {
      std::size_t want_n = std::min<std::size_t>(n, splits[next_split++ % nsplits]);
      // A whole round of empty chunks would never finish: then feed the rest.
      empty_run = want_n == 0 ? empty_run + 1 : 0;
      if (empty_run < nsplits) n = want_n;
    }
    std::span<const std::uint8_t> chunk = stream.subspan(consumed, n);
    for (;;) {
      const std::size_t before = chunk.size();
      const auto r = decoder.feed(chunk);
      check(chunk.size() <= before, "feed never grows its input");
      consumed += before - chunk.size();
      if (r == MessageDecoder::Result::need_more) {
        check(chunk.empty(), "need_more only once the chunk is used up");
        break;
      }
      if (r == MessageDecoder::Result::error) {
        check(want.error.has_value(), "error only on a bad prefix");
        check(decoder.status().code() == *want.error, "the error's status code");
        check(consumed == want.error_at, "an error is reported right after its prefix");
        check(got == want.messages.size(), "every message before the error was delivered");
        // Sticky: whatever comes next, the decoder stays in error and consumes nothing.
        const Status first = decoder.status();
        std::span<const std::uint8_t> rest = chunk;
        check(decoder.feed(rest) == MessageDecoder::Result::error, "error is sticky");
        check(rest.size() == chunk.size(), "a failed decoder consumes nothing");
        std::span<const std::uint8_t> empty;
        check(decoder.feed(empty) == MessageDecoder::Result::error, "error is sticky (empty)");
        check(decoder.status() == first, "the status does not change after the error");
        failed = true;
        break;
      }
      // A message.
      check(got < want.messages.size(), "no more messages than the stream holds");
      const std::string payload = decoder.take();
      const auto& m = want.messages[got];
      check(payload.size() == m.payload.size(), "payload size equals the announced length");
      check(payload == m.payload, "payload bytes");
      check(consumed == m.end, "a message is returned as soon as its last byte arrives");
      ++got;
      check(decoder.messages() == got, "messages() counts delivered messages");
      check(!decoder.mid_message(), "not mid-message right after a message");
    }
    if (failed || consumed == stream.size()) break;
  }
  if (!failed) {
    check(!want.error.has_value(), "a bad prefix is reported once it is complete");
    check(consumed == stream.size(), "the whole stream is consumed");
    check(got == want.messages.size(), "every complete message is delivered");
    check(decoder.mid_message() == want.mid_message, "mid_message() at the end");
    std::span<const std::uint8_t> empty;
    check(decoder.feed(empty) == MessageDecoder::Result::need_more, "empty feed needs more");
  }
  return 0;
}
