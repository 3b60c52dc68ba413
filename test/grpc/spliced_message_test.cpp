#include "dispatchd/grpc/spliced_message.hpp"

#include <gtest/gtest.h>

#include <string>

#include "dispatchd/grpc/codec.hpp"
#include "dispatcher.pb.h"

namespace dispatchd::grpc {
namespace {

namespace api = ::docker::swarmkit::v1;

std::string joined(const std::vector<h2::Segment>& pieces) {
  std::string out;
  for (const auto& p : pieces)
    out.append(reinterpret_cast<const char*>(p.data), p.size);
  return out;
}

std::string prefixed(const std::string& body) {
  std::string out(kPrefixSize, '\0');
  write_prefix(reinterpret_cast<std::uint8_t*>(out.data()),
               static_cast<std::uint32_t>(body.size()));
  return out + body;
}

api::SessionMessage cluster_fields() {
  api::SessionMessage m;
  auto* w = m.add_managers();
  w->mutable_peer()->set_node_id("manager-1");
  w->mutable_peer()->set_addr("10.0.0.1:4242");
  w->set_weight(10);
  auto* k = m.add_network_bootstrap_keys();
  k->set_subsystem("networking:gossip");
  k->set_key("0123456789abcdef");
  k->set_lamport_time(7);
  m.set_rootca("-----BEGIN CERTIFICATE-----\n...");
  return m;
}

TEST(SplicedMessage, EqualsTheMessageEncodedWhole) {
  api::Node node;
  node.set_id("node-1");
  node.mutable_status()->set_state(api::NodeStatus::READY);
  node.mutable_description()->set_hostname("host-1");
  auto tail = std::make_shared<const std::string>(cluster_fields().SerializeAsString());

  SplicedMessage m;
  m.bytes_field(api::SessionMessage::kSessionIdFieldNumber, "session-abc")
      .message_field(api::SessionMessage::kNodeFieldNumber, node);
  auto pieces = m.finish(tail);

  api::SessionMessage whole = cluster_fields();
  whole.set_session_id("session-abc");
  *whole.mutable_node() = node;
  // Fields 1 and 2 come first, then 3, 4, 5: the order protobuf writes them in.
  EXPECT_EQ(joined(pieces), prefixed(whole.SerializeAsString()));
  // The tail is sent by reference, not copied.
  ASSERT_EQ(pieces.size(), 2u);
  EXPECT_EQ(pieces[1].data, reinterpret_cast<const std::uint8_t*>(tail->data()));

  api::SessionMessage parsed;
  std::string bytes = joined(pieces);
  ASSERT_TRUE(parsed.ParseFromArray(bytes.data() + kPrefixSize,
                                    static_cast<int>(bytes.size() - kPrefixSize)));
  EXPECT_EQ(parsed.session_id(), "session-abc");
  EXPECT_EQ(parsed.node().description().hostname(), "host-1");
  ASSERT_EQ(parsed.managers_size(), 1);
  EXPECT_EQ(parsed.managers(0).peer().addr(), "10.0.0.1:4242");
  EXPECT_EQ(parsed.network_bootstrap_keys(0).lamport_time(), 7u);
}

// A Session keeps its own fields encoded and frames them again with each new cluster tail: every
// message so made is the whole message encoded anew, and a tail of another size gets its own
// length prefix.
TEST(SplicedMessage, KeptFieldsFrameAgainWithEachNewTail) {
  api::Node node;
  node.set_id("node-1");
  node.mutable_description()->set_hostname("host-1");
  SplicedMessage m;
  m.reserve(64)
      .bytes_field(api::SessionMessage::kSessionIdFieldNumber, "session-abc")
      .message_field(api::SessionMessage::kNodeFieldNumber, node);
  const std::string fields = std::move(m).take_fields();

  api::SessionMessage first = cluster_fields();
  api::SessionMessage second = cluster_fields();
  second.add_managers()->mutable_peer()->set_addr("10.0.0.2:4242");
  for (const auto* cluster : {&first, &second}) {
    auto tail = std::make_shared<const std::string>(cluster->SerializeAsString());
    auto pieces = SplicedMessage::frame(fields, tail);
    api::SessionMessage whole = *cluster;
    whole.set_session_id("session-abc");
    *whole.mutable_node() = node;
    EXPECT_EQ(joined(pieces), prefixed(whole.SerializeAsString()));
    ASSERT_EQ(pieces.size(), 2u);
    EXPECT_EQ(pieces[1].data, reinterpret_cast<const std::uint8_t*>(tail->data()));
  }
}

TEST(SplicedMessage, WithoutATailIsOneSegment) {
  auto pieces = SplicedMessage().bytes_field(1, "x").finish(nullptr);
  ASSERT_EQ(pieces.size(), 1u);
  EXPECT_EQ(joined(pieces), prefixed(std::string("\x0a\x01x", 3)));
  auto empty_tail = SplicedMessage().bytes_field(1, "x").finish(std::make_shared<std::string>());
  EXPECT_EQ(empty_tail.size(), 1u);
}

TEST(SplicedMessage, LargeFieldNumbersAndLengthsTakeSeveralVarintBytes) {
  std::string value(300, 'v');
  auto bytes = joined(SplicedMessage().bytes_field(300, value).finish(nullptr));
  // Tag (300 << 3 | 2) = 2402 = 0xe2 0x12; length 300 = 0xac 0x02.
  EXPECT_EQ(bytes, prefixed(std::string("\xe2\x12\xac\x02", 4) + value));
}

TEST(SplicedMessage, AnEmptyEmbeddedMessageIsStillPresent) {
  api::Node empty;
  auto pieces =
      SplicedMessage().message_field(api::SessionMessage::kNodeFieldNumber, empty).finish(nullptr);
  std::string bytes = joined(pieces);
  api::SessionMessage parsed;
  ASSERT_TRUE(parsed.ParseFromArray(bytes.data() + kPrefixSize,
                                    static_cast<int>(bytes.size() - kPrefixSize)));
  EXPECT_TRUE(parsed.has_node());
}

}  // namespace
}  // namespace dispatchd::grpc
