// The exact search shared by both planner versions (private). plan_pipeline()
// (version 1, planner.cpp) runs planner_v2.cpp's suffix dynamic program with
// t = d = 1 under version 1's cost model, so one search serves both.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include <fmt/format.h>

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

// Checks shared by evaluate_plan() and evaluate_plan_v2(): every stage's
// layers are a non-empty range of the model's, and the ranges tile the chain
// in order. Calls fail(reason) for each fault; returns which stages' ranges
// are usable.
template <class Stages, class Label, class Fail>
std::vector<bool> check_layer_tiling(const Stages& stages, int layers, const Label& stage_label, const Fail& fail) {
  std::vector<bool> range_ok(stages.size(), false);
  int expected_first = 0;
  for (std::size_t k = 0; k < stages.size(); ++k) {
    const auto& s = stages[k];
    const int index = static_cast<int>(k);
    if (s.first_layer < 0 || s.last_layer >= layers || s.first_layer > s.last_layer) {
      fail(fmt::format("{}: not a non-empty range of the model's layers 0-{}", stage_label(index), layers - 1));
    } else {
      range_ok[k] = true;
    }
    if (s.first_layer != expected_first) {
      fail(fmt::format("{}: starts at layer {} but must start at layer {}{}", stage_label(index), s.first_layer,
                       expected_first, k == 0 ? "" : " (right after the previous stage)"));
    }
    expected_first = s.last_layer + 1;
  }
  if (!stages.empty() && expected_first != layers) {
    fail(fmt::format("the stages end at layer {} but the model's last layer is {}", expected_first - 1, layers - 1));
  }
  return range_ok;
}

// The slowest stage of an evaluated plan (the first of equals).
template <class Plan>
void pick_bottleneck(Plan& plan) {
  for (std::size_t k = 0; k < plan.stages.size(); ++k) {
    const auto& s = plan.stages[k];
    if (plan.bottleneck_stage < 0 || s.time_s > plan.bottleneck_s) {
      plan.bottleneck_s = s.time_s;
      plan.bottleneck_stage = static_cast<int>(k);
    }
  }
}

}  // namespace troupe::scheduler::detail
