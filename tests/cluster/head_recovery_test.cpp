// issue 12 (persist): the head dies (kill -9) while a driver's job runs calls
// between two actors on a worker; the calls keep flowing while it is down;
// the head restarted on the same session root recovers its state from the
// store, the worker comes back, its actor hosts are adopted (same
// incarnation, same pids), the driver carries on and its job finishes. The
// head stays down longer than the workers' fencing timeout: a head whose
// port refuses connections is down, not cut off, and fences nobody.
// TROUPE_TEST_LABELS: cluster slow
#include <signal.h>

#include <future>

#include "cluster/cluster_harness.hpp"

namespace troupe::testing {
namespace {

long read_count(const fs::path& file) {
  std::string text = read_text(file);
  return text.empty() ? 0 : std::atol(text.c_str());
}

TEST(HeadRecovery, AHeadKilledAndRestartedAdoptsTheWorkersActorsAndTheJobCarriesOn) {
  // Generous timeouts: a busy 2-core machine must not declare anyone lost.
  TestCluster cluster(/*heartbeat_ms=*/200, /*heartbeat_misses=*/25);
  auto head = cluster.start_head();
  ASSERT_EQ(head.exit_code, 0) << head.all();
  std::string worker = cluster.add_worker("", {"--resources", "{\"far\": 4}"});
  ASSERT_FALSE(worker.empty());

  const fs::path progress = cluster.root() / "progress";
  const fs::path stop = cluster.root() / "stop";
  std::map<std::string, std::string> env{{"TROUPE_ADDRESS", cluster.address()},
                                         {"TROUPE_TOKEN_FILE", cluster.token_file().string()},
                                         {"TROUPE_TEMP_DIR", cluster.root().string()}};
  auto driver = std::async(std::launch::async, [&] {
    return run_process(TROUPE_CLUSTER_JOB, {"head-loss", progress.string(), stop.string()}, env, 300s);
  });
  ASSERT_TRUE(eventually([&] { return read_count(progress) >= 20; }, 120s)) << "the job never got going";

  auto actors_before = cluster.list("actors");
  ASSERT_EQ(actors_before.size(), 2u) << actors_before.dump();

  // The head dies without a word.
  pid_t head_pid = cluster.pid_of("head");
  ASSERT_GT(head_pid, 0);
  ASSERT_EQ(::kill(head_pid, SIGKILL), 0);
  ASSERT_TRUE(eventually([&] { return ::kill(head_pid, 0) != 0; }, 10s));
  const auto killed_at = std::chrono::steady_clock::now();
  const fs::path old_session = cluster.session();

  // Calls between actors never pass through the head.
  long at_death = read_count(progress);
  EXPECT_TRUE(eventually([&] { return read_count(progress) >= at_death + 20; }, 60s))
      << "calls stopped with the head (at " << at_death << ")";

  // Down for longer than a worker's fencing timeout (under the whole
  // detection time): the worker keeps its hosts all the same.
  std::this_thread::sleep_until(killed_at + cluster.node_timeout() + 2s);
  // (The job rewrites its progress file: a read may catch it empty.)
  EXPECT_TRUE(eventually([&] { return read_count(progress) >= at_death + 20; }, 30s))
      << "the actors stopped while the head was down";

  // The head comes back on the same root: it finds the previous session's
  // state (as it finds its token) and recovers.
  auto again = cluster.start_head();
  ASSERT_EQ(again.exit_code, 0) << again.all();
  EXPECT_NE(cluster.session(), old_session);
  EXPECT_TRUE(eventually(
      [&] {
        auto node = cluster.node(worker);
        return !node.is_null() && node["state"] == "ALIVE";
      },
      60s))
      << cluster.list("nodes").dump();

  // Both actors are still the same hosts: ALIVE, incarnation 0, not killed.
  auto adopted = [&] {
    auto actors = cluster.list("actors");
    if (actors.size() != 2) return false;
    for (const auto& actor : actors) {
      if (actor["state"] != "ALIVE" || actor["incarnation"] != 0) return false;
    }
    return true;
  };
  EXPECT_TRUE(eventually(adopted, 30s)) << cluster.list("actors").dump();
  // Several heartbeats later they are still there (nothing killed them).
  std::this_thread::sleep_for(2s);
  EXPECT_TRUE(adopted()) << cluster.list("actors").dump();
  auto status = cluster.troupe({"status"});
  EXPECT_EQ(status.exit_code, 0) << status.all();

  long after_restart = read_count(progress);
  EXPECT_TRUE(eventually([&] { return read_count(progress) >= after_restart + 20; }, 60s));

  std::ofstream(stop.string()) << "stop\n";
  auto result = driver.get();
  EXPECT_EQ(result.exit_code, 0) << result.all();
  EXPECT_NE(result.out.find("JOB OK"), std::string::npos) << result.all();
  auto log = read_text(cluster.session() / "logs" / "head.log");
  EXPECT_NE(log.find("recovered"), std::string::npos) << log;
}

}  // namespace
}  // namespace troupe::testing
