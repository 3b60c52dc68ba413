#include "dispatchd/net/tls13_records.hpp"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <sys/socket.h>

#include <algorithm>
#include <asio/error.hpp>
#include <cerrno>
#include <cstring>
#include <limits>
#include <string_view>

#include "tls13_crypto.hpp"

namespace dispatchd::net {

using namespace tls13;

namespace {

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
