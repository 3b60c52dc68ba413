// dispatchctl logs: follow the task logs agents publish, through SwarmKit's Logs service.

#include <chrono>

#include "dispatchd/ctl/command.hpp"
#include "dispatchd/ctl/format.hpp"
#include "logbroker.grpc.pb.h"

namespace dispatchd::ctl {

namespace api = docker::swarmkit::v1;

void add_log_commands(std::vector<Command>& cmds) {
  cmds.push_back(
      {"logs",
       "",
       "print the logs of tasks, nodes or services as their agents publish them, one line per "
       "message: NODE TASK STREAM: DATA (without --follow: until every node involved is done, "
       "within --timeout)",
       {{"task", 0, false, "ID", "logs of this task (repeatable)"},
        {"node", 0, false, "ID", "logs of every task on this node (repeatable)"},
        {"service", 0, false, "ID", "logs of the tasks of this service (repeatable)"},
        {"follow", 'f', true, "", "keep printing new messages until interrupted"},
        {"tail", 0, false, "N", "only the last N messages of each task (default: all)"}},
       0,
       0,
       [](Context& c, const ParsedArgs& a) {
         api::SubscribeLogsRequest req;
         auto* sel = req.mutable_selector();
         for (const auto& v : a.all("task"))
           sel->add_task_ids(v);
         for (const auto& v : a.all("node"))
           sel->add_node_ids(v);
         for (const auto& v : a.all("service"))
           sel->add_service_ids(v);
         if (sel->task_ids().empty() && sel->node_ids().empty() && sel->service_ids().empty()) {
           throw UsageError("logs needs at least one --task, --node or --service");
         }
         auto* opt = req.mutable_options();
         opt->set_follow(a.flag("follow"));
         if (auto v = a.last("tail")) {
           std::size_t used = 0;
           long long n = -1;
           try {
             n = std::stoll(*v, &used);
           } catch (const std::exception&) {
             used = 0;
           }
           if (used != v->size() || n < 0)
             throw UsageError("invalid --tail " + *v + ": want N >= 0");
           // SwarmKit's tail: -(N+1) asks for the last N messages.
           opt->set_tail(-(n + 1));
         }
         auto ctx = c.call();
         // Following has no end but the operator's; a finite read keeps the --timeout.
         if (opt->follow()) ctx->set_deadline(std::chrono::system_clock::time_point::max());
         auto stub = api::Logs::NewStub(c.channel());
         auto reader = stub->SubscribeLogs(ctx.get(), req);
         api::SubscribeLogsMessage m;
         while (reader->Read(&m)) {
           for (const auto& lm : m.messages()) {
             if (c.opt.json) {
               c.json(lm);
             } else {
               c.out += format_log_line(lm);
             }
           }
           c.flush();
         }
         auto st = reader->Finish();
         if (!st.ok()) return c.fail(st);
         return 0;
       }});
}

}  // namespace dispatchd::ctl
