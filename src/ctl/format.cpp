#include "dispatchd/ctl/format.hpp"

#include <google/protobuf/util/time_util.h>

#include <algorithm>
#include <ctime>

#include "dispatchd/ctl/parse.hpp"

namespace dispatchd::ctl {

namespace api = docker::swarmkit::v1;
namespace cv1 = dispatchd::control::v1;

namespace {

std::size_t display_width(std::string_view s) {
  // Code points: every byte that is not a UTF-8 continuation byte starts one.
  return static_cast<std::size_t>(
      std::count_if(s.begin(), s.end(), [](char c) { return (c & 0xC0) != 0x80; }));
}

std::string or_dash(const std::string& s) {
  return s.empty() ? "-" : s;
}

}  // namespace

Table::Table(std::vector<std::string> header) {
  rows_.push_back(std::move(header));
}

void Table::add(std::vector<std::string> row) {
  row.resize(rows_.front().size());
  rows_.push_back(std::move(row));
}

void Table::render(std::string& out) const {
  const std::size_t cols = rows_.front().size();
  std::vector<std::size_t> width(cols, 0);
  std::size_t total = 0;
  for (const auto& row : rows_) {
    for (std::size_t c = 0; c < cols; ++c) {
      width[c] = std::max(width[c], display_width(row[c]));
      total += row[c].size();
    }
  }
  out.reserve(out.size() + total + rows_.size() * (cols * 3 + 1));
  for (const auto& row : rows_) {
    std::size_t line_start = out.size();
    for (std::size_t c = 0; c < cols; ++c) {
      out += row[c];
      if (c + 1 < cols) out.append(width[c] - display_width(row[c]) + 3, ' ');
    }
    // Trailing empty cells would leave spaces at the end of the line.
    while (out.size() > line_start && out.back() == ' ')
      out.pop_back();
    out += '\n';
  }
}

std::string Table::render() const {
  std::string out;
  render(out);
  return out;
}

std::string format_age(Clock::time_point now, Clock::time_point then) {
  using namespace std::chrono;
  auto d = duration_cast<seconds>(now > then ? now - then : then - now).count();
  std::string n;
  if (d < 60) {
    n = std::to_string(d) + "s";
  } else if (d < 3600) {
    n = std::to_string(d / 60) + "m";
  } else if (d < 48 * 3600) {
    n = std::to_string(d / 3600) + "h";
  } else {
    n = std::to_string(d / 86400) + "d";
  }
  return then > now ? "in " + n : n + " ago";
}

Clock::time_point to_time_point(const google::protobuf::Timestamp& t) {
  return Clock::time_point(std::chrono::duration_cast<Clock::duration>(
      std::chrono::nanoseconds(google::protobuf::util::TimeUtil::TimestampToNanoseconds(t))));
}

std::string format_age(Clock::time_point now, const google::protobuf::Timestamp& t) {
  if (t.seconds() == 0 && t.nanos() == 0) return "-";
  // Sub-second skew between client and server reads "0s ago", not "in 0s".
  auto then = to_time_point(t);
  if (then > now && then - now < std::chrono::seconds(1)) then = now;
  return format_age(now, then);
}

std::string format_log_line(const docker::swarmkit::v1::LogMessage& m) {
  namespace api = docker::swarmkit::v1;
  const char* stream = m.stream() == api::LOG_STREAM_STDOUT   ? "stdout"
                       : m.stream() == api::LOG_STREAM_STDERR ? "stderr"
                                                              : "unknown";
  std::string line = m.context().node_id() + " " + m.context().task_id() + " " + stream + ": ";
  std::string_view data = m.data();
  if (data.ends_with('\n')) data.remove_suffix(1);
  line += data;
  line += '\n';
  return line;
}

std::string format_time(const google::protobuf::Timestamp& t) {
  if (t.seconds() == 0 && t.nanos() == 0) return "-";
  std::time_t secs = static_cast<std::time_t>(t.seconds());
  std::tm tm{};
  if (!gmtime_r(&secs, &tm)) return std::to_string(t.seconds());
  char buf[32];
  std::size_t n = std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return std::string(buf, n);
}

std::string format_node_table(const cv1::ListNodesResponse& r, Clock::time_point now) {
  Table t({"ID", "HOSTNAME", "STATUS", "AVAILABILITY", "ROLE", "ADDR", "SESSION", "LAST HEARTBEAT",
           "TASKS"});
  const auto* state = api::NodeStatus::State_descriptor();
  const auto* avail = api::NodeSpec::Availability_descriptor();
  const auto* role = api::NodeRole_descriptor();
  for (const auto& n : r.nodes()) {
    t.add({n.id(), or_dash(n.hostname()), display_enum(state, n.state()),
           display_enum(avail, n.availability()), display_enum(role, n.role()), or_dash(n.addr()),
           n.has_session() ? or_dash(n.session().session_id()) : "-",
           n.has_session() ? format_age(now, n.session().last_heartbeat()) : "-",
           std::to_string(n.tasks())});
  }
  return t.render();
}

std::string format_node_details(const cv1::GetNodeResponse& r, Clock::time_point now) {
  const auto& s = r.summary();
  const auto& node = r.node();
  std::vector<std::pair<std::string, std::string>> lines;
  auto when = [&](const google::protobuf::Timestamp& ts) {
    if (ts.seconds() == 0 && ts.nanos() == 0) return std::string("-");
    return format_time(ts) + " (" + format_age(now, ts) + ")";
  };
  lines.emplace_back("ID", s.id().empty() ? node.id() : s.id());
  lines.emplace_back("Hostname", or_dash(s.hostname()));
  lines.emplace_back("Status", display_enum(api::NodeStatus::State_descriptor(), s.state()));
  if (!s.status_message().empty()) lines.emplace_back("Status message", s.status_message());
  lines.emplace_back("Availability",
                     display_enum(api::NodeSpec::Availability_descriptor(), s.availability()));
  lines.emplace_back("Role", display_enum(api::NodeRole_descriptor(), s.role()));
  lines.emplace_back("Desired role",
                     display_enum(api::NodeRole_descriptor(), node.spec().desired_role()));
  lines.emplace_back("Address", or_dash(s.addr()));
  lines.emplace_back("Tasks", std::to_string(s.tasks()));
  const auto& desc = node.description();
  if (desc.has_platform()) {
    lines.emplace_back(
        "Platform", or_dash(desc.platform().os()) + "/" + or_dash(desc.platform().architecture()));
  }
  if (!desc.engine().engine_version().empty()) {
    lines.emplace_back("Engine version", desc.engine().engine_version());
  }
  if (!node.spec().annotations().labels().empty()) {
    std::vector<std::string> labels;
    for (const auto& [k, v] : node.spec().annotations().labels())
      labels.push_back(k + "=" + v);
    std::sort(labels.begin(), labels.end());
    std::string joined;
    for (const auto& l : labels)
      joined += (joined.empty() ? "" : ", ") + l;
    lines.emplace_back("Labels", joined);
  }
  if (node.has_meta()) {
    lines.emplace_back("Created", when(node.meta().created_at()));
    lines.emplace_back("Updated", when(node.meta().updated_at()));
  }
  if (s.has_session()) {
    const auto& ses = s.session();
    lines.emplace_back("Session", or_dash(ses.session_id()));
    lines.emplace_back("  Registered", when(ses.registered_at()));
    lines.emplace_back("  Last heartbeat", when(ses.last_heartbeat()));
    lines.emplace_back("  Heartbeat deadline", when(ses.heartbeat_deadline()));
    lines.emplace_back("  Streaming", ses.streaming() ? "yes" : "no");
  } else {
    lines.emplace_back("Session", "none");
  }
  std::size_t width = 0;
  for (const auto& [k, v] : lines)
    width = std::max(width, k.size() + 1);
  std::string out;
  for (const auto& [k, v] : lines) {
    out += k + ":";
    out.append(width - k.size() - 1 + 2, ' ');
    out += v + "\n";
  }
  return out;
}

std::string format_task_table(const cv1::ListTasksResponse& r) {
  Table t({"ID", "NODE", "SERVICE", "DESIRED", "STATE", "MESSAGE"});
  const auto* ts = api::TaskState_descriptor();
  for (const auto& task : r.tasks()) {
    t.add({task.id(), or_dash(task.node_id()), or_dash(task.service_id()),
           display_enum(ts, task.desired_state()), display_enum(ts, task.status().state()),
           task.status().err().empty()
               ? task.status().message()
               : task.status().message() + " (" + task.status().err() + ")"});
  }
  return t.render();
}

std::string format_manager_table(const cv1::GetManagersResponse& r) {
  Table t({"NODE", "ADDR", "WEIGHT"});
  for (const auto& m : r.managers())
    t.add({or_dash(m.peer().node_id()), or_dash(m.peer().addr()), std::to_string(m.weight())});
  return t.render();
}

std::string format_key_table(const cv1::GetNetworkKeysResponse& r) {
  Table t({"SUBSYSTEM", "ALGORITHM", "KEY", "LAMPORT"});
  const auto* alg = api::EncryptionKey::Algorithm_descriptor();
  for (const auto& k : r.keys()) {
    const auto* v = alg->FindValueByNumber(k.algorithm());
    t.add({k.subsystem(), v ? v->name() : std::to_string(k.algorithm()), base64_encode(k.key()),
           std::to_string(k.lamport_time())});
  }
  return t.render();
}

}  // namespace dispatchd::ctl
