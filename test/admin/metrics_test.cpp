#include "dispatchd/metrics.hpp"

#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <ctime>
#include <limits>
#include <string>
#include <thread>

namespace dispatchd::metrics {
namespace {

TEST(WriterTest, CounterAndGaugeFamilies) {
  Writer w;
  w.family("dispatchd_sessions_total", "counter", "Sessions opened.");
  w.sample("dispatchd_sessions_total", 42);
  w.family("dispatchd_open_sessions", "gauge", "Sessions open now.");
  w.sample("dispatchd_open_sessions", 7);
  EXPECT_EQ(w.str(),
            "# HELP dispatchd_sessions_total Sessions opened.\n"
            "# TYPE dispatchd_sessions_total counter\n"
            "dispatchd_sessions_total 42\n"
            "# HELP dispatchd_open_sessions Sessions open now.\n"
            "# TYPE dispatchd_open_sessions gauge\n"
            "dispatchd_open_sessions 7\n");
}

TEST(WriterTest, LabelsInGivenOrder) {
  Writer w;
  w.sample("rpc_total", {{"method", "Heartbeat"}, {"code", "OK"}}, 3);
  w.sample("rpc_total", {{"method", "Session"}, {"code", "UNAVAILABLE"}}, 0);
  EXPECT_EQ(w.str(),
            "rpc_total{method=\"Heartbeat\",code=\"OK\"} 3\n"
            "rpc_total{method=\"Session\",code=\"UNAVAILABLE\"} 0\n");
}

TEST(WriterTest, EscapesLabelValues) {
  Writer w;
  w.sample("m", {{"path", "C:\\dir\n\"quoted\""}}, 1);
  EXPECT_EQ(w.str(), "m{path=\"C:\\\\dir\\n\\\"quoted\\\"\"} 1\n");
}

TEST(WriterTest, EscapesHelpBackslashAndNewlineButNotQuotes) {
  Writer w;
  w.family("m", "gauge", "a \\ b\nc \"d\"");
  EXPECT_EQ(w.str(), "# HELP m a \\\\ b\\nc \"d\"\n# TYPE m gauge\n");
}

TEST(WriterTest, NumberSpelling) {
  auto spell = [](double v) {
    std::string s;
    append_value(s, v);
    return s;
  };
  EXPECT_EQ(spell(0), "0");
  EXPECT_EQ(spell(-0.0), "0");
  EXPECT_EQ(spell(1), "1");
  EXPECT_EQ(spell(-17), "-17");
  EXPECT_EQ(spell(1e6), "1000000");
  EXPECT_EQ(spell(18446744073709551615.0), "18446744073709551616");
  EXPECT_EQ(spell(0.25), "0.25");
  EXPECT_EQ(spell(1.5), "1.5");
  EXPECT_EQ(spell(0.1), "0.1");
  EXPECT_EQ(std::stod(spell(5e-05)), 5e-05);
  EXPECT_EQ(spell(std::numeric_limits<double>::infinity()), "+Inf");
  EXPECT_EQ(spell(-std::numeric_limits<double>::infinity()), "-Inf");
  EXPECT_EQ(spell(std::numeric_limits<double>::quiet_NaN()), "NaN");
}

TEST(WriterTest, SampleValuesUseTheSameSpelling) {
  Writer w;
  w.sample("a", 2.5);
  w.sample("b", std::numeric_limits<double>::quiet_NaN());
  w.sample("c", std::numeric_limits<double>::infinity());
  EXPECT_EQ(w.str(), "a 2.5\nb NaN\nc +Inf\n");
}

TEST(WriterTest, TakeEmptiesTheWriter) {
  Writer w;
  w.sample("a", 1);
  EXPECT_EQ(w.take(), "a 1\n");
  EXPECT_EQ(w.str(), "");
  w.sample("b", 2);
  EXPECT_EQ(w.str(), "b 2\n");
}

TEST(HistogramTest, DefaultBucketsAreLatencySeconds) {
  Histogram h;
  std::vector<double> want = {50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3,
                              50e-3, 100e-3, 250e-3, 500e-3, 1,    2.5,    5,    10};
  EXPECT_EQ(h.bounds(), want);
  EXPECT_EQ(h.count(), 0u);
  EXPECT_EQ(h.sum(), 0);
}

TEST(HistogramTest, ValueOnABoundGoesToThatBucket) {
  Histogram h({1, 2, 4});
  h.observe(0.5);   // le 1
  h.observe(1.0);   // le 1 (bounds are inclusive)
  h.observe(1.01);  // le 2
  h.observe(4.0);   // le 4
  h.observe(100);   // +Inf
  EXPECT_EQ(h.bucket_count(0), 2u);
  EXPECT_EQ(h.bucket_count(1), 1u);
  EXPECT_EQ(h.bucket_count(2), 1u);
  EXPECT_EQ(h.bucket_count(3), 1u);
  EXPECT_EQ(h.bucket_count(4), 0u);  // out of range reads 0
  EXPECT_EQ(h.count(), 5u);
  EXPECT_DOUBLE_EQ(h.sum(), 0.5 + 1 + 1.01 + 4 + 100);
}

TEST(HistogramTest, NanGoesToInfAndBoundsAreNormalised) {
  Histogram h({4, 1, 2, 2, std::numeric_limits<double>::infinity()});
  EXPECT_EQ(h.bounds(), (std::vector<double>{1, 2, 4}));
  h.observe(std::numeric_limits<double>::quiet_NaN());
  EXPECT_EQ(h.bucket_count(3), 1u);
}

TEST(HistogramTest, ObservesDurationsAsSeconds) {
  Histogram h;
  h.observe(std::chrono::microseconds(75));  // le 100us
  h.observe(std::chrono::milliseconds(3));   // le 5ms
  h.observe(std::chrono::seconds(30));       // +Inf
  EXPECT_EQ(h.bucket_count(1), 1u);
  EXPECT_EQ(h.bucket_count(6), 1u);
  EXPECT_EQ(h.bucket_count(17), 1u);
  EXPECT_DOUBLE_EQ(h.sum(), 75e-6 + 3e-3 + 30);
}

TEST(WriterTest, HistogramBucketsAreCumulativeWithInf) {
  Histogram h({0.005, 0.5, 1});
  h.observe(0.00390625);  // binary-exact values keep the sum exact
  h.observe(0.25);
  h.observe(0.75);
  h.observe(0.75);
  h.observe(3);
  Writer w;
  w.family("rpc_seconds", "histogram", "RPC latency.");
  w.histogram("rpc_seconds", {{"method", "Heartbeat"}}, h);
  EXPECT_EQ(w.str(),
            "# HELP rpc_seconds RPC latency.\n"
            "# TYPE rpc_seconds histogram\n"
            "rpc_seconds_bucket{method=\"Heartbeat\",le=\"0.005\"} 1\n"
            "rpc_seconds_bucket{method=\"Heartbeat\",le=\"0.5\"} 2\n"
            "rpc_seconds_bucket{method=\"Heartbeat\",le=\"1\"} 4\n"
            "rpc_seconds_bucket{method=\"Heartbeat\",le=\"+Inf\"} 5\n"
            "rpc_seconds_sum{method=\"Heartbeat\"} 4.75390625\n"
            "rpc_seconds_count{method=\"Heartbeat\"} 5\n");
}

TEST(WriterTest, HistogramWithoutLabels) {
  Histogram h({2});
  h.observe(1);
  Writer w;
  w.histogram("x", {}, h);
  EXPECT_EQ(w.str(),
            "x_bucket{le=\"2\"} 1\n"
            "x_bucket{le=\"+Inf\"} 1\n"
            "x_sum 1\n"
            "x_count 1\n");
}

TEST(ProcessStatsTest, DescribesThisProcess) {
  // A second thread makes the thread count checkable; burn a little CPU so it is not zero.
  std::thread t([] {});
  volatile double x = 0;
  for (int i = 0; i < 2000000; ++i)
    x = x + std::sqrt(static_cast<double>(i));
  auto st = read_process_stats();
  t.join();
  EXPECT_GT(st.rss_bytes, 1024u * 1024u);
  EXPECT_GE(st.virtual_bytes, st.rss_bytes);
  EXPECT_GE(st.cpu_seconds, 0);
  EXPECT_GE(st.threads, 1u);
  // stdin, stdout and stderr at least; the fd used to list /proc/self/fd is not counted.
  EXPECT_GE(st.open_fds, 3u);
  EXPECT_GT(st.max_fds, 0u);
  double now = static_cast<double>(std::time(nullptr));
  EXPECT_GT(st.start_time_seconds, now - 3600);
  EXPECT_LE(st.start_time_seconds, now + 1);
}

TEST(ProcessStatsTest, OpenFdsFollowsDescriptors) {
  auto before = read_process_stats().open_fds;
  int fds[2];
  ASSERT_EQ(::pipe(fds), 0);
  auto during = read_process_stats().open_fds;
  ::close(fds[0]);
  ::close(fds[1]);
  EXPECT_EQ(during, before + 2);
}

TEST(ProcessStatsTest, WritesStandardFamilies) {
  Writer w;
  write_process_metrics(w);
  const std::string& s = w.str();
  for (const char* family :
       {"process_cpu_seconds_total counter", "process_open_fds gauge", "process_max_fds gauge",
        "process_virtual_memory_bytes gauge", "process_resident_memory_bytes gauge",
        "process_start_time_seconds gauge", "process_threads gauge"}) {
    EXPECT_NE(s.find(std::string("# TYPE ") + family + "\n"), std::string::npos) << family;
  }
  auto pos = s.find("\nprocess_resident_memory_bytes ");
  ASSERT_NE(pos, std::string::npos);
  EXPECT_GT(std::stod(s.substr(pos + 31)), 0);
}

}  // namespace
}  // namespace dispatchd::metrics
