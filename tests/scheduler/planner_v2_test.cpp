// TROUPE_TEST_LABELS: fast
// Version 2 of the pipeline planner (tensor-parallel and replicated stages)
// against shared/planner/cases-v2.json (from ../shared when present, and
// always from the copy in tests/scheduler/data/planner), against version 1 on
// cases.json with t = d = 1, against a brute-force enumerator on random small
// cases, and on hand-priced plans and bad input.
#include "troupe/scheduler/planner_v2.hpp"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <bit>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <optional>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "troupe/scheduler/error.hpp"
#include "planner_test_support.hpp"

namespace troupe::scheduler {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

using namespace planner_testing;


std::string stage_summary(const PlanV2& plan) {
  std::string text = std::to_string(plan.stages.size()) + " stages:";
  for (const PlanStageV2& s : plan.stages) {
    text += " " + s.node + "/" + std::to_string(s.gpus.size()) + "(t" + std::to_string(s.tp) + ") " +
            std::to_string(s.first_layer) + "-" + std::to_string(s.last_layer);
  }
  return text;
}

// A reference value ("infeasible" or seconds) against a result.
void expect_matches(const json& reference, PlanStatus status, const PlanV2& plan, const std::string& what) {
  SCOPED_TRACE(what);
  if (reference.is_string()) {
    EXPECT_EQ(reference, "infeasible");
    EXPECT_EQ(status, PlanStatus::infeasible);
  } else {
    ASSERT_EQ(status, PlanStatus::optimal);
    EXPECT_TRUE(close(plan.bottleneck_s, reference.get<double>(), 1e-9))
        << plan.bottleneck_s << " vs " << reference.get<double>();
  }
}

// Every pairing of cases-v2.json: the optimum, the best version-1 plan, the
// speed-up, the uniform baseline and the TP-only and DP-only optima; each
// full search (with its version-1 comparison) under 2 s in an optimized build.
void check_cases(const fs::path& planner_dir) {
  const json cases = json::parse(read_bytes(planner_dir / "cases-v2.json"));
  ASSERT_FALSE(cases.empty());
  for (const json& c : cases) {
    const std::string label = c["model"].get<std::string>() + " on " + c["cluster"].get<std::string>();
    SCOPED_TRACE(label);
    const ModelProfile model = load_model(resolve(planner_dir, c["model"]));
    const ClusterSpec cluster = load_cluster(resolve(planner_dir, c["cluster"]));
    PlannerOptionsV2 options;
    options.micro_batches = c.value("micro_batches", 32);

    const auto start = std::chrono::steady_clock::now();
    const PlanResultV2 result = plan_pipeline_v2(model, cluster, options);
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    std::printf("  %-70s %8.1f ms  %s\n", label.c_str(), seconds * 1e3,
                result.feasible() ? stage_summary(result.plan).c_str() : result.reason.c_str());
#ifdef NDEBUG
    EXPECT_LT(seconds, 2.0);
#endif

    expect_matches(c["optimum_s"], result.status, result.plan, "optimum");
    expect_matches(c["v1_optimum_s"], result.v1_status, result.v1_plan, "version-1 optimum");
    if (c["speedup_v2_over_v1"].is_number()) {
      EXPECT_TRUE(close(result.speedup_over_v1(), c["speedup_v2_over_v1"].get<double>(), 1e-9));
    } else {
      EXPECT_EQ(result.speedup_over_v1(), 0.0);
      EXPECT_FALSE(result.v1_reason.empty());
    }
    if (result.feasible()) {
      const PlanEvaluationV2 check = evaluate_v2(model, cluster, result.plan, options.micro_batches);
      EXPECT_TRUE(check.valid) << check.reason;
      EXPECT_EQ(check.plan.bottleneck_s, result.plan.bottleneck_s);
    }

    const PlanEvaluationV2 uniform =
        evaluate_v2(model, cluster, to_plan_v2(uniform_plan(model, cluster)), options.micro_batches);
    if (c["uniform_s"].is_string()) {
      EXPECT_FALSE(uniform.valid);
    } else {
      EXPECT_TRUE(uniform.valid) << uniform.reason;
      EXPECT_TRUE(close(uniform.plan.bottleneck_s, c["uniform_s"].get<double>()));
    }

    PlannerOptionsV2 restricted = options;
    restricted.compare_v1 = false;
    restricted.max_dp = 1;
    const PlanResultV2 tp_only = plan_pipeline_v2(model, cluster, restricted);
    expect_matches(c["tp_only_optimum_s"], tp_only.status, tp_only.plan, "TP-only optimum");
    restricted.max_dp = 0;
    restricted.max_tp = 1;
    const PlanResultV2 dp_only = plan_pipeline_v2(model, cluster, restricted);
    expect_matches(c["dp_only_optimum_s"], dp_only.status, dp_only.plan, "DP-only optimum");
  }
}

TEST(PlannerV2Cases, TheCopiedCasesReproduceEveryOptimumAndBaseline) { check_cases(copied_planner_dir()); }

TEST(PlannerV2Cases, TheSharedCasesReproduceEveryOptimumAndBaseline) {
  const std::optional<fs::path> shared = shared_planner_dir("cases-v2.json");
  if (!shared) GTEST_SKIP() << "no shared/planner with cases-v2.json beside the repository (set TROUPE_SHARED_DIR)";
  check_cases(*shared);
}

TEST(PlannerV2Cases, TheCopyEqualsTheSharedFiles) {
  const std::optional<fs::path> shared = shared_planner_dir("cases-v2.json");
  if (!shared) GTEST_SKIP() << "no shared/planner with cases-v2.json beside the repository (set TROUPE_SHARED_DIR)";
  const fs::path copy = copied_planner_dir();
  EXPECT_EQ(read_bytes(copy / "cases-v2.json"), read_bytes(*shared / "cases-v2.json"))
      << "refresh tests/scheduler/data/planner from shared/planner";
  for (const auto& entry : fs::directory_iterator(*shared / "models-v2")) {
    EXPECT_EQ(read_bytes(copy / "models-v2" / entry.path().filename()), read_bytes(entry.path())) << entry.path();
  }
  for (const json& c : json::parse(read_bytes(*shared / "cases-v2.json"))) {
    EXPECT_EQ(read_bytes(resolve(copy, c["cluster"])), read_bytes(resolve(*shared, c["cluster"]))) << c["cluster"];
  }
}

// Version 1's cases with t = d = 1: the same optimum (or infeasibility) as
// plan_pipeline, and the same plan cost under both evaluators.
TEST(PlannerV2Cases, VersionOneCasesAreUnchangedWithOneGpuStages) {
  const fs::path dir = copied_planner_dir();
  for (const json& c : json::parse(read_bytes(dir / "cases.json"))) {
    const std::string label = c["model"].get<std::string>() + " on " + c["cluster"].get<std::string>();
    SCOPED_TRACE(label);
    const ModelProfile model = load_model(resolve(dir, c["model"]));
    const ClusterSpec cluster = load_cluster(resolve(dir, c["cluster"]));
    PlannerOptionsV2 options;
    options.max_tp = 1;
    options.max_dp = 1;
    options.compare_v1 = false;
    const auto start = std::chrono::steady_clock::now();
    const PlanResultV2 result = plan_pipeline_v2(model, cluster, options);
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    std::printf("  %-60s %8.1f ms\n", label.c_str(), seconds * 1e3);
    expect_matches(c["optimum_s"], result.status, result.plan, "t = d = 1");
    const PlanResult v1 = plan_pipeline(model, cluster);
    ASSERT_EQ(v1.status, result.status);
    if (!v1.feasible()) continue;
    EXPECT_EQ(result.plan.bottleneck_s, v1.plan.bottleneck_s);
    for (const PlanStageV2& stage : result.plan.stages) {
      EXPECT_EQ(stage.gpus.size(), 1u);
      EXPECT_EQ(stage.tp, 1);
    }
    // Version 1's plan priced by version 2: the same stage times.
    const PlanEvaluationV2 priced = evaluate_v2(model, cluster, to_plan_v2(v1.plan), 32);
    ASSERT_TRUE(priced.valid) << priced.reason;
    for (std::size_t k = 0; k < v1.plan.stages.size(); ++k) {
      EXPECT_DOUBLE_EQ(priced.plan.stages[k].time_s, v1.plan.stages[k].time_s);
      EXPECT_DOUBLE_EQ(priced.plan.stages[k].memory_bytes, v1.plan.stages[k].memory_bytes);
    }
  }
}

std::string speedup_text(const PlanResultV2& result) {
  char text[96];
  if (result.v1_status == PlanStatus::optimal) {
    std::snprintf(text, sizeof text, "%zu stages, %.3f ms, %.2fx version 1", result.plan.stages.size(),
                  result.plan.bottleneck_s * 1e3, result.speedup_over_v1());
  } else {
    std::snprintf(text, sizeof text, "%zu stages, %.3f ms, version 1 infeasible", result.plan.stages.size(),
                  result.plan.bottleneck_s * 1e3);
  }
  return text;
}

// Every version-2 model on every cluster ("pairings like the cases"): no
// reference optima, but each plan evaluates as valid with the same
// bottleneck, is no slower than the version-1 plan, and comes within 2 s
// (at -O2) when the model has at most 50 layers.
TEST(PlannerV2Speed, EveryVersionTwoModelOnEveryClusterIsPlannedQuickly) {
  for (const auto& model_file : fs::directory_iterator(copied_planner_dir() / "models-v2")) {
    for (const auto& cluster_file : fs::directory_iterator(copied_planner_dir() / "clusters")) {
      const std::string label =
          model_file.path().stem().string() + " on " + cluster_file.path().stem().string();
      SCOPED_TRACE(label);
      const ModelProfile model = load_model(model_file.path());
      const ClusterSpec cluster = load_cluster(cluster_file.path());
      const auto start = std::chrono::steady_clock::now();
      const PlanResultV2 result = plan_pipeline_v2(model, cluster);
      const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      std::printf("  %-45s %3zu layers %2zu classes %9.1f ms %10.2f MB  %s\n", label.c_str(), model.layers.size(),
                  result.gpu_classes, seconds * 1e3, static_cast<double>(result.table_bytes) / 1e6,
                  result.feasible() ? speedup_text(result).c_str() : result.reason.c_str());
      ASSERT_NE(result.status, PlanStatus::search_too_large) << result.reason;
      if (result.feasible()) {
        const PlanEvaluationV2 check = evaluate_v2(model, cluster, result.plan, 32);
        EXPECT_TRUE(check.valid) << check.reason;
        EXPECT_EQ(check.plan.bottleneck_s, result.plan.bottleneck_s);
        if (result.v1_status == PlanStatus::optimal) {
          EXPECT_LE(result.plan.bottleneck_s, result.v1_plan.bottleneck_s);
        }
      }
#ifdef NDEBUG
      if (model.layers.size() <= 50) {
        EXPECT_LT(seconds, 2.0);
      }
#endif
    }
  }
}

// ---- brute force -------------------------------------------------------------

struct BruteForceLimits {
  int max_stages = 0, max_tp = 8, max_dp = 0, micro_batches = 32;
};

// Every plan: every stage count, every cut, every group of unused GPUs for
// each stage (one node, equal tflops and memory) and every t dividing it,
// priced with plain sums straight from the README's formulas.
double brute_force_optimum(const ModelProfile& model, const ClusterSpec& cluster, const BruteForceLimits& limits) {
  struct Gpu {
    int node;
    double tflops, memory_gb;
  };
  std::vector<Gpu> gpus;
  for (std::size_t n = 0; n < cluster.nodes.size(); ++n) {
    for (const ClusterGpu& g : cluster.nodes[n].gpus) gpus.push_back({static_cast<int>(n), g.tflops, g.memory_gb});
  }
  const int layers = static_cast<int>(model.layers.size());
  const int gpu_count = static_cast<int>(gpus.size());
  auto efficiency = [&](int t) {
    auto it = cluster.tp_efficiency.find(t);
    if (it != cluster.tp_efficiency.end()) return it->second;
    return t == 1 ? 1.0 : t == 2 ? 0.95 : t == 4 ? 0.9 : 0.85;
  };
  struct Stage {
    unsigned mask;
    int t, first, last;
  };
  std::vector<Stage> stages;
  double best = kInf;

  auto price = [&] {
    const int count = static_cast<int>(stages.size());
    double bottleneck = 0;
    for (int k = 0; k < count; ++k) {
      const Stage& s = stages[static_cast<std::size_t>(k)];
      const Gpu& gpu = gpus[static_cast<std::size_t>(std::countr_zero(s.mask))];
      const int g = std::popcount(s.mask), t = s.t, d = g / t;
      double flops = 0, params = 0, acts = 0, tp = 0, grads = 0;
      for (int l = s.first; l <= s.last; ++l) {
        const LayerProfile& layer = model.layers[static_cast<std::size_t>(l)];
        flops += layer.flops, params += layer.param_bytes, acts += layer.activation_bytes;
        tp += layer.tp_bytes.value_or(0);
        grads += layer.grad_bytes.value_or(layer.param_bytes / 4);
      }
      if ((params + (count - k) * acts) / t > gpu.memory_gb * 1e9 * (1 + 1e-9)) return;
      const double intra = cluster.nodes[static_cast<std::size_t>(gpu.node)].intra_node_gbps * 1e9;
      double time = flops / (t * gpu.tflops * 1e12 * efficiency(t) * d);
      if (t > 1) time += tp * 2 * (t - 1) / t / (intra * d);
      if (d > 1) time += 2.0 * (d - 1) / d * grads / t / intra / limits.micro_batches;
      if (k + 1 < count) {
        const Stage& next = stages[static_cast<std::size_t>(k + 1)];
        const int next_node = gpus[static_cast<std::size_t>(std::countr_zero(next.mask))].node;
        const double bw = next_node == gpu.node ? intra : cluster.inter_node_gbps * 1e9;
        time += model.layers[static_cast<std::size_t>(s.last)].activation_bytes / (bw * d);
      }
      bottleneck = std::max(bottleneck, time);
    }
    best = std::min(best, bottleneck);
  };

  std::function<void(int, unsigned)> extend = [&](int first, unsigned used) {
    if (limits.max_stages > 0 && static_cast<int>(stages.size()) >= limits.max_stages) return;
    const unsigned all = (1u << gpu_count) - 1;
    for (int last = first; last < layers; ++last) {
      bool splittable = true;
      for (int l = first; l <= last; ++l) splittable = splittable && model.layers[static_cast<std::size_t>(l)].tp_bytes;
      for (unsigned mask = all & ~used; mask != 0; mask = (mask - 1) & all & ~used) {
        const Gpu& lead = gpus[static_cast<std::size_t>(std::countr_zero(mask))];
        bool alike = true;
        for (int g = 0; g < gpu_count; ++g) {
          if ((mask >> g & 1u) == 0) continue;
          const Gpu& other = gpus[static_cast<std::size_t>(g)];
          alike = alike && other.node == lead.node && other.tflops == lead.tflops && other.memory_gb == lead.memory_gb;
        }
        if (!alike) continue;
        const int g = std::popcount(mask);
        for (const int t : {1, 2, 4, 8}) {
          if (g % t != 0 || t > limits.max_tp || (t > 1 && !splittable)) continue;
          if (limits.max_dp > 0 && g / t > limits.max_dp) continue;
          stages.push_back({mask, t, first, last});
          if (last == layers - 1) price();
          else extend(last + 1, used | mask);
          stages.pop_back();
        }
      }
    }
  };
  extend(0, 0);
  return best;
}

struct RandomCase {
  ModelProfile model;
  ClusterSpec cluster;
  BruteForceLimits limits;
};

// Up to 6 layers (some not splittable, some with tp_bytes 0 or explicit
// grad_bytes), up to 5 GPUs on 1-2 nodes of mostly two types so that groups
// form; random partial tp_efficiency, M and search limits; memory scaled so
// that some cases have no valid plan.
RandomCase random_case(std::mt19937_64& rng) {
  auto uniform = [&](double low, double high) { return std::uniform_real_distribution<double>(low, high)(rng); };
  auto integer = [&](int low, int high) { return std::uniform_int_distribution<int>(low, high)(rng); };
  RandomCase c;
  const int layers = integer(1, 6);
  for (int l = 0; l < layers; ++l) {
    LayerProfile layer;
    layer.name = "l" + std::to_string(l);
    layer.flops = integer(0, 9) == 0 ? 0.0 : uniform(0, 1e12);
    layer.param_bytes = uniform(0, 8e9);
    layer.activation_bytes = integer(0, 9) == 0 ? 0.0 : uniform(0, 3e8);
    if (integer(0, 4) != 0) layer.tp_bytes = integer(0, 9) == 0 ? 0.0 : uniform(0, 2e9);
    if (integer(0, 1) == 0) layer.grad_bytes = uniform(0, 4e9);
    c.model.layers.push_back(layer);
  }
  const bool discrete = integer(0, 3) != 0;
  const double memory_scale = uniform(0.15, 1.2);
  const int nodes = integer(1, 2);
  int gpus_left = integer(nodes, 5);
  c.cluster.inter_node_gbps = uniform(2, 50);
  for (int n = 0; n < nodes; ++n) {
    ClusterNode node;
    node.name = "node" + std::to_string(n);
    node.intra_node_gbps = uniform(5, 300);
    const int count = n + 1 == nodes ? gpus_left : integer(1, gpus_left - (nodes - n - 1));
    gpus_left -= count;
    for (int g = 0; g < count; ++g) {
      ClusterGpu gpu;
      gpu.type = "random";
      gpu.tflops = discrete ? (integer(0, 2) != 0 ? 100.0 : 300.0) : uniform(20, 700);
      gpu.memory_gb = memory_scale * (discrete ? (gpu.tflops == 100.0 ? 16.0 : 40.0) : uniform(8, 48));
      node.gpus.push_back(gpu);
    }
    c.cluster.nodes.push_back(node);
  }
  if (integer(0, 2) == 0) {
    for (const int t : {1, 2, 4, 8}) {
      if (integer(0, 1) == 0) c.cluster.tp_efficiency[t] = uniform(0.5, 1.0);
    }
  }
  const int micro_batches[] = {1, 2, 8, 32, 128};
  c.limits.micro_batches = micro_batches[integer(0, 4)];
  if (integer(0, 4) == 0) c.limits.max_stages = integer(1, 3);
  if (integer(0, 4) == 0) c.limits.max_tp = integer(0, 1) == 0 ? 1 : 2;
  if (integer(0, 4) == 0) c.limits.max_dp = integer(1, 2);
  return c;
}

TEST(PlannerV2BruteForce, MatchesExhaustiveEnumerationOnRandomSmallCases) {
  std::mt19937_64 rng(20261203);
  int feasible = 0, infeasible = 0, tensor_parallel = 0, replicated = 0, beats_v1 = 0, v1_infeasible = 0;
  for (int i = 0; i < 1500; ++i) {
    const RandomCase c = random_case(rng);
    SCOPED_TRACE("case " + std::to_string(i));
    PlannerOptionsV2 options;
    options.micro_batches = c.limits.micro_batches;
    options.max_stages = c.limits.max_stages;
    options.max_tp = c.limits.max_tp;
    options.max_dp = c.limits.max_dp;
    const PlanResultV2 result = plan_pipeline_v2(c.model, c.cluster, options);
    const double reference = brute_force_optimum(c.model, c.cluster, c.limits);
    BruteForceLimits v1_limits = c.limits;
    v1_limits.max_tp = v1_limits.max_dp = 1;
    const double v1_reference = brute_force_optimum(c.model, c.cluster, v1_limits);

    if (v1_reference == kInf) {
      EXPECT_EQ(result.v1_status, PlanStatus::infeasible);
      EXPECT_FALSE(result.v1_reason.empty());
    } else {
      ASSERT_EQ(result.v1_status, PlanStatus::optimal) << result.v1_reason;
      EXPECT_TRUE(close(result.v1_plan.bottleneck_s, v1_reference))
          << result.v1_plan.bottleneck_s << " vs " << v1_reference;
    }
    if (reference == kInf) {
      ++infeasible;
      EXPECT_EQ(result.status, PlanStatus::infeasible);
      EXPECT_FALSE(result.reason.empty());
      continue;
    }
    ++feasible;
    ASSERT_EQ(result.status, PlanStatus::optimal) << result.reason;
    EXPECT_TRUE(close(result.plan.bottleneck_s, reference)) << result.plan.bottleneck_s << " vs " << reference;
    if (c.limits.max_stages > 0) {
      EXPECT_LE(static_cast<int>(result.plan.stages.size()), c.limits.max_stages);
    }
    const PlanEvaluationV2 check = evaluate_v2(c.model, c.cluster, result.plan, c.limits.micro_batches);
    EXPECT_TRUE(check.valid) << check.reason;
    for (const PlanStageV2& stage : check.plan.stages) {
      EXPECT_LE(stage.tp, c.limits.max_tp);
      if (c.limits.max_dp > 0) {
        EXPECT_LE(stage.dp, c.limits.max_dp);
      }
    }
    const auto uses = [&](auto predicate) {
      return std::any_of(check.plan.stages.begin(), check.plan.stages.end(), predicate);
    };
    tensor_parallel += uses([](const PlanStageV2& s) { return s.tp > 1; });
    replicated += uses([](const PlanStageV2& s) { return s.dp > 1; });
    if (v1_reference == kInf) ++v1_infeasible;
    else if (reference < v1_reference * (1 - 1e-9)) ++beats_v1;
  }
  std::printf("  feasible %d, infeasible %d; optimum with t > 1: %d, with d > 1: %d; beats version 1: %d, "
              "only version 2 fits: %d\n",
              feasible, infeasible, tensor_parallel, replicated, beats_v1, v1_infeasible);
  // The generator must exercise every outcome.
  EXPECT_GE(feasible, 700);
  EXPECT_GE(infeasible, 80);
  EXPECT_GE(tensor_parallel, 60);
  EXPECT_GE(replicated, 120);
  EXPECT_GE(beats_v1, 150);
  EXPECT_GE(v1_infeasible, 20);
}

// ---- the cost model, by hand ---------------------------------------------------

// Node "a": four 100-TFLOP/s GPUs of 10 GB on a 100 GB/s link; node "b": one
// 200-TFLOP/s GPU; 10 GB/s between nodes. Two layers of 1e12 FLOP, 4 GB of
// parameters, 1 GB of activations, 1 GB of tp_bytes and 2 GB of gradients.
ClusterSpec group_cluster() {
  return {"groups", 10.0,
          {{"a", 100.0, std::vector<ClusterGpu>(4, {"X", 100.0, 10.0})}, {"b", 100.0, {{"Y", 200.0, 10.0}}}},
          {{2, 0.8}}};
}

ModelProfile two_layers() {
  ModelProfile model{"two", {{"l0", 1e12, 4e9, 1e9}, {"l1", 1e12, 4e9, 1e9}}};
  for (LayerProfile& layer : model.layers) layer.tp_bytes = 1e9, layer.grad_bytes = 2e9;
  return model;
}

PlanV2 plan_of(std::vector<PlanStageV2> stages) { return PlanV2{std::move(stages)}; }

TEST(PlannerV2Evaluate, PricesComputeTensorParallelSendAndSyncTerms) {
  // Stage 0: layer 0 on a's four GPUs as t = 2, d = 2; stage 1: layer 1 on b.
  const PlanEvaluationV2 result = evaluate_v2(two_layers(), group_cluster(),
                                              plan_of({{"a", {0, 1, 2, 3}, 2, 0, 0}, {"b", {0}, 1, 1, 1}}), 10);
  ASSERT_TRUE(result.valid) << result.reason;
  const PlanStageV2& s0 = result.plan.stages[0];
  EXPECT_EQ(s0.dp, 2);
  EXPECT_EQ(s0.gpu_type, "X");
  EXPECT_DOUBLE_EQ(s0.compute_s, 1e12 / (2 * 100e12 * 0.8 * 2));  // the cluster's t = 2 efficiency
  EXPECT_DOUBLE_EQ(s0.tp_s, 1e9 * (2.0 * 1 / 2) / (100e9 * 2));
  EXPECT_DOUBLE_EQ(s0.comm_s, 1e9 / (10e9 * 2));                 // across nodes, shared by 2 replicas
  EXPECT_DOUBLE_EQ(s0.sync_s, 2.0 * 1 / 2 * 2e9 / 2 / 100e9 / 10);  // over M = 10 micro-batches
  EXPECT_DOUBLE_EQ(s0.time_s, s0.compute_s + s0.tp_s + s0.sync_s + s0.comm_s);
  EXPECT_DOUBLE_EQ(s0.memory_bytes, (4e9 + 2 * 1e9) / 2);  // split over t = 2
  EXPECT_DOUBLE_EQ(s0.memory_capacity_bytes, 10e9);
  const PlanStageV2& s1 = result.plan.stages[1];
  EXPECT_EQ(s1.dp, 1);
  EXPECT_DOUBLE_EQ(s1.compute_s, 1e12 / 200e12);
  EXPECT_EQ(s1.tp_s, 0.0);
  EXPECT_EQ(s1.sync_s, 0.0);
  EXPECT_EQ(s1.comm_s, 0.0);
  EXPECT_DOUBLE_EQ(result.plan.bottleneck_s, std::max(s0.time_s, s1.time_s));
  EXPECT_DOUBLE_EQ(result.plan.throughput(), 1 / result.plan.bottleneck_s);
}

TEST(PlannerV2Evaluate, NamesTheFirstBrokenRule) {
  ClusterSpec mixed = group_cluster();
  mixed.nodes[0].gpus[3].tflops = 50;
  ModelProfile unsplittable = two_layers();
  unsplittable.layers[1].tp_bytes.reset();
  struct Case {
    ModelProfile model;
    ClusterSpec cluster;
    PlanV2 plan;
    const char* reason;
  };
  const ModelProfile model = two_layers();
  const ClusterSpec cluster = group_cluster();
  ClusterSpec small_memory = group_cluster();
  for (ClusterGpu& gpu : small_memory.nodes[0].gpus) gpu.memory_gb = 9.5;
  const std::vector<Case> cases{
      {model, cluster, PlanV2{}, "no stages"},
      {model, cluster, plan_of({{"a", {0, 1, 2}, 2, 0, 1}}), "tp 2 does not divide its 3 GPUs"},
      {model, cluster, plan_of({{"a", {0, 1, 2}, 3, 0, 1}}), "tp 3 is not one of 1, 2, 4, 8"},
      {model, cluster, plan_of({{"a", {0, 0}, 1, 0, 1}}), "GPU 0 of node \"a\" is already used"},
      {model, cluster, plan_of({{"a", {0}, 1, 0, 0}, {"a", {1, 0}, 2, 1, 1}}), "GPU 0 of node \"a\" is already used"},
      {model, cluster, plan_of({{"a", {}, 1, 0, 1}}), "the stage has no GPUs"},
      {model, cluster, plan_of({{"a", {4}, 1, 0, 1}}), "has no GPU 4"},
      {model, cluster, plan_of({{"c", {0}, 1, 0, 1}}), "no node named \"c\""},
      {model, cluster, plan_of({{"a", {0}, 1, 1, 1}}), "must start at layer 0"},
      {model, cluster, plan_of({{"a", {0, 1}, 1, 0, 0}}), "the stages end at layer 0"},
      {model, mixed, plan_of({{"a", {2, 3}, 2, 0, 1}}), "must be identical"},
      {unsplittable, cluster, plan_of({{"a", {0, 1}, 2, 0, 1}}), "layer 1 (l1) has no tp_bytes and cannot be split"},
      // 8 GB of parameters + 1 x 2 GB of activations on each replica of 9.5 GB.
      {model, small_memory, plan_of({{"a", {0, 1}, 1, 0, 1}}), "needs 10.00 GB per GPU"},
  };
  for (const Case& c : cases) {
    const PlanEvaluationV2 result = evaluate_v2(c.model, c.cluster, c.plan, 32);
    EXPECT_FALSE(result.valid) << c.reason;
    EXPECT_CONTAINS(result.reason, c.reason);
  }
  // Exactly at capacity fits; the README's 1e-9 relative tolerance allows a
  // rounding excess but not more.
  ClusterSpec exact = cluster;
  for (ClusterGpu& gpu : exact.nodes[0].gpus) gpu.memory_gb = 5.0;  // (8 + 1 x 2) / 2
  EXPECT_TRUE(evaluate_v2(model, exact, plan_of({{"a", {0, 1}, 2, 0, 1}}), 32).valid);
  for (ClusterGpu& gpu : exact.nodes[0].gpus) gpu.memory_gb = 5.0 * (1 - 1e-6);
  EXPECT_FALSE(evaluate_v2(model, exact, plan_of({{"a", {0, 1}, 2, 0, 1}}), 32).valid);
  EXPECT_THROW((void)evaluate_v2(model, cluster, plan_of({{"a", {0}, 1, 0, 1}}), 0), SpecError);
}

TEST(PlannerV2Evaluate, AVersionOnePlanCostsTheSameUnderBothModels) {
  // The version-1 hand example of planner_test.cpp: b -> a -> a, 1.01 s.
  const ModelProfile model{"three", {{"l0", 1e12, 1e9, 1e9}, {"l1", 1e12, 1e9, 1e9}, {"l2", 1e12, 1e9, 1e9}}};
  const ClusterSpec cluster{"small", 10.0,
                            {{"a", 100.0, {{"X", 1.0, 10.0}, {"X", 1.0, 10.0}}}, {"b", 100.0, {{"Y", 2.0, 10.0}}}}};
  Plan v1;
  v1.stages = {{"b", 0, 0, 0}, {"a", 0, 1, 1}, {"a", 1, 2, 2}};
  const PlanEvaluation one = evaluate(model, cluster, v1);
  const PlanEvaluationV2 two = evaluate_v2(model, cluster, to_plan_v2(v1), 32);
  ASSERT_TRUE(one.valid && two.valid);
  EXPECT_EQ(one.plan.bottleneck_s, two.plan.bottleneck_s);
  EXPECT_DOUBLE_EQ(two.plan.bottleneck_s, 1.01);
}

// ---- the planner's choices ------------------------------------------------------

TEST(PlannerV2Choices, SplitsALayerTooLargeForOneGpuTensorParallel) {
  // One 16 GB layer on 10 GB GPUs: only t = 2 (8 GB + 1 GB per GPU) fits.
  ModelProfile model{"big", {{"l0", 1e12, 16e9, 2e9}}};
  model.layers[0].tp_bytes = 1e9;
  const ClusterSpec cluster{"c", 10.0, {{"a", 100.0, std::vector<ClusterGpu>(2, {"X", 100.0, 10.0})}}};
  const PlanResultV2 result = plan_pipeline_v2(model, cluster);
  ASSERT_TRUE(result.feasible()) << result.reason;
  ASSERT_EQ(result.plan.stages.size(), 1u);
  EXPECT_EQ(result.plan.stages[0].tp, 2);
  EXPECT_EQ(result.plan.stages[0].gpus, (std::vector<int>{0, 1}));
  EXPECT_EQ(result.v1_status, PlanStatus::infeasible);
  EXPECT_CONTAINS(result.v1_reason, "layer 0 (l0) needs 18.00 GB");
  EXPECT_EQ(result.speedup_over_v1(), 0.0);

  model.layers[0].tp_bytes.reset();  // not splittable: no plan at all
  const PlanResultV2 unsplittable = plan_pipeline_v2(model, cluster);
  EXPECT_EQ(unsplittable.status, PlanStatus::infeasible);
  EXPECT_CONTAINS(unsplittable.reason, "it has no tp_bytes, so it cannot be split");
}

TEST(PlannerV2Choices, ReplicatesAComputeBoundStageWhenGradientsAreCheap) {
  // Four equal GPUs, one compute-heavy layer with small gradients: d = 4 cuts
  // compute by 4 at little sync cost, and beats any pipeline of one layer.
  ModelProfile model{"cnn", {{"conv", 4e12, 1e8, 1e6}}};
  const ClusterSpec cluster{"c", 10.0, {{"a", 100.0, std::vector<ClusterGpu>(4, {"X", 100.0, 10.0})}}};
  const PlanResultV2 result = plan_pipeline_v2(model, cluster);
  ASSERT_TRUE(result.feasible()) << result.reason;
  ASSERT_EQ(result.plan.stages.size(), 1u);
  EXPECT_EQ(result.plan.stages[0].tp, 1);
  EXPECT_EQ(result.plan.stages[0].dp, 4);
  EXPECT_DOUBLE_EQ(result.plan.stages[0].compute_s, 4e12 / (100e12 * 4));
  ASSERT_EQ(result.v1_status, PlanStatus::optimal);
  EXPECT_DOUBLE_EQ(result.v1_plan.bottleneck_s, 0.04);
  EXPECT_GT(result.speedup_over_v1(), 3.9);
}

TEST(PlannerV2Choices, KeepsTheVersionOnePlanWhenNothingIsStrictlyFaster) {
  // A layer that cannot be split and whose gradients are huge: replicas lose.
  ModelProfile model{"m", {{"l0", 1e12, 1e9, 1e6}}};
  model.layers[0].grad_bytes = 1e15;
  const ClusterSpec cluster{"c", 10.0, {{"a", 100.0, std::vector<ClusterGpu>(2, {"X", 100.0, 10.0})}}};
  const PlanResultV2 result = plan_pipeline_v2(model, cluster);
  ASSERT_TRUE(result.feasible());
  ASSERT_EQ(result.plan.stages.size(), 1u);
  EXPECT_EQ(result.plan.stages[0].gpus.size(), 1u);
  EXPECT_DOUBLE_EQ(result.speedup_over_v1(), 1.0);
}

TEST(PlannerV2Choices, MaxTpAndMaxDpLimitTheSplits) {
  ModelProfile model{"cnn", {{"conv", 4e12, 1e8, 1e6}}};
  model.layers[0].tp_bytes = 0.0;  // splittable at no traffic cost
  const ClusterSpec cluster{"c", 10.0, {{"a", 100.0, std::vector<ClusterGpu>(4, {"X", 100.0, 10.0})}}};
  PlannerOptionsV2 options;
  options.max_dp = 1;
  const PlanResultV2 tp_only = plan_pipeline_v2(model, cluster, options);
  ASSERT_TRUE(tp_only.feasible());
  EXPECT_EQ(tp_only.plan.stages[0].tp, 4);
  EXPECT_DOUBLE_EQ(tp_only.plan.bottleneck_s, 4e12 / (4 * 100e12 * 0.9));
  options.max_dp = 0;
  options.max_tp = 2;
  const PlanResultV2 limited = plan_pipeline_v2(model, cluster, options);
  ASSERT_TRUE(limited.feasible());
  for (const PlanStageV2& stage : limited.plan.stages) EXPECT_LE(stage.tp, 2);
  options.max_tp = 3;
  EXPECT_THROW((void)plan_pipeline_v2(model, cluster, options), SpecError);
  options.max_tp = 8;
  options.micro_batches = 0;
  EXPECT_THROW((void)plan_pipeline_v2(model, cluster, options), SpecError);
}

TEST(PlannerV2Infeasible, NamesTheConstraint) {
  const ClusterSpec cluster{"c", 10.0, {{"a", 100.0, std::vector<ClusterGpu>(2, {"X", 100.0, 10.0})}}};
  ModelProfile huge{"m", {{"l0", 1e12, 30e9, 1e6}}};
  huge.layers[0].tp_bytes = 1e9;
  EXPECT_CONTAINS(plan_pipeline_v2(huge, cluster).reason, "it can be split at most 2 ways");
  ModelProfile total{"m", {{"l0", 1e12, 9e9, 1e6}, {"l1", 1e12, 9e9, 1e6}, {"l2", 1e12, 9e9, 1e6}}};
  EXPECT_CONTAINS(plan_pipeline_v2(total, cluster).reason, "the model's parameters need 27.00 GB but all 2 GPUs have 20.00 GB");
  // Each layer fits a GPU alone, but as the first of two stages layer 0
  // keeps two micro-batches (6 + 2 x 2.5 GB), and both on one GPU (or
  // replicated) need 9 + 2.5 GB.
  ModelProfile tight{"m", {{"l0", 1e12, 6e9, 2.5e9}, {"l1", 1e12, 3e9, 1e6}}};
  const PlanResultV2 result = plan_pipeline_v2(tight, cluster);
  EXPECT_EQ(result.status, PlanStatus::infeasible);
  EXPECT_CONTAINS(result.reason, "no assignment fits memory for any stage count from 1 to 2");
}

TEST(PlannerV2Infeasible, RefusesASearchAboveTheTableLimit) {
  // 12 classes of one GPU and 12 layers: 4095 multisets, each with every stage count up to its size.
  ModelProfile model;
  for (int l = 0; l < 12; ++l) model.layers.push_back({"l", 1e12, 1e9, 1e6});
  ClusterSpec cluster{"c", 10.0, {{"a", 100.0, {}}}};
  for (int g = 0; g < 12; ++g) cluster.nodes[0].gpus.push_back({"X", 100.0 + g, 10.0});
  PlannerOptionsV2 options;
  options.max_table_bytes = 1 << 20;
  const PlanResultV2 result = plan_pipeline_v2(model, cluster, options);
  EXPECT_EQ(result.status, PlanStatus::search_too_large);
  EXPECT_CONTAINS(result.reason, "12 GPU classes");
  EXPECT_CONTAINS(result.reason, "more than the limit");
  EXPECT_EQ(result.v1_status, PlanStatus::search_too_large);
}

// ---- formats ------------------------------------------------------------------

TEST(PlannerV2Input, ReadsTheVersionTwoFields) {
  const ModelProfile model = parse_model(json::parse(R"({"layers": [
      {"name": "a", "flops": 1, "param_bytes": 8, "activation_bytes": 1, "tp_bytes": 4, "grad_bytes": 2},
      {"name": "b", "flops": 1, "param_bytes": 8, "activation_bytes": 1, "tp_bytes": null},
      {"name": "c", "flops": 1, "param_bytes": 8, "activation_bytes": 1, "tp_bytes": 0}]})"));
  EXPECT_EQ(model.layers[0].tp_bytes, 4.0);
  EXPECT_EQ(model.layers[0].grad_bytes, 2.0);
  EXPECT_FALSE(model.layers[1].tp_bytes);
  EXPECT_FALSE(model.layers[1].grad_bytes);
  EXPECT_EQ(model.layers[2].tp_bytes, 0.0);

  const json cluster_json = json::parse(R"({"inter_node_gbps": 10, "tp_efficiency": {"2": 0.5},
      "nodes": [{"name": "a", "intra_node_gbps": 100, "gpus": [{"type": "X", "tflops": 1, "memory_gb": 1}]}]})");
  const ClusterSpec cluster = parse_cluster(cluster_json);
  EXPECT_EQ(tp_efficiency(cluster, 2), 0.5);
  EXPECT_EQ(tp_efficiency(cluster, 4), 0.9);  // key by key defaults
  EXPECT_EQ(tp_efficiency(cluster, 1), 1.0);
  EXPECT_THROW((void)tp_efficiency(cluster, 3), SpecError);

  json bad = cluster_json;
  bad["tp_efficiency"] = {{"3", 0.5}};
  try {
    (void)parse_cluster(bad);
    ADD_FAILURE() << "no SpecError";
  } catch (const SpecError& e) {
    EXPECT_CONTAINS(e.message(), "tp_efficiency has key \"3\"");
  }
  bad["tp_efficiency"] = {{"2", -1}};
  EXPECT_THROW((void)parse_cluster(bad), SpecError);
  bad["tp_efficiency"] = 0.9;
  EXPECT_THROW((void)parse_cluster(bad), SpecError);
  ModelProfile negative = model;
  negative.layers[0].tp_bytes = -1;
  EXPECT_THROW(validate(negative), SpecError);
}

TEST(PlannerV2PlanJson, RoundTripsTheReadmeFormatAndReadsVersionOnePlans) {
  PlanV2 plan = plan_of({{"h100", {0, 1, 2, 3}, 2, 0, 20}, {"a100", {0}, 1, 21, 49}});
  plan.bottleneck_s = 0.25;
  const json doc = plan_v2_to_json(plan, 32);
  EXPECT_EQ(doc["stages"][0]["gpus"], json::parse("[0, 1, 2, 3]"));
  EXPECT_EQ(doc["stages"][0]["tp"], 2);
  EXPECT_EQ(doc["stages"][1]["layers"], json::parse("[21, 49]"));
  EXPECT_EQ(doc["micro_batches"], 32);
  EXPECT_EQ(doc["bottleneck_s"], 0.25);
  const PlanV2 back = parse_plan_v2(doc);
  ASSERT_EQ(back.stages.size(), 2u);
  EXPECT_EQ(back.stages[0].gpus, plan.stages[0].gpus);
  EXPECT_EQ(back.stages[0].tp, 2);
  EXPECT_EQ(back.stages[1].first_layer, 21);

  const PlanV2 v1 = parse_plan_v2(json::parse(R"({"stages": [{"node": "n", "gpu": 3, "layers": [0, 4]},
      {"node": "n", "gpus": [1, 2], "layers": [5, 6]}]})"));
  EXPECT_EQ(v1.stages[0].gpus, std::vector<int>{3});
  EXPECT_EQ(v1.stages[0].tp, 1);
  EXPECT_EQ(v1.stages[1].tp, 1);  // gpus without tp: t = 1
  EXPECT_THROW((void)parse_plan_v2(json::parse(R"({"stages": [{"node": "n", "gpu": 0, "gpus": [0], "layers": [0, 0]}]})")),
               SpecError);
  EXPECT_THROW((void)parse_plan_v2(json::parse(R"({"stages": [{"node": "n", "layers": [0, 0]}]})")), SpecError);
}

}  // namespace
}  // namespace troupe::scheduler
