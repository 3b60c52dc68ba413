// tls-libs client (OpenSSL): opens N+2 mutual-TLS connections to the server one after another and
// holds them until the server has measured (it sends 'r' on connection 0). With --mode resume
// each connection offers the ticket the previous one received, as an agent's session cache would.
//
//   client --port P --n 1000 --mode full|resume --tls 1.3|1.2 --certs DIR --org ORG
//          --distinct 1|0
//
// --distinct 1 (the default) mints a certificate and key per measured connection (CN node-NNNNNN,
// OU swarm-worker, O ORG, signed by DIR/ca.pem); otherwise every connection presents worker1.
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <vector>

#include "common.hpp"

namespace tlslibs {
namespace {

struct Identity {
  X509* cert = nullptr;
  EVP_PKEY* key = nullptr;
};

std::string ssl_error() {
  char buf[256];
  ERR_error_string_n(ERR_get_error(), buf, sizeof buf);
  return buf;
}

template <typename T, typename Reader>
T* read_pem(const std::string& path, Reader reader) {
  FILE* file = std::fopen(path.c_str(), "r");
  if (file == nullptr) die("cannot open " + path);
  T* value = reader(file, nullptr, nullptr, nullptr);
  std::fclose(file);
  if (value == nullptr) die("cannot read " + path);
  return value;
}

Identity load_identity(const std::string& dir, const std::string& leaf) {
  return {read_pem<X509>(dir + "/" + leaf + ".pem", PEM_read_X509),
          read_pem<EVP_PKEY>(dir + "/" + leaf + ".key", PEM_read_PrivateKey)};
}

void add_extension(X509* cert, X509V3_CTX* ctx, int nid, const char* value) {
  X509_EXTENSION* ext = X509V3_EXT_conf_nid(nullptr, ctx, nid, value);
  X509_add_ext(cert, ext, -1);
  X509_EXTENSION_free(ext);
}

Identity mint(const Identity& ca, const std::string& org, long serial) {
  Identity id;
  id.key = EVP_EC_gen("P-256");
  id.cert = X509_new();
  X509_set_version(id.cert, 2);
  ASN1_INTEGER_set(X509_get_serialNumber(id.cert), 100000 + serial);
  X509_gmtime_adj(X509_getm_notBefore(id.cert), -3600);
  X509_gmtime_adj(X509_getm_notAfter(id.cert), 86400);
  X509_set_pubkey(id.cert, id.key);
  char cn[32];
  std::snprintf(cn, sizeof cn, "node-%06ld", serial);
  X509_NAME* name = X509_get_subject_name(id.cert);
  auto add = [&](const char* field, const std::string& value) {
    X509_NAME_add_entry_by_txt(name, field, MBSTRING_UTF8,
                               reinterpret_cast<const unsigned char*>(value.c_str()), -1, -1, 0);
  };
  add("O", org);
  add("OU", "swarm-worker");
  add("CN", cn);
  X509_set_issuer_name(id.cert, X509_get_subject_name(ca.cert));
  X509V3_CTX ctx;
  X509V3_set_ctx(&ctx, ca.cert, id.cert, nullptr, nullptr, 0);
  add_extension(id.cert, &ctx, NID_basic_constraints, "critical,CA:FALSE");
  add_extension(id.cert, &ctx, NID_key_usage, "critical,digitalSignature");
  add_extension(id.cert, &ctx, NID_ext_key_usage, "clientAuth");
  if (X509_sign(id.cert, ca.key, EVP_sha256()) == 0) die("mint: " + ssl_error());
  return id;
}

int connect_loopback(int port) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr = loopback(port);
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    die(std::string("connect: ") + std::strerror(errno));
  }
  no_delay(fd);
  return fd;
}

std::string server_cn(SSL* ssl) {
  char buf[256] = {};
  X509_NAME_get_text_by_NID(X509_get_subject_name(SSL_get0_peer_certificate(ssl)), NID_commonName,
                            buf, sizeof buf);
  return buf;
}

char read_byte(SSL* ssl) {
  char c = 0;
  if (SSL_read(ssl, &c, 1) != 1) die("read from server: " + ssl_error());
  return c;
}

// One connection: handshake, then the server's 'k' (which also brings any tickets).
SSL* open(SSL_CTX* ctx, int port, const Identity& id, SSL_SESSION* session) {
  SSL* ssl = SSL_new(ctx);
  SSL_use_certificate(ssl, id.cert);
  SSL_use_PrivateKey(ssl, id.key);
  if (session != nullptr) SSL_set_session(ssl, session);
  SSL_set_fd(ssl, connect_loopback(port));
  if (SSL_connect(ssl) != 1) die("handshake: " + ssl_error());
  if (read_byte(ssl) != 'k') die("unexpected byte from server");
  return ssl;
}

}  // namespace
}  // namespace tlslibs

int main(int argc, char** argv) {
  using namespace tlslibs;
  Args args(argc, argv);
  const int port = static_cast<int>(args.number("--port", 0));
  const long n = args.number("--n", 1000);
  const bool resume = args.get("--mode", "full") == "resume";
  const bool tls12 = args.get("--tls", "1.3") == "1.2";
  const std::string dir = args.get("--certs", "certs");
  const std::string org = args.get("--org", "tlslibs-org");
  const bool distinct = args.number("--distinct", 1) != 0;
  raise_fd_limit();

  const Identity worker = load_identity(dir, "worker1");
  std::vector<Identity> minted;
  if (distinct) {
    const Identity ca = load_identity(dir, "ca");
    for (long i = 0; i < n; ++i)
      minted.push_back(mint(ca, org, i));
  }

  SSL_CTX* ctx = SSL_CTX_new(TLS_client_method());
  SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
  SSL_CTX_set_max_proto_version(ctx, tls12 ? TLS1_2_VERSION : TLS1_3_VERSION);
  SSL_CTX_load_verify_locations(ctx, (dir + "/ca.pem").c_str(), nullptr);
  SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, nullptr);
  static constexpr unsigned char kH2[] = {2, 'h', '2'};
  SSL_CTX_set_alpn_protos(ctx, kH2, sizeof kH2);

  auto identity = [&](long i) -> const Identity& {
    return distinct ? minted[static_cast<size_t>(i)] : worker;
  };
  long tickets = 0;
  size_t ticket_bytes = 0;
  // A ticket that carries the client's identity is as long as its certificate, or longer.
  auto count_ticket = [&](SSL_SESSION* session) {
    if (SSL_SESSION_has_ticket(session) != 1) return;
    const unsigned char* data = nullptr;
    size_t len = 0;
    SSL_SESSION_get0_ticket(session, &data, &len);
    ++tickets;
    ticket_bytes += len;
  };

  std::vector<SSL*> conns;
  conns.push_back(open(ctx, port, worker, nullptr));
  const std::string cn0 = server_cn(conns.back());
  conns.push_back(open(ctx, port, worker, nullptr));
  const std::string cn_after = server_cn(conns.back());

  // Resumption: every agent first gets its own ticket from a full handshake, then reconnects.
  std::vector<SSL_SESSION*> sessions(static_cast<size_t>(n), nullptr);
  if (resume) {
    for (long i = 0; i < n; ++i) {
      SSL* ssl = open(ctx, port, identity(i), nullptr);
      sessions[static_cast<size_t>(i)] = SSL_get1_session(ssl);  // the ticket came before 'k'
      count_ticket(sessions[static_cast<size_t>(i)]);
      SSL_shutdown(ssl);  // OpenSSL marks the session of an unclean close as not resumable
      close(SSL_get_fd(ssl));
      SSL_free(ssl);
    }
  }
  long resumed = 0, alpn_ok = 0;
  std::string group;  // the key exchange group of the first measured handshake
  for (long i = 0; i < n; ++i) {
    SSL* ssl = open(ctx, port, identity(i), sessions[static_cast<size_t>(i)]);
    resumed += SSL_session_reused(ssl);
    const unsigned char* alpn = nullptr;
    unsigned int alpn_len = 0;
    SSL_get0_alpn_selected(ssl, &alpn, &alpn_len);
    alpn_ok += alpn_len == 2 && std::memcmp(alpn, "h2", 2) == 0;
    if (!resume) count_ticket(SSL_get_session(ssl));
    if (const char* name = SSL_group_to_name(ssl, SSL_get_negotiated_group(ssl)); i == 0) {
      group = name != nullptr ? name : "?";
    }
    conns.push_back(ssl);
  }
  // The server has measured when it writes 'r' on connection 0, made before its reload.
  const bool old_conn_ok = read_byte(conns.front()) == 'r';
  std::printf(
      "client n=%ld resumed=%ld alpn_ok=%ld group=%s tickets=%ld ticket_B=%zu "
      "server_cn_before_reload=%s after=%s conn0_after_reload=%s\n",
      n, resumed, alpn_ok, group.c_str(), tickets,
      tickets > 0 ? ticket_bytes / static_cast<size_t>(tickets) : 0, cn0.c_str(), cn_after.c_str(),
      old_conn_ok ? "ok" : "broken");
  return 0;
}
