// GnuTLS server. Credentials are shared by the sessions made with them and must outlive them, so
// a reload makes new credentials and each connection keeps a reference to the ones it used.
#include <gnutls/gnutls.h>
#include <gnutls/x509.h>
#include <unistd.h>

#include <cstring>

#include "backend.hpp"

namespace tlslibs {
namespace {

struct Credentials {
  gnutls_certificate_credentials_t cred = nullptr;
  ~Credentials() { gnutls_certificate_free_credentials(cred); }
};

std::string dn_entry(gnutls_x509_crt_t crt, const char* oid) {
  char buf[256];
  size_t size = sizeof buf;
  if (gnutls_x509_crt_get_dn_by_oid(crt, oid, 0, 0, buf, &size) != 0) return {};
  return std::string(buf, size);
}

class GnutlsConn final : public Conn {
 public:
  GnutlsConn(gnutls_session_t session, int fd, std::shared_ptr<Credentials> cred)
      : session_(session), fd_(fd), cred_(std::move(cred)) {}
  ~GnutlsConn() override {
    gnutls_deinit(session_);
    close(fd_);
  }
  bool send_byte(char c) override { return gnutls_record_send(session_, &c, 1) == 1; }

 private:
  gnutls_session_t session_;
  int fd_;
  std::shared_ptr<Credentials> cred_;
};

class GnutlsBackend final : public Backend {
 public:
  explicit GnutlsBackend(const Options& options) : options_(options) {
    gnutls_global_init();
    if (options_.tickets) gnutls_session_ticket_key_generate(&ticket_key_);
  }
  ~GnutlsBackend() override {
    cred_.reset();
    if (ticket_key_.data != nullptr) gnutls_free(ticket_key_.data);
    gnutls_global_deinit();
  }

  bool load(const Files& files, std::string& error) override {
    auto cred = std::make_shared<Credentials>();
    gnutls_certificate_allocate_credentials(&cred->cred);
    int rc = gnutls_certificate_set_x509_key_file(cred->cred, files.cert.c_str(), files.key.c_str(),
                                                  GNUTLS_X509_FMT_PEM);
    if (rc >= 0) {
      rc =
          gnutls_certificate_set_x509_trust_file(cred->cred, files.ca.c_str(), GNUTLS_X509_FMT_PEM);
    }
    if (rc < 0) {
      error = gnutls_strerror(rc);
      return false;
    }
    cred_ = std::move(cred);
    return true;
  }

  Accepted accept(int fd) override {
    Accepted r;
    gnutls_session_t s = nullptr;
    gnutls_init(&s, GNUTLS_SERVER | (options_.tickets ? 0 : GNUTLS_NO_TICKETS));
    gnutls_priority_set_direct(s, "NORMAL:-VERS-ALL:+VERS-TLS1.3:+VERS-TLS1.2", nullptr);
    gnutls_credentials_set(s, GNUTLS_CRD_CERTIFICATE, cred_->cred);
    gnutls_certificate_server_set_request(s, GNUTLS_CERT_REQUIRE);
    gnutls_session_set_verify_cert(s, nullptr, 0);  // chain verified during the handshake
    gnutls_datum_t h2{reinterpret_cast<unsigned char*>(const_cast<char*>("h2")), 2};
    gnutls_alpn_set_protocols(s, &h2, 1, GNUTLS_ALPN_MANDATORY);
    if (options_.tickets) gnutls_session_ticket_enable_server(s, &ticket_key_);
    gnutls_transport_set_int(s, fd);
    int rc;
    do {
      rc = gnutls_handshake(s);
    } while (rc < 0 && gnutls_error_is_fatal(rc) == 0);
    if (rc < 0) {
      r.error = gnutls_strerror(rc);
      gnutls_deinit(s);
      close(fd);
      return r;
    }
    r.version = gnutls_protocol_get_name(gnutls_protocol_get_version(s));
    gnutls_datum_t alpn{};
    if (gnutls_alpn_get_selected_protocol(s, &alpn) == 0) {
      r.alpn.assign(reinterpret_cast<const char*>(alpn.data), alpn.size);
    }
    r.resumed = gnutls_session_is_resumed(s) != 0;
    unsigned int count = 0;
    const gnutls_datum_t* peers = gnutls_certificate_get_peers(s, &count);
    if (peers != nullptr && count > 0) {
      gnutls_x509_crt_t crt = nullptr;
      gnutls_x509_crt_init(&crt);
      if (gnutls_x509_crt_import(crt, &peers[0], GNUTLS_X509_FMT_DER) == 0) {
        r.cn = dn_entry(crt, GNUTLS_OID_X520_COMMON_NAME);
        r.ou = dn_entry(crt, GNUTLS_OID_X520_ORGANIZATIONAL_UNIT_NAME);
        r.o = dn_entry(crt, GNUTLS_OID_X520_ORGANIZATION_NAME);
      }
      gnutls_x509_crt_deinit(crt);
    }
    r.conn = std::make_unique<GnutlsConn>(s, fd, cred_);
    return r;
  }

  std::string library_version() const override {
    return std::string("GnuTLS ") + gnutls_check_version(nullptr);
  }
  std::string reload_method() const override {
    return "new certificate credentials for new sessions (old ones freed with their last session)";
  }

 private:
  Options options_;
  std::shared_ptr<Credentials> cred_;
  gnutls_datum_t ticket_key_{};
};

}  // namespace

std::unique_ptr<Backend> make_gnutls(const Options& options) {
  return std::make_unique<GnutlsBackend>(options);
}

}  // namespace tlslibs
