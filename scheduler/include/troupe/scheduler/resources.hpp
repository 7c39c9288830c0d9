// Resources of a node and the book-keeping of what is allocated on it.
//
// A ResourceSet holds named, non-negative quantities: "CPU" (cores), "GPU"
// (devices; fractions allowed below one), "memory" (bytes of host RAM) and any
// custom name. A NodeInfo is what a worker reports (or a test declares); a
// NodeState adds what is still free, including the share taken of each GPU.
// All of this is plain data: no threads, no I/O. The head (or local mode)
// owns the NodeStates and mutates them from one strand.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <initializer_list>
#include <map>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "troupe/scheduler/error.hpp"

namespace troupe::scheduler {

inline constexpr std::string_view kCpu = "CPU";
inline constexpr std::string_view kGpu = "GPU";
inline constexpr std::string_view kMemory = "memory";

// Every node offers "node:<node name>" (Ray's node resource): the node
// manager adds it at registration (the name is the node id's first 12 hex
// digits, as `troupe status` shows it; "local" in local mode), with a
// capacity no sensible request exhausts, so a bundle or actor asking for
// {"node:<name>": kNodeResourceRequest} is pinned to that node.
inline constexpr std::string_view kNodeResourcePrefix = "node:";
inline constexpr double kNodeResourceCapacity = 1000;
inline constexpr double kNodeResourceRequest = 0.001;
// "node:" + node_name.
std::string node_resource(std::string_view node_name);
// True for names that start with kNodeResourcePrefix.
bool is_node_resource(std::string_view name) noexcept;

// Quantities closer than this are equal. Fractional GPUs (0.1 + 0.2 ...) and
// repeated allocate/release would otherwise drift; memory is counted in whole
// bytes, so an absolute tolerance far below one is safe for it too.
inline constexpr double kEpsilon = 1e-6;

// Named non-negative quantities. A name that was never set reads as 0; a name
// set to 0 is kept (so "free: GPU=0" can be shown) but compares equal to an
// absent one.
class ResourceSet {
 public:
  using Map = std::map<std::string, double, std::less<>>;

  ResourceSet() = default;
  // ResourceSet{{"CPU", 4}, {"GPU", 1}}; throws SpecError like set().
  ResourceSet(std::initializer_list<std::pair<std::string_view, double>> amounts);

  // 0 for a name that is absent.
  double get(std::string_view name) const noexcept;
  bool contains(std::string_view name) const noexcept;
  // Throws SpecError for an empty name or a negative, NaN or infinite amount.
  // Values within kEpsilon of an integer are stored as that integer.
  void set(std::string_view name, double amount);
  void erase(std::string_view name);

  // True when every quantity is (epsilon-)zero.
  bool empty() const noexcept;
  const Map& amounts() const noexcept { return amounts_; }

  // True when every quantity here is at most the same quantity in
  // `available` (with kEpsilon slack); absent names there count as 0.
  bool fits_in(const ResourceSet& available) const noexcept;

  // Adds every quantity of `other`.
  void add(const ResourceSet& other);
  // Subtracts every quantity of `other`. Throws AllocationError naming the
  // resource when a result would fall below zero by more than kEpsilon (the
  // set is then unchanged); results within kEpsilon of zero become 0.
  void subtract(const ResourceSet& other);

  ResourceSet& operator+=(const ResourceSet& other) { add(other); return *this; }
  ResourceSet& operator-=(const ResourceSet& other) { subtract(other); return *this; }
  friend ResourceSet operator+(ResourceSet a, const ResourceSet& b) { a.add(b); return a; }
  friend ResourceSet operator-(ResourceSet a, const ResourceSet& b) { a.subtract(b); return a; }

  // Equal when every name has the same quantity within kEpsilon (absent = 0).
  friend bool operator==(const ResourceSet& a, const ResourceSet& b) noexcept;

  // For people, not machines (use JSON for that): "CPU=4, GPU=0.5,
  // memory=16GiB", names in sorted order; "{}" when there are no names.
  std::string to_string() const;

 private:
  Map amounts_;
};

// JSON form: an object of numbers, {"CPU": 4, "GPU": 0.5, "memory": 17179869184}.
// from_json throws SpecError for a non-object, a non-number or a negative value.
void to_json(nlohmann::json& j, const ResourceSet& resources);
void from_json(const nlohmann::json& j, ResourceSet& resources);

// "80GiB", "512MiB", "1.50GiB", "123B": the largest binary unit not above the
// value, whole when exact, else with two decimals. For messages.
std::string format_bytes(double bytes);

// One GPU of a node, as detected through the CUDA runtime or declared in a
// GPU spec (see gpu_spec.hpp).
struct GpuInfo {
  int index = 0;                   // CUDA ordinal on its node: what CUDA_VISIBLE_DEVICES names
  std::string model;               // "H100-80GB", or the CUDA device name "NVIDIA H100 80GB HBM3"
  std::uint64_t memory_bytes = 0;  // device memory; 0 = unknown
  int sm_count = 0;                // 0 = unknown (declared GPUs)
  int cc_major = 0;                // compute capability; 0.0 = unknown
  int cc_minor = 0;
  bool declared = false;           // from a spec, not a real device
  std::vector<int> peers;          // indexes of GPUs this one reaches by peer access (NVLink/P2P)

  friend bool operator==(const GpuInfo&, const GpuInfo&) = default;
};

void to_json(nlohmann::json& j, const GpuInfo& gpu);
void from_json(const nlohmann::json& j, GpuInfo& gpu);

// What a node offers. `total` holds every quantity including "GPU"; its GPU
// count equals gpus.size() (NodeState fills it in when absent).
struct NodeInfo {
  std::string node_id;
  std::string address;  // where its node manager listens; empty in local mode
  ResourceSet total;
  std::vector<GpuInfo> gpus;

  friend bool operator==(const NodeInfo&, const NodeInfo&) = default;
};

void to_json(nlohmann::json& j, const NodeInfo& node);
void from_json(const nlohmann::json& j, NodeInfo& node);

// A node's resources and what is free on it right now.
//
// Invariants, kept by allocate()/release():
//  - 0 <= available[r] <= total[r] for every resource r (within kEpsilon);
//  - each GPU's allocated share is in [0, 1];
//  - available["GPU"] == gpus().size() - sum of allocated shares.
// GPUs are either taken whole (requests of one GPU or more) or shared by
// fractional requests (below one GPU), never split across both kinds: a GPU
// with any fractional share allocated is not free for a whole-GPU request.
class NodeState {
 public:
  // Throws SpecError when `info` is inconsistent: duplicate GPU indexes, or a
  // total "GPU" that differs from gpus.size(). An absent total "GPU" is set to
  // gpus.size(). Everything starts free.
  explicit NodeState(NodeInfo info);

  const NodeInfo& info() const noexcept { return info_; }
  const std::string& node_id() const noexcept { return info_.node_id; }
  const std::vector<GpuInfo>& gpus() const noexcept { return info_.gpus; }
  const ResourceSet& total() const noexcept { return info_.total; }
  const ResourceSet& available() const noexcept { return available_; }

  // Share of gpus()[slot] allocated, in [0, 1]; slot is a position in gpus(),
  // not a CUDA index. Throws std::out_of_range for a bad slot.
  double gpu_allocated(std::size_t slot) const { return gpu_allocated_.at(slot); }
  double gpu_free(std::size_t slot) const { return 1.0 - gpu_allocated_.at(slot); }
  // Position in gpus() of the GPU with CUDA index `gpu_index`, or -1.
  int gpu_slot(int gpu_index) const noexcept;
  // True when nothing at all is allocated.
  bool idle() const noexcept;

  // Whether allocate(amounts, gpu_indexes) would succeed; when not, the
  // reason is written to `why` (if given).
  bool can_allocate(const ResourceSet& amounts, std::span<const int> gpu_indexes,
                    std::string* why = nullptr) const;

  // Takes `amounts` from available() and marks the GPUs (by CUDA index). The
  // GPU indexes must agree with amounts["GPU"] = g:
  //   g == 0     -> no indexes;
  //   0 < g < 1  -> exactly one index, of a GPU with at least g free;
  //   g >= 1     -> g (a whole number) distinct indexes of fully free GPUs.
  // Throws AllocationError (state unchanged) otherwise or when amounts do not
  // fit available().
  void allocate(const ResourceSet& amounts, std::span<const int> gpu_indexes);
  // Gives back what allocate() took. Throws AllocationError (state unchanged)
  // when that would exceed the totals or free a GPU share not allocated.
  void release(const ResourceSet& amounts, std::span<const int> gpu_indexes);

 private:
  bool check(const ResourceSet& amounts, std::span<const int> gpu_indexes, bool releasing,
             std::string* why) const;

  NodeInfo info_;
  ResourceSet available_;
  std::vector<double> gpu_allocated_;  // parallel to info_.gpus
};

// Snapshot for `troupe status` and logs: the NodeInfo fields plus
// "available" and, per GPU, "allocated" (its allocated share).
void to_json(nlohmann::json& j, const NodeState& node);

}  // namespace troupe::scheduler
