// tls-mem-attrib: what OpenSSL keeps per server-side connection, by allocation site.
//
// Runs K mutual-TLS handshakes in memory (server SSL_CTX configured as src/net/tls.cpp does,
// client with its own certificate node-<i>), then a little application data each way and a last
// SSL_read that finds nothing (as an idle connection does), keeps all K connections, and prints
// the OpenSSL heap the server side still holds per connection, grouped by the OpenSSL source
// file:line that allocated it (CRYPTO_set_mem_functions sees OPENSSL_FILE/OPENSSL_LINE) and by
// phase (SSL_new, handshake, application data). Bytes are malloc chunk sizes (usable size + 8),
// i.e. what glibc's heap really spends.
//
//   g++ -std=c++23 -O1 bench/tls-mem-attrib.cpp -lssl -lcrypto -o build/tls-mem-attrib
//   build/tls-mem-attrib CERTDIR [K] [--tls12] [--group P-256] [--one-read]
//                              [--auto-chain] [--build-chain]
//
// --auto-chain: the client sends leaf and root (OpenSSL client default), not the leaf only.
// --build-chain: the server chain built once at load (SSL_CTX_build_cert_chain), not per handshake.
// --one-read: no last SSL_read that finds nothing (the h2 layer stops after a short read).
#include <malloc.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <map>
#include <string>
#include <unordered_map>
#include <vector>

namespace {

struct Alloc {
  std::size_t bytes;
  const char* file;
  int line;
  int phase;
};
// The map itself allocates through operator new, not through OpenSSL's hooks.
std::unordered_map<void*, Alloc>* live;
int phase = -1;  // -1: not counted (client side, set-up)
// 0 SSL_new, 1 handshake until the first message, 2 app data, then one per handshake message:
// what the server allocated from that message on (until the next one) and still holds.
std::vector<std::string> phase_names = {"SSL_new", "handshake", "app data"};

const char* handshake_name(int t) {
  switch (t) {
    case 1:
      return "ClientHello";
    case 2:
      return "ServerHello";
    case 8:
      return "EncryptedExtensions";
    case 11:
      return "Certificate";
    case 12:
      return "ServerKeyExchange";
    case 13:
      return "CertificateRequest";
    case 14:
      return "ServerHelloDone";
    case 15:
      return "CertificateVerify";
    case 16:
      return "ClientKeyExchange";
    case 20:
      return "Finished";
    case 24:
      return "KeyUpdate";
    default:
      return "other";
  }
}

void on_message(int write_p, int, int content_type, const void* buf, std::size_t len, SSL*, void*) {
  if (phase < 0 || content_type != 22 || len == 0) return;
  std::string name = std::string(write_p ? "hs, sent " : "hs, received ") +
                     handshake_name(static_cast<const unsigned char*>(buf)[0]);
  auto it = std::find(phase_names.begin(), phase_names.end(), name);
  phase = static_cast<int>(it - phase_names.begin());
  if (it == phase_names.end()) phase_names.push_back(name);
}

std::size_t chunk(void* p) {
  return malloc_usable_size(p) + 8;
}
double server_cpu = 0;  // seconds in the server's handshake calls
double thread_cpu() {
  timespec t{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
  return double(t.tv_sec) + double(t.tv_nsec) * 1e-9;
}
std::size_t churn_bytes = 0, churn_allocs = 0;  // everything the server side allocated
std::map<std::pair<const char*, int>, std::size_t>* churn_sites;

void* on_malloc(std::size_t n, const char* file, int line) {
  void* p = std::malloc(n);
  if (p && phase >= 0) {
    (*live)[p] = {chunk(p), file, line, phase};
    churn_bytes += chunk(p);
    ++churn_allocs;
    (*churn_sites)[{file, line}] += chunk(p);
  }
  return p;
}
void on_free(void* p, const char*, int) {
  if (p) live->erase(p);
  std::free(p);
}
void* on_realloc(void* p, std::size_t n, const char* file, int line) {
  Alloc old{};
  bool had = false;
  if (p) {
    auto it = live->find(p);
    if (it != live->end()) {
      old = it->second;
      had = true;
      live->erase(it);
    }
  }
  void* q = std::realloc(p, n);
  if (q && (had || phase >= 0)) {
    (*live)[q] = {chunk(q), had ? old.file : file, had ? old.line : line, had ? old.phase : phase};
  }
  return q;
}

[[noreturn]] void die(const char* what) {
  std::fprintf(stderr, "%s\n", what);
  ERR_print_errors_fp(stderr);
  std::exit(1);
}

int alpn_select(SSL*, const unsigned char** out, unsigned char* outlen, const unsigned char* in,
                unsigned int inlen, void*) {
  return SSL_select_next_proto(const_cast<unsigned char**>(out), outlen,
                               reinterpret_cast<const unsigned char*>("\x02h2"), 3, in,
                               inlen) == OPENSSL_NPN_NEGOTIATED
             ? SSL_TLSEXT_ERR_OK
             : SSL_TLSEXT_ERR_ALERT_FATAL;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2)
    die("usage: tls-mem-attrib CERTDIR [K] [--tls12] [--group NAME] [--one-read] [--auto-chain] "
        "[--build-chain]");
  std::string dir = argv[1];
  int k = 200;
  bool tls12 = false, one_read = false, auto_chain = false, build_chain = false;
  const char* group = nullptr;
  for (int i = 2; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--tls12")) {
      tls12 = true;
    } else if (!std::strcmp(argv[i], "--build-chain")) {
      build_chain = true;
    } else if (!std::strcmp(argv[i], "--auto-chain")) {
      auto_chain = true;
    } else if (!std::strcmp(argv[i], "--one-read")) {
      one_read = true;
    } else if (!std::strcmp(argv[i], "--group") && i + 1 < argc) {
      group = argv[++i];
    } else {
      k = std::atoi(argv[i]);
    }
  }
  live = new std::unordered_map<void*, Alloc>();
  live->reserve(1 << 20);
  churn_sites = new std::map<std::pair<const char*, int>, std::size_t>();
  if (!CRYPTO_set_mem_functions(on_malloc, on_realloc, on_free)) die("CRYPTO_set_mem_functions");

  SSL_CTX* sctx = SSL_CTX_new(TLS_server_method());
  SSL_CTX_set_min_proto_version(sctx, TLS1_2_VERSION);
  SSL_CTX_set_cipher_list(sctx,
                          "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
                          "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
                          "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305");
  SSL_CTX_set_options(sctx, SSL_OP_NO_TICKET | SSL_OP_NO_RENEGOTIATION |
                                SSL_OP_CIPHER_SERVER_PREFERENCE | SSL_OP_NO_COMPRESSION);
  SSL_CTX_set_session_cache_mode(sctx, SSL_SESS_CACHE_OFF);
  SSL_CTX_set_num_tickets(sctx, 0);
  SSL_CTX_set_mode(sctx, SSL_MODE_RELEASE_BUFFERS | SSL_MODE_ENABLE_PARTIAL_WRITE |
                             SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
  if (SSL_CTX_use_certificate_chain_file(sctx, (dir + "/server.pem").c_str()) != 1 ||
      SSL_CTX_use_PrivateKey_file(sctx, (dir + "/server.key").c_str(), SSL_FILETYPE_PEM) != 1 ||
      SSL_CTX_load_verify_locations(sctx, (dir + "/ca.pem").c_str(), nullptr) != 1) {
    die("server certificates");
  }
  SSL_CTX_set_verify(sctx, SSL_VERIFY_PEER, nullptr);
  SSL_CTX_set_client_CA_list(sctx, SSL_load_client_CA_file((dir + "/ca.pem").c_str()));
  SSL_CTX_set_alpn_select_cb(sctx, alpn_select, nullptr);
  if (build_chain) {
    // As TlsContext::load does: the server's chain built once, without the root.
    if (SSL_CTX_build_cert_chain(
            sctx, SSL_BUILD_CHAIN_FLAG_NO_ROOT | SSL_BUILD_CHAIN_FLAG_IGNORE_ERROR) <= 0) {
      die("build chain");
    }
    SSL_CTX_set_mode(sctx, SSL_MODE_NO_AUTO_CHAIN);
  }

  struct Conn {
    SSL* s;
    SSL* c;
    SSL_CTX* cctx;
  };
  std::vector<Conn> conns;
  for (int i = 0; i < k; ++i) {
    SSL_CTX* cctx = SSL_CTX_new(TLS_client_method());
    std::string node = dir + "/node-" + std::to_string(i + 1);
    if (SSL_CTX_use_certificate_chain_file(cctx, (node + ".pem").c_str()) != 1 ||
        SSL_CTX_use_PrivateKey_file(cctx, (node + ".key").c_str(), SSL_FILETYPE_PEM) != 1 ||
        SSL_CTX_load_verify_locations(cctx, (dir + "/ca.pem").c_str(), nullptr) != 1) {
      die("client certificates");
    }
    SSL_CTX_set_verify(cctx, SSL_VERIFY_PEER, nullptr);
    SSL_CTX_set_alpn_protos(cctx, reinterpret_cast<const unsigned char*>("\x02h2"), 3);
    if (tls12) SSL_CTX_set_max_proto_version(cctx, TLS1_2_VERSION);
    // Like a SwarmKit agent (Go sends the PEM chain it was given): the leaf only. Without
    // this, OpenSSL's client builds the chain from its verify store and sends the root too.
    if (!auto_chain) SSL_CTX_set_mode(cctx, SSL_MODE_NO_AUTO_CHAIN);
    if (group && SSL_CTX_set1_groups_list(cctx, group) != 1) die("groups");
    SSL* c = SSL_new(cctx);
    SSL_set_tlsext_host_name(c, "swarm-manager");
    // A BIO pair, its two buffers allocated here (outside the counted phases).
    BIO *sbio = nullptr, *cbio = nullptr;
    if (BIO_new_bio_pair(&sbio, 0, &cbio, 0) != 1) die("BIO pair");
    char one = 0;
    BIO_write(sbio, &one, 1);
    BIO_read(cbio, &one, 1);
    BIO_write(cbio, &one, 1);
    BIO_read(sbio, &one, 1);
    SSL_set_bio(c, cbio, cbio);
    SSL_set_connect_state(c);

    phase = 0;
    SSL* s = SSL_new(sctx);
    phase = -1;
    SSL_set_bio(s, sbio, sbio);
    SSL_set_accept_state(s);
    SSL_set_msg_callback(s, on_message);
    int done = 0, server_phase = 1;
    for (int round = 0; round < 20 && done != 3; ++round) {
      if (!(done & 1) && SSL_do_handshake(c) == 1) done |= 1;
      phase = server_phase;
      double t0 = thread_cpu();
      if (!(done & 2) && SSL_do_handshake(s) == 1) done |= 2;
      server_cpu += thread_cpu() - t0;
      server_phase = phase;
      phase = -1;
    }
    if (done != 3 || SSL_get_verify_result(s) != X509_V_OK || !SSL_get0_peer_certificate(s)) {
      die("handshake");
    }
    // Application data: preface + SETTINGS from the client, SETTINGS back; then read to EAGAIN.
    char buf[256] = {};
    SSL_write(c, buf, 33);
    phase = 2;
    SSL_read(s, buf, sizeof buf);
    SSL_write(s, buf, 40);
    // An idle connection: the h2 layer stops reading when SSL_read returned less than it
    // asked for and SSL_pending() is 0, i.e. without a last SSL_read that finds nothing.
    if (!one_read) SSL_read(s, buf, sizeof buf);
    phase = -1;
    SSL_read(c, buf, sizeof buf);
    conns.push_back({s, c, cctx});
  }
  std::size_t total = 0;
  std::map<std::string, std::pair<std::size_t, std::size_t>> by_site;  // bytes, count
  std::vector<std::size_t> by_phase(phase_names.size());
  for (auto& [p, a] : *live) {
    if (a.phase < 0) continue;
    total += a.bytes;
    by_phase[a.phase] += a.bytes;
    if (a.phase > 2) by_phase[1] += a.bytes;
    std::string site = std::string(a.file ? a.file : "?") + ":" + std::to_string(a.line);
    auto& e = by_site[std::string(phase_names[a.phase]) + "  " + site];
    e.first += a.bytes;
    e.second += 1;
  }
  std::printf(
      "%s, client key share %s, %d connections: OpenSSL heap held per server connection: "
      "%zu bytes (SSL_new %zu, handshake %zu, app data %zu)\n",
      SSL_get_version(conns[0].s), group ? group : "default", k, total / k, by_phase[0] / k,
      by_phase[1] / k, by_phase[2] / k);
  std::printf(
      "server side allocated %zu bytes in %zu allocations per connection in all "
      "(handshake and data, freed or not)\n",
      churn_bytes / k, churn_allocs / k);
  {
    std::vector<std::pair<std::size_t, std::string>> top;
    for (auto& [site, bytes] : *churn_sites) {
      top.emplace_back(
          bytes, std::string(site.first ? site.first : "?") + ":" + std::to_string(site.second));
    }
    std::sort(top.rbegin(), top.rend());
    for (std::size_t i = 0; i < top.size() && i < 8; ++i) {
      std::printf("  allocated %8zu bytes per connection at %s\n", top[i].first / k,
                  top[i].second.c_str());
    }
  }
  std::printf("cipher %s\n", SSL_CIPHER_get_name(SSL_get_current_cipher(conns[0].s)));
  std::printf("held, by what the server was doing when it allocated:\n");
  for (std::size_t i = 0; i < phase_names.size(); ++i) {
    if (i != 1 || phase_names.size() <= 3) {
      std::printf("%8zu  %s\n", by_phase[i] / k, phase_names[i].c_str());
    }
  }
  std::vector<std::pair<std::string, std::pair<std::size_t, std::size_t>>> rows(by_site.begin(),
                                                                                by_site.end());
  std::sort(rows.begin(), rows.end(),
            [](auto& a, auto& b) { return a.second.first > b.second.first; });
  std::printf("%8s %6s  %s\n", "bytes", "allocs", "phase  site (per connection)");
  for (auto& [site, e] : rows) {
    if (e.first / k == 0) continue;
    std::printf("%8zu %6.1f  %s\n", e.first / k, double(e.second) / k, site.c_str());
  }
  // Cross-check: what SSL_free of the server side gives back.
  std::size_t before = 0;
  for (auto& [p, a] : *live)
    before += a.phase >= 0 ? a.bytes : 0;
  for (auto& cn : conns)
    SSL_free(cn.s);
  std::size_t after = 0;
  for (auto& [p, a] : *live)
    after += a.phase >= 0 ? a.bytes : 0;
  std::printf("server handshake CPU %.0f us per connection\n", server_cpu * 1e6 / k);
  std::printf("SSL_free of the server side returns %zu bytes per connection\n",
              (before - after) / k);
  return 0;
}
