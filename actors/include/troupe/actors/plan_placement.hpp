// From a pipeline plan (troupe::scheduler::plan_pipeline) to actors placed
// where it says: the running cluster described for the planner, and a
// placement group whose bundles pin each stage to the node and GPU type the
// plan chose.
//
//   auto cluster = troupe::actors::live_cluster_spec();            // the alive nodes and their GPUs
//   auto result = troupe::scheduler::plan_pipeline(model, cluster);
//   auto placed = troupe::actors::place_plan(result.plan, cluster);
//   placed.group.ready().get(60s);
//   for (std::size_t k = 0; k < placed.stages.size(); ++k)
//     stages.push_back(troupe::actor<Stage>(placed.stages[k], ...));
//
// Pinning works like Ray's: every node offers the resource "node:<name>"
// (scheduler::node_resource), so a bundle asking for a sliver of it can only
// go to that node; its GPU:1 with the plan's GPU type picks the GPU there.
// GPUs of one type on one node are interchangeable for the planner (it
// groups them into one class), so the bundle names the type, not the index.
// A version-2 plan (scheduler::plan_pipeline_v2) gets one bundle of t x d
// GPUs per stage and one ActorOptions per GPU (shard s of replica r).
#pragma once

#include <map>
#include <string>
#include <type_traits>
#include <vector>

#include "troupe/runtime/actor.hpp"
#include "troupe/runtime/nodes.hpp"
#include "troupe/scheduler/planner.hpp"
#include "troupe/scheduler/planner_v2.hpp"

namespace troupe::actors {

struct LiveClusterOptions {
  // GPU figures searched before the built-in table (scheduler::find_gpu_type).
  scheduler::GpuTypeTable gpu_types{};
  // troupe does not measure links; these are `troupe plan --address`'s
  // defaults: PCIe gen3 inside a node, 25 GbE between nodes.
  double intra_node_gbps = 16.0;
  double inter_node_gbps = 3.1;
};

// The planner's view of `nodes`: one ClusterNode per node that has GPUs,
// named NodeDescription::name, its GPUs in index order, with tflops and
// memory from the GPU type tables. Throws Error(invalid_argument) naming the
// node and GPU of a model no table knows, and when no node has a GPU.
scheduler::ClusterSpec cluster_spec(const std::vector<NodeDescription>& nodes, const LiveClusterOptions& options = {});
// cluster_spec(troupe::nodes(), options): the running cluster (or, in local
// mode, this machine with its detected or declared GPUs).
scheduler::ClusterSpec live_cluster_spec(const LiveClusterOptions& options = {});

struct PlacePlanOptions {
  // Pin each stage to its plan node with {"node:<node>": 0.001}. Turn off for
  // a plan made over a cluster file whose nodes are not this runtime's: the
  // stages then get the planned GPU types wherever they are free.
  bool pin_nodes = true;
  // Added to every bundle (and asked by every stage), e.g. {{"CPU", 1}}.
  std::map<std::string, double> extra_resources{};
  std::string group_name{};
  PlacementStrategy strategy = PlacementStrategy::pack;
};

struct PlacedPlan {
  PlacementGroup group;               // bundle k reserves stage k's GPU
  std::vector<ResourceSpec> bundles;  // what each bundle asks for
  std::vector<ActorOptions> stages;   // stage k: {"GPU": 1} of the planned type, in bundle k
};

// Creates the placement group for `plan` (a plan over `cluster`) and the
// ActorOptions of its stages; returns at once: group.ready() completes when
// every bundle is reserved, and actors created with stages[k] wait for it.
// Throws Error(invalid_argument) when a stage names a node or GPU that
// `cluster` does not have, or the plan has no stages.
PlacedPlan place_plan(const scheduler::Plan& plan, const scheduler::ClusterSpec& cluster,
                      const PlacePlanOptions& options = {});

// ---- version-2 plans (scheduler::plan_pipeline_v2) ----------------------------

struct PlacedStageV2 {
  int tp = 1;  // t: tensor-parallel shards per replica
  int dp = 1;  // d: replicas
  // One per GPU of the stage, replica-major: gpus[r * tp + s] is shard s of
  // replica r; each asks for {"GPU": 1} of the planned type in the stage's bundle.
  std::vector<ActorOptions> gpus;
  const ActorOptions& shard(int replica, int shard) const {
    return gpus.at(static_cast<std::size_t>(replica * tp + shard));
  }
};

struct PlacedPlanV2 {
  PlacementGroup group;               // bundle k reserves stage k's t x d GPUs together
  std::vector<ResourceSpec> bundles;  // bundle k: {"GPU": t*d} of the planned type, pinned to the node
  std::vector<PlacedStageV2> stages;
};

// place_plan for a version-2 plan: one bundle per stage holding all of its
// t x d GPUs (of the planned type, pinned to the planned node unless
// pin_nodes is off), so a stage's tensor-parallel shards and replicas are
// reserved together on one node; each GPU's actor options ask for one of
// them. extra_resources are asked by every GPU's actor, so a bundle holds
// them t x d times. Throws Error(invalid_argument) when a stage names a node
// or GPU that `cluster` lacks, has no GPUs, mixes GPU types, has a tp that
// is not 1, 2, 4 or 8 or does not divide its GPU count, or the plan has no
// stages.
PlacedPlanV2 place_plan(const scheduler::PlanV2& plan, const scheduler::ClusterSpec& cluster,
                        const PlacePlanOptions& options = {});

// The actors of a placed version-2 plan's stages, one per replica, for
// StagePipeline's replicated constructor (stage.hpp): out[k][r] =
// make(k, r, shards), shards being replica r's t ActorOptions (shard(r, s)
// for s < t; one entry when t = 1), each holding one of the stage's GPUs
// in its bundle. make creates the actor there (troupe::actor<Stage>(shards[0],
// ...), or a stage class that drives its own t tensor-parallel shards) and
// returns its handle. If make throws, the actors made so far are killed and
// the exception goes on.
//
//   auto placed = troupe::actors::place_plan(result.plan, cluster);
//   auto replicas = troupe::actors::create_stage_replicas(placed, [&](int k, int r, const auto& shards) {
//     return troupe::actor<MyStage>(shards.front(), k, ...);   // the same initial parameters for every r
//   });
//   troupe::actors::StagePipeline<MyStage> pipeline(replicas);
template <class Make>
auto create_stage_replicas(const PlacedPlanV2& placed, Make&& make)
    -> std::vector<std::vector<std::invoke_result_t<Make&, int, int, const std::vector<ActorOptions>&>>> {
  using Handle = std::invoke_result_t<Make&, int, int, const std::vector<ActorOptions>&>;
  std::vector<std::vector<Handle>> out(placed.stages.size());
  try {
    for (std::size_t k = 0; k < placed.stages.size(); ++k) {
      const PlacedStageV2& stage = placed.stages[k];
      for (int r = 0; r < stage.dp; ++r) {
        std::vector<ActorOptions> shards;
        for (int s = 0; s < stage.tp; ++s) shards.push_back(stage.shard(r, s));
        out[k].push_back(make(static_cast<int>(k), r, static_cast<const std::vector<ActorOptions>&>(shards)));
      }
    }
  } catch (...) {
    for (const auto& stage : out) {
      for (const auto& handle : stage) {
        try {
          troupe::kill(handle);
        } catch (...) {  // NOLINT(bugprone-empty-catch): already gone is what we want
        }
      }
    }
    throw;
  }
  return out;
}

}  // namespace troupe::actors
