#pragma once
// A long-running child process (the real dispatchd binary) whose stderr the test reads line by
// line while it runs. Every wait has a deadline; the destructor kills what is left.

#include <sys/types.h>

#include <chrono>
#include <condition_variable>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

namespace dispatchd::test {

class ChildProcess {
 public:
  // Starts argv[0] with argv; `env` entries ("NAME=value") replace the environment entirely
  // when given.
  explicit ChildProcess(const std::vector<std::string>& argv,
                        const std::vector<std::string>& env = {});
  ChildProcess(const ChildProcess&) = delete;
  ChildProcess& operator=(const ChildProcess&) = delete;
  ~ChildProcess();

  bool started() const noexcept { return pid_ > 0; }
  // Reads stderr until a line containing `needle` arrives; returns that line.
  std::optional<std::string> wait_for_line(const std::string& needle,
                                           std::chrono::milliseconds timeout);
  // Waits until everything read from stderr so far (from the start, whatever wait_for_line
  // consumed) contains `needle` `count` times; false at the timeout or at EOF without it.
  bool wait_for_output(const std::string& needle, std::chrono::milliseconds timeout,
                       std::size_t count = 1);
  void signal(int sig);
  // Waits for the exit (reading stderr meanwhile); the exit status, 128 + signal, or nullopt on
  // timeout.
  std::optional<int> wait(std::chrono::milliseconds timeout);
  // Everything read from stderr so far.
  std::string output() const;

 private:
  // stderr is drained by a thread of its own, so that a chatty child never blocks on a full
  // pipe while the test is busy elsewhere.
  void drain();
  pid_t pid_ = -1;
  int err_fd_ = -1;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::string err_;
  bool eof_ = false;
  std::size_t scanned_ = 0;
  std::optional<int> status_;
  std::thread reader_;
};

}  // namespace dispatchd::test
