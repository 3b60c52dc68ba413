// The server's view of one TLS library: build a context from files (again, to reload), and run a
// server handshake over a connected blocking socket. Each library lives in its own backend_*.cpp.
#pragma once

#include <memory>
#include <string>

namespace tlslibs {

struct Files {
  std::string cert, key, ca;
};

struct Options {
  bool tickets = false;  // TLS 1.3 stateless tickets offered (the resumption run)
  bool tuned = false;    // the library's memory-saving knobs (only OpenSSL has any here)
};

// One live connection after its handshake; closing it frees the library's per-connection state.
class Conn {
 public:
  virtual ~Conn() = default;
  virtual bool send_byte(char c) = 0;
};

struct Accepted {
  std::unique_ptr<Conn> conn;  // null when the handshake failed (error says why)
  std::string error;
  std::string version;  // "TLSv1.3" / "TLSv1.2"
  std::string alpn;
  std::string cn, ou, o;  // the client certificate's subject, empty when not available
  bool resumed = false;
};

class Backend {
 public:
  virtual ~Backend() = default;
  // Builds a fresh context from the files and swaps it in for the next handshakes; connections
  // already open keep the context they were made with.
  virtual bool load(const Files& files, std::string& error) = 0;
  virtual Accepted accept(int fd) = 0;
  virtual std::string library_version() const = 0;
  virtual std::string reload_method() const = 0;
};

std::unique_ptr<Backend> make_openssl(const Options& options);
#ifdef TLSLIBS_GNUTLS
std::unique_ptr<Backend> make_gnutls(const Options& options);
#endif
#ifdef TLSLIBS_WOLFSSL
std::unique_ptr<Backend> make_wolfssl(const Options& options);
#endif

}  // namespace tlslibs
