// The exact search shared by both planner versions (private). plan_pipeline()
// (version 1, planner.cpp) runs planner_v2.cpp's suffix dynamic program with
// t = d = 1 under version 1's cost model, so one search serves both.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "troupe/scheduler/planner.hpp"

namespace troupe::scheduler::detail {

struct OneGpuStage {
  int node = 0;  // index in ClusterSpec::nodes
  int gpu = 0;   // index in that node's gpus
  int first_layer = 0;
  int last_layer = 0;
};

struct OneGpuSearch {
  PlanStatus status = PlanStatus::infeasible;
  std::vector<OneGpuStage> stages;  // when optimal
  double bottleneck_s = 0;          // when optimal: the search's own value
  std::string reason;               // when search_too_large (infeasible: the caller says why)
  std::size_t gpu_classes = 0;
  std::uint64_t states_evaluated = 0;
};

// The best plan with one GPU per stage and at most max_stages stages under
// version 1's cost model (planner.hpp): no memory tolerance, no
// tp_efficiency. Among equal bottlenecks the fewest stages; each stage takes
// its class's lowest-index free GPU.
OneGpuSearch search_one_gpu_stages(const ModelProfile& model, const ClusterSpec& cluster, int max_stages,
                                   std::size_t max_table_bytes);

}  // namespace troupe::scheduler::detail
