// Private building blocks of place() and place_group(): enumerating GPU
// choices on one node, scoring a choice by the best-fit policy documented in
// placement.hpp, and explaining why nothing fits.
#pragma once

#include <compare>
#include <cstddef>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "troupe/scheduler/placement.hpp"
#include "troupe/scheduler/resources.hpp"

namespace troupe::scheduler::detail {

// Lower is tighter; fields compare in the order of the policy in
// placement.hpp (the node index comes last, from the caller).
struct FitScore {
  int cpu_work_on_gpu_node = 0;  // 1: a request without GPUs on a node with GPUs
  double fraction_left = 0;      // free share left on the shared GPU (fractional requests)
  double gpu_memory = 0;         // device memory of the chosen GPUs, bytes
  double node_left = 0;          // sum over requested resources of free/total afterwards

  auto operator<=>(const FitScore&) const = default;
};

// Number of GPUs asked for by a normalized request: 0, a share below one, or
// a whole number.
double gpu_amount(const ResourceRequest& request) noexcept;
bool is_fractional(double gpus) noexcept;

// The GPU choices for a normalized `request` on `node` as it is now, best
// first by the policy. GPUs that are interchangeable (same model, memory and
// allocated share) are offered once, by their lowest indexes, so the list is
// short. At most `limit` choices; `*truncated` (if given) is set when more
// existed. A request without GPUs has exactly one, empty, choice; an empty
// list means no GPU choice fits. Ignores the non-GPU amounts.
std::vector<std::vector<int>> gpu_choices(const NodeState& node, const ResourceRequest& request,
                                          std::size_t limit, bool* truncated = nullptr);

// Whether the request fits `node` now: amounts and at least one GPU choice.
bool fits_now(const NodeState& node, const ResourceRequest& request);

FitScore score(const NodeState& node, const ResourceRequest& request, std::span<const int> gpus);

// Node states with the same NodeInfo and nothing allocated: "the cluster when
// idle", against which infeasibility is judged.
std::vector<NodeState> idle_copies(std::span<const NodeState> nodes);

// Why `request` fits on no node of `idle_nodes` (all idle), without the
// "infeasible: " prefix, naming the first constraint no node meets.
std::string explain_infeasible(std::span<const NodeState> idle_nodes,
                               const ResourceRequest& request);

// "H100-80GB x2, A100-40GB x1" (with_memory: "H100-80GB (80GiB) x2"), models
// in first-seen order, or "no GPUs".
std::string gpu_inventory(std::span<const NodeState> nodes, bool with_memory);

// "a{CPU=2, GPU=0}, b{CPU=4, GPU=1}" for the first few nodes, showing the
// free amounts of the resource names in `requests` (GPU always, when any
// request wants GPUs). When every request wanting GPUs has the same GPU type
// or memory constraint, the GPU column counts only matching GPUs
// ("GPU(H100)=0").
std::string describe_free(std::span<const NodeState> nodes,
                          std::span<const ResourceRequest> requests);

}  // namespace troupe::scheduler::detail
