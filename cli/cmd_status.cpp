// `troupe status` (the whole cluster for people) and
// `troupe list nodes|actors|jobs [--json]` (one table, or JSON for scripts).
#include <algorithm>
#include <iomanip>
#include <iostream>
#include <map>
#include <memory>
#include <sstream>

#include "cluster_commands.hpp"
#include "control_client.hpp"
#include "daemon.hpp"
#include "session.hpp"
#include "troupe/runtime/ids.hpp"
#include "troupe/scheduler/resources.hpp"

namespace troupe::cli {

namespace {

std::string node_state_name(wire::NodeState state) {
  switch (state) {
    case wire::NodeState::ALIVE: return "ALIVE";
    case wire::NodeState::SUSPECTED: return "SUSPECTED";  // missed heartbeats; being probed
    case wire::NodeState::DEAD: return "DEAD";
  }
  return "UNKNOWN";
}

std::string gpus_by_type(capnp::List<wire::GpuInfo>::Reader gpus) {
  std::vector<std::pair<std::string, int>> counts;
  for (auto gpu : gpus) {
    std::string model = gpu.getModel().cStr();
    auto it = std::find_if(counts.begin(), counts.end(), [&](auto& c) { return c.first == model; });
    if (it == counts.end()) counts.emplace_back(model, 1);
    else ++it->second;
  }
  if (counts.empty()) return "none";
  std::string text;
  for (const auto& [model, count] : counts) {
    text += (text.empty() ? "" : ", ") + model + " x" + std::to_string(count);
  }
  return text;
}

scheduler::ResourceSet node_total(wire::RegisterNode::Reader node) {
  scheduler::ResourceSet total;
  for (auto resource : node.getResources()) total.set(resource.getName().cStr(), resource.getAmount());
  total.set(scheduler::kCpu, node.getNumCpus());
  total.set(scheduler::kMemory, static_cast<double>(node.getMemoryBytes()));
  total.set(scheduler::kGpu, static_cast<double>(node.getGpus().size()));
  return total;
}

scheduler::ResourceSet node_available(wire::NodeInfo::Reader info) {
  scheduler::ResourceSet available;
  for (auto resource : info.getAvailable()) available.set(resource.getName().cStr(), resource.getAmount());
  return available;
}

std::string format_amount(const std::string& name, double amount) {
  if (name == scheduler::kMemory) return scheduler::format_bytes(amount);
  std::ostringstream out;
  out << amount;
  return out.str();
}

// "used/total" for one resource.
std::string usage(const std::string& name, double used, double total) {
  return format_amount(name, used) + "/" + format_amount(name, total);
}

void print_table(const std::vector<std::vector<std::string>>& rows, const std::string& indent = "  ") {
  std::vector<std::size_t> widths;
  for (const auto& row : rows) {
    if (widths.size() < row.size()) widths.resize(row.size(), 0);
    for (std::size_t i = 0; i < row.size(); ++i) widths[i] = std::max(widths[i], row[i].size());
  }
  for (const auto& row : rows) {
    std::string line = indent;
    for (std::size_t i = 0; i < row.size(); ++i) {
      line += row[i];
      if (i + 1 < row.size()) line += std::string(widths[i] - row[i].size() + 2, ' ');
    }
    while (!line.empty() && line.back() == ' ') line.pop_back();
    std::cout << line << '\n';
  }
}

// "ucx tcp,sysv,posix,cma; CUDA staged" / "... CUDA native" / "zmq".
std::string data_plane(wire::RegisterNode::Reader node) {
  std::string ucx;
  bool zmq = false;
  for (auto transport : node.getTransports()) {
    std::string_view name = transport.cStr();
    if (name.rfind("ucx:", 0) == 0) ucx += (ucx.empty() ? "" : ",") + std::string(name.substr(4));
    else zmq = zmq || name == "zmq";
  }
  if (ucx.empty()) return zmq ? "zmq" : "-";
  return "ucx " + ucx + (node.getCudaStaging() ? "; CUDA staged" : "; CUDA native");
}

std::vector<std::vector<std::string>> node_rows(wire::ClusterState::Reader state) {
  std::vector<std::vector<std::string>> rows{
      {"NODE", "STATE", "ADDRESS", "CPU", "MEMORY", "GPU", "GPUS BY TYPE", "DATA PLANE", "OTHER"}};
  for (auto info : state.getNodes()) {
    auto node = info.getNode();
    auto total = node_total(node);
    auto available = node_available(info);
    std::string other;
    for (const auto& [name, amount] : total.amounts()) {
      if (name == scheduler::kCpu || name == scheduler::kGpu || name == scheduler::kMemory) continue;
      if (scheduler::is_node_resource(name)) continue;  // every node has its own; the NODE column says it
      other += (other.empty() ? "" : ", ") + name + " " + usage(name, amount - available.get(name), amount);
    }
    auto used = [&](std::string_view name) {
      double t = total.get(name);
      return info.getState() != wire::NodeState::DEAD ? t - available.get(name) : 0.0;
    };
    rows.push_back({from_wire<NodeId>(node.getNodeId()).short_hex(), node_state_name(info.getState()),
                    node.getAddress().cStr(), usage("CPU", used(scheduler::kCpu), total.get(scheduler::kCpu)),
                    usage("memory", used(scheduler::kMemory), total.get(scheduler::kMemory)),
                    usage("GPU", used(scheduler::kGpu), total.get(scheduler::kGpu)),
                    gpus_by_type(node.getGpus()), data_plane(node), other.empty() ? "-" : other});
  }
  return rows;
}

std::vector<std::vector<std::string>> actor_rows(wire::ClusterState::Reader state) {
  std::vector<std::vector<std::string>> rows{{"ACTOR", "CLASS", "NAME", "STATE", "NODE", "RESTARTS", "REASON"}};
  for (auto actor : state.getActors()) {
    NodeId node = from_wire<NodeId>(actor.getNodeId());
    rows.push_back({from_wire<ActorId>(actor.getActorId()).short_hex(), actor.getClassName().cStr(),
                    actor.getName().size() > 0 ? actor.getName().cStr() : "-",
                    actor_state_name(actor.getState()), node.nil() ? "-" : node.short_hex(),
                    std::to_string(actor.getIncarnation()),
                    actor.getReason().getMessage().size() > 0 ? actor.getReason().getMessage().cStr() : "-"});
  }
  return rows;
}

std::vector<std::vector<std::string>> job_rows(wire::ClusterState::Reader state) {
  std::vector<std::vector<std::string>> rows{{"JOB", "NAME", "STATE", "EXIT CODE", "INFO"}};
  for (auto job : state.getJobs()) {
    bool final = job.getState() != wire::JobState::PENDING && job.getState() != wire::JobState::RUNNING;
    rows.push_back({from_wire<JobId>(job.getJobId()).hex(), job.getName().cStr(), job_state_name(job.getState()),
                    final ? std::to_string(job.getExitCode()) : "-",
                    job.getError().getMessage().size() > 0 ? job.getError().getMessage().cStr() : "-"});
  }
  return rows;
}

int status(const HeadOptions& options) {
  auto reply = get_cluster_state(options);
  auto state = reply.root<wire::ControlMessage>().getClusterState();
  const std::string address = resolve_head_address(options.address, temp_root(options.temp_dir));
  int alive = 0, dead = 0, suspected = 0;
  scheduler::ResourceSet total, available;
  for (auto info : state.getNodes()) {
    if (info.getState() == wire::NodeState::DEAD) {
      ++dead;
      continue;
    }
    if (info.getState() == wire::NodeState::SUSPECTED) ++suspected;
    ++alive;
    total.add(node_total(info.getNode()));
    available.add(node_available(info));
  }
  std::cout << "======== troupe cluster at " << address << " ========\n";
  if (state.getInsecure()) {
    std::cout << "Security: NONE\n";
    std::cerr << insecure_warning(address);
  } else {
    auto secret = transport::membership();
    std::cout << "Security: members only (cluster token"
              << (secret ? ", fingerprint " + secret->fingerprint() : std::string()) << "; control and call planes "
              << "encrypted with CURVE, data plane authenticated)\n";
  }
  std::cout << "Nodes: " << alive << " alive" << (suspected > 0 ? " (" + std::to_string(suspected) + " suspected)" : "")
            << ", " << dead << " dead\n";
  print_table(node_rows(state));
  std::cout << "\nResources (alive nodes, used/total):\n";
  std::vector<std::vector<std::string>> resource_rows;
  for (const auto& [name, amount] : total.amounts()) {
    if (scheduler::is_node_resource(name)) continue;
    resource_rows.push_back({name, usage(name, amount - available.get(name), amount)});
  }
  if (resource_rows.empty()) resource_rows.push_back({"none"});
  print_table(resource_rows);

  std::map<std::string, int> by_state;
  for (auto actor : state.getActors()) ++by_state[actor_state_name(actor.getState())];
  std::cout << "\nActors:";
  if (by_state.empty()) std::cout << " none";
  for (const auto& [name, count] : by_state) std::cout << " " << count << " " << name;
  std::cout << '\n';
  if (state.getActors().size() > 0) print_table(actor_rows(state));
  if (state.getPlacementGroups().size() > 0) {
    std::cout << "\nPlacement groups:\n";
    std::vector<std::vector<std::string>> rows{{"GROUP", "STATE", "BUNDLE NODES", "REASON"}};
    static const char* names[] = {"PENDING", "CREATED", "INFEASIBLE", "REMOVED"};
    for (auto group : state.getPlacementGroups()) {
      std::string nodes;
      for (auto node : group.getBundleNodes()) {
        nodes += (nodes.empty() ? "" : ",") + from_wire<NodeId>(node).short_hex();
      }
      rows.push_back({from_wire<PlacementGroupId>(group.getPlacementGroupId()).short_hex(),
                      names[static_cast<int>(group.getState())],
                      nodes.empty() ? "-" : nodes,
                      group.getReason().getMessage().size() > 0 ? group.getReason().getMessage().cStr() : "-"});
    }
    print_table(rows);
  }
  std::cout << "\nJobs:" << (state.getJobs().size() == 0 ? " none" : "") << '\n';
  if (state.getJobs().size() > 0) print_table(job_rows(state));
  return kExitOk;
}

struct ListOptions {
  HeadOptions head;
  std::string what;
  bool json = false;
};

int list(const ListOptions& options) {
  auto reply = get_cluster_state(options.head);
  auto state = reply.root<wire::ControlMessage>().getClusterState();
  if (options.json) {
    nlohmann::json doc = options.what == "nodes"    ? nodes_json(state)
                         : options.what == "actors" ? actors_json(state)
                                                    : jobs_json(state);
    std::cout << doc.dump(2) << '\n';
    return kExitOk;
  }
  if (options.what == "nodes") print_table(node_rows(state), "");
  else if (options.what == "actors") print_table(actor_rows(state), "");
  else print_table(job_rows(state), "");
  return kExitOk;
}

}  // namespace

std::string job_state_name(wire::JobState state) {
  switch (state) {
    case wire::JobState::PENDING: return "PENDING";
    case wire::JobState::RUNNING: return "RUNNING";
    case wire::JobState::SUCCEEDED: return "SUCCEEDED";
    case wire::JobState::FAILED: return "FAILED";
    case wire::JobState::STOPPED: return "STOPPED";
  }
  return "UNKNOWN";
}

std::string actor_state_name(wire::ActorState state) {
  switch (state) {
    case wire::ActorState::PENDING: return "PENDING";
    case wire::ActorState::ALIVE: return "ALIVE";
    case wire::ActorState::RESTARTING: return "RESTARTING";
    case wire::ActorState::DEAD: return "DEAD";
  }
  return "UNKNOWN";
}

transport::ReceivedMessage get_cluster_state(const HeadOptions& options) {
  const std::string address = resolve_head_address(options.address, temp_root(options.temp_dir));
  ControlClient client(address, request_timeout(options));
  capnp::MallocMessageBuilder message;
  message.initRoot<wire::ControlMessage>().initGetClusterState().setIncludeDead(true);
  return client.request(message);
}

nlohmann::json nodes_json(wire::ClusterState::Reader state) {
  auto rows = nlohmann::json::array();
  for (auto info : state.getNodes()) {
    auto node = info.getNode();
    auto gpus = nlohmann::json::array();
    for (auto gpu : node.getGpus()) {
      gpus.push_back({{"index", gpu.getIndex()},
                      {"model", gpu.getModel().cStr()},
                      {"memory_bytes", gpu.getMemoryBytes()},
                      {"sm_count", gpu.getSmCount()},
                      {"compute_capability", std::to_string(gpu.getCcMajor()) + "." + std::to_string(gpu.getCcMinor())},
                      {"declared", gpu.getDeclared()}});
    }
    nlohmann::json by_type = nlohmann::json::object();
    for (auto gpu : node.getGpus()) by_type[gpu.getModel().cStr()] = by_type.value(gpu.getModel().cStr(), 0) + 1;
    rows.push_back({{"node_id", from_wire<NodeId>(node.getNodeId()).hex()},
                    {"state", node_state_name(info.getState())},
                    {"address", node.getAddress().cStr()},
                    {"hostname", node.getHostname().cStr()},
                    {"num_cpus", node.getNumCpus()},
                    {"memory_bytes", node.getMemoryBytes()},
                    {"gpus", gpus},
                    {"gpus_by_type", by_type},
                    {"data_plane", data_plane(node)},
                    {"cuda_native", !node.getCudaStaging()},
                    {"total", node_total(node)},
                    {"available", node_available(info)},
                    {"last_heartbeat_age_ms", info.getLastHeartbeatAgeMs()}});
  }
  return rows;
}

nlohmann::json actors_json(wire::ClusterState::Reader state) {
  auto rows = nlohmann::json::array();
  for (auto actor : state.getActors()) {
    NodeId node = from_wire<NodeId>(actor.getNodeId());
    rows.push_back({{"actor_id", from_wire<ActorId>(actor.getActorId()).hex()},
                    {"class_name", actor.getClassName().cStr()},
                    {"name", actor.getName().cStr()},
                    {"state", actor_state_name(actor.getState())},
                    {"node_id", node.nil() ? "" : node.hex()},
                    {"address", actor.getAddress().cStr()},
                    {"incarnation", actor.getIncarnation()},
                    {"reason", actor.getReason().getMessage().cStr()},
                    {"reason_code", actor.getReason().getCode()}});  // the wire number (docs/errors.md)
  }
  return rows;
}

nlohmann::json job_json(wire::JobUpdate::Reader job) {
  NodeId driver_node = from_wire<NodeId>(job.getDriverNodeId());
  return {{"job_id", from_wire<JobId>(job.getJobId()).hex()},
          {"name", job.getName().cStr()},
          {"state", job_state_name(job.getState())},
          {"exit_code", job.getExitCode()},
          {"error", job.getError().getMessage().cStr()},
          {"driver_node_id", driver_node.nil() ? "" : driver_node.hex()}};
}

nlohmann::json jobs_json(wire::ClusterState::Reader state) {
  auto rows = nlohmann::json::array();
  for (auto job : state.getJobs()) rows.push_back(job_json(job));
  return rows;
}

void add_status_command(CLI::App& app) {
  auto options = std::make_shared<HeadOptions>();
  auto* command = app.add_subcommand(
      "status", "Show the cluster: nodes, GPUs by type, resources used/total, actors by state, jobs");
  add_head_options(*command, *options);
  set_action(*command, [options] { return status(*options); });
}

void add_list_command(CLI::App& app) {
  auto options = std::make_shared<ListOptions>();
  auto* command = app.add_subcommand("list", "List the cluster's nodes, actors or jobs");
  command->add_option("what", options->what, "nodes, actors or jobs")
      ->required()
      ->check(CLI::IsMember({"nodes", "actors", "jobs"}));
  command->add_flag("--json", options->json, "Print JSON instead of a table");
  add_head_options(*command, options->head);
  set_action(*command, [options] { return list(*options); });
}

}  // namespace troupe::cli
