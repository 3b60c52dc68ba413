// dispatchctl's human output: tables, ages, timestamps and the list commands' rows.

#include "dispatchd/ctl/format.hpp"

#include <gtest/gtest.h>

#include <chrono>

namespace {

namespace api = docker::swarmkit::v1;
namespace cv1 = dispatchd::control::v1;
using namespace dispatchd::ctl;
using namespace std::chrono_literals;

google::protobuf::Timestamp ts(std::int64_t seconds, int nanos = 0) {
  google::protobuf::Timestamp t;
  t.set_seconds(seconds);
  t.set_nanos(nanos);
  return t;
}

const Clock::time_point kNow = Clock::time_point(std::chrono::seconds(1'700'000'000));

TEST(Table, ColumnsAreAlignedAndLinesHaveNoTrailingSpaces) {
  Table t({"ID", "NAME", "X"});
  t.add({"a", "longer-name", "1"});
  t.add({"bbbbbb", "n", ""});
  EXPECT_EQ(t.render(),
            "ID       NAME          X\n"
            "a        longer-name   1\n"
            "bbbbbb   n\n");
  EXPECT_EQ(t.rows(), 2u);
}

TEST(Table, WidthCountsCodePointsNotBytes) {
  Table t({"H", "Z"});
  t.add({"h\xc3\xa9", "1"});  // "hé": 3 bytes, 2 columns
  EXPECT_EQ(t.render(),
            "H    Z\n"
            "h\xc3\xa9   1\n");
}

TEST(Table, EmptyTableIsTheHeader) {
  Table t({"ID", "NODE"});
  EXPECT_EQ(t.render(), "ID   NODE\n");
}

TEST(Age, UnitsAndTruncation) {
  EXPECT_EQ(format_age(kNow, kNow), "0s ago");
  EXPECT_EQ(format_age(kNow, kNow - 3s), "3s ago");
  EXPECT_EQ(format_age(kNow, kNow - 3900ms), "3s ago");
  EXPECT_EQ(format_age(kNow, kNow - 59s), "59s ago");
  EXPECT_EQ(format_age(kNow, kNow - 60s), "1m ago");
  EXPECT_EQ(format_age(kNow, kNow - 3599s), "59m ago");
  EXPECT_EQ(format_age(kNow, kNow - 1h), "1h ago");
  EXPECT_EQ(format_age(kNow, kNow - 47h), "47h ago");
  EXPECT_EQ(format_age(kNow, kNow - 48h), "2d ago");
  EXPECT_EQ(format_age(kNow, kNow + 12s), "in 12s");
}

TEST(Age, FromTimestamps) {
  EXPECT_EQ(format_age(kNow, ts(0)), "-");
  EXPECT_EQ(format_age(kNow, ts(1'700'000'000 - 90)), "1m ago");
  // A heartbeat a little "after" now (server clock slightly ahead) is not in the future.
  EXPECT_EQ(format_age(kNow, ts(1'700'000'000, 400'000'000)), "0s ago");
}

TEST(Time, Rfc3339Utc) {
  EXPECT_EQ(format_time(ts(1'700'000'000, 5)), "2023-11-14T22:13:20Z");
  EXPECT_EQ(format_time(ts(0)), "-");
}

cv1::ListNodesResponse two_nodes() {
  cv1::ListNodesResponse r;
  auto* a = r.add_nodes();
  a->set_id("node-1");
  a->set_hostname("host-one");
  a->set_role(api::WORKER);
  a->set_availability(api::NodeSpec::ACTIVE);
  a->set_state(api::NodeStatus::READY);
  a->set_addr("10.0.0.1");
  a->mutable_session()->set_session_id("sess-1");
  *a->mutable_session()->mutable_last_heartbeat() = ts(1'700'000'000 - 3);
  a->set_tasks(2);
  auto* b = r.add_nodes();
  b->set_id("node-22");
  b->set_role(api::MANAGER);
  b->set_availability(api::NodeSpec::DRAIN);
  b->set_state(api::NodeStatus::DOWN);
  return r;
}

TEST(NodeTable, ColumnsStatusesAndAges) {
  EXPECT_EQ(format_node_table(two_nodes(), kNow),
            "ID        HOSTNAME   STATUS   AVAILABILITY   ROLE      ADDR       SESSION   "
            "LAST HEARTBEAT   TASKS\n"
            "node-1    host-one   Ready    Active         Worker    10.0.0.1   sess-1    "
            "3s ago           2\n"
            "node-22   -          Down     Drain          Manager   -          -         "
            "-                0\n");
}

TEST(NodeDetails, KeyValueLinesWithSession) {
  cv1::GetNodeResponse r;
  *r.mutable_summary() = two_nodes().nodes(0);
  auto* s = r.mutable_summary()->mutable_session();
  *s->mutable_registered_at() = ts(1'700'000'000 - 120);
  *s->mutable_heartbeat_deadline() = ts(1'700'000'000 + 12);
  s->set_streaming(true);
  r.mutable_node()->set_id("node-1");
  r.mutable_node()->mutable_spec()->set_desired_role(api::MANAGER);
  auto text = format_node_details(r, kNow);
  EXPECT_NE(text.find("ID:                    node-1\n"), std::string::npos) << text;
  EXPECT_NE(text.find("Hostname:              host-one\n"), std::string::npos) << text;
  EXPECT_NE(text.find("Status:                Ready\n"), std::string::npos) << text;
  EXPECT_NE(text.find("Availability:          Active\n"), std::string::npos) << text;
  EXPECT_NE(text.find("Desired role:          Manager\n"), std::string::npos) << text;
  EXPECT_NE(text.find("Session:               sess-1\n"), std::string::npos) << text;
  EXPECT_NE(text.find("  Registered:          2023-11-14T22:11:20Z (2m ago)\n"), std::string::npos)
      << text;
  EXPECT_NE(text.find("  Last heartbeat:      2023-11-14T22:13:17Z (3s ago)\n"), std::string::npos)
      << text;
  EXPECT_NE(text.find("  Heartbeat deadline:  2023-11-14T22:13:32Z (in 12s)\n"), std::string::npos)
      << text;
  EXPECT_NE(text.find("  Streaming:           yes\n"), std::string::npos) << text;
}

TEST(NodeDetails, NoSession) {
  cv1::GetNodeResponse r;
  *r.mutable_summary() = two_nodes().nodes(1);
  auto text = format_node_details(r, kNow);
  EXPECT_NE(text.find("Session:       none\n"), std::string::npos) << text;
  EXPECT_NE(text.find("Status:        Down\n"), std::string::npos) << text;
}

TEST(TaskTable, StatesAndMessages) {
  cv1::ListTasksResponse r;
  auto* t = r.add_tasks();
  t->set_id("task-1");
  t->set_node_id("node-1");
  t->set_desired_state(api::RUNNING);
  t->mutable_status()->set_state(api::ASSIGNED);
  t->mutable_status()->set_message("assigned");
  auto* u = r.add_tasks();
  u->set_id("task-2");
  u->set_node_id("node-1");
  u->set_service_id("svc");
  u->set_desired_state(api::SHUTDOWN);
  u->mutable_status()->set_state(api::FAILED);
  u->mutable_status()->set_message("exited");
  u->mutable_status()->set_err("code 1");
  EXPECT_EQ(format_task_table(r),
            "ID       NODE     SERVICE   DESIRED    STATE      MESSAGE\n"
            "task-1   node-1   -         Running    Assigned   assigned\n"
            "task-2   node-1   svc       Shutdown   Failed     exited (code 1)\n");
}

TEST(ManagerAndKeyTables, Rows) {
  cv1::GetManagersResponse m;
  auto* p = m.add_managers();
  p->mutable_peer()->set_node_id("manager-1");
  p->mutable_peer()->set_addr("10.0.0.1:4242");
  p->set_weight(10);
  EXPECT_EQ(format_manager_table(m),
            "NODE        ADDR            WEIGHT\n"
            "manager-1   10.0.0.1:4242   10\n");
  cv1::GetNetworkKeysResponse k;
  auto* key = k.add_keys();
  key->set_subsystem("networking:gossip");
  key->set_key("foobar");
  key->set_lamport_time(3);
  EXPECT_EQ(format_key_table(k),
            "SUBSYSTEM           ALGORITHM     KEY        LAMPORT\n"
            "networking:gossip   AES_128_GCM   Zm9vYmFy   3\n");
}

}  // namespace

namespace {

TEST(LogLine, NodeTaskStreamAndDataWithoutADoubledNewline) {
  api::LogMessage m;
  m.mutable_context()->set_node_id("node-1");
  m.mutable_context()->set_task_id("task-1");
  m.set_stream(api::LOG_STREAM_STDERR);
  m.set_data("failed\n");
  EXPECT_EQ(format_log_line(m), "node-1 task-1 stderr: failed\n");
  m.set_stream(api::LOG_STREAM_STDOUT);
  m.set_data("no newline");
  EXPECT_EQ(format_log_line(m), "node-1 task-1 stdout: no newline\n");
  m.set_stream(api::LOG_STREAM_UNKNOWN);
  m.set_data("two\n\n");  // only the last newline is the line's own
  EXPECT_EQ(format_log_line(m), "node-1 task-1 unknown: two\n\n");
}

}  // namespace
