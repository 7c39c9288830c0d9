// The nodes of the cluster this process runs in, as the scheduler sees them:
// what a program needs to plan where its actors go (troupe plan, the
// pipeline planner) before it creates them.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "troupe/scheduler/resources.hpp"

namespace troupe {

struct NodeDescription {
  std::string id;        // the full node id (32 hex digits, TROUPE_NODE_ID of its actors); "local" in local mode
  std::string name;      // as `troupe status` shows it: the id's first 12 hex digits; "local" in local mode
  std::string hostname;  // empty in local mode
  std::vector<scheduler::GpuInfo> gpus;       // detected or declared, in CUDA index order
  std::map<std::string, double> total;        // CPU, GPU, memory and custom resources, node:<name> included
  std::map<std::string, double> available;    // what is free now

  // "node:<name>": request scheduler::kNodeResourceRequest of it to pin an
  // actor or a placement-group bundle to this node.
  std::string resource() const { return scheduler::node_resource(name); }
};

// The alive nodes, in the order they registered. Local mode: this machine,
// with its detected or declared GPUs (InitOptions::gpus). Cluster mode: asks
// the head (one control request; Error(timeout) when it does not answer in
// 10 s). Throws Error(invalid_argument) before init().
std::vector<NodeDescription> nodes();

}  // namespace troupe
