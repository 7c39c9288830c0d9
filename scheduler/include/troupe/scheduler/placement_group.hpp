// Placement groups: reserving several bundles at once, Ray-style.
//
// Strategies (as in Ray):
//  STRICT_PACK    all bundles on one node, or fail.
//  PACK           as few nodes as possible, best effort.
//  STRICT_SPREAD  every bundle on a different node, or fail.
//  SPREAD         as many different nodes as possible, best effort.
//
// Search. Every strategy gives an exact yes/no for groups of the intended
// size (up to ~16 bundles, ~64 nodes) and picks among solutions by a
// documented preference:
//  STRICT_PACK    every node is tried with a backtracking search over the
//                 bundles' GPU choices; the node left tightest after placing
//                 (same measure as place()) wins.
//  STRICT_SPREAD  a bipartite matching of bundles to nodes (each node takes
//                 one bundle, so this is exact and polynomial); each bundle
//                 tries nodes in best-fit order.
//  PACK           first STRICT_PACK; if no single node holds the group, a
//                 depth-first search whose first path is the greedy policy:
//                 the bundle that fits on the fewest nodes goes first (ties:
//                 the hardest: most whole GPUs, then a GPU type/memory
//                 constraint, then the largest amounts), onto a node the
//                 group already uses when it fits there (tightest first), else
//                 onto the unused node with room for the most remaining
//                 bundles. It backtracks only when the greedy path dead-ends.
//  SPREAD         the same search preferring the node holding the fewest of
//                 the group's bundles (unused nodes first), then best fit.
// The searches prune with bounds that never cut a solution and skip mirror
// images (equal bundles, nodes in equal states), and stop after a fixed
// budget of steps: a few milliseconds for typical groups, a few hundred at
// worst for adversarial 16-bundle bin-packing cases. A search that runs out
// reports insufficient (saying so), never infeasible: a group is called
// infeasible only when that is proven.
//
// Reservation is atomic: allocate_group() applies every bundle or none.
#pragma once

#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "troupe/scheduler/placement.hpp"
#include "troupe/scheduler/resources.hpp"

namespace troupe::scheduler {

using Bundle = ResourceRequest;

enum class Strategy { PACK, SPREAD, STRICT_PACK, STRICT_SPREAD };

// "PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"; parsing ignores case and
// accepts '-' for '_'. Throws SpecError naming the unknown text.
Strategy parse_strategy(std::string_view text);
std::string_view to_string(Strategy strategy) noexcept;

struct BundlePlacement {
  int node = -1;          // index into the node span given to place_group()
  std::vector<int> gpus;  // GpuInfo::index values on that node
  ResourceSet amounts;    // normalized amounts to allocate, GPU included
};

struct GroupPlacement {
  PlacementStatus status = PlacementStatus::infeasible;
  std::vector<BundlePlacement> bundles;  // parallel to the bundles given, when placed
  // Unless placed: why, starting with "infeasible: " or "insufficient: ".
  std::string reason;

  bool placed() const noexcept { return status == PlacementStatus::placed; }
  explicit operator bool() const noexcept { return placed(); }
};

// Finds a placement for every bundle under `strategy` (see above). Does not
// change the nodes: pass the result to allocate_group(). Throws SpecError for
// an empty bundle list or a malformed bundle (see normalize()).
GroupPlacement place_group(std::span<const NodeState> nodes, std::span<const Bundle> bundles,
                           Strategy strategy);

// Reserves every bundle of a placed group, or nothing: on AllocationError
// (not placed, bad node index, no longer fits) the nodes are unchanged.
void allocate_group(std::span<NodeState> nodes, const GroupPlacement& group);
// Gives every bundle back, or nothing (AllocationError as above).
void release_group(std::span<NodeState> nodes, const GroupPlacement& group);

}  // namespace troupe::scheduler
