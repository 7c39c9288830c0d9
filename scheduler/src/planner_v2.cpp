// Version 2 of the pipeline planner: the cost model shared by evaluate_v2()
// and the search, and the exact search (see planner_v2.hpp).
#include "troupe/scheduler/planner_v2.hpp"

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
#include <fmt/ranges.h>

#include "planner_search.hpp"
#include "troupe/scheduler/error.hpp"

namespace troupe::scheduler {

namespace {

constexpr double kInfinity = std::numeric_limits<double>::infinity();
// Memory fits up to this relative excess (the shared README's tolerance).
constexpr double kMemoryTolerance = 1e-9;

std::string gb(double bytes) { return fmt::format("{:.2f} GB", bytes / 1e9); }

int tp_index(int t) {
  switch (t) {
    case 1: return 0;
    case 2: return 1;
    case 4: return 2;
    case 8: return 3;
    default: return -1;
  }
}

// The cost model of planner_v2.hpp over prefix sums. evaluate_v2() and the
// search both price stages through these functions, in the same order
// (((compute + tp) + sync) + comm), so the optimum the search finds and the
// evaluation of the plan it returns are the same floating-point numbers.
// compute, tp, sync and memory never decrease when a range grows (prefix
// sums of values >= 0 are non-decreasing and IEEE subtraction is monotone),
// which the search's early exits rely on.
class CostModelV2 {
 public:
  // `one_gpu_stages`: version 1's model for plan_pipeline(), which never
  // splits a stage, ignores tp_efficiency and has no memory tolerance.
  CostModelV2(const ModelProfile& model, const ClusterSpec& cluster, int micro_batches, bool one_gpu_stages = false)
      : micro_batches_(micro_batches), memory_tolerance_(one_gpu_stages ? 0.0 : kMemoryTolerance) {
    const std::size_t layers = model.layers.size();
    flops_.assign(layers + 1, 0.0);
    params_.assign(layers + 1, 0.0);
    activations_.assign(layers + 1, 0.0);
    tp_bytes_.assign(layers + 1, 0.0);
    grad_bytes_.assign(layers + 1, 0.0);
    unsplittable_.assign(layers + 1, 0);
    for (std::size_t l = 0; l < layers; ++l) {
      const LayerProfile& layer = model.layers[l];
      flops_[l + 1] = flops_[l] + layer.flops;
      params_[l + 1] = params_[l] + layer.param_bytes;
      activations_[l + 1] = activations_[l] + layer.activation_bytes;
      tp_bytes_[l + 1] = tp_bytes_[l] + layer.tp_bytes.value_or(0.0);
      grad_bytes_[l + 1] = grad_bytes_[l] + layer.grad_bytes.value_or(layer.param_bytes / 4);
      unsplittable_[l + 1] = unsplittable_[l] + (layer.tp_bytes ? 0 : 1);
      output_bytes_.push_back(layer.activation_bytes);
    }
    for (const ClusterNode& node : cluster.nodes) intra_bytes_per_s_.push_back(node.intra_node_gbps * 1e9);
    inter_bytes_per_s_ = cluster.inter_node_gbps * 1e9;
    for (const int t : kTensorParallelDegrees) {
      efficiency_[static_cast<std::size_t>(t)] = one_gpu_stages ? 1.0 : tp_efficiency(cluster, t);
    }
  }

  int layers() const noexcept { return static_cast<int>(output_bytes_.size()); }
  double efficiency(int t) const noexcept { return efficiency_[static_cast<std::size_t>(t) & 15]; }
  double flops(int first, int last) const noexcept { return flops_[last + 1] - flops_[first]; }
  double params(int first, int last) const noexcept { return params_[last + 1] - params_[first]; }
  double activations(int first, int last) const noexcept { return activations_[last + 1] - activations_[first]; }
  bool splittable(int first, int last) const noexcept { return unsplittable_[last + 1] == unsplittable_[first]; }

  double compute_s(int first, int last, double flops_per_s, int t, int d) const noexcept {
    return flops(first, last) / (t * flops_per_s * efficiency(t) * d);
  }
  double tp_s(int first, int last, int node, int t, int d) const noexcept {
    if (t == 1) return 0;
    return (tp_bytes_[last + 1] - tp_bytes_[first]) * (2.0 * (t - 1) / t) / (intra(node) * d);
  }
  double sync_s(int first, int last, int node, int t, int d) const noexcept {
    if (d == 1) return 0;
    return (2.0 * (d - 1) / d) * (grad_bytes_[last + 1] - grad_bytes_[first]) / t / intra(node) / micro_batches_;
  }
  // Everything but the send: ((compute + tp) + sync).
  double local_s(int first, int last, int node, double flops_per_s, int t, int d) const noexcept {
    return compute_s(first, last, flops_per_s, t, d) + tp_s(first, last, node, t, d) + sync_s(first, last, node, t, d);
  }
  double send_s(int last, double bytes_per_s, int d) const noexcept { return output_bytes_[last] / (bytes_per_s * d); }
  // `in_flight` = S - k; per GPU of a tensor-parallel group of t.
  double memory_bytes(int first, int last, int in_flight, int t) const noexcept {
    return (params(first, last) + static_cast<double>(in_flight) * activations(first, last)) / t;
  }
  // What fits in `capacity_bytes`, with the model's tolerance.
  double memory_limit(double capacity_bytes) const noexcept { return capacity_bytes * (1 + memory_tolerance_); }
  double intra(int node) const noexcept { return intra_bytes_per_s_[static_cast<std::size_t>(node)]; }
  double inter() const noexcept { return inter_bytes_per_s_; }
  double link_bytes_per_s(int node, int next_node) const noexcept {
    return node == next_node ? intra(node) : inter_bytes_per_s_;
  }

 private:
  int micro_batches_;
  double memory_tolerance_;
  std::vector<double> flops_, params_, activations_, tp_bytes_, grad_bytes_;  // prefix sums, size L+1
  std::vector<int> unsplittable_;  // prefix counts of layers without tp_bytes
  std::vector<double> output_bytes_;
  std::vector<double> intra_bytes_per_s_;
  double inter_bytes_per_s_ = 0;
  double efficiency_[16] = {};  // [t] for t in 1, 2, 4, 8
};

double memory_limit(double capacity_bytes) { return capacity_bytes * (1 + kMemoryTolerance); }

// ---- the exact search -------------------------------------------------------

// GPUs with equal (node, tflops, memory_gb) are interchangeable, and only
// such GPUs may form a stage: the search counts how many of each class a
// suffix uses instead of naming GPUs.
struct GpuClass {
  int node = 0;
  double flops_per_s = 0;
  double memory_bytes = 0;
  std::vector<std::pair<int, int>> gpus;  // (node, index) in file order
};

std::vector<GpuClass> gpu_classes(const ClusterSpec& cluster) {
  std::vector<GpuClass> classes;
  for (std::size_t n = 0; n < cluster.nodes.size(); ++n) {
    const ClusterNode& node = cluster.nodes[n];
    for (std::size_t g = 0; g < node.gpus.size(); ++g) {
      const double flops_per_s = node.gpus[g].tflops * 1e12, memory = node.gpus[g].memory_gb * 1e9;
      auto it = std::find_if(classes.begin(), classes.end(), [&](const GpuClass& c) {
        return c.node == static_cast<int>(n) && c.flops_per_s == flops_per_s && c.memory_bytes == memory;
      });
      if (it == classes.end()) {
        classes.push_back({static_cast<int>(n), flops_per_s, memory, {}});
        it = std::prev(classes.end());
      }
      it->gpus.emplace_back(static_cast<int>(n), static_cast<int>(g));
    }
  }
  return classes;
}

// A way for one stage to use a class: g GPUs as t x d.
struct Split {
  int gpus, t, d;
};

struct SearchLimits {
  int max_stages = 1;
  int max_tp = 8;
  int max_dp = 0;  // 0: no limit
};

// The suffix dynamic program of plan_pipeline_v2() (see planner_v2.hpp).
//
// A multiset u of classes is encoded in mixed radix (u = sum count[c] *
// stride[c]). value(u, s, n, i) is the smallest bottleneck of covering layers
// i..L-1 with exactly the GPUs of u in exactly s stages, the first on node n
// -- or infinity when that is impossible or not below the bound best_ that
// held when the entry was computed. Entries below their bound are exact,
// which is all the recurrence and the reconstruction need (as in version 1).
// For each u only s in [fewest(u), most(u)] is stored: fewest(u) stages need
// at least one per class present and per largest group, most(u) is |u| or
// max_stages.
class SearchV2 {
 public:
  SearchV2(const CostModelV2& cost, const std::vector<GpuClass>& classes, int node_count, SearchLimits limits)
      : cost_(cost), classes_(classes), nodes_(node_count), layers_(cost.layers()), limits_(limits) {
    suffix_count_ = 1;
    for (const GpuClass& c : classes_) {
      stride_.push_back(suffix_count_);
      suffix_count_ *= c.gpus.size() + 1;
      std::vector<Split> splits;
      for (int g = 1; g <= static_cast<int>(c.gpus.size()); ++g) {
        for (const int t : kTensorParallelDegrees) {
          if (t > limits_.max_tp || g % t != 0) continue;
          const int d = g / t;
          if (limits_.max_dp > 0 && d > limits_.max_dp) continue;
          splits.push_back({g, t, d});
        }
      }
      splits_.push_back(std::move(splits));
    }
    best_efficiency_ = 0;
    for (const int t : kTensorParallelDegrees) {
      if (t <= limits_.max_tp) best_efficiency_ = std::max(best_efficiency_, cost_.efficiency(t));
    }
  }

  // Sizes the tables (without allocating them); nullopt on overflow.
  std::optional<std::size_t> table_bytes() {
    if (!layout()) return std::nullopt;
    const std::size_t per_row = static_cast<std::size_t>(layers_) * (8 * static_cast<std::size_t>(nodes_) + 18);
    if (rows_ > std::numeric_limits<std::size_t>::max() / per_row) return std::nullopt;
    return rows_ * per_row;
  }

  // Fills the tables; returns false when no plan below `upper_bound` exists.
  bool run(double upper_bound) {
    best_ = upper_bound;
    const std::size_t layers = static_cast<std::size_t>(layers_);
    value_.assign(rows_ * static_cast<std::size_t>(nodes_) * layers, kInfinity);
    best_value_.assign(rows_ * layers, kInfinity);
    second_value_.assign(rows_ * layers, kInfinity);
    best_node_.assign(rows_ * layers, -1);

    int total_gpus = 0;
    for (const GpuClass& c : classes_) total_gpus += static_cast<int>(c.gpus.size());
    for (int s = 1; s <= limits_.max_stages; ++s) {
      for (std::size_t u = 1; u < suffix_count_; ++u) {
        if (s < fewest_[u] || s > most_[u]) continue;
        const double rest_speed = speed_[suffix_count_ - 1 - u];
        const bool prefix_possible = s < limits_.max_stages && size_[u] < total_gpus;
        const int last_start = prefix_possible ? layers_ - s : 0;
        for (std::size_t c = 0; c < classes_.size(); ++c) {
          const int have = count(u, c);
          for (const Split& split : splits_[c]) {
            if (split.gpus > have) break;  // splits are ordered by g
            const std::size_t rest = u - static_cast<std::size_t>(split.gpus) * stride_[c];
            if (s == 1 ? rest != 0 : rest == 0 || s - 1 < fewest_[rest] || s - 1 > most_[rest]) continue;
            for (int i = 0; i <= last_start; ++i) {
              if (best_ < kInfinity) {
                // Compute bound: every stage's compute is at least its FLOP
                // over its GPUs' FLOP/s times the best efficiency, so the
                // bottleneck of the suffix on u is at least FLOP(i..) over
                // u's FLOP/s; likewise for the prefix on the rest. The 1e-12
                // margin keeps rounding from cutting a plan below best_.
                double bound = cost_.flops(i, layers_ - 1) / (speed_[u] * best_efficiency_);
                if (i > 0) bound = std::max(bound, cost_.flops(0, i - 1) / (rest_speed * best_efficiency_));
                if (bound * (1 - 1e-12) >= best_) continue;
              }
              relax(u, s, c, split, rest, i);
            }
          }
        }
        summarize(u, s);
        for (int n = 0; n < nodes_; ++n) {
          const double complete = value(u, s, n, 0);
          if (complete < best_) {
            best_ = complete;
            best_suffix_ = u;
            best_stages_ = s;
            best_first_node_ = n;
            found_ = true;
          }
        }
      }
    }
    return found_;
  }

  double best() const noexcept { return best_; }
  std::uint64_t states_evaluated() const noexcept { return states_evaluated_; }

  struct Stage {
    std::size_t gpu_class;
    Split split;
    int first_layer;
    int last_layer;
  };

  // The stages of the best plan, by walking the tables from the best complete
  // state and taking, at each state, the choice that attains its value.
  std::vector<Stage> stages() const {
    std::vector<Stage> result;
    std::size_t u = best_suffix_;
    int s = best_stages_;
    int node = best_first_node_;
    int first = 0;
    for (;;) {
      double best = kInfinity;
      Stage chosen{};
      int next_node = -1;
      for (std::size_t c = 0; c < classes_.size(); ++c) {
        if (classes_[c].node != node) continue;
        const double limit = cost_.memory_limit(classes_[c].memory_bytes);
        for (const Split& split : splits_[c]) {
          if (split.gpus > count(u, c)) break;
          const std::size_t rest = u - static_cast<std::size_t>(split.gpus) * stride_[c];
          if (s == 1) {
            if (rest != 0 || (split.t > 1 && !cost_.splittable(first, layers_ - 1)) ||
                cost_.memory_bytes(first, layers_ - 1, 1, split.t) > limit) {
              continue;
            }
            const double time =
                cost_.local_s(first, layers_ - 1, node, classes_[c].flops_per_s, split.t, split.d);
            if (time < best) best = time, chosen = {c, split, first, layers_ - 1}, next_node = -1;
            continue;
          }
          if (rest == 0 || s - 1 < fewest_[rest] || s - 1 > most_[rest]) continue;
          for (int last = first; last <= layers_ - s; ++last) {
            if (split.t > 1 && !cost_.splittable(first, last)) break;
            if (cost_.memory_bytes(first, last, s, split.t) > limit) break;
            const double local = cost_.local_s(first, last, node, classes_[c].flops_per_s, split.t, split.d);
            for (int n = 0; n < nodes_; ++n) {
              const double after = value(rest, s - 1, n, last + 1);
              if (after == kInfinity) continue;
              const double time = local + cost_.send_s(last, cost_.link_bytes_per_s(node, n), split.d);
              if (const double candidate = std::max(time, after); candidate < best) {
                best = candidate, chosen = {c, split, first, last}, next_node = n;
              }
            }
          }
        }
      }
      if (best == kInfinity) throw std::logic_error("planner v2: no choice attains a finite table entry");
      result.push_back(chosen);
      if (next_node < 0) return result;
      u -= static_cast<std::size_t>(chosen.split.gpus) * stride_[chosen.gpu_class];
      --s;
      node = next_node;
      first = chosen.last_layer + 1;
    }
  }

 private:
  int count(std::size_t u, std::size_t c) const noexcept {
    return static_cast<int>((u / stride_[c]) % (classes_[c].gpus.size() + 1));
  }

  // Per multiset: size, FLOP/s, the stored stage counts and the first row.
  bool layout() {
    if (laid_out_) return true;
    size_.assign(suffix_count_, 0);
    speed_.assign(suffix_count_, 0.0);
    fewest_.assign(suffix_count_, 0);
    most_.assign(suffix_count_, -1);
    first_row_.assign(suffix_count_, 0);
    std::vector<int> largest_group(classes_.size(), 0);
    for (std::size_t c = 0; c < classes_.size(); ++c) {
      for (const Split& split : splits_[c]) largest_group[c] = std::max(largest_group[c], split.gpus);
    }
    rows_ = 0;
    for (std::size_t u = 0; u < suffix_count_; ++u) {
      for (std::size_t c = 0; c < classes_.size(); ++c) {
        const int n = count(u, c);
        size_[u] += n;
        speed_[u] += classes_[c].flops_per_s * n;
        if (n > 0) fewest_[u] += (n + largest_group[c] - 1) / largest_group[c];
      }
      first_row_[u] = rows_;
      if (u == 0) continue;
      most_[u] = std::min(size_[u], limits_.max_stages);
      if (most_[u] >= fewest_[u]) {
        const std::size_t rows = static_cast<std::size_t>(most_[u] - fewest_[u] + 1);
        if (rows_ > std::numeric_limits<std::size_t>::max() - rows) return false;
        rows_ += rows;
      }
    }
    laid_out_ = true;
    return true;
  }

  std::size_t row(std::size_t u, int s) const noexcept {
    return first_row_[u] + static_cast<std::size_t>(s - fewest_[u]);
  }
  std::size_t at(std::size_t u, int s, int node, int layer) const noexcept {
    return (row(u, s) * static_cast<std::size_t>(nodes_) + static_cast<std::size_t>(node)) *
               static_cast<std::size_t>(layers_) +
           static_cast<std::size_t>(layer);
  }
  std::size_t summary_at(std::size_t u, int s, int layer) const noexcept {
    return row(u, s) * static_cast<std::size_t>(layers_) + static_cast<std::size_t>(layer);
  }
  double value(std::size_t u, int s, int node, int layer) const noexcept { return value_[at(u, s, node, layer)]; }

  // value(u, s, node of c, i) = min over the first stage's last layer b and
  // the next stage's node of max(time of i..b on `split` GPUs of c,
  // value(rest, s - 1, next, b + 1)).
  void relax(std::size_t u, int s, std::size_t c, const Split& split, std::size_t rest, int i) {
    ++states_evaluated_;
    const GpuClass& gpu = classes_[c];
    const int t = split.t, d = split.d;
    const double limit = cost_.memory_limit(gpu.memory_bytes);
    double& slot = value_[at(u, s, gpu.node, i)];
    // Only values below both the slot and the best plan matter: the scan over
    // b stops when the stage's own time reaches that level or its memory
    // overflows (both only grow with b), or a layer that cannot be split joins
    // a tensor-parallel stage.
    double level = std::min(slot, best_);
    if (s == 1) {
      if ((t == 1 || cost_.splittable(i, layers_ - 1)) &&
          cost_.memory_bytes(i, layers_ - 1, 1, t) <= limit) {
        level = std::min(level, cost_.local_s(i, layers_ - 1, gpu.node, gpu.flops_per_s, t, d));
      }
    } else {
      const double intra = cost_.intra(gpu.node);
      const double inter = cost_.inter();
      // value(rest, s-1, *, j) >= flops(j..L-1) / (speed(rest) * best
      // efficiency), which shrinks as j grows: first stages ending before the
      // first j where that bound is below `level` cannot help.
      int first_useful = i + 1;
      if (level < kInfinity) {
        int high = layers_ - s + 1;
        const double rest_speed = speed_[rest] * best_efficiency_;
        while (first_useful < high) {
          const int mid = first_useful + (high - first_useful) / 2;
          if (cost_.flops(mid, layers_ - 1) / rest_speed * (1 - 1e-12) < level) high = mid;
          else first_useful = mid + 1;
        }
      }
      for (int b = first_useful - 1; b <= layers_ - s; ++b) {
        if (t > 1 && !cost_.splittable(i, b)) break;
        if (cost_.memory_bytes(i, b, s, t) > limit) break;
        const double local = cost_.local_s(i, b, gpu.node, gpu.flops_per_s, t, d);
        if (local >= level) break;
        const std::size_t next = summary_at(rest, s - 1, b + 1);
        const double same = value(rest, s - 1, gpu.node, b + 1);
        if (same < level) level = std::min(level, std::max(local + cost_.send_s(b, intra, d), same));
        const double other = best_node_[next] != gpu.node ? best_value_[next] : second_value_[next];
        if (other < level) level = std::min(level, std::max(local + cost_.send_s(b, inter, d), other));
      }
    }
    if (level < best_) slot = level;
  }

  // Per start layer: the best value over first nodes and the best over the
  // other nodes, so relax() finds "next stage on a different node" in O(1).
  void summarize(std::size_t u, int s) {
    for (int i = 0; i < layers_; ++i) {
      double first = kInfinity, second = kInfinity;
      int first_node = -1;
      for (int n = 0; n < nodes_; ++n) {
        const double v = value(u, s, n, i);
        if (v < first) second = first, first = v, first_node = n;
        else if (v < second) second = v;
      }
      const std::size_t k = summary_at(u, s, i);
      best_value_[k] = first;
      second_value_[k] = second;
      best_node_[k] = static_cast<std::int16_t>(first_node);
    }
  }

  const CostModelV2& cost_;
  const std::vector<GpuClass>& classes_;
  int nodes_;
  int layers_;
  SearchLimits limits_;
  double best_efficiency_ = 1;
  std::vector<std::size_t> stride_;
  std::vector<std::vector<Split>> splits_;  // per class, ordered by g
  std::size_t suffix_count_ = 1;

  bool laid_out_ = false;
  std::vector<int> size_, fewest_, most_;  // [u]
  std::vector<double> speed_;              // [u]: summed FLOP/s of the GPUs of u
  std::vector<std::size_t> first_row_;     // [u]: row of (u, fewest(u))
  std::size_t rows_ = 0;                   // (u, s) pairs stored

  std::vector<double> value_;            // [row][node][layer]
  std::vector<double> best_value_;       // [row][layer]: min over nodes
  std::vector<double> second_value_;     // [row][layer]: min over the other nodes
  std::vector<std::int16_t> best_node_;  // [row][layer]: the node of best_value_, -1 if none

  double best_ = kInfinity;  // the best complete plan so far (or the bound given to run())
  bool found_ = false;
  std::size_t best_suffix_ = 0;
  int best_stages_ = 0;
  int best_first_node_ = -1;
  std::uint64_t states_evaluated_ = 0;
};

std::string layer_label(const ModelProfile& model, int layer) {
  return fmt::format("layer {} ({})", layer, model.layers[static_cast<std::size_t>(layer)].name);
}

// Why no valid plan exists under `limits`, naming the constraint that fails.
std::string infeasible_reason(const ModelProfile& model, const CostModelV2& cost,
                              const std::vector<GpuClass>& classes, const SearchLimits& limits, int natural) {
  // Every stage keeps at least one micro-batch of its activations, split at
  // most t ways, t the largest degree its class and the layer allow.
  for (int l = 0; l < cost.layers(); ++l) {
    bool fits = false;
    double largest = 0;
    int widest = 1;
    for (const GpuClass& c : classes) {
      int t = 1;
      for (const int degree : kTensorParallelDegrees) {
        if (degree <= limits.max_tp && degree <= static_cast<int>(c.gpus.size()) &&
            (degree == 1 || cost.splittable(l, l))) {
          t = degree;
        }
      }
      largest = std::max(largest, c.memory_bytes);
      widest = std::max(widest, t);
      if (cost.memory_bytes(l, l, 1, t) <= memory_limit(c.memory_bytes)) fits = true;
    }
    if (!fits) {
      const std::string split = !cost.splittable(l, l) ? "it has no tp_bytes, so it cannot be split"
                                : widest == 1          ? "no group may split it"
                                                       : fmt::format("it can be split at most {} ways", widest);
      return fmt::format("{} needs {} ({} of parameters + {} of activations for one micro-batch) but the largest "
                         "GPU has {} and {}",
                         layer_label(model, l), gb(cost.memory_bytes(l, l, 1, 1)), gb(cost.params(l, l)),
                         gb(cost.activations(l, l)), gb(largest), split);
    }
  }
  // A stage of t x d GPUs holds its parameters d times over, 1/t per GPU.
  double together = 0;
  int gpus = 0;
  for (const GpuClass& c : classes) {
    together += c.memory_bytes * static_cast<double>(c.gpus.size());
    gpus += static_cast<int>(c.gpus.size());
  }
  const double params = cost.params(0, cost.layers() - 1);
  if (params > memory_limit(together)) {
    return fmt::format("the model's parameters need {} but all {} GPUs have {} together", gb(params), gpus,
                       gb(together));
  }
  const std::string split = limits.max_tp == 1 && limits.max_dp == 1 ? "one GPU per stage"
                            : limits.max_tp == 1                      ? "no tensor parallelism"
                                                                      : fmt::format("split over t <= {} GPUs", limits.max_tp);
  if (limits.max_stages < natural) {
    return fmt::format("no assignment fits memory with at most {} stage{} (parameters plus (S-k) micro-batches of "
                       "activations per stage, {})",
                       limits.max_stages, limits.max_stages == 1 ? "" : "s", split);
  }
  return fmt::format("no assignment fits memory for any stage count from 1 to {} (parameters plus (S-k) "
                     "micro-batches of activations per stage, {})",
                     limits.max_stages, split);
}

std::string too_large_reason(const std::vector<GpuClass>& classes, int nodes, int layers, int max_stages,
                             std::optional<std::size_t> bytes, std::size_t max_table_bytes) {
  return fmt::format(
      "the exact search over {} GPU classes (GPUs that differ in node, tflops or memory_gb) on {} nodes, {} layers "
      "and up to {} stages needs {} of tables, more than the limit of {}",
      classes.size(), nodes, layers, max_stages, bytes ? gb(static_cast<double>(*bytes)) : std::string("too many bytes"),
      gb(static_cast<double>(max_table_bytes)));
}

struct SearchOutcome {
  PlanStatus status = PlanStatus::infeasible;
  PlanV2 plan;  // evaluated, when optimal
  std::string reason;
  std::size_t table_bytes = 0;
  std::uint64_t states = 0;
};

// One exact search under `limits`; `seed` (evaluated, valid) bounds it from
// above and is the answer when nothing strictly faster exists.
SearchOutcome search(const ModelProfile& model, const ClusterSpec& cluster, const CostModelV2& cost,
                     const std::vector<GpuClass>& classes, const SearchLimits& limits, int natural, int micro_batches,
                     std::size_t max_table_bytes, const PlanV2* seed) {
  SearchOutcome out;
  const int nodes = static_cast<int>(cluster.nodes.size());
  SearchV2 engine(cost, classes, nodes, limits);
  const std::optional<std::size_t> bytes = engine.table_bytes();
  if (!bytes || *bytes > max_table_bytes) {
    out.status = PlanStatus::search_too_large;
    out.reason = too_large_reason(classes, nodes, cost.layers(), limits.max_stages, bytes, max_table_bytes);
    return out;
  }
  out.table_bytes = *bytes;
  const bool found = engine.run(seed != nullptr ? seed->bottleneck_s : kInfinity);
  out.states = engine.states_evaluated();
  if (!found) {
    if (seed != nullptr) {
      out.status = PlanStatus::optimal;
      out.plan = *seed;
      return out;
    }
    out.status = PlanStatus::infeasible;
    out.reason = infeasible_reason(model, cost, classes, limits, natural);
    return out;
  }

  // Name GPUs: each stage takes its class's lowest-index GPUs not yet taken.
  std::vector<std::size_t> taken(classes.size(), 0);
  PlanV2 plan;
  for (const SearchV2::Stage& stage : engine.stages()) {
    const GpuClass& c = classes[stage.gpu_class];
    PlanStageV2 out_stage;
    out_stage.node = cluster.nodes[static_cast<std::size_t>(c.node)].name;
    for (int k = 0; k < stage.split.gpus; ++k) out_stage.gpus.push_back(c.gpus[taken[stage.gpu_class]++].second);
    out_stage.tp = stage.split.t;
    out_stage.first_layer = stage.first_layer;
    out_stage.last_layer = stage.last_layer;
    plan.stages.push_back(std::move(out_stage));
  }
  PlanEvaluationV2 evaluation = evaluate_v2(model, cluster, plan, micro_batches);
  // The same arithmetic gives the same number; the margin only allows for a
  // compiler contracting the two call sites differently.
  if (!evaluation.valid ||
      std::abs(evaluation.plan.bottleneck_s - engine.best()) > 1e-12 * std::abs(engine.best())) {
    throw std::logic_error(fmt::format("planner v2: the plan found (bottleneck {} s) evaluates as {} with {} s: {}",
                                       engine.best(), evaluation.valid ? "valid" : "invalid",
                                       evaluation.plan.bottleneck_s, evaluation.reason));
  }
  out.status = PlanStatus::optimal;
  out.plan = std::move(evaluation.plan);
  return out;
}

}  // namespace

namespace detail {

OneGpuSearch search_one_gpu_stages(const ModelProfile& model, const ClusterSpec& cluster, int max_stages,
                                   std::size_t max_table_bytes) {
  const CostModelV2 cost(model, cluster, 1, /*one_gpu_stages=*/true);
  const std::vector<GpuClass> classes = gpu_classes(cluster);
  const int nodes = static_cast<int>(cluster.nodes.size());
  OneGpuSearch out;
  out.gpu_classes = classes.size();
  SearchV2 engine(cost, classes, nodes, {max_stages, 1, 1});
  const std::optional<std::size_t> bytes = engine.table_bytes();
  if (!bytes || *bytes > max_table_bytes) {
    out.status = PlanStatus::search_too_large;
    out.reason = too_large_reason(classes, nodes, cost.layers(), max_stages, bytes, max_table_bytes);
    return out;
  }
  const bool found = engine.run(kInfinity);
  out.states_evaluated = engine.states_evaluated();
  if (!found) {
    out.status = PlanStatus::infeasible;
    return out;
  }
  std::vector<std::size_t> taken(classes.size(), 0);
  for (const SearchV2::Stage& stage : engine.stages()) {
    const auto [node, gpu] = classes[stage.gpu_class].gpus[taken[stage.gpu_class]++];
    out.stages.push_back({node, gpu, stage.first_layer, stage.last_layer});
  }
  out.status = PlanStatus::optimal;
  out.bottleneck_s = engine.best();
  return out;
}

}  // namespace detail

double tp_efficiency(const ClusterSpec& cluster, int t) {
  if (auto it = cluster.tp_efficiency.find(t); it != cluster.tp_efficiency.end()) {
    if (tp_index(t) >= 0) return it->second;
  }
  switch (t) {
    case 1: return 1.0;
    case 2: return 0.95;
    case 4: return 0.9;
    case 8: return 0.85;
    default: throw SpecError(fmt::format("tensor-parallel degree {} is not one of 1, 2, 4, 8", t));
  }
}

double PlanV2::throughput() const noexcept {
  if (!(bottleneck_s >= 0)) return 0;
  if (bottleneck_s == 0) return std::numeric_limits<double>::infinity();
  return 1.0 / bottleneck_s;
}

double PlanResultV2::speedup_over_v1() const noexcept {
  if (status != PlanStatus::optimal || v1_status != PlanStatus::optimal || !(plan.bottleneck_s > 0)) return 0;
  return v1_plan.bottleneck_s / plan.bottleneck_s;
}

PlanV2 to_plan_v2(const Plan& plan) {
  PlanV2 out;
  for (const PlanStage& stage : plan.stages) {
    PlanStageV2 s;
    s.node = stage.node;
    s.gpus = {stage.gpu};
    s.tp = 1;
    s.first_layer = stage.first_layer;
    s.last_layer = stage.last_layer;
    out.stages.push_back(std::move(s));
  }
  return out;
}

PlanEvaluationV2 evaluate_v2(const ModelProfile& model, const ClusterSpec& cluster, const PlanV2& plan,
                             int micro_batches) {
  validate(model);
  validate(cluster);
  if (micro_batches < 1) throw SpecError(fmt::format("micro_batches must be >= 1, got {}", micro_batches));
  const CostModelV2 cost(model, cluster, micro_batches);
  const int layers = cost.layers();
  const int stage_count = static_cast<int>(plan.stages.size());

  PlanEvaluationV2 result;
  result.plan.stages = plan.stages;
  auto fail = [&](std::string reason) {
    if (result.reason.empty()) result.reason = std::move(reason);
  };
  auto stage_label = [&](int k) {
    const PlanStageV2& s = plan.stages[static_cast<std::size_t>(k)];
    return fmt::format("stage {} ({} GPU{} {}, layers {}-{})", k, s.node, s.gpus.size() == 1 ? "" : "s",
                       fmt::join(s.gpus, ","), s.first_layer, s.last_layer);
  };

  std::map<std::string, int, std::less<>> node_index;
  for (std::size_t n = 0; n < cluster.nodes.size(); ++n) node_index.emplace(cluster.nodes[n].name, static_cast<int>(n));

  if (plan.stages.empty()) fail("the plan has no stages");
  std::vector<int> stage_node(plan.stages.size(), -1);
  std::vector<const ClusterGpu*> stage_gpu(plan.stages.size(), nullptr);  // its first GPU, when all resolve alike
  std::vector<bool> split_ok(plan.stages.size(), false);
  std::set<std::pair<int, int>> used;
  for (int k = 0; k < stage_count; ++k) {
    const std::size_t sk = static_cast<std::size_t>(k);
    const PlanStageV2& s = plan.stages[sk];
    const int g = static_cast<int>(s.gpus.size());
    if (auto it = node_index.find(s.node); it == node_index.end()) {
      fail(fmt::format("{}: no node named \"{}\" in the cluster", stage_label(k), s.node));
    } else if (s.gpus.empty()) {
      fail(fmt::format("{}: the stage has no GPUs", stage_label(k)));
    } else {
      const auto& gpus = cluster.nodes[static_cast<std::size_t>(it->second)].gpus;
      bool resolved = true;
      for (const int index : s.gpus) {
        if (index < 0 || static_cast<std::size_t>(index) >= gpus.size()) {
          fail(fmt::format("{}: node \"{}\" has no GPU {} (it has {})", stage_label(k), s.node, index, gpus.size()));
          resolved = false;
        } else if (!used.emplace(it->second, index).second) {
          fail(fmt::format("{}: GPU {} of node \"{}\" is already used{}", stage_label(k), index, s.node,
                           " (by an earlier stage or twice in this one)"));
        }
      }
      if (resolved) {
        const ClusterGpu& first = gpus[static_cast<std::size_t>(s.gpus.front())];
        for (const int index : s.gpus) {
          const ClusterGpu& other = gpus[static_cast<std::size_t>(index)];
          if (other.tflops != first.tflops || other.memory_gb != first.memory_gb) {
            fail(fmt::format("{}: GPU {} ({} tflops, {} GB) differs from GPU {} ({} tflops, {} GB); a stage's GPUs "
                             "must be identical",
                             stage_label(k), index, other.tflops, other.memory_gb, s.gpus.front(), first.tflops,
                             first.memory_gb));
            resolved = false;
            break;
          }
        }
      }
      if (resolved) {
        stage_node[sk] = it->second;
        stage_gpu[sk] = &gpus[static_cast<std::size_t>(s.gpus.front())];
      }
    }
    if (tp_index(s.tp) < 0) {
      fail(fmt::format("{}: tp {} is not one of 1, 2, 4, 8", stage_label(k), s.tp));
    } else if (g > 0 && g % s.tp != 0) {
      fail(fmt::format("{}: tp {} does not divide its {} GPUs", stage_label(k), s.tp, g));
    } else if (g > 0) {
      split_ok[sk] = true;
    }
  }
  const std::vector<bool> range_ok = detail::check_layer_tiling(plan.stages, layers, stage_label, fail);
  for (int k = 0; k < stage_count; ++k) {
    const PlanStageV2& s = plan.stages[static_cast<std::size_t>(k)];
    if (range_ok[static_cast<std::size_t>(k)] && s.tp > 1 && !cost.splittable(s.first_layer, s.last_layer)) {
      int layer = s.first_layer;
      while (cost.splittable(layer, layer)) ++layer;
      fail(fmt::format("{}: tp {} but {} has no tp_bytes and cannot be split", stage_label(k), s.tp,
                       layer_label(model, layer)));
    }
  }

  for (int k = 0; k < stage_count; ++k) {
    const std::size_t sk = static_cast<std::size_t>(k);
    PlanStageV2& out = result.plan.stages[sk];
    if (stage_gpu[sk] == nullptr || !range_ok[sk] || !split_ok[sk]) continue;
    const ClusterGpu& gpu = *stage_gpu[sk];
    const int node = stage_node[sk], t = out.tp, d = static_cast<int>(out.gpus.size()) / t;
    const int a = out.first_layer, b = out.last_layer;
    out.dp = d;
    out.gpu_type = gpu.type;
    out.compute_s = cost.compute_s(a, b, gpu.tflops * 1e12, t, d);
    out.tp_s = cost.tp_s(a, b, node, t, d);
    out.sync_s = cost.sync_s(a, b, node, t, d);
    out.comm_s = 0;
    if (k + 1 < stage_count && stage_node[sk + 1] >= 0) {
      out.comm_s = cost.send_s(b, cost.link_bytes_per_s(node, stage_node[sk + 1]), d);
    }
    // The search's order: ((compute + tp) + sync) + comm.
    out.time_s = cost.local_s(a, b, node, gpu.tflops * 1e12, t, d) + out.comm_s;
    out.memory_bytes = cost.memory_bytes(a, b, stage_count - k, t);
    out.memory_capacity_bytes = gpu.memory_gb * 1e9;
  }
  for (int k = 0; k < stage_count; ++k) {
    const std::size_t sk = static_cast<std::size_t>(k);
    const PlanStageV2& s = result.plan.stages[sk];
    if (stage_gpu[sk] == nullptr || !range_ok[sk] || !split_ok[sk] ||
        s.memory_bytes <= memory_limit(s.memory_capacity_bytes)) {
      continue;
    }
    fail(fmt::format("{} needs {} per GPU (({} of parameters + {} x {} of activations) / tp {}) but the {} has {}",
                     stage_label(k), gb(s.memory_bytes), gb(cost.params(s.first_layer, s.last_layer)), stage_count - k,
                     gb(cost.activations(s.first_layer, s.last_layer)), s.tp, s.gpu_type,
                     gb(s.memory_capacity_bytes)));
  }

  detail::pick_bottleneck(result.plan);
  result.valid = result.reason.empty();
  return result;
}

PlanResultV2 plan_pipeline_v2(const ModelProfile& model, const ClusterSpec& cluster, const PlannerOptionsV2& options) {
  validate(model);
  validate(cluster);
  if (options.micro_batches < 1) {
    throw SpecError(fmt::format("micro_batches must be >= 1, got {}", options.micro_batches));
  }
  if (options.max_stages < 0) {
    throw SpecError(fmt::format("max_stages must be >= 0 (0 = no limit), got {}", options.max_stages));
  }
  if (tp_index(options.max_tp) < 0) {
    throw SpecError(fmt::format("max_tp must be 1, 2, 4 or 8, got {}", options.max_tp));
  }
  if (options.max_dp < 0) throw SpecError(fmt::format("max_dp must be >= 0 (0 = no limit), got {}", options.max_dp));

  const CostModelV2 cost(model, cluster, options.micro_batches);
  const std::vector<GpuClass> classes = gpu_classes(cluster);
  const int natural = static_cast<int>(std::min<std::size_t>(cluster.gpu_count(), model.layers.size()));
  const int max_stages = options.max_stages == 0 ? natural : std::min(natural, options.max_stages);

  PlanResultV2 result;
  result.gpu_classes = classes.size();
  const PlanV2* seed = nullptr;
  if (options.compare_v1) {
    SearchOutcome v1 = search(model, cluster, cost, classes, {max_stages, 1, 1}, natural, options.micro_batches,
                              options.max_table_bytes, nullptr);
    result.v1_status = v1.status;
    result.v1_plan = std::move(v1.plan);
    result.v1_reason = std::move(v1.reason);
    result.states_evaluated += v1.states;
    if (result.v1_status == PlanStatus::optimal) seed = &result.v1_plan;
  }
  SearchOutcome full = search(model, cluster, cost, classes, {max_stages, options.max_tp, options.max_dp}, natural,
                              options.micro_batches, options.max_table_bytes, seed);
  result.status = full.status;
  result.plan = std::move(full.plan);
  result.reason = std::move(full.reason);
  result.table_bytes = full.table_bytes;
  result.states_evaluated += full.states;
  return result;
}

}  // namespace troupe::scheduler
