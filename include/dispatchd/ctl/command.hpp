#pragma once
// What every dispatchctl command is made of: its table entry (Command), the connection and
// output it runs with (Context), the two errors a command may throw, and the call helpers most
// commands are one line of. The commands themselves are grouped by what they manage
// (node_commands.cpp, task_commands.cpp, cluster_commands.cpp, log_commands.cpp); cli.cpp holds the
// table, help and dispatch.

#include <google/protobuf/descriptor.h>
#include <grpcpp/grpcpp.h>

#include <cstddef>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include "control.grpc.pb.h"
#include "dispatchd/ctl/args.hpp"
#include "dispatchd/ctl/parse.hpp"

namespace dispatchd::ctl {

// A usage error found after the command was recognised: exit status 2.
struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};
// An error of the environment (an unreadable file): exit status 1.
struct RunError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// The contents of `path`, named by `flag` ("--tls-ca") in the RunError when it cannot be read.
std::string read_file(const std::string& flag, const std::string& path);
// As read_file, or all of standard input for "-" (data given as a FILE|- operand).
std::string read_file_or_stdin(const std::string& what, const std::string& path);

// What a command runs with: the global options, the text it prints (out and err, which run()
// hands back) and the channel to the server.
class Context {
 public:
  Context(const GlobalOptions& o, std::string& out, std::string& err,
          std::function<void()> flush = {})
      : opt(o), out(out), err(err), flush_(std::move(flush)) {}

  const GlobalOptions& opt;
  std::string& out;
  std::string& err;

  // The channel to --addr, made on first use (TLS files are read then: RunError if unreadable).
  std::shared_ptr<grpc::Channel> channel();
  // A client context with the deadline and, in insecure mode, the identity metadata.
  std::unique_ptr<grpc::ClientContext> call();
  std::unique_ptr<dispatchd::control::v1::Control::Stub> control();
  // Prints "dispatchctl: CODE: message" to err; returns exit status 1.
  int fail(const grpc::Status& st);
  // Appends `m` as protobuf's canonical JSON and a newline to out.
  void json(const google::protobuf::Message& m);
  // Hands what `out` holds so far to the program's output (a command that streams, as
  // `logs --follow`, prints as it goes); without a flush function, `out` keeps it.
  void flush() {
    if (flush_) flush_();
  }

 private:
  std::shared_ptr<grpc::Channel> channel_;
  std::function<void()> flush_;
};

// One entry of the command table: `dispatchctl NAME [flags] OPERANDS`.
struct Command {
  std::string name;  // "node ls"
  std::string operands;
  std::string summary;
  std::vector<FlagSpec> flags;
  std::size_t min_operands = 0;
  std::size_t max_operands = 0;
  std::function<int(Context&, const ParsedArgs&)> run;
};

// Appends the commands of each group to the table, in the order `dispatchctl --help` lists them.
void add_health_command(std::vector<Command>& cmds);
void add_node_commands(std::vector<Command>& cmds);
void add_task_commands(std::vector<Command>& cmds);
void add_object_commands(std::vector<Command>& cmds);   // secrets and configs
void add_cluster_commands(std::vector<Command>& cmds);  // managers and network keys
void add_log_commands(std::vector<Command>& cmds);      // task logs (SwarmKit's Logs service)

// The value of an enum flag, or a UsageError naming the flag.
template <class T>
T enum_flag(const ParsedArgs& a, std::string_view flag, const google::protobuf::EnumDescriptor* d,
            const std::string& value) {
  auto v = parse_enum(d, value);
  if (!v) throw UsageError("invalid value for --" + std::string(flag) + ": " + v.error());
  (void)a;
  return static_cast<T>(*v);
}

// Every `--flag KEY=VALUE` given (a label each; the value may be empty), or a UsageError naming
// the flag.
google::protobuf::Map<std::string, std::string> label_flags(const ParsedArgs& a,
                                                            const std::string& flag);

using Stub = dispatchd::control::v1::Control::Stub;
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

}  // namespace dispatchd::ctl
