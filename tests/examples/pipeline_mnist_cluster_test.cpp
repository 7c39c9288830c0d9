// examples/pipeline_mnist as a job on a real local cluster: `troupe submit`
// ships the binary, every stage is an actor host process, activations and
// gradients go host to host, and the per-step losses still equal the
// single-process model's (which the driver runs itself).
// TROUPE_TEST_LABELS: cluster slow
#include <filesystem>
#include <string>

#include <gtest/gtest.h>

#define TROUPE_CLI_PATH TROUPE_BINARY_DIR "/cli/troupe"
#include "cluster/cluster_harness.hpp"

namespace {

using namespace std::chrono_literals;

const std::string kExample = TROUPE_BINARY_DIR "/examples/pipeline_mnist";
const std::string kData = "/usr/share/datasets/fashion-mnist";

TEST(PipelineMnistCluster, SubmittedJobTrainsAcrossActorHostsAndMatchesTheSingleProcessModel) {
  if (!std::filesystem::exists(kExample)) GTEST_SKIP() << kExample << " is not built";
  if (!std::filesystem::exists(TROUPE_CLI_PATH)) GTEST_SKIP() << TROUPE_CLI_PATH << " is not built";
  if (!std::filesystem::exists(kData)) GTEST_SKIP() << kData << " is missing (dataset-fashion-mnist)";
  // Slow heartbeats: storing the job binary can stall a loaded 2-core head.
  troupe::testing::TestCluster cluster(200, 15);
  ASSERT_EQ(cluster.start_head({"--gpus", "H100-80GB:2"}).exit_code, 0);
  ASSERT_FALSE(cluster.add_worker("T4-16GB:2").empty());
  const auto r = cluster.troupe({"submit", "--name", "mnist", "--", kExample, "--limit", "2000", "--epochs", "1",
                                 "--check-against-single", "--gpu-stages"},
                                240s);
  ASSERT_EQ(r.exit_code, 0) << r.all();
  EXPECT_NE(r.out.find("4 pipeline stages (1f1b schedule), cluster mode"), std::string::npos) << r.all();
  EXPECT_NE(r.out.find("check: 16 steps"), std::string::npos) << r.all();
  EXPECT_NE(r.out.find(": OK"), std::string::npos) << r.all();
}

}  // namespace
