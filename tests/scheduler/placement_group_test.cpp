#include "troupe/scheduler/placement_group.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "scheduler/test_cluster.hpp"

namespace troupe::scheduler {
namespace {

using testing::kGiBBytes;
using testing::make_node;
using testing::three_node_cluster;

constexpr int kNodeA = 0;  // 32 CPUs, 2x H100-80GB
constexpr int kNodeB = 1;  // 16 CPUs, A100-40GB (0) + T4-16GB (1)
constexpr int kNodeC = 2;  //  8 CPUs, no GPUs

#define EXPECT_CONTAINS(text, part) \
  EXPECT_NE(std::string(text).find(part), std::string::npos) << "missing \"" << (part) << "\" in: " << (text)

Bundle bundle(ResourceSet amounts, std::string gpu_type = {}, std::uint64_t gpu_memory_bytes = 0) {
  return Bundle{std::move(amounts), std::move(gpu_type), gpu_memory_bytes};
}

std::vector<int> nodes_of(const GroupPlacement& group) {
  std::vector<int> out;
  for (const BundlePlacement& b : group.bundles) out.push_back(b.node);
  return out;
}

std::size_t distinct_nodes(const GroupPlacement& group) {
  const std::vector<int> nodes = nodes_of(group);
  return std::set<int>(nodes.begin(), nodes.end()).size();
}

// --- Strategy names ------------------------------------------------------------

TEST(Strategy, ParsesNamesIgnoringCaseAndDashes) {
  EXPECT_EQ(parse_strategy("PACK"), Strategy::PACK);
  EXPECT_EQ(parse_strategy("spread"), Strategy::SPREAD);
  EXPECT_EQ(parse_strategy("strict_pack"), Strategy::STRICT_PACK);
  EXPECT_EQ(parse_strategy(" Strict-Spread "), Strategy::STRICT_SPREAD);
  for (Strategy s : {Strategy::PACK, Strategy::SPREAD, Strategy::STRICT_PACK, Strategy::STRICT_SPREAD}) {
    EXPECT_EQ(parse_strategy(to_string(s)), s);
  }
}

TEST(Strategy, RejectsUnknownNamesNamingThem) {
  try {
    parse_strategy("PACKED");
    FAIL() << "expected SpecError";
  } catch (const SpecError& e) {
    EXPECT_CONTAINS(e.what(), "\"PACKED\"");
  }
  EXPECT_THROW(parse_strategy(""), SpecError);
}

// --- STRICT_PACK -----------------------------------------------------------------

TEST(PlaceGroup, StrictPackPutsEveryBundleOnOneNode) {
  const auto nodes = three_node_cluster();
  const std::vector<Bundle> bundles{bundle({{"CPU", 2}}, "H100"), bundle({{"CPU", 2}}, "H100")};
  const GroupPlacement g = place_group(nodes, bundles, Strategy::STRICT_PACK);
  ASSERT_TRUE(g.placed()) << g.reason;
  EXPECT_EQ(nodes_of(g), (std::vector<int>{kNodeA, kNodeA}));
  EXPECT_NE(g.bundles[0].gpus, g.bundles[1].gpus);
}

TEST(PlaceGroup, StrictPackChoosesTheTightestNodeThatHoldsTheGroup) {
  const auto nodes = three_node_cluster();
  // Fits a or b; b is left tighter (4 of 16 CPUs vs 20 of 32); c is too small.
  const std::vector<Bundle> bundles(3, bundle({{"CPU", 4}}));
  const GroupPlacement g = place_group(nodes, bundles, Strategy::STRICT_PACK);
  ASSERT_TRUE(g.placed()) << g.reason;
  EXPECT_EQ(nodes_of(g), (std::vector<int>{kNodeB, kNodeB, kNodeB}));
}

TEST(PlaceGroup, StrictPackSharesGpusAmongFractionalBundles) {
  const auto nodes = three_node_cluster();
  const std::vector<Bundle> bundles(4, bundle({{"GPU", 0.5}}, "H100"));
  const GroupPlacement g = place_group(nodes, bundles, Strategy::STRICT_PACK);
  ASSERT_TRUE(g.placed()) << g.reason;
  std::map<int, double> share;
  for (const BundlePlacement& b : g.bundles) {
    EXPECT_EQ(b.node, kNodeA);
    ASSERT_EQ(b.gpus.size(), 1u);
    share[b.gpus.front()] += 0.5;
  }
  EXPECT_EQ(share, (std::map<int, double>{{0, 1.0}, {1, 1.0}}));
}

TEST(PlaceGroup, StrictPackBacktracksOverGpuChoicesWithinANode) {
  // Greedy best fit would give the first bundle the 16 GiB T4 (tightest for
  // ">= 16 GiB"), leaving nothing for the bundle that needs exactly a T4.
  const std::vector<NodeState> nodes{make_node("x", 8, 32, "L4-24GB:1,T4-16GB:1")};
  const std::vector<Bundle> bundles{bundle({{"CPU", 2}}, "", 16 * kGiBBytes), bundle({}, "T4")};
  const GroupPlacement g = place_group(nodes, bundles, Strategy::STRICT_PACK);
  ASSERT_TRUE(g.placed()) << g.reason;
  EXPECT_EQ(g.bundles[0].gpus, std::vector<int>{0});  // the L4
  EXPECT_EQ(g.bundles[1].gpus, std::vector<int>{1});  // the T4
}

TEST(PlaceGroup, StrictPackIsInfeasibleWhenNoNodeHasAllGpuTypes) {
  const auto nodes = three_node_cluster();
  const std::vector<Bundle> bundles{bundle({}, "H100"), bundle({}, "T4")};
  const GroupPlacement g = place_group(nodes, bundles, Strategy::STRICT_PACK);
  EXPECT_EQ(g.status, PlacementStatus::infeasible);
  EXPECT_TRUE(g.bundles.empty());
  EXPECT_CONTAINS(g.reason, "infeasible: STRICT_PACK: no single node can hold all 2 bundles");
  EXPECT_CONTAINS(g.reason, "GPU types H100/T4");
}

TEST(PlaceGroup, StrictPackIsInsufficientWhileTheOnlyFittingNodeIsBusy) {
  auto nodes = three_node_cluster();
  nodes[kNodeA].allocate(ResourceSet{{"GPU", 1}}, std::vector<int>{0});
  const std::vector<Bundle> bundles(2, bundle({}, "H100"));
  const GroupPlacement g = place_group(nodes, bundles, Strategy::STRICT_PACK);
  EXPECT_EQ(g.status, PlacementStatus::insufficient);
  EXPECT_CONTAINS(g.reason, "insufficient: waiting for resources (STRICT_PACK group of 2 bundle(s)");
  EXPECT_CONTAINS(g.reason, "a{GPU(H100)=1}");
}

// --- PACK ------------------------------------------------------------------------

TEST(PlaceGroup, PackUsesOneNodeWhenOneNodeCan) {
  const auto nodes = three_node_cluster();
  const std::vector<Bundle> bundles{bundle({{"CPU", 8}}, "H100"), bundle({{"CPU", 8}}), bundle({{"CPU", 8}})};
  const GroupPlacement g = place_group(nodes, bundles, Strategy::PACK);
  ASSERT_TRUE(g.placed()) << g.reason;
  EXPECT_EQ(nodes_of(g), (std::vector<int>{kNodeA, kNodeA, kNodeA}));
}

TEST(PlaceGroup, PackSpillsOntoAsFewNodesAsPossible) {
  const auto nodes = three_node_cluster();
  // Four GPUs of any kind: no node has more than two, so two nodes.
  const std::vector<Bundle> bundles(4, bundle({{"GPU", 1}}));
  const GroupPlacement g = place_group(nodes, bundles, Strategy::PACK);
  ASSERT_TRUE(g.placed()) << g.reason;
  EXPECT_EQ(distinct_nodes(g), 2u);
}

TEST(PlaceGroup, PackPlacesAGroupThatFitsOnlyAcrossNodes) {
  const auto nodes = three_node_cluster();
  const std::vector<Bundle> bundles{bundle({}, "H100"), bundle({}, "T4"), bundle({{"CPU", 8}})};
  const GroupPlacement g = place_group(nodes, bundles, Strategy::PACK);
  ASSERT_TRUE(g.placed()) << g.reason;
  EXPECT_EQ(g.bundles[0].node, kNodeA);
  EXPECT_EQ(g.bundles[1].node, kNodeB);
  // The CPU bundle joins a node the group already uses.
  EXPECT_NE(g.bundles[2].node, kNodeC);
}

TEST(PlaceGroup, PackIsInfeasibleWhenTheIdleClusterIsTooSmall) {
  const auto nodes = three_node_cluster();
  const std::vector<Bundle> bundles(5, bundle({{"GPU", 1}}));
  const GroupPlacement g = place_group(nodes, bundles, Strategy::PACK);
  EXPECT_EQ(g.status, PlacementStatus::infeasible);
  EXPECT_CONTAINS(g.reason, "PACK: the 5 bundles do not fit on the cluster even when it is idle");
  EXPECT_CONTAINS(g.reason, "they need GPU=5");
}

// --- STRICT_SPREAD ---------------------------------------------------------------

TEST(PlaceGroup, StrictSpreadPutsEachBundleOnADistinctNode) {
  const auto nodes = three_node_cluster();
  const std::vector<Bundle> bundles(3, bundle({{"CPU", 2}}));
  const GroupPlacement g = place_group(nodes, bundles, Strategy::STRICT_SPREAD);
  ASSERT_TRUE(g.placed()) << g.reason;
  EXPECT_EQ(distinct_nodes(g), 3u);
}

TEST(PlaceGroup, StrictSpreadFailsWithFewerNodesThanBundles) {
  const auto nodes = three_node_cluster();
  const std::vector<Bundle> bundles(4, bundle({{"CPU", 1}}));
  const GroupPlacement g = place_group(nodes, bundles, Strategy::STRICT_SPREAD);
  EXPECT_EQ(g.status, PlacementStatus::infeasible);
  EXPECT_EQ(g.reason,
            "infeasible: STRICT_SPREAD needs 4 distinct nodes for 4 bundles, but the cluster has 3 node(s)");
}

TEST(PlaceGroup, StrictSpreadFailsWhenTooFewNodesHaveGpus) {
  const auto nodes = three_node_cluster();
  const std::vector<Bundle> bundles(3, bundle({{"GPU", 1}}));
  const GroupPlacement g = place_group(nodes, bundles, Strategy::STRICT_SPREAD);
  EXPECT_EQ(g.status, PlacementStatus::infeasible);
  EXPECT_CONTAINS(g.reason, "at most 2 of them can be placed on distinct nodes");
}

TEST(PlaceGroup, StrictSpreadFindsTheMatchingGreedyWouldMiss) {
  // x fits p and q, tightest on q; y fits only q (it needs the NIC).
  const std::vector<NodeState> nodes{make_node("p", 8, 8, "", ResourceSet{{"ssd", 2}}),
                                     make_node("q", 8, 8, "", ResourceSet{{"ssd", 1}, {"nic", 1}})};
  const std::vector<Bundle> bundles{bundle({{"ssd", 1}}), bundle({{"ssd", 1}, {"nic", 1}})};
  const GroupPlacement g = place_group(nodes, bundles, Strategy::STRICT_SPREAD);
  ASSERT_TRUE(g.placed()) << g.reason;
  EXPECT_EQ(nodes_of(g), (std::vector<int>{0, 1}));
}

TEST(PlaceGroup, StrictSpreadIsInsufficientWhileANeededNodeIsBusy) {
  auto nodes = three_node_cluster();
  nodes[kNodeC].allocate(ResourceSet{{"CPU", 8}}, {});
  const std::vector<Bundle> bundles(3, bundle({{"CPU", 2}}));
  const GroupPlacement g = place_group(nodes, bundles, Strategy::STRICT_SPREAD);
  EXPECT_EQ(g.status, PlacementStatus::insufficient);
  EXPECT_CONTAINS(g.reason, "c{CPU=0}");
}

// --- SPREAD ----------------------------------------------------------------------

TEST(PlaceGroup, SpreadUsesDistinctNodesWhenItCan) {
  const auto nodes = three_node_cluster();
  const std::vector<Bundle> bundles(3, bundle({{"CPU", 1}}));
  const GroupPlacement g = place_group(nodes, bundles, Strategy::SPREAD);
  ASSERT_TRUE(g.placed()) << g.reason;
  EXPECT_EQ(distinct_nodes(g), 3u);
}

TEST(PlaceGroup, SpreadDoublesUpWhenBundlesOutnumberNodes) {
  const auto nodes = three_node_cluster();
  const std::vector<Bundle> bundles(5, bundle({{"CPU", 1}}));
  const GroupPlacement g = place_group(nodes, bundles, Strategy::SPREAD);
  ASSERT_TRUE(g.placed()) << g.reason;
  EXPECT_EQ(distinct_nodes(g), 3u);
  std::map<int, int> per_node;
  for (int node : nodes_of(g)) ++per_node[node];
  for (const auto& [node, count] : per_node) EXPECT_LE(count, 2) << "node " << node;
}

TEST(PlaceGroup, SpreadRespectsGpuTypes) {
  const auto nodes = three_node_cluster();
  const std::vector<Bundle> bundles(2, bundle({}, "H100"));
  const GroupPlacement g = place_group(nodes, bundles, Strategy::SPREAD);
  ASSERT_TRUE(g.placed()) << g.reason;
  EXPECT_EQ(nodes_of(g), (std::vector<int>{kNodeA, kNodeA}));  // only a has H100s
}

// --- scale ---------------------------------------------------------------------

std::vector<NodeState> sixty_four_nodes() {
  std::vector<NodeState> nodes;
  for (int i = 0; i < 64; ++i) {
    const char* spec = i % 3 == 0 ? "H100-80GB:8" : i % 3 == 1 ? "A100-40GB:4,T4-16GB:4" : "L4:2";
    nodes.push_back(make_node("n" + std::to_string(i), 32, 256, spec));
  }
  return nodes;
}

TEST(PlaceGroup, SixteenBundlesOnSixtyFourNodesArePlacedUnderEveryStrategy) {
  const auto nodes = sixty_four_nodes();
  std::vector<Bundle> bundles;
  for (int b = 0; b < 16; ++b) {
    bundles.push_back(b % 4 == 0 ? bundle({{"CPU", 2}, {"GPU", 2}}, "H100")
                                 : b % 4 == 1 ? bundle({{"CPU", 1}, {"GPU", 0.5}}, "T4")
                                              : bundle({{"CPU", 4}, {"GPU", 1}}));
  }
  for (Strategy s : {Strategy::PACK, Strategy::SPREAD, Strategy::STRICT_SPREAD}) {
    const GroupPlacement g = place_group(nodes, bundles, s);
    ASSERT_TRUE(g.placed()) << to_string(s) << ": " << g.reason;
    if (s != Strategy::PACK) {
      EXPECT_EQ(distinct_nodes(g), 16u) << to_string(s);
    }
  }
  // 8 H100 + 2 T4 shares + 8 other GPUs do not fit on one 8-GPU node.
  EXPECT_EQ(place_group(nodes, bundles, Strategy::STRICT_PACK).status, PlacementStatus::infeasible);
}

TEST(PlaceGroup, PackingInfeasibilityIsProvenNotTimedOut) {
  // 16 bundles of 3 CPUs on 15 nodes of 4: the sums fit (48 <= 60) but each
  // node holds one bundle. Mirror-image nodes and bundles must not make the
  // search give up.
  std::vector<NodeState> nodes;
  for (int i = 0; i < 15; ++i) nodes.push_back(make_node("n" + std::to_string(i), 4, 8, ""));
  const std::vector<Bundle> bundles(16, bundle({{"CPU", 3}}));
  for (Strategy s : {Strategy::PACK, Strategy::SPREAD}) {
    const GroupPlacement g = place_group(nodes, bundles, s);
    EXPECT_EQ(g.status, PlacementStatus::infeasible) << g.reason;
    EXPECT_CONTAINS(g.reason, "do not fit on the cluster even when it is idle");
  }
}

// --- reasons and errors ----------------------------------------------------------

TEST(PlaceGroup, ABundleThatFitsNowhereIsNamedInTheReason) {
  const auto nodes = three_node_cluster();
  for (Strategy s : {Strategy::PACK, Strategy::SPREAD, Strategy::STRICT_PACK, Strategy::STRICT_SPREAD}) {
    const std::vector<Bundle> bundles{bundle({{"CPU", 1}}), bundle({}, "L4")};
    const GroupPlacement g = place_group(nodes, bundles, s);
    EXPECT_EQ(g.status, PlacementStatus::infeasible) << to_string(s);
    EXPECT_CONTAINS(g.reason, "infeasible: bundle 1 (GPU=1, gpu_type=L4): no node has a GPU of type L4");
  }
}

TEST(PlaceGroup, EmptyAndMalformedGroupsThrowSpecError) {
  const auto nodes = three_node_cluster();
  EXPECT_THROW(place_group(nodes, std::vector<Bundle>{}, Strategy::PACK), SpecError);
  try {
    place_group(nodes, std::vector<Bundle>{bundle({{"CPU", 1}}), bundle({{"GPU", 1.5}})}, Strategy::PACK);
    FAIL() << "expected SpecError";
  } catch (const SpecError& e) {
    EXPECT_CONTAINS(e.what(), "bundle 1");
  }
}

// --- reservation -----------------------------------------------------------------

TEST(AllocateGroup, ReservesAndReleasesEveryBundle) {
  auto nodes = three_node_cluster();
  const std::vector<Bundle> bundles{bundle({{"CPU", 4}}, "H100"), bundle({{"GPU", 0.5}}),
                                    bundle({{"CPU", 2}})};
  const GroupPlacement g = place_group(nodes, bundles, Strategy::SPREAD);
  ASSERT_TRUE(g.placed()) << g.reason;
  allocate_group(nodes, g);
  EXPECT_EQ(nodes[kNodeA].available().get("GPU"), 1);
  EXPECT_FALSE(nodes[kNodeB].idle());
  EXPECT_FALSE(nodes[kNodeC].idle());
  release_group(nodes, g);
  for (const NodeState& node : nodes) EXPECT_TRUE(node.idle()) << node.node_id();
}

TEST(AllocateGroup, IsAllOrNothing) {
  auto nodes = three_node_cluster();
  const std::vector<Bundle> bundles{bundle({{"CPU", 1}}), bundle({}, "H100"), bundle({}, "H100")};
  const GroupPlacement g = place_group(nodes, bundles, Strategy::PACK);
  ASSERT_TRUE(g.placed()) << g.reason;
  // Someone takes an H100 between placing and reserving: the reservation
  // must fail without leaving the first bundles allocated.
  nodes[kNodeA].allocate(ResourceSet{{"GPU", 1}}, std::vector<int>{1});
  const std::vector<NodeState> before = nodes;
  EXPECT_THROW(allocate_group(nodes, g), AllocationError);
  for (std::size_t i = 0; i < nodes.size(); ++i) {
    EXPECT_EQ(nodes[i].available(), before[i].available()) << nodes[i].node_id();
    for (std::size_t slot = 0; slot < nodes[i].gpus().size(); ++slot) {
      EXPECT_EQ(nodes[i].gpu_allocated(slot), before[i].gpu_allocated(slot));
    }
  }
}

TEST(AllocateGroup, ReleasingAGroupTwiceThrowsAndChangesNothing) {
  auto nodes = three_node_cluster();
  const GroupPlacement g = place_group(nodes, std::vector<Bundle>(2, bundle({{"CPU", 1}})), Strategy::SPREAD);
  ASSERT_TRUE(g.placed());
  allocate_group(nodes, g);
  release_group(nodes, g);
  EXPECT_THROW(release_group(nodes, g), AllocationError);
  for (const NodeState& node : nodes) EXPECT_TRUE(node.idle());
}

}  // namespace
}  // namespace troupe::scheduler
