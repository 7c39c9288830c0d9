// The API conformance suite (tests/conformance/) as a job on a real local
// cluster: a head and two workers as separate processes, the checks' actors
// in actor hosts, the same expectations as in local mode (where ctest runs
// each check in its own process, `ctest -L conformance`). A divergence
// between the modes fails here. TROUPE_CONFORMANCE_FILTER (a gtest filter)
// runs a subset.
// TROUPE_TEST_LABELS: cluster conformance
#include <gtest/gtest.h>

#include <cstdlib>

#include "cluster/cluster_harness.hpp"

namespace {

using namespace std::chrono_literals;
using troupe::testing::TestCluster;

// As the other cluster tests: heartbeats every 200 ms, a node lost after
// 3 s, so a loaded machine does not lose nodes.
constexpr int kHeartbeatMs = 200;
constexpr int kMisses = 15;

TEST(ClusterConformance, EveryConformanceCheckPassesAgainstRealDaemons) {
  TestCluster cluster{kHeartbeatMs, kMisses};
  ASSERT_EQ(cluster.start_head().exit_code, 0);
  ASSERT_FALSE(cluster.add_worker("").empty());
  // Declared GPUs (none are needed): the GPU checks see node indices other than 0.
  ASSERT_FALSE(cluster.add_worker("T4-16GB:2").empty());
  // A job variable: the checks see it reach the job's actors too.
  std::vector<std::string> command{"submit", "--env", "CONFORMANCE_JOB_ENV=from-submit", "--", TROUPE_API_CONFORMANCE};
  if (const char* filter = std::getenv("TROUPE_CONFORMANCE_FILTER"); filter && *filter) {
    command.push_back(std::string("--gtest_filter=") + filter);
  }
  auto result = cluster.troupe(command, 600s);
  EXPECT_EQ(result.exit_code, 0) << result.all();
  EXPECT_NE(result.out.find("[  PASSED  ]"), std::string::npos) << result.all();
  EXPECT_EQ(result.out.find("[  FAILED  ]"), std::string::npos) << result.all();
}

}  // namespace
