#include "dispatchd/metrics.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <iterator>

namespace dispatchd::metrics {

// ---------------------------------------------------------------------------------------------
// Histogram

Histogram::Histogram()
    : Histogram({50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 100e-3,
                 250e-3, 500e-3, 1, 2.5, 5, 10}) {}

Histogram::Histogram(std::vector<double> upper_bounds) : bounds_(std::move(upper_bounds)) {
  std::erase_if(bounds_, [](double b) { return std::isnan(b) || b == HUGE_VAL; });
  std::sort(bounds_.begin(), bounds_.end());
  bounds_.erase(std::unique(bounds_.begin(), bounds_.end()), bounds_.end());
  counts_.assign(bounds_.size() + 1, 0);
}

void Histogram::observe(double value) noexcept {
  // lower_bound: the first bound >= value, i.e. the smallest "le" bucket holding it. NaN
  // compares false with everything, so it is sent to +Inf explicitly.
  std::size_t i =
      std::isnan(value)
          ? bounds_.size()
          : static_cast<std::size_t>(std::lower_bound(bounds_.begin(), bounds_.end(), value) -
                                     bounds_.begin());
  ++counts_[i];
  ++count_;
  sum_ += value;
}

void Histogram::observe(std::chrono::nanoseconds d) noexcept {
  observe(std::chrono::duration<double>(d).count());
}

// ---------------------------------------------------------------------------------------------
// Writer

void append_value(std::string& out, double v) {
  if (std::isnan(v)) {
    out += "NaN";
  } else if (std::isinf(v)) {
    out += v > 0 ? "+Inf" : "-Inf";
  } else if (v == 0) {
    out += '0';  // also -0
  } else if (std::trunc(v) == v && std::fabs(v) < 1e21) {
    // Counters and gauges are mostly integral; "1234" rather than "1234.0" or "1.234e+03".
    fmt::format_to(std::back_inserter(out), "{:.0f}", v);
  } else {
    fmt::format_to(std::back_inserter(out), "{}", v);  // shortest round-trip form
  }
}

void Writer::family(std::string_view name, std::string_view type, std::string_view help) {
  out_ += "# HELP ";
  out_ += name;
  out_ += ' ';
  for (char c : help) {
    if (c == '\\') {
      out_ += "\\\\";
    } else if (c == '\n') {
      out_ += "\\n";
    } else {
      out_ += c;
    }
  }
  out_ += "\n# TYPE ";
  out_ += name;
  out_ += ' ';
  out_ += type;
  out_ += '\n';
}

void Writer::labels(Labels labels, std::string_view le_name, std::string_view le_value) {
  if (labels.size() == 0 && le_name.empty()) return;
  out_ += '{';
  bool first = true;
  auto one = [&](std::string_view k, std::string_view v) {
    if (!first) out_ += ',';
    first = false;
    out_ += k;
    out_ += "=\"";
    for (char c : v) {
      switch (c) {
        case '\\':
          out_ += "\\\\";
          break;
        case '"':
          out_ += "\\\"";
          break;
        case '\n':
          out_ += "\\n";
          break;
        default:
          out_ += c;
      }
    }
    out_ += '"';
  };
  for (const auto& [k, v] : labels)
    one(k, v);
  if (!le_name.empty()) one(le_name, le_value);
  out_ += '}';
}

void Writer::value(double v) {
  out_ += ' ';
  append_value(out_, v);
  out_ += '\n';
}

void Writer::sample(std::string_view name, Labels l, double v) {
  out_ += name;
  labels(l);
  value(v);
}

void Writer::histogram(std::string_view name, Labels l, const Histogram& h) {
  std::string le;
  std::uint64_t cumulative = 0;
  const auto& bounds = h.bounds();
  for (std::size_t i = 0; i <= bounds.size(); ++i) {
    cumulative += h.bucket_count(i);
    le.clear();
    append_value(le, i < bounds.size() ? bounds[i] : HUGE_VAL);
    out_ += name;
    out_ += "_bucket";
    labels(l, "le", le);
    value(static_cast<double>(cumulative));
  }
  out_ += name;
  out_ += "_sum";
  labels(l);
  value(h.sum());
  out_ += name;
  out_ += "_count";
  labels(l);
  value(static_cast<double>(h.count()));
}

// ---------------------------------------------------------------------------------------------
// Process statistics

namespace {

// Small /proc files are generated on read; one read() of a few KiB returns all of it.
std::string read_proc_file(const char* path) {
  std::string out;
  int fd = ::open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return out;
  char buf[4096];
  for (;;) {
    ssize_t n = ::read(fd, buf, sizeof buf);
    if (n <= 0) break;
    out.append(buf, static_cast<std::size_t>(n));
    if (out.size() > (1u << 20)) break;
  }
  ::close(fd);
  return out;
}

template <class T>
bool parse_number(std::string_view s, T& out) {
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), out);
  return ec == std::errc() && p == s.data() + s.size();
}

// Seconds since the epoch at which the machine booted ("btime" in /proc/stat).
double boot_time_seconds() {
  std::string stat = read_proc_file("/proc/stat");
  std::string_view s = stat;
  auto pos = s.find("\nbtime ");
  if (pos == std::string_view::npos) return 0;
  s.remove_prefix(pos + 7);
  s = s.substr(0, s.find('\n'));
  std::uint64_t btime = 0;
  return parse_number(s, btime) ? static_cast<double>(btime) : 0;
}

std::uint64_t count_open_fds() {
  DIR* dir = ::opendir("/proc/self/fd");
  if (dir == nullptr) return 0;
  int own = ::dirfd(dir);
  std::uint64_t n = 0;
  while (dirent* e = ::readdir(dir)) {
    if (e->d_name[0] == '.') continue;
    int fd = 0;
    if (parse_number(std::string_view(e->d_name), fd) && fd == own) continue;  // ours, not theirs
    ++n;
  }
  ::closedir(dir);
  return n;
}

}  // namespace

ProcessStats read_process_stats() {
  ProcessStats st;
  std::string stat = read_proc_file("/proc/self/stat");
  // "pid (comm) state ppid ...": comm may hold spaces and parentheses, so fields are counted
  // from the last ')'. After it, field 3 (state) is the first.
  auto close = stat.rfind(')');
  if (close != std::string::npos) {
    std::string_view rest = std::string_view(stat).substr(close + 1);
    std::vector<std::string_view> fields;  // fields[0] is field 3 (state)
    for (;;) {
      auto b = rest.find_first_not_of(" \n");
      if (b == std::string_view::npos) break;
      rest.remove_prefix(b);
      auto e = std::min(rest.find_first_of(" \n"), rest.size());
      fields.push_back(rest.substr(0, e));
      rest.remove_prefix(e);
    }
    auto field = [&](std::size_t n) -> std::uint64_t {  // n: 1-based field number in proc(5)
      std::uint64_t v = 0;
      if (n >= 3 && n - 3 < fields.size()) parse_number(fields[n - 3], v);
      return v;
    };
    long ticks = ::sysconf(_SC_CLK_TCK);
    long page = ::sysconf(_SC_PAGESIZE);
    if (ticks > 0) {
      st.cpu_seconds = static_cast<double>(field(14) + field(15)) / static_cast<double>(ticks);
      double btime = boot_time_seconds();
      if (btime > 0) {
        st.start_time_seconds = btime + static_cast<double>(field(22)) / static_cast<double>(ticks);
      }
    }
    st.threads = field(20);
    st.virtual_bytes = field(23);
    if (page > 0) st.rss_bytes = field(24) * static_cast<std::uint64_t>(page);
  }
  st.open_fds = count_open_fds();
  rlimit rl{};
  if (::getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY)
    st.max_fds = rl.rlim_cur;
  return st;
}

void write_process_metrics(Writer& w) {
  auto st = read_process_stats();
  w.family("process_cpu_seconds_total", "counter",
           "Total user and system CPU time spent in seconds.");
  w.sample("process_cpu_seconds_total", st.cpu_seconds);
  w.family("process_open_fds", "gauge", "Number of open file descriptors.");
  w.sample("process_open_fds", static_cast<double>(st.open_fds));
  w.family("process_max_fds", "gauge", "Maximum number of open file descriptors.");
  w.sample("process_max_fds", static_cast<double>(st.max_fds));
  w.family("process_virtual_memory_bytes", "gauge", "Virtual memory size in bytes.");
  w.sample("process_virtual_memory_bytes", static_cast<double>(st.virtual_bytes));
  w.family("process_resident_memory_bytes", "gauge", "Resident memory size in bytes.");
  w.sample("process_resident_memory_bytes", static_cast<double>(st.rss_bytes));
  w.family("process_start_time_seconds", "gauge",
           "Start time of the process since unix epoch in seconds.");
  w.sample("process_start_time_seconds", st.start_time_seconds);
  w.family("process_threads", "gauge", "Number of OS threads in the process.");
  w.sample("process_threads", static_cast<double>(st.threads));
}

}  // namespace dispatchd::metrics
