// Version 2 of the pipeline planner: a stage is a group of g = t x d identical
// GPUs on one node, t the tensor-parallel degree (1, 2, 4 or 8) and d the
// number of data-parallel replicas of that tensor-parallel group. A version-1
// plan (planner.hpp) is a version-2 plan with t = d = 1 and, with the default
// tp_efficiency, costs the same.
//
// The cost model is docs/planner.md's "Version 2" (after the shared planner
// README); stage k of S holding layers a..b on g = t*d GPUs of node n, each
// with FLOP/s F and memory C, M micro-batches per iteration, eta_t the
// cluster's tp_efficiency, intra the node's intra_node_gbps:
//
//   compute_k = sum(flops[a..b]) / (t * F * eta_t * d)
//   tp_k      = t = 1 ? 0 : sum(tp_bytes[a..b]) * 2(t-1)/t / (intra * 1e9 * d)
//   comm_k    = k = S-1 ? 0 : activation_bytes[b] / (bw * 1e9 * d)   (bw as version 1)
//   sync_k    = d = 1 ? 0 : 2(d-1)/d * sum(grad_bytes[a..b]) / t / (intra * 1e9) / M
//   time_k    = compute_k + tp_k + sync_k + comm_k;  bottleneck = max_k time_k (minimized)
//   memory:     (sum(param_bytes[a..b]) + (S-k) * sum(activation_bytes[a..b])) / t
//               <= C * (1 + 1e-9)   on every GPU of the stage
//
// plan_pipeline_v2() returns an optimal plan (not a heuristic) together with
// the best plan restricted to t = d = 1 (version 1) and the speed-up over it;
// evaluate_v2() prices any plan with the same arithmetic. Errors as in
// planner.hpp: bad input throws SpecError; "no plan fits" and "the search is
// too large" are statuses with a reason.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "troupe/scheduler/planner.hpp"

namespace troupe::scheduler {

// The tensor-parallel degrees a stage may use.
inline constexpr int kTensorParallelDegrees[] = {1, 2, 4, 8};

// The cluster's tp_efficiency for t, or its default (1: 1.0, 2: 0.95,
// 4: 0.9, 8: 0.85). Throws SpecError for a t outside {1, 2, 4, 8}.
double tp_efficiency(const ClusterSpec& cluster, int t);

// ---- plans ----------------------------------------------------------------

struct PlanStageV2 {
  std::string node;       // the node's name
  std::vector<int> gpus;  // distinct 0-based indexes in that node's gpus, g = t * d of them
  int tp = 1;             // t; d = gpus.size() / t
  int first_layer = 0;    // inclusive range of 0-based layer indexes
  int last_layer = 0;

  // Filled by evaluate_v2() (and so by plan_pipeline_v2()); left zero by parse_plan_v2.
  int dp = 0;             // d
  std::string gpu_type;   // the type of its first GPU
  double compute_s = 0;
  double tp_s = 0;        // tensor-parallel all-reduces
  double sync_s = 0;      // the replicas' gradient all-reduce, spread over M micro-batches
  double comm_s = 0;      // what this stage pays to send to the next one
  double time_s = 0;      // compute_s + tp_s + sync_s + comm_s
  double memory_bytes = 0;           // per GPU: (params + (S-k) * activations) / t
  double memory_capacity_bytes = 0;  // one GPU's memory_gb * 1e9
};

struct PlanV2 {
  std::vector<PlanStageV2> stages;
  double bottleneck_s = 0;    // max of the stages' time_s (filled by evaluate_v2)
  int bottleneck_stage = -1;  // the first stage with that time; -1 when unknown

  // Micro-batches per second in steady state: 1 / bottleneck_s (infinity for
  // a zero bottleneck, 0 when bottleneck_s is unknown or negative).
  double throughput() const noexcept;
};

// The same stages with t = d = 1: {"gpu": i} becomes {"gpus": [i], "tp": 1}.
PlanV2 to_plan_v2(const Plan& plan);

// The README's version-2 plan JSON plus "micro_batches" (M, when > 0) and
// "bottleneck_s":
//   {"stages": [{"node": "n", "gpus": [0, 1], "tp": 2, "layers": [0, 20]}, ...],
//    "micro_batches": 32, "bottleneck_s": 0.0058}
nlohmann::json plan_v2_to_json(const PlanV2& plan, int micro_batches = 0);
// Reads "stages" (required); each stage has "node", "layers": [first, last]
// and either version 1's "gpu": i (read as gpus [i], tp 1) or "gpus": [...]
// with an optional "tp" (default 1); a stage with both "gpu" and "gpus" is an
// error. Other keys are ignored. Throws SpecError.
PlanV2 parse_plan_v2(const nlohmann::json& json);

struct PlanEvaluationV2 {
  PlanV2 plan;         // the input with every computable cost filled in
  bool valid = false;  // all of the version-2 rules hold
  std::string reason;  // the first rule that fails; empty when valid
};

// Scores `plan` under the version-2 cost model with M = micro_batches and
// checks its validity: known nodes and GPU indexes, no GPU twice, the GPUs of
// a stage on one node with equal tflops and memory_gb, t in {1, 2, 4, 8}
// dividing the stage's GPU count, t = 1 when a layer of the stage has no
// tp_bytes, ranges covering all layers in order, memory. Throws SpecError
// when the model or cluster fails validate() or micro_batches < 1.
PlanEvaluationV2 evaluate_v2(const ModelProfile& model, const ClusterSpec& cluster, const PlanV2& plan,
                             int micro_batches);

// ---- the planner ----------------------------------------------------------

struct PlannerOptionsV2 {
  int micro_batches = 32;  // M >= 1: micro-batches per iteration
  int max_stages = 0;      // upper bound on the number of stages; 0 = min(#GPUs, #layers)
  int max_tp = 8;          // largest tensor-parallel degree to use: 1, 2, 4 or 8
  int max_dp = 0;          // largest data-parallel degree to use; 0 = no limit
  // Also search the best plan with t = d = 1 (PlanResultV2::v1_*); it then
  // bounds the full search from the start.
  bool compare_v1 = true;
  // The exact search keeps 8 bytes per (multiset of GPUs used, stage count,
  // node, layer) and 18 per (multiset, stage count, layer); above this size a
  // search answers search_too_large instead of allocating.
  std::size_t max_table_bytes = std::size_t{256} << 20;
};

struct PlanResultV2 {
  PlanStatus status = PlanStatus::infeasible;
  PlanV2 plan;         // when optimal: evaluated, with costs filled in
  std::string reason;  // when not optimal: which constraint fails, or the table size

  // The best plan with t = d = 1 under the same cost model (when
  // compare_v1): what version 1 of the planner can do on this pairing.
  PlanStatus v1_status = PlanStatus::infeasible;
  PlanV2 v1_plan;
  std::string v1_reason;

  // Search statistics, for tests and benchmarks.
  std::size_t gpu_classes = 0;
  std::size_t table_bytes = 0;  // of the full search
  std::uint64_t states_evaluated = 0;

  bool feasible() const noexcept { return status == PlanStatus::optimal; }
  // v1_plan.bottleneck_s / plan.bottleneck_s when both are optimal, else 0.
  double speedup_over_v1() const noexcept;
};

// The plan with the smallest bottleneck over every stage count S from 1 to
// max_stages, every assignment of stages to disjoint groups of identical
// GPUs on one node and every split of a group into t x d (within max_tp and
// max_dp). Among plans with the same bottleneck it returns one with the
// fewest stages found first (when compare_v1, the t = d = 1 plan unless a
// strictly faster one exists); the result is deterministic.
//
// Method (docs/planner.md, "Search"): version 1's dynamic program over
// suffixes of the chain, keyed by (first layer, multiset of GPU classes used,
// number of stages, node of the first stage). The stage count is a key of
// its own because a stage's memory factor S-k is the number of stages from it
// to the end, which no longer equals the number of GPUs; a transition takes
// g GPUs of one class with a split t x d = g. Cuts by the best plan so far and
// by a FLOP/(total FLOP/s x best efficiency) bound never drop a strictly
// better plan.
//
// Infeasible reasons name the constraint: a layer that no group can hold
// (parameters plus one micro-batch, split at most t ways), parameters beyond
// all GPUs' memory, or "no assignment fits memory for any stage count".
// Throws SpecError for bad model, cluster or options.
PlanResultV2 plan_pipeline_v2(const ModelProfile& model, const ClusterSpec& cluster,
                              const PlannerOptionsV2& options = {});

}  // namespace troupe::scheduler
