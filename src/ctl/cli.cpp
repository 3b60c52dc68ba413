#include "dispatchd/ctl/cli.hpp"

#include <google/protobuf/util/json_util.h>
#include <grpcpp/grpcpp.h>

#include <array>
#include <cerrno>
#include <cstddef>
#include <cstring>
#include <fstream>
#include <functional>
#include <memory>
#include <sstream>
#include <stdexcept>
#include <type_traits>

#include "control.grpc.pb.h"
#include "dispatchd/ctl/format.hpp"
#include "dispatchd/ctl/parse.hpp"
#include "dispatchd/status.hpp"
#include "grpc/health/v1/health.grpc.pb.h"

namespace dispatchd::ctl {

namespace api = docker::swarmkit::v1;
namespace cv1 = dispatchd::control::v1;
namespace hv1 = ::grpc::health::v1;

namespace {

// A usage error found after the command was recognised: exit status 2.
struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};
// An error of the environment (an unreadable file): exit status 1.
struct RunError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

std::string read_file(const std::string& flag, const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw RunError("cannot read " + flag + " " + path + ": " + std::strerror(errno));
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

class Context {
 public:
  Context(const GlobalOptions& o, std::string& out, std::string& err)
      : opt(o), out(out), err(err) {}

  const GlobalOptions& opt;
  std::string& out;
  std::string& err;

  std::shared_ptr<grpc::Channel> channel() {
    if (channel_) return channel_;
    grpc::ChannelArguments args;
    args.SetMaxReceiveMessageSize(kMaxReceiveMessageSize);
    std::shared_ptr<grpc::ChannelCredentials> creds;
    if (opt.insecure) {
      creds = grpc::InsecureChannelCredentials();
    } else {
      grpc::SslCredentialsOptions ssl;
      if (!opt.tls_ca.empty()) ssl.pem_root_certs = read_file("--tls-ca", opt.tls_ca);
      if (!opt.tls_cert.empty()) {
        ssl.pem_cert_chain = read_file("--tls-cert", opt.tls_cert);
        ssl.pem_private_key = read_file("--tls-key", opt.tls_key);
      }
      creds = grpc::SslCredentials(ssl);
      if (!opt.server_name.empty()) args.SetSslTargetNameOverride(opt.server_name);
    }
    channel_ = grpc::CreateCustomChannel(opt.addr, creds, args);
    return channel_;
  }

  // A client context with the deadline and, in insecure mode, the identity metadata.
  std::unique_ptr<grpc::ClientContext> call() {
    auto c = std::make_unique<grpc::ClientContext>();
    c->set_deadline(std::chrono::system_clock::now() +
                    std::chrono::duration_cast<std::chrono::system_clock::duration>(opt.timeout));
    if (opt.insecure) {
      c->AddMetadata("node-id", opt.node_id);
      c->AddMetadata("node-role", "swarm-manager");
      c->AddMetadata("node-org", opt.org);
    }
    return c;
  }

  std::unique_ptr<cv1::Control::Stub> control() { return cv1::Control::NewStub(channel()); }

  int fail(const grpc::Status& st) {
    err +=
        "dispatchctl: " + status_code_constant(st.error_code()) + ": " + st.error_message() + "\n";
    return 1;
  }

  void json(const google::protobuf::Message& m) {
    google::protobuf::util::JsonPrintOptions o;
    o.always_print_primitive_fields = true;
    std::string s;
    auto st = google::protobuf::util::MessageToJsonString(m, &s, o);
    if (!st.ok()) throw RunError("cannot print the response as JSON: " + st.ToString());
    out += s;
    out += '\n';
  }

 private:
  std::shared_ptr<grpc::Channel> channel_;
};

struct Command {
  std::string name;  // "node ls"
  std::string operands;
  std::string summary;
  std::vector<FlagSpec> flags;
  std::size_t min_operands = 0;
  std::size_t max_operands = 0;
  std::function<int(Context&, const ParsedArgs&)> run;
};

template <class T>
T enum_flag(const ParsedArgs& a, std::string_view flag, const google::protobuf::EnumDescriptor* d,
            const std::string& value) {
  auto v = parse_enum(d, value);
  if (!v) throw UsageError("invalid value for --" + std::string(flag) + ": " + v.error());
  (void)a;
  return static_cast<T>(*v);
}

using Stub = cv1::Control::Stub;
template <class Req, class Resp>
using Method = grpc::Status (Stub::*)(grpc::ClientContext*, const Req&, Resp*);

// Calls one Control method with a fresh client context (deadline, identity metadata).
template <class Req, class Resp>
grpc::Status invoke(Context& c, Method<Req, Resp> method, const Req& req, Resp& resp) {
  auto ctx = c.call();
  return (c.control().get()->*method)(ctx.get(), req, &resp);
}

// The shape of nearly every command: call the method; on an error print it and exit 1; else
// print the response as JSON with --json, otherwise the text human(resp) returns (nothing
// without human), and exit 0.
template <class Req, class Resp, class F = std::nullptr_t>
int unary(Context& c, Method<Req, Resp> method, const Req& req, F human = nullptr) {
  Resp resp;
  auto st = invoke(c, method, req, resp);
  if (!st.ok()) return c.fail(st);
  if (c.opt.json) {
    c.json(resp);
  } else if constexpr (!std::is_null_pointer_v<F>) {
    c.out += human(resp);
  }
  return 0;
}

int do_update(Context& c, const cv1::UpdateNodeRequest& req) {
  return unary(c, &Stub::UpdateNode, req, [&](const auto&) { return req.node_id() + "\n"; });
}

int availability_shortcut(Context& c, const ParsedArgs& a, api::NodeSpec::Availability av) {
  cv1::UpdateNodeRequest req;
  req.set_node_id(a.positionals[0]);
  req.set_availability(av);
  return do_update(c, req);
}

const FlagSpec kServiceFlag{"service", 0, false, "NAME",
                            "service to check (default \"\": the server as a whole)"};

std::vector<Command> make_commands() {
  std::vector<Command> cmds;
  const auto* state_d = api::NodeStatus::State_descriptor();
  const auto* avail_d = api::NodeSpec::Availability_descriptor();
  const auto* role_d = api::NodeRole_descriptor();
  const auto* task_d = api::TaskState_descriptor();

  cmds.push_back({"health",
                  "",
                  "check grpc.health.v1.Health; exit 0 only when SERVING",
                  {kServiceFlag},
                  0,
                  0,
                  [](Context& c, const ParsedArgs& a) {
                    hv1::HealthCheckRequest req;
                    req.set_service(a.last("service").value_or(""));
                    hv1::HealthCheckResponse resp;
                    auto ctx = c.call();
                    auto st = hv1::Health::NewStub(c.channel())->Check(ctx.get(), req, &resp);
                    if (!st.ok()) return c.fail(st);
                    if (c.opt.json) {
                      c.json(resp);
                    } else {
                      c.out += hv1::HealthCheckResponse::ServingStatus_Name(resp.status()) + "\n";
                    }
                    return resp.status() == hv1::HealthCheckResponse::SERVING ? 0 : 1;
                  }});

  cmds.push_back(
      {"node ls",
       "",
       "list nodes (filters of one kind are ORed, of different kinds ANDed)",
       {{"state", 0, false, "STATE", "only nodes in STATE (repeatable): " + enum_choices(state_d)},
        {"availability", 0, false, "A",
         "only nodes with availability A (repeatable): " + enum_choices(avail_d)},
        {"role", 0, false, "ROLE", "only nodes with ROLE (repeatable): " + enum_choices(role_d)},
        {"quiet", 'q', true, "", "print node IDs only"}},
       0,
       0,
       [=](Context& c, const ParsedArgs& a) {
         cv1::ListNodesRequest req;
         for (const auto& v : a.all("state"))
           req.add_states(enum_flag<api::NodeStatus::State>(a, "state", state_d, v));
         for (const auto& v : a.all("availability"))
           req.add_availabilities(
               enum_flag<api::NodeSpec::Availability>(a, "availability", avail_d, v));
         for (const auto& v : a.all("role"))
           req.add_roles(enum_flag<api::NodeRole>(a, "role", role_d, v));
         cv1::ListNodesResponse resp;
         auto st = invoke(c, &Stub::ListNodes, req, resp);
         if (!st.ok()) return c.fail(st);
         if (a.flag("quiet")) {
           for (const auto& n : resp.nodes())
             c.out += n.id() + "\n";
         } else if (c.opt.json) {
           c.json(resp);
         } else {
           c.out += format_node_table(resp, Clock::now());
         }
         return 0;
       }});

  cmds.push_back({"node inspect",
                  "ID",
                  "show one node and its session",
                  {},
                  1,
                  1,
                  [](Context& c, const ParsedArgs& a) {
                    cv1::GetNodeRequest req;
                    req.set_node_id(a.positionals[0]);
                    return unary(c, &Stub::GetNode, req, [](const auto& resp) {
                      return format_node_details(resp, Clock::now());
                    });
                  }});

  cmds.push_back({"node update",
                  "ID",
                  "change a node's availability and/or desired role",
                  {{"availability", 0, false, "A", enum_choices(avail_d)},
                   {"role", 0, false, "ROLE", enum_choices(role_d)}},
                  1,
                  1,
                  [=](Context& c, const ParsedArgs& a) {
                    cv1::UpdateNodeRequest req;
                    req.set_node_id(a.positionals[0]);
                    if (auto v = a.last("availability")) {
                      req.set_availability(
                          enum_flag<api::NodeSpec::Availability>(a, "availability", avail_d, *v));
                    }
                    if (auto v = a.last("role")) {
                      req.set_role(enum_flag<api::NodeRole>(a, "role", role_d, *v));
                    }
                    if (!req.has_availability() && !req.has_role()) {
                      throw UsageError("nothing to update: give --availability and/or --role");
                    }
                    return do_update(c, req);
                  }});
  cmds.push_back({"node drain",
                  "ID",
                  "set a node's availability to drain",
                  {},
                  1,
                  1,
                  [](Context& c, const ParsedArgs& a) {
                    return availability_shortcut(c, a, api::NodeSpec::DRAIN);
                  }});
  cmds.push_back({"node pause",
                  "ID",
                  "set a node's availability to pause",
                  {},
                  1,
                  1,
                  [](Context& c, const ParsedArgs& a) {
                    return availability_shortcut(c, a, api::NodeSpec::PAUSE);
                  }});
  cmds.push_back({"node activate",
                  "ID",
                  "set a node's availability to active",
                  {},
                  1,
                  1,
                  [](Context& c, const ParsedArgs& a) {
                    return availability_shortcut(c, a, api::NodeSpec::ACTIVE);
                  }});

  cmds.push_back({"node rm",
                  "ID",
                  "remove a node (one that is not down needs --force)",
                  {{"force", 'f', true, "", "remove the node even if it is not down"}},
                  1,
                  1,
                  [](Context& c, const ParsedArgs& a) {
                    cv1::RemoveNodeRequest req;
                    req.set_node_id(a.positionals[0]);
                    req.set_force(a.flag("force"));
                    return unary(c, &Stub::RemoveNode, req,
                                 [&](const auto&) { return req.node_id() + "\n"; });
                  }});

  cmds.push_back({"task create",
                  "",
                  "create a task assigned to a node; prints its ID",
                  {{"node", 0, false, "ID", "node the task is assigned to (required)"},
                   {"id", 0, false, "ID", "task ID (default: generated by the server)"},
                   {"service", 0, false, "ID", "service ID"},
                   {"desired-state", 0, false, "STATE", "desired state (default running)"},
                   {"state", 0, false, "STATE", "current state (default assigned)"}},
                  0,
                  0,
                  [=](Context& c, const ParsedArgs& a) {
                    cv1::CreateTaskRequest req;
                    auto* t = req.mutable_task();
                    auto node = a.last("node");
                    if (!node || node->empty()) throw UsageError("task create needs --node ID");
                    t->set_node_id(*node);
                    t->set_id(a.last("id").value_or(""));
                    t->set_service_id(a.last("service").value_or(""));
                    t->set_desired_state(enum_flag<api::TaskState>(
                        a, "desired-state", task_d, a.last("desired-state").value_or("running")));
                    t->mutable_status()->set_state(enum_flag<api::TaskState>(
                        a, "state", task_d, a.last("state").value_or("assigned")));
                    return unary(c, &Stub::CreateTask, req,
                                 [](const auto& resp) { return resp.task().id() + "\n"; });
                  }});

  cmds.push_back({"task ls",
                  "",
                  "list tasks",
                  {{"node", 0, false, "ID", "only the tasks of this node"}},
                  0,
                  0,
                  [](Context& c, const ParsedArgs& a) {
                    cv1::ListTasksRequest req;
                    req.set_node_id(a.last("node").value_or(""));
                    return unary(c, &Stub::ListTasks, req,
                                 [](const auto& resp) { return format_task_table(resp); });
                  }});

  cmds.push_back({"task rm", "ID", "remove a task", {}, 1, 1, [](Context& c, const ParsedArgs& a) {
                    cv1::RemoveTaskRequest req;
                    req.set_task_id(a.positionals[0]);
                    return unary(c, &Stub::RemoveTask, req,
                                 [&](const auto&) { return req.task_id() + "\n"; });
                  }});

  cmds.push_back({"managers ls",
                  "",
                  "list the managers every Session carries",
                  {},
                  0,
                  0,
                  [](Context& c, const ParsedArgs&) {
                    return unary(c, &Stub::GetManagers, cv1::GetManagersRequest{},
                                 [](const auto& resp) { return format_manager_table(resp); });
                  }});
  cmds.push_back(
      {"managers set",
       "NODE_ID=ADDR[@WEIGHT]...",
       "replace the manager list (weight default " + std::to_string(kDefaultManagerWeight) + ")",
       {},
       1,
       SIZE_MAX,
       [](Context& c, const ParsedArgs& a) {
         cv1::SetManagersRequest req;
         for (const auto& p : a.positionals) {
           auto m = parse_manager(p);
           if (!m) throw UsageError("invalid manager " + m.error());
           *req.add_managers() = std::move(*m);
         }
         return unary(c, &Stub::SetManagers, req);
       }});

  cmds.push_back({"keys ls",
                  "",
                  "list the cluster's network bootstrap keys",
                  {},
                  0,
                  0,
                  [](Context& c, const ParsedArgs&) {
                    return unary(c, &Stub::GetNetworkKeys, cv1::GetNetworkKeysRequest{},
                                 [](const auto& resp) { return format_key_table(resp); });
                  }});
  cmds.push_back({"keys set",
                  "SUBSYSTEM:BASE64KEY:LAMPORT...",
                  "replace the network bootstrap keys (algorithm AES_128_GCM)",
                  {},
                  1,
                  SIZE_MAX,
                  [](Context& c, const ParsedArgs& a) {
                    cv1::SetNetworkKeysRequest req;
                    for (const auto& p : a.positionals) {
                      auto k = parse_network_key(p);
                      if (!k) throw UsageError("invalid key " + k.error());
                      *req.add_keys() = std::move(*k);
                    }
                    return unary(c, &Stub::SetNetworkKeys, req);
                  }});
  return cmds;
}

const std::vector<Command>& commands() {
  static const std::vector<Command> cmds = make_commands();
  return cmds;
}

std::string command_line(const Command& c) {
  std::string s = "dispatchctl " + c.name;
  if (!c.flags.empty()) s += " [flags]";
  if (!c.operands.empty()) s += " " + c.operands;
  return s;
}

std::string main_help() {
  std::string s =
      "Usage: dispatchctl [global flags] COMMAND ...\n\n"
      "Operator client of dispatchd: inspect and change nodes, tasks, managers and network keys\n"
      "through the Control service, and check the server's health.\n\n"
      "Global flags (each also from DISPATCHCTL_<FLAG>, dashes as underscores; a flag wins):\n";
  s += flags_help(global_flag_specs());
  s += "\nCommands:\n";
  std::vector<std::string> left;
  std::size_t width = 0;
  for (const auto& c : commands()) {
    left.push_back("  " + c.name + (c.operands.empty() ? "" : " " + c.operands));
    width = std::max(width, left.back().size());
  }
  for (std::size_t i = 0; i < commands().size(); ++i) {
    s += left[i];
    s.append(width - left[i].size() + 3, ' ');
    s += commands()[i].summary + "\n";
  }
  s += "\nRun 'dispatchctl COMMAND --help' for a command's flags.\n";
  return s;
}

std::string command_help(const Command& c) {
  std::string s = "Usage: " + command_line(c) + "\n\n" + c.summary + "\n";
  if (!c.flags.empty()) s += "\nFlags:\n" + flags_help(c.flags);
  return s;
}

std::string group_help(const std::string& group) {
  std::string s = "Usage: dispatchctl " + group + " COMMAND\n\nCommands:\n";
  for (const auto& c : commands()) {
    if (c.name.starts_with(group + " "))
      s += "  " + command_line(c) + "\n      " + c.summary + "\n";
  }
  return s;
}

bool is_group(const std::string& word) {
  for (const auto& c : commands())
    if (c.name.starts_with(word + " ")) return true;
  return false;
}

int usage(std::string& err, const std::string& msg, const std::string& see) {
  err += "dispatchctl: " + msg + "\nSee 'dispatchctl " + see + "--help'.\n";
  return 2;
}

}  // namespace

int run(std::span<const std::string> args, const Getenv& getenv, std::string& out,
        std::string& err) {
  auto global = parse_global(args, getenv);
  if (!global) return usage(err, global.error(), "");
  if (global->rest.empty()) {
    if (global->help) {
      out += main_help();
      return 0;
    }
    return usage(err, "no command given", "");
  }
  const auto& rest = global->rest;
  const Command* cmd = nullptr;
  std::size_t used = 1;
  for (const auto& c : commands())
    if (c.name == rest[0]) cmd = &c;
  if (!cmd) {
    if (!is_group(rest[0])) return usage(err, "unknown command \"" + rest[0] + "\"", "");
    if (rest.size() < 2 || rest[1] == "-h" || rest[1] == "--help") {
      if (rest.size() >= 2) {
        out += group_help(rest[0]);
        return 0;
      }
      return usage(err, rest[0] + " needs a command", rest[0] + " ");
    }
    for (const auto& c : commands())
      if (c.name == rest[0] + " " + rest[1]) cmd = &c;
    if (!cmd) {
      return usage(err, "unknown command \"" + rest[0] + " " + rest[1] + "\"", rest[0] + " ");
    }
    used = 2;
  }
  if (global->help) {
    out += command_help(*cmd);
    return 0;
  }
  auto parsed = parse_args(std::span(rest).subspan(used), cmd->flags);
  if (!parsed) return usage(err, parsed.error(), cmd->name + " ");
  if (parsed->help) {
    out += command_help(*cmd);
    return 0;
  }
  const auto n = parsed->positionals.size();
  if (n < cmd->min_operands || n > cmd->max_operands) {
    std::string msg =
        cmd->name + (cmd->operands.empty() ? " takes no arguments" : " needs " + cmd->operands);
    if (n > cmd->max_operands && cmd->max_operands > 0) {
      msg += " (got " + std::to_string(n) + " arguments)";
    }
    return usage(err, msg, cmd->name + " ");
  }
  if (!global->options.insecure &&
      global->options.tls_cert.empty() != global->options.tls_key.empty()) {
    return usage(err, "--tls-cert and --tls-key go together", "");
  }
  try {
    Context ctx(global->options, out, err);
    return cmd->run(ctx, *parsed);
  } catch (const UsageError& e) {
    return usage(err, e.what(), cmd->name + " ");
  } catch (const RunError& e) {
    err += std::string("dispatchctl: ") + e.what() + "\n";
    return 1;
  }
}

}  // namespace dispatchd::ctl
