#pragma once
// dispatchctl's human output: aligned tables, ages ("3s ago"), timestamps, and the node and
// task rows the list commands print.

#include <google/protobuf/timestamp.pb.h>

#include <algorithm>
#include <chrono>
#include <string>
#include <string_view>
#include <vector>

#include "control.pb.h"
#include "logbroker.pb.h"

namespace dispatchd::ctl {

// Columns separated by three spaces, each as wide as its widest cell (counted in UTF-8 code
// points); the last column is not padded, so no line ends in spaces.
class Table {
 public:
  explicit Table(std::vector<std::string> header);
  void add(std::vector<std::string> row);
  std::size_t rows() const { return rows_.size() - 1; }
  // Appends the table (header first) to `out`.
  void render(std::string& out) const;
  std::string render() const;

 private:
  std::vector<std::vector<std::string>> rows_;
};

using Clock = std::chrono::system_clock;

// How long ago `then` was: "0s ago", "59s ago", "4m ago", "3h ago", "5d ago" (whole units,
// truncated; hours up to 48h). A time after `now` is "in 5s" (a heartbeat deadline).
std::string format_age(Clock::time_point now, Clock::time_point then);
// "-" for an unset timestamp.
std::string format_age(Clock::time_point now, const google::protobuf::Timestamp& t);
// One log message as `dispatchctl logs` prints it: "NODE TASK STREAM: DATA\n" (STREAM stdout,
// stderr or unknown; one trailing newline of DATA is not doubled).
std::string format_log_line(const docker::swarmkit::v1::LogMessage& m);
// RFC 3339 in UTC to the second, "2024-05-01T12:00:00Z"; "-" when unset.
std::string format_time(const google::protobuf::Timestamp& t);
Clock::time_point to_time_point(const google::protobuf::Timestamp& t);

// `node ls`: ID HOSTNAME STATUS AVAILABILITY ROLE ADDR SESSION LAST HEARTBEAT TASKS.
std::string format_node_table(const dispatchd::control::v1::ListNodesResponse& r,
                              Clock::time_point now);
// `node inspect`: "Key:  value" lines, session included.
std::string format_node_details(const dispatchd::control::v1::GetNodeResponse& r,
                                Clock::time_point now);
// `task ls`: ID NODE SERVICE DESIRED STATE MESSAGE.
std::string format_task_table(const dispatchd::control::v1::ListTasksResponse& r);
// `managers ls`: NODE ADDR WEIGHT.
std::string format_manager_table(const dispatchd::control::v1::GetManagersResponse& r);
// `keys ls`: SUBSYSTEM ALGORITHM KEY LAMPORT (the key in base64, as `keys set` takes it).
std::string format_key_table(const dispatchd::control::v1::GetNetworkKeysResponse& r);

// ID NAME CREATED UPDATED LABELS, for secrets and configs alike.
template <class Object>
std::string format_object_table(const google::protobuf::RepeatedPtrField<Object>& objects,
                                Clock::time_point now) {
  Table t({"ID", "NAME", "CREATED", "UPDATED", "LABELS"});
  for (const auto& o : objects) {
    std::string labels;
    std::vector<std::pair<std::string, std::string>> sorted(o.spec().annotations().labels().begin(),
                                                            o.spec().annotations().labels().end());
    std::sort(sorted.begin(), sorted.end());
    for (const auto& [k, v] : sorted)
      labels += (labels.empty() ? "" : ",") + k + "=" + v;
    t.add({o.id(), o.spec().annotations().name(), format_age(now, o.meta().created_at()),
           format_age(now, o.meta().updated_at()), labels.empty() ? "-" : labels});
  }
  return t.render();
}

}  // namespace dispatchd::ctl
