// wolfSSL server (Debian's build: TLS 1.3, session tickets, ALPN, OPENSSL_ALL, KEEP_PEER_CERT and
// SESSION_CERTS). A WOLFSSL_CTX is reference counted by the WOLFSSLs made from it.
#include <unistd.h>
#include <wolfssl/options.h>
#include <wolfssl/ssl.h>

#include "backend.hpp"

namespace tlslibs {
namespace {

std::string error_text(WOLFSSL* ssl, int rc) {
  char buf[WOLFSSL_MAX_ERROR_SZ];
  return wolfSSL_ERR_error_string(static_cast<unsigned long>(wolfSSL_get_error(ssl, rc)), buf);
}

std::string name_entry(WOLFSSL_X509_NAME* name, int nid) {
  char buf[256];
  int n = wolfSSL_X509_NAME_get_text_by_NID(name, nid, buf, sizeof buf);
  return n > 0 ? std::string(buf, static_cast<size_t>(n)) : std::string();
}

class WolfsslConn final : public Conn {
 public:
  WolfsslConn(WOLFSSL* ssl, int fd) : ssl_(ssl), fd_(fd) {}
  ~WolfsslConn() override {
    wolfSSL_free(ssl_);
    close(fd_);
  }
  bool send_byte(char c) override { return wolfSSL_write(ssl_, &c, 1) == 1; }

 private:
  WOLFSSL* ssl_;
  int fd_;
};

class WolfsslBackend final : public Backend {
 public:
  explicit WolfsslBackend(const Options& options) : options_(options) { wolfSSL_Init(); }
  ~WolfsslBackend() override {
    wolfSSL_CTX_free(ctx_);
    wolfSSL_Cleanup();
  }

  bool load(const Files& files, std::string& error) override {
    WOLFSSL_CTX* ctx = wolfSSL_CTX_new(wolfSSLv23_server_method());
    wolfSSL_CTX_SetMinVersion(ctx, WOLFSSL_TLSV1_2);
    if (wolfSSL_CTX_use_certificate_chain_file(ctx, files.cert.c_str()) != WOLFSSL_SUCCESS ||
        wolfSSL_CTX_use_PrivateKey_file(ctx, files.key.c_str(), WOLFSSL_FILETYPE_PEM) !=
            WOLFSSL_SUCCESS ||
        wolfSSL_CTX_load_verify_locations(ctx, files.ca.c_str(), nullptr) != WOLFSSL_SUCCESS) {
      error = "wolfSSL could not load " + files.cert + " / " + files.key + " / " + files.ca;
      wolfSSL_CTX_free(ctx);
      return false;
    }
    wolfSSL_CTX_set_verify(ctx, WOLFSSL_VERIFY_PEER | WOLFSSL_VERIFY_FAIL_IF_NO_PEER_CERT, nullptr);
    static constexpr unsigned char kContext[] = "tlslibs";
    wolfSSL_CTX_set_session_id_context(ctx, kContext, sizeof kContext - 1);
    // No server-side session cache: a resumed agent must be known from its ticket alone, as it
    // would be after a restart of the server.
    wolfSSL_CTX_set_session_cache_mode(ctx, WOLFSSL_SESS_CACHE_OFF);
    if (!options_.tickets) {
      wolfSSL_CTX_set_num_tickets(ctx, 0);
      wolfSSL_CTX_set_options(ctx, WOLFSSL_OP_NO_TICKET);
    }
    wolfSSL_CTX_free(ctx_);
    ctx_ = ctx;
    return true;
  }

  Accepted accept(int fd) override {
    Accepted r;
    WOLFSSL* ssl = wolfSSL_new(ctx_);
    wolfSSL_set_fd(ssl, fd);
    char h2[] = "h2";
    wolfSSL_UseALPN(ssl, h2, 2, WOLFSSL_ALPN_FAILED_ON_MISMATCH);
    int rc = wolfSSL_accept(ssl);
    if (rc != WOLFSSL_SUCCESS) {
      r.error = error_text(ssl, rc);
      wolfSSL_free(ssl);
      close(fd);
      return r;
    }
    r.version = wolfSSL_get_version(ssl);
    char* alpn = nullptr;
    unsigned short alpn_len = 0;
    if (wolfSSL_ALPN_GetProtocol(ssl, &alpn, &alpn_len) == WOLFSSL_SUCCESS) {
      r.alpn.assign(alpn, alpn_len);
    }
    r.resumed = wolfSSL_session_reused(ssl) != 0;
    if (WOLFSSL_X509* peer = wolfSSL_get_peer_certificate(ssl)) {
      WOLFSSL_X509_NAME* subject = wolfSSL_X509_get_subject_name(peer);
      r.cn = name_entry(subject, NID_commonName);
      r.ou = name_entry(subject, NID_organizationalUnitName);
      r.o = name_entry(subject, NID_organizationName);
      wolfSSL_X509_free(peer);  // a counted reference, as OpenSSL's SSL_get_peer_certificate
    }
    r.conn = std::make_unique<WolfsslConn>(ssl, fd);
    return r;
  }

  std::string library_version() const override {
    return std::string("wolfSSL ") + wolfSSL_lib_version();
  }
  std::string reload_method() const override {
    return "new WOLFSSL_CTX swapped in (refcounted; open WOLFSSLs keep the old one)";
  }

 private:
  Options options_;
  WOLFSSL_CTX* ctx_ = nullptr;
};

}  // namespace

std::unique_ptr<Backend> make_wolfssl(const Options& options) {
  return std::make_unique<WolfsslBackend>(options);
}

}  // namespace tlslibs
