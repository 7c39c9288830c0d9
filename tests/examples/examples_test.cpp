// The examples and the `troupe` CLI, run as the built binaries a user runs:
// exit status and the lines people (and the README) rely on.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <initializer_list>
#include <string>
#include <utility>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

extern char** environ;

using namespace std::chrono_literals;

namespace {

const std::string kPipelineLocal = TROUPE_BINARY_DIR "/examples/pipeline_local";
const std::string kCustomActor = TROUPE_BINARY_DIR "/examples/custom_actor";
const std::string kPipelineCustomStage = TROUPE_BINARY_DIR "/examples/pipeline_custom_stage";
const std::string kPipelineServing = TROUPE_BINARY_DIR "/examples/pipeline_serving";
const std::string kTroupe = TROUPE_BINARY_DIR "/cli/troupe";

struct ProcessResult {
  int exit_code = -1;  // -1 when killed by a signal or the timeout
  bool timed_out = false;
  std::string out;
  std::string err;
};

bool executable(const std::string& path) { return ::access(path.c_str(), X_OK) == 0; }

// Runs `argv` with extra "NAME=value" environment entries, capturing stdout and
// stderr; kills it after `timeout`.
ProcessResult run(std::vector<std::string> argv, std::chrono::milliseconds timeout = 60s,
        const std::vector<std::string>& extra_env = {}) {
  ProcessResult result;
  int out_pipe[2], err_pipe[2];
  if (::pipe2(out_pipe, O_CLOEXEC) != 0 || ::pipe2(err_pipe, O_CLOEXEC) != 0) {
    ADD_FAILURE() << "pipe: " << std::strerror(errno);
    return result;
  }
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, out_pipe[1], STDOUT_FILENO);
  posix_spawn_file_actions_adddup2(&actions, err_pipe[1], STDERR_FILENO);

  std::vector<char*> args;
  for (auto& a : argv) args.push_back(a.data());
  args.push_back(nullptr);
  std::vector<std::string> env_strings;
  auto overridden = [&](const std::string& entry) {
    for (const auto& e : extra_env) {
      if (entry.compare(0, e.find('=') + 1, e, 0, e.find('=') + 1) == 0) return true;
    }
    return false;
  };
  for (char** e = environ; *e != nullptr; ++e) {
    if (!overridden(*e)) env_strings.emplace_back(*e);
  }
  for (const auto& e : extra_env) env_strings.push_back(e);
  std::vector<char*> env;
  for (auto& e : env_strings) env.push_back(e.data());
  env.push_back(nullptr);

  pid_t pid = 0;
  const int spawned = ::posix_spawn(&pid, args[0], &actions, nullptr, args.data(), env.data());
  posix_spawn_file_actions_destroy(&actions);
  ::close(out_pipe[1]);
  ::close(err_pipe[1]);
  if (spawned != 0) {
    ::close(out_pipe[0]);
    ::close(err_pipe[0]);
    ADD_FAILURE() << "posix_spawn " << argv[0] << ": " << std::strerror(spawned);
    return result;
  }

  const auto deadline = std::chrono::steady_clock::now() + timeout;
  pollfd fds[2] = {{out_pipe[0], POLLIN, 0}, {err_pipe[0], POLLIN, 0}};
  std::string* sinks[2] = {&result.out, &result.err};
  int open_fds = 2;
  while (open_fds > 0) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    if (left <= 0ms) {
      result.timed_out = true;
      ::kill(pid, SIGKILL);
      break;
    }
    if (::poll(fds, 2, static_cast<int>(left.count())) < 0 && errno != EINTR) break;
    for (int i = 0; i < 2; ++i) {
      if (fds[i].fd < 0 || (fds[i].revents & (POLLIN | POLLHUP | POLLERR)) == 0) continue;
      char buffer[4096];
      const ssize_t n = ::read(fds[i].fd, buffer, sizeof buffer);
      if (n > 0) {
        sinks[i]->append(buffer, static_cast<std::size_t>(n));
      } else if (n == 0 || errno != EINTR) {
        ::close(fds[i].fd);
        fds[i].fd = -1;
        --open_fds;
      }
    }
  }
  for (auto& fd : fds) {
    if (fd.fd >= 0) ::close(fd.fd);
  }
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {}
  if (WIFEXITED(status)) result.exit_code = WEXITSTATUS(status);
  return result;
}

bool contains(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

// Expects every one of `parts` in `text` (one failure per missing part).
void expect_all_in(const std::string& text, std::initializer_list<const char*> parts) {
  for (const char* part : parts) EXPECT_TRUE(contains(text, part)) << "missing \"" << part << "\" in:\n" << text;
}

::testing::AssertionResult ExitedWith(const ProcessResult& r, int code) {
  if (!r.timed_out && r.exit_code == code) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << (r.timed_out ? "timed out" : "exit code " + std::to_string(r.exit_code))
                                       << ", wanted " << code << "\n--- stdout\n"
                                       << r.out << "--- stderr\n"
                                       << r.err;
}

#define REQUIRE_BINARY(path) \
  if (!executable(path)) GTEST_SKIP() << path << " is not built (TROUPE_BUILD_EXAMPLES off?)"

// ---- examples/pipeline_local ---------------------------------------------------

TEST(PipelineLocalExample, SmallPipelineMatchesTheSingleThreadModel) {
  REQUIRE_BINARY(kPipelineLocal);
  ProcessResult r = run({kPipelineLocal, "--stages", "3", "--microbatches", "4", "--batch", "32", "--hidden", "64",
               "--steps", "3"});
  ASSERT_TRUE(ExitedWith(r, 0));
  expect_all_in(r.out, {"pipeline_local: 3 stages x Linear(64 -> 64)",
                        "batch 32 = 4 micro-batches of <= 8 rows, 3 steps",
                        "median step",
                        "result: OK, all 3 steps match"});
  EXPECT_FALSE(contains(r.out, "MISMATCH")) << r.out;
}

TEST(PipelineLocalExample, UnevenMicroBatchesAndOneStageStillMatch) {
  REQUIRE_BINARY(kPipelineLocal);
  // 30 rows in chunks of 8: 8, 8, 8, 6.
  ProcessResult r = run({kPipelineLocal, "--stages=1", "--microbatches=4", "--batch=30", "--hidden=16", "--steps=2"});
  ASSERT_TRUE(ExitedWith(r, 0));
  EXPECT_TRUE(contains(r.out, "batch 30 = 4 micro-batches of <= 8 rows")) << r.out;
  EXPECT_TRUE(contains(r.out, "result: OK")) << r.out;

  // More micro-batches than rows: as many as there are rows.
  r = run({kPipelineLocal, "--stages=2", "--microbatches=16", "--batch=5", "--hidden=8", "--steps=1"});
  ASSERT_TRUE(ExitedWith(r, 0));
  EXPECT_TRUE(contains(r.out, "batch 5 = 5 micro-batches of <= 1 rows")) << r.out;
  EXPECT_TRUE(contains(r.out, "result: OK")) << r.out;
}

TEST(PipelineLocalExample, AcceptsTroupeFlagsBesideItsOwn) {
  REQUIRE_BINARY(kPipelineLocal);
  ProcessResult r = run({kPipelineLocal, "--troupe-threads=3", "--steps", "1", "--hidden", "32", "--batch", "16",
               "--troupe-log-level=error"});
  ASSERT_TRUE(ExitedWith(r, 0));
  EXPECT_TRUE(contains(r.out, "4 stages")) << r.out;
  EXPECT_TRUE(contains(r.out, "result: OK")) << r.out;
}

TEST(PipelineLocalExample, BadFlagsExitWithStatusTwoAndUsage) {
  REQUIRE_BINARY(kPipelineLocal);
  ProcessResult r = run({kPipelineLocal, "--stages", "zero"});
  EXPECT_TRUE(ExitedWith(r, 2));
  EXPECT_TRUE(contains(r.err, "--stages wants a whole number")) << r.err;
  r = run({kPipelineLocal, "--frobnicate"});
  EXPECT_TRUE(ExitedWith(r, 2));
  EXPECT_TRUE(contains(r.err, "usage: pipeline_local")) << r.err;
  r = run({kPipelineLocal, "--troupe-threads=many"});
  EXPECT_TRUE(ExitedWith(r, 2));
  r = run({kPipelineLocal, "--help"});
  EXPECT_TRUE(ExitedWith(r, 0));
  EXPECT_TRUE(contains(r.out, "--microbatches")) << r.out;
}

// ---- examples/pipeline_serving ---------------------------------------------------

// Local mode with the example's default GPUs (TROUPE_GPUS cleared).
const std::vector<std::string> kNoDeclaredGpus = {"TROUPE_GPUS=", "TROUPE_ADDRESS="};

TEST(PipelineServingExample, PlansOverTheDeclaredGpusPlacesStagesAsPlannedAndServesMatchingRequests) {
  REQUIRE_BINARY(kPipelineServing);
  ProcessResult r = run({kPipelineServing, "--requests", "12", "--inflight", "4", "--batch", "8", "--check", "3"},
                        120s, kNoDeclaredGpus);
  ASSERT_TRUE(ExitedWith(r, 0));
  expect_all_in(r.out, {"model mlp12-serving, 12 layers",
                        "cluster: local node, 4 GPUs on 1 node",
                        "STAGE  NODE",
                        "H100-80GB",
                        "the plan is",
                        "placement: every stage is on its planned node and GPU type",
                        "serving 12 requests of 8 rows, up to 4 in flight",
                        "latency p50",
                        "requests/s",
                        "stage times per request, measured beside the plan's",
                        "STAGE  LAYERS   GPU                   PREDICTED ms  MEASURED ms     RATIO",
                        "result: OK, 3 of 3 checked requests match"});
  EXPECT_FALSE(contains(r.out, "MISPLACED")) << r.out;
}

TEST(PipelineServingExample, PlansOverAClusterFileAndPlacesByGpuType) {
  REQUIRE_BINARY(kPipelineServing);
  const std::string file = TROUPE_SOURCE_DIR "/tests/scheduler/data/planner/clusters/pcie-workstations-3node.json";
  ProcessResult r = run({kPipelineServing, "--cluster", file, "--requests", "6", "--batch", "4", "--check", "2"},
                        120s, kNoDeclaredGpus);
  ASSERT_TRUE(ExitedWith(r, 0));
  expect_all_in(r.out, {"10 GPUs on 3 nodes",
                        "placement: every stage is on its planned GPU type",
                        "result: OK"});
}

TEST(PipelineServingExample, BadFlagsAndInputsExitWithStatusTwo) {
  REQUIRE_BINARY(kPipelineServing);
  ProcessResult r = run({kPipelineServing, "--requests", "none"});
  EXPECT_TRUE(ExitedWith(r, 2));
  EXPECT_TRUE(contains(r.err, "--requests wants a whole number")) << r.err;
  r = run({kPipelineServing, "--frobnicate", "1"});
  EXPECT_TRUE(ExitedWith(r, 2));
  EXPECT_TRUE(contains(r.err, "usage: pipeline_serving")) << r.err;
  r = run({kPipelineServing, "--model", "/nonexistent/model.json"}, 60s, kNoDeclaredGpus);
  EXPECT_TRUE(ExitedWith(r, 2));
  EXPECT_TRUE(contains(r.err, "cannot open")) << r.err;
  r = run({kPipelineServing, "--help"});
  EXPECT_TRUE(ExitedWith(r, 0));
  EXPECT_TRUE(contains(r.out, "--inflight")) << r.out;
}

// ---- examples/custom_actor -----------------------------------------------------

TEST(CustomActorExample, ShowsNamedLookupErrorsTimeoutsAndChaining) {
  REQUIRE_BINARY(kCustomActor);
  ProcessResult r = run({kCustomActor});
  ASSERT_TRUE(ExitedWith(r, 0));
  expect_all_in(r.out, {"kv holds 3 keys",
                        "apple copy = apple pie",
                        "TaskError (std::out_of_range)",
                        "no key 'durian'",
                        "TimeoutError:",
                        "banana = banana pie"});
}

// ---- examples/pipeline_custom_stage -------------------------------------------

TEST(PipelineCustomStageExample, TheUsersStagesMatchTheUnpipelinedLossesUnderEachSchedule) {
  REQUIRE_BINARY(kPipelineCustomStage);
  ProcessResult r = run({kPipelineCustomStage, "--steps", "3"});
  ASSERT_TRUE(ExitedWith(r, 0));
  expect_all_in(r.out, {"unpipelined", "1f1b", "zb-h1", "interleaved-1f1b", "1,2,1,1", "(match)", "(bit-identical)"});
  ProcessResult bad = run({kPipelineCustomStage, "--replicas", "1,0,1,1"});
  EXPECT_TRUE(ExitedWith(bad, 2));
  EXPECT_TRUE(contains(bad.err, "--replicas wants 4 counts")) << bad.err;
}

// ---- the troupe CLI --------------------------------------------------------------

TEST(TroupeCli, HelpListsTheSubcommands) {
  REQUIRE_BINARY(kTroupe);
  ProcessResult r = run({kTroupe, "--help"});
  ASSERT_TRUE(ExitedWith(r, 0));
  expect_all_in(r.out, {"Usage: troupe",
                        "info",
                        "gpus"});
}

TEST(TroupeCli, EverySubcommandHasHelp) {
  REQUIRE_BINARY(kTroupe);
  for (const char* command : {"info", "gpus"}) {
    ProcessResult r = run({kTroupe, command, "--help"});
    EXPECT_TRUE(ExitedWith(r, 0)) << command;
    EXPECT_TRUE(contains(r.out, std::string("Usage: troupe ") + command)) << r.out;
  }
}

TEST(TroupeCli, VersionPrintsTheVersion) {
  REQUIRE_BINARY(kTroupe);
  ProcessResult r = run({kTroupe, "--version"});
  ASSERT_TRUE(ExitedWith(r, 0));
  EXPECT_TRUE(r.out.starts_with("troupe ")) << r.out;
}

TEST(TroupeCli, UnknownSubcommandGivesUsageAndExitsTwo) {
  REQUIRE_BINARY(kTroupe);
  ProcessResult r = run({kTroupe, "frobnicate"});
  EXPECT_TRUE(ExitedWith(r, 2));
  EXPECT_TRUE(contains(r.err, "Usage: troupe")) << r.err;
  EXPECT_TRUE(contains(r.err, "No such command 'frobnicate'")) << r.err;
  r = run({kTroupe, "info", "--no-such-flag"});
  EXPECT_TRUE(ExitedWith(r, 2));
  EXPECT_TRUE(contains(r.err, "Usage: troupe info")) << r.err;
}

TEST(TroupeCli, InfoJsonParsesAndHasTheKeys) {
  REQUIRE_BINARY(kTroupe);
  ProcessResult r = run({kTroupe, "info", "--json"});
  ASSERT_TRUE(ExitedWith(r, 0));
  nlohmann::json doc;
  ASSERT_NO_THROW(doc = nlohmann::json::parse(r.out)) << r.out;
  for (const char* key : {"version", "mode", "resources", "gpus", "gpu_source", "cuda", "ucx"}) {
    EXPECT_TRUE(doc.contains(key)) << key << " missing in " << r.out;
  }
  EXPECT_GE(doc["resources"]["CPU"].get<double>(), 1.0);
  EXPECT_GT(doc["resources"]["memory"].get<double>(), 0.0);
  EXPECT_EQ(doc["resources"]["GPU"].get<double>(), static_cast<double>(doc["gpus"].size()));
  EXPECT_TRUE(doc["ucx"]["installed"].get<bool>());
  EXPECT_FALSE(doc["ucx"]["version"].get<std::string>().empty());
  EXPECT_TRUE(doc["ucx"]["transports"].is_array());
  if (doc["gpus"].empty()) {
    EXPECT_FALSE(doc["cuda"]["unavailable_reason"].get<std::string>().empty()) << r.out;
  }
}

TEST(TroupeCli, InfoSeesGpusDeclaredInTroupeGpus) {
  REQUIRE_BINARY(kTroupe);
  ProcessResult r = run({kTroupe, "info", "--json"}, 60s, {"TROUPE_GPUS=H100-80GB:2,T4-16GB:1"});
  ASSERT_TRUE(ExitedWith(r, 0));
  auto doc = nlohmann::json::parse(r.out);
  EXPECT_EQ(doc["gpu_source"], "declared");
  EXPECT_EQ(doc["resources"]["GPU"].get<double>(), 3.0);
  ASSERT_EQ(doc["gpus"].size(), 3u);
  EXPECT_EQ(doc["gpus"][2]["model"], "T4-16GB");

  r = run({kTroupe, "info"}, 60s, {"TROUPE_GPUS=H100-80GB:2"});
  ASSERT_TRUE(ExitedWith(r, 0));
  expect_all_in(r.out, {"declared in TROUPE_GPUS",
                        "H100-80GB",
                        "UCX "});
}

TEST(TroupeCli, GpusParsePrintsEachGpuOfAValidSpec) {
  REQUIRE_BINARY(kTroupe);
  ProcessResult r = run({kTroupe, "gpus", "--parse", "H100-80GB:2, T4-16GB"});
  ASSERT_TRUE(ExitedWith(r, 0));
  expect_all_in(r.out, {"3 GPUs",
                        "80GiB",
                        "normalized: H100-80GB:2,T4-16GB:1"});

  r = run({kTroupe, "gpus", "--parse", "A100:4", "--json"});
  ASSERT_TRUE(ExitedWith(r, 0));
  auto doc = nlohmann::json::parse(r.out);
  EXPECT_EQ(doc["count"], 4);
  EXPECT_EQ(doc["normalized"], "A100:4");
}

TEST(TroupeCli, GpusParseOfABadSpecExitsTwoNamingTheBadItem) {
  REQUIRE_BINARY(kTroupe);
  for (const char* spec : {"H100:x", "H100,,T4", ":2", "H100:0"}) {
    ProcessResult r = run({kTroupe, "gpus", "--parse", spec});
    EXPECT_TRUE(ExitedWith(r, 2)) << spec;
    EXPECT_TRUE(r.out.empty()) << r.out;
    EXPECT_TRUE(contains(r.err, "Error: bad GPU spec")) << r.err;
    EXPECT_TRUE(contains(r.err, "Usage: troupe gpus")) << r.err;
  }
  ProcessResult r = run({kTroupe, "gpus", "--parse", "H100:x"});
  EXPECT_TRUE(contains(r.err, "\"H100:x\"")) << r.err;
}

TEST(TroupeCli, GpusListsDeclaredGpusAsASpec) {
  REQUIRE_BINARY(kTroupe);
  ProcessResult r = run({kTroupe, "gpus"}, 60s, {"TROUPE_GPUS=T4-16GB:2"});
  ASSERT_TRUE(ExitedWith(r, 0));
  EXPECT_TRUE(contains(r.out, "2 GPUs declared in TROUPE_GPUS")) << r.out;
  EXPECT_TRUE(contains(r.out, "as a spec: T4-16GB:2")) << r.out;
  r = run({kTroupe, "gpus"}, 60s, {"TROUPE_GPUS=T4:zero"});
  EXPECT_TRUE(ExitedWith(r, 2));
  EXPECT_TRUE(contains(r.err, "TROUPE_GPUS")) << r.err;
}

}  // namespace
