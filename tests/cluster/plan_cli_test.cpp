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
#include "troupe/scheduler/planner_v2.hpp"

namespace troupe::testing {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

const fs::path kData = fs::path(TROUPE_SOURCE_DIR) / "tests" / "scheduler" / "data" / "planner";

std::string model(const std::string& name) { return (kData / "models" / (name + ".json")).string(); }
std::string model_v2(const std::string& name) { return (kData / "models-v2" / (name + ".json")).string(); }
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

// ---- version 2 ---------------------------------------------------------------

TEST_F(PlanCli, AVersionTwoModelGetsTheVersionTwoPlanAsJson) {
  // cases-v2.json: gpt-30b on h100-a100-2node with M = 8.
  auto result = plan({"--model", model_v2("gpt-30b"), "--cluster", cluster("h100-a100-2node"), "--json",
                      "--micro-batches", "8"});
  ASSERT_EQ(result.exit_code, 0) << result.all();
  const nlohmann::json doc = nlohmann::json::parse(result.out);
  EXPECT_NEAR(doc["bottleneck_s"].get<double>(), 0.1205835137024, 1e-9 * 0.12);
  EXPECT_NEAR(doc["v1_bottleneck_s"].get<double>(), 0.13238285981013334, 1e-9 * 0.13);
  EXPECT_NEAR(doc["speedup_over_v1"].get<double>(), 1.0978520673800742, 1e-9);
  EXPECT_EQ(doc["micro_batches"], 8);
  bool tensor_parallel = false;
  for (const auto& stage : doc["stages"]) {
    EXPECT_EQ(stage.size(), 4u) << stage.dump();  // node, gpus, tp, layers: the README's version-2 stage
    EXPECT_TRUE(stage["gpus"].is_array());
    tensor_parallel = tensor_parallel || stage["tp"].get<int>() > 1;
  }
  EXPECT_TRUE(tensor_parallel);
  const auto check = scheduler::evaluate_v2(scheduler::load_model(model_v2("gpt-30b")),
                                            scheduler::load_cluster(cluster("h100-a100-2node")),
                                            scheduler::parse_plan_v2(doc), 8);
  EXPECT_TRUE(check.valid) << check.reason;
  EXPECT_DOUBLE_EQ(check.plan.bottleneck_s, doc["bottleneck_s"].get<double>());
}

TEST_F(PlanCli, TheVersionTwoTableShowsGroupsTermsAndTheVersionOneComparison) {
  auto result = plan({"--model", model_v2("gpt-30b"), "--cluster", cluster("h100-a100-2node"), "--micro-batches",
                      "8"});
  ASSERT_EQ(result.exit_code, 0) << result.all();
  EXPECT_THAT(result.out, HasSubstr("Micro-batches per iteration (M): 8"));
  EXPECT_THAT(result.out, HasSubstr("Optimal plan (version 2: tensor-parallel x data-parallel stages): 4 stages"));
  EXPECT_THAT(result.out, HasSubstr("STAGE  NODE       GPUS     TYPE       T  D  LAYERS  COMPUTE ms  TP ms   SEND ms  "
                                    "SYNC ms  TIME ms"));
  EXPECT_THAT(result.out, HasSubstr("h100-node  0,1,2,3  H100-80GB  4  1  5-36"));
  EXPECT_THAT(result.out, HasSubstr("a100-node  1,2      A100-80GB  1  2  37-44"));  // a replicated stage
  EXPECT_THAT(result.out, HasSubstr("120.584 ms per micro-batch"));
  EXPECT_THAT(result.out, HasSubstr("Best version-1 plan (one GPU per stage, t = d = 1): 8 stages, bottleneck "
                                    "132.383 ms; version 2 is 1.10x as fast"));
  EXPECT_THAT(result.out, HasSubstr("bottleneck 158.840 ms"));  // uniform_s 0.15883985835349335

  // gpt-39.5b fits only with tensor parallelism.
  auto only_v2 = plan({"--model", model_v2("gpt-39.5b"), "--cluster", cluster("h100-a100-2node")});
  ASSERT_EQ(only_v2.exit_code, 0) << only_v2.all();
  EXPECT_THAT(only_v2.out, HasSubstr("246.849 ms per micro-batch"));  // optimum 0.24684886462008887
  EXPECT_THAT(only_v2.out, HasSubstr("Best version-1 plan (one GPU per stage, t = d = 1): infeasible: no assignment "
                                     "fits memory"));
}

TEST_F(PlanCli, V2AndV1FlagsChooseTheVersionForAnyInput) {
  // A version-1 model with --v2 (grad_bytes = param_bytes / 4): cases-v2.json's vgg16 on a100-40gb-x8, M = 8.
  auto forced = plan({"--model", model("vgg16"), "--cluster", cluster("a100-40gb-x8"), "--json", "--v2",
                      "--micro-batches", "8"});
  ASSERT_EQ(forced.exit_code, 0) << forced.all();
  EXPECT_NEAR(nlohmann::json::parse(forced.out)["bottleneck_s"].get<double>(), 0.004547208048888889, 1e-9 * 0.0045);
  // M changes the sync term of the replicated stages, hence the optimum.
  auto more = plan({"--model", model("vgg16"), "--cluster", cluster("a100-40gb-x8"), "--json", "--micro-batches", "32"});
  ASSERT_EQ(more.exit_code, 0) << more.all();
  EXPECT_LT(nlohmann::json::parse(more.out)["bottleneck_s"].get<double>(), 0.004547208048888889);
  // A version-2 model with --v1: version 1's plan and output format.
  auto v1 = plan({"--model", model_v2("gpt-30b"), "--cluster", cluster("h100-a100-2node"), "--json", "--v1"});
  ASSERT_EQ(v1.exit_code, 0) << v1.all();
  const nlohmann::json doc = nlohmann::json::parse(v1.out);
  EXPECT_NEAR(doc["bottleneck_s"].get<double>(), 0.13238285981013334, 1e-9 * 0.13);
  EXPECT_TRUE(doc["stages"][0].contains("gpu"));

  auto limited = plan({"--model", model_v2("gpt-30b"), "--cluster", cluster("h100-a100-2node"), "--json",
                       "--max-tp", "2", "--max-dp", "1"});
  ASSERT_EQ(limited.exit_code, 0) << limited.all();
  const nlohmann::json limited_doc = nlohmann::json::parse(limited.out);  // the loop must not outlive it
  for (const auto& stage : limited_doc["stages"]) {
    EXPECT_LE(stage["tp"].get<int>(), 2);
    EXPECT_EQ(stage["gpus"].size(), stage["tp"].get<std::size_t>());  // d = 1
  }

  auto bad_tp = plan({"--model", model_v2("gpt-30b"), "--cluster", cluster("h100-a100-2node"), "--max-tp", "3"});
  EXPECT_EQ(bad_tp.exit_code, 2);
  auto both = plan({"--model", model_v2("gpt-30b"), "--cluster", cluster("h100-a100-2node"), "--v1", "--v2"});
  EXPECT_EQ(both.exit_code, 2);
  auto zero = plan({"--model", model_v2("gpt-30b"), "--cluster", cluster("h100-a100-2node"), "--micro-batches", "0"});
  EXPECT_EQ(zero.exit_code, 2);
}

TEST_F(PlanCli, AnInfeasibleVersionTwoPairingExitsOneWithTheReason) {
  auto result = plan({"--model", model_v2("gpt-39.5b"), "--cluster", cluster("a100-40gb-x8")});
  EXPECT_EQ(result.exit_code, 1) << result.all();
  EXPECT_THAT(result.err, HasSubstr("Error: no valid pipeline plan: the model's parameters need 631.65 GB but all 8 "
                                    "GPUs have 320.00 GB together"));
}

TEST_F(PlanCli, HelpListsEveryOption) {
  auto result = plan({"--help"});
  ASSERT_EQ(result.exit_code, 0) << result.all();
  for (const char* option : {"--model", "--cluster", "--address", "--json", "--gpu-table", "--intra-gbps",
                             "--inter-gbps", "--max-stages", "--temp-dir", "--timeout", "Exit codes", "--v1", "--v2",
                             "--micro-batches", "--max-tp", "--max-dp", "Version 2", "tp_bytes", "(compute, TP, send, sync)"}) {
    EXPECT_THAT(result.out, HasSubstr(option));
  }
  auto top = run_process(TROUPE_CLI_PATH, {"--help"}, {});
  EXPECT_THAT(top.out, HasSubstr("plan"));
}

}  // namespace
}  // namespace troupe::testing
