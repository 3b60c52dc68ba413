// OpenSSL 3 server: "default" is the library's defaults around what our mTLS needs; "tuned" adds
// the knobs dispatchd sets (released buffers, no server session cache, no chain built per
// handshake, no tickets unless the run offers resumption).
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <unistd.h>

#include "backend.hpp"

namespace tlslibs {
namespace {

constexpr unsigned char kSessionContext[] = "tlslibs";

int select_h2(SSL*, const unsigned char** out, unsigned char* outlen, const unsigned char* in,
              unsigned int inlen, void*) {
  static constexpr unsigned char kH2[] = {2, 'h', '2'};
  unsigned char* selected = nullptr;
  if (SSL_select_next_proto(&selected, outlen, kH2, sizeof kH2, in, inlen) !=
      OPENSSL_NPN_NEGOTIATED) {
    return SSL_TLSEXT_ERR_ALERT_FATAL;
  }
  *out = selected;
  return SSL_TLSEXT_ERR_OK;
}

std::string last_error() {
  char buf[256];
  ERR_error_string_n(ERR_get_error(), buf, sizeof buf);
  ERR_clear_error();
  return buf;
}

std::string name_entry(X509_NAME* name, int nid) {
  char buf[256];
  int n = X509_NAME_get_text_by_NID(name, nid, buf, sizeof buf);
  return n > 0 ? std::string(buf, static_cast<size_t>(n)) : std::string();
}

class OpenSslConn final : public Conn {
 public:
  OpenSslConn(SSL* ssl, int fd) : ssl_(ssl), fd_(fd) {}
  ~OpenSslConn() override {
    SSL_free(ssl_);
    close(fd_);
  }
  bool send_byte(char c) override { return SSL_write(ssl_, &c, 1) == 1; }

 private:
  SSL* ssl_;
  int fd_;
};

class OpenSslBackend final : public Backend {
 public:
  explicit OpenSslBackend(const Options& options) : options_(options) {}
  ~OpenSslBackend() override { SSL_CTX_free(ctx_); }

  bool load(const Files& files, std::string& error) override {
    SSL_CTX* ctx = SSL_CTX_new(TLS_server_method());
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    if (SSL_CTX_use_certificate_chain_file(ctx, files.cert.c_str()) != 1 ||
        SSL_CTX_use_PrivateKey_file(ctx, files.key.c_str(), SSL_FILETYPE_PEM) != 1 ||
        SSL_CTX_load_verify_locations(ctx, files.ca.c_str(), nullptr) != 1) {
      error = last_error();
      SSL_CTX_free(ctx);
      return false;
    }
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, nullptr);
    SSL_CTX_set_alpn_select_cb(ctx, select_h2, nullptr);
    // Resumption with a verified client certificate needs a session id context.
    SSL_CTX_set_session_id_context(ctx, kSessionContext, sizeof kSessionContext - 1);
    if (options_.tuned) {
      // No chain built from the trust store in every handshake: the leaf alone is sent, as
      // GnuTLS and wolfSSL send what they were given (dispatchd builds its chain once).
      SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS | SSL_MODE_NO_AUTO_CHAIN);
      SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
      SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION);
      SSL_CTX_set_read_ahead(ctx, 0);
      SSL_CTX_set_default_read_buffer_len(ctx, 0);
      // TLS 1.3 stateless tickets: one when resumption is offered, none otherwise.
      // (SSL_OP_NO_TICKET would switch TLS 1.3 to stateful tickets kept in the server cache.)
      SSL_CTX_set_num_tickets(ctx, options_.tickets ? 1 : 0);
      if (!options_.tickets) SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET);
    }
    // Untuned: two stateless TLS 1.3 tickets per handshake and the server session cache on.
    SSL_CTX_free(ctx_);  // open connections hold their own reference
    ctx_ = ctx;
    return true;
  }

  Accepted accept(int fd) override {
    Accepted r;
    SSL* ssl = SSL_new(ctx_);
    SSL_set_fd(ssl, fd);
    if (SSL_accept(ssl) != 1) {
      r.error = last_error();
      SSL_free(ssl);
      close(fd);
      return r;
    }
    r.version = SSL_get_version(ssl);
    const unsigned char* alpn = nullptr;
    unsigned int alpn_len = 0;
    SSL_get0_alpn_selected(ssl, &alpn, &alpn_len);
    r.alpn.assign(reinterpret_cast<const char*>(alpn), alpn_len);
    r.resumed = SSL_session_reused(ssl) == 1;
    if (X509* peer = SSL_get0_peer_certificate(ssl)) {
      X509_NAME* subject = X509_get_subject_name(peer);
      r.cn = name_entry(subject, NID_commonName);
      r.ou = name_entry(subject, NID_organizationalUnitName);
      r.o = name_entry(subject, NID_organizationName);
    }
    r.conn = std::make_unique<OpenSslConn>(ssl, fd);
    return r;
  }

  std::string library_version() const override { return OpenSSL_version(OPENSSL_VERSION); }
  std::string reload_method() const override {
    return "new SSL_CTX swapped in (refcounted; open SSLs keep the old one)";
  }

 private:
  Options options_;
  SSL_CTX* ctx_ = nullptr;
};

}  // namespace

std::unique_ptr<Backend> make_openssl(const Options& options) {
  return std::make_unique<OpenSslBackend>(options);
}

}  // namespace tlslibs
