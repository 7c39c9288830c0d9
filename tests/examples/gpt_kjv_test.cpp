// examples/gpt_kjv run as a user runs it, in local mode, with a tiny model
// for a few steps: it profiles the layers and writes the planner's model
// JSON, plans 4 stages of 2 tensor-parallel shards over the declared GPUs,
// places them, and its losses equal the unsplit model's trained in one
// process to 1e-4. (Cluster mode is gpt_kjv_cluster_test.)
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#define TROUPE_CLI_PATH TROUPE_BINARY_DIR "/cli/troupe"
#include "cluster/cluster_harness.hpp"

namespace {

using namespace std::chrono_literals;
using troupe::testing::RunResult;
using troupe::testing::run_process;

const std::string kExample = TROUPE_BINARY_DIR "/examples/gpt_kjv";
const std::string kBible = "/usr/bin/bible";

#define REQUIRE_EXAMPLE_AND_TEXT()                                                     \
  if (!std::filesystem::exists(kExample)) GTEST_SKIP() << kExample << " is not built"; \
  if (!std::filesystem::exists(kBible)) GTEST_SKIP() << kBible << " is missing (bible-kjv)"

bool contains(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

const std::vector<std::string> kTiny = {"--layers", "4", "--channels", "16", "--heads", "2", "--hidden", "32",
                                        "--seq-len", "16", "--batch", "8", "--micro-batches", "4",
                                        "--eval-batches", "1", "--sample", "20"};

std::vector<std::string> with(std::vector<std::string> args, const std::vector<std::string>& more) {
  args.insert(args.end(), more.begin(), more.end());
  return args;
}

TEST(GptKjvExample, FourStagesOfTwoShardsPlannedPlacedAndEqualToTheUnsplitModel) {
  REQUIRE_EXAMPLE_AND_TEXT();
  const std::string json = (std::filesystem::temp_directory_path() / "gpt_kjv_test.model.json").string();
  const RunResult r = run_process(
      kExample,
      with(kTiny, {"--stages", "4", "--tp", "2", "--steps", "4", "--eval-every", "2", "--check-against-single", "4",
                   "--model-json", json}),
      {{"TROUPE_ADDRESS", ""}, {"TROUPE_GPUS", "T4-16GB:8"}}, 180s);
  ASSERT_EQ(r.exit_code, 0) << r.all();
  EXPECT_TRUE(contains(r.out, "4 pipeline stages (1f1b schedule), tensor-parallel 2, local mode")) << r.out;
  EXPECT_TRUE(contains(r.out, "check: 4 steps against the unsplit model in one process")) << r.out;
  // The comparison ran with clipping on (the default norm 1) and the tiny
  // model's early gradients were clipped: the clipped steps equal the
  // unsplit model's clipped steps.
  EXPECT_TRUE(contains(r.out, "clip norm 1, 1f1b")) << r.out;
  const std::size_t clipped = r.out.find(" of 4 steps clipped to norm 1");
  ASSERT_NE(clipped, std::string::npos) << r.out;
  EXPECT_NE(r.out[clipped - 1], '0') << r.out;
  EXPECT_TRUE(contains(r.out, "): OK")) << r.out;
  EXPECT_TRUE(contains(r.out, "sample (prompt")) << r.out;
  EXPECT_TRUE(contains(r.out, "result: validation loss")) << r.out;
  EXPECT_TRUE(contains(r.out, "MEASURED ms")) << r.out;
  // The held-out books are 1 Peter to Revelation; the labels are gone.
  EXPECT_TRUE(contains(r.out, "verses from 1Pet held out") || contains(r.out, "books from 1Pet held out")) << r.out;
  EXPECT_FALSE(contains(r.out, "1Pet1:1")) << r.out;
  // The model JSON the planner read: 4 layers with measured work.
  std::ifstream in(json);
  ASSERT_TRUE(in.good()) << json;
  const nlohmann::json doc = nlohmann::json::parse(in);
  ASSERT_EQ(doc["layers"].size(), 4u);
  for (const auto& layer : doc["layers"]) {
    EXPECT_GT(layer["flops"].get<double>(), 0);
    EXPECT_GT(layer["tp_bytes"].get<double>(), 0);
  }
  std::filesystem::remove(json);
}

TEST(GptKjvExample, WithoutTensorParallelismItIsFourPlainStagesUnderGPipe) {
  REQUIRE_EXAMPLE_AND_TEXT();
  const RunResult r = run_process(kExample,
                                  with(kTiny, {"--tp", "1", "--schedule", "gpipe", "--steps", "3", "--eval-every", "3",
                                               "--clip-norm", "0", "--check-against-single", "3", "--model-json", ""}),
                                  {{"TROUPE_ADDRESS", ""}, {"TROUPE_GPUS", "T4-16GB:8"}}, 120s);
  ASSERT_EQ(r.exit_code, 0) << r.all();
  EXPECT_TRUE(contains(r.out, "4 pipeline stages (gpipe schedule), tensor-parallel 1, local mode")) << r.out;
  EXPECT_TRUE(contains(r.out, "clip norm 0 (off)")) << r.out;
  EXPECT_FALSE(contains(r.out, "steps clipped")) << r.out;
  EXPECT_TRUE(contains(r.out, "): OK")) << r.out;
}

TEST(GptKjvExample, RejectsBadFlagsAndAMissingText) {
  if (!std::filesystem::exists(kExample)) GTEST_SKIP() << kExample << " is not built";
  const RunResult bad = run_process(kExample, {"--schedule", "zb-h1"}, {{"TROUPE_ADDRESS", ""}}, 30s);
  EXPECT_EQ(bad.exit_code, 2) << bad.all();
  EXPECT_TRUE(contains(bad.err, "--schedule must be 1f1b or gpipe")) << bad.all();
  const RunResult clip = run_process(kExample, {"--clip-norm", "-1"}, {{"TROUPE_ADDRESS", ""}}, 30s);
  EXPECT_EQ(clip.exit_code, 2) << clip.all();
  EXPECT_TRUE(contains(clip.err, "--clip-norm wants a number >= 0")) << clip.all();
  const RunResult heads = run_process(kExample, {"--channels", "10", "--heads", "4"}, {{"TROUPE_ADDRESS", ""}}, 30s);
  EXPECT_EQ(heads.exit_code, 2) << heads.all();
  const RunResult text = run_process(kExample, {"--text", "/nonexistent/kjv.txt"}, {{"TROUPE_ADDRESS", ""}}, 30s);
  EXPECT_EQ(text.exit_code, 2) << text.all();
  EXPECT_TRUE(contains(text.err, "/nonexistent/kjv.txt: cannot open")) << text.all();
}

}  // namespace
