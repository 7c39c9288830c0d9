#include "troupe/scheduler/gpu_spec.hpp"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace troupe::scheduler {
namespace {

constexpr std::uint64_t kGiB = std::uint64_t{1} << 30;

TEST(ParseGpuSpec, ReadsModelsCountsAndMemoryFromTheName) {
  const std::vector<GpuInfo> gpus = parse_gpu_spec("H100-80GB:2,T4-16GB:1");
  ASSERT_EQ(gpus.size(), 3u);
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(gpus[i].index, i);
    EXPECT_TRUE(gpus[i].declared);
  }
  EXPECT_EQ(gpus[0].model, "H100-80GB");
  EXPECT_EQ(gpus[1].model, "H100-80GB");
  EXPECT_EQ(gpus[2].model, "T4-16GB");
  EXPECT_EQ(gpus[0].memory_bytes, 80 * kGiB);
  EXPECT_EQ(gpus[2].memory_bytes, 16 * kGiB);
}

TEST(ParseGpuSpec, TakesMemoryFromTheTableOfKnownModelsWhenTheNameHasNone) {
  EXPECT_EQ(parse_gpu_spec("A100").front().memory_bytes, 40 * kGiB);
  EXPECT_EQ(parse_gpu_spec("A100-80GB").front().memory_bytes, 80 * kGiB);
  EXPECT_EQ(parse_gpu_spec("H100:1").front().memory_bytes, 80 * kGiB);
  EXPECT_EQ(parse_gpu_spec("V100").front().memory_bytes, 16 * kGiB);
  EXPECT_EQ(parse_gpu_spec("l4").front().memory_bytes, 24 * kGiB);
  EXPECT_EQ(parse_gpu_spec("RTX4090").front().memory_bytes, 24 * kGiB);
  EXPECT_EQ(parse_gpu_spec("Mystery-X").front().memory_bytes, 0u);
}

TEST(ParseGpuSpec, CountDefaultsToOneAndWhitespaceIsIgnored) {
  const std::vector<GpuInfo> gpus = parse_gpu_spec(" H100-80GB : 2 , T4 ");
  ASSERT_EQ(gpus.size(), 3u);
  EXPECT_EQ(gpus[0].model, "H100-80GB");
  EXPECT_EQ(gpus[2].model, "T4");
}

TEST(ParseGpuSpec, AnEmptySpecMeansNoGpus) {
  EXPECT_TRUE(parse_gpu_spec("").empty());
  EXPECT_TRUE(parse_gpu_spec("   ").empty());
}

TEST(ParseGpuSpec, RejectsMalformedItemsNamingTheBadItem) {
  struct Case {
    const char* spec;
    const char* names;  // text the message must contain
  };
  for (const Case& c : std::vector<Case>{{":2", "\":2\""},
                                         {"H100:x", "\"x\""},
                                         {"H100:-1", "\"-1\""},
                                         {"H100:0", "\"0\""},
                                         {"H100:2.5", "\"2.5\""},
                                         {"H100:", "missing count"},
                                         {"H100:1:2", "more than one ':'"},
                                         {"H100,,T4", "empty item"},
                                         {"H100,", "empty item"},
                                         {",H100", "empty item"},
                                         {"H1@0:1", "'@'"},
                                         {"T4:99999", "\"99999\""}}) {
    try {
      parse_gpu_spec(c.spec);
      ADD_FAILURE() << "no error for \"" << c.spec << "\"";
    } catch (const SpecError& e) {
      EXPECT_NE(std::string(e.what()).find(c.names), std::string::npos)
          << "spec \"" << c.spec << "\": " << e.what();
    }
  }
}

TEST(FormatGpuSpec, GroupsConsecutiveModelsAndRoundTrips) {
  const std::string spec = "H100-80GB:2,T4-16GB:1,H100-80GB:1";
  const std::vector<GpuInfo> gpus = parse_gpu_spec(spec);
  EXPECT_EQ(format_gpu_spec(gpus), spec);
  EXPECT_EQ(parse_gpu_spec(format_gpu_spec(gpus)), gpus);
  EXPECT_EQ(format_gpu_spec({}), "");
}

TEST(GpuModelMatches, MatchesTypesAsCaseInsensitiveTokens) {
  EXPECT_TRUE(gpu_model_matches("H100-80GB", "H100"));
  EXPECT_TRUE(gpu_model_matches("H100-80GB", "h100"));
  EXPECT_TRUE(gpu_model_matches("H100-80GB", "H100-80GB"));
  EXPECT_TRUE(gpu_model_matches("h100", "H100"));
  EXPECT_TRUE(gpu_model_matches("NVIDIA H100 80GB HBM3", "H100"));
  EXPECT_TRUE(gpu_model_matches("NVIDIA H100 80GB HBM3", "H100-80GB"));
  EXPECT_TRUE(gpu_model_matches("NVIDIA A100-SXM4-40GB", "A100"));
  EXPECT_TRUE(gpu_model_matches("Tesla T4", "t4"));
  EXPECT_TRUE(gpu_model_matches("T4-16GB", ""));

  EXPECT_FALSE(gpu_model_matches("A100-40GB", "A10"));
  EXPECT_FALSE(gpu_model_matches("H100-80GB", "H100-94GB"));
  EXPECT_FALSE(gpu_model_matches("H100-80GB", "100"));
  EXPECT_FALSE(gpu_model_matches("T4-16GB", "H100"));
}

TEST(NominalGpuMemory, ReadsCudaDeviceNames) {
  EXPECT_EQ(nominal_gpu_memory_bytes("NVIDIA H100 80GB HBM3"), 80 * kGiB);
  EXPECT_EQ(nominal_gpu_memory_bytes("NVIDIA A100-SXM4-80GB"), 80 * kGiB);
  EXPECT_EQ(nominal_gpu_memory_bytes("Tesla V100-SXM2-32GB"), 32 * kGiB);
  EXPECT_EQ(nominal_gpu_memory_bytes("Tesla T4"), 16 * kGiB);
  EXPECT_EQ(nominal_gpu_memory_bytes("NVIDIA L4"), 24 * kGiB);
  EXPECT_EQ(nominal_gpu_memory_bytes("NVIDIA GeForce GTX 1080"), 0u);
}

}  // namespace
}  // namespace troupe::scheduler
