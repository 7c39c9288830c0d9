// TROUPE_TEST_LABELS: cluster slow
// Replicated pipeline stages across processes: examples/pipeline_custom_stage
// submitted as a job to a head and a worker, each stage replica its own
// actor host, so the replicas' gradients travel host to host (the data
// plane) and never through the driver; the losses still equal the
// unpipelined model's and the replicas end bit-identical.
#include <unistd.h>

#include <string>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "cluster/cluster_harness.hpp"

namespace troupe::testing {
namespace {

using ::testing::HasSubstr;

// As in job_test.cpp: a loaded 2-core machine can stall the head for a while.
constexpr int kHeartbeatMs = 200;
constexpr int kMisses = 15;

TEST(StageReplicas, TheCustomStageExampleWithReplicatedStagesRunsAsAJobAndMatches) {
  const std::string example = TROUPE_BINARY_DIR "/examples/pipeline_custom_stage";
  if (::access(example.c_str(), X_OK) != 0) GTEST_SKIP() << example << " is not built";
  TestCluster cluster(kHeartbeatMs, kMisses);
  ASSERT_EQ(cluster.start_head().exit_code, 0);
  ASSERT_FALSE(cluster.add_worker("").empty());

  auto result = cluster.troupe({"submit", "--", example, "--steps", "2", "--replicas", "1,2,1,2"}, 480s);
  ASSERT_EQ(result.exit_code, 0) << result.all();
  EXPECT_THAT(result.out, HasSubstr("1,2,1,2")) << result.out;
  EXPECT_THAT(result.out, HasSubstr("(match)")) << result.out;
  EXPECT_THAT(result.out, HasSubstr("(bit-identical)")) << result.out;
}

}  // namespace
}  // namespace troupe::testing
