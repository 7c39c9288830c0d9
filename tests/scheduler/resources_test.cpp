#include "troupe/scheduler/resources.hpp"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <vector>

#include "scheduler/test_cluster.hpp"

namespace troupe::scheduler {
namespace {

using testing::kGiB;
using testing::make_node;

TEST(ResourceSet, AbsentNamesReadAsZero) {
  ResourceSet set{{"CPU", 4}};
  EXPECT_EQ(set.get("CPU"), 4);
  EXPECT_EQ(set.get("GPU"), 0);
  EXPECT_FALSE(set.contains("GPU"));
  EXPECT_EQ(set, (ResourceSet{{"CPU", 4}, {"GPU", 0}}));
}

TEST(ResourceSet, RejectsNegativeNonFiniteAndUnnamedQuantities) {
  ResourceSet set;
  EXPECT_THROW(set.set("CPU", -1), SpecError);
  EXPECT_THROW(set.set("CPU", std::numeric_limits<double>::quiet_NaN()), SpecError);
  EXPECT_THROW(set.set("CPU", std::numeric_limits<double>::infinity()), SpecError);
  EXPECT_THROW(set.set("", 1), SpecError);
  try {
    set.set("widgets", -2);
    FAIL() << "expected SpecError";
  } catch (const SpecError& e) {
    EXPECT_NE(std::string(e.what()).find("widgets"), std::string::npos) << e.what();
  }
}

TEST(ResourceSet, FitsWithEpsilonSlackForFractions) {
  ResourceSet parts{{"GPU", 0.1}};
  parts.add(ResourceSet{{"GPU", 0.2}});
  EXPECT_TRUE(parts.fits_in(ResourceSet{{"GPU", 0.3}}));
  EXPECT_EQ(parts, (ResourceSet{{"GPU", 0.3}}));
  EXPECT_FALSE((ResourceSet{{"GPU", 0.31}}).fits_in(ResourceSet{{"GPU", 0.3}}));
  EXPECT_FALSE((ResourceSet{{"custom", 1}}).fits_in(ResourceSet{{"CPU", 8}}));
  EXPECT_TRUE((ResourceSet{{"custom", 0}}).fits_in(ResourceSet{}));
}

TEST(ResourceSet, AddAndSubtractRoundTrip) {
  ResourceSet total{{"CPU", 8}, {"GPU", 1}, {"memory", 16 * kGiB}};
  ResourceSet part{{"CPU", 2.5}, {"GPU", 0.7}, {"memory", 3 * kGiB}};
  ResourceSet left = total - part;
  EXPECT_DOUBLE_EQ(left.get("CPU"), 5.5);
  EXPECT_NEAR(left.get("GPU"), 0.3, kEpsilon);
  EXPECT_EQ(left + part, total);
}

TEST(ResourceSet, SubtractingTooMuchThrowsAndLeavesTheSetUnchanged) {
  ResourceSet set{{"CPU", 2}, {"GPU", 1}};
  try {
    set.subtract(ResourceSet{{"CPU", 1}, {"GPU", 2}});
    FAIL() << "expected AllocationError";
  } catch (const AllocationError& e) {
    EXPECT_NE(std::string(e.what()).find("GPU"), std::string::npos) << e.what();
  }
  EXPECT_EQ(set, (ResourceSet{{"CPU", 2}, {"GPU", 1}}));
}

TEST(ResourceSet, RepeatedFractionsDoNotDrift) {
  ResourceSet set{{"GPU", 1}};
  for (int i = 0; i < 10; ++i) set.subtract(ResourceSet{{"GPU", 0.1}});
  EXPECT_EQ(set.get("GPU"), 0.0);
  for (int i = 0; i < 10; ++i) set.add(ResourceSet{{"GPU", 0.1}});
  EXPECT_EQ(set.get("GPU"), 1.0);
}

TEST(ResourceSet, PrintsForPeopleWithMemoryInBinaryUnits) {
  EXPECT_EQ((ResourceSet{{"CPU", 4}, {"GPU", 0.5}, {"memory", 16 * kGiB}}).to_string(),
            "CPU=4, GPU=0.5, memory=16GiB");
  EXPECT_EQ(ResourceSet{}.to_string(), "{}");
  EXPECT_EQ(format_bytes(512.0 * 1024 * 1024), "512MiB");
  EXPECT_EQ(format_bytes(1.5 * kGiB), "1.50GiB");
  EXPECT_EQ(format_bytes(123), "123B");
}

TEST(ResourceSet, JsonRoundTripsAndRejectsBadInput) {
  ResourceSet set{{"CPU", 4}, {"GPU", 0.25}, {"memory", 8 * kGiB}, {"ssd", 1}};
  nlohmann::json j = set;
  EXPECT_EQ(j["GPU"], 0.25);
  EXPECT_EQ(j.get<ResourceSet>(), set);
  EXPECT_THROW(nlohmann::json::parse(R"({"CPU": "four"})").get<ResourceSet>(), SpecError);
  EXPECT_THROW(nlohmann::json::parse(R"({"CPU": -1})").get<ResourceSet>(), SpecError);
  EXPECT_THROW(nlohmann::json::parse(R"([1, 2])").get<ResourceSet>(), SpecError);
}

TEST(NodeInfo, JsonRoundTripsWithGpus) {
  NodeInfo info;
  info.node_id = "n1";
  info.address = "tcp://10.0.0.1:7000";
  info.total = ResourceSet{{"CPU", 16}, {"GPU", 1}};
  GpuInfo gpu;
  gpu.index = 3;
  gpu.model = "NVIDIA H100 80GB HBM3";
  gpu.memory_bytes = 80 * testing::kGiBBytes;
  gpu.sm_count = 132;
  gpu.cc_major = 9;
  gpu.peers = {0, 1};
  info.gpus = {gpu};
  nlohmann::json j = info;
  EXPECT_EQ(j.get<NodeInfo>(), info);
  EXPECT_THROW(nlohmann::json::parse(R"({"address": "x"})").get<NodeInfo>(), SpecError);
  EXPECT_THROW(nlohmann::json::parse(R"({"node_id": "x", "gpus": [{"index": "zero"}]})").get<NodeInfo>(),
               SpecError);
}

TEST(NodeState, FillsTheGpuTotalFromTheGpuList) {
  NodeState node = make_node("a", 8, 64, "H100-80GB:2");
  EXPECT_EQ(node.total().get("GPU"), 2);
  EXPECT_EQ(node.available(), node.total());
  EXPECT_TRUE(node.idle());
}

TEST(NodeState, RejectsAGpuTotalThatDisagreesWithTheGpuList) {
  NodeInfo info;
  info.node_id = "a";
  info.total = ResourceSet{{"GPU", 4}};
  info.gpus = parse_gpu_spec("T4:2");
  EXPECT_THROW(NodeState{info}, SpecError);
}

TEST(NodeState, RejectsDuplicateGpuIndexes) {
  NodeInfo info;
  info.node_id = "a";
  info.gpus = parse_gpu_spec("T4:2");
  info.gpus[1].index = 0;
  EXPECT_THROW(NodeState{info}, SpecError);
}

TEST(NodeState, WholeGpuAllocationRoundTrips) {
  NodeState node = make_node("a", 8, 64, "H100-80GB:2");
  const ResourceSet amounts{{"CPU", 2}, {"GPU", 1}};
  const std::vector<int> gpus{1};
  node.allocate(amounts, gpus);
  EXPECT_EQ(node.available().get("CPU"), 6);
  EXPECT_EQ(node.available().get("GPU"), 1);
  EXPECT_EQ(node.gpu_allocated(1), 1.0);
  EXPECT_EQ(node.gpu_allocated(0), 0.0);
  EXPECT_FALSE(node.idle());
  node.release(amounts, gpus);
  EXPECT_TRUE(node.idle());
  EXPECT_EQ(node.gpu_allocated(1), 0.0);
}

TEST(NodeState, FractionalSharesFillAGpuExactly) {
  NodeState node = make_node("a", 8, 64, "T4:1");
  for (double share : {0.1, 0.2, 0.7}) {
    node.allocate(ResourceSet{{"GPU", share}}, std::vector<int>{0});
  }
  EXPECT_EQ(node.gpu_allocated(0), 1.0);
  EXPECT_EQ(node.available().get("GPU"), 0.0);
  EXPECT_FALSE(node.can_allocate(ResourceSet{{"GPU", 0.01}}, std::vector<int>{0}));
  for (double share : {0.7, 0.1, 0.2}) {
    node.release(ResourceSet{{"GPU", share}}, std::vector<int>{0});
  }
  EXPECT_TRUE(node.idle());
}

TEST(NodeState, AWholeGpuRequestCannotTakeASharedGpu) {
  NodeState node = make_node("a", 8, 64, "T4:1");
  node.allocate(ResourceSet{{"GPU", 0.25}}, std::vector<int>{0});
  std::string why;
  EXPECT_FALSE(node.can_allocate(ResourceSet{{"GPU", 1}}, std::vector<int>{0}, &why));
  EXPECT_NE(why.find("GPU 0"), std::string::npos) << why;
  EXPECT_THROW(node.allocate(ResourceSet{{"GPU", 1}}, std::vector<int>{0}), AllocationError);
}

TEST(NodeState, GpuIndexesMustAgreeWithTheGpuAmount) {
  NodeState node = make_node("a", 8, 64, "T4:2");
  EXPECT_THROW(node.allocate(ResourceSet{{"GPU", 2}}, std::vector<int>{0}), AllocationError);
  EXPECT_THROW(node.allocate(ResourceSet{{"GPU", 2}}, std::vector<int>{0, 0}), AllocationError);
  EXPECT_THROW(node.allocate(ResourceSet{{"GPU", 0.5}}, std::vector<int>{0, 1}), AllocationError);
  EXPECT_THROW(node.allocate(ResourceSet{{"CPU", 1}}, std::vector<int>{0}), AllocationError);
  EXPECT_THROW(node.allocate(ResourceSet{{"GPU", 1}}, std::vector<int>{7}), AllocationError);
  EXPECT_THROW(node.allocate(ResourceSet{{"GPU", 1.5}}, std::vector<int>{0, 1}), AllocationError);
  EXPECT_TRUE(node.idle());
}

TEST(NodeState, AllocatingMoreThanIsFreeThrowsAndChangesNothing) {
  NodeState node = make_node("a", 8, 64, "");
  node.allocate(ResourceSet{{"CPU", 6}}, {});
  try {
    node.allocate(ResourceSet{{"CPU", 4}, {"memory", kGiB}}, {});
    FAIL() << "expected AllocationError";
  } catch (const AllocationError& e) {
    EXPECT_NE(std::string(e.what()).find("CPU=4 requested, CPU=2 free"), std::string::npos) << e.what();
  }
  EXPECT_EQ(node.available().get("CPU"), 2);
  EXPECT_EQ(node.available().get("memory"), 64 * kGiB);
}

TEST(NodeState, ReleasingWhatWasNotAllocatedThrows) {
  NodeState node = make_node("a", 8, 64, "T4:1");
  EXPECT_THROW(node.release(ResourceSet{{"CPU", 1}}, {}), AllocationError);
  EXPECT_THROW(node.release(ResourceSet{{"GPU", 0.5}}, std::vector<int>{0}), AllocationError);
  EXPECT_TRUE(node.idle());
}

TEST(NodeState, JsonSnapshotShowsAvailableAndPerGpuShares) {
  NodeState node = make_node("a", 8, 64, "T4:2");
  node.allocate(ResourceSet{{"GPU", 0.5}}, std::vector<int>{1});
  nlohmann::json j = node;
  EXPECT_EQ(j["node_id"], "a");
  EXPECT_EQ(j["available"]["GPU"], 1.5);
  EXPECT_EQ(j["gpus"][0]["allocated"], 0.0);
  EXPECT_EQ(j["gpus"][1]["allocated"], 0.5);
  EXPECT_EQ(j["gpus"][1]["model"], "T4");
}

}  // namespace
}  // namespace troupe::scheduler
