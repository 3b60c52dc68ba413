#pragma once
// Internal to src/net: the TLS 1.3 record layer's constants and its crypto — OpenSSL algorithms
// fetched once, the AEAD contexts and ciphertext buffer one thread shares, nonces and
// HKDF-Expand-Label (RFC 8446 §5, §7.1). tls13_crypto.cpp holds them and the key schedule;
// tls13_records.cpp the record I/O.

#include <openssl/evp.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string_view>

#include "dispatchd/net/tls13_records.hpp"

namespace dispatchd::net::tls13 {

// RFC 8446 §5.1, §5.2, §6.
constexpr std::uint8_t kAlert = 21, kHandshake = 22, kApplicationData = 23;
constexpr std::uint8_t kKeyUpdate = 24;
constexpr std::uint8_t kCloseNotify = 0, kUnexpectedMessage = 10, kBadRecordMac = 20,
                       kRecordOverflow = 22, kDecodeError = 50, kInternalError = 80;
constexpr std::size_t kHeader = 5, kTag = 16, kIvLen = 12;
constexpr std::size_t kMaxPlaintext = 1 << 14;
constexpr std::size_t kMaxCiphertext = kMaxPlaintext + 256;
constexpr std::size_t kMaxRecord = kHeader + kMaxCiphertext;
// Records one write() encrypts at most, and the thread's ciphertext buffer.
constexpr std::size_t kWriteRecords = 4;
constexpr std::size_t kBufSize = 5 * kMaxRecord;
static_assert(kWriteRecords * (kHeader + kMaxPlaintext + 1 + kTag) <= kBufSize);

std::size_t key_length(Tls13Records::Suite s);

// What all connections of one thread share: one AEAD context per suite and direction (re-keyed
// only when the record is another key's than the last one's) and the ciphertext buffer.
struct ThreadState {
  EVP_CIPHER_CTX* enc[3] = {};
  EVP_CIPHER_CTX* dec[3] = {};
  std::uint64_t enc_key[3] = {}, dec_key[3] = {};
  std::unique_ptr<std::uint8_t[]> buf;
  ~ThreadState();
  std::uint8_t* buffer();
  // A connection ends: the contexts keyed with its keys get a key of zeros instead, so that no
  // key schedule of it stays in memory.
  void forget(Tls13Records::Suite s, std::uint64_t read_key, std::uint64_t write_key) noexcept;
  // The context for `s` keyed with (key, key_id) and the nonce `iv`; nullptr on failure.
  EVP_CIPHER_CTX* keyed(bool encrypt, Tls13Records::Suite s, const std::uint8_t* key,
                        std::uint64_t key_id, const std::uint8_t* iv);
};

ThreadState& thread_state();

// nonce = iv XOR the 64-bit sequence number, left-padded (RFC 8446 §5.3).
void make_nonce(const std::uint8_t* iv, std::uint64_t seq, std::uint8_t* nonce);

}  // namespace dispatchd::net::tls13
