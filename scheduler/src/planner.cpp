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

// The cost model of planner.hpp over prefix sums. evaluate() and the search
// both price stages through these functions, so the planner's optimum and
// the evaluation of the plan it returns are the same floating-point numbers.
// Every function is monotone in the way the search relies on: compute_s and
// memory_bytes never decrease when a range grows (prefix sums of values >= 0
// are non-decreasing and IEEE subtraction is monotone).
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
  double inter_bytes_per_s() const noexcept { return inter_bytes_per_s_; }
  double send_s(int last, double bytes_per_s) const noexcept { return output_bytes_[last] / bytes_per_s; }
  double flops(int first, int last) const noexcept { return flops_[last + 1] - flops_[first]; }

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

// ---- the exact search -------------------------------------------------------

// GPUs with equal (node, tflops, memory_gb) are interchangeable: the search
// counts how many of each class a suffix uses instead of naming GPUs.
struct GpuClass {
  int node = 0;
  double flops_per_s = 0;
  double memory_bytes = 0;
  std::vector<int> gpus;  // indexes into CostModel::gpus(), ascending
};

std::vector<GpuClass> gpu_classes(const CostModel& cost) {
  std::vector<GpuClass> classes;
  for (std::size_t g = 0; g < cost.gpus().size(); ++g) {
    const FlatGpu& gpu = cost.gpus()[g];
    auto same = [&](const GpuClass& c) {
      return c.node == gpu.node && c.flops_per_s == gpu.flops_per_s && c.memory_bytes == gpu.memory_bytes;
    };
    auto it = std::find_if(classes.begin(), classes.end(), same);
    if (it == classes.end()) {
      classes.push_back({gpu.node, gpu.flops_per_s, gpu.memory_bytes, {}});
      it = std::prev(classes.end());
    }
    it->gpus.push_back(static_cast<int>(g));
  }
  return classes;
}

// The suffix dynamic program of plan_pipeline() (see planner.hpp).
//
// A multiset u of classes is encoded in mixed radix: u = sum count[c] *
// stride[c]. value(u, n, i) is the smallest bottleneck of covering layers
// i..L-1 with exactly the GPUs of u, one stage each, the first stage on node
// n -- or infinity when that is impossible or not below the bound `best_`
// that held when the entry was computed. Entries below their bound are exact,
// which is all the recurrence and the reconstruction need: an entry pruned as
// ">= bound" can never be part of a plan better than the bound.
class Search {
 public:
  Search(const CostModel& cost, std::vector<GpuClass> classes, int node_count, int max_stages)
      : cost_(cost), classes_(std::move(classes)), nodes_(node_count), layers_(cost.layers()),
        max_stages_(max_stages) {
    suffix_count_ = 1;
    for (const GpuClass& c : classes_) {
      stride_.push_back(suffix_count_);
      suffix_count_ *= c.gpus.size() + 1;
    }
  }

  // Bytes the tables take; checked against the limit before run().
  static std::optional<std::size_t> table_bytes(const std::vector<GpuClass>& classes, int nodes, int layers) {
    std::size_t count = 1;
    for (const GpuClass& c : classes) {
      if (count > std::numeric_limits<std::size_t>::max() / (c.gpus.size() + 1)) return std::nullopt;
      count *= c.gpus.size() + 1;
    }
    const std::size_t per_suffix = static_cast<std::size_t>(layers) * (8 * static_cast<std::size_t>(nodes) + 18);
    if (count > std::numeric_limits<std::size_t>::max() / per_suffix) return std::nullopt;
    return count * per_suffix;
  }

  // Fills the tables; returns false when no valid plan exists.
  bool run() {
    const std::size_t layers = static_cast<std::size_t>(layers_);
    value_.assign(suffix_count_ * static_cast<std::size_t>(nodes_) * layers, kInfinity);
    best_value_.assign(suffix_count_ * layers, kInfinity);
    second_value_.assign(suffix_count_ * layers, kInfinity);
    best_node_.assign(suffix_count_ * layers, -1);

    // Per multiset: its size and summed FLOP/s (for the compute lower bound).
    std::vector<int> size(suffix_count_, 0);
    speed_.assign(suffix_count_, 0.0);
    std::vector<std::vector<std::size_t>> by_size(static_cast<std::size_t>(max_stages_) + 1);
    for (std::size_t u = 0; u < suffix_count_; ++u) {
      for (std::size_t c = 0; c < classes_.size(); ++c) {
        const int count = this->count(u, c);
        size[u] += count;
        speed_[u] += classes_[c].flops_per_s * count;
      }
      if (size[u] >= 1 && size[u] <= max_stages_) by_size[static_cast<std::size_t>(size[u])].push_back(u);
    }

    for (int stages = 1; stages <= max_stages_; ++stages) {
      for (const std::size_t u : by_size[static_cast<std::size_t>(stages)]) {
        // Layers 0..i-1 go to GPUs outside u (the complement multiset is
        // suffix_count_ - 1 - u in mixed radix): with none left, or no stage
        // left under max_stages, only i = 0 is a useful start.
        const double rest_speed = speed_[suffix_count_ - 1 - u];
        const bool prefix_possible = stages < max_stages_ && size[u] < gpu_count();
        const int last_start = prefix_possible ? layers_ - stages : 0;
        for (std::size_t c = 0; c < classes_.size(); ++c) {
          if (count(u, c) == 0) continue;
          for (int i = 0; i <= last_start; ++i) {
            if (best_ < kInfinity) {
              // Compute bound: bottleneck * (sum of FLOP/s) >= FLOP of the
              // range, for the suffix on u and the prefix on the rest. The
              // 1e-12 margin keeps rounding from cutting a plan below best_.
              double bound = cost_.flops(i, layers_ - 1) / speed_[u];
              if (i > 0) bound = std::max(bound, cost_.flops(0, i - 1) / rest_speed);
              if (bound * (1 - 1e-12) >= best_) continue;
            }
            relax(u, c, stages, i);
          }
        }
        summarize(u);
        for (int n = 0; n < nodes_; ++n) {
          const double complete = value(u, n, 0);
          if (complete < best_) {
            best_ = complete;
            best_suffix_ = u;
            best_first_node_ = n;
          }
        }
      }
    }
    return best_ < kInfinity;
  }

  double best() const noexcept { return best_; }
  std::uint64_t states_evaluated() const noexcept { return states_evaluated_; }

  struct Stage {
    std::size_t gpu_class;
    int first_layer;
    int last_layer;
  };

  // The stages of the best plan, by walking the tables from the best complete
  // state and taking, at each state, the choice that attains its value.
  std::vector<Stage> stages() const {
    std::vector<Stage> result;
    std::size_t u = best_suffix_;
    int node = best_first_node_;
    int first = 0;
    for (;;) {
      const int stages_left = size_of(u);
      double best = kInfinity;
      Stage chosen{};
      int next_node = -1;
      for (std::size_t c = 0; c < classes_.size(); ++c) {
        if (classes_[c].node != node || count(u, c) == 0) continue;
        const GpuClass& gpu = classes_[c];
        if (stages_left == 1) {
          if (cost_.memory_bytes(first, layers_ - 1, 1) > gpu.memory_bytes) continue;
          const double time = cost_.compute_s(first, layers_ - 1, gpu.flops_per_s);
          if (time < best) best = time, chosen = {c, first, layers_ - 1}, next_node = -1;
          continue;
        }
        const std::size_t rest = u - stride_[c];
        for (int last = first; last <= layers_ - stages_left; ++last) {
          if (cost_.memory_bytes(first, last, stages_left) > gpu.memory_bytes) break;
          const double compute = cost_.compute_s(first, last, gpu.flops_per_s);
          for (int n = 0; n < nodes_; ++n) {
            const double after = value(rest, n, last + 1);
            if (after == kInfinity) continue;
            const double time = compute + cost_.send_s(last, cost_.link_bytes_per_s(node, n));
            if (const double candidate = std::max(time, after); candidate < best) {
              best = candidate, chosen = {c, first, last}, next_node = n;
            }
          }
        }
      }
      if (best == kInfinity) throw std::logic_error("planner: no choice attains a finite table entry");
      result.push_back(chosen);
      if (next_node < 0) return result;
      u -= stride_[chosen.gpu_class];
      node = next_node;
      first = chosen.last_layer + 1;
    }
  }

 private:
  int count(std::size_t u, std::size_t c) const noexcept {
    return static_cast<int>((u / stride_[c]) % (classes_[c].gpus.size() + 1));
  }
  int size_of(std::size_t u) const noexcept {
    int total = 0;
    for (std::size_t c = 0; c < classes_.size(); ++c) total += count(u, c);
    return total;
  }
  int gpu_count() const noexcept {
    int total = 0;
    for (const GpuClass& c : classes_) total += static_cast<int>(c.gpus.size());
    return total;
  }
  std::size_t at(std::size_t u, int node, int layer) const noexcept {
    return (u * static_cast<std::size_t>(nodes_) + static_cast<std::size_t>(node)) * static_cast<std::size_t>(layers_) +
           static_cast<std::size_t>(layer);
  }
  std::size_t summary_at(std::size_t u, int layer) const noexcept {
    return u * static_cast<std::size_t>(layers_) + static_cast<std::size_t>(layer);
  }
  double value(std::size_t u, int node, int layer) const noexcept { return value_[at(u, node, layer)]; }

  // value(u, node of c, i) = min over the first stage's last layer b and the
  // next stage's node of max(time of i..b on c, value(u - c, next, b+1)).
  void relax(std::size_t u, std::size_t c, int stages, int i) {
    ++states_evaluated_;
    const GpuClass& gpu = classes_[c];
    double& slot = value_[at(u, gpu.node, i)];
    // Only values below both the slot and the best plan matter, so the scan
    // over b stops as soon as compute alone reaches that level (compute only
    // grows with b) or memory overflows (memory only grows with b).
    double level = std::min(slot, best_);
    if (stages == 1) {
      if (cost_.memory_bytes(i, layers_ - 1, 1) <= gpu.memory_bytes) {
        level = std::min(level, cost_.compute_s(i, layers_ - 1, gpu.flops_per_s));
      }
    } else {
      const std::size_t rest = u - stride_[c];
      const double intra = cost_.link_bytes_per_s(gpu.node, gpu.node);
      const double inter = cost_.inter_bytes_per_s();
      // value(rest, *, j) >= flops(j..L-1) / speed(rest), which shrinks as j
      // grows: first stages ending before the first j where that bound is
      // below `level` cannot help, so the scan starts there.
      int first_useful = i + 1;
      if (level < kInfinity) {
        int high = layers_ - stages + 1;
        while (first_useful < high) {
          const int mid = first_useful + (high - first_useful) / 2;
          if (cost_.flops(mid, layers_ - 1) / speed_[rest] * (1 - 1e-12) < level) high = mid;
          else first_useful = mid + 1;
        }
      }
      for (int b = first_useful - 1; b <= layers_ - stages; ++b) {
        if (cost_.memory_bytes(i, b, stages) > gpu.memory_bytes) break;
        const double compute = cost_.compute_s(i, b, gpu.flops_per_s);
        if (compute >= level) break;
        const std::size_t next = summary_at(rest, b + 1);
        const double same = value(rest, gpu.node, b + 1);
        if (same < level) level = std::min(level, std::max(compute + cost_.send_s(b, intra), same));
        const double other = best_node_[next] != gpu.node ? best_value_[next] : second_value_[next];
        if (other < level) level = std::min(level, std::max(compute + cost_.send_s(b, inter), other));
      }
    }
    if (level < best_) slot = level;
  }

  // Per start layer: the best value over first nodes and the best over the
  // other nodes, so relax() finds "next stage on a different node" in O(1).
  void summarize(std::size_t u) {
    for (int i = 0; i < layers_; ++i) {
      double first = kInfinity, second = kInfinity;
      int first_node = -1;
      for (int n = 0; n < nodes_; ++n) {
        const double v = value(u, n, i);
        if (v < first) second = first, first = v, first_node = n;
        else if (v < second) second = v;
      }
      const std::size_t k = summary_at(u, i);
      best_value_[k] = first;
      second_value_[k] = second;
      best_node_[k] = static_cast<std::int16_t>(first_node);
    }
  }

  const CostModel& cost_;
  std::vector<GpuClass> classes_;
  int nodes_;
  int layers_;
  int max_stages_;
  std::vector<std::size_t> stride_;
  std::size_t suffix_count_ = 1;
  std::vector<double> speed_;  // [u]: summed FLOP/s of the GPUs of u

  std::vector<double> value_;           // [u][node][layer]
  std::vector<double> best_value_;      // [u][layer]: min over nodes
  std::vector<double> second_value_;    // [u][layer]: min over the other nodes
  std::vector<std::int16_t> best_node_; // [u][layer]: the node of best_value_, -1 if none

  double best_ = kInfinity;  // the best complete plan so far
  std::size_t best_suffix_ = 0;
  int best_first_node_ = -1;
  std::uint64_t states_evaluated_ = 0;
};

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
  std::vector<bool> range_ok(plan.stages.size(), false);
  std::set<std::pair<int, int>> used;
  int expected_first = 0;
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
    if (s.first_layer < 0 || s.last_layer >= layers || s.first_layer > s.last_layer) {
      fail(fmt::format("{}: not a non-empty range of the model's layers 0-{}", stage_label(k), layers - 1));
    } else {
      range_ok[static_cast<std::size_t>(k)] = true;
    }
    if (s.first_layer != expected_first) {
      fail(fmt::format("{}: starts at layer {} but must start at layer {}{}", stage_label(k), s.first_layer,
                       expected_first, k == 0 ? "" : " (right after the previous stage)"));
    }
    expected_first = s.last_layer + 1;
  }
  if (stage_count > 0 && expected_first != layers) {
    fail(fmt::format("the stages end at layer {} but the model's last layer is {}", expected_first - 1, layers - 1));
  }

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

  for (int k = 0; k < stage_count; ++k) {
    const PlanStage& s = result.plan.stages[static_cast<std::size_t>(k)];
    if (result.plan.bottleneck_stage < 0 || s.time_s > result.plan.bottleneck_s) {
      result.plan.bottleneck_s = s.time_s;
      result.plan.bottleneck_stage = k;
    }
  }
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
  std::vector<GpuClass> classes = gpu_classes(cost);
  result.gpu_classes = classes.size();
  const int nodes = static_cast<int>(cluster.nodes.size());
  const std::optional<std::size_t> bytes = Search::table_bytes(classes, nodes, cost.layers());
  if (!bytes || *bytes > options.max_table_bytes) {
    result.status = PlanStatus::search_too_large;
    result.reason = fmt::format(
        "the exact search over {} GPU classes (GPUs that differ in node, tflops or memory_gb) on {} nodes "
        "and {} layers needs {} of tables, more than the limit of {}",
        classes.size(), nodes, cost.layers(), bytes ? gb(static_cast<double>(*bytes)) : std::string("too many bytes"),
        gb(static_cast<double>(options.max_table_bytes)));
    return result;
  }

  Search search(cost, classes, nodes, max_stages);
  const bool found = search.run();
  result.states_evaluated = search.states_evaluated();
  if (!found) {
    result.status = PlanStatus::infeasible;
    result.reason = infeasible_reason(model, cost, max_stages, natural);
    return result;
  }

  // Name GPUs: each stage takes its class's lowest-index GPU not yet taken.
  std::vector<std::size_t> taken(classes.size(), 0);
  Plan plan;
  for (const Search::Stage& stage : search.stages()) {
    const int flat = classes[stage.gpu_class].gpus[taken[stage.gpu_class]++];
    const FlatGpu& gpu = cost.gpus()[static_cast<std::size_t>(flat)];
    PlanStage out;
    out.node = cluster.nodes[static_cast<std::size_t>(gpu.node)].name;
    out.gpu = gpu.index;
    out.first_layer = stage.first_layer;
    out.last_layer = stage.last_layer;
    plan.stages.push_back(std::move(out));
  }
  PlanEvaluation evaluation = evaluate(model, cluster, plan);
  // The same arithmetic gives the same number; the margin only allows for a
  // compiler contracting the two call sites differently.
  if (!evaluation.valid ||
      std::abs(evaluation.plan.bottleneck_s - search.best()) > 1e-12 * std::abs(search.best())) {
    throw std::logic_error(fmt::format("planner: the plan found (bottleneck {} s) evaluates as {} with {} s: {}",
                                       search.best(), evaluation.valid ? "valid" : "invalid",
                                       evaluation.plan.bottleneck_s, evaluation.reason));
  }
  result.status = PlanStatus::optimal;
  result.plan = std::move(evaluation.plan);
  return result;
}

}  // namespace troupe::scheduler
