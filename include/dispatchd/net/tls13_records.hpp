#pragma once
// Tls13Records: the TLS 1.3 record layer (RFC 8446 §5) of one server connection after its
// handshake, so that OpenSSL's SSL object (~20 KB per connection, none of which OpenSSL 3.0 can
// free while the SSL lives) is freed once the handshake is done. It holds the two application
// traffic secrets and what they derive (§7.1, §7.3), the sequence numbers and the suite: a few
// hundred bytes. The AEAD is OpenSSL's (EVP); its contexts and the ciphertext buffer are shared by
// all connections of the thread. A per-connection buffer exists only while a partial record is
// pending (read) or ciphertext is unsent (write), and is freed as soon as it drains.
//
// Handled: application_data (empty records too, at most kMaxEmptyRecords in a row), alerts
// (close_notify is EOF, any other closes), KeyUpdate (§4.6.3; a requested update is answered with
// one KeyUpdate before our next record). Anything else, a record that does not authenticate, or
// one longer than 2^14 + 256 bytes sends a fatal alert and fails the connection.

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <system_error>

#include "dispatchd/net/transport.hpp"

namespace dispatchd::net {

class Tls13Records {
 public:
  enum class Suite : std::uint8_t {
    aes_128_gcm_sha256,        // TLS_AES_128_GCM_SHA256 (0x1301)
    aes_256_gcm_sha384,        // TLS_AES_256_GCM_SHA384 (0x1302)
    chacha20_poly1305_sha256,  // TLS_CHACHA20_POLY1305_SHA256 (0x1303)
  };
  static constexpr int kMaxEmptyRecords = 32;  // records without data (or KeyUpdates) in a row

  // The suite of an IANA cipher suite id, if it is one of the three above.
  static std::optional<Suite> suite_from_id(std::uint16_t id) noexcept;
  // The suite's hash length: the length of its traffic secrets.
  static std::size_t secret_length(Suite s) noexcept;

  // A server's record layer from the client's and the server's application traffic secrets
  // (secret_length bytes each), both sequence numbers at 0. nullptr if the derivation fails.
  static std::unique_ptr<Tls13Records> create(Suite suite,
                                              std::span<const std::uint8_t> client_secret,
                                              std::span<const std::uint8_t> server_secret);
  ~Tls13Records();
  Tls13Records(const Tls13Records&) = delete;
  Tls13Records& operator=(const Tls13Records&) = delete;

  // Transport::read_some / write_some on the non-blocking socket `fd`; `blocked` is set to the
  // readiness a would_block waits for.
  std::size_t read(int fd, std::span<std::uint8_t> buf, std::error_code& ec,
                   Transport::Direction& blocked);
  std::size_t write(int fd, std::span<const std::uint8_t> buf, std::error_code& ec,
                    Transport::Direction& blocked);
  // Plaintext, a complete record, or an end (EOF or error) waiting for the next read.
  bool has_buffered_input() const noexcept;
  // Best effort: unsent ciphertext, then an encrypted close_notify, as far as the socket takes
  // them now. Never waits.
  void close_notify(int fd) noexcept;

  // Why the connection failed (a protocol error or the peer's alert); nullptr if it did not.
  const char* failure() const noexcept { return why_; }

  // For tests and diagnostics.
  std::uint64_t read_sequence() const noexcept { return read_.seq; }
  std::uint64_t write_sequence() const noexcept { return write_.seq; }
  std::uint32_t key_updates_received() const noexcept { return key_updates_; }
  // Whether any per-connection buffer is allocated (none on an idle connection).
  bool holds_buffers() const noexcept { return rpend_ || plain_ || wpend_; }

 private:
  struct Keys {
    std::uint8_t secret[48];
    std::uint8_t key[32];
    std::uint8_t iv[12];
    std::uint64_t seq = 0;
    std::uint64_t key_id = 0;  // unique per derived key: tells a shared EVP context is keyed
  };

  explicit Tls13Records(Suite s) : suite_(s) {}
  bool derive(Keys& k, std::span<const std::uint8_t> secret) noexcept;
  bool update(Keys& k) noexcept;  // "traffic upd" (RFC 8446 §7.2)
  // Encrypts one record with inner content type `type` into out (5 + n + 1 + 16 bytes).
  bool seal(std::uint8_t type, const std::uint8_t* in, std::size_t n, std::uint8_t* out) noexcept;
  // Sends unsent ciphertext and an owed KeyUpdate. False with ec set when it could not finish.
  bool flush(int fd, std::error_code& ec) noexcept;
  // Sends a fatal alert (best effort) and fails the connection.
  void fail(int fd, std::uint8_t alert) noexcept;
  void queue_write(const std::uint8_t* data, std::size_t n);

  Suite suite_;
  bool eof_ = false;
  bool closed_ = false;   // an alert (fatal or close_notify) has been sent: nothing more
  bool ku_owed_ = false;  // the peer asked for a KeyUpdate: send one before our next record
  std::uint8_t empty_run_ = 0;
  std::uint32_t key_updates_ = 0;
  std::error_code failed_;
  const char* why_ = nullptr;
  Keys read_, write_;
  // Ciphertext received but not yet processed (a partial record, or records behind plaintext
  // that did not fit the caller's buffer).
  std::unique_ptr<std::uint8_t[]> rpend_;
  std::uint32_t rpend_len_ = 0;
  // Plaintext decrypted that did not fit the caller's buffer.
  std::unique_ptr<std::uint8_t[]> plain_;
  std::uint32_t plain_off_ = 0, plain_len_ = 0;
  // Ciphertext not yet taken by the socket: the rest of a record it took part of (whose
  // wpend_plain_ bytes of plaintext are reported written once it is out), or a KeyUpdate.
  std::unique_ptr<std::uint8_t[]> wpend_;
  std::uint32_t wpend_off_ = 0, wpend_len_ = 0, wpend_plain_ = 0;
};

}  // namespace dispatchd::net
