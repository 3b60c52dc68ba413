#include "dispatchd/grpc/codec.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "dispatchd/grpc/status.hpp"
#include "grpc/health/v1/health.pb.h"

namespace dispatchd::grpc {
namespace {

using Bytes = std::vector<std::uint8_t>;
using Result = MessageDecoder::Result;

// The prefix is spelled out by hand rather than with write_prefix so that the decoder is checked
// against the wire format, not against our own encoder.
Bytes frame(std::string_view payload, std::uint8_t flag = 0) {
  auto n = static_cast<std::uint32_t>(payload.size());
  Bytes out(kPrefixSize + payload.size());
  out[0] = flag;
  out[1] = static_cast<std::uint8_t>(n >> 24);
  out[2] = static_cast<std::uint8_t>(n >> 16);
  out[3] = static_cast<std::uint8_t>(n >> 8);
  out[4] = static_cast<std::uint8_t>(n);
  std::copy(payload.begin(), payload.end(), out.begin() + kPrefixSize);
  return out;
}

Bytes prefix_only(std::uint32_t length, std::uint8_t flag = 0) {
  return {flag, static_cast<std::uint8_t>(length >> 24), static_cast<std::uint8_t>(length >> 16),
          static_cast<std::uint8_t>(length >> 8), static_cast<std::uint8_t>(length)};
}

Bytes concat(Bytes a, const Bytes& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

// A payload whose length needs two non-zero prefix bytes and whose bytes are all different
// from their neighbours, so that a misplaced byte shows.
std::string varied_payload(std::size_t n) {
  std::string s(n, '\0');
  for (std::size_t i = 0; i < n; ++i)
    s[i] = static_cast<char>((i * 7 + 3) & 0xff);
  return s;
}

// Feeds `chunks` in order, draining each one fully; returns every message decoded.
std::vector<std::string> decode_chunks(MessageDecoder& d, const std::vector<Bytes>& chunks) {
  std::vector<std::string> out;
  for (const auto& chunk : chunks) {
    std::span<const std::uint8_t> data(chunk);
    while (!data.empty()) {
      Result r = d.feed(data);
      if (r == Result::error) {
        ADD_FAILURE() << "decoder error: " << d.status().message();
        return out;
      }
      if (r == Result::message) out.push_back(d.take());
    }
  }
  return out;
}

TEST(MessageDecoderTest, DecodesMessageFedWhole) {
  MessageDecoder d;
  Bytes wire = frame("hello");
  std::span<const std::uint8_t> data(wire);

  EXPECT_EQ(d.feed(data), Result::message);
  EXPECT_EQ(d.take(), "hello");
  EXPECT_TRUE(data.empty());
  EXPECT_EQ(d.messages(), 1u);
}

TEST(MessageDecoderTest, DecodesIdenticallyWhenSplitAtEveryByteBoundary) {
  const std::string payload = varied_payload(300);
  const Bytes wire = frame(payload);
  for (std::size_t split = 0; split <= wire.size(); ++split) {
    SCOPED_TRACE("split at " + std::to_string(split));
    MessageDecoder d;
    Bytes head(wire.begin(), wire.begin() + static_cast<std::ptrdiff_t>(split));
    Bytes tail(wire.begin() + static_cast<std::ptrdiff_t>(split), wire.end());

    std::span<const std::uint8_t> first(head);
    if (split < wire.size()) {
      EXPECT_EQ(d.feed(first), Result::need_more);
      EXPECT_TRUE(first.empty());
      std::span<const std::uint8_t> second(tail);
      ASSERT_EQ(d.feed(second), Result::message);
      EXPECT_TRUE(second.empty());
    } else {
      ASSERT_EQ(d.feed(first), Result::message);
    }
    EXPECT_EQ(d.take(), payload);
  }
}

TEST(MessageDecoderTest, DecodesTwoMessagesIdenticallyWhenSplitAtEveryByteBoundary) {
  const std::string a = varied_payload(260), b = "second";
  const Bytes wire = concat(frame(a), frame(b));
  for (std::size_t split = 0; split <= wire.size(); ++split) {
    SCOPED_TRACE("split at " + std::to_string(split));
    MessageDecoder d;
    auto mid = wire.begin() + static_cast<std::ptrdiff_t>(split);
    auto got = decode_chunks(d, {Bytes(wire.begin(), mid), Bytes(mid, wire.end())});
    EXPECT_EQ(got, (std::vector<std::string>{a, b}));
    EXPECT_FALSE(d.mid_message());
  }
}

TEST(MessageDecoderTest, DecodesWhenFedOneByteAtATime) {
  const std::string payload = varied_payload(300);
  const Bytes wire = frame(payload);
  MessageDecoder d;
  for (std::size_t i = 0; i < wire.size(); ++i) {
    std::span<const std::uint8_t> one(&wire[i], 1);
    Result r = d.feed(one);
    EXPECT_TRUE(one.empty());
    if (i + 1 < wire.size()) {
      ASSERT_EQ(r, Result::need_more) << "at byte " << i;
    } else {
      ASSERT_EQ(r, Result::message);
    }
  }
  EXPECT_EQ(d.take(), payload);
  EXPECT_EQ(d.messages(), 1u);
}

TEST(MessageDecoderTest, StopsAfterFirstOfTwoBackToBackMessagesAndLeavesTheRest) {
  const Bytes second = frame("second");
  const Bytes wire = concat(frame("first"), second);
  MessageDecoder d;
  std::span<const std::uint8_t> data(wire);

  ASSERT_EQ(d.feed(data), Result::message);
  EXPECT_EQ(d.take(), "first");
  EXPECT_EQ(data.size(), second.size());

  ASSERT_EQ(d.feed(data), Result::message);
  EXPECT_EQ(d.take(), "second");
  EXPECT_TRUE(data.empty());
  EXPECT_EQ(d.messages(), 2u);
}

TEST(MessageDecoderTest, DecodesZeroLengthMessage) {
  const Bytes wire = frame("");
  MessageDecoder d;
  std::span<const std::uint8_t> data(wire);

  ASSERT_EQ(d.feed(data), Result::message);
  EXPECT_EQ(d.take(), "");
  EXPECT_TRUE(data.empty());
  EXPECT_FALSE(d.mid_message());
}

TEST(MessageDecoderTest, DecodesZeroLengthMessageFollowedByAnother) {
  const Bytes wire = concat(frame(""), frame("next"));
  MessageDecoder d;
  auto got = decode_chunks(d, {wire});
  EXPECT_EQ(got, (std::vector<std::string>{"", "next"}));
}

TEST(MessageDecoderTest, AcceptsMessageOfExactlyMaxSize) {
  MessageDecoder d(16);
  const Bytes wire = frame(std::string(16, 'x'));
  std::span<const std::uint8_t> data(wire);
  ASSERT_EQ(d.feed(data), Result::message);
  EXPECT_EQ(d.take(), std::string(16, 'x'));
}

TEST(MessageDecoderTest, RejectsLengthOverMaxAsResourceExhaustedFromThePrefixAlone) {
  MessageDecoder d(4096);
  // Only the prefix: the decoder must not wait for (or buffer) an oversized payload.
  const Bytes wire = prefix_only(5000);
  std::span<const std::uint8_t> data(wire);

  ASSERT_EQ(d.feed(data), Result::error);
  EXPECT_EQ(d.status().code(), StatusCode::resource_exhausted);
  EXPECT_NE(d.status().message().find("5000"), std::string::npos) << d.status().message();
  EXPECT_NE(d.status().message().find("4096"), std::string::npos) << d.status().message();
}

TEST(MessageDecoderTest, RejectsLengthBeyondDefaultMax) {
  MessageDecoder d;
  const Bytes wire = prefix_only(static_cast<std::uint32_t>(kDefaultMaxMessageSize + 1));
  std::span<const std::uint8_t> data(wire);
  ASSERT_EQ(d.feed(data), Result::error);
  EXPECT_EQ(d.status().code(), StatusCode::resource_exhausted);
}

TEST(MessageDecoderTest, RejectsCompressedFlagAsUnimplemented) {
  MessageDecoder d;
  const Bytes wire = frame("zipped", 1);
  std::span<const std::uint8_t> data(wire);
  ASSERT_EQ(d.feed(data), Result::error);
  EXPECT_EQ(d.status().code(), StatusCode::unimplemented);
}

TEST(MessageDecoderTest, RejectsFlagValueTwoAsInternal) {
  MessageDecoder d;
  const Bytes wire = frame("what", 2);
  std::span<const std::uint8_t> data(wire);
  ASSERT_EQ(d.feed(data), Result::error);
  EXPECT_EQ(d.status().code(), StatusCode::internal);
}

TEST(MessageDecoderTest, RejectsFlagValue255AsInternal) {
  MessageDecoder d;
  const Bytes wire = frame("what", 0xff);
  std::span<const std::uint8_t> data(wire);
  ASSERT_EQ(d.feed(data), Result::error);
  EXPECT_EQ(d.status().code(), StatusCode::internal);
}

TEST(MessageDecoderTest, StaysInErrorAfterAFailure) {
  MessageDecoder d;
  const Bytes bad = frame("x", 2);
  std::span<const std::uint8_t> data(bad);
  ASSERT_EQ(d.feed(data), Result::error);

  const Bytes good = frame("fine");
  std::span<const std::uint8_t> more(good);
  EXPECT_EQ(d.feed(more), Result::error);
  EXPECT_EQ(d.status().code(), StatusCode::internal);
  EXPECT_EQ(d.messages(), 0u);
}

TEST(MessageDecoderTest, NotMidMessageBeforeAnyBytes) {
  MessageDecoder d;
  EXPECT_FALSE(d.mid_message());
}

TEST(MessageDecoderTest, MidMessageAfterPartialPrefix) {
  MessageDecoder d;
  const Bytes wire = frame("hello");
  std::span<const std::uint8_t> data(wire.data(), 3);
  ASSERT_EQ(d.feed(data), Result::need_more);
  EXPECT_TRUE(d.mid_message());
}

TEST(MessageDecoderTest, MidMessageAfterCompletePrefixOfNonEmptyMessage) {
  MessageDecoder d;
  const Bytes wire = frame("hello");
  std::span<const std::uint8_t> data(wire.data(), kPrefixSize);
  ASSERT_EQ(d.feed(data), Result::need_more);
  EXPECT_TRUE(d.mid_message());
}

TEST(MessageDecoderTest, MidMessageAfterPartialPayload) {
  MessageDecoder d;
  const Bytes wire = frame("hello");
  std::span<const std::uint8_t> data(wire.data(), kPrefixSize + 2);
  ASSERT_EQ(d.feed(data), Result::need_more);
  EXPECT_TRUE(d.mid_message());
}

TEST(MessageDecoderTest, NotMidMessageAfterFullMessage) {
  MessageDecoder d;
  const Bytes wire = frame("hello");
  std::span<const std::uint8_t> data(wire);
  ASSERT_EQ(d.feed(data), Result::message);
  EXPECT_FALSE(d.mid_message());
}

TEST(MessageDecoderTest, MidMessageWhenSecondMessageHasStarted) {
  MessageDecoder d;
  const Bytes wire = concat(frame("one"), Bytes{0, 0});
  std::span<const std::uint8_t> data(wire);
  ASSERT_EQ(d.feed(data), Result::message);
  EXPECT_FALSE(d.mid_message());
  ASSERT_EQ(d.feed(data), Result::need_more);
  EXPECT_TRUE(d.mid_message());
}

TEST(EncodeMessageTest, RoundTripsThroughDecoder) {
  ::grpc::health::v1::HealthCheckRequest req;
  req.set_service("docker.swarmkit.v1.Dispatcher");
  const std::string wire = encode_message(req);

  MessageDecoder d;
  std::span<const std::uint8_t> data(reinterpret_cast<const std::uint8_t*>(wire.data()),
                                     wire.size());
  ASSERT_EQ(d.feed(data), Result::message);
  EXPECT_TRUE(data.empty());
  ::grpc::health::v1::HealthCheckRequest got;
  ASSERT_TRUE(got.ParseFromString(d.take()));
  EXPECT_EQ(got.service(), "docker.swarmkit.v1.Dispatcher");
}

TEST(EncodeMessageTest, WritesUncompressedBigEndianPrefixBeforeSerializedBytes) {
  ::grpc::health::v1::HealthCheckRequest req;
  req.set_service(std::string(300, 's'));  // serialized: tag, 2-byte varint 300, 300 bytes = 303
  const std::string wire = encode_message(req);

  ASSERT_EQ(wire.size(), kPrefixSize + 303);
  EXPECT_EQ(wire.substr(0, kPrefixSize), std::string("\x00\x00\x00\x01\x2f", 5));
  EXPECT_EQ(wire.substr(kPrefixSize), req.SerializeAsString());
}

TEST(EncodeMessageTest, EncodesEmptyMessageAsBarePrefix) {
  ::grpc::health::v1::HealthCheckRequest req;
  EXPECT_EQ(encode_message(req), std::string(kPrefixSize, '\0'));
}

TEST(WritePrefixTest, WritesCompressedFlagAndBigEndianLength) {
  std::array<std::uint8_t, kPrefixSize> out{};
  write_prefix(out.data(), 0x01020304, true);
  EXPECT_EQ(out, (std::array<std::uint8_t, kPrefixSize>{1, 1, 2, 3, 4}));
}

// Status lives beside the codec because the codec is what produces it on the wire path.
TEST(StatusTest, GoErrorStringMatchesGrpcGo) {
  EXPECT_EQ(Status(StatusCode::permission_denied, "x").go_error_string(),
            "rpc error: code = PermissionDenied desc = x");
}

TEST(StatusTest, GoErrorStringKeepsEmptyDescription) {
  EXPECT_EQ(Status(StatusCode::unavailable, "").go_error_string(),
            "rpc error: code = Unavailable desc = ");
}

TEST(StatusTest, CodeNamesMatchGrpcGoForEveryCode) {
  constexpr std::array<std::string_view, 17> go_names = {
      "OK",       "Canceled",       "Unknown",          "InvalidArgument",   "DeadlineExceeded",
      "NotFound", "AlreadyExists",  "PermissionDenied", "ResourceExhausted", "FailedPrecondition",
      "Aborted",  "OutOfRange",     "Unimplemented",    "Internal",          "Unavailable",
      "DataLoss", "Unauthenticated"};
  for (int code = 0; code <= 16; ++code) {
    EXPECT_EQ(status_code_name(static_cast<StatusCode>(code)), go_names[code]) << "code " << code;
  }
}

TEST(StatusTest, EnumeratorsHaveWireValues) {
  EXPECT_EQ(static_cast<int>(StatusCode::ok), 0);
  EXPECT_EQ(static_cast<int>(StatusCode::cancelled), 1);
  EXPECT_EQ(static_cast<int>(StatusCode::permission_denied), 7);
  EXPECT_EQ(static_cast<int>(StatusCode::resource_exhausted), 8);
  EXPECT_EQ(static_cast<int>(StatusCode::unimplemented), 12);
  EXPECT_EQ(static_cast<int>(StatusCode::internal), 13);
  EXPECT_EQ(static_cast<int>(StatusCode::unauthenticated), 16);
}

TEST(StatusTest, DefaultStatusIsOk) {
  Status st;
  EXPECT_TRUE(st.is_ok());
  EXPECT_EQ(st, Status::ok());
  EXPECT_FALSE(Status(StatusCode::internal, "x").is_ok());
}

}  // namespace
}  // namespace dispatchd::grpc
