// dispatchctl's command table, its help texts and run(): global flags, the command from the
// first one or two words, its flags and operands checked, then the command run.

#include "dispatchd/ctl/cli.hpp"

#include <algorithm>
#include <string>
#include <vector>

#include "dispatchd/ctl/command.hpp"

namespace dispatchd::ctl {

namespace {

std::vector<Command> make_commands() {
  std::vector<Command> cmds;
  add_health_command(cmds);
  add_node_commands(cmds);
  add_task_commands(cmds);
  add_object_commands(cmds);
  add_cluster_commands(cmds);
  add_log_commands(cmds);
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
      "through the Control service, follow task logs, and check the server's health.\n\n"
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

int run(std::span<const std::string> args, const Getenv& getenv, std::string& out, std::string& err,
        std::function<void()> flush) {
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
    Context ctx(global->options, out, err, std::move(flush));
    return cmd->run(ctx, *parsed);
  } catch (const UsageError& e) {
    return usage(err, e.what(), cmd->name + " ");
  } catch (const RunError& e) {
    err += std::string("dispatchctl: ") + e.what() + "\n";
    return 1;
  }
}

}  // namespace dispatchd::ctl
