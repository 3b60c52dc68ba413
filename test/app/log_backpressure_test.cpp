// A stderr nobody reads must not stop the server: the real binary with its stderr on a pipe the
// test leaves unread, made to log far more than the pipe and --log-buffer hold.

#include <arpa/inet.h>
#include <fcntl.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <optional>
#include <string>
#include <vector>

#include "grpc/health/v1/health.grpc.pb.h"
#include "support/http_get.hpp"

namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

class Child {
 public:
  explicit Child(std::vector<std::string> args) {
    int fds[2];
    if (::pipe2(fds, O_CLOEXEC) != 0) return;
    ::fcntl(fds[0], F_SETPIPE_SZ, 4096);  // the smallest pipe: it fills after a few lines
    pid_ = ::fork();
    if (pid_ == 0) {
      ::dup2(fds[1], STDERR_FILENO);
      std::vector<char*> argv;
      for (auto& a : args)
        argv.push_back(a.data());
      argv.push_back(nullptr);
      ::execv(argv[0], argv.data());
      ::_exit(127);
    }
    ::close(fds[1]);
    err_ = fds[0];
  }
  ~Child() {
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
    }
    if (err_ >= 0) ::close(err_);
  }
  // Reads stderr until `needle` has been seen (from where the last search ended) or the
  // deadline passes.
  std::optional<std::string> read_until(const std::string& needle, std::chrono::seconds timeout) {
    auto deadline = Clock::now() + timeout;
    for (;;) {
      auto at = out_.find(needle, scanned_);
      if (at != std::string::npos) {
        auto end = out_.find('\n', at);
        if (end != std::string::npos) {
          scanned_ = end + 1;
          auto start = out_.rfind('\n', at);
          start = start == std::string::npos ? 0 : start + 1;
          return out_.substr(start, end - start);
        }
      }
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
      if (left.count() <= 0) return std::nullopt;
      pollfd p{err_, POLLIN, 0};
      if (::poll(&p, 1, static_cast<int>(left.count())) <= 0) continue;
      char buf[65536];
      ssize_t n = ::read(err_, buf, sizeof buf);
      if (n <= 0) return std::nullopt;
      out_.append(buf, static_cast<std::size_t>(n));
    }
  }
  // SIGTERM, then wait for the exit; with `read_meanwhile` false stderr stays unread.
  std::optional<int> stop(std::chrono::seconds timeout, bool read_meanwhile = true) {
    ::kill(pid_, SIGTERM);
    auto deadline = Clock::now() + timeout;
    while (Clock::now() < deadline) {
      int status = 0;
      pid_t r = ::waitpid(pid_, &status, WNOHANG);
      if (r == pid_) {
        pid_ = -1;
        while (read_available(1000)) {
        }
        return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
      }
      // Keep reading stderr meanwhile, so the exit is never blocked by the test itself.
      if (read_meanwhile) {
        read_available(10);
      } else {
        ::usleep(10000);  // polling the exit status, not synchronising with the child
      }
    }
    return std::nullopt;
  }
  // Reads what arrives within `ms`; false at EOF or when nothing came.
  bool read_available(int ms) {
    pollfd p{err_, POLLIN, 0};
    if (::poll(&p, 1, ms) <= 0) return false;
    char buf[65536];
    ssize_t n = ::read(err_, buf, sizeof buf);
    if (n <= 0) return false;
    out_.append(buf, static_cast<std::size_t>(n));
    return true;
  }
  bool started() const { return pid_ > 0 && err_ >= 0; }
  const std::string& output() const { return out_; }

 private:
  pid_t pid_ = -1;
  int err_ = -1;
  std::string out_;
  std::size_t scanned_ = 0;
};

// "… on 127.0.0.1:PORT …" → "127.0.0.1:PORT"
std::string address_in(const std::string& line, const std::string& after) {
  auto at = line.find(after);
  if (at == std::string::npos) return "";
  at += after.size();
  return line.substr(at, line.find_first_of(" (/", at) - at);
}

int connect_to(const std::string& address) {
  auto colon = address.rfind(':');
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<std::uint16_t>(std::stoi(address.substr(colon + 1))));
  ::inet_pton(AF_INET, address.substr(0, colon).c_str(), &a.sin_addr);
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
    ::close(fd);
    return -1;
  }
  return fd;
}

double metric(const std::string& page, const std::string& name) {
  auto at = page.find("\n" + name + " ");
  if (at == std::string::npos) return -1;
  return std::stod(page.substr(at + name.size() + 2));
}

bool health_served(const std::string& address) {
  auto stub = grpc::health::v1::Health::NewStub(
      grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + 10s);
  grpc::health::v1::HealthCheckResponse resp;
  return stub->Check(&ctx, {}, &resp).ok() &&
         resp.status() == grpc::health::v1::HealthCheckResponse::SERVING;
}

TEST(LogBackpressure, AStderrNobodyReadsDoesNotStopTheServer) {
  Child server({DISPATCHD_BIN, "--insecure", "--in-memory", "--listen", "127.0.0.1:0",
                "--admin-listen", "127.0.0.2:0", "--log-level", "debug", "--log-buffer", "64KiB"});
  ASSERT_TRUE(server.started());
  auto listening = server.read_until("dispatchd listening on ", 30s);
  ASSERT_TRUE(listening);
  auto admin = server.read_until("admin endpoint on http://", 5s);
  ASSERT_TRUE(admin);
  const std::string address = address_in(*listening, "listening on ");
  const std::string admin_address = address_in(*admin, "http://");

  // From here on nobody reads the server's stderr. 3,000 connections log two debug lines each
  // (~500 KB), far beyond the 4 KiB pipe and the 64 KiB buffer.
  for (int i = 0; i < 3000; ++i) {
    int fd = connect_to(address);
    ASSERT_GE(fd, 0) << "connection " << i << " refused";
    ::close(fd);
  }
  // Synchronous logging would have the io thread blocked in write(2) by now.
  EXPECT_TRUE(health_served(address));
  auto colon = admin_address.rfind(':');
  auto page =
      dispatchd::test::http_get(
          admin_address.substr(0, colon),
          static_cast<unsigned short>(std::stoi(admin_address.substr(colon + 1))), "/metrics")
          .body;
  EXPECT_GT(metric(page, "dispatchd_log_lines_dropped_total"), 0) << page.substr(0, 300);

  // Once stderr is read again, the next lines say how many were lost.
  std::optional<std::string> report;
  auto deadline = Clock::now() + 20s;
  while (!report && Clock::now() < deadline) {
    int fd = connect_to(address);  // one more line to carry the report
    if (fd >= 0) ::close(fd);
    report = server.read_until("lines dropped: stderr is not keeping up", 1s);
  }
  ASSERT_TRUE(report) << server.output().substr(0, 500);
  EXPECT_NE(report->find("warn"), std::string::npos) << *report;

  // A graceful stop still writes its last lines.
  EXPECT_EQ(server.stop(30s), 0);
  EXPECT_NE(server.output().find("dispatchd stopped"), std::string::npos);
}

TEST(LogBackpressure, SigtermExitsEvenWhenStderrIsStuck) {
  Child server({DISPATCHD_BIN, "--insecure", "--in-memory", "--listen", "127.0.0.1:0",
                "--admin-listen=", "--log-level", "debug", "--log-buffer", "64KiB"});
  ASSERT_TRUE(server.started());
  auto listening = server.read_until("dispatchd listening on ", 30s);
  ASSERT_TRUE(listening);
  const std::string address = address_in(*listening, "listening on ");
  for (int i = 0; i < 3000; ++i) {
    int fd = connect_to(address);
    ASSERT_GE(fd, 0);
    ::close(fd);
  }
  ASSERT_TRUE(health_served(address));
  // Nobody ever reads stderr again: the log thread is stuck in write(2), the stop must not be.
  EXPECT_EQ(server.stop(20s, /*read_meanwhile=*/false), 0);
}

}  // namespace
