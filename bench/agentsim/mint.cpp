#include "mint.hpp"

#include <openssl/bn.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <optional>
#include <thread>
#include <vector>

namespace agentsim {
namespace {

namespace fs = std::filesystem;

struct FileCloser {
  void operator()(FILE* f) const noexcept { std::fclose(f); }
};
using File = std::unique_ptr<FILE, FileCloser>;
struct X509Free {
  void operator()(X509* x) const noexcept { X509_free(x); }
};
struct PkeyFree {
  void operator()(EVP_PKEY* k) const noexcept { EVP_PKEY_free(k); }
};
using X509Ptr = std::unique_ptr<X509, X509Free>;
using PkeyPtr = std::unique_ptr<EVP_PKEY, PkeyFree>;

std::expected<X509Ptr, std::string> read_cert(const std::string& path) {
  File f(std::fopen(path.c_str(), "r"));
  if (!f) return std::unexpected(path + ": cannot open");
  X509Ptr x(PEM_read_X509(f.get(), nullptr, nullptr, nullptr));
  if (!x) return std::unexpected(path + ": not a PEM certificate");
  return x;
}

std::expected<PkeyPtr, std::string> read_key(const std::string& path) {
  File f(std::fopen(path.c_str(), "r"));
  if (!f) return std::unexpected(path + ": cannot open");
  PkeyPtr k(PEM_read_PrivateKey(f.get(), nullptr, nullptr, nullptr));
  if (!k) return std::unexpected(path + ": not a PEM private key");
  return k;
}

bool add_ext(X509* x, X509* ca, int nid, const std::string& value) {
  X509V3_CTX ctx;
  X509V3_set_ctx_nodb(&ctx);
  X509V3_set_ctx(&ctx, ca, x, nullptr, nullptr, 0);
  X509_EXTENSION* e = X509V3_EXT_nconf_nid(nullptr, &ctx, nid, value.c_str());
  if (e == nullptr) return false;
  bool ok = X509_add_ext(x, e, -1) == 1;
  X509_EXTENSION_free(e);
  return ok;
}

bool write_atomically(const std::string& path, const std::function<bool(FILE*)>& write) {
  std::string tmp = path + ".tmp" +
                    std::to_string(static_cast<unsigned long>(
                        std::hash<std::thread::id>{}(std::this_thread::get_id())));
  {
    File f(std::fopen(tmp.c_str(), "w"));
    if (!f || !write(f.get())) return false;
  }
  std::error_code ec;
  fs::rename(tmp, path, ec);
  return !ec;
}

// One worker certificate, as gen-certs.sh's `issue node-<i> node-<i> swarm-worker ORG ca`.
std::optional<std::string> mint_one(X509* ca, EVP_PKEY* ca_key, const std::string& org,
                                    const std::string& cn, const std::string& base) {
  PkeyPtr key(EVP_EC_gen("P-256"));
  if (!key) return "EC key generation failed";
  X509Ptr x(X509_new());
  X509_set_version(x.get(), 2);
  BIGNUM* bn = BN_new();
  BN_rand(bn, 127, BN_RAND_TOP_ANY, BN_RAND_BOTTOM_ANY);
  BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(x.get()));
  BN_free(bn);
  X509_gmtime_adj(X509_getm_notBefore(x.get()), -3600);
  X509_gmtime_adj(X509_getm_notAfter(x.get()), 825L * 86400);
  if (ASN1_TIME_compare(X509_get0_notAfter(x.get()), X509_get0_notAfter(ca)) > 0)
    X509_set1_notAfter(x.get(), X509_get0_notAfter(ca));
  X509_set_pubkey(x.get(), key.get());
  X509_NAME* name = X509_get_subject_name(x.get());
  auto entry = [&](const char* field, const std::string& v) {
    X509_NAME_add_entry_by_txt(name, field, MBSTRING_UTF8,
                               reinterpret_cast<const unsigned char*>(v.c_str()), -1, -1, 0);
  };
  entry("O", org);
  entry("OU", "swarm-worker");
  entry("CN", cn);
  X509_set_issuer_name(x.get(), X509_get_subject_name(ca));
  if (!add_ext(x.get(), ca, NID_basic_constraints, "CA:FALSE") ||
      !add_ext(x.get(), ca, NID_key_usage, "critical,digitalSignature,keyEncipherment") ||
      !add_ext(x.get(), ca, NID_ext_key_usage, "serverAuth,clientAuth") ||
      !add_ext(x.get(), ca, NID_subject_alt_name, "DNS:" + cn)) {
    return "certificate extensions failed";
  }
  if (X509_sign(x.get(), ca_key, EVP_sha256()) == 0) return "signing failed";
  if (!write_atomically(base + ".key", [&](FILE* f) {
        return PEM_write_PrivateKey(f, key.get(), nullptr, nullptr, 0, nullptr, nullptr) == 1;
      })) {
    return "cannot write " + base + ".key";
  }
  if (!write_atomically(base + ".pem", [&](FILE* f) { return PEM_write_X509(f, x.get()) == 1; })) {
    return "cannot write " + base + ".pem";
  }
  return std::nullopt;
}

}  // namespace

std::expected<std::string, std::string> default_cache_dir(const std::string& ca_cert,
                                                          const std::string& org) {
  auto ca = read_cert(ca_cert);
  if (!ca) return std::unexpected(ca.error());
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  if (X509_digest(ca->get(), EVP_sha256(), md, &len) != 1)
    return std::unexpected("cannot hash " + ca_cert);
  std::string hex;
  for (unsigned i = 0; i < 8 && i < len; ++i) {
    char b[3];
    std::snprintf(b, sizeof b, "%02x", md[i]);
    hex += b;
  }
  std::string base;
  if (const char* x = std::getenv("XDG_CACHE_HOME"); x != nullptr && *x != '\0') {
    base = x;
  } else if (const char* h = std::getenv("HOME"); h != nullptr && *h != '\0') {
    base = std::string(h) + "/.cache";
  } else {
    base = "/tmp";
  }
  return base + "/dispatchd-agentsim/" + hex + "-" + org;
}

std::expected<MintStats, std::string> ensure_certs(const std::string& ca_cert,
                                                   const std::string& ca_key,
                                                   const std::string& org, const std::string& dir,
                                                   std::size_t n, unsigned threads) {
  auto ca = read_cert(ca_cert);
  if (!ca) return std::unexpected(ca.error());
  auto key = read_key(ca_key);
  if (!key) return std::unexpected(key.error());
  if (X509_check_private_key(ca->get(), key->get()) != 1)
    return std::unexpected(ca_key + " is not the key of " + ca_cert);
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) return std::unexpected(dir + ": " + ec.message());

  std::vector<std::size_t> missing;
  for (std::size_t i = 1; i <= n; ++i) {
    std::string base = dir + "/node-" + std::to_string(i);
    if (!fs::exists(base + ".pem") || !fs::exists(base + ".key")) missing.push_back(i);
  }
  MintStats st;
  st.cached = n - missing.size();
  st.minted = missing.size();
  if (missing.empty()) return st;

  auto t0 = std::chrono::steady_clock::now();
  std::atomic<std::size_t> next{0};
  std::atomic<bool> failed{false};
  std::string first_error;
  std::atomic_flag error_taken = ATOMIC_FLAG_INIT;
  auto work = [&] {
    for (;;) {
      std::size_t k = next.fetch_add(1);
      if (k >= missing.size() || failed.load()) return;
      std::string id = "node-" + std::to_string(missing[k]);
      if (auto err = mint_one(ca->get(), key->get(), org, id, dir + "/" + id)) {
        if (!error_taken.test_and_set()) first_error = *err;
        failed = true;
        return;
      }
    }
  };
  threads = std::max(1u, threads);
  std::vector<std::thread> pool;
  for (unsigned t = 1; t < threads; ++t)
    pool.emplace_back(work);
  work();
  for (auto& t : pool)
    t.join();
  if (failed) return std::unexpected("minting certificates in " + dir + ": " + first_error);
  st.mint_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return st;
}

}  // namespace agentsim
