// Placing one actor: which node, which GPU(s).
//
// place() is a pure function of the node states and the request; the caller
// (local mode, or the head's scheduler strand) then allocate()s the decision
// on the same states. Nothing fitting is a normal outcome, returned as a value
// that says whether waiting can help (insufficient) or not (infeasible).
//
// Policy: best fit. Among all (node, GPU) choices that fit now, place()
// takes the one that is tightest, comparing in this order:
//  1. a request without GPUs prefers a node without GPUs, so GPU nodes stay
//     free for GPU work;
//  2. a fractional request prefers the GPU whose free share it fills most
//     (least share left over), so shared GPUs fill up before fresh ones
//     are broken into;
//  3. GPU requests prefer the GPUs with the least device memory that still
//     satisfy them (least memory left over), keeping large GPUs for the
//     requests that need them;
//  4. the node with the least left over after placing: the sum over the
//     requested resources of free/total after the allocation;
//  5. the lowest node index, then the lowest GPU indexes (deterministic).
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "troupe/scheduler/resources.hpp"

namespace troupe::scheduler {

// What an actor (or a placement group bundle) needs.
//
// amounts["GPU"] is a count of GPUs: below one means a share of one GPU,
// one or more must be a whole number. gpu_type restricts which GPU models
// qualify (see gpu_model_matches); gpu_memory_bytes is the least device
// memory each assigned GPU must have (its total, not a reservation). Either
// constraint with no GPU amount implies GPU=1. A key "GPU:<type>" in amounts
// (the resource name DESIGN.md uses) is the same as gpu_type=<type> with
// GPU=<its amount>.
struct ResourceRequest {
  ResourceSet amounts;
  std::string gpu_type;
  std::uint64_t gpu_memory_bytes = 0;

  friend bool operator==(const ResourceRequest&, const ResourceRequest&) = default;
};

// The canonical form every placement function uses: "GPU:<type>" folded into
// gpu_type, the implied GPU=1 added, gpu_type trimmed. Throws SpecError for a
// fractional GPU count above one (GPU=1.5), conflicting GPU types
// ("GPU:H100" with gpu_type "T4", or two "GPU:<type>" keys), a "GPU:<type>"
// amount that disagrees with "GPU", or an empty type in "GPU:".
ResourceRequest normalize(const ResourceRequest& request);

// "CPU=1, GPU=1, gpu_type=H100, gpu_memory=40GiB" (amounts as written, then
// the constraints that are set).
std::string to_string(const ResourceRequest& request);

// JSON: {"amounts": {...}, "gpu_type": "H100", "gpu_memory_bytes": 0};
// missing keys read as empty. Throws SpecError for malformed input.
void to_json(nlohmann::json& j, const ResourceRequest& request);
void from_json(const nlohmann::json& j, ResourceRequest& request);

// Whether `gpu` meets the type and memory constraints of `request`
// (normalized or not); says nothing about whether it is free.
bool gpu_satisfies(const GpuInfo& gpu, const ResourceRequest& request);

enum class PlacementStatus {
  placed,
  // Fits on some node once enough is released; worth waiting for.
  insufficient,
  // Fits on no node of the cluster even when every node is idle: waiting
  // cannot help unless nodes join. The head reports it as reason code
  // Errc::unschedulable on the actor (left PENDING) or the placement group
  // (INFEASIBLE), which are placed once a node that fits joins.
  infeasible,
};
std::string_view to_string(PlacementStatus status) noexcept;

struct PlacementDecision {
  PlacementStatus status = PlacementStatus::infeasible;
  int node = -1;          // index into the node span given to place()
  std::vector<int> gpus;  // GpuInfo::index values on that node (CUDA ordinals)
  ResourceSet amounts;    // the normalized amounts to allocate, GPU included
  // Unless placed: why, for people, starting with "infeasible: " or
  // "insufficient: " and naming the constraint, e.g.
  //   infeasible: no node has a GPU of type T4 (cluster has: H100-80GB x2, A100-40GB x1)
  //   insufficient: waiting for resources (requested GPU=1, gpu_type=H100; free: a{GPU=0}, ...)
  std::string reason;

  bool placed() const noexcept { return status == PlacementStatus::placed; }
  explicit operator bool() const noexcept { return placed(); }
};

// Chooses a node and GPU(s) for `request` by the best-fit policy above.
// Throws SpecError when the request is malformed (see normalize()).
PlacementDecision place(std::span<const NodeState> nodes, const ResourceRequest& request);

// Applies / undoes a placed decision on the states it was computed from.
// Throws AllocationError (nothing changed) when the decision is not placed,
// its node index is out of range or it no longer fits.
void allocate(std::span<NodeState> nodes, const PlacementDecision& decision);
void release(std::span<NodeState> nodes, const PlacementDecision& decision);

// "H100-80GB x2, A100-40GB x1" over all nodes, models in first-seen order;
// "no GPUs" for none. Used in infeasibility reasons and `troupe status`.
std::string describe_gpu_inventory(std::span<const NodeState> nodes);

}  // namespace troupe::scheduler
