// The TLS 1.3 record layer's crypto: algorithms, the thread's AEAD contexts, nonces, and the
// key schedule of a connection (RFC 8446 §7.1, §7.2). Record I/O is in tls13_records.cpp.

#include "tls13_crypto.hpp"

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/kdf.h>

#include <atomic>
#include <cstring>

namespace dispatchd::net {

namespace tls13 {

namespace {

const char* digest_name(Tls13Records::Suite s) {
  return s == Tls13Records::Suite::aes_256_gcm_sha384 ? "SHA384" : "SHA256";
}

// Fetched once for the process (fetching is what OpenSSL 3.0's name look-ups make costly).
struct Algorithms {
  EVP_CIPHER* cipher[3] = {};
  EVP_KDF* hkdf = nullptr;
  Algorithms() {
    cipher[0] = EVP_CIPHER_fetch(nullptr, "AES-128-GCM", nullptr);
    cipher[1] = EVP_CIPHER_fetch(nullptr, "AES-256-GCM", nullptr);
    cipher[2] = EVP_CIPHER_fetch(nullptr, "ChaCha20-Poly1305", nullptr);
    hkdf = EVP_KDF_fetch(nullptr, "HKDF", nullptr);
  }
  ~Algorithms() {
    for (auto* c : cipher)
      EVP_CIPHER_free(c);
    EVP_KDF_free(hkdf);
  }
};

const Algorithms& algorithms() {
  static const Algorithms a;
  return a;
}

std::atomic<std::uint64_t> next_key_id{1};

// HKDF-Expand-Label(secret, label, "", length) (RFC 8446 §7.1).
bool expand_label(Tls13Records::Suite s, std::span<const std::uint8_t> secret,
                  std::string_view label, std::uint8_t* out, std::size_t length) {
  std::uint8_t info[2 + 1 + 6 + 16 + 1];
  std::size_t n = 0;
  info[n++] = static_cast<std::uint8_t>(length >> 8);
  info[n++] = static_cast<std::uint8_t>(length);
  info[n++] = static_cast<std::uint8_t>(6 + label.size());
  std::memcpy(info + n, "tls13 ", 6);
  n += 6;
  std::memcpy(info + n, label.data(), label.size());
  n += label.size();
  info[n++] = 0;  // empty context
  EVP_KDF_CTX* kctx = EVP_KDF_CTX_new(algorithms().hkdf);
  if (!kctx) return false;
  int mode = EVP_KDF_HKDF_MODE_EXPAND_ONLY;
  OSSL_PARAM params[] = {
      OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, const_cast<char*>(digest_name(s)), 0),
      OSSL_PARAM_construct_int(OSSL_KDF_PARAM_MODE, &mode),
      OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_KEY,
                                        const_cast<std::uint8_t*>(secret.data()), secret.size()),
      OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_INFO, info, n),
      OSSL_PARAM_construct_end(),
  };
  bool ok = EVP_KDF_derive(kctx, out, length, params) == 1;
  EVP_KDF_CTX_free(kctx);  // clears the key it copied
  return ok;
}

}  // namespace

std::size_t key_length(Tls13Records::Suite s) {
  return s == Tls13Records::Suite::aes_128_gcm_sha256 ? 16 : 32;
}

ThreadState& thread_state() {
  thread_local ThreadState t;
  return t;
}

ThreadState::~ThreadState() {
  for (int i = 0; i < 3; ++i) {
    EVP_CIPHER_CTX_free(enc[i]);
    EVP_CIPHER_CTX_free(dec[i]);
  }
}
std::uint8_t* ThreadState::buffer() {
  if (!buf) buf = std::make_unique<std::uint8_t[]>(kBufSize);
  return buf.get();
}
void ThreadState::forget(Tls13Records::Suite s, std::uint64_t read_key,
                         std::uint64_t write_key) noexcept {
  static const std::uint8_t zeros[32] = {};
  auto i = static_cast<int>(s);
  if (dec[i] && dec_key[i] == read_key) {
    dec_key[i] = 0;
    (void)EVP_CipherInit_ex2(dec[i], nullptr, zeros, nullptr, 0, nullptr);
  }
  if (enc[i] && enc_key[i] == write_key) {
    enc_key[i] = 0;
    (void)EVP_CipherInit_ex2(enc[i], nullptr, zeros, nullptr, 1, nullptr);
  }
}
EVP_CIPHER_CTX* ThreadState::keyed(bool encrypt, Tls13Records::Suite s, const std::uint8_t* key,
                                   std::uint64_t key_id, const std::uint8_t* iv) {
  auto i = static_cast<int>(s);
  EVP_CIPHER_CTX*& ctx = encrypt ? enc[i] : dec[i];
  std::uint64_t& current = encrypt ? enc_key[i] : dec_key[i];
  if (!ctx) {
    ctx = EVP_CIPHER_CTX_new();
    if (!ctx || EVP_CipherInit_ex2(ctx, algorithms().cipher[i], nullptr, nullptr, encrypt ? 1 : 0,
                                   nullptr) != 1) {
      EVP_CIPHER_CTX_free(ctx);
      ctx = nullptr;
      return nullptr;
    }
    current = 0;
  }
  const std::uint8_t* k = current == key_id ? nullptr : key;
  current = 0;
  if (EVP_CipherInit_ex2(ctx, nullptr, k, iv, encrypt ? 1 : 0, nullptr) != 1) return nullptr;
  current = key_id;
  return ctx;
}

// nonce = iv XOR the 64-bit sequence number, left-padded (RFC 8446 §5.3).
void make_nonce(const std::uint8_t* iv, std::uint64_t seq, std::uint8_t* nonce) {
  std::memcpy(nonce, iv, kIvLen);
  for (int i = 0; i < 8; ++i)
    nonce[kIvLen - 1 - i] ^= static_cast<std::uint8_t>(seq >> (8 * i));
}

}  // namespace tls13

using namespace tls13;

std::optional<Tls13Records::Suite> Tls13Records::suite_from_id(std::uint16_t id) noexcept {
  switch (id) {
    case 0x1301:
      return Suite::aes_128_gcm_sha256;
    case 0x1302:
      return Suite::aes_256_gcm_sha384;
    case 0x1303:
      return Suite::chacha20_poly1305_sha256;
    default:
      return std::nullopt;
  }
}

std::size_t Tls13Records::secret_length(Suite s) noexcept {
  return s == Suite::aes_256_gcm_sha384 ? 48 : 32;
}

std::unique_ptr<Tls13Records> Tls13Records::create(Suite suite,
                                                   std::span<const std::uint8_t> client_secret,
                                                   std::span<const std::uint8_t> server_secret) {
  const auto& a = algorithms();
  if (!a.hkdf || !a.cipher[static_cast<int>(suite)]) return nullptr;
  if (client_secret.size() != secret_length(suite) || server_secret.size() != secret_length(suite))
    return nullptr;
  std::unique_ptr<Tls13Records> r(new Tls13Records(suite));
  // The server reads with the client's secret and writes with its own.
  if (!r->derive(r->read_, client_secret) || !r->derive(r->write_, server_secret)) return nullptr;
  return r;
}

Tls13Records::~Tls13Records() {
  thread_state().forget(suite_, read_.key_id, write_.key_id);
  OPENSSL_cleanse(&read_, sizeof read_);
  OPENSSL_cleanse(&write_, sizeof write_);
}

bool Tls13Records::derive(Keys& k, std::span<const std::uint8_t> secret) noexcept {
  std::memmove(k.secret, secret.data(), secret.size());
  k.seq = 0;
  k.key_id = next_key_id.fetch_add(1, std::memory_order_relaxed);
  std::span<const std::uint8_t> s(k.secret, secret.size());
  return expand_label(suite_, s, "key", k.key, key_length(suite_)) &&
         expand_label(suite_, s, "iv", k.iv, kIvLen);
}

bool Tls13Records::update(Keys& k) noexcept {
  std::size_t n = secret_length(suite_);
  std::uint8_t next[48];
  bool ok = expand_label(suite_, {k.secret, n}, "traffic upd", next, n) && derive(k, {next, n});
  OPENSSL_cleanse(next, sizeof next);
  return ok;
}

}  // namespace dispatchd::net
