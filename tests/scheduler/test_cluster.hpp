// Clusters shared by the scheduler tests.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "troupe/scheduler/gpu_spec.hpp"
#include "troupe/scheduler/resources.hpp"

namespace troupe::scheduler::testing {

inline constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;
inline constexpr std::uint64_t kGiBBytes = std::uint64_t{1} << 30;

inline NodeState make_node(std::string id, double cpus, double memory_gib, std::string gpu_spec,
                           ResourceSet extra = {}) {
  NodeInfo info;
  info.node_id = std::move(id);
  info.total = std::move(extra);
  info.total.set(kCpu, cpus);
  info.total.set(kMemory, memory_gib * kGiB);
  info.gpus = parse_gpu_spec(gpu_spec);
  return NodeState(std::move(info));
}

// The heterogeneous cluster most tests use:
//   a: 32 CPUs, 256 GiB, 2x H100-80GB
//   b: 16 CPUs, 128 GiB, A100-40GB (GPU 0) + T4-16GB (GPU 1)
//   c:  8 CPUs,  32 GiB, no GPUs
inline std::vector<NodeState> three_node_cluster() {
  std::vector<NodeState> nodes;
  nodes.push_back(make_node("a", 32, 256, "H100-80GB:2"));
  nodes.push_back(make_node("b", 16, 128, "A100-40GB:1,T4-16GB:1"));
  nodes.push_back(make_node("c", 8, 32, ""));
  return nodes;
}

}  // namespace troupe::scheduler::testing
