// A million calls to one slow actor on a real local cluster, with the
// default bounds (max_pending_calls 100,000, backpressure `block`): every
// call completes, and the resident memory of the driver and of the actor's
// host stays under a stated bound (docs/fault-tolerance.md gives the
// figures measured). TROUPE_FLOOD_CALLS overrides the count.
// TROUPE_TEST_LABELS: cluster slow
#include <gtest/gtest.h>

#include <regex>

#include "cluster/cluster_harness.hpp"

namespace {

using namespace std::chrono_literals;
using troupe::testing::TestCluster;

// The bounds the test holds each process to (peak RSS, MiB): 100,000 calls
// pending at ~1 KiB each on either side, plus the runtime itself.
constexpr long kDriverBoundMiB = 512;
constexpr long kHostBoundMiB = 512;

TEST(ClusterCallFlood, AMillionCallsToASlowActorCompleteWithBoundedMemoryOnBothSides) {
  TestCluster cluster(200, 15);
  ASSERT_EQ(cluster.start_head().exit_code, 0);
  const char* count = std::getenv("TROUPE_FLOOD_CALLS");
  auto result = cluster.troupe({"submit", "--", TROUPE_CALLS_JOB, "flood", count ? count : "1000000"}, 1500s);
  ASSERT_EQ(result.exit_code, 0) << result.all();
  EXPECT_NE(result.out.find("JOB OK"), std::string::npos) << result.all();
  std::smatch match;
  const std::string out = result.out;
  ASSERT_TRUE(std::regex_search(out, match, std::regex(R"(RSS driver (\d+) -> peak (\d+) KiB, host (\d+) -> peak (\d+) KiB)")))
      << out;
  const long driver_peak = std::stol(match[2]) / 1024, host_peak = std::stol(match[4]) / 1024;
  std::printf("peak RSS: driver %ld MiB, host %ld MiB\n%s", driver_peak, host_peak, out.c_str());
  EXPECT_LT(driver_peak, kDriverBoundMiB);
  EXPECT_LT(host_peak, kHostBoundMiB);
}

}  // namespace
