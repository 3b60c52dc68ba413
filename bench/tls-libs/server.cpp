// tls-libs server: N mutual-TLS handshakes on loopback with one TLS library, every connection
// kept open, then the server's CPU per handshake and the memory it keeps per connection.
//
//   server --lib openssl|openssl-tuned|gnutls|wolfssl --mode full|resume --n 1000
//          --certs DIR --org ORG
//
// Prints "port P" once listening, and one "result ..." line after the client's N connections.
// Connection 0 is made with DIR/server.pem; the context is then reloaded from DIR/manager1.pem
// (another CN) before connection 1, so the client sees whether the reload took. Connections 0
// and 1 are warm-up and are not measured. With --mode resume, N full handshakes hand out the
// tickets first (not measured either); the N measured handshakes then resume with them.
#include <malloc.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <map>
#include <vector>

#include "backend.hpp"
#include "common.hpp"
#include "heap_count.hpp"

namespace tlslibs {
namespace {

std::unique_ptr<Backend> make_backend(const std::string& lib, Options options) {
  if (lib == "openssl") return make_openssl(options);
  if (lib == "openssl-tuned") {
    options.tuned = true;
    return make_openssl(options);
  }
#ifdef TLSLIBS_GNUTLS
  if (lib == "gnutls") return make_gnutls(options);
#endif
#ifdef TLSLIBS_WOLFSSL
  if (lib == "wolfssl") return make_wolfssl(options);
#endif
  die("library not built in: " + lib);
}

long rss_bytes() {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("VmRSS:", 0) == 0) return std::strtol(line.c_str() + 6, nullptr, 10) * 1024;
  }
  return 0;
}

double cpu_seconds() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  auto seconds = [](const timeval& t) { return static_cast<double>(t.tv_sec) + t.tv_usec / 1e6; };
  return seconds(usage.ru_utime) + seconds(usage.ru_stime);
}

int listen_loopback() {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  int on = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof on);
  sockaddr_in addr = loopback(0);
  if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 || listen(fd, 4096) != 0) {
    die(std::string("listen: ") + std::strerror(errno));
  }
  socklen_t len = sizeof addr;
  getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  std::printf("port %d\n", ntohs(addr.sin_port));
  std::fflush(stdout);
  return fd;
}

Accepted handshake(Backend& backend, int listener) {
  int fd = accept(listener, nullptr, nullptr);
  if (fd < 0) die(std::string("accept: ") + std::strerror(errno));
  no_delay(fd);
  Accepted a = backend.accept(fd);
  if (!a.conn) die("handshake failed: " + a.error);
  if (!a.conn->send_byte('k')) die("write after handshake failed");
  return a;
}

Files files_for(const std::string& dir, const std::string& leaf) {
  return {dir + "/" + leaf + ".pem", dir + "/" + leaf + ".key", dir + "/ca.pem"};
}

}  // namespace
}  // namespace tlslibs

int main(int argc, char** argv) {
  using namespace tlslibs;
  Args args(argc, argv);
  const std::string lib = args.get("--lib", "openssl");
  const std::string mode = args.get("--mode", "full");
  const std::string dir = args.get("--certs", "certs");
  const std::string org = args.get("--org", "tlslibs-org");
  const long n = args.number("--n", 1000);
  raise_fd_limit();

  Options options;
  options.tickets = mode == "resume";
  auto backend = make_backend(lib, options);
  std::string error;
  if (!backend->load(files_for(dir, "server"), error)) die(error);
  int listener = listen_loopback();

  std::vector<Accepted> conns;
  conns.reserve(static_cast<size_t>(n) + 2);
  conns.push_back(handshake(*backend, listener));
  if (!backend->load(files_for(dir, "manager1"), error)) die("reload: " + error);
  conns.push_back(handshake(*backend, listener));
  // Resumption: each agent's first, full handshake (for its ticket), not measured; the client
  // closes these and comes back with the tickets.
  std::vector<std::string> issued;
  if (options.tickets) {
    std::vector<Accepted> first;
    for (long i = 0; i < n; ++i)
      first.push_back(handshake(*backend, listener));
    for (const Accepted& a : first)
      issued.push_back(a.cn);
  }

  // Only what the libraries keep and the connections themselves remain in the deltas below.
  const size_t heap0 = heap_live();
  const size_t arena0 = mallinfo2().uordblks;
  const long rss0 = rss_bytes();
  const double cpu0 = cpu_seconds();
  std::vector<size_t> peaks;
  peaks.reserve(static_cast<size_t>(n));
  for (long i = 0; i < n; ++i) {
    size_t before = heap_live();
    heap_reset_peak();
    conns.push_back(handshake(*backend, listener));
    // The connection's own Accepted strings are a few dozen bytes: small against the library's.
    peaks.push_back(heap_peak() - before);
  }
  const double cpu1 = cpu_seconds();
  const long rss1 = rss_bytes();
  const size_t arena1 = mallinfo2().uordblks;
  const size_t heap1 = heap_live();

  long identity_ok = 0, alpn_ok = 0, resumed = 0;
  std::map<std::string, long> versions;
  for (size_t i = 2; i < conns.size(); ++i) {
    const Accepted& a = conns[i];
    // A resumed agent must still be the one its ticket was issued to.
    const bool cn_ok = issued.empty() ? a.cn.rfind("node-", 0) == 0 : a.cn == issued[i - 2];
    identity_ok += cn_ok && a.ou == "swarm-worker" && a.o == org;
    alpn_ok += a.alpn == "h2";
    resumed += a.resumed;
    ++versions[a.version];
  }
  std::string version_list;
  for (const auto& [name, count] : versions) {
    version_list += (version_list.empty() ? "" : ",") + name + "x" + std::to_string(count);
  }
  std::sort(peaks.begin(), peaks.end());
  const double dn = static_cast<double>(n);
  // Tell the client on connection 0 (made before the reload) that it may go: it still works.
  if (!conns.front().conn->send_byte('r')) die("connection 0 broken after the reload");
  std::printf(
      "result lib=%s mode=%s n=%ld versions=%s identity_ok=%ld alpn_ok=%ld resumed=%ld "
      "cpu_us=%.1f heap_B=%.0f arena_B=%.0f rss_B=%.0f peak_B=%zu first_cn=%s\n",
      lib.c_str(), mode.c_str(), n, version_list.c_str(), identity_ok, alpn_ok, resumed,
      (cpu1 - cpu0) / dn * 1e6, static_cast<double>(heap1 - heap0) / dn,
      (static_cast<double>(arena1) - static_cast<double>(arena0)) / dn,
      static_cast<double>(rss1 - rss0) / dn, peaks[peaks.size() / 2], conns[2].cn.c_str());
  std::printf("library %s\nreload %s\n", backend->library_version().c_str(),
              backend->reload_method().c_str());
  std::fflush(stdout);
  conns.clear();
  close(listener);
  return 0;
}
