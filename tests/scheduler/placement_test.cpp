#include "troupe/scheduler/placement.hpp"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <string>
#include <vector>

#include "scheduler/test_cluster.hpp"

namespace troupe::scheduler {
namespace {

using testing::kGiB;
using testing::kGiBBytes;
using testing::make_node;
using testing::three_node_cluster;

constexpr int kNodeA = 0;  // 2x H100-80GB
constexpr int kNodeB = 1;  // A100-40GB (0) + T4-16GB (1)
constexpr int kNodeC = 2;  // CPU only

ResourceRequest request(ResourceSet amounts, std::string gpu_type = {},
                        std::uint64_t gpu_memory_bytes = 0) {
  return ResourceRequest{std::move(amounts), std::move(gpu_type), gpu_memory_bytes};
}

#define EXPECT_CONTAINS(text, part) \
  EXPECT_NE(std::string(text).find(part), std::string::npos) << "missing \"" << (part) << "\" in: " << (text)

// --- normalize -----------------------------------------------------------------

TEST(NormalizeRequest, AGpuTypeOrMemoryWithoutACountImpliesOneGpu) {
  EXPECT_EQ(normalize(request({{"CPU", 1}}, "H100")).amounts.get("GPU"), 1);
  EXPECT_EQ(normalize(request({}, "", 16 * kGiBBytes)).amounts.get("GPU"), 1);
  EXPECT_EQ(normalize(request({{"GPU", 0.5}}, "H100")).amounts.get("GPU"), 0.5);
  EXPECT_EQ(normalize(request({{"CPU", 1}})).amounts.get("GPU"), 0);
}

TEST(NormalizeRequest, FoldsGpuColonTypeIntoTheGpuType) {
  const ResourceRequest r = normalize(request({{"GPU:T4", 2}, {"CPU", 1}}));
  EXPECT_EQ(r.gpu_type, "T4");
  EXPECT_EQ(r.amounts, (ResourceSet{{"GPU", 2}, {"CPU", 1}}));
  EXPECT_EQ(normalize(request({{"GPU:H100-80GB", 1}}, "H100")).gpu_type, "H100-80GB");
}

TEST(NormalizeRequest, RejectsFractionsAboveOneAndConflictingTypes) {
  EXPECT_THROW(normalize(request({{"GPU", 1.5}})), SpecError);
  EXPECT_THROW(normalize(request({{"GPU:T4", 1}}, "H100")), SpecError);
  EXPECT_THROW(normalize(request({{"GPU:T4", 1}, {"GPU:H100", 1}})), SpecError);
  EXPECT_THROW(normalize(request({{"GPU:T4", 1}, {"GPU", 2}})), SpecError);
  EXPECT_THROW(normalize(request({{"GPU:", 1}})), SpecError);
  EXPECT_THROW(normalize(request({}, "--")), SpecError);
  try {
    normalize(request({{"GPU", 2.5}}));
  } catch (const SpecError& e) {
    EXPECT_CONTAINS(e.what(), "GPU=2.5");
  }
}

TEST(ResourceRequestJson, RoundTrips) {
  const ResourceRequest r = request({{"CPU", 2}, {"GPU", 0.5}}, "A100", 40 * kGiBBytes);
  nlohmann::json j = r;
  EXPECT_EQ(j.get<ResourceRequest>(), r);
  EXPECT_THROW(nlohmann::json::parse(R"({"gpu_type": 7})").get<ResourceRequest>(), SpecError);
}

// --- place ---------------------------------------------------------------------

TEST(Place, CpuOnlyWorkPrefersTheNodeWithoutGpus) {
  const auto nodes = three_node_cluster();
  const PlacementDecision d = place(nodes, request({{"CPU", 2}}));
  ASSERT_TRUE(d.placed()) << d.reason;
  EXPECT_EQ(d.node, kNodeC);
  EXPECT_TRUE(d.gpus.empty());
}

TEST(Place, CpuWorkTooBigForTheCpuNodeGoesToTheTightestGpuNode) {
  const auto nodes = three_node_cluster();
  const PlacementDecision d = place(nodes, request({{"CPU", 12}}));
  ASSERT_TRUE(d.placed()) << d.reason;
  EXPECT_EQ(d.node, kNodeB);  // 4 of 16 CPUs left beats 20 of 32
}

TEST(Place, AnUntypedGpuRequestTakesTheSmallestGpu) {
  const auto nodes = three_node_cluster();
  const PlacementDecision d = place(nodes, request({{"GPU", 1}}));
  ASSERT_TRUE(d.placed()) << d.reason;
  EXPECT_EQ(d.node, kNodeB);
  EXPECT_EQ(d.gpus, std::vector<int>{1});  // the T4
}

TEST(Place, AGpuTypeSelectsMatchingGpusOnly) {
  const auto nodes = three_node_cluster();
  PlacementDecision d = place(nodes, request({{"CPU", 1}}, "H100"));
  ASSERT_TRUE(d.placed()) << d.reason;
  EXPECT_EQ(d.node, kNodeA);
  EXPECT_EQ(d.gpus, std::vector<int>{0});
  EXPECT_EQ(d.amounts, (ResourceSet{{"CPU", 1}, {"GPU", 1}}));

  d = place(nodes, request({{"GPU", 1}}, "a100"));
  ASSERT_TRUE(d.placed()) << d.reason;
  EXPECT_EQ(d.node, kNodeB);
  EXPECT_EQ(d.gpus, std::vector<int>{0});
}

TEST(Place, GpuColonTypeResourceActsAsAGpuType) {
  const auto nodes = three_node_cluster();
  const PlacementDecision d = place(nodes, request({{"GPU:T4", 1}}));
  ASSERT_TRUE(d.placed()) << d.reason;
  EXPECT_EQ(d.node, kNodeB);
  EXPECT_EQ(d.gpus, std::vector<int>{1});
}

TEST(Place, AGpuMemoryFloorSkipsSmallGpusAndTakesTheTightestLargeOne) {
  const auto nodes = three_node_cluster();
  PlacementDecision d = place(nodes, request({}, "", 32 * kGiBBytes));
  ASSERT_TRUE(d.placed()) << d.reason;
  EXPECT_EQ(d.node, kNodeB);
  EXPECT_EQ(d.gpus, std::vector<int>{0});  // A100-40GB, not an 80 GB H100

  d = place(nodes, request({}, "", 48 * kGiBBytes));
  ASSERT_TRUE(d.placed()) << d.reason;
  EXPECT_EQ(d.node, kNodeA);
}

TEST(Place, SeveralWholeGpusComeFromOneNode) {
  const auto nodes = three_node_cluster();
  PlacementDecision d = place(nodes, request({{"GPU", 2}}, "H100"));
  ASSERT_TRUE(d.placed()) << d.reason;
  EXPECT_EQ(d.node, kNodeA);
  EXPECT_EQ(d.gpus, (std::vector<int>{0, 1}));

  // Without a type the A100 + T4 pair is the tighter fit.
  d = place(nodes, request({{"GPU", 2}}));
  ASSERT_TRUE(d.placed()) << d.reason;
  EXPECT_EQ(d.node, kNodeB);
  EXPECT_EQ(d.gpus, (std::vector<int>{0, 1}));
}

TEST(Place, MatchesCudaDeviceNames) {
  std::vector<NodeState> nodes;
  NodeInfo info;
  info.node_id = "real";
  GpuInfo gpu;
  gpu.model = "NVIDIA H100 80GB HBM3";
  gpu.memory_bytes = 85'031'714'816;  // what cudaGetDeviceProperties reports
  info.gpus = {gpu};
  nodes.emplace_back(info);
  for (const char* type : {"H100", "h100-80gb", "NVIDIA H100"}) {
    EXPECT_TRUE(place(nodes, request({}, type)).placed()) << type;
  }
  EXPECT_FALSE(place(nodes, request({}, "A100")).placed());
  EXPECT_TRUE(place(nodes, request({}, "", 79 * kGiBBytes)).placed());
}

TEST(Place, FractionalRequestsFillASharedGpuBeforeAFreshOne) {
  auto nodes = three_node_cluster();
  std::vector<std::pair<int, int>> where;  // (node, gpu) of each 0.5 H100 share
  for (int i = 0; i < 4; ++i) {
    const PlacementDecision d = place(nodes, request({{"GPU", 0.5}}, "H100"));
    ASSERT_TRUE(d.placed()) << d.reason;
    ASSERT_EQ(d.gpus.size(), 1u);
    allocate(nodes, d);
    where.emplace_back(d.node, d.gpus.front());
  }
  EXPECT_EQ(where, (std::vector<std::pair<int, int>>{{kNodeA, 0}, {kNodeA, 0}, {kNodeA, 1}, {kNodeA, 1}}));
  const PlacementDecision full = place(nodes, request({{"GPU", 0.5}}, "H100"));
  EXPECT_EQ(full.status, PlacementStatus::insufficient) << full.reason;
}

TEST(Place, SmallFractionsGoToTheGpuTheyFillMost) {
  auto nodes = three_node_cluster();
  // 0.75 of the T4 is taken; a 0.25 share fits it exactly.
  nodes[kNodeB].allocate(ResourceSet{{"GPU", 0.75}}, std::vector<int>{1});
  const PlacementDecision d = place(nodes, request({{"GPU", 0.25}}));
  ASSERT_TRUE(d.placed()) << d.reason;
  EXPECT_EQ(d.node, kNodeB);
  EXPECT_EQ(d.gpus, std::vector<int>{1});
}

TEST(Place, AWholeGpuRequestSkipsAPartlySharedGpu) {
  auto nodes = three_node_cluster();
  allocate(nodes, place(nodes, request({{"GPU", 0.1}}, "T4")));
  const PlacementDecision d = place(nodes, request({{"GPU", 1}}, "T4"));
  EXPECT_EQ(d.status, PlacementStatus::insufficient) << d.reason;
  EXPECT_CONTAINS(d.reason, "GPU(T4)=0.9 (0 whole)");
}

TEST(Place, AnUnknownGpuTypeIsInfeasibleAndNamesTypeAndInventory) {
  const auto nodes = three_node_cluster();
  const PlacementDecision d = place(nodes, request({{"GPU", 1}}, "L4"));
  EXPECT_EQ(d.status, PlacementStatus::infeasible);
  EXPECT_EQ(d.node, -1);
  EXPECT_EQ(d.reason,
            "infeasible: no node has a GPU of type L4 "
            "(cluster has: H100-80GB x2, A100-40GB x1, T4-16GB x1)");
}

TEST(Place, MoreGpusOfATypeThanAnyNodeHasIsInfeasible) {
  const auto nodes = three_node_cluster();
  const PlacementDecision d = place(nodes, request({{"GPU", 3}}, "H100"));
  EXPECT_EQ(d.status, PlacementStatus::infeasible);
  EXPECT_CONTAINS(d.reason, "no node has 3 GPUs of type H100");
  EXPECT_CONTAINS(d.reason, "at most 2 on one node, \"a\"");
}

TEST(Place, AGpuMemoryFloorAboveEveryGpuIsInfeasible) {
  const auto nodes = three_node_cluster();
  const PlacementDecision d = place(nodes, request({}, "", 96 * kGiBBytes));
  EXPECT_EQ(d.status, PlacementStatus::infeasible);
  EXPECT_CONTAINS(d.reason, "with at least 96GiB of memory");
  EXPECT_CONTAINS(d.reason, "H100-80GB (80GiB) x2");
}

TEST(Place, TooManyCpusIsInfeasibleAndNamesTheLargestNode) {
  const auto nodes = three_node_cluster();
  const PlacementDecision d = place(nodes, request({{"CPU", 64}}));
  EXPECT_EQ(d.status, PlacementStatus::infeasible);
  EXPECT_EQ(d.reason, "infeasible: no node has CPU=64 (largest: CPU=32 on \"a\")");
}

TEST(Place, TooMuchMemoryIsInfeasibleInBinaryUnits) {
  const auto nodes = three_node_cluster();
  const PlacementDecision d = place(nodes, request({{"memory", 512 * kGiB}}));
  EXPECT_EQ(d.reason, "infeasible: no node has memory=512GiB (largest: memory=256GiB on \"a\")");
}

TEST(Place, AnUnknownCustomResourceIsInfeasible) {
  const auto nodes = three_node_cluster();
  const PlacementDecision d = place(nodes, request({{"tpu", 1}}));
  EXPECT_EQ(d.status, PlacementStatus::infeasible);
  EXPECT_CONTAINS(d.reason, "no node has resource \"tpu\"");
}

TEST(Place, ConstraintsMetOnlyOnDifferentNodesAreInfeasible) {
  const auto nodes = three_node_cluster();
  // b has the T4 but 16 CPUs; a has 32 CPUs but no T4.
  const PlacementDecision d = place(nodes, request({{"CPU", 20}}, "T4"));
  EXPECT_EQ(d.status, PlacementStatus::infeasible);
  EXPECT_CONTAINS(d.reason, "no single node has everything requested");
  EXPECT_CONTAINS(d.reason, "\"a\": no GPU of type T4");
  EXPECT_CONTAINS(d.reason, "\"b\": CPU=16 < 20");
}

TEST(Place, BusyGpusAreInsufficientNotInfeasible) {
  auto nodes = three_node_cluster();
  allocate(nodes, place(nodes, request({{"GPU", 2}}, "H100")));
  const PlacementDecision d = place(nodes, request({{"GPU", 1}, {"CPU", 1}}, "H100"));
  EXPECT_EQ(d.status, PlacementStatus::insufficient);
  EXPECT_EQ(d.node, -1);
  EXPECT_CONTAINS(d.reason, "insufficient: waiting for resources (requested CPU=1, GPU=1, gpu_type=H100");
  EXPECT_CONTAINS(d.reason, "a{CPU=32, GPU(H100)=0}");
}

TEST(Place, AnEmptyClusterIsInfeasible) {
  const PlacementDecision d = place(std::vector<NodeState>{}, request({{"CPU", 1}}));
  EXPECT_EQ(d.status, PlacementStatus::infeasible);
  EXPECT_EQ(d.reason, "infeasible: the cluster has no nodes");
}

TEST(Place, AnEmptyRequestPlacesAnywhereButPrefersCpuNodes) {
  const auto nodes = three_node_cluster();
  const PlacementDecision d = place(nodes, request({}));
  ASSERT_TRUE(d.placed());
  EXPECT_EQ(d.node, kNodeC);
}

TEST(Place, MalformedRequestsThrowSpecError) {
  const auto nodes = three_node_cluster();
  EXPECT_THROW(place(nodes, request({{"GPU", 1.5}})), SpecError);
}

TEST(AllocateRelease, RoundTripsToAnIdleCluster) {
  auto nodes = three_node_cluster();
  std::vector<PlacementDecision> held;
  for (const ResourceRequest& r : {request({{"CPU", 4}}, "H100"), request({{"GPU", 0.3}}),
                                   request({{"CPU", 8}, {"memory", 16 * kGiB}}),
                                   request({{"GPU", 1}}, "A100")}) {
    held.push_back(place(nodes, r));
    ASSERT_TRUE(held.back().placed()) << held.back().reason;
    allocate(nodes, held.back());
  }
  EXPECT_FALSE(nodes[kNodeA].idle());
  EXPECT_FALSE(nodes[kNodeB].idle());
  EXPECT_FALSE(nodes[kNodeC].idle());
  for (const PlacementDecision& d : held) release(nodes, d);
  for (const NodeState& node : nodes) {
    EXPECT_TRUE(node.idle()) << node.node_id();
    EXPECT_EQ(node.available(), node.total());
    for (std::size_t slot = 0; slot < node.gpus().size(); ++slot) EXPECT_EQ(node.gpu_allocated(slot), 0.0);
  }
}

TEST(AllocateRelease, AllocatingAStaleDecisionThrowsAndChangesNothing) {
  auto nodes = three_node_cluster();
  const PlacementDecision d = place(nodes, request({{"GPU", 2}}, "H100"));
  allocate(nodes, d);
  const ResourceSet before = nodes[kNodeA].available();
  EXPECT_THROW(allocate(nodes, d), AllocationError);
  EXPECT_EQ(nodes[kNodeA].available(), before);
}

TEST(AllocateRelease, AnUnplacedDecisionCannotBeAllocated) {
  auto nodes = three_node_cluster();
  const PlacementDecision d = place(nodes, request({{"GPU", 1}}, "L4"));
  EXPECT_THROW(allocate(nodes, d), AllocationError);
}

TEST(GpuInventory, CountsModelsInFirstSeenOrder) {
  EXPECT_EQ(describe_gpu_inventory(three_node_cluster()), "H100-80GB x2, A100-40GB x1, T4-16GB x1");
  EXPECT_EQ(describe_gpu_inventory(std::vector<NodeState>{make_node("c", 1, 1, "")}), "no GPUs");
}

}  // namespace
}  // namespace troupe::scheduler
