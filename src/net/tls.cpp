#include "dispatchd/net/tls.hpp"

#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/x509v3.h>

#include <asio/experimental/as_tuple.hpp>
#include <asio/use_awaitable.hpp>
#include <cstring>
#include <string_view>

#include "dispatchd/log.hpp"
#include "dispatchd/net/tcp_transport.hpp"
#include "dispatchd/net/tls13_records.hpp"

namespace dispatchd::net {

namespace {

std::string subject_entry(X509_NAME* name, int nid) {
  int i = X509_NAME_get_index_by_NID(name, nid, -1);
  if (i < 0) return {};
  ASN1_STRING* s = X509_NAME_ENTRY_get_data(X509_NAME_get_entry(name, i));
  unsigned char* utf8 = nullptr;
  int n = ASN1_STRING_to_UTF8(&utf8, s);
  if (n < 0) return {};
  std::string out(reinterpret_cast<char*>(utf8), static_cast<std::size_t>(n));
  OPENSSL_free(utf8);
  return out;
}

std::vector<std::string> subject_entries(X509_NAME* name, int nid) {
  std::vector<std::string> out;
  for (int i = X509_NAME_get_index_by_NID(name, nid, -1); i >= 0;
       i = X509_NAME_get_index_by_NID(name, nid, i)) {
    ASN1_STRING* s = X509_NAME_ENTRY_get_data(X509_NAME_get_entry(name, i));
    unsigned char* utf8 = nullptr;
    int n = ASN1_STRING_to_UTF8(&utf8, s);
    if (n < 0) continue;
    out.emplace_back(reinterpret_cast<char*>(utf8), static_cast<std::size_t>(n));
    OPENSSL_free(utf8);
  }
  return out;
}

// ALPN: "h2" or nothing. A client that does not offer h2 fails the handshake.
int on_alpn_select(SSL* ssl, const unsigned char** out, unsigned char* outlen,
                   const unsigned char* in, unsigned int inlen, void*) {
  for (unsigned int i = 0; i < inlen;) {
    unsigned int len = in[i];
    if (i + 1 + len > inlen) break;
    if (len == 2 && std::memcmp(in + i + 1, "h2", 2) == 0) {
      *out = in + i + 1;
      *outlen = 2;
      return SSL_TLSEXT_ERR_OK;
    }
    i += 1 + len;
  }
  (void)ssl;
  return SSL_TLSEXT_ERR_ALERT_FATAL;
}

// A ClientHello without ALPN is refused at once (without this, a TLS 1.3 client would finish its
// handshake and only then see the connection close).
int on_client_hello(SSL* ssl, int* alert, void*) {
  const unsigned char* ext = nullptr;
  std::size_t len = 0;
  if (SSL_client_hello_get0_ext(ssl, TLSEXT_TYPE_application_layer_protocol_negotiation, &ext,
                                &len) != 1) {
    *alert = SSL_AD_NO_APPLICATION_PROTOCOL;
    return SSL_CLIENT_HELLO_ERROR;
  }
  return SSL_CLIENT_HELLO_SUCCESS;
}

// What a client may send as its certificate chain. OpenSSL keeps every certificate of it, decoded
// (about 5 KB each for ECDSA P-256), in the connection's SSL_SESSION until the connection ends,
// with no way to free it earlier (bench/tls-mem-attrib.cpp; BENCHMARKS.md "TLS state per
// connection"). SwarmKit agents send their leaf plus the CA's intermediates, if any.
constexpr int kMaxClientChain = 8;            // certificates, the leaf included
constexpr long kMaxClientChainBytes = 32768;  // the Certificate message (OpenSSL's default: 100 KB)

int verify_client_chain(X509_STORE_CTX* store_ctx, void*) {
  STACK_OF(X509)* sent = X509_STORE_CTX_get0_untrusted(store_ctx);
  if (sent && sk_X509_num(sent) > kMaxClientChain) {
    X509_STORE_CTX_set_error(store_ctx, X509_V_ERR_CERT_CHAIN_TOO_LONG);
    return 0;
  }
  return X509_verify_cert(store_ctx);
}

// Where an SSL object's TlsTransport is (for the keylog callback).
int transport_index() {
  static const int index = SSL_get_ex_new_index(0, nullptr, nullptr, nullptr, nullptr);
  return index;
}

int hex_digit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

}  // namespace

// The two application traffic secrets (RFC 8446 §7.1) while the handshake runs.
struct TlsTransport::Secrets {
  std::uint8_t client[48], server[48];
  std::size_t client_len = 0, server_len = 0;
  ~Secrets() { OPENSSL_cleanse(this, sizeof *this); }
};

void TlsTransport::on_keylog(const SSL* ssl, const char* line) {
  // "<label> <client random> <secret>", the secret in hex (NSS key log format). Kept only: the
  // first application traffic secrets; nothing of it is ever logged.
  auto* t = static_cast<TlsTransport*>(SSL_get_ex_data(ssl, transport_index()));
  if (!t) return;
  std::string_view l(line);
  bool client = l.starts_with("CLIENT_TRAFFIC_SECRET_0 ");
  if (!client && !l.starts_with("SERVER_TRAFFIC_SECRET_0 ")) return;
  std::size_t sp = l.rfind(' ');
  std::string_view hex = l.substr(sp + 1);
  if (!t->secrets_) t->secrets_ = std::make_unique<Secrets>();
  std::uint8_t* out = client ? t->secrets_->client : t->secrets_->server;
  std::size_t& len = client ? t->secrets_->client_len : t->secrets_->server_len;
  len = 0;
  if (hex.size() % 2 != 0 || hex.size() / 2 > sizeof t->secrets_->client) return;
  for (std::size_t i = 0; i < hex.size(); i += 2) {
    int hi = hex_digit(hex[i]), lo = hex_digit(hex[i + 1]);
    if (hi < 0 || lo < 0) {
      len = 0;
      return;
    }
    out[len++] = static_cast<std::uint8_t>(hi << 4 | lo);
  }
}

std::expected<std::shared_ptr<TlsContext>, std::string> TlsContext::load(const TlsFiles& files) {
  std::shared_ptr<TlsContext> t(new TlsContext());
  SSL_CTX* ctx = SSL_CTX_new(TLS_server_method());
  if (!ctx) return std::unexpected("SSL_CTX_new: " + openssl_errors());
  t->ctx_ = ctx;
  SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
  // ECDHE with AES-GCM or ChaCha20-Poly1305 only, as SwarmKit allows (TLS 1.3 suites are all
  // AEAD).
  if (SSL_CTX_set_cipher_list(ctx,
                              "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
                              "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
                              "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305") != 1) {
    return std::unexpected("cipher list: " + openssl_errors());
  }
  SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET | SSL_OP_NO_RENEGOTIATION |
                               SSL_OP_CIPHER_SERVER_PREFERENCE | SSL_OP_NO_COMPRESSION);
  SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
  SSL_CTX_set_num_tickets(ctx, 0);
  SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS | SSL_MODE_ENABLE_PARTIAL_WRITE |
                            SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
  if (SSL_CTX_use_certificate_chain_file(ctx, files.cert.c_str()) != 1) {
    return std::unexpected("cannot load certificate " + files.cert + ": " + openssl_errors());
  }
  if (SSL_CTX_use_PrivateKey_file(ctx, files.key.c_str(), SSL_FILETYPE_PEM) != 1) {
    return std::unexpected("cannot load key " + files.key + ": " + openssl_errors());
  }
  if (SSL_CTX_check_private_key(ctx) != 1) {
    return std::unexpected("key " + files.key + " does not match certificate " + files.cert);
  }
  if (SSL_CTX_load_verify_locations(ctx, files.ca.c_str(), nullptr) != 1) {
    return std::unexpected("cannot load CA bundle " + files.ca + ": " + openssl_errors());
  }
  // Requested and verified when given, not required (docs/behaviour.md §9.1): a caller
  // without a certificate completes the handshake and is refused per call with
  // PERMISSION_DENIED.
  SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, nullptr);
  SSL_CTX_set_cert_verify_callback(ctx, verify_client_chain, nullptr);
  SSL_CTX_set_max_cert_list(ctx, kMaxClientChainBytes);
  if (STACK_OF(X509_NAME)* names = SSL_load_client_CA_file(files.ca.c_str())) {
    SSL_CTX_set_client_CA_list(ctx, names);
  }
  SSL_CTX_set_alpn_select_cb(ctx, on_alpn_select, nullptr);
  SSL_CTX_set_client_hello_cb(ctx, on_client_hello, nullptr);
  if (!files.openssl_records) {
    SSL_CTX_set_keylog_callback(ctx, TlsTransport::on_keylog);
    t->own_records_ = true;
  }
  // Our own chain: when the certificate file holds the leaf alone, OpenSSL would build the chain
  // from the CA store in every handshake (an X509_STORE_CTX and a signature check of our own
  // certificate per connection) and send the root along. Built once here instead, without the
  // root, as SwarmKit's managers send it (the root is the agents' trust anchor). A chain given in
  // the file is sent as it is, as before.
  STACK_OF(X509)* given = nullptr;
  SSL_CTX_get0_chain_certs(ctx, &given);
  if ((!given || sk_X509_num(given) == 0) &&
      SSL_CTX_build_cert_chain(
          ctx, SSL_BUILD_CHAIN_FLAG_NO_ROOT | SSL_BUILD_CHAIN_FLAG_IGNORE_ERROR) <= 0) {
    return std::unexpected("cannot build the certificate chain of " + files.cert + ": " +
                           openssl_errors());
  }
  ERR_clear_error();
  SSL_CTX_set_mode(ctx, SSL_MODE_NO_AUTO_CHAIN);
  if (X509* leaf = SSL_CTX_get0_certificate(ctx)) {
    X509_NAME* subject = X509_get_subject_name(leaf);
    t->cn_ = subject_entry(subject, NID_commonName);
    t->org_ = subject_entry(subject, NID_organizationName);
  }
  return t;
}

TlsContext::~TlsContext() {
  if (ctx_) SSL_CTX_free(ctx_);
}

TlsTransport::TlsTransport(asio::ip::tcp::socket socket, std::shared_ptr<TlsContext> ctx)
    : TlsStream(std::move(socket), ctx->get()), ctx_(std::move(ctx)) {
  identity_.tls = true;
  if (ssl_ && ctx_->own_records()) SSL_set_ex_data(ssl_, transport_index(), this);
}

TlsTransport::~TlsTransport() = default;

asio::awaitable<std::error_code> TlsTransport::handshake(HandshakePool* pool) {
  if (ssl_) SSL_set_accept_state(ssl_);
  auto ec = co_await run_handshake("client did not negotiate ALPN h2", pool);
  if (!ec) {
    extract_identity();
    hand_off();
  }
  secrets_.reset();
  co_return ec;
}

bool TlsTransport::hand_off() {
  if (!secrets_ || SSL_version(ssl_) != TLS1_3_VERSION) return false;
  const SSL_CIPHER* cipher = SSL_get_current_cipher(ssl_);
  auto suite =
      cipher ? Tls13Records::suite_from_id(SSL_CIPHER_get_protocol_id(cipher)) : std::nullopt;
  const char* why = nullptr;
  if (!suite) {
    why = "cipher suite";
  } else if (secrets_->client_len != Tls13Records::secret_length(*suite) ||
             secrets_->server_len != Tls13Records::secret_length(*suite)) {
    why = "no traffic secrets";
  } else if (SSL_has_pending(ssl_) || SSL_get_key_update_type(ssl_) != SSL_KEY_UPDATE_NONE ||
             SSL_get_num_tickets(ssl_) != 0) {
    // Read-ahead is off, so OpenSSL has read nothing past the client's Finished; and with no
    // tickets it wrote nothing after ours: both sequence numbers are 0.
    why = "OpenSSL holds records";
  }
  if (!why) {
    records_ = Tls13Records::create(*suite, {secrets_->client, secrets_->client_len},
                                    {secrets_->server, secrets_->server_len});
    if (!records_) why = "key derivation failed";
  }
  if (why) {
    log::debug("{}: TLS 1.3 records stay with OpenSSL: {}", peer_, why);
    return false;
  }
  SSL_free(ssl_);
  ssl_ = nullptr;
  return true;
}

void TlsTransport::extract_identity() {
  X509* cert = SSL_get0_peer_certificate(ssl_);
  if (!cert || SSL_get_verify_result(ssl_) != X509_V_OK) return;
  X509_NAME* subject = X509_get_subject_name(cert);
  identity_.has_certificate = true;
  identity_.common_name = subject_entry(subject, NID_commonName);
  identity_.organizational_units = subject_entries(subject, NID_organizationalUnitName);
  identity_.organization = subject_entry(subject, NID_organizationName);
}

}  // namespace dispatchd::net
