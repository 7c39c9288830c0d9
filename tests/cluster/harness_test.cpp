// TROUPE_TEST_LABELS: cluster fast
// The test harness itself: a test process killed before it can tear its
// cluster down (ctest's timeout sends SIGKILL) must not leave the cluster's
// daemons running; the reaper of cluster_harness.hpp stops them.
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <string>

#include <gtest/gtest.h>

#include "cluster/cluster_harness.hpp"

namespace {

using namespace std::chrono_literals;
using troupe::testing::TestCluster;

bool alive(pid_t pid) { return pid > 0 && ::kill(pid, 0) == 0; }

// Whether any process's command line mentions `text`.
bool any_process_mentions(const std::string& text) {
  std::error_code error;
  for (const auto& entry : std::filesystem::directory_iterator("/proc", error)) {
    const std::string name = entry.path().filename().string();
    if (name.empty() || name.find_first_not_of("0123456789") != std::string::npos) continue;
    std::string cmdline = troupe::testing::read_text(entry.path() / "cmdline");
    if (cmdline.find(text) != std::string::npos) return true;
  }
  return false;
}

TEST(TestClusterHarness, AClusterWhoseTestProcessIsKilledIsStoppedByTheReaper) {
  int report[2];
  ASSERT_EQ(::pipe2(report, O_CLOEXEC), 0);  // not inherited by the daemons
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    // A test process: a head and a worker, then killed before teardown.
    ::close(report[0]);
    TestCluster cluster;
    if (cluster.start_head().exit_code != 0) ::_exit(3);
    const std::string worker_id = cluster.add_worker("");
    if (worker_id.empty()) ::_exit(4);
    const std::string line = std::to_string(cluster.pid_of("head")) + " " +
                             std::to_string(cluster.pid_of(TestCluster::worker_name(worker_id))) +
                             " " + cluster.root().string() + "\n";
    (void)!::write(report[1], line.data(), line.size());
    ::raise(SIGKILL);
  }
  ::close(report[1]);
  std::string line;
  char buffer[512];
  for (ssize_t n; (n = ::read(report[0], buffer, sizeof buffer)) > 0;) line.append(buffer, static_cast<std::size_t>(n));
  ::close(report[0]);
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  ASSERT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL) << "the child failed to start its cluster: " << status;
  long head = 0, worker = 0;
  char root[400] = {};
  ASSERT_EQ(std::sscanf(line.c_str(), "%ld %ld %399s", &head, &worker, root), 3) << line;
  ASSERT_GT(head, 0);
  ASSERT_GT(worker, 0);
  // Nobody tore the cluster down; the reaper must, within `troupe stop`'s time.
  EXPECT_TRUE(troupe::testing::eventually([&] { return !alive(static_cast<pid_t>(head)) && !alive(static_cast<pid_t>(worker)); }, 30s))
      << "head " << head << " alive " << alive(static_cast<pid_t>(head)) << ", worker " << worker << " alive "
      << alive(static_cast<pid_t>(worker));
  EXPECT_TRUE(troupe::testing::eventually([&] { return !std::filesystem::exists(root); }, 10s))
      << root << " was not removed";
}

TEST(TestClusterHarness, ATornDownClusterLeavesNoReaperBehind) {
  std::string root;
  {
    TestCluster cluster;
    const auto started = cluster.start_head();
    ASSERT_EQ(started.exit_code, 0) << started.all();
    root = cluster.root().string();
  }
  // The reaper is told "done" and exits; no shell is left reading for this root.
  EXPECT_TRUE(troupe::testing::eventually([&] { return !any_process_mentions(root); }, 10s));
}

}  // namespace
