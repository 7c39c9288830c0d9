// Real jobs on a real local cluster: `troupe submit` ships a troupe binary,
// the head places its actors by GPU type on separate worker daemons, calls
// chain across nodes host to host, and a killed worker gives ActorDiedError
// instead of a hang.
// TROUPE_TEST_LABELS: cluster slow
#include <gtest/gtest.h>

#include <signal.h>

#include <regex>
#include <thread>

#include "cluster/cluster_harness.hpp"

namespace {

using namespace std::chrono_literals;
using troupe::testing::TestCluster;

// "PLACED a <node id> [gpus] pid N" -> node id, for actor label `label`.
std::string node_of(const std::string& output, const std::string& label) {
  std::smatch match;
  std::regex pattern("PLACED " + label + " ([0-9a-f]+) \\[([0-9]*)\\]");
  if (std::regex_search(output, match, pattern)) return match[1];
  return "";
}

// Heartbeats every 200 ms, a node lost after 3 s: the head hashes and stores
// the job binary on its loop thread, which can stall it for a while on a
// loaded 2-core machine (TODO(perf): move binary handling off that thread).
constexpr int kHeartbeatMs = 200;
constexpr int kMisses = 15;

TEST(ClusterJob, SubmittedJobPlacesActorsByGpuTypeChainsCallsAcrossNodesAndExitsZero) {
  TestCluster cluster(kHeartbeatMs, kMisses);
  ASSERT_EQ(cluster.start_head({"--gpus", "H100-80GB:1"}).exit_code, 0);
  const std::string head = cluster.node_ids().at(0);
  const std::string t4 = cluster.add_worker("T4-16GB:1");
  const std::string a100 = cluster.add_worker("A100-40GB:1");
  ASSERT_FALSE(t4.empty());
  ASSERT_FALSE(a100.empty());

  auto result = cluster.troupe({"submit", "--name", "placement", "--", TROUPE_CLUSTER_JOB, "placement"}, 120s);
  ASSERT_EQ(result.exit_code, 0) << result.all();
  EXPECT_NE(result.out.find("JOB OK"), std::string::npos) << result.all();
  EXPECT_NE(result.out.find("CHAIN 200 ok"), std::string::npos);
  EXPECT_NE(result.out.find("TENSOR 4MiB ok"), std::string::npos);
  EXPECT_NE(result.out.find("NESTED ok"), std::string::npos) << result.all();
  EXPECT_NE(result.out.find("OBJECTREF PARAMS ok"), std::string::npos) << result.all();
  EXPECT_NE(result.out.find("HANDLE PARAMS ok"), std::string::npos) << result.all();
  EXPECT_NE(result.out.find("GPU IDS ok"), std::string::npos) << result.all();
  EXPECT_NE(result.out.find("ACTOR IDS ok"), std::string::npos) << result.all();
  EXPECT_NE(result.out.find("CANCEL ok"), std::string::npos) << result.all();
  // Objects between actor hosts move over UCX, not the call plane.
  EXPECT_NE(result.out.find("PLANE ucx: "), std::string::npos) << result.all();
  EXPECT_NE(result.out.find("FETCH WHILE BUSY"), std::string::npos) << result.all();
  // The scheduler must put the T4 actor on the T4 worker and the H100 actor
  // on the head's node; each gets GPU 0 of its node.
  EXPECT_EQ(node_of(result.out, "a"), t4) << result.out;
  EXPECT_EQ(node_of(result.out, "b"), head) << result.out;
  EXPECT_NE(result.out.find("PLACED a " + t4 + " [0]"), std::string::npos);

  auto jobs = cluster.list("jobs");
  ASSERT_FALSE(jobs.empty());
  bool succeeded = false;
  for (const auto& job : jobs) succeeded = succeeded || job.dump().find("SUCCEEDED") != std::string::npos;
  EXPECT_TRUE(succeeded) << jobs.dump();
}

TEST(ClusterJob, PlacementGroupsFromTheDriverReserveBundlesOnTheRightNodes) {
  TestCluster cluster(kHeartbeatMs, kMisses);
  ASSERT_EQ(cluster.start_head({"--gpus", "H100-80GB:1"}).exit_code, 0);
  const std::string t4 = cluster.add_worker("T4-16GB:1");
  ASSERT_FALSE(t4.empty());
  auto result = cluster.troupe({"submit", "--", TROUPE_CLUSTER_JOB, "groups"}, 120s);
  ASSERT_EQ(result.exit_code, 0) << result.all();
  const std::string first = node_of(result.out, "spread0");
  const std::string second = node_of(result.out, "spread1");
  EXPECT_FALSE(first.empty());
  EXPECT_NE(first, second) << "STRICT_SPREAD bundles must be on distinct nodes\n" << result.out;
  EXPECT_EQ(node_of(result.out, "packed"), t4) << result.out;
  EXPECT_NE(result.out.find("PENDING GROUP"), std::string::npos) << result.out;
}

TEST(ClusterJob, KilledWorkerFailsTheCallWithActorDiedInsteadOfHanging) {
  TestCluster cluster(kHeartbeatMs, kMisses);
  ASSERT_EQ(cluster.start_head().exit_code, 0);
  const std::string a100 = cluster.add_worker("A100-40GB:1");
  ASSERT_FALSE(a100.empty());

  troupe::testing::RunResult result;
  std::thread submit([&] {
    result = cluster.troupe({"submit", "--", TROUPE_CLUSTER_JOB, "wait-for-death"}, 120s);
  });
  // Wait until the victim actor is alive on the A100 worker, then kill the worker.
  bool alive = troupe::testing::eventually(
      [&] {
        for (const auto& actor : cluster.list("actors"))
          if (actor.dump().find("victim") != std::string::npos && actor.dump().find("ALIVE") != std::string::npos)
            return true;
        return false;
      },
      60s);
  EXPECT_TRUE(alive);
  std::this_thread::sleep_for(300ms);  // the driver is now inside the long call
  ::kill(cluster.pid_of(TestCluster::worker_name(a100)), SIGKILL);
  const auto killed_at = std::chrono::steady_clock::now();
  submit.join();
  const auto took = std::chrono::steady_clock::now() - killed_at;
  EXPECT_EQ(result.exit_code, 0) << result.all();
  EXPECT_NE(result.out.find("ACTOR DIED"), std::string::npos) << result.all();
  EXPECT_LT(took, 20s);  // well inside the call's own 30 s timeout
}

TEST(ClusterJob, OneMiBTensorsThroughAFourStageChainKeepEveryProcessBounded) {
  TestCluster cluster(kHeartbeatMs, kMisses);
  ASSERT_EQ(cluster.start_head().exit_code, 0);
  ASSERT_FALSE(cluster.add_worker("T4-16GB:1").empty());  // 4 CPUs in all: one per stage
  const char* steps = std::getenv("TROUPE_MEMORY_LOOP_STEPS");
  auto result = cluster.troupe(
      {"submit", "--name", "memory", "--", TROUPE_CLUSTER_JOB, "memory-loop", steps ? steps : "20000"}, 900s);
  ASSERT_EQ(result.exit_code, 0) << result.all();
  EXPECT_NE(result.out.find("JOB OK"), std::string::npos) << result.all();
  auto at = result.out.find("RSS GROWTH ");
  ASSERT_NE(at, std::string::npos) << result.all();
  const long growth_kib = std::atol(result.out.c_str() + at + 11);
  // Every step moves 3 MiB between processes; a leak of one tensor per step
  // would grow by gigabytes. Allow allocator slack and caches.
  EXPECT_LT(growth_kib, 96 * 1024) << result.out;
  std::printf("%s", result.out.c_str());
}

}  // namespace
