#include "dispatchd/ctl/parse.hpp"

#include <array>
#include <charconv>

namespace dispatchd::ctl {

namespace {

char upper(char c) {
  return c >= 'a' && c <= 'z' ? static_cast<char>(c - 'a' + 'A') : c;
}
char lower(char c) {
  return c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : c;
}

// text in double quotes, to start an error message with. Messages are built by appending to a
// std::string: GCC 12 at -O3 reports a false -Wrestrict on `"literal" + std::string`.
std::string quoted(std::string_view text) {
  std::string out;
  out.reserve(text.size() + 2);
  out += '"';
  out += text;
  out += '"';
  return out;
}

// The whole of text as a decimal T (from_chars: no sign for an unsigned T, no '+', no spaces).
template <class T>
std::expected<T, std::string> parse_whole(std::string_view text) {
  T n = 0;
  auto [p, ec] = std::from_chars(text.data(), text.data() + text.size(), n);
  if (text.empty() || ec != std::errc() || p != text.data() + text.size()) {
    return std::unexpected(quoted(text) + " is not a whole number");
  }
  return n;
}

}  // namespace

std::expected<int, std::string> parse_enum(const google::protobuf::EnumDescriptor* d,
                                           std::string_view text) {
  std::string name;
  name.reserve(text.size());
  for (char c : text)
    name.push_back(c == '-' ? '_' : upper(c));
  if (const auto* v = name.empty() ? nullptr : d->FindValueByName(name)) return v->number();
  return std::unexpected(quoted(text) + " is not one of " + enum_choices(d));
}

std::string display_enum(const google::protobuf::EnumDescriptor* d, int value) {
  const auto* v = d->FindValueByNumber(value);
  if (!v) return std::to_string(value);
  std::string out;
  out.reserve(v->name().size());
  for (char c : v->name())
    out.push_back(c == '_' ? ' ' : out.empty() ? c : lower(c));
  return out;
}

std::string enum_choices(const google::protobuf::EnumDescriptor* d) {
  std::string out;
  for (int i = 0; i < d->value_count(); ++i) {
    if (i) out += ", ";
    for (char c : d->value(i)->name())
      out.push_back(lower(c));
  }
  return out;
}

std::expected<std::uint64_t, std::string> parse_uint64(std::string_view text) {
  return parse_whole<std::uint64_t>(text);
}

std::expected<std::int64_t, std::string> parse_int64(std::string_view text) {
  return parse_whole<std::int64_t>(text);
}

std::expected<docker::swarmkit::v1::WeightedPeer, std::string> parse_manager(
    std::string_view text) {
  auto bad = [&](std::string why) {
    return std::unexpected(quoted(text) + ": " + why +
                           " (want NODE_ID=ADDR or NODE_ID=ADDR@WEIGHT)");
  };
  auto eq = text.find('=');
  if (eq == std::string_view::npos) return bad("no '='");
  std::string_view id = text.substr(0, eq);
  std::string_view addr = text.substr(eq + 1);
  std::int64_t weight = kDefaultManagerWeight;
  if (auto at = addr.rfind('@'); at != std::string_view::npos) {
    auto w = parse_int64(addr.substr(at + 1));
    if (!w) return bad("weight " + w.error());
    if (*w < 0) return bad("weight must not be negative");
    weight = *w;
    addr = addr.substr(0, at);
  }
  if (id.empty()) return bad("empty node ID");
  if (addr.empty()) return bad("empty address");
  docker::swarmkit::v1::WeightedPeer p;
  p.mutable_peer()->set_node_id(std::string(id));
  p.mutable_peer()->set_addr(std::string(addr));
  p.set_weight(weight);
  return p;
}

std::expected<docker::swarmkit::v1::EncryptionKey, std::string> parse_network_key(
    std::string_view text) {
  auto bad = [&](std::string why) {
    return std::unexpected(quoted(text) + ": " + why + " (want SUBSYSTEM:BASE64KEY:LAMPORT)");
  };
  auto last = text.rfind(':');
  if (last == std::string_view::npos || last == 0) return bad("missing fields");
  auto mid = text.rfind(':', last - 1);
  if (mid == std::string_view::npos) return bad("missing fields");
  std::string_view subsystem = text.substr(0, mid);
  std::string_view key64 = text.substr(mid + 1, last - mid - 1);
  std::string_view lamport = text.substr(last + 1);
  if (subsystem.empty()) return bad("empty subsystem");
  if (key64.empty()) return bad("empty key");
  auto key = base64_decode(key64);
  if (!key) return bad("key " + key.error());
  auto lt = parse_uint64(lamport);
  if (!lt) return bad("Lamport time " + lt.error());
  docker::swarmkit::v1::EncryptionKey k;
  k.set_subsystem(std::string(subsystem));
  k.set_algorithm(docker::swarmkit::v1::EncryptionKey::AES_128_GCM);
  k.set_key(std::move(*key));
  k.set_lamport_time(*lt);
  return k;
}

namespace {

constexpr std::string_view kAlphabet =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

constexpr std::array<signed char, 256> decode_table() {
  std::array<signed char, 256> t{};
  t.fill(-1);
  for (std::size_t i = 0; i < kAlphabet.size(); ++i)
    t[static_cast<unsigned char>(kAlphabet[i])] = static_cast<signed char>(i);
  return t;
}

}  // namespace

std::string base64_encode(std::string_view bytes) {
  std::string out;
  out.reserve((bytes.size() + 2) / 3 * 4);
  std::size_t i = 0;
  auto byte = [&](std::size_t k) {
    return static_cast<std::uint32_t>(static_cast<unsigned char>(bytes[k]));
  };
  for (; i + 3 <= bytes.size(); i += 3) {
    std::uint32_t v = byte(i) << 16 | byte(i + 1) << 8 | byte(i + 2);
    for (int s = 18; s >= 0; s -= 6)
      out.push_back(kAlphabet[(v >> s) & 63]);
  }
  std::size_t rest = bytes.size() - i;
  if (rest) {
    std::uint32_t v = byte(i) << 16 | (rest == 2 ? byte(i + 1) << 8 : 0);
    out.push_back(kAlphabet[(v >> 18) & 63]);
    out.push_back(kAlphabet[(v >> 12) & 63]);
    out.push_back(rest == 2 ? kAlphabet[(v >> 6) & 63] : '=');
    out.push_back('=');
  }
  return out;
}

std::expected<std::string, std::string> base64_decode(std::string_view text) {
  static constexpr auto table = decode_table();
  std::size_t pad = 0;
  while (!text.empty() && text.back() == '=' && pad < 2) {
    text.remove_suffix(1);
    ++pad;
  }
  if (pad && (text.size() + pad) % 4 != 0) return std::unexpected("is not valid base64 (padding)");
  if (text.size() % 4 == 1) return std::unexpected("is not valid base64 (length)");
  std::string out;
  out.reserve(text.size() * 3 / 4);
  std::uint32_t acc = 0;
  int bits = 0;
  for (char c : text) {
    int v = table[static_cast<unsigned char>(c)];
    if (v < 0)
      return std::unexpected("is not valid base64 (character '" + std::string(1, c) + "')");
    acc = acc << 6 | static_cast<std::uint32_t>(v);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out.push_back(static_cast<char>((acc >> bits) & 0xff));
    }
  }
  // Leftover bits must be zero, or two encodings would decode to the same bytes.
  if (bits && (acc & ((1u << bits) - 1)) != 0) {
    return std::unexpected("is not valid base64 (trailing bits)");
  }
  return out;
}

}  // namespace dispatchd::ctl
