// Failure detection and fencing on a real cluster (docs/fault-tolerance.md,
// "Failure detection and fencing"): a worker daemon killed with SIGKILL is
// declared dead within 10 s and its actor hosts end with it; a node manager
// that stops answering is declared dead only after it was suspected and
// probed, and its actor host is stopped before the actor runs elsewhere; a
// worker that hears nothing from the head for the fencing timeout stops its
// hosts, while a short stop of the head changes nothing; a driver that
// uploads a big binary is not lost meanwhile.
//
// TROUPE_TEST_LABELS: cluster slow
#include <signal.h>
#include <sys/stat.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "cluster/cluster_harness.hpp"

namespace troupe::testing {
namespace {

using Clock = std::chrono::steady_clock;

// Pids whose parent is `parent`.
std::vector<pid_t> children_of(pid_t parent) {
  std::vector<pid_t> children;
  std::error_code error;
  for (const auto& entry : fs::directory_iterator("/proc", error)) {
    const std::string name = entry.path().filename().string();
    if (name.empty() || name.find_first_not_of("0123456789") != std::string::npos) continue;
    std::string stat = read_text(entry.path() / "stat");
    auto close = stat.rfind(')');
    if (close == std::string::npos) continue;
    char state = 0;
    int ppid = 0;
    if (std::sscanf(stat.c_str() + close + 1, " %c %d", &state, &ppid) == 2 && ppid == parent) {
      children.push_back(static_cast<pid_t>(std::atol(name.c_str())));
    }
  }
  return children;
}

// Gone, or a zombie nobody reaped yet: it runs no more.
bool exited(pid_t pid) {
  std::string stat = read_text("/proc/" + std::to_string(pid) + "/stat");
  if (stat.empty()) return true;
  auto close = stat.rfind(')');
  return close != std::string::npos && close + 2 < stat.size() && (stat[close + 2] == 'Z' || stat[close + 2] == 'X');
}

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

std::string node_state(const TestCluster& cluster, const std::string& id) {
  auto node = cluster.node(id);
  return node.is_object() ? node["state"].get<std::string>() : "";
}

// The actor named `name`: (state, node id, incarnation), or empty state.
struct ActorRow {
  std::string state;
  std::string node;
  int incarnation = -1;
};
ActorRow actor_named(const TestCluster& cluster, const std::string& name) {
  ActorRow row;
  for (const auto& actor : cluster.list("actors")) {
    if (actor["name"] != name) continue;
    int incarnation = actor["incarnation"].get<int>();
    if (incarnation < row.incarnation) continue;
    row = {actor["state"].get<std::string>(), actor["node_id"].get<std::string>(), incarnation};
  }
  return row;
}

// Starts the `serve` job (actor "target" on a T4 node, `restarts` restarts)
// and waits until its actor is ALIVE; returns that row.
ActorRow serve(TestCluster& cluster, int restarts) {
  auto submitted = cluster.troupe(
      {"submit", "--no-wait", "--name", "serve", "--", TROUPE_CLUSTER_JOB, "serve", "T4", std::to_string(restarts)});
  EXPECT_EQ(submitted.exit_code, 0) << submitted.all();
  ActorRow row;
  EXPECT_TRUE(eventually(
      [&] {
        row = actor_named(cluster, "target");
        return row.state == "ALIVE";
      },
      120s))
      << row.state;
  return row;
}

TEST(FailureDetection, AKilledWorkerDaemonIsDeclaredDeadWithinTenSecondsAndItsActorHostsExit) {
  TestCluster cluster(500, 6, 3000);  // the defaults: suspected after 3 s, dead after 3 s more
  ASSERT_EQ(cluster.start_head().exit_code, 0);
  std::string worker = cluster.add_worker("T4-16GB:1");
  ASSERT_FALSE(worker.empty());
  auto target = serve(cluster, 0);
  ASSERT_EQ(target.node, worker);
  pid_t daemon = cluster.pid_of(TestCluster::worker_name(worker));
  auto hosts = children_of(daemon);
  ASSERT_FALSE(hosts.empty()) << "the worker runs the actor's host";

  ASSERT_EQ(::kill(daemon, SIGKILL), 0);
  auto killed = Clock::now();
  double hosts_gone = -1, declared_dead = -1;
  while (seconds_since(killed) < 20 && (hosts_gone < 0 || declared_dead < 0)) {
    if (hosts_gone < 0 && std::all_of(hosts.begin(), hosts.end(), exited)) hosts_gone = seconds_since(killed);
    if (declared_dead < 0 && node_state(cluster, worker) == "DEAD") declared_dead = seconds_since(killed);
    std::this_thread::sleep_for(50ms);
  }
  std::printf("actor hosts gone %.2f s, node declared dead %.2f s after SIGKILL of its daemon\n", hosts_gone,
              declared_dead);
  EXPECT_GE(hosts_gone, 0);
  EXPECT_LE(hosts_gone, 2.5) << "actor hosts end with their node manager";
  EXPECT_GE(declared_dead, 0);
  EXPECT_LE(declared_dead, 10.0) << "a dead node is detected within 10 s";
  EXPECT_TRUE(eventually([&] { return actor_named(cluster, "target").state == "DEAD"; }, 10s));
}

TEST(FailureDetection, AStoppedNodeManagerIsSuspectedThenDeclaredDeadAndItsHostStopsBeforeTheActorRunsElsewhere) {
  TestCluster cluster(500, 6, 3000);
  ASSERT_EQ(cluster.start_head().exit_code, 0);
  std::string first = cluster.add_worker("T4-16GB:1");
  std::string second = cluster.add_worker("T4-16GB:1");
  ASSERT_FALSE(first.empty());
  ASSERT_FALSE(second.empty());
  auto target = serve(cluster, 5);
  const std::string where = target.node;
  ASSERT_TRUE(where == first || where == second);
  pid_t daemon = cluster.pid_of(TestCluster::worker_name(where));
  auto hosts = children_of(daemon);
  ASSERT_EQ(hosts.size(), 1u);

  ASSERT_EQ(::kill(daemon, SIGSTOP), 0);
  auto stopped = Clock::now();
  bool suspected = false;
  double dead = -1, host_gone = -1, elsewhere = -1;
  bool overlap = false;
  while (seconds_since(stopped) < 30 && (dead < 0 || elsewhere < 0 || host_gone < 0)) {
    auto state = node_state(cluster, where);
    suspected |= state == "SUSPECTED";
    if (dead < 0 && state == "DEAD") dead = seconds_since(stopped);
    bool gone = exited(hosts[0]);
    if (host_gone < 0 && gone) host_gone = seconds_since(stopped);
    auto row = actor_named(cluster, "target");
    if (row.state == "ALIVE" && row.node != where && row.incarnation > target.incarnation) {
      if (elsewhere < 0) elsewhere = seconds_since(stopped);
      overlap |= !exited(hosts[0]);  // the old copy still ran while the new one served
    }
    std::this_thread::sleep_for(50ms);
  }
  ::kill(daemon, SIGCONT);
  std::printf("stopped node manager: suspected %d, dead at %.2f s, its host gone at %.2f s, actor alive "
              "elsewhere at %.2f s\n", suspected, dead, host_gone, elsewhere);
  EXPECT_TRUE(suspected) << "a silent node is suspected before it is declared dead";
  EXPECT_GE(dead, 3.0) << "not before the suspicion and the probe timeout";
  EXPECT_LE(dead, 10.0);
  EXPECT_GE(host_gone, 0) << "the head stops the host of a node it declared dead";
  EXPECT_GE(elsewhere, 0);
  EXPECT_FALSE(overlap) << "the actor ran twice";
  // Continued, the node learns it was declared dead, fences, and rejoins.
  EXPECT_TRUE(eventually([&] { return node_state(cluster, where) == "ALIVE"; }, 15s));
}

TEST(FailureDetection, AShortHeadStopFencesNothingButAWorkerCutOffForTheFencingTimeoutStopsItsHosts) {
  TestCluster cluster(500, 6, 3000);  // detection 6 s; a worker fences after 5 s without the head
  ASSERT_EQ(cluster.start_head().exit_code, 0);
  std::string worker = cluster.add_worker("T4-16GB:1");
  ASSERT_FALSE(worker.empty());
  auto target = serve(cluster, 5);
  pid_t head = cluster.pid_of("head");
  pid_t daemon = cluster.pid_of(TestCluster::worker_name(worker));
  auto hosts = children_of(daemon);
  ASSERT_EQ(hosts.size(), 1u);

  // A 2 s stop of the head (a quick restart, a stall): nothing happens.
  ASSERT_EQ(::kill(head, SIGSTOP), 0);
  std::this_thread::sleep_for(2s);
  ::kill(head, SIGCONT);
  std::this_thread::sleep_for(3s);
  EXPECT_FALSE(exited(hosts[0]));
  EXPECT_EQ(node_state(cluster, worker), "ALIVE");
  auto row = actor_named(cluster, "target");
  EXPECT_EQ(row.state, "ALIVE");
  EXPECT_EQ(row.incarnation, target.incarnation);

  // A stop longer than the fencing timeout: the worker stops its host
  // while the head is still away.
  ASSERT_EQ(::kill(head, SIGSTOP), 0);
  auto stopped = Clock::now();
  double fenced = -1;
  while (seconds_since(stopped) < 9 && fenced < 0) {
    if (exited(hosts[0])) fenced = seconds_since(stopped);
    std::this_thread::sleep_for(50ms);
  }
  ::kill(head, SIGCONT);
  std::printf("head stopped: the worker fenced its host after %.2f s\n", fenced);
  EXPECT_GE(fenced, 4.0);
  EXPECT_LE(fenced, 8.0);
  // Back, the head gets the worker's report of the fenced host (kept and
  // sent again until acknowledged) and restarts the actor.
  EXPECT_TRUE(eventually(
      [&] {
        auto now = actor_named(cluster, "target");
        return now.state == "ALIVE" && now.incarnation > target.incarnation;
      },
      30s));
  EXPECT_EQ(node_state(cluster, worker), "ALIVE");
}

TEST(FailureDetection, ADriverUploadingABigBinaryIsNotLostAndItsActorStillRestarts) {
  // A driver is lost after 100 * 3 ms + the probe timeout of silence; the
  // probe timeout is long because the node manager that starts the actor
  // hashes the big binary on its loop (twice per start) and must not be
  // declared dead meanwhile.
  TestCluster cluster(100, 3, 3000);
  ASSERT_EQ(cluster.start_head().exit_code, 0);
  // The job binary with 150 MiB appended (an ELF file ignores it), under
  // transport::kMaxBinaryBytes (255 MiB) with the binary itself. The head's
  // own test (ADriverUploadingItsBinaryIsNotLostAndAnyMessageCountsAsLife,
  // fake clock) is the deterministic check of the upload grace; this one
  // runs the whole path: upload, heartbeats from the start, a restart.
  fs::path big = cluster.root() / "big_cluster_job";
  fs::copy_file(TROUPE_CLUSTER_JOB, big);
  {
    std::ofstream out(big, std::ios::binary | std::ios::app);
    std::string chunk(1 << 20, '\0');
    for (int i = 0; i < 150; ++i) out.write(chunk.data(), static_cast<std::streamsize>(chunk.size()));
  }
  ::chmod(big.c_str(), 0755);
  auto result = run_process(big.string(), {"restart"},
                            {{"TROUPE_ADDRESS", cluster.address()},
                             {"TROUPE_TEMP_DIR", cluster.root().string()},
                             {"TROUPE_TOKEN_FILE", cluster.token_file().string()}},
                            180s);
  EXPECT_EQ(result.exit_code, 0) << result.all();
  EXPECT_NE(result.out.find("JOB OK"), std::string::npos) << result.all();
}

TEST(FailureDetection, ADriverWhoseBinaryIsTooBigToUploadSaysSoAtOnce) {
  TestCluster cluster(100, 3, 3000);
  ASSERT_EQ(cluster.start_head().exit_code, 0);
  // Over transport::kMaxBinaryBytes: the head's socket would drop the frame
  // unread, so the driver must refuse before sending, not time out.
  fs::path big = cluster.root() / "too_big_cluster_job";
  fs::copy_file(TROUPE_CLUSTER_JOB, big);
  {
    std::ofstream out(big, std::ios::binary | std::ios::app);
    std::string chunk(1 << 20, '\0');
    for (int i = 0; i < 256; ++i) out.write(chunk.data(), static_cast<std::streamsize>(chunk.size()));
  }
  ::chmod(big.c_str(), 0755);
  const auto started = std::chrono::steady_clock::now();
  auto result = run_process(big.string(), {"restart"},
                            {{"TROUPE_ADDRESS", cluster.address()},
                             {"TROUPE_TEMP_DIR", cluster.root().string()},
                             {"TROUPE_TOKEN_FILE", cluster.token_file().string()}},
                            120s);
  EXPECT_NE(result.exit_code, 0) << result.all();
  EXPECT_NE(result.all().find("the head takes job binaries of at most 255 MiB"), std::string::npos) << result.all();
  // Far less than the upload's 60 s answer timeout.
  EXPECT_LT(std::chrono::steady_clock::now() - started, 45s);
  fs::remove(big);
}

}  // namespace
}  // namespace troupe::testing
