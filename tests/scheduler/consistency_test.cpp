// Randomized checks of place(), place_group() and NodeState book-keeping
// against an independent brute-force oracle on small clusters.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <set>
#include <string>
#include <variant>
#include <vector>

#include "scheduler/test_cluster.hpp"
#include "troupe/scheduler/placement.hpp"
#include "troupe/scheduler/placement_group.hpp"

namespace troupe::scheduler {
namespace {

using testing::kGiB;
using testing::kGiBBytes;

// --- brute force -------------------------------------------------------------------

// Every index set of `k` GPUs on `node` (no deduplication, no ordering policy).
void subsets(const std::vector<int>& pool, std::size_t k, std::size_t from, std::vector<int>& current,
             std::vector<std::vector<int>>& out) {
  if (current.size() == k) {
    out.push_back(current);
    return;
  }
  for (std::size_t i = from; i < pool.size(); ++i) {
    current.push_back(pool[i]);
    subsets(pool, k, i + 1, current, out);
    current.pop_back();
  }
}

std::vector<std::vector<int>> all_gpu_sets(const NodeState& node, const ResourceRequest& r) {
  const double gpus = r.amounts.get(kGpu);
  if (gpus <= kEpsilon) return {{}};
  std::vector<int> pool;
  for (const GpuInfo& gpu : node.gpus()) {
    if (gpu_satisfies(gpu, r)) pool.push_back(gpu.index);
  }
  const std::size_t k = gpus < 1 ? 1 : static_cast<std::size_t>(std::llround(gpus));
  std::vector<std::vector<int>> out;
  std::vector<int> current;
  subsets(pool, k, 0, current, out);
  return out;
}

// Whether the bundles from `b` on can be placed on `work` under `strategy`,
// trying every node and every GPU set.
bool brute_force(std::vector<NodeState>& work, const std::vector<ResourceRequest>& requests,
                 std::size_t b, Strategy strategy, std::vector<int>& on_node, int first_node) {
  if (b == requests.size()) return true;
  for (std::size_t i = 0; i < work.size(); ++i) {
    if (strategy == Strategy::STRICT_PACK && b > 0 && static_cast<int>(i) != first_node) continue;
    if (strategy == Strategy::STRICT_SPREAD && on_node[i] > 0) continue;
    for (const std::vector<int>& gpus : all_gpu_sets(work[i], requests[b])) {
      if (!work[i].can_allocate(requests[b].amounts, gpus)) continue;
      work[i].allocate(requests[b].amounts, gpus);
      ++on_node[i];
      const bool ok = brute_force(work, requests, b + 1, strategy, on_node,
                                  b == 0 ? static_cast<int>(i) : first_node);
      --on_node[i];
      work[i].release(requests[b].amounts, gpus);
      if (ok) return true;
    }
  }
  return false;
}

bool oracle(std::vector<NodeState> work, const std::vector<ResourceRequest>& bundles, Strategy strategy) {
  std::vector<ResourceRequest> requests;
  for (const ResourceRequest& r : bundles) requests.push_back(normalize(r));
  std::vector<int> on_node(work.size(), 0);
  return brute_force(work, requests, 0, strategy, on_node, -1);
}

std::vector<NodeState> idle(const std::vector<NodeState>& nodes) {
  std::vector<NodeState> out;
  for (const NodeState& node : nodes) out.emplace_back(node.info());
  return out;
}

// --- random inputs -----------------------------------------------------------------

struct Random {
  std::mt19937 engine;
  explicit Random(unsigned seed) : engine(seed) {}
  int below(int n) { return std::uniform_int_distribution<int>(0, n - 1)(engine); }
  bool chance(double p) { return std::bernoulli_distribution(p)(engine); }
  template <class T>
  const T& pick(const std::vector<T>& items) {
    return items[static_cast<std::size_t>(below(static_cast<int>(items.size())))];
  }
};

std::vector<NodeState> random_cluster(Random& random) {
  static const std::vector<std::string> models{"H100-80GB", "A100-40GB", "T4-16GB", "L4"};
  std::vector<NodeState> nodes;
  const int count = 1 + random.below(4);
  for (int n = 0; n < count; ++n) {
    std::string spec;
    const int gpus = random.below(4);
    for (int g = 0; g < gpus; ++g) spec += (spec.empty() ? "" : ",") + random.pick(models);
    ResourceSet extra;
    if (random.chance(0.3)) extra.set("ssd", 1 + random.below(2));
    nodes.push_back(testing::make_node("n" + std::to_string(n), random.pick(std::vector<double>{4, 8, 16}),
                                       random.pick(std::vector<double>{16, 64}), spec, extra));
  }
  return nodes;
}

ResourceRequest random_request(Random& random) {
  ResourceRequest r;
  r.amounts.set(kCpu, random.pick(std::vector<double>{0, 1, 2, 4, 8}));
  if (random.chance(0.3)) r.amounts.set(kMemory, random.pick(std::vector<double>{4, 16, 48}) * kGiB);
  if (random.chance(0.6)) r.amounts.set(kGpu, random.pick(std::vector<double>{0.25, 0.5, 0.75, 1, 1, 2}));
  if (random.chance(0.4)) r.gpu_type = random.pick(std::vector<std::string>{"H100", "A100", "T4", "l4", "V100"});
  if (random.chance(0.15)) r.gpu_memory_bytes = random.pick(std::vector<std::uint64_t>{20, 48}) * kGiBBytes;
  if (random.chance(0.1)) r.amounts.set("ssd", 1);
  return r;
}

// --- the book-keeping model ------------------------------------------------------------

struct Held {
  std::variant<PlacementDecision, GroupPlacement> what;
};

// Checks every node against what the test believes it holds.
void check_books(const std::vector<NodeState>& nodes, const std::vector<Held>& held) {
  std::vector<ResourceSet> used(nodes.size());
  std::vector<std::vector<double>> shares(nodes.size());
  for (std::size_t i = 0; i < nodes.size(); ++i) shares[i].assign(nodes[i].gpus().size(), 0.0);
  auto account = [&](int node, const std::vector<int>& gpus, const ResourceSet& amounts) {
    used[static_cast<std::size_t>(node)].add(amounts);
    const double g = amounts.get(kGpu);
    for (int index : gpus) {
      shares[static_cast<std::size_t>(node)][static_cast<std::size_t>(nodes[node].gpu_slot(index))] +=
          g < 1 ? g : 1.0;
    }
  };
  for (const Held& h : held) {
    if (const auto* d = std::get_if<PlacementDecision>(&h.what)) {
      account(d->node, d->gpus, d->amounts);
    } else {
      for (const BundlePlacement& b : std::get<GroupPlacement>(h.what).bundles) account(b.node, b.gpus, b.amounts);
    }
  }
  for (std::size_t i = 0; i < nodes.size(); ++i) {
    const NodeState& node = nodes[i];
    for (const auto& [name, total] : node.total().amounts()) {
      const double available = node.available().get(name);
      ASSERT_GE(available, -kEpsilon) << node.node_id() << " " << name;
      ASSERT_LE(available, total + kEpsilon) << node.node_id() << " " << name;
      ASSERT_NEAR(available, total - used[i].get(name), 1e-6 * std::max(1.0, total))
          << node.node_id() << " " << name;
    }
    double allocated = 0;
    for (std::size_t slot = 0; slot < node.gpus().size(); ++slot) {
      ASSERT_GE(node.gpu_allocated(slot), 0.0);
      ASSERT_LE(node.gpu_allocated(slot), 1.0);
      ASSERT_NEAR(node.gpu_allocated(slot), shares[i][slot], kEpsilon) << node.node_id() << " slot " << slot;
      allocated += node.gpu_allocated(slot);
    }
    ASSERT_NEAR(node.available().get(kGpu), static_cast<double>(node.gpus().size()) - allocated, kEpsilon);
  }
}

void check_gpus_satisfy(const std::vector<NodeState>& nodes, int node, const std::vector<int>& gpus,
                        const ResourceRequest& request) {
  const ResourceRequest r = normalize(request);
  const double g = r.amounts.get(kGpu);
  ASSERT_EQ(gpus.size(), g <= kEpsilon ? 0u : g < 1 ? 1u : static_cast<std::size_t>(std::llround(g)));
  for (int index : gpus) {
    const int slot = nodes[static_cast<std::size_t>(node)].gpu_slot(index);
    ASSERT_GE(slot, 0);
    EXPECT_TRUE(gpu_satisfies(nodes[static_cast<std::size_t>(node)].gpus()[static_cast<std::size_t>(slot)], r))
        << to_string(r);
  }
}

TEST(RandomizedScheduling, AllocationsNeverExceedTotalsAndAgreeWithBruteForce) {
  const std::vector<Strategy> strategies{Strategy::PACK, Strategy::SPREAD, Strategy::STRICT_PACK,
                                         Strategy::STRICT_SPREAD};
  int placed_singles = 0, placed_groups = 0, waited = 0, infeasible = 0;
#ifdef TROUPE_SCHEDULER_SEEDS
  constexpr unsigned kSeeds = TROUPE_SCHEDULER_SEEDS;
#else
  constexpr unsigned kSeeds = 60;
#endif
  for (unsigned seed = 1; seed <= kSeeds; ++seed) {
    SCOPED_TRACE("seed " + std::to_string(seed));
    Random random(seed);
    std::vector<NodeState> nodes = random_cluster(random);
    std::vector<Held> held;
    for (int step = 0; step < 120; ++step) {
      SCOPED_TRACE("step " + std::to_string(step));
      const int op = random.below(100);
      if (op < 40) {
        const ResourceRequest r = random_request(random);
        const PlacementDecision d = place(nodes, r);
        ASSERT_EQ(d.placed(), oracle(nodes, {r}, Strategy::PACK)) << to_string(r) << ": " << d.reason;
        if (d.placed()) {
          check_gpus_satisfy(nodes, d.node, d.gpus, r);
          ASSERT_NO_THROW(allocate(nodes, d));
          held.push_back({d});
          ++placed_singles;
        } else {
          const bool fits_when_idle = oracle(idle(nodes), {r}, Strategy::PACK);
          ASSERT_EQ(d.status == PlacementStatus::insufficient, fits_when_idle) << d.reason;
          ASSERT_TRUE(d.reason.starts_with(fits_when_idle ? "insufficient: " : "infeasible: ")) << d.reason;
          fits_when_idle ? ++waited : ++infeasible;
        }
      } else if (op < 65) {
        std::vector<Bundle> bundles(static_cast<std::size_t>(1 + random.below(4)));
        for (Bundle& b : bundles) b = random_request(random);
        const Strategy strategy = random.pick(strategies);
        const GroupPlacement g = place_group(nodes, bundles, strategy);
        ASSERT_EQ(g.placed(), oracle(nodes, bundles, strategy)) << to_string(strategy) << ": " << g.reason;
        if (g.placed()) {
          ASSERT_EQ(g.bundles.size(), bundles.size());
          std::set<int> used;
          for (std::size_t b = 0; b < bundles.size(); ++b) {
            check_gpus_satisfy(nodes, g.bundles[b].node, g.bundles[b].gpus, bundles[b]);
            used.insert(g.bundles[b].node);
          }
          if (strategy == Strategy::STRICT_PACK) {
            EXPECT_EQ(used.size(), 1u);
          }
          if (strategy == Strategy::STRICT_SPREAD) {
            EXPECT_EQ(used.size(), bundles.size());
          }
          if (strategy == Strategy::PACK && oracle(nodes, bundles, Strategy::STRICT_PACK)) {
            EXPECT_EQ(used.size(), 1u) << "PACK must use one node when one node can hold the group";
          }
          ASSERT_NO_THROW(allocate_group(nodes, g));
          held.push_back({g});
          ++placed_groups;
        } else {
          const bool fits_when_idle = oracle(idle(nodes), bundles, strategy);
          ASSERT_EQ(g.status == PlacementStatus::insufficient, fits_when_idle) << g.reason;
          fits_when_idle ? ++waited : ++infeasible;
        }
      } else if (!held.empty()) {
        const auto it = held.begin() + random.below(static_cast<int>(held.size()));
        if (const auto* d = std::get_if<PlacementDecision>(&it->what)) {
          ASSERT_NO_THROW(release(nodes, *d));
        } else {
          ASSERT_NO_THROW(release_group(nodes, std::get<GroupPlacement>(it->what)));
        }
        held.erase(it);
      }
      check_books(nodes, held);
      if (::testing::Test::HasFatalFailure()) return;
    }
    for (const Held& h : held) {
      if (const auto* d = std::get_if<PlacementDecision>(&h.what)) {
        release(nodes, *d);
      } else {
        release_group(nodes, std::get<GroupPlacement>(h.what));
      }
    }
    for (const NodeState& node : nodes) EXPECT_TRUE(node.idle()) << node.node_id();
  }
  RecordProperty("placed_singles", placed_singles);
  RecordProperty("placed_groups", placed_groups);
  RecordProperty("waited", waited);
  RecordProperty("infeasible", infeasible);
  // The random mix must exercise every outcome, or the test proves little.
  EXPECT_GT(placed_singles, 100);
  EXPECT_GT(placed_groups, 50);
  EXPECT_GT(waited, 50);
  EXPECT_GT(infeasible, 50);
}

}  // namespace
}  // namespace troupe::scheduler
