#include "troupe/actors/plan_placement.hpp"

#include <algorithm>

#include <fmt/format.h>

#include "troupe/runtime/error.hpp"

namespace troupe::actors {

scheduler::ClusterSpec cluster_spec(const std::vector<NodeDescription>& nodes, const LiveClusterOptions& options) {
  scheduler::ClusterSpec cluster;
  cluster.name = nodes.size() == 1 && nodes.front().name == "local" ? "local node" : "running cluster";
  cluster.inter_node_gbps = options.inter_node_gbps;
  for (const NodeDescription& node : nodes) {
    scheduler::ClusterNode out;
    out.name = node.name;
    out.intra_node_gbps = options.intra_node_gbps;
    std::vector<scheduler::GpuInfo> gpus = node.gpus;
    std::sort(gpus.begin(), gpus.end(), [](const auto& a, const auto& b) { return a.index < b.index; });
    for (const scheduler::GpuInfo& gpu : gpus) {
      const auto spec = scheduler::find_gpu_type(gpu.model, options.gpu_types);
      if (!spec) {
        throw_error(Errc::invalid_argument,
                    fmt::format("node {}{} has GPU {} of unknown type \"{}\": give its figures in "
                                "LiveClusterOptions::gpu_types, e.g. {{\"{}\", {{.tflops = 100, .memory_gb = 24}}}}",
                                node.name, node.hostname.empty() ? "" : " (" + node.hostname + ")", gpu.index,
                                gpu.model, gpu.model));
      }
      out.gpus.push_back({gpu.model, spec->tflops, spec->memory_gb});
    }
    if (!out.gpus.empty()) cluster.nodes.push_back(std::move(out));
  }
  if (cluster.nodes.empty()) throw_error(Errc::invalid_argument, "no alive node has a GPU to plan on");
  return cluster;
}

scheduler::ClusterSpec live_cluster_spec(const LiveClusterOptions& options) {
  return cluster_spec(troupe::nodes(), options);
}

PlacedPlan place_plan(const scheduler::Plan& plan, const scheduler::ClusterSpec& cluster,
                      const PlacePlanOptions& options) {
  if (plan.stages.empty()) throw_error(Errc::invalid_argument, "place_plan: the plan has no stages");
  PlacedPlan placed;
  for (std::size_t k = 0; k < plan.stages.size(); ++k) {
    const scheduler::PlanStage& stage = plan.stages[k];
    const auto node = std::find_if(cluster.nodes.begin(), cluster.nodes.end(),
                                   [&](const scheduler::ClusterNode& n) { return n.name == stage.node; });
    if (node == cluster.nodes.end()) {
      throw_error(Errc::invalid_argument,
                  fmt::format("place_plan: stage {} is on node \"{}\", which the cluster does not have", k, stage.node));
    }
    if (stage.gpu < 0 || static_cast<std::size_t>(stage.gpu) >= node->gpus.size()) {
      throw_error(Errc::invalid_argument, fmt::format("place_plan: stage {} is on GPU {} of node {}, which has {} GPUs",
                                                      k, stage.gpu, stage.node, node->gpus.size()));
    }
    const std::string& type = node->gpus[static_cast<std::size_t>(stage.gpu)].type;

    ResourceSpec bundle;
    bundle.amounts = options.extra_resources;
    bundle.amounts["GPU"] = 1;
    bundle.gpu_type = type;
    if (options.pin_nodes) bundle.amounts[scheduler::node_resource(stage.node)] = scheduler::kNodeResourceRequest;
    placed.bundles.push_back(bundle);

    ActorOptions actor;
    actor.resources = options.extra_resources;
    actor.resources["GPU"] = 1;
    actor.gpu_type = type;
    actor.bundle_index = static_cast<int>(k);
    placed.stages.push_back(std::move(actor));
  }
  placed.group = placement_group(placed.bundles, options.strategy, options.group_name);
  for (ActorOptions& stage : placed.stages) stage.placement_group = placed.group;
  return placed;
}

PlacedPlanV2 place_plan(const scheduler::PlanV2& plan, const scheduler::ClusterSpec& cluster,
                        const PlacePlanOptions& options) {
  if (plan.stages.empty()) throw_error(Errc::invalid_argument, "place_plan: the plan has no stages");
  PlacedPlanV2 placed;
  for (std::size_t k = 0; k < plan.stages.size(); ++k) {
    const scheduler::PlanStageV2& stage = plan.stages[k];
    const auto node = std::find_if(cluster.nodes.begin(), cluster.nodes.end(),
                                   [&](const scheduler::ClusterNode& n) { return n.name == stage.node; });
    if (node == cluster.nodes.end()) {
      throw_error(Errc::invalid_argument,
                  fmt::format("place_plan: stage {} is on node \"{}\", which the cluster does not have", k, stage.node));
    }
    if (stage.gpus.empty()) throw_error(Errc::invalid_argument, fmt::format("place_plan: stage {} has no GPUs", k));
    const int count = static_cast<int>(stage.gpus.size());
    if ((stage.tp != 1 && stage.tp != 2 && stage.tp != 4 && stage.tp != 8) || count % stage.tp != 0) {
      throw_error(Errc::invalid_argument, fmt::format("place_plan: stage {} has tp {}, which is not 1, 2, 4 or 8 "
                                                      "dividing its {} GPUs", k, stage.tp, count));
    }
    std::string type;
    for (const int gpu : stage.gpus) {
      if (gpu < 0 || static_cast<std::size_t>(gpu) >= node->gpus.size()) {
        throw_error(Errc::invalid_argument, fmt::format("place_plan: stage {} is on GPU {} of node {}, which has {} GPUs",
                                                        k, gpu, stage.node, node->gpus.size()));
      }
      const std::string& this_type = node->gpus[static_cast<std::size_t>(gpu)].type;
      if (!type.empty() && this_type != type) {
        throw_error(Errc::invalid_argument, fmt::format("place_plan: stage {} mixes GPU types {} and {}; a bundle "
                                                        "asks for one type", k, type, this_type));
      }
      type = this_type;
    }

    ResourceSpec bundle;
    for (const auto& [name, amount] : options.extra_resources) bundle.amounts[name] = amount * count;
    bundle.amounts["GPU"] = count;
    bundle.gpu_type = type;
    if (options.pin_nodes) bundle.amounts[scheduler::node_resource(stage.node)] = scheduler::kNodeResourceRequest;
    placed.bundles.push_back(bundle);

    PlacedStageV2 out;
    out.tp = stage.tp;
    out.dp = count / stage.tp;
    for (int g = 0; g < count; ++g) {
      ActorOptions actor;
      actor.resources = options.extra_resources;
      actor.resources["GPU"] = 1;
      actor.gpu_type = type;
      actor.bundle_index = static_cast<int>(k);
      out.gpus.push_back(std::move(actor));
    }
    placed.stages.push_back(std::move(out));
  }
  placed.group = placement_group(placed.bundles, options.strategy, options.group_name);
  for (PlacedStageV2& stage : placed.stages) {
    for (ActorOptions& gpu : stage.gpus) gpu.placement_group = placed.group;
  }
  return placed;
}

}  // namespace troupe::actors
