// No call hangs on a real local cluster (tests/fixtures/calls_job.cpp does
// the calling; each of its waits is bounded, so a hang fails the job): an
// actor killed and restarted with calls in flight fails them with
// ActorDiedError, or with max_task_retries answers them from the new
// incarnation in order; a call to a host stopped with SIGSTOP ends by its
// deadline; calls made while the actor is killed each end; and
// max_pending_calls fails or blocks, by policy.
// TROUPE_TEST_LABELS: cluster
#include <gtest/gtest.h>

#include "cluster/cluster_harness.hpp"

namespace {

using namespace std::chrono_literals;
using troupe::testing::TestCluster;

// As the other cluster tests: heartbeats every 200 ms, a node lost after
// 3 s, so a loaded machine does not lose nodes.
constexpr int kHeartbeatMs = 200;
constexpr int kMisses = 15;

class ClusterCalls : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_EQ(cluster_.start_head().exit_code, 0);
    ASSERT_FALSE(cluster_.add_worker("").empty());
  }
  troupe::testing::RunResult job(const std::vector<std::string>& args, std::chrono::seconds timeout = 240s) {
    std::vector<std::string> command{"submit", "--", TROUPE_CALLS_JOB};
    command.insert(command.end(), args.begin(), args.end());
    return cluster_.troupe(command, timeout);
  }
  TestCluster cluster_{kHeartbeatMs, kMisses};
};

TEST_F(ClusterCalls, ARestartFailsTheCallsInFlightWithActorDiedSayingItRestarted) {
  auto result = job({"restart", "0"});
  EXPECT_EQ(result.exit_code, 0) << result.all();
  EXPECT_NE(result.out.find("JOB OK"), std::string::npos) << result.all();
  EXPECT_NE(result.out.find("RESTARTED 1"), std::string::npos) << result.all();
}

TEST_F(ClusterCalls, WithMaxTaskRetriesTheNewIncarnationAnswersTheCallsInFlightInOrder) {
  auto result = job({"restart", "2"});
  EXPECT_EQ(result.exit_code, 0) << result.all();
  EXPECT_NE(result.out.find("RETRIED in order"), std::string::npos) << result.all();
  EXPECT_NE(result.out.find("JOB OK"), std::string::npos) << result.all();
}

TEST_F(ClusterCalls, ACallToAStoppedHostEndsByItsDeadline) {
  auto result = job({"deadline-stopped"});
  EXPECT_EQ(result.exit_code, 0) << result.all();
  EXPECT_NE(result.out.find("TIMEOUT after"), std::string::npos) << result.all();
  EXPECT_NE(result.out.find("JOB OK"), std::string::npos) << result.all();
}

TEST_F(ClusterCalls, CallsMadeWhileTheActorIsKilledEachEnd) {
  auto result = job({"kill-race", "6"});
  EXPECT_EQ(result.exit_code, 0) << result.all();
  EXPECT_NE(result.out.find("KILL RACE"), std::string::npos) << result.all();
  EXPECT_NE(result.out.find("JOB OK"), std::string::npos) << result.all();
}

TEST_F(ClusterCalls, MaxPendingCallsFailsWithOverloadedOrBlocksByPolicy) {
  auto result = job({"overloaded"});
  EXPECT_EQ(result.exit_code, 0) << result.all();
  EXPECT_NE(result.out.find("FAIL POLICY"), std::string::npos) << result.all();
  EXPECT_NE(result.out.find("JOB OK"), std::string::npos) << result.all();
  EXPECT_NE(result.out.find("BLOCK POLICY all 200 values"), std::string::npos) << result.all();
}

}  // namespace
