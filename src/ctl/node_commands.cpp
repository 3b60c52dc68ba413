// dispatchctl node ...: list, inspect, update (and its availability shortcuts) and remove nodes.

#include "dispatchd/ctl/command.hpp"
#include "dispatchd/ctl/format.hpp"

namespace dispatchd::ctl {

namespace api = docker::swarmkit::v1;
namespace cv1 = dispatchd::control::v1;

namespace {

int do_update(Context& c, const cv1::UpdateNodeRequest& req) {
  return unary(c, &Stub::UpdateNode, req, [&](const auto&) { return req.node_id() + "\n"; });
}

int availability_shortcut(Context& c, const ParsedArgs& a, api::NodeSpec::Availability av) {
  cv1::UpdateNodeRequest req;
  req.set_node_id(a.positionals[0]);
  req.set_availability(av);
  return do_update(c, req);
}

}  // namespace

void add_node_commands(std::vector<Command>& cmds) {
  const auto* state_d = api::NodeStatus::State_descriptor();
  const auto* avail_d = api::NodeSpec::Availability_descriptor();
  const auto* role_d = api::NodeRole_descriptor();

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

  cmds.push_back({"node create",
                  "ID",
                  "create a node before it joins (with --require-known-nodes only known nodes "
                  "may open a session); prints its ID",
                  {{"role", 0, false, "ROLE", enum_choices(role_d) + " (default worker)"},
                   {"availability", 0, false, "A", enum_choices(avail_d) + " (default active)"},
                   {"label", 0, false, "KEY=VALUE", "a label (repeatable)"}},
                  1,
                  1,
                  [=](Context& c, const ParsedArgs& a) {
                    cv1::CreateNodeRequest req;
                    req.set_node_id(a.positionals[0]);
                    if (auto v = a.last("role")) {
                      req.set_role(enum_flag<api::NodeRole>(a, "role", role_d, *v));
                    }
                    if (auto v = a.last("availability")) {
                      req.set_availability(
                          enum_flag<api::NodeSpec::Availability>(a, "availability", avail_d, *v));
                    }
                    *req.mutable_labels() = label_flags(a, "label");
                    return unary(c, &Stub::CreateNode, req,
                                 [](const auto& resp) { return resp.node().id() + "\n"; });
                  }});

  cmds.push_back({"node update",
                  "ID",
                  "change a node's availability, desired role and/or labels",
                  {{"availability", 0, false, "A", enum_choices(avail_d)},
                   {"role", 0, false, "ROLE", enum_choices(role_d)},
                   {"label-add", 0, false, "KEY=VALUE", "add or replace a label (repeatable)"},
                   {"label-rm", 0, false, "KEY", "remove a label (repeatable)"}},
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
                    *req.mutable_set_labels() = label_flags(a, "label-add");
                    for (const auto& k : a.all("label-rm"))
                      req.add_remove_labels(k);
                    if (!req.has_availability() && !req.has_role() && req.set_labels().empty() &&
                        req.remove_labels().empty()) {
                      throw UsageError(
                          "nothing to update: give --availability, --role, --label-add or "
                          "--label-rm");
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
}

}  // namespace dispatchd::ctl
