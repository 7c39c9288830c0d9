// examples/gpt_kjv as a job on a real local cluster (a head and a worker
// daemon with 4 declared T4s each): `troupe submit` ships the binary, the
// planner puts 4 stages of 2 tensor-parallel shards on the two nodes, every
// stage and shard is an actor host process, and the first steps' losses
// still equal the unsplit model's trained in the driver's process.
// TROUPE_TEST_LABELS: cluster slow
#include <filesystem>
#include <string>

#include <gtest/gtest.h>

#define TROUPE_CLI_PATH TROUPE_BINARY_DIR "/cli/troupe"
#include "cluster/cluster_harness.hpp"

namespace {

using namespace std::chrono_literals;

const std::string kExample = TROUPE_BINARY_DIR "/examples/gpt_kjv";

TEST(GptKjvCluster, FourStagesOfTwoShardsOnTwoNodesMatchTheUnsplitModel) {
  if (!std::filesystem::exists(kExample)) GTEST_SKIP() << kExample << " is not built";
  if (!std::filesystem::exists(TROUPE_CLI_PATH)) GTEST_SKIP() << TROUPE_CLI_PATH << " is not built";
  if (!std::filesystem::exists("/usr/bin/bible")) GTEST_SKIP() << "bible-kjv is not installed";
  troupe::testing::TestCluster cluster(200, 15);
  ASSERT_EQ(cluster.start_head({"--gpus", "T4-16GB:4"}).exit_code, 0);
  ASSERT_FALSE(cluster.add_worker("T4-16GB:4").empty());
  // A long answer timeout: storing the 80 MB job binary stalls a loaded 2-core head.
  const auto r = cluster.troupe({"submit", "--timeout", "120", "--name", "gpt", "--", kExample, "--layers", "4", "--channels", "16",
                                 "--heads", "2", "--hidden", "32", "--seq-len", "16", "--batch", "8",
                                 "--micro-batches", "4", "--steps", "3", "--eval-every", "3", "--eval-batches", "1",
                                 "--sample", "10", "--tp", "2", "--check-against-single", "3", "--model-json", ""},
                                300s);
  ASSERT_EQ(r.exit_code, 0) << r.all();
  EXPECT_NE(r.out.find("4 pipeline stages (1f1b schedule), tensor-parallel 2, cluster mode"), std::string::npos)
      << r.all();
  EXPECT_NE(r.out.find("cluster: 8 GPUs on 2 nodes"), std::string::npos) << r.all();
  EXPECT_NE(r.out.find("check: 3 steps"), std::string::npos) << r.all();
  // With the gradients clipped to the global norm over the 2 nodes' stages and shards.
  EXPECT_NE(r.out.find("steps clipped to norm 1"), std::string::npos) << r.all();
  EXPECT_NE(r.out.find("): OK"), std::string::npos) << r.all();
}

}  // namespace
