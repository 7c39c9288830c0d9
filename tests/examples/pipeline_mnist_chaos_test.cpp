// examples/pipeline_mnist with checkpointed stages on a real local cluster:
// one stage's actor host is killed with SIGKILL in the middle of training;
// the runtime restarts it, the driver rolls every stage back to a common
// checkpoint and replays, and the job finishes with exactly the losses (every
// step, every epoch, and the accuracy) of a run without faults.
// (scripts/chaos.sh goes further: a worker daemon and the head too.)
// TROUPE_TEST_LABELS: cluster slow
#include <signal.h>

#include <filesystem>
#include <fstream>
#include <future>
#include <sstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#define TROUPE_CLI_PATH TROUPE_BINARY_DIR "/cli/troupe"
#include "cluster/cluster_harness.hpp"

namespace {

using namespace std::chrono_literals;
namespace fs = std::filesystem;
using troupe::testing::RunResult;
using troupe::testing::run_process;

const std::string kExample = TROUPE_BINARY_DIR "/examples/pipeline_mnist";
const std::string kData = "/usr/share/datasets/fashion-mnist";

// The last "step N" line of a --losses-file.
long last_step(const fs::path& file) {
  std::ifstream in(file);
  std::string word;
  long step = 0, value = 0;
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream fields(line);
    if (fields >> word >> value && word == "step") step = value;
  }
  return step;
}

// The pid of the process whose TROUPE_ACTOR_SPEC names actor `id`, or 0.
pid_t host_of(const std::string& id) {
  std::error_code error;
  for (const auto& entry : fs::directory_iterator("/proc", error)) {
    const std::string name = entry.path().filename().string();
    if (name.find_first_not_of("0123456789") != std::string::npos) continue;
    const std::string environ = troupe::testing::read_text(entry.path() / "environ");
    if (environ.find("TROUPE_ACTOR_SPEC=") != std::string::npos &&
        environ.find("/" + id + ".spec") != std::string::npos) {
      return static_cast<pid_t>(std::stol(name));
    }
  }
  return 0;
}

TEST(PipelineMnistChaos, AStageHostKilledMidRunIsRecoveredAndTheLossesEqualAFaultFreeRun) {
  if (!fs::exists(kExample)) GTEST_SKIP() << kExample << " is not built";
  if (!fs::exists(TROUPE_CLI_PATH)) GTEST_SKIP() << TROUPE_CLI_PATH << " is not built";
  if (!fs::exists(kData)) GTEST_SKIP() << kData << " is missing (dataset-fashion-mnist)";
  troupe::testing::TestCluster cluster(200, 15);
  const fs::path reference = cluster.root() / "reference.losses";
  const fs::path losses = cluster.root() / "chaos.losses";
  const std::vector<std::string> flags = {"--limit", "4000", "--epochs", "3", "--log-every", "0",
                                          "--checkpoint-every", "4"};
  auto with = [&](std::vector<std::string> extra) {
    std::vector<std::string> args = flags;
    args.insert(args.end(), extra.begin(), extra.end());
    return args;
  };
  const RunResult fault_free =
      run_process(kExample, with({"--losses-file", reference.string(), "--checkpoint-dir",
                                  (cluster.root() / "reference-checkpoints").string()}),
                  {{"TROUPE_ADDRESS", ""}}, 240s);
  ASSERT_EQ(fault_free.exit_code, 0) << fault_free.all();

  ASSERT_EQ(cluster.start_head().exit_code, 0);
  ASSERT_FALSE(cluster.add_worker("").empty());
  auto job = std::async(std::launch::async, [&] {
    return run_process(kExample,
                       with({"--losses-file", losses.string(), "--checkpoint-dir", (cluster.root() / "ckpt").string()}),
                       {{"TROUPE_ADDRESS", cluster.address()}, {"TROUPE_TEMP_DIR", cluster.root().string()}}, 400s);
  });
  // Mid-run: after step 30 of 96.
  ASSERT_TRUE(troupe::testing::eventually([&] { return last_step(losses) >= 30 || job.wait_for(0s) == std::future_status::ready; }, 300s));
  ASSERT_NE(job.wait_for(0s), std::future_status::ready) << job.get().all();
  std::string victim;
  for (const auto& actor : cluster.list("actors")) {
    const std::string cls = actor["class_name"];
    if (cls.find("PipelineStage") != std::string::npos) victim = actor["actor_id"];
  }
  ASSERT_FALSE(victim.empty());
  const pid_t pid = host_of(victim);
  ASSERT_GT(pid, 0) << "no actor host process for " << victim;
  ASSERT_EQ(::kill(pid, SIGKILL), 0);

  const RunResult r = job.get();
  ASSERT_EQ(r.exit_code, 0) << r.all();
  EXPECT_NE(r.out.find("died, restored step"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("every replayed loss equal to the first run's"), std::string::npos) << r.out;
  EXPECT_EQ(troupe::testing::read_text(losses), troupe::testing::read_text(reference)) << r.out;
}

}  // namespace
