#pragma once
// dispatchctl's value parsers: enum names, booleans, manager and network-key specs, base64.
// Every parser returns the value or a message fit to follow "invalid value for --flag: ".

#include <google/protobuf/descriptor.h>

#include <cstdint>
#include <expected>
#include <string>
#include <string_view>

#include "dispatchd/cli/args.hpp"
#include "types.pb.h"

namespace dispatchd::ctl {

// A proto enum value from its name without prefix, case-insensitive ("ready", "Drain",
// "not-serving" for NOT_SERVING). The error lists the accepted names.
std::expected<int, std::string> parse_enum(const google::protobuf::EnumDescriptor* d,
                                           std::string_view text);

// Names an enum value for people: "READY" -> "Ready", "NOT_SERVING" -> "Not serving"; a
// number the descriptor does not know is printed as the number.
std::string display_enum(const google::protobuf::EnumDescriptor* d, int value);
// The accepted names, lower case, comma separated ("active, pause, drain").
std::string enum_choices(const google::protobuf::EnumDescriptor* d);

// Go's strconv.ParseBool, as flags and DISPATCHCTL_* variables take booleans.
using cli::parse_bool;

std::expected<std::uint64_t, std::string> parse_uint64(std::string_view text);
std::expected<std::int64_t, std::string> parse_int64(std::string_view text);

// SwarmKit's weight for a manager an agent has not observed yet (remotes.DefaultObservationWeight).
inline constexpr std::int64_t kDefaultManagerWeight = 10;

// NODE_ID=ADDR[@WEIGHT], e.g. "manager-1=10.0.0.1:4242@5". The weight defaults to 10.
std::expected<docker::swarmkit::v1::WeightedPeer, std::string> parse_manager(std::string_view text);

// SUBSYSTEM:BASE64KEY:LAMPORT, e.g. "networking:gossip:AAECAwQFBgcICQoLDA0ODw==:3" (the
// subsystem may itself contain colons; the last two fields are the key and the Lamport time).
// The algorithm is AES_128_GCM, the only one SwarmKit defines.
std::expected<docker::swarmkit::v1::EncryptionKey, std::string> parse_network_key(
    std::string_view text);

// RFC 4648 standard alphabet; decoding accepts input with or without '=' padding and refuses
// anything else (whitespace, the URL-safe alphabet, bits left over).
std::string base64_encode(std::string_view bytes);
std::expected<std::string, std::string> base64_decode(std::string_view text);

}  // namespace dispatchd::ctl
