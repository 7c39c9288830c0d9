// TROUPE_TEST_LABELS: fast
// `troupe plan` on cluster files (no daemons): JSON and table output, exit
// codes for an infeasible pairing and for bad input, --help. The files are
// the copy of shared/planner in tests/scheduler/data/planner.
#include <unistd.h>

#include <string>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "cluster/cluster_harness.hpp"
#include "troupe/scheduler/planner.hpp"

namespace troupe::testing {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

const fs::path kData = fs::path(TROUPE_SOURCE_DIR) / "tests" / "scheduler" / "data" / "planner";

std::string model(const std::string& name) { return (kData / "models" / (name + ".json")).string(); }
std::string cluster(const std::string& name) { return (kData / "clusters" / (name + ".json")).string(); }

// The CLI with a private, empty session root, so no real cluster is found.
class PlanCli : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string pattern = (fs::temp_directory_path() / "troupe-plan-test-XXXXXX").string();
    root_ = ::mkdtemp(pattern.data());
  }
  void TearDown() override { fs::remove_all(root_); }

  RunResult plan(std::vector<std::string> args) const {
    args.insert(args.begin(), "plan");
    return run_process(TROUPE_CLI_PATH, args, {{"TROUPE_TEMP_DIR", root_.string()}});
  }
  fs::path write(const std::string& name, const std::string& text) const {
    std::ofstream(root_ / name) << text;
    return root_ / name;
  }

  fs::path root_;
};

TEST_F(PlanCli, JsonIsTheReadmePlanWithTheOptimalBottleneck) {
  auto result = plan({"--model", model("vgg16"), "--cluster", cluster("h100-a100-2node"), "--json"});
  ASSERT_EQ(result.exit_code, 0) << result.all();
  const nlohmann::json doc = nlohmann::json::parse(result.out);
  ASSERT_TRUE(doc.contains("stages"));
  EXPECT_NEAR(doc["bottleneck_s"].get<double>(), 0.005821694571428572, 1e-9 * 0.0058);
  for (const auto& stage : doc["stages"]) {
    EXPECT_EQ(stage.size(), 3u) << stage.dump();  // node, gpu, layers: nothing else
    EXPECT_EQ(stage["layers"].size(), 2u);
  }
  const auto check = scheduler::evaluate(scheduler::load_model(model("vgg16")),
                                         scheduler::load_cluster(cluster("h100-a100-2node")),
                                         scheduler::parse_plan(doc));
  EXPECT_TRUE(check.valid) << check.reason;
  EXPECT_DOUBLE_EQ(check.plan.bottleneck_s, doc["bottleneck_s"].get<double>());
}

TEST_F(PlanCli, TableShowsStagesBottleneckThroughputAndTheUniformBaseline) {
  auto result = plan({"--model", model("gpt-6.7b"), "--cluster", cluster("h100-a100-2node")});
  ASSERT_EQ(result.exit_code, 0) << result.all();
  EXPECT_THAT(result.out, HasSubstr("Model gpt-6.7b: 34 layers"));
  EXPECT_THAT(result.out, HasSubstr("Cluster h100-a100-2node: 8 GPUs on 2 nodes"));
  EXPECT_THAT(result.out, HasSubstr("STAGE  NODE"));
  EXPECT_THAT(result.out, HasSubstr("COMPUTE ms  COMM ms  TIME ms  MEMORY GB / CAPACITY GB"));
  EXPECT_THAT(result.out, HasSubstr("H100-80GB"));
  EXPECT_THAT(result.out, HasSubstr("/ 80.00"));
  EXPECT_THAT(result.out, HasSubstr("Bottleneck: stage "));
  EXPECT_THAT(result.out, HasSubstr("26.299 ms per micro-batch"));  // optimum 0.02629878939648 s
  EXPECT_THAT(result.out, HasSubstr("Throughput: 38.02 micro-batches/s"));
  EXPECT_THAT(result.out, HasSubstr("bottleneck 35.790 ms"));  // uniform 0.03579005195605334 s
  EXPECT_THAT(result.out, HasSubstr("the plan is 1.36x as fast"));
}

TEST_F(PlanCli, TableSaysWhyTheUniformBaselineBreaksMemory) {
  auto result = plan({"--model", model("resnet50"), "--cluster", cluster("a100-40gb-x8")});
  ASSERT_EQ(result.exit_code, 0) << result.all();
  EXPECT_THAT(result.out, HasSubstr("3.856 ms per micro-batch"));  // optimum 0.00385624716 s
  EXPECT_THAT(result.out, HasSubstr("equal layer counts): infeasible: stage 0 (dgx-a100 GPU 0, layers 0-22) needs"));
}

TEST_F(PlanCli, AnInfeasiblePairingExitsOneWithTheReasonOnStderr) {
  auto result = plan({"--model", model("gpt-30b"), "--cluster", cluster("a100-40gb-x8"), "--json"});
  EXPECT_EQ(result.exit_code, 1) << result.all();
  EXPECT_EQ(result.out, "");
  EXPECT_THAT(result.err, HasSubstr("Error: no valid pipeline plan: the model's parameters need 485.05 GB but the "
                                    "8 largest GPUs usable have 320.00 GB together"));
}

TEST_F(PlanCli, MaxStagesAndBandwidthFlagsChangeThePlan) {
  auto limited = plan({"--model", model("gpt-6.7b"), "--cluster", cluster("h100-a100-2node"), "--json",
                       "--max-stages", "2"});
  ASSERT_EQ(limited.exit_code, 0) << limited.all();
  EXPECT_LE(nlohmann::json::parse(limited.out)["stages"].size(), 2u);

  auto base = plan({"--model", model("vgg16"), "--cluster", cluster("h100-a100-2node"), "--json"});
  auto slow = plan({"--model", model("vgg16"), "--cluster", cluster("h100-a100-2node"), "--json",
                    "--inter-gbps", "0.5", "--intra-gbps", "1"});
  ASSERT_EQ(slow.exit_code, 0) << slow.all();
  EXPECT_GT(nlohmann::json::parse(slow.out)["bottleneck_s"].get<double>(),
            nlohmann::json::parse(base.out)["bottleneck_s"].get<double>());
}

TEST_F(PlanCli, BadInputExitsTwoNamingTheProblem) {
  auto no_model = plan({"--cluster", cluster("h100-a100-2node")});
  EXPECT_EQ(no_model.exit_code, 2);
  EXPECT_THAT(no_model.err, HasSubstr("--model is required"));

  auto missing = plan({"--model", (root_ / "nope.json").string(), "--cluster", cluster("h100-a100-2node")});
  EXPECT_EQ(missing.exit_code, 2);
  EXPECT_THAT(missing.err, HasSubstr("nope.json"));

  const fs::path negative = write("negative.json", R"({"layers": [{"name": "a", "flops": -1,
      "param_bytes": 0, "activation_bytes": 0}]})");
  auto bad = plan({"--model", negative.string(), "--cluster", cluster("h100-a100-2node")});
  EXPECT_EQ(bad.exit_code, 2);
  EXPECT_THAT(bad.err, HasSubstr("model file " + negative.string() + ": layers[0] (\"a\"): flops must be a finite "
                                 "number >= 0, got -1"));
  EXPECT_THAT(bad.err, HasSubstr("Usage: troupe plan"));

  const fs::path no_gpus = write("no-gpus.json", R"({"inter_node_gbps": 1, "nodes": [{"name": "n",
      "intra_node_gbps": 1, "gpus": []}]})");
  auto empty = plan({"--model", model("vgg16"), "--cluster", no_gpus.string()});
  EXPECT_EQ(empty.exit_code, 2);
  EXPECT_THAT(empty.err, HasSubstr("the cluster has no GPUs"));

  auto both = plan({"--model", model("vgg16"), "--cluster", cluster("h100-a100-2node"), "--address", "127.0.0.1:1"});
  EXPECT_EQ(both.exit_code, 2);
  EXPECT_THAT(both.err, HasSubstr("excludes"));

  auto zero = plan({"--model", model("vgg16"), "--cluster", cluster("h100-a100-2node"), "--inter-gbps", "0"});
  EXPECT_EQ(zero.exit_code, 2);
}

TEST_F(PlanCli, WithoutClusterFileOrRunningClusterItSaysSo) {
  auto result = plan({"--model", model("vgg16")});
  EXPECT_EQ(result.exit_code, 1) << result.all();
  EXPECT_THAT(result.err, HasSubstr("no running cluster found"));
}

TEST_F(PlanCli, HelpListsEveryOption) {
  auto result = plan({"--help"});
  ASSERT_EQ(result.exit_code, 0) << result.all();
  for (const char* option : {"--model", "--cluster", "--address", "--json", "--gpu-table", "--intra-gbps",
                             "--inter-gbps", "--max-stages", "--temp-dir", "--timeout", "Exit codes"}) {
    EXPECT_THAT(result.out, HasSubstr(option));
  }
  auto top = run_process(TROUPE_CLI_PATH, {"--help"}, {});
  EXPECT_THAT(top.out, HasSubstr("plan"));
}

}  // namespace
}  // namespace troupe::testing
