// TROUPE_TEST_LABELS: cluster
// `troupe plan` against a running cluster: the head's nodes and declared GPUs
// become the cluster, GPU figures come from the built-in table or
// --gpu-table, and an unknown GPU type is a usage error naming the flag.
#include <string>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "cluster/cluster_harness.hpp"
#include "troupe/scheduler/planner.hpp"

namespace troupe::testing {
namespace {

using ::testing::HasSubstr;

const fs::path kModels = fs::path(TROUPE_SOURCE_DIR) / "tests" / "scheduler" / "data" / "planner" / "models";

TEST(PlanLive, PlansOverTheRunningClustersNodesAndDeclaredGpus) {
  TestCluster cluster;
  auto head = cluster.start_head({"--gpus", "H100-80GB:2"});
  ASSERT_EQ(head.exit_code, 0) << head.all();
  const std::string worker = cluster.add_worker("A100-80GB:2");
  ASSERT_FALSE(worker.empty());
  const std::string gpt = (kModels / "gpt-6.7b.json").string();

  // No --address: the latest session's head, like `troupe status`.
  auto result = cluster.troupe({"plan", "--model", gpt, "--json"});
  ASSERT_EQ(result.exit_code, 0) << result.all();
  const nlohmann::json doc = nlohmann::json::parse(result.out);

  // The same cluster written by hand, nodes named by their short ids.
  scheduler::ClusterSpec expected{"", 3.1, {}};
  for (const auto& node : cluster.list("nodes")) {
    const bool h100 = node["gpus_by_type"].contains("H100-80GB");
    expected.nodes.push_back({node["node_id"].get<std::string>().substr(0, 12), 16.0,
                              std::vector<scheduler::ClusterGpu>(2, h100 ? scheduler::ClusterGpu{"H100-80GB", 700, 80}
                                                                         : scheduler::ClusterGpu{"A100-80GB", 300, 80})});
  }
  ASSERT_EQ(expected.nodes.size(), 2u);
  const auto model = scheduler::load_model(gpt);
  const auto best = scheduler::plan_pipeline(model, expected);
  ASSERT_TRUE(best.feasible()) << best.reason;
  EXPECT_DOUBLE_EQ(doc["bottleneck_s"].get<double>(), best.plan.bottleneck_s);
  const auto check = scheduler::evaluate(model, expected, scheduler::parse_plan(doc));
  EXPECT_TRUE(check.valid) << check.reason;

  auto table = cluster.troupe({"plan", "--model", gpt, "--address", cluster.address(), "--inter-gbps", "25"});
  ASSERT_EQ(table.exit_code, 0) << table.all();
  EXPECT_THAT(table.out, HasSubstr("Cluster cluster at " + cluster.address() + ": 4 GPUs on 2 nodes"));
  EXPECT_THAT(table.out, HasSubstr(worker.substr(0, 12)));
}

TEST(PlanLive, AnUnknownGpuTypeNeedsTheGpuTable) {
  TestCluster cluster;
  auto head = cluster.start_head({"--gpus", "Mystery-X:1,T4-16GB:1"});
  ASSERT_EQ(head.exit_code, 0) << head.all();
  const std::string gpt = (kModels / "gpt-1.3b.json").string();

  auto unknown = cluster.troupe({"plan", "--model", gpt});
  EXPECT_EQ(unknown.exit_code, 2) << unknown.all();
  EXPECT_THAT(unknown.err, HasSubstr("unknown type \"Mystery-X\""));
  EXPECT_THAT(unknown.err, HasSubstr("--gpu-table FILE"));

  const fs::path table = cluster.root() / "gpus.json";
  std::ofstream(table) << R"({"Mystery-X": {"tflops": 400, "memory_gb": 48}})";
  auto known = cluster.troupe({"plan", "--model", gpt, "--gpu-table", table.string(), "--json"});
  ASSERT_EQ(known.exit_code, 0) << known.all();
  EXPECT_GT(nlohmann::json::parse(known.out)["bottleneck_s"].get<double>(), 0.0);
}

}  // namespace
}  // namespace troupe::testing
