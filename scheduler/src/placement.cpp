#include "troupe/scheduler/placement.hpp"

#include <algorithm>
#include <cmath>
#include <optional>
#include <tuple>
#include <utility>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "fit.hpp"
#include "text.hpp"
#include "troupe/scheduler/gpu_spec.hpp"

namespace troupe::scheduler {

namespace {
constexpr std::string_view kGpuTypePrefix = "GPU:";
}  // namespace

ResourceRequest normalize(const ResourceRequest& request) {
  ResourceRequest out;
  out.gpu_type = std::string(detail::trim(request.gpu_type));
  out.gpu_memory_bytes = request.gpu_memory_bytes;
  std::optional<double> typed_count;  // from a "GPU:<type>" key
  std::string typed_from;             // that key, for messages
  for (const auto& [name, amount] : request.amounts.amounts()) {
    if (!name.starts_with(kGpuTypePrefix)) {
      out.amounts.set(name, amount);
      continue;
    }
    const std::string_view type = detail::trim(std::string_view(name).substr(kGpuTypePrefix.size()));
    if (type.empty()) throw SpecError(fmt::format("resource \"{}\" names no GPU type", name));
    if (amount <= kEpsilon) continue;  // "GPU:T4": 0 asks for nothing
    if (typed_count) {
      throw SpecError(fmt::format("request names two GPU types: \"{}\" and \"{}\"", typed_from, name));
    }
    // Both may name the type when one refines the other ("GPU:H100-80GB"
    // with gpu_type "H100"); the more specific one is kept.
    if (out.gpu_type.empty() || gpu_model_matches(type, out.gpu_type)) {
      out.gpu_type = std::string(type);
    } else if (!gpu_model_matches(out.gpu_type, type)) {
      throw SpecError(fmt::format("resource \"{}\" conflicts with gpu_type \"{}\"", name, out.gpu_type));
    }
    typed_count = amount;
    typed_from = name;
  }
  if (typed_count) {
    const double plain = out.amounts.get(kGpu);
    if (plain > kEpsilon && std::fabs(plain - *typed_count) > kEpsilon) {
      throw SpecError(fmt::format("{}={} disagrees with GPU={}", typed_from,
                                  detail::format_number(*typed_count), detail::format_number(plain)));
    }
    out.amounts.set(kGpu, *typed_count);
  }
  if (!out.gpu_type.empty() && detail::model_tokens(out.gpu_type).empty()) {
    throw SpecError(fmt::format("gpu_type \"{}\" names no GPU model", out.gpu_type));
  }
  double gpus = out.amounts.get(kGpu);
  if (gpus <= kEpsilon && (!out.gpu_type.empty() || out.gpu_memory_bytes > 0)) {
    gpus = 1.0;
    out.amounts.set(kGpu, gpus);
  }
  if (gpus > 1.0 + kEpsilon && std::fabs(gpus - std::round(gpus)) > kEpsilon) {
    throw SpecError(fmt::format("GPU={}: a request for more than one GPU must be a whole number",
                                detail::format_number(gpus)));
  }
  return out;
}

std::string to_string(const ResourceRequest& request) {
  std::string out = request.amounts.to_string();
  if (!request.gpu_type.empty()) out += fmt::format(", gpu_type={}", request.gpu_type);
  if (request.gpu_memory_bytes > 0) {
    out += fmt::format(", gpu_memory={}",
                       detail::format_bytes(static_cast<double>(request.gpu_memory_bytes)));
  }
  return out;
}

void to_json(nlohmann::json& j, const ResourceRequest& request) {
  j = nlohmann::json{{"amounts", request.amounts},
                     {"gpu_type", request.gpu_type},
                     {"gpu_memory_bytes", request.gpu_memory_bytes}};
}

void from_json(const nlohmann::json& j, ResourceRequest& request) {
  if (!j.is_object()) {
    throw SpecError(fmt::format("a resource request must be a JSON object, got {}", j.dump()));
  }
  try {
    ResourceRequest out;
    if (j.contains("amounts")) out.amounts = j.at("amounts").get<ResourceSet>();
    out.gpu_type = j.value("gpu_type", std::string{});
    out.gpu_memory_bytes = j.value("gpu_memory_bytes", std::uint64_t{0});
    request = std::move(out);
  } catch (const nlohmann::json::exception& e) {
    throw SpecError(fmt::format("bad resource request {}: {}", j.dump(), e.what()));
  }
}

bool gpu_satisfies(const GpuInfo& gpu, const ResourceRequest& request) {
  if (!request.gpu_type.empty() && !gpu_model_matches(gpu.model, request.gpu_type)) return false;
  return request.gpu_memory_bytes == 0 || gpu.memory_bytes >= request.gpu_memory_bytes;
}

std::string_view to_string(PlacementStatus status) noexcept {
  switch (status) {
    case PlacementStatus::placed: return "placed";
    case PlacementStatus::insufficient: return "insufficient";
    case PlacementStatus::infeasible: return "infeasible";
  }
  return "unknown";
}

PlacementDecision place(std::span<const NodeState> nodes, const ResourceRequest& request) {
  const ResourceRequest normalized = normalize(request);
  PlacementDecision decision;
  decision.amounts = normalized.amounts;

  std::optional<std::tuple<detail::FitScore, std::size_t>> best;
  for (std::size_t i = 0; i < nodes.size(); ++i) {
    if (!normalized.amounts.fits_in(nodes[i].available())) continue;
    // Every GPU choice on a node leaves the same node_left, so the node's
    // first (tightest) choice is its best.
    std::vector<std::vector<int>> choices = detail::gpu_choices(nodes[i], normalized, 1);
    if (choices.empty()) continue;
    auto candidate = std::make_tuple(detail::score(nodes[i], normalized, choices.front()), i);
    if (!best || candidate < *best) {
      best = candidate;
      decision.node = static_cast<int>(i);
      decision.gpus = std::move(choices.front());
    }
  }
  if (best) {
    decision.status = PlacementStatus::placed;
    return decision;
  }

  decision.node = -1;
  const std::vector<NodeState> idle = detail::idle_copies(nodes);
  const bool fits_when_idle = std::any_of(idle.begin(), idle.end(), [&](const NodeState& node) {
    return detail::fits_now(node, normalized);
  });
  if (fits_when_idle) {
    decision.status = PlacementStatus::insufficient;
    decision.reason = fmt::format("insufficient: waiting for resources (requested {}; free: {})",
                                  to_string(normalized),
                                  detail::describe_free(nodes, std::span(&normalized, 1)));
  } else {
    decision.status = PlacementStatus::infeasible;
    decision.reason = "infeasible: " + detail::explain_infeasible(idle, normalized);
  }
  return decision;
}

namespace {

NodeState& decided_node(std::span<NodeState> nodes, const PlacementDecision& decision) {
  if (!decision.placed()) {
    throw AllocationError(fmt::format("cannot apply a decision that is {}: {}",
                                      to_string(decision.status), decision.reason));
  }
  if (decision.node < 0 || static_cast<std::size_t>(decision.node) >= nodes.size()) {
    throw AllocationError(fmt::format("decision names node {} of {}", decision.node, nodes.size()));
  }
  return nodes[static_cast<std::size_t>(decision.node)];
}

}  // namespace

void allocate(std::span<NodeState> nodes, const PlacementDecision& decision) {
  decided_node(nodes, decision).allocate(decision.amounts, decision.gpus);
}

void release(std::span<NodeState> nodes, const PlacementDecision& decision) {
  decided_node(nodes, decision).release(decision.amounts, decision.gpus);
}

std::string describe_gpu_inventory(std::span<const NodeState> nodes) {
  return detail::gpu_inventory(nodes, /*with_memory=*/false);
}

}  // namespace troupe::scheduler
