// Load must not fool failure detection (docs/fault-tolerance.md, "Failure
// detection and fencing"): a head and two workers with the default
// heartbeat settings run beside a CPU hog on every core (`yes > /dev/null`)
// and a head stopped for 2 s every 10 s, for about a minute; no healthy node
// may be declared dead and the served actor never restarts. Then a worker
// daemon killed with SIGKILL is still declared dead within 10 s.
//
// TROUPE_TEST_LABELS: cluster slow
#include <signal.h>
#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "cluster/cluster_harness.hpp"

namespace troupe::testing {
namespace {

using Clock = std::chrono::steady_clock;

// `yes > /dev/null`, one per core, ended with the test.
class CpuHog {
 public:
  CpuHog() {
    unsigned cores = std::max(2u, std::thread::hardware_concurrency());
    for (unsigned i = 0; i < cores; ++i) {
      pid_t pid = ::fork();
      if (pid == 0) {
        int fd = ::open("/dev/null", O_WRONLY);
        ::dup2(fd, 1);
        ::execl("/usr/bin/yes", "yes", static_cast<char*>(nullptr));
        ::_exit(127);
      }
      if (pid > 0) pids_.push_back(pid);
    }
  }
  ~CpuHog() {
    for (pid_t pid : pids_) ::kill(pid, SIGKILL);
    for (pid_t pid : pids_) ::waitpid(pid, nullptr, 0);
  }

 private:
  std::vector<pid_t> pids_;
};

TEST(FailureStress, NoHealthyNodeIsDeclaredDeadBesideACpuHogAndHeadStallsButAKilledOneIsWithinTenSeconds) {
  TestCluster cluster(500, 6, 3000);  // the defaults
  ASSERT_EQ(cluster.start_head().exit_code, 0);
  std::string first = cluster.add_worker("T4-16GB:1");
  std::string second = cluster.add_worker("");
  ASSERT_FALSE(first.empty());
  ASSERT_FALSE(second.empty());
  auto submitted =
      cluster.troupe({"submit", "--no-wait", "--name", "serve", "--", TROUPE_CLUSTER_JOB, "serve", "T4", "5"});
  ASSERT_EQ(submitted.exit_code, 0) << submitted.all();
  auto target_incarnation = [&]() -> int {
    for (const auto& actor : cluster.list("actors")) {
      if (actor["name"] == "target" && actor["state"] == "ALIVE") return actor["incarnation"].get<int>();
    }
    return -1;
  };
  ASSERT_TRUE(eventually([&] { return target_incarnation() >= 0; }, 120s));
  const int incarnation = target_incarnation();

  std::set<std::string> seen_states;
  int suspicions = 0;
  {
    CpuHog hog;
    pid_t head = cluster.pid_of("head");
    auto start = Clock::now();
    int round = 0;
    while (Clock::now() - start < 60s) {
      if (++round % 10 == 0) {  // every ~10 s: the head stops for 2 s
        ::kill(head, SIGSTOP);
        std::this_thread::sleep_for(2s);
        ::kill(head, SIGCONT);
      }
      for (const auto& node : cluster.list("nodes")) {
        std::string state = node["state"];
        seen_states.insert(state);
        if (state == "SUSPECTED") ++suspicions;
        EXPECT_NE(state, "DEAD") << "healthy node " << node["node_id"] << " declared dead under load";
      }
      std::this_thread::sleep_for(1s);
    }
  }
  std::printf("under load: node states seen:");
  for (const auto& state : seen_states) std::printf(" %s", state.c_str());
  std::printf("; %d suspicion sightings\n", suspicions);
  EXPECT_EQ(target_incarnation(), incarnation) << "the served actor restarted under load";

  // A real death is still detected within 10 s.
  pid_t daemon = cluster.pid_of(TestCluster::worker_name(second));
  ASSERT_EQ(::kill(daemon, SIGKILL), 0);
  auto killed = Clock::now();
  bool dead = eventually(
      [&] {
        auto node = cluster.node(second);
        return node.is_object() && node["state"] == "DEAD";
      },
      15s);
  double after = std::chrono::duration<double>(Clock::now() - killed).count();
  std::printf("killed worker declared dead after %.2f s\n", after);
  EXPECT_TRUE(dead);
  EXPECT_LE(after, 10.0);
}

}  // namespace
}  // namespace troupe::testing
