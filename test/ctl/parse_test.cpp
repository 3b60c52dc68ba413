// dispatchctl's value parsers: enum names, manager and key specs, base64, booleans.

#include "dispatchd/ctl/parse.hpp"

#include <gtest/gtest.h>

#include "specs.pb.h"

namespace {

namespace api = docker::swarmkit::v1;
using namespace dispatchd::ctl;

TEST(ParseEnum, NamesWithoutPrefixAnyCase) {
  EXPECT_EQ(parse_enum(api::NodeStatus::State_descriptor(), "ready"), api::NodeStatus::READY);
  EXPECT_EQ(parse_enum(api::NodeStatus::State_descriptor(), "Down"), api::NodeStatus::DOWN);
  EXPECT_EQ(parse_enum(api::NodeSpec::Availability_descriptor(), "DRAIN"), api::NodeSpec::DRAIN);
  EXPECT_EQ(parse_enum(api::NodeRole_descriptor(), "manager"), api::MANAGER);
  EXPECT_EQ(parse_enum(api::TaskState_descriptor(), "orphaned"), api::ORPHANED);
  EXPECT_EQ(parse_enum(api::TaskState_descriptor(), "running"), api::RUNNING);
}

TEST(ParseEnum, UnknownNameListsTheChoices) {
  auto r = parse_enum(api::NodeSpec::Availability_descriptor(), "drained");
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error(), "\"drained\" is not one of active, pause, drain");
  EXPECT_FALSE(parse_enum(api::NodeRole_descriptor(), ""));
  // The prefixed C++ name is not a command-line name.
  EXPECT_FALSE(parse_enum(api::NodeRole_descriptor(), "NodeRole_WORKER"));
}

TEST(DisplayEnum, TitleCaseAndNumbersForUnknownValues) {
  EXPECT_EQ(display_enum(api::NodeStatus::State_descriptor(), api::NodeStatus::READY), "Ready");
  EXPECT_EQ(display_enum(api::NodeStatus::State_descriptor(), api::NodeStatus::DISCONNECTED),
            "Disconnected");
  EXPECT_EQ(display_enum(api::TaskState_descriptor(), api::ASSIGNED), "Assigned");
  EXPECT_EQ(display_enum(api::TaskState_descriptor(), 7), "7");
}

TEST(ParseBool, GoSpellings) {
  EXPECT_EQ(parse_bool("true"), true);
  EXPECT_EQ(parse_bool("1"), true);
  EXPECT_EQ(parse_bool("F"), false);
  EXPECT_EQ(parse_bool("False"), false);
  EXPECT_FALSE(parse_bool("yes"));
  EXPECT_FALSE(parse_bool(""));
}

TEST(ParseManager, IdAddressAndWeight) {
  auto m = parse_manager("manager-1=10.0.0.1:4242@5");
  ASSERT_TRUE(m) << m.error();
  EXPECT_EQ(m->peer().node_id(), "manager-1");
  EXPECT_EQ(m->peer().addr(), "10.0.0.1:4242");
  EXPECT_EQ(m->weight(), 5);
}

TEST(ParseManager, WeightDefaultsToSwarmKitsObservationWeight) {
  auto m = parse_manager("m2=host.example:2377");
  ASSERT_TRUE(m) << m.error();
  EXPECT_EQ(m->peer().addr(), "host.example:2377");
  EXPECT_EQ(m->weight(), 10);
}

TEST(ParseManager, IPv6AddressKeepsItsColons) {
  auto m = parse_manager("m3=[::1]:4242@0");
  ASSERT_TRUE(m) << m.error();
  EXPECT_EQ(m->peer().addr(), "[::1]:4242");
  EXPECT_EQ(m->weight(), 0);
}

TEST(ParseManager, Refusals) {
  EXPECT_FALSE(parse_manager("manager-1"));
  EXPECT_FALSE(parse_manager("=10.0.0.1:4242"));
  EXPECT_FALSE(parse_manager("m1="));
  EXPECT_FALSE(parse_manager("m1=10.0.0.1:4242@"));
  EXPECT_FALSE(parse_manager("m1=10.0.0.1:4242@x"));
  EXPECT_FALSE(parse_manager("m1=10.0.0.1:4242@-1"));
  EXPECT_FALSE(parse_manager("m1=@5"));
  auto r = parse_manager("m1");
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().find("NODE_ID=ADDR"), std::string::npos) << r.error();
}

TEST(ParseNetworkKey, SubsystemMayContainColons) {
  auto k = parse_network_key("networking:gossip:AAECAwQFBgcICQoLDA0ODw==:3");
  ASSERT_TRUE(k) << k.error();
  EXPECT_EQ(k->subsystem(), "networking:gossip");
  EXPECT_EQ(k->algorithm(), api::EncryptionKey::AES_128_GCM);
  EXPECT_EQ(k->key(),
            std::string("\x00\x01\x02\x03\x04\x05\x06\x07\x08\x09\x0a\x0b\x0c\x0d\x0e\x0f", 16));
  EXPECT_EQ(k->lamport_time(), 3u);
}

TEST(ParseNetworkKey, Refusals) {
  EXPECT_FALSE(parse_network_key("gossip:AAAA"));     // no Lamport time
  EXPECT_FALSE(parse_network_key(":AAAA:1"));         // no subsystem
  EXPECT_FALSE(parse_network_key("gossip::1"));       // no key
  EXPECT_FALSE(parse_network_key("gossip:AA*A:1"));   // not base64
  EXPECT_FALSE(parse_network_key("gossip:AAAA:-1"));  // negative Lamport time
  EXPECT_FALSE(parse_network_key("gossip:AAAA:1x"));  // trailing junk
  EXPECT_FALSE(parse_network_key("AAAA:1"));          // two fields only
}

TEST(Base64, RoundTripsEveryLength) {
  std::string bytes;
  for (int n = 0; n < 40; ++n) {
    auto enc = base64_encode(bytes);
    EXPECT_EQ(enc.size() % 4, 0u);
    auto dec = base64_decode(enc);
    ASSERT_TRUE(dec) << enc;
    EXPECT_EQ(*dec, bytes);
    bytes.push_back(static_cast<char>(n * 37 + 200));
  }
}

TEST(Base64, KnownVectorsAndStrictness) {
  EXPECT_EQ(base64_encode("foobar"), "Zm9vYmFy");
  EXPECT_EQ(base64_encode("fo"), "Zm8=");
  EXPECT_EQ(base64_encode("f"), "Zg==");
  EXPECT_EQ(base64_decode("Zm8"), "fo");  // padding is optional
  EXPECT_EQ(base64_decode("Zg"), "f");
  EXPECT_FALSE(base64_decode("Zh=="));  // bits left over
  EXPECT_FALSE(base64_decode("Z"));     // impossible length
  EXPECT_FALSE(base64_decode("Zm9v YmFy"));
  EXPECT_FALSE(base64_decode("Zm-_"));   // URL-safe alphabet
  EXPECT_FALSE(base64_decode("Zm8=="));  // too much padding
}

}  // namespace
