// TROUPE_TEST_LABELS: cluster slow
// Live re-planning across real nodes (issue 17, item 4): examples/pipeline_serving
// serves on a plan over one worker's GPUs; a worker with faster GPUs joins and
// the job re-plans onto it (checkpointing first: nothing lost); that worker's
// daemon is then killed and the job re-plans back onto what is left, restored
// from its last checkpoint. Each new stage's state must equal the checkpoint's
// (the example compares digests and fails otherwise), and the responses after
// each re-plan must match the single-thread model.
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <future>
#include <map>
#include <regex>
#include <string>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "cluster/cluster_harness.hpp"

namespace troupe::testing {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;
using Clock = std::chrono::steady_clock;

struct Progress {
  int replans = -1;
  int answered = -1;
};

// The example's --status-file: "replans=R answered=N step=S".
Progress read_progress(const fs::path& file) {
  Progress out;
  std::FILE* f = std::fopen(file.c_str(), "r");
  if (f == nullptr) return out;
  long long step = 0;
  if (std::fscanf(f, "replans=%d answered=%d step=%lld", &out.replans, &out.answered, &step) != 3) out = {};
  std::fclose(f);
  return out;
}

// The text of the output between `from` and the next `to` (or the end).
std::string section(const std::string& text, const std::string& from, const std::string& to) {
  const auto begin = text.find(from);
  if (begin == std::string::npos) return "";
  const auto end = text.find(to, begin + from.size());
  return text.substr(begin, end == std::string::npos ? std::string::npos : end - begin);
}

double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

TEST(LiveReplan, AServingJobMovesOntoAJoiningNodeAndOffALostOneWithItsStateRestored) {
  const std::string example = TROUPE_BINARY_DIR "/examples/pipeline_serving";
  if (::access(example.c_str(), X_OK) != 0) GTEST_SKIP() << example << " is not built";
  // Detection in 200 ms x 15 + 500 ms: generous for a loaded 2-core machine.
  TestCluster cluster(200, 15);
  ASSERT_EQ(cluster.start_head().exit_code, 0);  // the head's node has no GPUs
  const std::string t4 = cluster.add_worker("T4-16GB:2");
  ASSERT_FALSE(t4.empty());

  const fs::path status = cluster.root() / "serving-status";
  const fs::path checkpoints = cluster.root() / "checkpoints";
  const std::map<std::string, std::string> env{{"TROUPE_ADDRESS", cluster.address()},
                                               {"TROUPE_TOKEN_FILE", cluster.token_file().string()},
                                               {"TROUPE_TEMP_DIR", cluster.root().string()}};
  auto job = std::async(std::launch::async, [&] {
    return run_process(example,
                       {"--replans", "2", "--requests", "20", "--inflight", "4", "--batch", "8", "--check", "2",
                        "--checkpoint-every", "8", "--checkpoint-dir", checkpoints.string(), "--poll-ms", "200",
                        "--status-file", status.string(), "--max-seconds", "240"},
                       env, 300s);
  });
  auto fail_with_output = [&](const std::string& what) {
    ADD_FAILURE() << what;
    cluster.teardown();  // the job fails fast without its cluster
    const RunResult result = job.get();
    return result.all();
  };

  if (!eventually([&] { return read_progress(status).answered >= 16; }, 120s)) {
    FAIL() << fail_with_output("the job never got going");
  }
  // A node with faster GPUs joins.
  const std::string a100 = cluster.add_worker("A100-40GB:2");
  ASSERT_FALSE(a100.empty());
  const auto joined_at = Clock::now();
  if (!eventually([&] { return read_progress(status).replans >= 1; }, 60s)) {
    FAIL() << fail_with_output("no re-plan after a node joined");
  }
  const double join_to_replan = seconds_since(joined_at);
  const int answered_then = read_progress(status).answered;
  if (!eventually([&] { return read_progress(status).answered >= answered_then + 12; }, 120s)) {
    FAIL() << fail_with_output("no requests served on the new plan");
  }

  // The node the new plan runs on dies with its stages.
  ASSERT_EQ(::kill(cluster.pid_of(TestCluster::worker_name(a100)), SIGKILL), 0);
  const auto killed_at = Clock::now();
  if (!eventually([&] { return read_progress(status).replans >= 2; }, 90s)) {
    FAIL() << fail_with_output("no re-plan after the plan's node was lost");
  }
  const double loss_to_replan = seconds_since(killed_at);

  const RunResult result = job.get();
  const std::string& out = result.out;
  ASSERT_EQ(result.exit_code, 0) << result.all();
  std::printf("node joined -> re-planned in %.2f s; node killed -> re-planned in %.2f s (detection %lld ms)\n",
              join_to_replan, loss_to_replan, static_cast<long long>(cluster.node_timeout().count()));
  const std::regex figures(R"((plan \d: served[^\n]*|  re-plan \d took[^\n]*))");
  for (auto it = std::sregex_iterator(out.begin(), out.end(), figures); it != std::sregex_iterator(); ++it) {
    std::printf("%s\n", it->str().c_str());
  }

  const std::string t4_name = t4.substr(0, 12), a100_name = a100.substr(0, 12);
  // Plan 0 ran on the T4 worker alone.
  EXPECT_THAT(out, HasSubstr("cluster: running cluster, 2 GPUs on 1 node")) << out;
  // Re-plan 1: the A100 node joined, the plan moved onto it, nothing lost.
  const std::string first = section(out, "re-plan 1 (", "re-plan 2 (");
  ASSERT_FALSE(first.empty()) << out;
  EXPECT_THAT(first, HasSubstr("re-plan 1 (better)")) << first;
  EXPECT_THAT(out, HasSubstr("node " + a100_name + " joined (2 GPUs: A100-40GB, A100-40GB)")) << out;
  EXPECT_THAT(section(first, "  new plan:", "\n"), HasSubstr(a100_name)) << first;
  EXPECT_THAT(first, HasSubstr("restored: every stage's state equals the checkpoint of step")) << first;
  EXPECT_THAT(first, HasSubstr("nothing lost")) << first;
  // Re-plan 2: forced by the loss, back onto the T4 worker only.
  const std::string second = section(out, "re-plan 2 (", "served ");
  ASSERT_FALSE(second.empty()) << out;
  EXPECT_THAT(second, HasSubstr("re-plan 2 (forced)")) << second;
  EXPECT_THAT(out, HasSubstr("node " + a100_name + " lost")) << out;
  const std::string new_plan = section(second, "  new plan:", "\n");
  EXPECT_THAT(new_plan, Not(HasSubstr(a100_name))) << second;
  EXPECT_THAT(new_plan, HasSubstr(t4_name)) << second;
  EXPECT_THAT(second, HasSubstr("restored: every stage's state equals the checkpoint of step")) << second;
  // Every plan served and reported its throughput; the responses checked
  // after each re-plan match the model.
  for (const char* phase : {"plan 0: served", "plan 1: served", "plan 2: served"}) {
    EXPECT_THAT(out, HasSubstr(phase)) << out;
  }
  EXPECT_THAT(out, HasSubstr("result: OK, 6 of 6 checked requests match")) << out;
  EXPECT_THAT(out, Not(HasSubstr("MISPLACED"))) << out;
}

}  // namespace
}  // namespace troupe::testing
