// What Tls13Records pays for sharing one EVP_CIPHER_CTX per suite and direction among all
// connections of the thread: sealing a record when the context already holds the record's key
// (a new nonce only) against re-keying it first (another connection's key was used last).
//
//   g++ -std=c++23 -O2 bench/tls13-rekey.cpp -lcrypto -o build/tls13-rekey && build/tls13-rekey

#include <openssl/evp.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <vector>

namespace {

double ns_per_record(const EVP_CIPHER* cipher, std::size_t len, bool rekey) {
  EVP_CIPHER_CTX* ctx = EVP_CIPHER_CTX_new();
  EVP_EncryptInit_ex2(ctx, cipher, nullptr, nullptr, nullptr);
  unsigned char keys[2][32], iv[12] = {}, hdr[5] = {23, 3, 3, 0, 0}, tag[16];
  std::memset(keys[0], 1, 32);
  std::memset(keys[1], 2, 32);
  std::vector<unsigned char> buf(len + 16);
  EVP_EncryptInit_ex2(ctx, nullptr, keys[0], iv, nullptr);
  const int n = len > 1000 ? 20000 : 400000;
  auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < n; ++i) {
    iv[11] = static_cast<unsigned char>(i);
    EVP_EncryptInit_ex2(ctx, nullptr, rekey ? keys[i & 1] : nullptr, iv, nullptr);
    int outl = 0, finl = 0;
    EVP_EncryptUpdate(ctx, nullptr, &outl, hdr, 5);
    EVP_EncryptUpdate(ctx, buf.data(), &outl, buf.data(), static_cast<int>(len));
    EVP_EncryptFinal_ex(ctx, buf.data() + outl, &finl);
    EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_GET_TAG, 16, tag);
  }
  auto t1 = std::chrono::steady_clock::now();
  EVP_CIPHER_CTX_free(ctx);
  return std::chrono::duration<double, std::nano>(t1 - t0).count() / n;
}

}  // namespace

int main() {
  for (const char* name : {"AES-128-GCM", "AES-256-GCM", "ChaCha20-Poly1305"}) {
    EVP_CIPHER* c = EVP_CIPHER_fetch(nullptr, name, nullptr);
    for (std::size_t len : {100, 16385}) {
      double same = ns_per_record(c, len, false), rekey = ns_per_record(c, len, true);
      std::printf("%-18s %6zu B record: same key %8.0f ns, re-keyed %8.0f ns (+%.0f ns)\n", name,
                  len, same, rekey, rekey - same);
    }
    EVP_CIPHER_free(c);
  }
}
