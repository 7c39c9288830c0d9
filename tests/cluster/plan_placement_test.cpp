// TROUPE_TEST_LABELS: cluster slow
// Placement follows the plan: a job plans a model over the running cluster's
// declared, heterogeneous GPUs, reserves the plan as a placement group whose
// bundles pin each stage to its node (every node offers node:<its id>), and
// each stage actor must run on the node and GPU type its plan stage names.
#include <unistd.h>

#include <map>
#include <regex>
#include <set>
#include <string>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "cluster/cluster_harness.hpp"

namespace troupe::testing {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

// As in job_test.cpp: a loaded 2-core machine can stall the head for a while.
constexpr int kHeartbeatMs = 200;
constexpr int kMisses = 15;

struct PlannedStage {
  std::string node;  // short id
  std::string gpu_type;
};

struct PlacedStage {
  std::string node;  // full id
  int gpu = -1;
};

TEST(PlanPlacement, EveryNodeOffersItsOwnNodeResourceAndStatusDoesNotListThem) {
  TestCluster cluster(kHeartbeatMs, kMisses);
  ASSERT_EQ(cluster.start_head().exit_code, 0);
  const std::string worker = cluster.add_worker("T4-16GB:1");
  ASSERT_FALSE(worker.empty());
  for (const std::string& id : cluster.node_ids()) {
    const auto node = cluster.node(id);
    ASSERT_TRUE(node["total"].contains("node:" + id.substr(0, 12))) << node.dump(2);
    EXPECT_EQ(node["total"]["node:" + id.substr(0, 12)].get<double>(), 1000.0);
  }
  auto status = cluster.troupe({"status"});
  ASSERT_EQ(status.exit_code, 0) << status.all();
  EXPECT_THAT(status.out, Not(HasSubstr("node:"))) << status.out;

  auto taken = cluster.troupe({"start", "--address", cluster.address(), "--gpus", "", "--resources",
                               R"({"node:abc": 1})"});
  EXPECT_EQ(taken.exit_code, 2) << taken.all();
  EXPECT_THAT(taken.err, HasSubstr("node:<its id>"));
}

TEST(PlanPlacement, EachStageRunsOnTheNodeAndGpuTypeItsPlanNamed) {
  TestCluster cluster(kHeartbeatMs, kMisses);
  ASSERT_EQ(cluster.start_head().exit_code, 0);  // the head's own node has no GPUs
  const std::string h100 = cluster.add_worker("H100-80GB:2");
  const std::string t4 = cluster.add_worker("T4-16GB:2");
  ASSERT_FALSE(h100.empty());
  ASSERT_FALSE(t4.empty());

  auto result = cluster.troupe({"submit", "--name", "plan", "--", TROUPE_PLAN_JOB}, 180s);
  ASSERT_EQ(result.exit_code, 0) << result.all();
  ASSERT_THAT(result.out, HasSubstr("JOB OK")) << result.all();

  std::map<int, PlannedStage> planned;
  std::map<int, PlacedStage> placed;
  const std::regex plan_line(R"(PLAN (\d+) ([0-9a-f]+) (\S+))");
  const std::regex stage_line(R"(STAGE (\d+) ([0-9a-f]+) \[(\d*)\])");
  for (auto it = std::sregex_iterator(result.out.begin(), result.out.end(), plan_line); it != std::sregex_iterator();
       ++it) {
    planned[std::stoi((*it)[1])] = {(*it)[2], (*it)[3]};
  }
  for (auto it = std::sregex_iterator(result.out.begin(), result.out.end(), stage_line);
       it != std::sregex_iterator(); ++it) {
    const std::string gpu = (*it)[3];
    placed[std::stoi((*it)[1])] = {(*it)[2], gpu.empty() ? -1 : std::stoi(gpu)};
  }

  // The plan the profile forces: T4, H100, H100, T4.
  ASSERT_EQ(planned.size(), 4u) << result.out;
  EXPECT_EQ(planned[0].node, t4.substr(0, 12));
  EXPECT_EQ(planned[1].node, h100.substr(0, 12));
  EXPECT_EQ(planned[2].node, h100.substr(0, 12));
  EXPECT_EQ(planned[3].node, t4.substr(0, 12));
  EXPECT_EQ(planned[1].gpu_type, "H100-80GB");
  EXPECT_EQ(planned[0].gpu_type, "T4-16GB");

  // Each stage actor on its planned node, on a GPU of its planned type, no
  // GPU twice.
  ASSERT_EQ(placed.size(), planned.size()) << result.out;
  std::set<std::pair<std::string, int>> used;
  for (const auto& [stage, plan] : planned) {
    SCOPED_TRACE("stage " + std::to_string(stage));
    const PlacedStage& actual = placed[stage];
    EXPECT_EQ(actual.node.substr(0, 12), plan.node);
    const auto node = cluster.node(actual.node);
    ASSERT_FALSE(node.is_null()) << actual.node;
    ASSERT_GE(actual.gpu, 0);
    std::string model;
    for (const auto& gpu : node["gpus"]) {
      if (gpu["index"].get<int>() == actual.gpu) model = gpu["model"];
    }
    EXPECT_EQ(model, plan.gpu_type);
    EXPECT_TRUE(used.insert({actual.node, actual.gpu}).second) << "GPU used twice";
  }
}

TEST(PlanPlacement, TheServingExampleRunsAsAJobWithEveryStageWhereItsPlanSays) {
  const std::string example = TROUPE_BINARY_DIR "/examples/pipeline_serving";
  if (::access(example.c_str(), X_OK) != 0) GTEST_SKIP() << example << " is not built";
  TestCluster cluster(kHeartbeatMs, kMisses);
  ASSERT_EQ(cluster.start_head().exit_code, 0);
  ASSERT_FALSE(cluster.add_worker("H100-80GB:2").empty());
  ASSERT_FALSE(cluster.add_worker("A100-40GB:1,T4-16GB:1").empty());

  auto result = cluster.troupe(
      {"submit", "--", example, "--requests", "8", "--inflight", "4", "--batch", "8", "--check", "2"}, 240s);
  ASSERT_EQ(result.exit_code, 0) << result.all();
  EXPECT_THAT(result.out, HasSubstr("cluster: running cluster, 4 GPUs on 2 nodes")) << result.out;
  EXPECT_THAT(result.out, HasSubstr("placement: every stage is on its planned node and GPU type")) << result.out;
  EXPECT_THAT(result.out, HasSubstr("latency p50")) << result.out;
  EXPECT_THAT(result.out, HasSubstr("PREDICTED ms  MEASURED ms")) << result.out;
  EXPECT_THAT(result.out, HasSubstr("result: OK, 2 of 2 checked requests match")) << result.out;
}

}  // namespace
}  // namespace troupe::testing
