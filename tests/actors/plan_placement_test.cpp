// From a pipeline plan to placed stage actors (troupe/actors/plan_placement.hpp)
// in local mode with declared GPUs: the node is described for the planner,
// and each stage actor gets a GPU of the type its plan stage names.
// (tests/cluster/plan_placement_test.cpp does the same across real nodes.)
// TROUPE_TEST_LABELS: fast
#include "troupe/actors/plan_placement.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <string>
#include <vector>

#include "troupe/scheduler/planner.hpp"
#include "troupe/scheduler/planner_v2.hpp"
#include "troupe/troupe.hpp"

namespace {

using namespace std::chrono_literals;
namespace sched = troupe::scheduler;

// Reports the GPUs it was given.
class Probe {
 public:
  explicit Probe(int stage) : stage_(stage) {}
  std::vector<int> gpus() const { return troupe::get_gpu_ids(); }
  int stage() const { return stage_; }

 private:
  int stage_;
};

}  // namespace

TROUPE_ACTOR(Probe, (int), gpus, stage);

namespace {

// Three layers whose memory forces the split: the 70 GB middle layer only
// fits an H100 and leaves no room there for the 10 GB layers, which fit a
// T4 each: the plan is T4, H100, T4.
sched::ModelProfile memory_bound_model() {
  sched::ModelProfile model;
  model.name = "memory-bound";
  model.layers = {{"small-in", 1e9, 10e9, 1e6}, {"big", 1e12, 70e9, 1e6}, {"small-out", 1e9, 10e9, 1e6}};
  return model;
}

class PlanPlacement : public ::testing::Test {
 protected:
  void SetUp() override { troupe::init({.num_threads = 4, .gpus = "T4-16GB:1,H100-80GB:1,T4-16GB:1"}); }
  void TearDown() override { troupe::shutdown(); }
};

TEST_F(PlanPlacement, TheLocalNodeIsDescribedWithItsDeclaredGpusAndItsNodeResource) {
  const auto nodes = troupe::nodes();
  ASSERT_EQ(nodes.size(), 1u);
  EXPECT_EQ(nodes[0].name, "local");
  EXPECT_EQ(nodes[0].resource(), "node:local");
  EXPECT_EQ(nodes[0].total.at("node:local"), sched::kNodeResourceCapacity);
  ASSERT_EQ(nodes[0].gpus.size(), 3u);
  EXPECT_EQ(nodes[0].gpus[1].model, "H100-80GB");

  const sched::ClusterSpec cluster = troupe::actors::live_cluster_spec();
  ASSERT_EQ(cluster.nodes.size(), 1u);
  EXPECT_EQ(cluster.nodes[0].name, "local");
  ASSERT_EQ(cluster.nodes[0].gpus.size(), 3u);
  EXPECT_EQ(cluster.nodes[0].gpus[1].type, "H100-80GB");
  EXPECT_EQ(cluster.nodes[0].gpus[1].tflops, 700);
  EXPECT_EQ(cluster.nodes[0].gpus[0].memory_gb, 16);
  EXPECT_EQ(cluster.nodes[0].intra_node_gbps, 16.0);
}

TEST_F(PlanPlacement, EachStageActorGetsAGpuOfItsPlannedType) {
  const sched::ClusterSpec cluster = troupe::actors::live_cluster_spec();
  const sched::PlanResult result = sched::plan_pipeline(memory_bound_model(), cluster);
  ASSERT_TRUE(result.feasible()) << result.reason;
  ASSERT_EQ(result.plan.stages.size(), 3u);
  EXPECT_EQ(result.plan.stages[0].gpu_type, "T4-16GB");
  EXPECT_EQ(result.plan.stages[1].gpu_type, "H100-80GB");
  EXPECT_EQ(result.plan.stages[2].gpu_type, "T4-16GB");

  const auto placed = troupe::actors::place_plan(result.plan, cluster, {.extra_resources = {{"CPU", 0.5}}});
  ASSERT_EQ(placed.stages.size(), 3u);
  for (std::size_t k = 0; k < placed.bundles.size(); ++k) {
    EXPECT_EQ(placed.bundles[k].amounts.at("node:local"), sched::kNodeResourceRequest);
    EXPECT_EQ(placed.bundles[k].amounts.at("GPU"), 1.0);
    EXPECT_EQ(placed.stages[k].bundle_index, static_cast<int>(k));
    EXPECT_EQ(placed.stages[k].resources.at("CPU"), 0.5);
  }
  placed.group.ready().get(30s);

  const auto gpus = troupe::nodes()[0].gpus;
  std::vector<int> taken;
  for (std::size_t k = 0; k < placed.stages.size(); ++k) {
    auto stage = troupe::actor<Probe>(placed.stages[k], static_cast<int>(k));
    const std::vector<int> ids = stage.call<&Probe::gpus>().get(30s);
    ASSERT_EQ(ids.size(), 1u) << "stage " << k;
    EXPECT_EQ(gpus.at(static_cast<std::size_t>(ids[0])).model, result.plan.stages[k].gpu_type) << "stage " << k;
    taken.push_back(ids[0]);
  }
  EXPECT_NE(taken[0], taken[2]);
  EXPECT_EQ(troupe::available_resources()["GPU"], 0.0);
}

TEST_F(PlanPlacement, APlanForNodesThisRuntimeDoesNotHaveNeedsPinningOff) {
  // A plan made over a cluster file: its node names are not nodes here.
  sched::ClusterSpec file{"file", 3.1, {{"h100-node", 450, {{"H100-80GB", 700, 80}}}, {"t4-node", 16, {{"T4-16GB", 60, 16}, {"T4-16GB", 60, 16}}}}};
  const sched::PlanResult result = sched::plan_pipeline(memory_bound_model(), file);
  ASSERT_TRUE(result.feasible()) << result.reason;

  // Pinned, the bundles ask for node:t4-node, which no node offers: pending.
  const auto pinned = troupe::actors::place_plan(result.plan, file);
  EXPECT_FALSE(pinned.group.ready().wait_for(200ms));
  EXPECT_NE(pinned.group.pending_reason(), "");
  troupe::remove_placement_group(pinned.group);

  // Unpinned: the GPU types alone.
  const auto loose = troupe::actors::place_plan(result.plan, file, {.pin_nodes = false});
  loose.group.ready().get(30s);
  EXPECT_EQ(loose.bundles[1].amounts.count("node:h100-node"), 0u);
  auto middle = troupe::actor<Probe>(loose.stages[1], 1);
  EXPECT_EQ(middle.call<&Probe::gpus>().get(30s), std::vector<int>{1});  // the H100
}

TEST_F(PlanPlacement, StagesOnNodesOrGpusTheClusterLacksAreInvalidArguments) {
  const sched::ClusterSpec cluster = troupe::actors::live_cluster_spec();
  sched::Plan plan;
  plan.stages = {{"elsewhere", 0, 0, 2}};
  EXPECT_THROW((void)troupe::actors::place_plan(plan, cluster), troupe::Error);
  plan.stages = {{"local", 3, 0, 2}};
  try {
    (void)troupe::actors::place_plan(plan, cluster);
    ADD_FAILURE() << "GPU 3 of a 3-GPU node was accepted";
  } catch (const troupe::Error& e) {
    EXPECT_EQ(e.code(), troupe::Errc::invalid_argument);
    EXPECT_NE(std::string(e.what()).find("has 3 GPUs"), std::string::npos) << e.what();
  }
  EXPECT_THROW((void)troupe::actors::place_plan(sched::Plan{}, cluster), troupe::Error);
}

// Version 2: a stage's t x d GPUs are one bundle on the planned node.
class PlanPlacementV2 : public ::testing::Test {
 protected:
  void SetUp() override { troupe::init({.num_threads = 4, .gpus = "T4-16GB:1,H100-80GB:2,T4-16GB:1"}); }
  void TearDown() override { troupe::shutdown(); }
};

TEST_F(PlanPlacementV2, ATensorParallelStageGetsItsGpusAsOneBundleOfThePlannedType) {
  // The 100 GB middle layer fits only split over the two H100s (t = 2); the
  // 10 GB layers cannot be split and go to a T4 each.
  sched::ModelProfile model = memory_bound_model();
  model.layers[1].param_bytes = 100e9;
  model.layers[1].tp_bytes = 1e8;
  const sched::ClusterSpec cluster = troupe::actors::live_cluster_spec();
  const sched::PlanResultV2 result = sched::plan_pipeline_v2(model, cluster);
  ASSERT_TRUE(result.feasible()) << result.reason;
  ASSERT_EQ(result.plan.stages.size(), 3u);
  EXPECT_EQ(result.plan.stages[1].tp, 2);
  EXPECT_EQ(result.plan.stages[1].gpus, (std::vector<int>{1, 2}));

  const auto placed = troupe::actors::place_plan(result.plan, cluster, {.extra_resources = {{"CPU", 0.25}}});
  ASSERT_EQ(placed.stages.size(), 3u);
  EXPECT_EQ(placed.bundles[1].amounts.at("GPU"), 2.0);
  EXPECT_EQ(placed.bundles[1].amounts.at("CPU"), 0.5);  // per GPU's actor
  EXPECT_EQ(placed.bundles[1].gpu_type, "H100-80GB");
  EXPECT_EQ(placed.bundles[1].amounts.at("node:local"), sched::kNodeResourceRequest);
  EXPECT_EQ(placed.stages[1].tp, 2);
  EXPECT_EQ(placed.stages[1].dp, 1);
  ASSERT_EQ(placed.stages[1].gpus.size(), 2u);
  placed.group.ready().get(30s);

  const auto gpus = troupe::nodes()[0].gpus;
  std::vector<int> taken;
  std::vector<decltype(troupe::actor<Probe>(placed.stages[0].gpus[0], 0))> alive;  // hold every GPU at once
  for (std::size_t k = 0; k < placed.stages.size(); ++k) {
    for (const troupe::ActorOptions& options : placed.stages[k].gpus) {
      EXPECT_EQ(options.bundle_index, static_cast<int>(k));
      alive.push_back(troupe::actor<Probe>(options, static_cast<int>(k)));
      const std::vector<int> ids = alive.back().call<&Probe::gpus>().get(30s);
      ASSERT_EQ(ids.size(), 1u) << "stage " << k;
      EXPECT_EQ(gpus.at(static_cast<std::size_t>(ids[0])).model, result.plan.stages[k].gpu_type) << "stage " << k;
      taken.push_back(ids[0]);
    }
  }
  std::sort(taken.begin(), taken.end());
  EXPECT_EQ(taken, (std::vector<int>{0, 1, 2, 3}));  // every GPU once
  EXPECT_EQ(troupe::available_resources()["GPU"], 0.0);
}

TEST_F(PlanPlacementV2, ReplicasShareTheirStagesBundleAndBadStagesAreInvalidArguments) {
  const sched::ClusterSpec cluster = troupe::actors::live_cluster_spec();
  sched::PlanV2 plan;
  plan.stages = {{"local", {1, 2}, 1, 0, 1}};  // d = 2 replicas on the H100s
  const auto placed = troupe::actors::place_plan(plan, cluster);
  EXPECT_EQ(placed.stages[0].dp, 2);
  EXPECT_EQ(&placed.stages[0].shard(1, 0), &placed.stages[0].gpus[1]);
  placed.group.ready().get(30s);
  auto first = troupe::actor<Probe>(placed.stages[0].shard(0, 0), 0);
  auto second = troupe::actor<Probe>(placed.stages[0].shard(1, 0), 0);
  const int a = first.call<&Probe::gpus>().get(30s).at(0), b = second.call<&Probe::gpus>().get(30s).at(0);
  EXPECT_NE(a, b);
  for (const int id : {a, b}) EXPECT_EQ(troupe::nodes()[0].gpus.at(static_cast<std::size_t>(id)).model, "H100-80GB");

  for (const sched::PlanStageV2& bad : std::vector<sched::PlanStageV2>{{"local", {0, 1}, 1, 0, 1},  // T4 + H100
                                                                        {"local", {1, 2}, 4, 0, 1},  // tp 4 of 2
                                                                        {"local", {}, 1, 0, 1},
                                                                        {"local", {4}, 1, 0, 1},
                                                                        {"elsewhere", {0}, 1, 0, 1}}) {
    sched::PlanV2 wrong;
    wrong.stages = {bad};
    try {
      (void)troupe::actors::place_plan(wrong, cluster);
      ADD_FAILURE() << "accepted a stage on " << bad.node << " with " << bad.gpus.size() << " GPUs, tp " << bad.tp;
    } catch (const troupe::Error& e) {
      EXPECT_EQ(e.code(), troupe::Errc::invalid_argument);
    }
  }
}

TEST(ClusterSpecOfNodes, UnknownGpuModelsNeedTheirFiguresAndNodesWithoutGpusAreLeftOut) {
  troupe::NodeDescription cpu_only{.id = "a", .name = "a"};
  troupe::NodeDescription mystery{.id = "b", .name = "b", .hostname = "box"};
  mystery.gpus.push_back({.index = 0, .model = "Mystery-X"});
  try {
    (void)troupe::actors::cluster_spec({cpu_only, mystery});
    ADD_FAILURE() << "an unknown GPU model was accepted";
  } catch (const troupe::Error& e) {
    EXPECT_NE(std::string(e.what()).find("unknown type \"Mystery-X\""), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("(box)"), std::string::npos) << e.what();
  }
  troupe::actors::LiveClusterOptions options;
  options.gpu_types["Mystery-X"] = {400, 48};
  options.inter_node_gbps = 25;
  const sched::ClusterSpec cluster = troupe::actors::cluster_spec({cpu_only, mystery}, options);
  ASSERT_EQ(cluster.nodes.size(), 1u);
  EXPECT_EQ(cluster.nodes[0].name, "b");
  EXPECT_EQ(cluster.nodes[0].gpus[0].tflops, 400);
  EXPECT_EQ(cluster.inter_node_gbps, 25);
  EXPECT_THROW((void)troupe::actors::cluster_spec({cpu_only}), troupe::Error);
}

}  // namespace
