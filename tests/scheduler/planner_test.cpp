// TROUPE_TEST_LABELS: fast
// The pipeline planner against shared/planner/cases.json (from ../shared when
// present, and always from the copy in tests/scheduler/data/planner), against
// a brute-force enumerator on random small cases, on a 16-GPU 100-layer case
// against the clock, and on bad input.
#include "troupe/scheduler/planner.hpp"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <algorithm>
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
#include <tuple>
#include <vector>

#include <unistd.h>

#include "troupe/scheduler/error.hpp"
#include "planner_test_support.hpp"

namespace troupe::scheduler {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

using namespace planner_testing;

// ---- the cases ---------------------------------------------------------------


// "5 stages: h100 0-11, h100 12-40, ..." for the log.
std::string stage_summary(const Plan& plan) {
  std::string text = std::to_string(plan.stages.size()) + " stages:";
  for (const PlanStage& s : plan.stages) {
    text += " " + s.node + "/" + std::to_string(s.gpu) + " " + std::to_string(s.first_layer) + "-" +
            std::to_string(s.last_layer);
  }
  return text;
}

// Every pairing: the planner's optimum (or infeasibility) and the uniform
// baseline match the reference, and the plan validates under evaluate().
void check_cases(const fs::path& planner_dir) {
  const json cases = json::parse(read_bytes(planner_dir / "cases.json"));
  ASSERT_FALSE(cases.empty());
  for (const json& c : cases) {
    const std::string label = c["model"].get<std::string>() + " on " + c["cluster"].get<std::string>();
    SCOPED_TRACE(label);
    const ModelProfile model = load_model(resolve(planner_dir, c["model"]));
    const ClusterSpec cluster = load_cluster(resolve(planner_dir, c["cluster"]));

    const auto start = std::chrono::steady_clock::now();
    const PlanResult result = plan_pipeline(model, cluster);
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    std::printf("  %-60s %8.1f ms  %s\n", label.c_str(), seconds * 1e3,
                result.feasible() ? stage_summary(result.plan).c_str() : "infeasible");

    if (c["optimum_s"].is_string()) {
      EXPECT_EQ(c["optimum_s"], "infeasible");
      EXPECT_EQ(result.status, PlanStatus::infeasible);
      EXPECT_FALSE(result.reason.empty());
    } else {
      ASSERT_EQ(result.status, PlanStatus::optimal) << result.reason;
      const double optimum = c["optimum_s"].get<double>();
      EXPECT_TRUE(close(result.plan.bottleneck_s, optimum))
          << result.plan.bottleneck_s << " vs " << optimum;
      const PlanEvaluation check = evaluate(model, cluster, result.plan);
      EXPECT_TRUE(check.valid) << check.reason;
      EXPECT_EQ(check.plan.bottleneck_s, result.plan.bottleneck_s);
      EXPECT_TRUE(close(result.plan.throughput(), 1 / optimum));
    }

    const PlanEvaluation uniform = evaluate(model, cluster, uniform_plan(model, cluster));
    if (c["uniform_s"].is_string()) {
      EXPECT_EQ(c["uniform_s"], "infeasible");
      EXPECT_FALSE(uniform.valid);
      EXPECT_CONTAINS(uniform.reason, "needs");
    } else {
      EXPECT_TRUE(uniform.valid) << uniform.reason;
      EXPECT_TRUE(close(uniform.plan.bottleneck_s, c["uniform_s"].get<double>()))
          << uniform.plan.bottleneck_s << " vs " << c["uniform_s"];
      if (result.feasible()) {
        EXPECT_LE(result.plan.bottleneck_s, uniform.plan.bottleneck_s * (1 + 1e-12));
      }
    }
  }
}

TEST(PlannerCases, TheCopiedCasesReproduceEveryOptimumAndUniformBaseline) {
  check_cases(copied_planner_dir());
}

TEST(PlannerCases, TheSharedCasesReproduceEveryOptimumAndUniformBaseline) {
  const std::optional<fs::path> shared = shared_planner_dir();
  if (!shared) GTEST_SKIP() << "no shared/planner beside the repository (set TROUPE_SHARED_DIR)";
  check_cases(*shared);
}

TEST(PlannerCases, TheCopyEqualsTheSharedFiles) {
  const std::optional<fs::path> shared = shared_planner_dir();
  if (!shared) GTEST_SKIP() << "no shared/planner beside the repository (set TROUPE_SHARED_DIR)";
  const fs::path copy = copied_planner_dir();
  EXPECT_EQ(read_bytes(copy / "cases.json"), read_bytes(*shared / "cases.json"))
      << "refresh tests/scheduler/data/planner from shared/planner";
  for (const json& c : json::parse(read_bytes(*shared / "cases.json"))) {
    for (const char* key : {"model", "cluster"}) {
      EXPECT_EQ(read_bytes(resolve(copy, c[key])), read_bytes(resolve(*shared, c[key]))) << c[key];
    }
  }
}

// ---- brute force -------------------------------------------------------------

// Every plan of every stage count, priced with plain sums (independently of
// the planner's prefix sums): the reference optimum, or +infinity.
double brute_force_optimum(const ModelProfile& model, const ClusterSpec& cluster, int max_stages) {
  struct Gpu {
    int node;
    double tflops, memory_gb;
  };
  std::vector<Gpu> gpus;
  for (std::size_t n = 0; n < cluster.nodes.size(); ++n) {
    for (const ClusterGpu& g : cluster.nodes[n].gpus) gpus.push_back({static_cast<int>(n), g.tflops, g.memory_gb});
  }
  const int layers = static_cast<int>(model.layers.size());
  const int top = std::min({static_cast<int>(gpus.size()), layers, max_stages > 0 ? max_stages : 1 << 30});
  double best = kInf;
  std::vector<int> ends;    // last layer of each stage
  std::vector<int> chosen;  // GPU of each stage
  std::vector<bool> used(gpus.size(), false);

  auto price = [&](int stages) {
    double bottleneck = 0;
    int first = 0;
    for (int k = 0; k < stages; ++k) {
      const Gpu& gpu = gpus[static_cast<std::size_t>(chosen[static_cast<std::size_t>(k)])];
      double flops = 0, params = 0, activations = 0;
      const int last = ends[static_cast<std::size_t>(k)];
      for (int l = first; l <= last; ++l) {
        flops += model.layers[static_cast<std::size_t>(l)].flops;
        params += model.layers[static_cast<std::size_t>(l)].param_bytes;
        activations += model.layers[static_cast<std::size_t>(l)].activation_bytes;
      }
      if (params + (stages - k) * activations > gpu.memory_gb * 1e9) return;
      double time = flops / (gpu.tflops * 1e12);
      if (k + 1 < stages) {
        const Gpu& next = gpus[static_cast<std::size_t>(chosen[static_cast<std::size_t>(k + 1)])];
        const double gbps = next.node == gpu.node ? cluster.nodes[static_cast<std::size_t>(gpu.node)].intra_node_gbps
                                                  : cluster.inter_node_gbps;
        time += model.layers[static_cast<std::size_t>(last)].activation_bytes / (gbps * 1e9);
      }
      bottleneck = std::max(bottleneck, time);
      first = last + 1;
    }
    best = std::min(best, bottleneck);
  };
  std::function<void(int, int)> pick_gpus = [&](int stages, int k) {
    if (k == stages) return price(stages);
    for (std::size_t g = 0; g < gpus.size(); ++g) {
      if (used[g]) continue;
      used[g] = true;
      chosen.push_back(static_cast<int>(g));
      pick_gpus(stages, k + 1);
      chosen.pop_back();
      used[g] = false;
    }
  };
  std::function<void(int, int)> cut = [&](int stages, int first) {
    const int k = static_cast<int>(ends.size());
    if (k == stages - 1) {
      ends.push_back(layers - 1);
      pick_gpus(stages, 0);
      ends.pop_back();
      return;
    }
    for (int last = first; last <= layers - (stages - k); ++last) {
      ends.push_back(last);
      cut(stages, last + 1);
      ends.pop_back();
    }
  };
  for (int stages = 1; stages <= top; ++stages) cut(stages, 0);
  return best;
}

// Up to 8 layers, up to 4 GPUs on 1-2 nodes; speeds and memories either from
// a small set (so GPUs form classes) or continuous; memory scaled so that
// some cases have no valid plan; intra-node links sometimes slower than the
// network.
struct RandomCase {
  ModelProfile model;
  ClusterSpec cluster;
  int max_stages = 0;
};

RandomCase random_case(std::mt19937_64& rng) {
  auto uniform = [&](double low, double high) { return std::uniform_real_distribution<double>(low, high)(rng); };
  auto integer = [&](int low, int high) { return std::uniform_int_distribution<int>(low, high)(rng); };
  RandomCase c;
  const int layers = integer(1, 8);
  for (int l = 0; l < layers; ++l) {
    LayerProfile layer;
    layer.name = "l" + std::to_string(l);
    layer.flops = integer(0, 9) == 0 ? 0.0 : uniform(0, 1e12);
    layer.param_bytes = uniform(0, 8e9);
    layer.activation_bytes = integer(0, 9) == 0 ? 0.0 : uniform(0, 3e8);
    c.model.layers.push_back(layer);
  }
  const bool discrete = integer(0, 1) == 0;
  const double memory_scale = uniform(0.3, 1.5);
  const int nodes = integer(1, 2);
  int gpus_left = integer(nodes, 4);
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
      gpu.tflops = discrete ? (integer(0, 1) == 0 ? 100.0 : 300.0) : uniform(20, 700);
      gpu.memory_gb = memory_scale * (discrete ? (integer(0, 1) == 0 ? 16.0 : 40.0) : uniform(8, 48));
      node.gpus.push_back(gpu);
    }
    c.cluster.nodes.push_back(node);
  }
  c.max_stages = integer(0, 3) == 0 ? integer(1, 4) : 0;
  return c;
}

TEST(PlannerBruteForce, MatchesExhaustiveEnumerationOnRandomSmallCases) {
  std::mt19937_64 rng(20240605);
  int feasible = 0, infeasible = 0;
  for (int i = 0; i < 400; ++i) {
    const RandomCase c = random_case(rng);
    SCOPED_TRACE("case " + std::to_string(i));
    PlannerOptions options;
    options.max_stages = c.max_stages;
    const PlanResult result = plan_pipeline(c.model, c.cluster, options);
    const double reference = brute_force_optimum(c.model, c.cluster, c.max_stages);
    if (reference == kInf) {
      ++infeasible;
      EXPECT_EQ(result.status, PlanStatus::infeasible);
      EXPECT_FALSE(result.reason.empty());
      continue;
    }
    ++feasible;
    ASSERT_EQ(result.status, PlanStatus::optimal) << result.reason;
    EXPECT_TRUE(close(result.plan.bottleneck_s, reference)) << result.plan.bottleneck_s << " vs " << reference;
    if (c.max_stages > 0) {
      EXPECT_LE(static_cast<int>(result.plan.stages.size()), c.max_stages);
    }
    const PlanEvaluation check = evaluate(c.model, c.cluster, result.plan);
    EXPECT_TRUE(check.valid) << check.reason;
  }
  // The generator must exercise both outcomes.
  EXPECT_GE(feasible, 200);
  EXPECT_GE(infeasible, 20);
}

// ---- speed -----------------------------------------------------------------

TEST(PlannerSpeed, SixteenGpusAndOneHundredLayersSolveWellUnderASecond) {
  const ClusterSpec cluster = load_cluster(copied_planner_dir() / "clusters" / "mixed-16gpu-4node.json");
  ASSERT_EQ(cluster.gpu_count(), 16u);
  std::mt19937_64 rng(7);
  std::uniform_real_distribution<double> flops(1e10, 5e11), params(1e7, 2e9), activations(1e6, 2e8);
  ModelProfile model;
  for (int l = 0; l < 100; ++l) model.layers.push_back({"l" + std::to_string(l), flops(rng), params(rng), activations(rng)});

  const auto start = std::chrono::steady_clock::now();
  const PlanResult result = plan_pipeline(model, cluster);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::printf("  16 GPUs x 100 layers: %.1f ms, %zu stages, %llu states\n", seconds * 1e3,
              result.plan.stages.size(), static_cast<unsigned long long>(result.states_evaluated));
  ASSERT_TRUE(result.feasible()) << result.reason;
  EXPECT_TRUE(evaluate(model, cluster, result.plan).valid);
  // Milliseconds in a Release build; the bound leaves room for Debug builds
  // on a loaded machine.
  EXPECT_LT(seconds, 5.0);
}

// ---- the cost model, by hand ---------------------------------------------------

// Two nodes: "a" with two 1-TFLOP/s GPUs of 10 GB on a 100 GB/s link, "b"
// with one; 10 GB/s between nodes. Three layers of 1e12 FLOP, 1 GB of
// parameters and 1 GB of activations each.
ClusterSpec small_cluster() {
  return {"small", 10.0,
          {{"a", 100.0, {{"X", 1.0, 10.0}, {"X", 1.0, 10.0}}}, {"b", 100.0, {{"Y", 2.0, 10.0}}}}};
}

ModelProfile three_layers() {
  return {"three", {{"l0", 1e12, 1e9, 1e9}, {"l1", 1e12, 1e9, 1e9}, {"l2", 1e12, 1e9, 1e9}}};
}

Plan plan_of(std::vector<std::tuple<std::string, int, int, int>> stages) {
  Plan plan;
  for (auto& [node, gpu, first, last] : stages) plan.stages.push_back({node, gpu, first, last});
  return plan;
}

TEST(PlannerEvaluate, PricesComputeTheSendersLinkAndInFlightActivations) {
  const PlanEvaluation same_node = evaluate(three_layers(), small_cluster(), plan_of({{"a", 0, 0, 1}, {"a", 1, 2, 2}}));
  ASSERT_TRUE(same_node.valid) << same_node.reason;
  const PlanStage& s0 = same_node.plan.stages[0];
  EXPECT_DOUBLE_EQ(s0.compute_s, 2.0);
  EXPECT_DOUBLE_EQ(s0.comm_s, 0.01);  // 1 GB over 100 GB/s
  EXPECT_DOUBLE_EQ(s0.time_s, 2.01);
  EXPECT_DOUBLE_EQ(s0.memory_bytes, 2e9 + 2 * 2e9);  // params + (S-0) * activations
  EXPECT_DOUBLE_EQ(s0.memory_capacity_bytes, 10e9);
  EXPECT_EQ(s0.gpu_type, "X");
  const PlanStage& s1 = same_node.plan.stages[1];
  EXPECT_DOUBLE_EQ(s1.comm_s, 0.0);  // the last stage sends nothing
  EXPECT_DOUBLE_EQ(s1.memory_bytes, 2e9);
  EXPECT_DOUBLE_EQ(same_node.plan.bottleneck_s, 2.01);
  EXPECT_EQ(same_node.plan.bottleneck_stage, 0);
  EXPECT_DOUBLE_EQ(same_node.plan.throughput(), 1 / 2.01);

  const PlanEvaluation across = evaluate(three_layers(), small_cluster(), plan_of({{"a", 0, 0, 1}, {"b", 0, 2, 2}}));
  ASSERT_TRUE(across.valid);
  EXPECT_DOUBLE_EQ(across.plan.stages[0].comm_s, 0.1);  // 1 GB over the 10 GB/s network
  EXPECT_DOUBLE_EQ(across.plan.stages[1].compute_s, 0.5);
}

TEST(PlannerEvaluate, NamesTheFirstBrokenRule) {
  struct Case {
    Plan plan;
    const char* reason;
  };
  const std::vector<Case> cases{
      {Plan{}, "no stages"},
      {plan_of({{"a", 0, 0, 0}, {"a", 1, 2, 2}}), "must start at layer 1"},
      {plan_of({{"a", 0, 1, 2}}), "must start at layer 0"},
      {plan_of({{"a", 0, 0, 1}}), "the stages end at layer 1 but the model's last layer is 2"},
      {plan_of({{"a", 0, 0, 0}, {"a", 0, 1, 2}}), "already used"},
      {plan_of({{"c", 0, 0, 2}}), "no node named \"c\""},
      {plan_of({{"a", 2, 0, 2}}), "has no GPU 2"},
      {plan_of({{"a", 0, 0, 5}}), "not a non-empty range"},
      {plan_of({{"a", 0, 2, 1}}), "not a non-empty range"},
      {plan_of({{"a", 0, 0, 0}, {"a", 1, 1, 1}, {"b", 0, 2, 2}, {"b", 0, 2, 2}}), "4 stages but the cluster has 3"},
  };
  for (const Case& c : cases) {
    const PlanEvaluation result = evaluate(three_layers(), small_cluster(), c.plan);
    EXPECT_FALSE(result.valid);
    EXPECT_CONTAINS(result.reason, c.reason);
  }

  ClusterSpec tight = small_cluster();
  tight.nodes[0].gpus[0].memory_gb = 5.9;
  const PlanEvaluation memory = evaluate(three_layers(), tight, plan_of({{"a", 0, 0, 1}, {"a", 1, 2, 2}}));
  EXPECT_FALSE(memory.valid);
  EXPECT_CONTAINS(memory.reason, "stage 0 (a GPU 0, layers 0-1) needs 6.00 GB (2.00 GB of parameters + 2 x 2.00 GB");
  EXPECT_CONTAINS(memory.reason, "has 5.90 GB");
  EXPECT_DOUBLE_EQ(memory.plan.bottleneck_s, 2.01);  // costs are filled in all the same
}

TEST(PlannerUniform, GivesTheFirstLModSStagesOneLayerMore) {
  ModelProfile model;
  for (int l = 0; l < 7; ++l) model.layers.push_back({"l", 1, 1, 1});
  const Plan plan = uniform_plan(model, small_cluster());
  ASSERT_EQ(plan.stages.size(), 3u);
  EXPECT_EQ(plan.stages[0].node, "a");
  EXPECT_EQ(plan.stages[1].node, "a");
  EXPECT_EQ(plan.stages[1].gpu, 1);
  EXPECT_EQ(plan.stages[2].node, "b");
  EXPECT_EQ(std::make_pair(plan.stages[0].first_layer, plan.stages[0].last_layer), std::make_pair(0, 2));
  EXPECT_EQ(std::make_pair(plan.stages[1].first_layer, plan.stages[1].last_layer), std::make_pair(3, 4));
  EXPECT_EQ(std::make_pair(plan.stages[2].first_layer, plan.stages[2].last_layer), std::make_pair(5, 6));

  model.layers.resize(2);  // fewer layers than GPUs: one layer per stage on the first GPUs
  const Plan short_plan = uniform_plan(model, small_cluster());
  ASSERT_EQ(short_plan.stages.size(), 2u);
  EXPECT_EQ(short_plan.stages[1].node, "a");
  EXPECT_EQ(short_plan.stages[1].last_layer, 1);
}

// ---- the planner's choices ---------------------------------------------------------

TEST(PlannerChoices, StartsOnTheFastGpuAndPaysTheNetworkOnceBeforeTheNvlinkPair) {
  // By hand: all on "b" takes 1.5 s; b -> a -> a with one layer each takes
  // max(0.5 + 0.1 (1 GB at 10 GB/s), 1 + 0.01 (at 100 GB/s), 1) = 1.01 s;
  // any plan with a stage of two layers on "a", or that crosses the
  // network after a 1-TFLOP/s stage, is slower.
  const PlanResult result = plan_pipeline(three_layers(), small_cluster());
  ASSERT_TRUE(result.feasible()) << result.reason;
  EXPECT_DOUBLE_EQ(result.plan.bottleneck_s, 1.01);
  EXPECT_TRUE(close(result.plan.bottleneck_s, brute_force_optimum(three_layers(), small_cluster(), 0)));
  ASSERT_EQ(result.plan.stages.size(), 3u);
  EXPECT_EQ(result.plan.stages[0].node, "b");
  EXPECT_EQ(result.plan.stages[1].node, "a");
  EXPECT_EQ(result.plan.stages[2].node, "a");
  EXPECT_EQ(result.plan.bottleneck_stage, 1);
  EXPECT_EQ(result.gpu_classes, 2u);  // the two GPUs of "a" are one class
}

TEST(PlannerChoices, AmongEqualBottlenecksPrefersFewerStages) {
  // The second layer costs nothing and sends nothing: one stage is as fast as two.
  const ModelProfile model{"m", {{"work", 1e12, 1e9, 0.0}, {"free", 0.0, 0.0, 0.0}}};
  const ClusterSpec cluster{"c", 10.0, {{"a", 100.0, {{"X", 1.0, 10.0}, {"X", 1.0, 10.0}}}}};
  const PlanResult result = plan_pipeline(model, cluster);
  ASSERT_TRUE(result.feasible());
  EXPECT_EQ(result.plan.stages.size(), 1u);
  EXPECT_DOUBLE_EQ(result.plan.bottleneck_s, 1.0);
}

TEST(PlannerChoices, SplitsAcrossGpusWhenTheInFlightActivationsDoNotFitOnOne) {
  // On one GPU: 4 GB params + 1 x 8 GB = 12 GB > 10 GB. On two stages:
  // stage 0 = layer 0: 2 + 2 x 4 = 10 GB fits exactly; stage 1: 2 + 4 = 6 GB.
  const ModelProfile model{"m", {{"l0", 1e12, 2e9, 4e9}, {"l1", 1e12, 2e9, 4e9}}};
  const ClusterSpec cluster{"c", 10.0, {{"a", 100.0, {{"X", 1.0, 10.0}, {"X", 1.0, 10.0}}}}};
  const PlanResult result = plan_pipeline(model, cluster);
  ASSERT_TRUE(result.feasible()) << result.reason;
  ASSERT_EQ(result.plan.stages.size(), 2u);
  EXPECT_DOUBLE_EQ(result.plan.stages[0].memory_bytes, 10e9);
  EXPECT_DOUBLE_EQ(result.plan.bottleneck_s, 1.0 + 4e9 / 100e9);
  EXPECT_EQ(result.plan.stages[0].gpu, 0);  // lowest free index of the class first
  EXPECT_EQ(result.plan.stages[1].gpu, 1);
}

TEST(PlannerChoices, MaxStagesLimitsTheStageCount) {
  ModelProfile model;
  for (int l = 0; l < 6; ++l) model.layers.push_back({"l", 1e12, 1e8, 1e6});
  const ClusterSpec cluster{"c", 10.0, {{"a", 100.0, std::vector<ClusterGpu>(4, {"X", 1.0, 40.0})}}};
  PlannerOptions options;
  options.max_stages = 2;
  const PlanResult result = plan_pipeline(model, cluster, options);
  ASSERT_TRUE(result.feasible());
  EXPECT_EQ(result.plan.stages.size(), 2u);
  EXPECT_TRUE(close(result.plan.bottleneck_s, 3.0 + 1e6 / 100e9));
  // Unlimited: 2 + 2 + 2 layers is as fast as 2 + 2 + 1 + 1, and fewer stages win.
  const PlanResult unlimited = plan_pipeline(model, cluster);
  EXPECT_EQ(unlimited.plan.stages.size(), 3u);
  EXPECT_TRUE(close(unlimited.plan.bottleneck_s, 2.0 + 1e6 / 100e9));
}

// ---- infeasible pairings ----------------------------------------------------------

TEST(PlannerInfeasible, NamesALayerWhoseParametersExceedTheLargestGpu) {
  const ModelProfile model{"m", {{"small", 1, 1e9, 1}, {"huge", 1, 45.2e9, 1}}};
  const ClusterSpec cluster{"c", 10.0, {{"a", 100.0, {{"A100-40GB", 300, 40}, {"A100-40GB", 300, 40}}}}};
  const PlanResult result = plan_pipeline(model, cluster);
  EXPECT_EQ(result.status, PlanStatus::infeasible);
  EXPECT_EQ(result.reason, "layer 1 (huge) needs 45.20 GB of parameters but the largest GPU has 40.00 GB");
}

TEST(PlannerInfeasible, NamesALayerWhoseParametersAndOneMicroBatchExceedTheLargestGpu) {
  const ModelProfile model{"m", {{"wide", 1, 30e9, 15e9}}};
  const ClusterSpec cluster{"c", 10.0, {{"a", 100.0, {{"X", 300, 40}}}}};
  const PlanResult result = plan_pipeline(model, cluster);
  EXPECT_EQ(result.status, PlanStatus::infeasible);
  EXPECT_CONTAINS(result.reason, "layer 0 (wide) needs 45.00 GB (30.00 GB of parameters + 15.00 GB of activations");
}

TEST(PlannerInfeasible, NamesTheTotalWhenParametersExceedAllGpus) {
  ModelProfile model;
  for (int l = 0; l < 4; ++l) model.layers.push_back({"l", 1, 30e9, 0});
  const ClusterSpec cluster{"c", 10.0, {{"a", 100.0, {{"X", 1, 40}, {"X", 1, 40}}}}};
  const PlanResult result = plan_pipeline(model, cluster);
  EXPECT_EQ(result.status, PlanStatus::infeasible);
  EXPECT_CONTAINS(result.reason, "parameters need 120.00 GB but the 2 largest GPUs usable have 80.00 GB");
}

TEST(PlannerInfeasible, SaysNoAssignmentFitsWhenInFlightActivationsBreakEveryStageCount) {
  // Each layer fits alone as a last stage (10 + 10 = 20 GB), and the
  // parameters fit in total, but the first of two stages keeps 2 micro-batches.
  const ModelProfile model{"m", {{"l0", 1, 10e9, 10e9}, {"l1", 1, 10e9, 10e9}}};
  const ClusterSpec cluster{"c", 10.0, {{"a", 100.0, {{"X", 1, 20}, {"X", 1, 20}}}}};
  const PlanResult result = plan_pipeline(model, cluster);
  EXPECT_EQ(result.status, PlanStatus::infeasible);
  EXPECT_EQ(result.reason,
            "no assignment fits memory for any stage count from 1 to 2 (parameters plus (S-k) micro-batches of "
            "activations per stage)");
  PlannerOptions one;
  one.max_stages = 1;
  EXPECT_CONTAINS(plan_pipeline(model, cluster, one).reason, "no assignment fits memory with at most 1 stage (");
}

TEST(PlannerInfeasible, RefusesASearchAboveTheTableLimit) {
  PlannerOptions options;
  options.max_table_bytes = 100;  // the tables take 6 multisets x 3 layers x (2 x 8 + 18) bytes
  const PlanResult result = plan_pipeline(three_layers(), small_cluster(), options);
  EXPECT_EQ(result.status, PlanStatus::search_too_large);
  EXPECT_CONTAINS(result.reason, "2 GPU classes");
}

// ---- input -------------------------------------------------------------------

TEST(PlannerInput, ParsesTheReadmeFormats) {
  const ModelProfile model = parse_model(json::parse(R"({"name": "m", "source": "x", "batch_size": 4,
      "layers": [{"name": "a", "flops": 1e12, "param_bytes": 2, "activation_bytes": 3}]})"));
  EXPECT_EQ(model.name, "m");
  ASSERT_EQ(model.layers.size(), 1u);
  EXPECT_EQ(model.layers[0].name, "a");
  EXPECT_EQ(model.layers[0].flops, 1e12);
  EXPECT_EQ(model.layers[0].activation_bytes, 3);

  const ClusterSpec cluster = parse_cluster(json::parse(R"({"name": "c", "description": "d", "inter_node_gbps": 25,
      "nodes": [{"name": "n", "intra_node_gbps": 450, "gpus": [{"type": "H100-80GB", "tflops": 700, "memory_gb": 80}]},
                {"name": "cpu", "intra_node_gbps": 1, "gpus": []}]})"));
  EXPECT_EQ(cluster.gpu_count(), 1u);
  EXPECT_EQ(cluster.nodes[0].gpus[0].type, "H100-80GB");
  EXPECT_EQ(cluster.nodes[0].intra_node_gbps, 450);
}

TEST(PlannerInput, RejectsBadModelsNamingTheField) {
  struct Case {
    const char* json;
    const char* message;
  };
  const std::vector<Case> cases{
      {R"([])", "expected a JSON object"},
      {R"({"name": "m"})", "missing key \"layers\""},
      {R"({"layers": {}})", "\"layers\" must be an array"},
      {R"({"layers": []})", "the model has no layers"},
      {R"({"layers": [{"name": "a", "param_bytes": 1, "activation_bytes": 1}]})", "layers[0]: missing key \"flops\""},
      {R"({"layers": [{"name": "a", "flops": "1", "param_bytes": 1, "activation_bytes": 1}]})",
       "layers[0]: \"flops\" must be a number, got \"1\""},
      {R"({"layers": [{"name": "a", "flops": 1, "param_bytes": -5, "activation_bytes": 1}]})",
       "layers[0] (\"a\"): param_bytes must be a finite number >= 0, got -5"},
      {R"({"layers": [{"flops": 1, "param_bytes": 1, "activation_bytes": 1}]})", "missing key \"name\""},
      {R"({"layers": [3]})", "layers[0]: expected a JSON object, got 3"},
  };
  for (const Case& c : cases) {
    try {
      parse_model(json::parse(c.json));
      ADD_FAILURE() << "accepted " << c.json;
    } catch (const SpecError& e) {
      EXPECT_CONTAINS(e.what(), c.message);
    }
  }
}

TEST(PlannerInput, RejectsBadClustersNamingTheField) {
  struct Case {
    const char* json;
    const char* message;
  };
  const std::vector<Case> cases{
      {R"({"nodes": []})", "missing key \"inter_node_gbps\""},
      {R"({"inter_node_gbps": 1, "nodes": []})", "the cluster has no nodes"},
      {R"({"inter_node_gbps": 1, "nodes": [{"name": "n", "intra_node_gbps": 1, "gpus": []}]})",
       "the cluster has no GPUs"},
      {R"({"inter_node_gbps": 0, "nodes": [{"name": "n", "intra_node_gbps": 1, "gpus": []}]})",
       "inter_node_gbps must be a finite number > 0, got 0"},
      {R"({"inter_node_gbps": 1, "nodes": [{"name": "n", "gpus": []}]})", "nodes[0]: missing key \"intra_node_gbps\""},
      {R"({"inter_node_gbps": 1, "nodes": [{"name": "n", "intra_node_gbps": 1,
           "gpus": [{"type": "x", "tflops": -1, "memory_gb": 1}]}]})",
       "nodes[0] (\"n\").gpus[0]: tflops must be a finite number > 0, got -1"},
      {R"({"inter_node_gbps": 1, "nodes": [{"name": "n", "intra_node_gbps": 1,
           "gpus": [{"type": "x", "tflops": 1}]}]})",
       "nodes[0].gpus[0]: missing key \"memory_gb\""},
      {R"({"inter_node_gbps": 1, "nodes": [
           {"name": "n", "intra_node_gbps": 1, "gpus": [{"type": "x", "tflops": 1, "memory_gb": 1}]},
           {"name": "n", "intra_node_gbps": 1, "gpus": []}]})",
       "nodes[1] (\"n\"): the name is used by another node"},
  };
  for (const Case& c : cases) {
    try {
      parse_cluster(json::parse(c.json));
      ADD_FAILURE() << "accepted " << c.json;
    } catch (const SpecError& e) {
      EXPECT_CONTAINS(e.what(), c.message);
    }
  }
}

TEST(PlannerInput, ValidatesCodeBuiltInputsToo) {
  ModelProfile model = three_layers();
  model.layers[1].flops = std::nan("");
  EXPECT_THROW(plan_pipeline(model, small_cluster()), SpecError);
  EXPECT_THROW(evaluate(ModelProfile{}, small_cluster(), Plan{}), SpecError);
  EXPECT_THROW(uniform_plan(three_layers(), ClusterSpec{"c", 1.0, {}}), SpecError);
  PlannerOptions options;
  options.max_stages = -1;
  EXPECT_THROW(plan_pipeline(three_layers(), small_cluster(), options), SpecError);
}

TEST(PlannerInput, LoadNamesTheFileForMissingFilesSyntaxErrorsAndBadContent) {
  const fs::path dir = fs::temp_directory_path() / ("troupe-planner-test-" + std::to_string(::getpid()));
  fs::create_directories(dir);
  auto write = [&](const std::string& name, const std::string& text) {
    std::ofstream(dir / name) << text;
    return dir / name;
  };
  auto message = [](auto&& load) -> std::string {
    try {
      load();
    } catch (const SpecError& e) {
      return e.what();
    }
    return "no error";
  };
  const fs::path missing = dir / "missing.json";
  EXPECT_CONTAINS(message([&] { load_model(missing); }), "cannot read the model file " + missing.string());
  const fs::path broken = write("broken.json", "{\"layers\": [");
  EXPECT_CONTAINS(message([&] { load_cluster(broken); }), "cluster file " + broken.string() + ": not valid JSON");
  const fs::path empty = write("empty.json", R"({"layers": []})");
  EXPECT_CONTAINS(message([&] { load_model(empty); }), "model file " + empty.string() + ": the model has no layers");
  fs::remove_all(dir);
}

TEST(PlannerPlanJson, RoundTripsTheReadmeFormatPlusTheBottleneck) {
  Plan plan = plan_of({{"a", 0, 0, 1}, {"b", 0, 2, 2}});
  plan.bottleneck_s = 0.25;
  const json document = plan_to_json(plan);
  EXPECT_EQ(document, json::parse(R"({"stages": [{"node": "a", "gpu": 0, "layers": [0, 1]},
                                                  {"node": "b", "gpu": 0, "layers": [2, 2]}],
                                      "bottleneck_s": 0.25})"));
  const Plan back = parse_plan(document);
  ASSERT_EQ(back.stages.size(), 2u);
  EXPECT_EQ(back.stages[1].node, "b");
  EXPECT_EQ(back.stages[0].last_layer, 1);
  EXPECT_THROW(parse_plan(json::parse(R"({"stages": [{"node": "a", "gpu": 0, "layers": [0]}]})")), SpecError);
  EXPECT_THROW(parse_plan(json::parse(R"({"stages": [{"node": "a", "gpu": -1, "layers": [0, 1]}]})")), SpecError);
}

// ---- GPU types -----------------------------------------------------------------

TEST(PlannerGpuTypes, FindsTheReadmeTypesByNameOrCudaName) {
  EXPECT_EQ(find_gpu_type("H100-80GB"), (GpuTypeSpec{700, 80}));
  EXPECT_EQ(find_gpu_type("h100-80gb"), (GpuTypeSpec{700, 80}));
  EXPECT_EQ(find_gpu_type("NVIDIA H100 80GB HBM3"), (GpuTypeSpec{700, 80}));
  EXPECT_EQ(find_gpu_type("NVIDIA A100-SXM4-40GB"), (GpuTypeSpec{300, 40}));
  EXPECT_EQ(find_gpu_type("NVIDIA A100-SXM4-80GB"), (GpuTypeSpec{300, 80}));
  EXPECT_EQ(find_gpu_type("Tesla T4-16GB"), (GpuTypeSpec{60, 16}));
  EXPECT_EQ(builtin_gpu_types().size(), 8u);
  EXPECT_FALSE(find_gpu_type("A100"));  // which memory? ambiguous, so unknown
  EXPECT_FALSE(find_gpu_type("Mystery-X"));
}

TEST(PlannerGpuTypes, AUserTableAddsAndOverridesTypes) {
  const GpuTypeTable user =
      parse_gpu_type_table(json::parse(R"({"Mystery-X": {"tflops": 42, "memory_gb": 12}, "H100-80GB": {"tflops": 900, "memory_gb": 80}})"));
  EXPECT_EQ(find_gpu_type("Mystery-X", user), (GpuTypeSpec{42, 12}));
  EXPECT_EQ(find_gpu_type("NVIDIA H100 80GB HBM3", user), (GpuTypeSpec{900, 80}));
  EXPECT_EQ(find_gpu_type("T4-16GB", user), (GpuTypeSpec{60, 16}));
  EXPECT_THROW(parse_gpu_type_table(json::parse(R"({"X": {"tflops": 0, "memory_gb": 1}})")), SpecError);
  EXPECT_THROW(parse_gpu_type_table(json::parse(R"({"X": {"memory_gb": 1}})")), SpecError);
  EXPECT_THROW(parse_gpu_type_table(json::parse(R"([1])")), SpecError);
}

}  // namespace
}  // namespace troupe::scheduler
