#pragma once
// Prometheus metrics primitives: a fixed-bucket histogram and a writer for the text exposition
// format 0.0.4. Everything here lives on the io thread, so nothing is atomic: callers own their
// counters and render them into a Writer when /metrics is scraped.

#include <chrono>
#include <cstdint>
#include <initializer_list>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace dispatchd::metrics {

using Labels = std::initializer_list<std::pair<std::string_view, std::string_view>>;

// Fixed-bucket histogram, cheap observe (no allocation; binary search over the bounds).
class Histogram {
 public:
  // Default latency buckets in seconds, 50us .. 10s.
  Histogram();
  // Ascending upper bounds; +Inf is implicit. Unsorted input is sorted, duplicates, NaN and
  // +Inf are dropped, so the histogram is always well-formed.
  explicit Histogram(std::vector<double> upper_bounds);

  // A value lands in the first bucket whose upper bound is >= value (Prometheus "le"); NaN
  // lands in +Inf.
  void observe(double value) noexcept;
  void observe(std::chrono::nanoseconds d) noexcept;  // as seconds

  const std::vector<double>& bounds() const noexcept { return bounds_; }
  // Non-cumulative; i in [0, bounds().size()], the last being +Inf. Out of range reads 0.
  std::uint64_t bucket_count(std::size_t i) const noexcept {
    return i < counts_.size() ? counts_[i] : 0;
  }
  std::uint64_t count() const noexcept { return count_; }
  double sum() const noexcept { return sum_; }

 private:
  std::vector<double> bounds_;
  std::vector<std::uint64_t> counts_;  // bounds_.size() + 1
  std::uint64_t count_ = 0;
  double sum_ = 0;
};

// Prometheus text exposition format 0.0.4 writer.
class Writer {
 public:
  // Starts a metric family: "# HELP name help" and "# TYPE name type" (type: counter, gauge,
  // histogram). Call once per family, before its samples. Help text escaped (\\ and \n).
  void family(std::string_view name, std::string_view type, std::string_view help);
  // Label values escaped (\\, \", \n); integral values printed without exponent or decimals;
  // NaN, +Inf and -Inf spelled as Prometheus spells them.
  void sample(std::string_view name, Labels labels, double value);
  void sample(std::string_view name, double value) { sample(name, {}, value); }
  // A family with its one unlabelled sample.
  void scalar(std::string_view name, std::string_view type, std::string_view help, double value) {
    family(name, type, help);
    sample(name, value);
  }
  // name_bucket{...,le="..."} cumulative including +Inf, then name_sum and name_count.
  void histogram(std::string_view name, Labels labels, const Histogram& h);

  const std::string& str() const noexcept { return out_; }
  std::string take() { return std::exchange(out_, {}); }

 private:
  void labels(Labels labels, std::string_view le_name = {}, std::string_view le_value = {});
  void value(double v);

  std::string out_;
};

// Appends v as the exposition format spells it ("+Inf", "-Inf", "NaN", integers without a
// decimal point, others in shortest round-trip form).
void append_value(std::string& out, double v);

struct ProcessStats {
  std::uint64_t rss_bytes = 0;
  double cpu_seconds = 0;
  std::uint64_t open_fds = 0;
  std::uint64_t virtual_bytes = 0;
  double start_time_seconds = 0;  // since the Unix epoch
  std::uint64_t threads = 0;
  std::uint64_t max_fds = 0;  // soft RLIMIT_NOFILE
};

// Reads /proc/self/stat (+ /proc/stat's btime and the /proc/self/fd count). /proc reads do not
// block on disk. Whatever cannot be read stays zero.
ProcessStats read_process_stats();

// Writes the standard process_* families (process_cpu_seconds_total, process_open_fds,
// process_max_fds, process_virtual_memory_bytes, process_resident_memory_bytes,
// process_start_time_seconds, process_threads) from read_process_stats().
void write_process_metrics(Writer& w);

}  // namespace dispatchd::metrics
