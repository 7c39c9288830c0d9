// Heterogeneity-aware pipeline planning: split a model, seen as a chain of
// layers, into contiguous stages, one GPU each, so that the slowest stage is
// as fast as possible and every GPU holds what its stage needs.
//
// The file formats, units and the cost model are fixed by docs/planner.md
// (after the shared planner README); in short, stage k of S holding layers a..b on GPU g:
//
//   compute_k = sum(flops[a..b]) / (tflops_g * 1e12)
//   comm_k    = activation_bytes[b] / (bw * 1e9) for k < S-1, else 0, where bw
//               is the node's intra_node_gbps when stage k+1 is on the same
//               node and inter_node_gbps otherwise (the sender pays)
//   time_k    = compute_k + comm_k;  bottleneck = max_k time_k (minimized)
//   memory:     sum(param_bytes[a..b]) + (S-k) * sum(activation_bytes[a..b])
//               <= memory_gb_g * 1e9   (S-k micro-batches in flight, 1F1B)
//
// plan_pipeline() returns an optimal plan of that model (not a heuristic);
// evaluate() scores any plan with the same arithmetic, so a plan the planner
// returns always evaluates as valid with the same bottleneck.
//
// Errors: malformed or out-of-range input (a missing key, a negative number,
// no layers, no GPUs, a duplicate node name) throws SpecError naming the
// file and the offending field. "No plan fits" is not an error: it is a
// PlanResult with status infeasible and a reason naming the failing
// constraint.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json_fwd.hpp>

namespace troupe::scheduler {

// ---- inputs ---------------------------------------------------------------

struct LayerProfile {
  std::string name;
  double flops = 0;             // FLOP, forward + backward, one micro-batch
  double param_bytes = 0;       // always resident: weights, gradients, optimizer state
  double activation_bytes = 0;  // the layer's output for one micro-batch (sent on a cut after it)
  // Version 2 only (planner_v2.hpp); version 1 ignores them.
  // Bytes all-reduced within a tensor-parallel group for one micro-batch when
  // the layer is split; nullopt: the layer cannot be split (t = 1).
  std::optional<double> tp_bytes;
  // Bytes of the layer's gradients, all-reduced by data-parallel replicas once
  // per iteration; nullopt: param_bytes / 4.
  std::optional<double> grad_bytes;
};

struct ModelProfile {
  std::string name;  // informational
  std::vector<LayerProfile> layers;  // the chain, in execution order
};

struct ClusterGpu {
  std::string type;  // a label; only tflops and memory_gb enter the cost model
  double tflops = 0;     // 10^12 FLOP/s
  double memory_gb = 0;  // 10^9 bytes
};

struct ClusterNode {
  std::string name;            // unique within the cluster; identifies the GPUs of a plan
  double intra_node_gbps = 0;  // 10^9 bytes/s between two GPUs of this node
  std::vector<ClusterGpu> gpus;
};

struct ClusterSpec {
  std::string name;            // informational
  double inter_node_gbps = 0;  // 10^9 bytes/s between GPUs of different nodes
  std::vector<ClusterNode> nodes;
  // Version 2 only: t (1, 2, 4 or 8) -> fraction of the ideal speed-up a
  // tensor-parallel group of t GPUs reaches on compute; a missing key takes
  // its default (1: 1.0, 2: 0.95, 4: 0.9, 8: 0.85). Version 1 ignores it.
  std::map<int, double> tp_efficiency;

  std::size_t gpu_count() const noexcept;
};

// Checks what the formats require of values built in code as well as read
// from files: at least one layer; every number finite and >= 0 (tp_bytes and
// grad_bytes too, when present); tflops, memory_gb and both bandwidths > 0;
// node names non-empty and unique; at least one GPU in the cluster;
// tp_efficiency keys in {1, 2, 4, 8} with finite values > 0. Throws
// SpecError naming the field, e.g. `layers[3] ("conv2"): flops must be a finite number >= 0, got -1`.
void validate(const ModelProfile& model);
void validate(const ClusterSpec& cluster);

// JSON in docs/planner.md's formats. Required keys: a model's
// "layers" (non-empty) and each layer's "name", "flops", "param_bytes",
// "activation_bytes"; a cluster's "inter_node_gbps" and "nodes" (non-empty),
// each node's "name", "intra_node_gbps" and "gpus", each GPU's "type",
// "tflops" and "memory_gb". Top-level "name" is optional; other keys
// ("source", "batch_size", "description") are ignored. Version 2's optional
// keys are read too: a layer's "tp_bytes" (a number, or null: not splittable)
// and "grad_bytes", a cluster's "tp_efficiency" ({"2": 0.95, ...}, keys 1, 2,
// 4, 8 only). Throws SpecError
// naming the missing or bad field; the load_ functions prefix the path and
// also report unreadable files and JSON syntax errors that way.
ModelProfile parse_model(const nlohmann::json& json);
ModelProfile load_model(const std::filesystem::path& path);
ClusterSpec parse_cluster(const nlohmann::json& json);
ClusterSpec load_cluster(const std::filesystem::path& path);

// ---- plans ----------------------------------------------------------------

struct PlanStage {
  std::string node;  // the node's name
  int gpu = 0;       // 0-based index in that node's gpus
  int first_layer = 0;  // inclusive range of 0-based layer indexes
  int last_layer = 0;

  // Filled by evaluate() (and so by plan_pipeline()); left zero by parse_plan.
  std::string gpu_type;
  double compute_s = 0;
  double comm_s = 0;  // what this stage pays to send to the next one
  double time_s = 0;  // compute_s + comm_s
  double memory_bytes = 0;           // params + (S-k) * activations of its layers
  double memory_capacity_bytes = 0;  // its GPU's memory_gb * 1e9
};

struct Plan {
  std::vector<PlanStage> stages;
  double bottleneck_s = 0;    // max of the stages' time_s (filled by evaluate)
  int bottleneck_stage = -1;  // the first stage with that time; -1 when unknown

  // Micro-batches per second in steady state: 1 / bottleneck_s (infinity for
  // a zero bottleneck, 0 when bottleneck_s is unknown or negative).
  double throughput() const noexcept;
};

// The README's plan JSON plus "bottleneck_s":
//   {"stages": [{"node": "n", "gpu": 0, "layers": [0, 11]}, ...], "bottleneck_s": 0.0058}
nlohmann::json plan_to_json(const Plan& plan);
// Reads "stages" (required; each with "node", "gpu", "layers": [first, last]);
// "bottleneck_s" and unknown keys are ignored. Throws SpecError.
Plan parse_plan(const nlohmann::json& json);

struct PlanEvaluation {
  Plan plan;           // the input with every computable cost filled in
  bool valid = false;  // all of README's rules hold
  std::string reason;  // the first rule that fails, e.g. "stage 0 (dgx-a100 GPU 0, layers 0-40)
                       // needs 45.20 GB ... but the GPU has 40.00 GB"; empty when valid
};

// Scores `plan` under the cost model and checks its validity: known nodes and
// GPU indexes, no GPU twice, ranges covering all layers in order, memory.
// Costs are filled for every stage whose GPU and layer range resolve, also
// when the plan is invalid. Throws SpecError when the model or cluster fails
// validate().
PlanEvaluation evaluate(const ModelProfile& model, const ClusterSpec& cluster, const Plan& plan);

// README's uniform baseline: S = min(#GPUs, #layers) stages on the first S
// GPUs in file order (nodes in order, GPUs in order within a node); the first
// L mod S stages get ceil(L/S) layers, the others floor(L/S). Only the
// structure: evaluate() it for costs and validity (it may break memory).
Plan uniform_plan(const ModelProfile& model, const ClusterSpec& cluster);

// ---- the planner ----------------------------------------------------------

struct PlannerOptions {
  // Upper bound on the number of stages; 0 = min(#GPUs, #layers).
  int max_stages = 0;
  // The exact search keeps a table of 8 bytes per (subset of GPU classes,
  // node, layer); above this size plan_pipeline() answers search_too_large
  // instead of allocating. GPUs with equal (node, tflops, memory_gb) form one
  // class, so only clusters with many distinct GPUs come near it.
  std::size_t max_table_bytes = std::size_t{256} << 20;
};

enum class PlanStatus {
  optimal,           // plan holds an optimal plan
  infeasible,        // no valid plan exists (within max_stages); reason says why
  search_too_large,  // the cluster has too many distinct GPU classes for max_table_bytes
};

struct PlanResult {
  PlanStatus status = PlanStatus::infeasible;
  Plan plan;           // when optimal: evaluated, with costs filled in
  std::string reason;  // when not optimal: which constraint fails
  // Search statistics, for tests and benchmarks.
  std::size_t gpu_classes = 0;
  std::uint64_t states_evaluated = 0;

  bool feasible() const noexcept { return status == PlanStatus::optimal; }
};

// The plan with the smallest bottleneck over every stage count S from 1 to
// max_stages and every assignment of stages to distinct GPUs. Among plans
// with the same bottleneck it returns one with the fewest stages; the result
// is deterministic.
//
// Method: a dynamic program over suffixes of the chain. A suffix state is
// (first layer i, multiset u of GPU classes it uses, node of its first stage);
// since the memory factor S-k of a stage equals the number of stages from it
// to the end (|u|), suffix values do not depend on S and one pass covers
// every stage count. The node of the first stage is what the stage before it
// needs to price its send. Branches are cut with the best complete plan found
// so far and with a compute lower bound (flops / total tflops of the GPUs
// left); neither cut can discard a strictly better plan. (The code is
// plan_pipeline_v2's search with t = d = 1, which keys each multiset with
// exactly one stage count, |u|.) Cost is about
// (#class multisets) x (#nodes) x L x (layers per stage) steps: 16 GPUs in 4
// classes with 100 layers take milliseconds.
//
// Infeasible reasons name the constraint: a layer whose parameters (plus one
// micro-batch of activations) exceed the largest GPU, parameters exceeding
// the GPUs' total memory, or "no assignment fits memory for any stage count
// from 1 to N". Throws SpecError when the model or cluster fails validate().
PlanResult plan_pipeline(const ModelProfile& model, const ClusterSpec& cluster,
                         const PlannerOptions& options = {});

// ---- GPU types (for describing a live cluster) ----------------------------

struct GpuTypeSpec {
  double tflops = 0;
  double memory_gb = 0;
  friend bool operator==(const GpuTypeSpec&, const GpuTypeSpec&) = default;
};

using GpuTypeTable = std::map<std::string, GpuTypeSpec, std::less<>>;

// The README's GPU types: H100-80GB, A100-80GB, A100-40GB, V100-32GB,
// V100-16GB, T4-16GB, L4-24GB, RTX4090-24GB.
const GpuTypeTable& builtin_gpu_types();

// {"TYPE": {"tflops": 700, "memory_gb": 80}, ...}; both numbers > 0.
// Throws SpecError naming the bad entry.
GpuTypeTable parse_gpu_type_table(const nlohmann::json& json);
GpuTypeTable load_gpu_type_table(const std::filesystem::path& path);

// The figures for a GPU reported as `model` ("H100-80GB" declared, or a CUDA
// name such as "NVIDIA H100 80GB HBM3"). `user` is searched before the
// built-in table, each in two passes: a type equal to `model` ignoring case,
// then a type whose name tokens (split at spaces, '-' and '_', any case)
// appear in `model`'s tokens in the same order, the longest such type
// winning: "A100-40GB" matches "NVIDIA A100-SXM4-40GB" but not "A100-80GB".
// nullopt when none.
std::optional<GpuTypeSpec> find_gpu_type(std::string_view model, const GpuTypeTable& user = {});

}  // namespace troupe::scheduler
