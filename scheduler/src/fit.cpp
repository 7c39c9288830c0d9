#include "fit.hpp"

#include <algorithm>
#include <cmath>
#include <set>
#include <tuple>
#include <utility>

#include <fmt/format.h>

#include "text.hpp"

namespace troupe::scheduler::detail {

namespace {

// How many nodes a message lists before "... and N more".
constexpr std::size_t kNodesListed = 8;
// Compositions of a whole-GPU request enumerated per node before sorting.
constexpr std::size_t kCompositionCap = 256;

double round9(double value) { return std::round(value * 1e9) / 1e9; }

// GPUs that are interchangeable for every request: same model (case-folded)
// and memory. Allocated share is added by the fractional case.
struct GpuClass {
  std::string model;
  std::uint64_t memory = 0;
  std::vector<int> slots;  // positions in node.gpus(), in index order
};

std::string with_more(std::vector<std::string> parts, std::size_t total) {
  std::string out;
  for (const std::string& part : parts) {
    if (!out.empty()) out += ", ";
    out += part;
  }
  if (total > parts.size()) out += fmt::format(", ... and {} more", total - parts.size());
  return out;
}

std::string gpu_phrase(const ResourceRequest& request, bool plural) {
  std::string out = plural ? "GPUs" : "GPU";
  if (!request.gpu_type.empty()) out += fmt::format(" of type {}", request.gpu_type);
  if (request.gpu_memory_bytes > 0) {
    out += fmt::format(" with at least {} of memory",
                       format_bytes(static_cast<double>(request.gpu_memory_bytes)));
  }
  return out;
}

}  // namespace

std::string gpu_inventory(std::span<const NodeState> nodes, bool with_memory) {
  std::vector<std::pair<std::string, int>> counts;  // label, count in first-seen order
  for (const NodeState& node : nodes) {
    for (const GpuInfo& gpu : node.gpus()) {
      std::string label = gpu.model;
      if (with_memory) {
        label += fmt::format(" ({})", gpu.memory_bytes > 0
                                          ? format_bytes(static_cast<double>(gpu.memory_bytes))
                                          : std::string("memory unknown"));
      }
      auto it = std::find_if(counts.begin(), counts.end(),
                             [&](const auto& entry) { return entry.first == label; });
      if (it == counts.end()) {
        counts.emplace_back(std::move(label), 1);
      } else {
        ++it->second;
      }
    }
  }
  if (counts.empty()) return "no GPUs";
  std::string out;
  for (const auto& [label, count] : counts) {
    if (!out.empty()) out += ", ";
    out += fmt::format("{} x{}", label, count);
  }
  return out;
}

namespace {

int matching_gpus(const NodeState& node, const ResourceRequest& request) {
  return static_cast<int>(std::count_if(node.gpus().begin(), node.gpus().end(), [&](const GpuInfo& gpu) {
    return gpu_satisfies(gpu, request);
  }));
}

// The first thing `node` (idle) lacks for `request`, or "" when it fits.
std::string misfit(const NodeState& node, const ResourceRequest& request) {
  const double gpus = gpu_amount(request);
  if (gpus > kEpsilon) {
    const int needed = is_fractional(gpus) ? 1 : static_cast<int>(std::llround(gpus));
    const int have = matching_gpus(node, request);
    if (have < needed) {
      return have == 0 ? fmt::format("no {}", gpu_phrase(request, false))
                       : fmt::format("{} of {} {} needed", have, needed, gpu_phrase(request, true));
    }
  }
  for (const auto& [name, amount] : request.amounts.amounts()) {
    if (name == kGpu || amount <= kEpsilon) continue;
    const double total = node.total().get(name);
    if (total + kEpsilon < amount) {
      return fmt::format("{}={} < {}", name, format_amount(name, total), format_amount(name, amount));
    }
  }
  return {};
}

}  // namespace

double gpu_amount(const ResourceRequest& request) noexcept { return request.amounts.get(kGpu); }

bool is_fractional(double gpus) noexcept { return gpus > kEpsilon && gpus < 1.0 - kEpsilon; }

std::vector<std::vector<int>> gpu_choices(const NodeState& node, const ResourceRequest& request,
                                          std::size_t limit, bool* truncated) {
  if (truncated) *truncated = false;
  const double gpus = gpu_amount(request);
  if (gpus <= kEpsilon) return {{}};
  const std::vector<GpuInfo>& infos = node.gpus();

  // Slots of qualifying GPUs in index order, so that "lowest index first"
  // falls out of stable sorts below.
  std::vector<int> slots;
  for (std::size_t slot = 0; slot < infos.size(); ++slot) {
    if (gpu_satisfies(infos[slot], request)) slots.push_back(static_cast<int>(slot));
  }
  std::sort(slots.begin(), slots.end(),
            [&](int a, int b) { return infos[a].index < infos[b].index; });

  std::vector<std::vector<int>> choices;
  if (is_fractional(gpus)) {
    struct Option {
      double left;
      std::uint64_t memory;
      int index;
    };
    std::vector<Option> options;
    std::set<std::tuple<std::string, std::uint64_t, long long>> seen;
    for (int slot : slots) {
      const double allocated = node.gpu_allocated(static_cast<std::size_t>(slot));
      if (allocated + gpus > 1.0 + kEpsilon) continue;
      const GpuInfo& gpu = infos[slot];
      if (!seen.emplace(to_lower(gpu.model), gpu.memory_bytes, std::llround(allocated * 1e6)).second) {
        continue;
      }
      options.push_back({round9(1.0 - allocated - gpus), gpu.memory_bytes, gpu.index});
    }
    std::stable_sort(options.begin(), options.end(), [](const Option& a, const Option& b) {
      return std::tie(a.left, a.memory) < std::tie(b.left, b.memory);
    });
    for (const Option& option : options) choices.push_back({option.index});
  } else {
    const std::size_t wanted = static_cast<std::size_t>(std::llround(gpus));
    std::vector<GpuClass> classes;
    std::size_t free_count = 0;
    for (int slot : slots) {
      if (node.gpu_allocated(static_cast<std::size_t>(slot)) > kEpsilon) continue;
      const GpuInfo& gpu = infos[slot];
      std::string model = to_lower(gpu.model);
      auto it = std::find_if(classes.begin(), classes.end(), [&](const GpuClass& c) {
        return c.model == model && c.memory == gpu.memory_bytes;
      });
      if (it == classes.end()) {
        classes.push_back({std::move(model), gpu.memory_bytes, {}});
        it = std::prev(classes.end());
      }
      it->slots.push_back(slot);
      ++free_count;
    }
    if (free_count < wanted) return {};
    // Smallest GPUs first: the first composition enumerated is the greedy
    // best fit, and the cap below then keeps the tightest ones.
    std::stable_sort(classes.begin(), classes.end(),
                     [](const GpuClass& a, const GpuClass& b) { return a.memory < b.memory; });

    struct Composition {
      double memory;
      std::vector<int> indexes;
    };
    std::vector<Composition> compositions;
    std::vector<std::size_t> take(classes.size(), 0);
    bool capped = false;
    // Depth-first over classes: how many GPUs to take from class c.
    auto enumerate = [&](auto& self, std::size_t c, std::size_t left) -> void {
      if (compositions.size() >= kCompositionCap) {
        capped = true;
        return;
      }
      if (left == 0) {
        Composition composition{0.0, {}};
        for (std::size_t k = 0; k < classes.size(); ++k) {
          for (std::size_t n = 0; n < take[k]; ++n) {
            const GpuInfo& gpu = infos[classes[k].slots[n]];
            composition.memory += static_cast<double>(gpu.memory_bytes);
            composition.indexes.push_back(gpu.index);
          }
        }
        std::sort(composition.indexes.begin(), composition.indexes.end());
        compositions.push_back(std::move(composition));
        return;
      }
      if (c == classes.size()) return;
      for (std::size_t n = std::min(left, classes[c].slots.size()) + 1; n-- > 0;) {
        take[c] = n;
        self(self, c + 1, left - n);
      }
      take[c] = 0;
    };
    enumerate(enumerate, 0, wanted);
    std::stable_sort(compositions.begin(), compositions.end(),
                     [](const Composition& a, const Composition& b) {
                       return std::tie(a.memory, a.indexes) < std::tie(b.memory, b.indexes);
                     });
    for (Composition& composition : compositions) choices.push_back(std::move(composition.indexes));
    if (capped && truncated) *truncated = true;
  }
  if (choices.size() > limit) {
    choices.resize(limit);
    if (truncated) *truncated = true;
  }
  return choices;
}

bool fits_now(const NodeState& node, const ResourceRequest& request) {
  return request.amounts.fits_in(node.available()) && !gpu_choices(node, request, 1).empty();
}

FitScore score(const NodeState& node, const ResourceRequest& request, std::span<const int> gpus) {
  FitScore result;
  const double wanted = gpu_amount(request);
  result.cpu_work_on_gpu_node = wanted <= kEpsilon && !node.gpus().empty() ? 1 : 0;
  for (int index : gpus) {
    const int slot = node.gpu_slot(index);
    if (slot < 0) continue;
    result.gpu_memory += static_cast<double>(node.gpus()[static_cast<std::size_t>(slot)].memory_bytes);
    if (is_fractional(wanted)) {
      result.fraction_left = round9(node.gpu_free(static_cast<std::size_t>(slot)) - wanted);
    }
  }
  for (const auto& [name, amount] : request.amounts.amounts()) {
    const double total = node.total().get(name);
    if (amount <= kEpsilon || total <= kEpsilon) continue;
    result.node_left += (node.available().get(name) - amount) / total;
  }
  result.node_left = round9(result.node_left);
  return result;
}

std::vector<NodeState> idle_copies(std::span<const NodeState> nodes) {
  std::vector<NodeState> out;
  out.reserve(nodes.size());
  for (const NodeState& node : nodes) out.emplace_back(node.info());
  return out;
}

std::string explain_infeasible(std::span<const NodeState> idle_nodes,
                               const ResourceRequest& request) {
  if (idle_nodes.empty()) return "the cluster has no nodes";

  const double gpus = gpu_amount(request);
  if (gpus > kEpsilon) {
    int most = 0;
    std::size_t most_node = 0;
    bool type_exists = false;
    ResourceRequest type_only = request;
    type_only.gpu_memory_bytes = 0;
    for (std::size_t i = 0; i < idle_nodes.size(); ++i) {
      const int have = matching_gpus(idle_nodes[i], request);
      if (have > most) {
        most = have;
        most_node = i;
      }
      if (matching_gpus(idle_nodes[i], type_only) > 0) type_exists = true;
    }
    if (most == 0) {
      if (!request.gpu_type.empty() && !type_exists) {
        return fmt::format("no node has a GPU of type {} (cluster has: {})", request.gpu_type,
                           gpu_inventory(idle_nodes, false));
      }
      return fmt::format("no node has a {} (cluster has: {})", gpu_phrase(request, false),
                         gpu_inventory(idle_nodes, request.gpu_memory_bytes > 0));
    }
    if (!is_fractional(gpus) && most < std::llround(gpus)) {
      return fmt::format("no node has {} {} (at most {} on one node, \"{}\"; cluster has: {})",
                         format_number(gpus), gpu_phrase(request, true), most,
                         idle_nodes[most_node].node_id(),
                         gpu_inventory(idle_nodes, request.gpu_memory_bytes > 0));
    }
  }

  for (const auto& [name, amount] : request.amounts.amounts()) {
    if (name == kGpu || amount <= kEpsilon) continue;
    double largest = 0;
    std::size_t largest_node = 0;
    for (std::size_t i = 0; i < idle_nodes.size(); ++i) {
      const double total = idle_nodes[i].total().get(name);
      if (total > largest) {
        largest = total;
        largest_node = i;
      }
    }
    if (largest + kEpsilon < amount) {
      if (largest <= kEpsilon) {
        return fmt::format("no node has resource \"{}\" (requested {}={})", name, name,
                           format_amount(name, amount));
      }
      return fmt::format("no node has {}={} (largest: {}={} on \"{}\")", name,
                         format_amount(name, amount), name, format_amount(name, largest),
                         idle_nodes[largest_node].node_id());
    }
  }

  // Every constraint is met somewhere, but never all on one node.
  std::vector<std::string> parts;
  for (std::size_t i = 0; i < idle_nodes.size() && parts.size() < kNodesListed; ++i) {
    std::string why = misfit(idle_nodes[i], request);
    if (why.empty()) why = "does not fit";  // not expected: the caller found no fit
    parts.push_back(fmt::format("\"{}\": {}", idle_nodes[i].node_id(), why));
  }
  return fmt::format("no single node has everything requested ({}): {}", to_string(request),
                     with_more(std::move(parts), idle_nodes.size()));
}

std::string describe_free(std::span<const NodeState> nodes,
                          std::span<const ResourceRequest> requests) {
  if (nodes.empty()) return "no nodes";
  std::set<std::string, std::less<>> names;
  // The GPU column counts only matching GPUs when every request that wants
  // GPUs has the same type/memory constraint.
  const ResourceRequest* gpu_filter = nullptr;
  bool same_constraint = true;
  bool wants_gpus = false;
  for (const ResourceRequest& request : requests) {
    for (const auto& [name, amount] : request.amounts.amounts()) {
      if (amount > kEpsilon && name != kGpu) names.insert(name);
    }
    if (gpu_amount(request) <= kEpsilon) continue;
    if (wants_gpus && (request.gpu_type != gpu_filter->gpu_type ||
                       request.gpu_memory_bytes != gpu_filter->gpu_memory_bytes)) {
      same_constraint = false;
    }
    if (!wants_gpus) gpu_filter = &request;
    wants_gpus = true;
  }
  if (!same_constraint || (gpu_filter && gpu_filter->gpu_type.empty() &&
                           gpu_filter->gpu_memory_bytes == 0)) {
    gpu_filter = nullptr;
  }

  std::vector<std::string> parts;
  for (std::size_t i = 0; i < nodes.size() && parts.size() < kNodesListed; ++i) {
    const NodeState& node = nodes[i];
    std::string fields;
    auto field = [&](std::string text) {
      if (!fields.empty()) fields += ", ";
      fields += std::move(text);
    };
    for (const std::string& name : names) {
      field(fmt::format("{}={}", name, format_amount(name, node.available().get(name))));
    }
    if (wants_gpus) {
      double free = 0;
      int whole = 0;
      for (std::size_t slot = 0; slot < node.gpus().size(); ++slot) {
        if (gpu_filter && !gpu_satisfies(node.gpus()[slot], *gpu_filter)) continue;
        free += node.gpu_free(slot);
        if (node.gpu_allocated(slot) <= kEpsilon) ++whole;
      }
      std::string label = gpu_filter && !gpu_filter->gpu_type.empty()
                              ? fmt::format("GPU({})", gpu_filter->gpu_type)
                              : std::string(gpu_filter ? "GPU(matching)" : "GPU");
      std::string text = fmt::format("{}={}", label, format_number(round9(free)));
      if (std::fabs(free - whole) > kEpsilon) text += fmt::format(" ({} whole)", whole);
      field(std::move(text));
    }
    parts.push_back(fmt::format("{}{{{}}}", node.node_id(), fields));
  }
  return with_more(std::move(parts), nodes.size());
}

}  // namespace troupe::scheduler::detail
