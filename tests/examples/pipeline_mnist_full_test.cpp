// examples/pipeline_mnist with its default settings (the whole training set,
// 4 stages, 1F1B, Adam) reaches the accuracy the README promises, in local
// mode. About a minute or two on 2 cores.
// TROUPE_TEST_LABELS: slow
#include <filesystem>
#include <regex>
#include <string>

#include <gtest/gtest.h>

#define TROUPE_CLI_PATH TROUPE_BINARY_DIR "/cli/troupe"
#include "cluster/cluster_harness.hpp"

namespace {

using namespace std::chrono_literals;

const std::string kExample = TROUPE_BINARY_DIR "/examples/pipeline_mnist";
const std::string kData = "/usr/share/datasets/fashion-mnist";

TEST(PipelineMnistTraining, DefaultSettingsReachEightyEightPercentTestAccuracy) {
  if (!std::filesystem::exists(kExample)) GTEST_SKIP() << kExample << " is not built";
  if (!std::filesystem::exists(kData)) GTEST_SKIP() << kData << " is missing (dataset-fashion-mnist)";
  const auto r = troupe::testing::run_process(kExample, {"--log-every", "0"}, {{"TROUPE_ADDRESS", ""}}, 280s);
  ASSERT_EQ(r.exit_code, 0) << r.all();
  std::smatch match;
  ASSERT_TRUE(std::regex_search(r.out, match, std::regex("result: test accuracy ([0-9.]+)% after 10 epochs"))) << r.out;
  EXPECT_GE(std::stod(match[1]), 88.0) << r.out;
}

}  // namespace
