// examples/pipeline_mnist run as a user runs it, in local mode, on a slice of
// Fashion-MNIST: the loss goes down, the pipeline's per-step losses equal the
// single-process model's, and flags and data errors are reported clearly.
// (Full training to >= 88% is pipeline_mnist_full_test; cluster mode is
// pipeline_mnist_cluster_test.)
#include <filesystem>
#include <regex>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#define TROUPE_CLI_PATH TROUPE_BINARY_DIR "/cli/troupe"
#include "cluster/cluster_harness.hpp"

namespace {

using namespace std::chrono_literals;
using troupe::testing::RunResult;
using troupe::testing::run_process;

const std::string kExample = TROUPE_BINARY_DIR "/examples/pipeline_mnist";
const std::string kData = "/usr/share/datasets/fashion-mnist";

// Local mode even when the environment names a cluster.
const std::map<std::string, std::string> kLocal = {{"TROUPE_ADDRESS", ""}};

#define REQUIRE_EXAMPLE_AND_DATA()                                                                  \
  if (!std::filesystem::exists(kExample)) GTEST_SKIP() << kExample << " is not built";              \
  if (!std::filesystem::exists(kData)) GTEST_SKIP() << kData << " is missing (dataset-fashion-mnist)"

bool contains(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

// The losses of "[label] epoch E step N/M  loss X" lines, in order.
std::vector<double> step_losses(const std::string& out, const std::string& label) {
  std::vector<double> losses;
  const std::regex line("\\[" + label + "\\] epoch \\d+ step +\\d+/\\d+  loss ([0-9.]+)");
  for (auto it = std::sregex_iterator(out.begin(), out.end(), line); it != std::sregex_iterator(); ++it) {
    losses.push_back(std::stod((*it)[1]));
  }
  return losses;
}

TEST(PipelineMnistExample, TrainsASliceWithTheLossGoingDownAndMatchesTheSingleProcessModel) {
  REQUIRE_EXAMPLE_AND_DATA();
  const RunResult r = run_process(
      kExample, {"--limit", "2000", "--epochs", "1", "--check-against-single", "--log-every", "1"}, kLocal, 120s);
  ASSERT_EQ(r.exit_code, 0) << r.all();
  EXPECT_TRUE(contains(r.out, "4 pipeline stages (1f1b schedule), local mode")) << r.out;
  EXPECT_TRUE(contains(r.out, "2000 training / 10000 test images")) << r.out;
  const std::vector<double> losses = step_losses(r.out, "pipeline");
  ASSERT_EQ(losses.size(), 16u) << r.out;  // 2000 / 128 -> 16 steps, the last of 80 rows
  EXPECT_GT(losses.front(), 2.0) << r.out;  // about ln 10 at the start
  EXPECT_LT(losses.back(), 0.75 * losses.front()) << r.out;
  EXPECT_EQ(step_losses(r.out, "single"), losses) << r.out;
  EXPECT_TRUE(std::regex_search(r.out, std::regex("check: 16 steps, max relative loss difference [0-9.e+-]+ "
                                                  "\\(tolerance 1e-05\\).*: OK")))
      << r.out;
  EXPECT_TRUE(contains(r.out, "stage 0 on cpu: 401920 parameters, peak 4 micro-batches stashed")) << r.out;
  EXPECT_TRUE(contains(r.out, "stage 3 on cpu: 1290 parameters, peak 1 micro-batches stashed")) << r.out;
}

TEST(PipelineMnistExample, GPipeWithUnevenMicroBatchesAlsoMatches) {
  REQUIRE_EXAMPLE_AND_DATA();
  // 1000 rows in batches of 100 cut into 3 micro-batches of 34, 34, 32.
  const RunResult r = run_process(kExample,
                                  {"--limit=1000", "--epochs=1", "--batch-size=100", "--micro-batches=3",
                                   "--schedule=gpipe", "--stages=2", "--check-against-single", "--optimizer=sgd",
                                   "--lr=0.05"},
                                  kLocal, 120s);
  ASSERT_EQ(r.exit_code, 0) << r.all();
  EXPECT_TRUE(contains(r.out, "2 pipeline stages (gpipe schedule)")) << r.out;
  EXPECT_TRUE(contains(r.out, "sgd lr 0.05")) << r.out;
  EXPECT_TRUE(contains(r.out, "peak 3 micro-batches stashed")) << r.out;  // GPipe keeps them all
  EXPECT_TRUE(contains(r.out, "check: 10 steps")) << r.out;
  EXPECT_TRUE(contains(r.out, ": OK")) << r.out;
}

TEST(PipelineMnistExample, SingleProcessModeTrainsWithoutActors) {
  REQUIRE_EXAMPLE_AND_DATA();
  const RunResult r = run_process(kExample, {"--limit", "500", "--epochs", "1", "--single-process"}, kLocal, 120s);
  ASSERT_EQ(r.exit_code, 0) << r.all();
  EXPECT_FALSE(contains(r.out, "pipeline stages")) << r.out;
  EXPECT_TRUE(contains(r.out, "[single] epoch 1/1")) << r.out;
  EXPECT_TRUE(contains(r.out, "result: test accuracy")) << r.out;
}

TEST(PipelineMnistExample, BadFlagsExitTwoWithUsageAndMissingDataExitsOneNamingTheFile) {
  REQUIRE_EXAMPLE_AND_DATA();
  RunResult r = run_process(kExample, {"--schedule", "zigzag"}, kLocal);
  EXPECT_EQ(r.exit_code, 2) << r.all();
  EXPECT_TRUE(contains(r.err, "--schedule wants gpipe or 1f1b")) << r.err;
  EXPECT_TRUE(contains(r.err, "usage: pipeline_mnist")) << r.err;
  r = run_process(kExample, {"--stages", "5"}, kLocal);
  EXPECT_EQ(r.exit_code, 2) << r.all();
  EXPECT_TRUE(contains(r.err, "--stages wants a whole number from 1 to 4")) << r.err;
  r = run_process(kExample, {"--single-process", "--check-against-single"}, kLocal);
  EXPECT_EQ(r.exit_code, 2) << r.all();
  r = run_process(kExample, {"--help"}, kLocal);
  EXPECT_EQ(r.exit_code, 0) << r.all();
  EXPECT_TRUE(contains(r.out, "--check-against-single")) << r.out;
  r = run_process(kExample, {"--data", "/nonexistent"}, kLocal);
  EXPECT_EQ(r.exit_code, 1) << r.all();
  EXPECT_TRUE(contains(r.err, "no train-images-idx3-ubyte[.gz] in /nonexistent")) << r.err;
}

}  // namespace
