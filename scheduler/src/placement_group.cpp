#include "troupe/scheduler/placement_group.hpp"

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <numeric>
#include <optional>
#include <string>
#include <tuple>
#include <utility>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "fit.hpp"
#include "text.hpp"

namespace troupe::scheduler {

namespace {

// Steps (candidate placements tried) a search may take: first in the
// strategy's preference order, then in canonical order (see GroupSearch).
// The greedy first path of a 16-bundle group takes 16 steps; a group that
// needs more than this is reported as insufficient rather than proven
// infeasible. A step costs 10-100 us (the bounds in may_fit dominate), so
// this caps one search at a few hundred milliseconds.
constexpr long kGreedyBudget = 2'000;
constexpr long kSearchBudget = 10'000;
// GPU choices considered per bundle and node. Interchangeable GPUs are
// collapsed first (see gpu_choices), so this only cuts nodes with many GPU
// kinds; a cut makes a failure unproven, never wrong.
constexpr std::size_t kChoiceLimit = 16;
// Bundles a message lists before "... and N more".
constexpr std::size_t kBundlesListed = 8;

struct Solution {
  bool found = false;
  // When not found: whether the search was complete, so that the failure is
  // a proof (no budget ran out, no choice list was cut).
  bool proven = true;
  std::vector<BundlePlacement> placements;  // parallel to the bundles
};

// Hardest bundles first: most whole GPUs, then a GPU type/memory constraint,
// then the largest GPU share, CPU and memory. Placing them first leaves the
// easy ones to fill gaps, which keeps greedy paths from dead-ending. This
// breaks ties of the fewest-nodes-first rule in GroupSearch.
std::vector<std::size_t> hardest_first(const std::vector<ResourceRequest>& requests) {
  std::vector<std::size_t> order(requests.size());
  std::iota(order.begin(), order.end(), std::size_t{0});
  auto key = [&](std::size_t b) {
    const ResourceRequest& r = requests[b];
    const double gpus = detail::gpu_amount(r);
    return std::make_tuple(detail::is_fractional(gpus) ? 0.0 : gpus,
                           !r.gpu_type.empty() || r.gpu_memory_bytes > 0, gpus,
                           r.amounts.get(kCpu), r.amounts.get(kMemory));
  };
  std::stable_sort(order.begin(), order.end(),
                   [&](std::size_t a, std::size_t b) { return key(a) > key(b); });
  return order;
}

// Whether two nodes are alike for placement: same totals, same free amounts,
// and GPUs of the same models, memory and allocated shares in the same slots.
bool same_state(const NodeState& x, const NodeState& y) {
  if (x.gpus().size() != y.gpus().size() || !(x.total() == y.total()) ||
      !(x.available() == y.available())) {
    return false;
  }
  for (std::size_t slot = 0; slot < x.gpus().size(); ++slot) {
    if (x.gpus()[slot].model != y.gpus()[slot].model ||
        x.gpus()[slot].memory_bytes != y.gpus()[slot].memory_bytes ||
        std::fabs(x.gpu_allocated(slot) - y.gpu_allocated(slot)) > kEpsilon) {
      return false;
    }
  }
  return true;
}

// How many copies of `request` fit on `node` one beside the other, counting
// each resource and the matching GPUs separately: an upper bound, at most
// `limit`.
double copies_fit(const NodeState& node, const ResourceRequest& request, double limit) {
  double copies = limit;
  for (const auto& [name, amount] : request.amounts.amounts()) {
    if (name == kGpu || amount <= kEpsilon) continue;
    copies = std::min(copies, std::floor((node.available().get(name) + kEpsilon) / amount));
  }
  const double gpus = detail::gpu_amount(request);
  if (gpus > kEpsilon) {
    double gpu_copies = 0;
    for (std::size_t slot = 0; slot < node.gpus().size(); ++slot) {
      if (!gpu_satisfies(node.gpus()[slot], request)) continue;
      if (detail::is_fractional(gpus)) {
        gpu_copies += std::floor((node.gpu_free(slot) + kEpsilon) / gpus);
      } else if (node.gpu_allocated(slot) <= kEpsilon) {
        gpu_copies += 1;
      }
    }
    if (!detail::is_fractional(gpus)) gpu_copies = std::floor(gpu_copies / std::round(gpus));
    copies = std::min(copies, gpu_copies);
  }
  return copies;
}

// Depth-first search placing bundles onto working copies of the nodes. At
// each step it places the remaining bundle that fits on the fewest nodes
// (ties: the earlier in `order`, i.e. the harder), so conflicts surface
// before the easy bundles are spread around. It runs in two phases:
//  1. candidates in the strategy's preference order (see
//     placement_group.hpp), so the first solution is the greedy policy's or a
//     close neighbour; at most `greedy_budget` steps;
//  2. only if phase 1 ran out of steps: the same search with equal bundles
//     forced into ascending (node, GPU list) order, which removes the k!
//     orderings of k equal bundles; at most `full_budget` steps.
// Both prune with bounds that never cut a solution (see may_fit) and try
// nodes in identical states only once (see interchangeable).
class GroupSearch {
 public:
  GroupSearch(std::span<const NodeState> nodes, const std::vector<ResourceRequest>& requests,
              const std::vector<std::size_t>& order, Strategy strategy, long greedy_budget,
              long full_budget)
      : work_(nodes.begin(), nodes.end()),
        requests_(requests),
        order_(order),
        strategy_(strategy),
        greedy_budget_(greedy_budget),
        full_budget_(full_budget),
        on_node_(nodes.size(), 0),
        placed_(requests.size(), 0),
        placements_(requests.size()) {}

  bool run() {
    budget_ = greedy_budget_;
    if (dfs(0)) return true;
    if (!out_of_steps_) return false;
    out_of_steps_ = false;
    complete_ = true;
    canonical_ = true;
    budget_ = full_budget_;
    return dfs(0);
  }
  // After a failed run(): whether the failure is a proof.
  bool complete() const noexcept { return complete_ && !out_of_steps_; }
  const std::vector<BundlePlacement>& placements() const noexcept { return placements_; }
  const std::vector<NodeState>& work() const noexcept { return work_; }

 private:
  // Sorted lexicographically; lower is tried first.
  using Key = std::tuple<int, int, detail::FitScore, std::size_t, std::size_t>;
  struct Candidate {
    Key key;
    std::size_t node;
    std::vector<int> gpus;
  };

  // Necessary conditions for placing every remaining bundle (never cuts a
  // solution); on success `*next` is the remaining bundle that fits on the
  // fewest nodes. Each bundle can only use the nodes where it fits alone, so
  // for every such node set E the bundles confined to E must pass bounded()
  // on E's nodes (a Hall-type check; E ranges over the bundles' own sets and
  // their union).
  bool may_fit(std::size_t* next) const {
    std::vector<std::size_t> remaining;
    for (std::size_t b : order_) {
      if (!placed_[b]) remaining.push_back(b);
    }
    const std::size_t n = remaining.size();
    std::vector<std::vector<char>> eligible(n, std::vector<char>(work_.size(), 0));
    std::vector<char> any(work_.size(), 0);
    std::size_t fewest = std::numeric_limits<std::size_t>::max();
    for (std::size_t k = 0; k < n; ++k) {
      const ResourceRequest& request = requests_[remaining[k]];
      std::size_t count = 0;
      for (std::size_t i = 0; i < work_.size(); ++i) {
        if (copies_fit(work_[i], request, 1) >= 1) {
          eligible[k][i] = 1;
          any[i] = 1;
          ++count;
        }
      }
      if (count == 0) return false;
      if (count < fewest) {
        fewest = count;
        *next = remaining[k];
      }
    }
    auto within = [](const std::vector<char>& inner, const std::vector<char>& outer) {
      for (std::size_t i = 0; i < inner.size(); ++i) {
        if (inner[i] && !outer[i]) return false;
      }
      return true;
    };
    std::vector<const std::vector<char>*> sets{&any};
    for (const std::vector<char>& set : eligible) {
      if (std::none_of(sets.begin(), sets.end(), [&](const auto* s) { return *s == set; })) {
        sets.push_back(&set);
      }
    }
    std::vector<const ResourceRequest*> confined;
    for (const std::vector<char>* set : sets) {
      confined.clear();
      for (std::size_t k = 0; k < n; ++k) {
        if (within(eligible[k], *set)) confined.push_back(&requests_[remaining[k]]);
      }
      if (!bounded(confined, *set)) return false;
    }
    return true;
  }

  // The bounds for `bundles` on the nodes in `mask`: their summed amounts fit
  // the summed free amounts; for each resource, the k bundles needing at
  // least t of it find k t-sized slots (a node offers floor(free / t); for
  // GPUs shares of t on single GPUs, or t whole free GPUs); and each class of
  // equal bundles fits by count (copies_fit).
  bool bounded(const std::vector<const ResourceRequest*>& bundles, const std::vector<char>& mask) const {
    ResourceSet need;
    ResourceSet free;
    for (const ResourceRequest* bundle : bundles) need.add(bundle->amounts);
    for (std::size_t i = 0; i < work_.size(); ++i) {
      if (mask[i]) free.add(work_[i].available());
    }
    if (!need.fits_in(free)) return false;

    std::vector<double> sizes;
    for (const auto& [name, total] : need.amounts()) {
      if (total <= kEpsilon) continue;
      sizes.clear();
      for (const ResourceRequest* bundle : bundles) {
        const double amount = bundle->amounts.get(name);
        if (amount > kEpsilon) sizes.push_back(amount);
      }
      std::sort(sizes.begin(), sizes.end(), std::greater<>());
      for (std::size_t k = 1; k <= sizes.size(); ++k) {
        if (k < sizes.size() && sizes[k] >= sizes[k - 1] - kEpsilon) continue;  // same size
        const double size = sizes[k - 1];
        double slots = 0;
        for (std::size_t i = 0; i < work_.size() && slots < static_cast<double>(k); ++i) {
          if (!mask[i]) continue;
          slots += name == kGpu ? gpu_slots(work_[i], size)
                                : std::floor((work_[i].available().get(name) + kEpsilon) / size);
        }
        if (slots < static_cast<double>(k)) return false;
      }
    }

    std::vector<char> counted(bundles.size(), 0);
    for (std::size_t a = 0; a < bundles.size(); ++a) {
      if (counted[a]) continue;
      double copies = 0;
      for (std::size_t b = a; b < bundles.size(); ++b) {
        if (!counted[b] && *bundles[b] == *bundles[a]) {
          counted[b] = 1;
          ++copies;
        }
      }
      double room = 0;
      for (std::size_t i = 0; i < work_.size() && room < copies; ++i) {
        if (mask[i]) room += copies_fit(work_[i], *bundles[a], copies);
      }
      if (room < copies) return false;
    }
    return true;
  }

  static double gpu_slots(const NodeState& node, double size) {
    double slots = 0;
    for (std::size_t slot = 0; slot < node.gpus().size(); ++slot) {
      if (detail::is_fractional(size)) {
        slots += std::floor((node.gpu_free(slot) + kEpsilon) / size);
      } else if (node.gpu_allocated(slot) <= kEpsilon) {
        slots += 1;
      }
    }
    return detail::is_fractional(size) ? slots : std::floor(slots / std::round(size));
  }

  // Nodes in the same state holding as many of this group's bundles lead to
  // mirror-image subtrees: only the first one is tried. Without this, k equal
  // idle nodes multiply the search by k!.
  bool interchangeable(std::size_t a, std::size_t b) const {
    return on_node_[a] == on_node_[b] && same_state(work_[a], work_[b]);
  }

  // How many other remaining bundles would still fit, one at a time, on
  // `node` once `bundle` takes `gpus` there: PACK opens the node with most
  // room.
  int room_after(std::size_t node, std::size_t bundle, const std::vector<int>& gpus) {
    const ResourceRequest& request = requests_[bundle];
    work_[node].allocate(request.amounts, gpus);
    int room = 0;
    for (std::size_t b = 0; b < requests_.size(); ++b) {
      if (b != bundle && !placed_[b] && detail::fits_now(work_[node], requests_[b])) ++room;
    }
    work_[node].release(request.amounts, gpus);
    return room;
  }

  std::vector<Candidate> candidates(std::size_t bundle) {
    const ResourceRequest& request = requests_[bundle];
    // Canonical order: equal bundles are placed in `order` (the fewest-nodes
    // rule cannot tell them apart), and each may not come before the one
    // placed last among them.
    const BundlePlacement* previous = nullptr;
    if (canonical_) {
      for (auto it = stack_.rbegin(); it != stack_.rend(); ++it) {
        if (requests_[*it] == request) {
          previous = &placements_[*it];
          break;
        }
      }
    }
    std::vector<Candidate> out;
    std::vector<std::size_t> representatives;  // nodes already offered, one per kind
    for (std::size_t i = 0; i < work_.size(); ++i) {
      if (previous && static_cast<int>(i) < previous->node) continue;
      const NodeState& node = work_[i];
      if (!request.amounts.fits_in(node.available())) continue;
      if (std::any_of(representatives.begin(), representatives.end(),
                      [&](std::size_t r) { return interchangeable(r, i); })) {
        continue;
      }
      representatives.push_back(i);
      bool truncated = false;
      std::vector<std::vector<int>> choices = detail::gpu_choices(node, request, kChoiceLimit, &truncated);
      if (truncated) complete_ = false;
      const bool unused = on_node_[i] == 0;
      const int room =
          strategy_ == Strategy::PACK && unused && !choices.empty() ? room_after(i, bundle, choices.front()) : 0;
      for (std::size_t rank = 0; rank < choices.size(); ++rank) {
        if (previous && static_cast<int>(i) == previous->node && choices[rank] < previous->gpus) continue;
        const detail::FitScore fit = detail::score(node, request, choices[rank]);
        Key key;
        switch (strategy_) {
          case Strategy::PACK: key = Key{unused ? 1 : 0, -room, fit, i, rank}; break;
          case Strategy::SPREAD: key = Key{on_node_[i], 0, fit, i, rank}; break;
          default: key = Key{0, 0, fit, i, rank}; break;
        }
        out.push_back({key, i, std::move(choices[rank])});
      }
    }
    std::sort(out.begin(), out.end(),
              [](const Candidate& a, const Candidate& b) { return a.key < b.key; });
    return out;
  }

  bool dfs(std::size_t placed) {
    if (placed == requests_.size()) return true;
    std::size_t bundle = 0;
    if (!may_fit(&bundle)) return false;
    const ResourceRequest& request = requests_[bundle];
    for (Candidate& candidate : candidates(bundle)) {
      if (--budget_ < 0) {
        out_of_steps_ = true;
        return false;
      }
      NodeState& node = work_[candidate.node];
      node.allocate(request.amounts, candidate.gpus);
      ++on_node_[candidate.node];
      placed_[bundle] = 1;
      stack_.push_back(bundle);
      placements_[bundle] = {static_cast<int>(candidate.node), candidate.gpus, request.amounts};
      if (dfs(placed + 1)) return true;
      stack_.pop_back();
      placed_[bundle] = 0;
      --on_node_[candidate.node];
      node.release(request.amounts, candidate.gpus);
      if (out_of_steps_) return false;
    }
    return false;
  }

  std::vector<NodeState> work_;
  const std::vector<ResourceRequest>& requests_;
  const std::vector<std::size_t>& order_;
  Strategy strategy_;
  long greedy_budget_;
  long full_budget_;
  long budget_ = 0;
  bool canonical_ = false;
  bool out_of_steps_ = false;
  bool complete_ = true;       // false once a choice list was cut
  std::vector<int> on_node_;   // bundles of this group per node
  std::vector<char> placed_;   // per bundle
  std::vector<std::size_t> stack_;  // bundles in the order placed
  std::vector<BundlePlacement> placements_;
};

ResourceSet sum_of(const std::vector<ResourceRequest>& requests) {
  ResourceSet sum;
  for (const ResourceRequest& request : requests) sum.add(request.amounts);
  return sum;
}

// All bundles on one node: each node is searched on its own (a node in the
// same state as one already searched is skipped: same outcome, higher
// index); the node left tightest wins (GPU nodes last for groups without
// GPUs, then least free share of the requested resources, then lowest
// index).
Solution strict_pack(std::span<const NodeState> nodes, const std::vector<ResourceRequest>& requests,
                     const std::vector<std::size_t>& order) {
  Solution solution;
  const ResourceSet sum = sum_of(requests);
  const bool wants_gpus = sum.get(kGpu) > kEpsilon;
  // Single-node searches are cheap per step; the budget is shared.
  const long per_node = std::max(500L, kSearchBudget / static_cast<long>(std::max<std::size_t>(1, nodes.size())));
  std::optional<std::tuple<int, double, std::size_t>> best;
  std::vector<std::size_t> searched;
  for (std::size_t i = 0; i < nodes.size(); ++i) {
    if (!sum.fits_in(nodes[i].available())) continue;  // a proof: everything is taken from one node
    if (std::any_of(searched.begin(), searched.end(),
                    [&](std::size_t j) { return same_state(nodes[j], nodes[i]); })) {
      continue;
    }
    searched.push_back(i);
    GroupSearch search(nodes.subspan(i, 1), requests, order, Strategy::STRICT_PACK, per_node, per_node);
    if (!search.run()) {
      if (!search.complete()) solution.proven = false;
      continue;
    }
    const NodeState& after = search.work().front();
    double left = 0;
    for (const auto& [name, amount] : sum.amounts()) {
      const double total = after.total().get(name);
      if (amount > kEpsilon && total > kEpsilon) left += after.available().get(name) / total;
    }
    const auto key = std::make_tuple(!wants_gpus && !after.gpus().empty() ? 1 : 0,
                                     std::round(left * 1e9) / 1e9, i);
    if (!best || key < *best) {
      best = key;
      solution.placements = search.placements();
      for (BundlePlacement& placement : solution.placements) placement.node = static_cast<int>(i);
    }
  }
  solution.found = best.has_value();
  return solution;
}

// One bundle per node: a bipartite matching (Kuhn's augmenting paths), each
// bundle trying nodes in best-fit order. Exact: a node holds one bundle, so
// its GPU choice never affects another bundle. `matched` receives the size of
// a maximum matching.
Solution strict_spread(std::span<const NodeState> nodes, const std::vector<ResourceRequest>& requests,
                       const std::vector<std::size_t>& order, std::size_t* matched = nullptr) {
  std::vector<std::vector<std::size_t>> edges(requests.size());
  for (std::size_t b = 0; b < requests.size(); ++b) {
    std::vector<std::pair<detail::FitScore, std::size_t>> fits;
    for (std::size_t i = 0; i < nodes.size(); ++i) {
      if (!requests[b].amounts.fits_in(nodes[i].available())) continue;
      auto choices = detail::gpu_choices(nodes[i], requests[b], 1);
      if (!choices.empty()) fits.emplace_back(detail::score(nodes[i], requests[b], choices.front()), i);
    }
    std::sort(fits.begin(), fits.end());
    for (const auto& fit : fits) edges[b].push_back(fit.second);
  }

  std::vector<int> bundle_on(nodes.size(), -1);
  std::vector<char> visited(nodes.size());
  auto augment = [&](auto& self, std::size_t b) -> bool {
    for (std::size_t i : edges[b]) {
      if (visited[i]) continue;
      visited[i] = 1;
      if (bundle_on[i] < 0 || self(self, static_cast<std::size_t>(bundle_on[i]))) {
        bundle_on[i] = static_cast<int>(b);
        return true;
      }
    }
    return false;
  };
  std::size_t count = 0;
  for (std::size_t b : order) {
    std::fill(visited.begin(), visited.end(), 0);
    if (augment(augment, b)) ++count;
  }
  if (matched) *matched = count;

  Solution solution;
  solution.found = count == requests.size();
  if (!solution.found) return solution;
  solution.placements.resize(requests.size());
  for (std::size_t i = 0; i < nodes.size(); ++i) {
    if (bundle_on[i] < 0) continue;
    const auto b = static_cast<std::size_t>(bundle_on[i]);
    solution.placements[b] = {static_cast<int>(i), detail::gpu_choices(nodes[i], requests[b], 1).front(),
                              requests[b].amounts};
  }
  return solution;
}

Solution search_all(std::span<const NodeState> nodes, const std::vector<ResourceRequest>& requests,
                    const std::vector<std::size_t>& order, Strategy strategy) {
  GroupSearch search(nodes, requests, order, strategy, kGreedyBudget, kSearchBudget);
  Solution solution;
  solution.found = search.run();
  solution.proven = search.complete();
  if (solution.found) solution.placements = search.placements();
  return solution;
}

Solution solve(std::span<const NodeState> nodes, const std::vector<ResourceRequest>& requests,
               Strategy strategy) {
  const std::vector<std::size_t> order = hardest_first(requests);
  switch (strategy) {
    case Strategy::STRICT_PACK: return strict_pack(nodes, requests, order);
    case Strategy::STRICT_SPREAD: return strict_spread(nodes, requests, order);
    case Strategy::PACK: {
      Solution packed = strict_pack(nodes, requests, order);
      if (packed.found) return packed;
      return search_all(nodes, requests, order, Strategy::PACK);
    }
    case Strategy::SPREAD: return search_all(nodes, requests, order, Strategy::SPREAD);
  }
  return {};
}

std::string list_bundles(const std::vector<ResourceRequest>& requests) {
  std::string out;
  for (std::size_t b = 0; b < requests.size() && b < kBundlesListed; ++b) {
    if (!out.empty()) out += "; ";
    out += fmt::format("{{{}}}", to_string(requests[b]));
  }
  if (requests.size() > kBundlesListed) {
    out += fmt::format("; ... and {} more", requests.size() - kBundlesListed);
  }
  return out;
}

// What the whole group needs: the summed amounts, plus the GPU constraints.
std::string group_need(const std::vector<ResourceRequest>& requests) {
  std::string out = sum_of(requests).to_string();
  std::vector<std::string> types;
  for (const ResourceRequest& request : requests) {
    if (!request.gpu_type.empty() &&
        std::find(types.begin(), types.end(), request.gpu_type) == types.end()) {
      types.push_back(request.gpu_type);
    }
  }
  if (!types.empty()) out += fmt::format(", GPU types {}", fmt::join(types, "/"));
  return out;
}

std::string explain_group_infeasible(std::span<const NodeState> idle,
                                     const std::vector<ResourceRequest>& requests,
                                     Strategy strategy) {
  const std::size_t n = requests.size();
  switch (strategy) {
    case Strategy::STRICT_PACK:
      return fmt::format("STRICT_PACK: no single node can hold all {} bundles together (they need {}; "
                         "nodes have: {})",
                         n, group_need(requests), detail::describe_free(idle, requests));
    case Strategy::STRICT_SPREAD: {
      std::size_t matched = 0;
      strict_spread(idle, requests, hardest_first(requests), &matched);
      return fmt::format("STRICT_SPREAD: {} bundles need {} distinct nodes, but at most {} of them can "
                         "be placed on distinct nodes (nodes have: {})",
                         n, n, matched, detail::describe_free(idle, requests));
    }
    default:
      return fmt::format("{}: the {} bundles do not fit on the cluster even when it is idle (they need "
                         "{}; nodes have: {})",
                         to_string(strategy), n, group_need(requests),
                         detail::describe_free(idle, requests));
  }
}

template <bool kRelease>
void apply_group(std::span<NodeState> nodes, const GroupPlacement& group) {
  if (!group.placed()) {
    throw AllocationError(fmt::format("cannot apply a placement group that is {}: {}",
                                      to_string(group.status), group.reason));
  }
  // Work on copies of the touched nodes and install them only when every
  // bundle succeeded: all or nothing.
  std::vector<std::pair<std::size_t, NodeState>> staged;
  for (std::size_t b = 0; b < group.bundles.size(); ++b) {
    const BundlePlacement& bundle = group.bundles[b];
    if (bundle.node < 0 || static_cast<std::size_t>(bundle.node) >= nodes.size()) {
      throw AllocationError(fmt::format("bundle {} names node {} of {}", b, bundle.node, nodes.size()));
    }
    const auto index = static_cast<std::size_t>(bundle.node);
    auto it = std::find_if(staged.begin(), staged.end(), [&](const auto& s) { return s.first == index; });
    if (it == staged.end()) {
      staged.emplace_back(index, nodes[index]);
      it = std::prev(staged.end());
    }
    try {
      if constexpr (kRelease) {
        it->second.release(bundle.amounts, bundle.gpus);
      } else {
        it->second.allocate(bundle.amounts, bundle.gpus);
      }
    } catch (const AllocationError& e) {
      throw AllocationError(fmt::format("bundle {}: {}", b, e.message()));
    }
  }
  for (auto& [index, state] : staged) nodes[index] = std::move(state);
}

}  // namespace

Strategy parse_strategy(std::string_view text) {
  std::string folded = detail::to_lower(detail::trim(text));
  std::replace(folded.begin(), folded.end(), '-', '_');
  for (Strategy strategy :
       {Strategy::PACK, Strategy::SPREAD, Strategy::STRICT_PACK, Strategy::STRICT_SPREAD}) {
    if (detail::iequals(folded, to_string(strategy))) return strategy;
  }
  throw SpecError(fmt::format(
      "unknown placement strategy \"{}\" (expected PACK, SPREAD, STRICT_PACK or STRICT_SPREAD)", text));
}

std::string_view to_string(Strategy strategy) noexcept {
  switch (strategy) {
    case Strategy::PACK: return "PACK";
    case Strategy::SPREAD: return "SPREAD";
    case Strategy::STRICT_PACK: return "STRICT_PACK";
    case Strategy::STRICT_SPREAD: return "STRICT_SPREAD";
  }
  return "UNKNOWN";
}

GroupPlacement place_group(std::span<const NodeState> nodes, std::span<const Bundle> bundles,
                           Strategy strategy) {
  if (bundles.empty()) throw SpecError("a placement group needs at least one bundle");
  std::vector<ResourceRequest> requests;
  requests.reserve(bundles.size());
  for (std::size_t b = 0; b < bundles.size(); ++b) {
    try {
      requests.push_back(normalize(bundles[b]));
    } catch (const SpecError& e) {
      throw SpecError(fmt::format("bundle {}: {}", b, e.message()));
    }
  }

  GroupPlacement group;
  Solution now = solve(nodes, requests, strategy);
  if (now.found) {
    group.status = PlacementStatus::placed;
    group.bundles = std::move(now.placements);
    return group;
  }

  const std::vector<NodeState> idle = detail::idle_copies(nodes);
  auto infeasible = [&](std::string why) {
    group.status = PlacementStatus::infeasible;
    group.reason = "infeasible: " + std::move(why);
    return group;
  };
  for (std::size_t b = 0; b < requests.size(); ++b) {
    if (std::none_of(idle.begin(), idle.end(),
                     [&](const NodeState& node) { return detail::fits_now(node, requests[b]); })) {
      return infeasible(fmt::format("bundle {} ({}): {}", b, to_string(requests[b]),
                                    detail::explain_infeasible(idle, requests[b])));
    }
  }
  if (strategy == Strategy::STRICT_SPREAD && requests.size() > nodes.size()) {
    return infeasible(fmt::format("STRICT_SPREAD needs {} distinct nodes for {} bundles, but the "
                                  "cluster has {} node(s)",
                                  requests.size(), requests.size(), nodes.size()));
  }
  const Solution when_idle = solve(idle, requests, strategy);
  if (!when_idle.found && when_idle.proven) {
    return infeasible(explain_group_infeasible(idle, requests, strategy));
  }

  group.status = PlacementStatus::insufficient;
  group.reason = fmt::format("insufficient: waiting for resources ({} group of {} bundle(s): {}; free: {})",
                             to_string(strategy), requests.size(), list_bundles(requests),
                             detail::describe_free(nodes, requests));
  if (!when_idle.found) {
    group.reason += "; the search stopped at its step limit, so the group may never fit";
  }
  return group;
}

void allocate_group(std::span<NodeState> nodes, const GroupPlacement& group) {
  apply_group<false>(nodes, group);
}

void release_group(std::span<NodeState> nodes, const GroupPlacement& group) {
  apply_group<true>(nodes, group);
}

}  // namespace troupe::scheduler
