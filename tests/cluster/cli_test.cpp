// TROUPE_TEST_LABELS: cluster slow
// The cluster CLI against real daemons on loopback: start, status, list,
// stop, submit, job, and what each says when the input or the cluster is bad.
#include <signal.h>

#include <chrono>
#include <string>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "cluster/cluster_harness.hpp"

namespace troupe::testing {
namespace {

using ::testing::HasSubstr;

std::map<std::string, int> gpus_by_type(const nlohmann::json& node) {
  std::map<std::string, int> counts;
  for (const auto& [model, count] : node["gpus_by_type"].items()) counts[model] = count.get<int>();
  return counts;
}

TEST(ClusterCli, HeadAndThreeWorkersRegisterWithTheirDeclaredGpus) {
  TestCluster cluster;
  auto head = cluster.start_head();
  ASSERT_EQ(head.exit_code, 0) << head.all();
  EXPECT_THAT(head.out, HasSubstr("troupe start --address " + cluster.address()));
  EXPECT_THAT(head.out, HasSubstr("troupe submit"));
  EXPECT_EQ(read_text(cluster.session() / "head_address"), cluster.address() + "\n");

  std::string h100 = cluster.add_worker("H100-80GB:2");
  std::string a100 = cluster.add_worker("A100-40GB:1", {"--resources", R"({"TPU": 2})"});
  std::string t4 = cluster.add_worker("T4-16GB:1");
  ASSERT_FALSE(h100.empty());
  ASSERT_FALSE(a100.empty());
  ASSERT_FALSE(t4.empty());

  auto nodes = cluster.list("nodes");
  ASSERT_EQ(nodes.size(), 4u) << nodes.dump(2);
  for (const auto& node : nodes) EXPECT_EQ(node["state"], "ALIVE");
  EXPECT_EQ(gpus_by_type(cluster.node(h100)), (std::map<std::string, int>{{"H100-80GB", 2}}));
  EXPECT_EQ(gpus_by_type(cluster.node(a100)), (std::map<std::string, int>{{"A100-40GB", 1}}));
  EXPECT_EQ(gpus_by_type(cluster.node(t4)), (std::map<std::string, int>{{"T4-16GB", 1}}));
  EXPECT_EQ(cluster.node(h100)["gpus"][0]["memory_bytes"].get<std::uint64_t>(), 80ull << 30);
  EXPECT_TRUE(cluster.node(h100)["gpus"][1]["declared"].get<bool>());
  EXPECT_EQ(cluster.node(a100)["total"]["TPU"].get<double>(), 2.0);
  EXPECT_EQ(cluster.node(t4)["total"]["CPU"].get<double>(), 2.0);

  auto status = cluster.troupe({"status"});
  ASSERT_EQ(status.exit_code, 0) << status.all();
  EXPECT_THAT(status.out, HasSubstr("Nodes: 4 alive, 0 dead"));
  EXPECT_THAT(status.out, HasSubstr("H100-80GB x2"));
  EXPECT_THAT(status.out, HasSubstr("T4-16GB x1"));
  EXPECT_THAT(status.out, HasSubstr("CPU     0/8"));
  EXPECT_THAT(status.out, HasSubstr("GPU     0/4"));
  EXPECT_THAT(status.out, HasSubstr("TPU     0/2"));
  // Each node says how its actors move objects: Debian's UCX has tcp and
  // shared memory, and no CUDA support of its own.
  EXPECT_THAT(status.out, HasSubstr("DATA PLANE"));
  EXPECT_THAT(status.out, HasSubstr("ucx tcp"));
  EXPECT_TRUE(cluster.node(t4)["data_plane"].get<std::string>().rfind("ucx ", 0) == 0) << cluster.node(t4).dump();

  // Several workers on one machine keep separate pid and log files.
  EXPECT_TRUE(fs::exists(cluster.session() / "pids" / (TestCluster::worker_name(h100) + ".pid")));
  EXPECT_TRUE(fs::exists(cluster.session() / "logs" / (TestCluster::worker_name(t4) + ".log")));

  auto stop = cluster.troupe({"stop"});
  ASSERT_EQ(stop.exit_code, 0) << stop.all();
  EXPECT_THAT(stop.out, HasSubstr("stopped head"));
  EXPECT_THAT(stop.out, HasSubstr("stopped " + TestCluster::worker_name(t4)));
  auto after = cluster.troupe({"status"});
  EXPECT_EQ(after.exit_code, 1);
  EXPECT_THAT(after.err, HasSubstr("no running cluster found"));
}

TEST(ClusterCli, KilledWorkerIsMarkedDeadWithinTheHeartbeatTimeout) {
  TestCluster cluster;
  { auto head_started = cluster.start_head(); ASSERT_EQ(head_started.exit_code, 0) << head_started.all(); }
  std::string worker = cluster.add_worker("T4-16GB:1");
  ASSERT_FALSE(worker.empty());
  pid_t pid = cluster.pid_of(TestCluster::worker_name(worker));
  ASSERT_GT(pid, 0);
  auto killed_at = std::chrono::steady_clock::now();
  ASSERT_EQ(::kill(pid, SIGKILL), 0);
  ASSERT_TRUE(eventually([&] { return cluster.node(worker)["state"] == "DEAD"; }, 5s));
  auto took = std::chrono::steady_clock::now() - killed_at;
  // Timeout plus one check period plus the time `troupe list` takes.
  EXPECT_LT(took, cluster.node_timeout() + 1s);
  EXPECT_THAT(cluster.troupe({"status"}).out, HasSubstr("Nodes: 1 alive, 1 dead"));
}

TEST(ClusterCli, WorkersRegisterAgainWhenTheHeadComesBack) {
  TestCluster cluster;
  { auto head_started = cluster.start_head(); ASSERT_EQ(head_started.exit_code, 0) << head_started.all(); }
  std::string a = cluster.add_worker("H100-80GB:1");
  std::string b = cluster.add_worker("T4-16GB:1");
  pid_t head = cluster.pid_of("head");
  ASSERT_EQ(::kill(head, SIGKILL), 0);
  std::this_thread::sleep_for(cluster.node_timeout());  // the workers notice the head is gone
  auto restarted = cluster.start_head();
  ASSERT_EQ(restarted.exit_code, 0) << restarted.all();
  ASSERT_TRUE(eventually(
      [&] {
        auto ids = cluster.node_ids();
        return std::find(ids.begin(), ids.end(), a) != ids.end() &&
               std::find(ids.begin(), ids.end(), b) != ids.end();
      },
      10s))
      << cluster.list("nodes").dump(2);
  EXPECT_EQ(cluster.node(a)["state"], "ALIVE");
  EXPECT_EQ(gpus_by_type(cluster.node(b)), (std::map<std::string, int>{{"T4-16GB", 1}}));
}

TEST(ClusterCli, SubmitStreamsOutputAndExitsWithTheJobsCode) {
  TestCluster cluster;
  { auto head_started = cluster.start_head(); ASSERT_EQ(head_started.exit_code, 0) << head_started.all(); }
  auto ok = cluster.troupe({"submit", "--name", "greeter", "--env", "HELLO_GREETING=hi there", "--",
                            TROUPE_HELLO_JOB, "--lines", "2"});
  EXPECT_EQ(ok.exit_code, 0) << ok.all();
  EXPECT_THAT(ok.out, HasSubstr("hello job "));
  EXPECT_THAT(ok.out, HasSubstr(" at " + cluster.address()));
  EXPECT_THAT(ok.out, HasSubstr("greeting=hi there"));
  EXPECT_THAT(ok.out, HasSubstr("line 1\n"));
  EXPECT_THAT(ok.out, HasSubstr("to stderr"));
  EXPECT_THAT(ok.out, HasSubstr("bye 0"));

  auto failed = cluster.troupe({"submit", "--", TROUPE_HELLO_JOB, "--exit", "3", "--sleep-ms", "300"});
  EXPECT_EQ(failed.exit_code, 3) << failed.all();
  EXPECT_THAT(failed.out, HasSubstr("bye 3"));
  EXPECT_THAT(failed.err, HasSubstr("exited with code 3"));

  auto jobs = cluster.list("jobs");
  ASSERT_EQ(jobs.size(), 2u) << jobs.dump(2);
  EXPECT_EQ(jobs[0]["name"], "greeter");
  EXPECT_EQ(jobs[0]["state"], "SUCCEEDED");
  EXPECT_EQ(jobs[1]["state"], "FAILED");
  EXPECT_EQ(jobs[1]["exit_code"], 3);
  std::string failed_id = jobs[1]["job_id"];

  auto status = cluster.troupe({"job", "status", failed_id.substr(0, 8)});
  EXPECT_EQ(status.exit_code, 0) << status.all();
  EXPECT_THAT(status.out, HasSubstr("FAILED, exit code 3"));
  auto logs = cluster.troupe({"job", "logs", failed_id});
  EXPECT_EQ(logs.exit_code, 0) << logs.all();
  EXPECT_THAT(logs.out, HasSubstr("hello job " + failed_id));
  EXPECT_THAT(logs.out, HasSubstr("bye 3"));
  EXPECT_TRUE(fs::exists(cluster.session() / "jobs" / failed_id / "output.log"));
  EXPECT_THAT(cluster.troupe({"job", "list"}).out, HasSubstr(failed_id + "  FAILED  exit 3"));
}

TEST(ClusterCli, NoWaitSubmitThenStopTheJob) {
  TestCluster cluster;
  { auto head_started = cluster.start_head(); ASSERT_EQ(head_started.exit_code, 0) << head_started.all(); }
  auto submitted = cluster.troupe({"submit", "--no-wait", "--", TROUPE_HELLO_JOB, "--sleep-ms", "30000"});
  ASSERT_EQ(submitted.exit_code, 0) << submitted.all();
  std::string id = submitted.out.substr(0, 32);
  ASSERT_TRUE(eventually([&] { return cluster.troupe({"job", "logs", id}).out.find("line 2") != std::string::npos; }, 5s));
  auto stop = cluster.troupe({"job", "stop", id});
  EXPECT_EQ(stop.exit_code, 0) << stop.all();
  ASSERT_TRUE(eventually([&] { return cluster.list("jobs")[0]["state"] == "STOPPED"; }, 8s))
      << cluster.list("jobs").dump(2);
}

TEST(ClusterCli, BadInputsAndMissingClustersGiveClearErrors) {
  TestCluster cluster;
  auto none = cluster.troupe({"status"});
  EXPECT_EQ(none.exit_code, 1);
  EXPECT_THAT(none.err, HasSubstr("no running cluster found; start one with `troupe start --head`"));
  EXPECT_EQ(cluster.troupe({"submit", "--", TROUPE_HELLO_JOB}).exit_code, 1);

  auto bad_gpus = cluster.troupe({"start", "--head", "--port", std::to_string(cluster.port()), "--gpus", "H100:x"});
  EXPECT_EQ(bad_gpus.exit_code, 2) << bad_gpus.all();
  EXPECT_THAT(bad_gpus.err, HasSubstr("H100:x"));
  auto bad_json = cluster.troupe({"start", "--head", "--port", std::to_string(cluster.port()), "--resources", "{TPU"});
  EXPECT_EQ(bad_json.exit_code, 2) << bad_json.all();
  EXPECT_THAT(bad_json.err, HasSubstr("--resources is not valid JSON"));
  auto both = cluster.troupe({"start", "--head", "--address", "127.0.0.1:1"});
  EXPECT_EQ(both.exit_code, 2);
  EXPECT_THAT(both.err, HasSubstr("exactly one of --head"));

  // Nothing listens on this port: a worker and a status both fail, fast.
  int dead_port = free_port();
  auto start = std::chrono::steady_clock::now();
  auto unreachable = cluster.troupe({"status", "--address", "127.0.0.1:" + std::to_string(dead_port), "--timeout", "1"});
  EXPECT_EQ(unreachable.exit_code, 1);
  EXPECT_THAT(unreachable.err, HasSubstr("no answer from the head"));
  EXPECT_LT(std::chrono::steady_clock::now() - start, 5s);
  auto worker = cluster.troupe({"start", "--address", "127.0.0.1:" + std::to_string(dead_port), "--wait", "1"});
  EXPECT_EQ(worker.exit_code, 1);
  EXPECT_THAT(worker.err, HasSubstr("no answer from the head"));

  { auto head_started = cluster.start_head(); ASSERT_EQ(head_started.exit_code, 0) << head_started.all(); }
  auto second = cluster.start_head();
  EXPECT_EQ(second.exit_code, 1);
  EXPECT_THAT(second.err, HasSubstr("already in use"));
  auto unknown = cluster.troupe({"job", "status", "0123456789abcdef0123456789abcdef"});
  EXPECT_EQ(unknown.exit_code, 1);
  EXPECT_THAT(unknown.err, HasSubstr("no job 0123456789abcdef0123456789abcdef"));
  auto missing = cluster.troupe({"submit", "--", "/no/such/binary"});
  EXPECT_EQ(missing.exit_code, 2);
  EXPECT_THAT(missing.err, HasSubstr("no such file"));
  auto help = cluster.troupe({"start", "--help"});
  EXPECT_EQ(help.exit_code, 0);
  EXPECT_THAT(help.out, HasSubstr("--heartbeat-ms"));
}

}  // namespace
}  // namespace troupe::testing
