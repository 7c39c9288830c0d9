// The pipeline planner: validation, the cost model shared by evaluate() and
// the search, the uniform baseline and the exact search (see planner.hpp).
#include "troupe/scheduler/planner.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <map>
#include <optional>
#include <set>
#include <stdexcept>
#include <utility>

#include <fmt/format.h>

#include "planner_search.hpp"
#include "troupe/scheduler/error.hpp"

namespace troupe::scheduler {

namespace {

constexpr double kInfinity = std::numeric_limits<double>::infinity();

std::string gb(double bytes) { return fmt::format("{:.2f} GB", bytes / 1e9); }

// "must be a finite number >= 0" checks, with the field named for the message.
void require_non_negative(double value, const std::string& where, std::string_view field) {
  if (!std::isfinite(value) || value < 0) {
    throw SpecError(fmt::format("{}: {} must be a finite number >= 0, got {}", where, field, value));
  }
}

void require_positive(double value, const std::string& where, std::string_view field) {
  if (!std::isfinite(value) || value <= 0) {
    throw SpecError(fmt::format("{}: {} must be a finite number > 0, got {}", where, field, value));
  }
}

// One GPU of the cluster in file order, with the figures the cost model uses.
struct FlatGpu {
  int node = 0;
  int index = 0;             // within its node
  double flops_per_s = 0;    // tflops * 1e12
  double memory_bytes = 0;   // memory_gb * 1e9
};

// The cost model of planner.hpp over prefix sums, for evaluate() and the
// infeasibility reasons. The search (planner_search.hpp) prices stages with
// planner_v2.cpp's model at t = d = 1, which does the same operations in the
// same order (x / (1 * F * 1.0 * 1) is x / F), so the planner's optimum and
// the evaluation of the plan it returns are the same floating-point numbers.
class CostModel {
 public:
  CostModel(const ModelProfile& model, const ClusterSpec& cluster) {
    const std::size_t layers = model.layers.size();
    flops_.assign(layers + 1, 0.0);
    params_.assign(layers + 1, 0.0);
    activations_.assign(layers + 1, 0.0);
    for (std::size_t l = 0; l < layers; ++l) {
      const LayerProfile& layer = model.layers[l];
      flops_[l + 1] = flops_[l] + layer.flops;
      params_[l + 1] = params_[l] + layer.param_bytes;
      activations_[l + 1] = activations_[l] + layer.activation_bytes;
      output_bytes_.push_back(layer.activation_bytes);
    }
    for (std::size_t n = 0; n < cluster.nodes.size(); ++n) {
      const ClusterNode& node = cluster.nodes[n];
      intra_bytes_per_s_.push_back(node.intra_node_gbps * 1e9);
      for (std::size_t g = 0; g < node.gpus.size(); ++g) {
        gpus_.push_back({static_cast<int>(n), static_cast<int>(g), node.gpus[g].tflops * 1e12,
                         node.gpus[g].memory_gb * 1e9});
      }
    }
    inter_bytes_per_s_ = cluster.inter_node_gbps * 1e9;
  }

  int layers() const noexcept { return static_cast<int>(output_bytes_.size()); }
  const std::vector<FlatGpu>& gpus() const noexcept { return gpus_; }

  double compute_s(int first, int last, double flops_per_s) const noexcept {
    return (flops_[last + 1] - flops_[first]) / flops_per_s;
  }
  double params(int first, int last) const noexcept { return params_[last + 1] - params_[first]; }
  double activations(int first, int last) const noexcept {
    return activations_[last + 1] - activations_[first];
  }
  // `in_flight` = S - k, the stage's micro-batches in flight under 1F1B.
  double memory_bytes(int first, int last, int in_flight) const noexcept {
    return params(first, last) + static_cast<double>(in_flight) * activations(first, last);
  }
  // Bandwidth from a stage on `node` to the next stage on `next_node`.
  double link_bytes_per_s(int node, int next_node) const noexcept {
    return node == next_node ? intra_bytes_per_s_[static_cast<std::size_t>(node)] : inter_bytes_per_s_;
  }
  double send_s(int last, double bytes_per_s) const noexcept { return output_bytes_[last] / bytes_per_s; }

 private:
  std::vector<double> flops_, params_, activations_;  // prefix sums, size L+1
  std::vector<double> output_bytes_;                  // activation_bytes per layer
  std::vector<double> intra_bytes_per_s_;             // per node
  double inter_bytes_per_s_ = 0;
  std::vector<FlatGpu> gpus_;
};

std::string layer_label(const ModelProfile& model, int layer) {
  return fmt::format("layer {} ({})", layer, model.layers[static_cast<std::size_t>(layer)].name);
}

// Why no valid plan exists, naming the constraint that fails.
std::string infeasible_reason(const ModelProfile& model, const CostModel& cost, int max_stages,
                              int natural_max_stages) {
  double largest = 0;
  std::vector<double> capacities;
  for (const FlatGpu& gpu : cost.gpus()) {
    largest = std::max(largest, gpu.memory_bytes);
    capacities.push_back(gpu.memory_bytes);
  }
  // Every stage keeps at least one micro-batch of its activations.
  for (int l = 0; l < cost.layers(); ++l) {
    const double params = cost.params(l, l);
    if (params > largest) {
      return fmt::format("{} needs {} of parameters but the largest GPU has {}", layer_label(model, l),
                         gb(params), gb(largest));
    }
    if (cost.memory_bytes(l, l, 1) > largest) {
      return fmt::format("{} needs {} ({} of parameters + {} of activations for one micro-batch) but the "
                         "largest GPU has {}",
                         layer_label(model, l), gb(cost.memory_bytes(l, l, 1)), gb(params),
                         gb(cost.activations(l, l)), gb(largest));
    }
  }
  std::sort(capacities.rbegin(), capacities.rend());
  capacities.resize(static_cast<std::size_t>(max_stages));
  double together = 0;
  for (double c : capacities) together += c;
  const double params = cost.params(0, cost.layers() - 1);
  if (params > together) {
    return fmt::format("the model's parameters need {} but the {} largest GPUs usable have {} together",
                       gb(params), max_stages, gb(together));
  }
  if (max_stages < natural_max_stages) {
    return fmt::format("no assignment fits memory with at most {} stage{} (parameters plus (S-k) "
                       "micro-batches of activations per stage)",
                       max_stages, max_stages == 1 ? "" : "s");
  }
  return fmt::format("no assignment fits memory for any stage count from 1 to {} (parameters plus "
                     "(S-k) micro-batches of activations per stage)",
                     max_stages);
}

}  // namespace

std::size_t ClusterSpec::gpu_count() const noexcept {
  std::size_t count = 0;
  for (const ClusterNode& node : nodes) count += node.gpus.size();
  return count;
}

double Plan::throughput() const noexcept {
  if (!(bottleneck_s >= 0)) return 0;
  if (bottleneck_s == 0) return std::numeric_limits<double>::infinity();
  return 1.0 / bottleneck_s;
}

void validate(const ModelProfile& model) {
  if (model.layers.empty()) throw SpecError("the model has no layers: \"layers\" must not be empty");
  if (model.layers.size() > static_cast<std::size_t>(std::numeric_limits<int>::max() / 2)) {
    throw SpecError(fmt::format("the model has {} layers, too many", model.layers.size()));
  }
  for (std::size_t l = 0; l < model.layers.size(); ++l) {
    const LayerProfile& layer = model.layers[l];
    const std::string where = fmt::format("layers[{}] (\"{}\")", l, layer.name);
    require_non_negative(layer.flops, where, "flops");
    require_non_negative(layer.param_bytes, where, "param_bytes");
    require_non_negative(layer.activation_bytes, where, "activation_bytes");
    if (layer.tp_bytes) require_non_negative(*layer.tp_bytes, where, "tp_bytes");
    if (layer.grad_bytes) require_non_negative(*layer.grad_bytes, where, "grad_bytes");
  }
}

void validate(const ClusterSpec& cluster) {
  require_positive(cluster.inter_node_gbps, "cluster", "inter_node_gbps");
  if (cluster.nodes.empty()) throw SpecError("the cluster has no nodes: \"nodes\" must not be empty");
  std::set<std::string> names;
  for (std::size_t n = 0; n < cluster.nodes.size(); ++n) {
    const ClusterNode& node = cluster.nodes[n];
    const std::string where = fmt::format("nodes[{}] (\"{}\")", n, node.name);
    if (node.name.empty()) throw SpecError(fmt::format("nodes[{}]: name must not be empty", n));
    if (!names.insert(node.name).second) {
      throw SpecError(fmt::format("{}: the name is used by another node; plans name GPUs by node name", where));
    }
    require_positive(node.intra_node_gbps, where, "intra_node_gbps");
    for (std::size_t g = 0; g < node.gpus.size(); ++g) {
      const std::string gpu_where = fmt::format("{}.gpus[{}]", where, g);
      require_positive(node.gpus[g].tflops, gpu_where, "tflops");
      require_positive(node.gpus[g].memory_gb, gpu_where, "memory_gb");
    }
  }
  if (cluster.gpu_count() == 0) throw SpecError("the cluster has no GPUs: every node's \"gpus\" is empty");
  for (const auto& [t, efficiency] : cluster.tp_efficiency) {
    if (t != 1 && t != 2 && t != 4 && t != 8) {
      throw SpecError(fmt::format("cluster: tp_efficiency has key \"{}\"; only 1, 2, 4 and 8 are allowed", t));
    }
    require_positive(efficiency, "cluster", fmt::format("tp_efficiency[\"{}\"]", t));
  }
  if (cluster.nodes.size() > static_cast<std::size_t>(std::numeric_limits<std::int16_t>::max())) {
    throw SpecError(fmt::format("the cluster has {} nodes, too many", cluster.nodes.size()));
  }
}

PlanEvaluation evaluate(const ModelProfile& model, const ClusterSpec& cluster, const Plan& plan) {
  validate(model);
  validate(cluster);
  const CostModel cost(model, cluster);
  const int layers = cost.layers();
  const int stage_count = static_cast<int>(plan.stages.size());

  PlanEvaluation result;
  result.plan.stages = plan.stages;
  auto fail = [&](std::string reason) {
    if (result.reason.empty()) result.reason = std::move(reason);
  };
  auto stage_label = [&](int k) {
    const PlanStage& s = plan.stages[static_cast<std::size_t>(k)];
    return fmt::format("stage {} ({} GPU {}, layers {}-{})", k, s.node, s.gpu, s.first_layer, s.last_layer);
  };

  std::map<std::string, int, std::less<>> node_index;
  for (std::size_t n = 0; n < cluster.nodes.size(); ++n) node_index.emplace(cluster.nodes[n].name, static_cast<int>(n));

  // Structure first: GPUs that exist and appear once, ranges that tile the chain.
  if (plan.stages.empty()) fail("the plan has no stages");
  if (plan.stages.size() > cluster.gpu_count()) {
    fail(fmt::format("the plan has {} stages but the cluster has {} GPUs", plan.stages.size(), cluster.gpu_count()));
  }
  std::vector<int> stage_node(plan.stages.size(), -1);
  std::vector<const ClusterGpu*> stage_gpu(plan.stages.size(), nullptr);
  std::set<std::pair<int, int>> used;
  for (int k = 0; k < stage_count; ++k) {
    const PlanStage& s = plan.stages[static_cast<std::size_t>(k)];
    if (auto it = node_index.find(s.node); it == node_index.end()) {
      fail(fmt::format("{}: no node named \"{}\" in the cluster", stage_label(k), s.node));
    } else if (const auto& gpus = cluster.nodes[static_cast<std::size_t>(it->second)].gpus;
               s.gpu < 0 || static_cast<std::size_t>(s.gpu) >= gpus.size()) {
      fail(fmt::format("{}: node \"{}\" has no GPU {} (it has {})", stage_label(k), s.node, s.gpu, gpus.size()));
    } else {
      stage_node[static_cast<std::size_t>(k)] = it->second;
      stage_gpu[static_cast<std::size_t>(k)] = &gpus[static_cast<std::size_t>(s.gpu)];
      if (!used.emplace(it->second, s.gpu).second) {
        fail(fmt::format("{}: GPU {} of node \"{}\" is already used by an earlier stage", stage_label(k), s.gpu, s.node));
      }
    }
  }
  const std::vector<bool> range_ok = detail::check_layer_tiling(plan.stages, layers, stage_label, fail);

  // Costs of every stage that resolves; then memory.
  for (int k = 0; k < stage_count; ++k) {
    const std::size_t sk = static_cast<std::size_t>(k);
    PlanStage& out = result.plan.stages[sk];
    if (stage_gpu[sk] == nullptr || !range_ok[sk]) continue;
    const ClusterGpu& gpu = *stage_gpu[sk];
    out.gpu_type = gpu.type;
    out.compute_s = cost.compute_s(out.first_layer, out.last_layer, gpu.tflops * 1e12);
    if (k + 1 < stage_count && stage_node[sk + 1] >= 0) {
      out.comm_s = cost.send_s(out.last_layer, cost.link_bytes_per_s(stage_node[sk], stage_node[sk + 1]));
    }
    out.time_s = out.compute_s + out.comm_s;
    out.memory_bytes = cost.memory_bytes(out.first_layer, out.last_layer, stage_count - k);
    out.memory_capacity_bytes = gpu.memory_gb * 1e9;
  }
  for (int k = 0; k < stage_count; ++k) {
    const std::size_t sk = static_cast<std::size_t>(k);
    const PlanStage& s = result.plan.stages[sk];
    if (stage_gpu[sk] == nullptr || !range_ok[sk] || s.memory_bytes <= s.memory_capacity_bytes) continue;
    fail(fmt::format("{} needs {} ({} of parameters + {} x {} of activations) but the {} has {}", stage_label(k),
                     gb(s.memory_bytes), gb(cost.params(s.first_layer, s.last_layer)), stage_count - k,
                     gb(cost.activations(s.first_layer, s.last_layer)), s.gpu_type, gb(s.memory_capacity_bytes)));
  }

  detail::pick_bottleneck(result.plan);
  result.valid = result.reason.empty();
  return result;
}

Plan uniform_plan(const ModelProfile& model, const ClusterSpec& cluster) {
  validate(model);
  validate(cluster);
  const std::size_t layers = model.layers.size();
  const std::size_t stages = std::min(cluster.gpu_count(), layers);
  Plan plan;
  std::size_t next_layer = 0;
  for (const ClusterNode& node : cluster.nodes) {
    for (std::size_t g = 0; g < node.gpus.size() && plan.stages.size() < stages; ++g) {
      const std::size_t k = plan.stages.size();
      const std::size_t size = layers / stages + (k < layers % stages ? 1 : 0);
      PlanStage stage;
      stage.node = node.name;
      stage.gpu = static_cast<int>(g);
      stage.first_layer = static_cast<int>(next_layer);
      stage.last_layer = static_cast<int>(next_layer + size - 1);
      next_layer += size;
      plan.stages.push_back(std::move(stage));
    }
  }
  return plan;
}

PlanResult plan_pipeline(const ModelProfile& model, const ClusterSpec& cluster, const PlannerOptions& options) {
  validate(model);
  validate(cluster);
  if (options.max_stages < 0) {
    throw SpecError(fmt::format("max_stages must be >= 0 (0 = no limit), got {}", options.max_stages));
  }
  const CostModel cost(model, cluster);
  const int natural = static_cast<int>(std::min<std::size_t>(cluster.gpu_count(), model.layers.size()));
  const int max_stages = options.max_stages == 0 ? natural : std::min(natural, options.max_stages);

  PlanResult result;
  // The search is version 2's with t = d = 1 (planner_search.hpp).
  const detail::OneGpuSearch search =
      detail::search_one_gpu_stages(model, cluster, max_stages, options.max_table_bytes);
  result.gpu_classes = search.gpu_classes;
  result.states_evaluated = search.states_evaluated;
  if (search.status == PlanStatus::search_too_large) {
    result.status = PlanStatus::search_too_large;
    result.reason = search.reason;
    return result;
  }
  if (search.status != PlanStatus::optimal) {
    result.status = PlanStatus::infeasible;
    result.reason = infeasible_reason(model, cost, max_stages, natural);
    return result;
  }

  Plan plan;
  for (const detail::OneGpuStage& stage : search.stages) {
    PlanStage out;
    out.node = cluster.nodes[static_cast<std::size_t>(stage.node)].name;
    out.gpu = stage.gpu;
    out.first_layer = stage.first_layer;
    out.last_layer = stage.last_layer;
    plan.stages.push_back(std::move(out));
  }
  PlanEvaluation evaluation = evaluate(model, cluster, plan);
  // The same arithmetic gives the same number; the margin only allows for a
  // compiler contracting the two call sites differently.
  if (!evaluation.valid ||
      std::abs(evaluation.plan.bottleneck_s - search.bottleneck_s) > 1e-12 * std::abs(search.bottleneck_s)) {
    throw std::logic_error(fmt::format("planner: the plan found (bottleneck {} s) evaluates as {} with {} s: {}",
                                       search.bottleneck_s, evaluation.valid ? "valid" : "invalid",
                                       evaluation.plan.bottleneck_s, evaluation.reason));
  }
  result.status = PlanStatus::optimal;
  result.plan = std::move(evaluation.plan);
  return result;
}

}  // namespace troupe::scheduler
