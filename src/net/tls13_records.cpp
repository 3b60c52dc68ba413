#include "dispatchd/net/tls13_records.hpp"

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>
#include <sys/socket.h>

#include <algorithm>
#include <asio/error.hpp>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <limits>
#include <string_view>

namespace dispatchd::net {

namespace {

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

constexpr std::size_t key_length(Tls13Records::Suite s) {
  return s == Tls13Records::Suite::aes_128_gcm_sha256 ? 16 : 32;
}

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

// What all connections of one thread share: one AEAD context per suite and direction (re-keyed
// only when the record is another key's than the last one's) and the ciphertext buffer.
struct ThreadState {
  EVP_CIPHER_CTX* enc[3] = {};
  EVP_CIPHER_CTX* dec[3] = {};
  std::uint64_t enc_key[3] = {}, dec_key[3] = {};
  std::unique_ptr<std::uint8_t[]> buf;
  ~ThreadState() {
    for (int i = 0; i < 3; ++i) {
      EVP_CIPHER_CTX_free(enc[i]);
      EVP_CIPHER_CTX_free(dec[i]);
    }
  }
  std::uint8_t* buffer() {
    if (!buf) buf = std::make_unique<std::uint8_t[]>(kBufSize);
    return buf.get();
  }
  // A connection ends: the contexts keyed with its keys get a key of zeros instead, so that no
  // key schedule of it stays in memory.
  void forget(Tls13Records::Suite s, std::uint64_t read_key, std::uint64_t write_key) noexcept {
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
  // The context for `s` keyed with (key, key_id) and the nonce `iv`; nullptr on failure.
  EVP_CIPHER_CTX* keyed(bool encrypt, Tls13Records::Suite s, const std::uint8_t* key,
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
};

ThreadState& thread_state() {
  thread_local ThreadState t;
  return t;
}

std::atomic<std::uint64_t> next_key_id{1};

// nonce = iv XOR the 64-bit sequence number, left-padded (RFC 8446 §5.3).
void make_nonce(const std::uint8_t* iv, std::uint64_t seq, std::uint8_t* nonce) {
  std::memcpy(nonce, iv, kIvLen);
  for (int i = 0; i < 8; ++i)
    nonce[kIvLen - 1 - i] ^= static_cast<std::uint8_t>(seq >> (8 * i));
}

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

std::error_code errno_code(int e) {
  return {e, std::system_category()};
}

bool would_block(int e) {
  return e == EAGAIN || e == EWOULDBLOCK;
}

std::size_t record_length(const std::uint8_t* header) {
  return (static_cast<std::size_t>(header[3]) << 8) | header[4];
}

}  // namespace

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

bool Tls13Records::seal(std::uint8_t type, const std::uint8_t* in, std::size_t n,
                        std::uint8_t* out) noexcept {
  if (write_.seq == std::numeric_limits<std::uint64_t>::max()) return false;
  std::size_t len = n + 1 + kTag;
  out[0] = kApplicationData;
  out[1] = 3;
  out[2] = 3;
  out[3] = static_cast<std::uint8_t>(len >> 8);
  out[4] = static_cast<std::uint8_t>(len);
  std::uint8_t* body = out + kHeader;
  if (body != in) std::memmove(body, in, n);
  body[n] = type;  // no padding
  std::uint8_t nonce[kIvLen];
  make_nonce(write_.iv, write_.seq, nonce);
  EVP_CIPHER_CTX* ctx = thread_state().keyed(true, suite_, write_.key, write_.key_id, nonce);
  int outl = 0, finl = 0;
  if (!ctx || EVP_EncryptUpdate(ctx, nullptr, &outl, out, kHeader) != 1 ||
      EVP_EncryptUpdate(ctx, body, &outl, body, static_cast<int>(n + 1)) != 1 ||
      EVP_EncryptFinal_ex(ctx, body + outl, &finl) != 1 ||
      EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_GET_TAG, kTag, body + n + 1) != 1) {
    return false;
  }
  ++write_.seq;
  return true;
}

void Tls13Records::queue_write(const std::uint8_t* data, std::size_t n) {
  auto buf = std::make_unique<std::uint8_t[]>(wpend_len_ - wpend_off_ + n);
  std::size_t old = wpend_len_ - wpend_off_;
  if (old) std::memcpy(buf.get(), wpend_.get() + wpend_off_, old);
  std::memcpy(buf.get() + old, data, n);
  wpend_ = std::move(buf);
  wpend_off_ = 0;
  wpend_len_ = static_cast<std::uint32_t>(old + n);
}

bool Tls13Records::flush(int fd, std::error_code& ec) noexcept {
  for (;;) {
    while (wpend_off_ < wpend_len_) {
      ssize_t r = ::send(fd, wpend_.get() + wpend_off_, wpend_len_ - wpend_off_,
                         MSG_NOSIGNAL | MSG_DONTWAIT);
      if (r < 0) {
        if (errno == EINTR) continue;
        if (would_block(errno)) {
          ec = asio::error::would_block;
        } else {
          ec = failed_ = errno_code(errno);
        }
        return false;
      }
      wpend_off_ += static_cast<std::uint32_t>(r);
    }
    if (wpend_) {
      wpend_.reset();
      wpend_off_ = wpend_len_ = 0;
    }
    if (!ku_owed_ || closed_) return true;
    // RFC 8446 §4.6.3: KeyUpdate(update_not_requested) under the current key, then the new key.
    const std::uint8_t msg[5] = {kKeyUpdate, 0, 0, 1, 0};
    std::uint8_t rec[kHeader + sizeof msg + 1 + kTag];
    if (!seal(kHandshake, msg, sizeof msg, rec) || !update(write_)) {
      ec = failed_ = asio::error::connection_aborted;
      return false;
    }
    ku_owed_ = false;
    queue_write(rec, sizeof rec);
  }
}

void Tls13Records::fail(int fd, std::uint8_t alert) noexcept {
  switch (alert) {
    case kUnexpectedMessage:
      why_ = "unexpected record (sent alert unexpected_message)";
      break;
    case kBadRecordMac:
      why_ = "record did not authenticate (sent alert bad_record_mac)";
      break;
    case kRecordOverflow:
      why_ = "record too long (sent alert record_overflow)";
      break;
    case kDecodeError:
      why_ = "malformed alert (sent alert decode_error)";
      break;
    default:
      why_ = "internal error (sent alert internal_error)";
      break;
  }
  failed_ = asio::error::connection_aborted;
  ku_owed_ = false;
  if (!closed_) {
    closed_ = true;
    std::error_code ec;
    // The alert goes out only behind whatever ciphertext is still unsent.
    if (flush(fd, ec)) {
      const std::uint8_t body[2] = {2, alert};  // fatal
      std::uint8_t rec[kHeader + sizeof body + 1 + kTag];
      if (seal(kAlert, body, sizeof body, rec)) {
        (void)::send(fd, rec, sizeof rec, MSG_NOSIGNAL | MSG_DONTWAIT);
      }
    }
  }
  failed_ = asio::error::connection_aborted;
  rpend_.reset();
  plain_.reset();
  wpend_.reset();
  rpend_len_ = plain_off_ = plain_len_ = wpend_off_ = wpend_len_ = wpend_plain_ = 0;
}

bool Tls13Records::has_buffered_input() const noexcept {
  if (plain_off_ < plain_len_ || eof_ || failed_) return true;
  return rpend_len_ >= kHeader && rpend_len_ >= kHeader + record_length(rpend_.get());
}

std::size_t Tls13Records::read(int fd, std::span<std::uint8_t> buf, std::error_code& ec,
                               Transport::Direction& blocked) {
  ec.clear();
  if (plain_off_ < plain_len_) {
    std::size_t n = std::min<std::size_t>(buf.size(), plain_len_ - plain_off_);
    std::memcpy(buf.data(), plain_.get() + plain_off_, n);
    plain_off_ += static_cast<std::uint32_t>(n);
    if (plain_off_ == plain_len_) {
      plain_.reset();
      plain_off_ = plain_len_ = 0;
    }
    return n;
  }
  if (failed_) {
    ec = failed_;
    return 0;
  }
  if (eof_) {
    ec = asio::error::eof;
    return 0;
  }
  if (buf.empty()) return 0;
  // A KeyUpdate owed, or its record unsent: out as soon as the socket takes it.
  if (wpend_ || ku_owed_) {
    std::error_code wec;
    if (!flush(fd, wec) && wec != asio::error::would_block) {
      ec = wec;
      return 0;
    }
  }
  std::uint8_t* tb = thread_state().buffer();
  std::size_t out = 0;
  for (;;) {
    std::size_t have = rpend_len_;
    if (have) {
      std::memcpy(tb, rpend_.get(), have);
      rpend_.reset();
      rpend_len_ = 0;
    }
    // Read about as much as the caller takes (plaintext is shorter than its records), and at
    // least a whole record.
    std::size_t limit = std::min(kBufSize, std::max(buf.size() - out, kMaxRecord));
    bool fin = false;
    if (have < limit) {
      ssize_t r;
      do {
        r = ::recv(fd, tb + have, limit - have, MSG_DONTWAIT);
      } while (r < 0 && errno == EINTR);
      if (r < 0) {
        int e = errno;
        if (have) {
          rpend_ = std::make_unique<std::uint8_t[]>(have);
          std::memcpy(rpend_.get(), tb, have);
          rpend_len_ = static_cast<std::uint32_t>(have);
        }
        if (out) return out;
        if (would_block(e)) {
          blocked = Transport::Direction::read;
          ec = asio::error::would_block;
        } else {
          ec = failed_ = errno_code(e);
        }
        return 0;
      }
      fin = r == 0;
      have += static_cast<std::size_t>(r);
    }
    std::size_t pos = 0;
    while (!failed_ && !eof_ && plain_len_ == 0 && out < buf.size() && have - pos >= kHeader) {
      std::uint8_t* hdr = tb + pos;
      std::size_t len = record_length(hdr);
      if (hdr[0] != kApplicationData || hdr[1] != 3 || hdr[2] != 3) {
        fail(fd, kUnexpectedMessage);
        break;
      }
      if (len > kMaxCiphertext) {
        fail(fd, kRecordOverflow);
        break;
      }
      if (have - pos < kHeader + len) break;
      if (len < 1 + kTag || read_.seq == std::numeric_limits<std::uint64_t>::max()) {
        fail(fd, kBadRecordMac);
        break;
      }
      std::uint8_t* body = hdr + kHeader;
      std::size_t plen = len - kTag;
      std::uint8_t nonce[kIvLen];
      make_nonce(read_.iv, read_.seq, nonce);
      EVP_CIPHER_CTX* ctx = thread_state().keyed(false, suite_, read_.key, read_.key_id, nonce);
      int outl = 0, finl = 0;
      if (!ctx) {
        fail(fd, kInternalError);
        break;
      }
      if (EVP_DecryptUpdate(ctx, nullptr, &outl, hdr, kHeader) != 1 ||
          EVP_DecryptUpdate(ctx, body, &outl, body, static_cast<int>(plen)) != 1 ||
          EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_SET_TAG, kTag, body + plen) != 1 ||
          EVP_DecryptFinal_ex(ctx, body + outl, &finl) != 1) {
        fail(fd, kBadRecordMac);
        break;
      }
      ++read_.seq;
      pos += kHeader + len;
      // TLSInnerPlaintext: content, the type, zeros (§5.2).
      while (plen > 0 && body[plen - 1] == 0)
        --plen;
      if (plen == 0) {
        fail(fd, kUnexpectedMessage);
        break;
      }
      std::uint8_t type = body[--plen];
      if (type == kApplicationData && plen > 0) {
        empty_run_ = 0;
        std::size_t n = std::min(plen, buf.size() - out);
        std::memcpy(buf.data() + out, body, n);
        out += n;
        if (n < plen) {
          plain_ = std::make_unique<std::uint8_t[]>(plen - n);
          std::memcpy(plain_.get(), body + n, plen - n);
          plain_off_ = 0;
          plain_len_ = static_cast<std::uint32_t>(plen - n);
        }
        continue;
      }
      if (++empty_run_ > kMaxEmptyRecords) {
        fail(fd, kUnexpectedMessage);
        break;
      }
      if (type == kApplicationData) continue;
      if (type == kAlert) {
        if (plen != 2) {
          fail(fd, kDecodeError);
        } else if (body[1] == kCloseNotify) {
          eof_ = true;
        } else {
          failed_ = asio::error::connection_reset;  // the peer's fatal alert
          why_ = "the peer sent a fatal alert";
          closed_ = true;
        }
        break;
      }
      // Only a KeyUpdate, whole in one record (§5.1: it must end at a record boundary).
      if (type != kHandshake || plen != 5 || body[0] != kKeyUpdate || body[1] != 0 ||
          body[2] != 0 || body[3] != 1 || body[4] > 1) {
        fail(fd, kUnexpectedMessage);
        break;
      }
      if (!update(read_)) {
        fail(fd, kInternalError);
        break;
      }
      ++key_updates_;
      if (body[4] == 1) ku_owed_ = true;
    }
    if (!failed_ && !eof_ && pos < have) {
      rpend_ = std::make_unique<std::uint8_t[]>(have - pos);
      std::memcpy(rpend_.get(), tb + pos, have - pos);
      rpend_len_ = static_cast<std::uint32_t>(have - pos);
    }
    // TCP closed without close_notify: the end, whatever partial record was pending.
    if (fin && !failed_ && !has_buffered_input()) eof_ = true;
    if (ku_owed_ && !failed_) {
      std::error_code wec;
      (void)flush(fd, wec);
    }
    if (out) return out;
    if (failed_) {
      ec = failed_;
      return 0;
    }
    if (eof_) {
      rpend_.reset();
      rpend_len_ = 0;
      ec = asio::error::eof;
      return 0;
    }
    // Only records without data so far: read on.
  }
}

std::size_t Tls13Records::write(int fd, std::span<const std::uint8_t> buf, std::error_code& ec,
                                Transport::Direction& blocked) {
  ec.clear();
  if (failed_ || closed_) {
    ec = failed_ ? failed_ : std::error_code(asio::error::shut_down);
    return 0;
  }
  if (!flush(fd, ec)) {
    if (ec == asio::error::would_block) blocked = Transport::Direction::write;
    return 0;
  }
  if (wpend_plain_) {
    // The record the socket took part of is out now: its plaintext (which the caller passes
    // again, as after OpenSSL's WANT_WRITE) is accepted.
    std::size_t n = std::min<std::size_t>(wpend_plain_, buf.size());
    wpend_plain_ = 0;
    return n;
  }
  if (buf.empty()) return 0;
  std::uint8_t* tb = thread_state().buffer();
  std::size_t plain_end[kWriteRecords], wire_end[kWriteRecords];
  std::size_t records = 0, in = 0, wire = 0;
  while (records < kWriteRecords && in < buf.size()) {
    std::size_t n = std::min(kMaxPlaintext, buf.size() - in);
    if (!seal(kApplicationData, buf.data() + in, n, tb + wire)) {
      write_.seq -= records;
      fail(fd, kInternalError);
      ec = failed_;
      return 0;
    }
    in += n;
    wire += kHeader + n + 1 + kTag;
    plain_end[records] = in;
    wire_end[records] = wire;
    ++records;
  }
  std::size_t sent = 0;
  int err = 0;
  while (sent < wire) {
    ssize_t r = ::send(fd, tb + sent, wire - sent, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (r < 0) {
      if (errno == EINTR) continue;
      err = errno;
      break;
    }
    sent += static_cast<std::size_t>(r);
  }
  if (sent == wire) return in;
  if (err && !would_block(err)) {
    ec = failed_ = errno_code(err);
    return 0;
  }
  // Records the socket took none of were never seen: their sequence numbers are reused. The one
  // it took part of stays, its rest pending, and its plaintext is accepted only once all of it is
  // out (as OpenSSL's SSL_write does): whoever closes after the last write loses nothing.
  std::size_t i = 0;
  while (wire_end[i] <= sent)
    ++i;
  bool partial = sent > (i > 0 ? wire_end[i - 1] : 0);
  write_.seq -= records - i - (partial ? 1 : 0);
  std::size_t accepted = i > 0 ? plain_end[i - 1] : 0;
  if (partial) {
    queue_write(tb + sent, wire_end[i] - sent);
    wpend_plain_ = static_cast<std::uint32_t>(plain_end[i] - accepted);
  }
  if (accepted == 0) {
    blocked = Transport::Direction::write;
    ec = asio::error::would_block;
  }
  return accepted;
}

void Tls13Records::close_notify(int fd) noexcept {
  if (closed_ || failed_) return;
  closed_ = true;
  ku_owed_ = false;
  std::error_code ec;
  if (!flush(fd, ec)) return;  // cannot go out in order now; the socket closes anyway
  const std::uint8_t body[2] = {1, kCloseNotify};
  std::uint8_t rec[kHeader + sizeof body + 1 + kTag];
  if (seal(kAlert, body, sizeof body, rec)) {
    (void)::send(fd, rec, sizeof rec, MSG_NOSIGNAL | MSG_DONTWAIT);
  }
}

}  // namespace dispatchd::net
