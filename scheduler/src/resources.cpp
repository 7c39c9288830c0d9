#include "troupe/scheduler/resources.hpp"

#include <algorithm>
#include <cmath>
#include <set>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "text.hpp"

namespace troupe::scheduler {

namespace {

// Quantities within kEpsilon of an integer are stored as that integer, so
// that 0.1 + 0.2 + 0.7 GPU reads (and prints) as exactly 1.
double snap(double value) {
  const double nearest = std::round(value);
  return std::fabs(value - nearest) < kEpsilon ? nearest : value;
}

}  // namespace

// --- ResourceSet ------------------------------------------------------------

ResourceSet::ResourceSet(std::initializer_list<std::pair<std::string_view, double>> amounts) {
  for (const auto& [name, amount] : amounts) set(name, amount);
}

double ResourceSet::get(std::string_view name) const noexcept {
  auto it = amounts_.find(name);
  return it == amounts_.end() ? 0.0 : it->second;
}

bool ResourceSet::contains(std::string_view name) const noexcept {
  return amounts_.find(name) != amounts_.end();
}

void ResourceSet::set(std::string_view name, double amount) {
  if (name.empty()) throw SpecError("resource name is empty");
  if (!std::isfinite(amount)) {
    throw SpecError(fmt::format("resource \"{}\" has a non-finite amount", name));
  }
  if (amount < -kEpsilon) {
    throw SpecError(fmt::format("resource \"{}\" has a negative amount ({})", name, amount));
  }
  amount = std::max(0.0, snap(amount));
  auto it = amounts_.find(name);
  if (it == amounts_.end()) {
    amounts_.emplace(std::string(name), amount);
  } else {
    it->second = amount;
  }
}

void ResourceSet::erase(std::string_view name) {
  auto it = amounts_.find(name);
  if (it != amounts_.end()) amounts_.erase(it);
}

bool ResourceSet::empty() const noexcept {
  return std::all_of(amounts_.begin(), amounts_.end(),
                     [](const auto& entry) { return entry.second <= kEpsilon; });
}

bool ResourceSet::fits_in(const ResourceSet& available) const noexcept {
  for (const auto& [name, amount] : amounts_) {
    if (amount > kEpsilon && available.get(name) + kEpsilon < amount) return false;
  }
  return true;
}

void ResourceSet::add(const ResourceSet& other) {
  for (const auto& [name, amount] : other.amounts_) set(name, get(name) + amount);
}

void ResourceSet::subtract(const ResourceSet& other) {
  // Check everything first so that a failure leaves the set unchanged.
  for (const auto& [name, amount] : other.amounts_) {
    if (get(name) - amount < -kEpsilon) {
      throw AllocationError(fmt::format("cannot take {}={} from {}={}", name,
                                        detail::format_amount(name, amount), name,
                                        detail::format_amount(name, get(name))));
    }
  }
  for (const auto& [name, amount] : other.amounts_) {
    if (amount == 0.0 && !contains(name)) continue;
    set(name, std::max(0.0, get(name) - amount));
  }
}

bool operator==(const ResourceSet& a, const ResourceSet& b) noexcept {
  for (const auto& [name, amount] : a.amounts_) {
    if (std::fabs(amount - b.get(name)) > kEpsilon) return false;
  }
  for (const auto& [name, amount] : b.amounts_) {
    if (std::fabs(amount - a.get(name)) > kEpsilon) return false;
  }
  return true;
}

std::string ResourceSet::to_string() const {
  if (amounts_.empty()) return "{}";
  std::string out;
  for (const auto& [name, amount] : amounts_) {
    if (!out.empty()) out += ", ";
    out += fmt::format("{}={}", name, detail::format_amount(name, amount));
  }
  return out;
}

void to_json(nlohmann::json& j, const ResourceSet& resources) {
  j = nlohmann::json::object();
  for (const auto& [name, amount] : resources.amounts()) j[name] = amount;
}

void from_json(const nlohmann::json& j, ResourceSet& resources) {
  if (!j.is_object()) {
    throw SpecError(fmt::format("resources must be a JSON object, got {}", j.dump()));
  }
  ResourceSet out;
  for (const auto& [name, value] : j.items()) {
    if (!value.is_number()) {
      throw SpecError(fmt::format("resource \"{}\" must be a number, got {}", name, value.dump()));
    }
    out.set(name, value.get<double>());
  }
  resources = std::move(out);
}

std::string format_bytes(double bytes) { return detail::format_bytes(bytes); }

std::string node_resource(std::string_view node_name) {
  std::string name(kNodeResourcePrefix);
  name += node_name;
  return name;
}

bool is_node_resource(std::string_view name) noexcept { return name.starts_with(kNodeResourcePrefix); }

// --- GpuInfo / NodeInfo JSON ------------------------------------------------

void to_json(nlohmann::json& j, const GpuInfo& gpu) {
  j = nlohmann::json{{"index", gpu.index},       {"model", gpu.model},
                     {"memory_bytes", gpu.memory_bytes}, {"sm_count", gpu.sm_count},
                     {"cc_major", gpu.cc_major}, {"cc_minor", gpu.cc_minor},
                     {"declared", gpu.declared}, {"peers", gpu.peers}};
}

void from_json(const nlohmann::json& j, GpuInfo& gpu) {
  if (!j.is_object() || !j.contains("index") || !j.contains("model")) {
    throw SpecError(fmt::format("a GPU needs at least \"index\" and \"model\", got {}", j.dump()));
  }
  try {
    GpuInfo out;
    out.index = j.at("index").get<int>();
    out.model = j.at("model").get<std::string>();
    out.memory_bytes = j.value("memory_bytes", std::uint64_t{0});
    out.sm_count = j.value("sm_count", 0);
    out.cc_major = j.value("cc_major", 0);
    out.cc_minor = j.value("cc_minor", 0);
    out.declared = j.value("declared", false);
    out.peers = j.value("peers", std::vector<int>{});
    gpu = std::move(out);
  } catch (const nlohmann::json::exception& e) {
    throw SpecError(fmt::format("bad GPU description {}: {}", j.dump(), e.what()));
  }
}

void to_json(nlohmann::json& j, const NodeInfo& node) {
  j = nlohmann::json{{"node_id", node.node_id},
                     {"address", node.address},
                     {"total", node.total},
                     {"gpus", node.gpus}};
}

void from_json(const nlohmann::json& j, NodeInfo& node) {
  if (!j.is_object() || !j.contains("node_id")) {
    throw SpecError(fmt::format("a node needs at least \"node_id\", got {}", j.dump()));
  }
  try {
    NodeInfo out;
    out.node_id = j.at("node_id").get<std::string>();
    out.address = j.value("address", std::string{});
    if (j.contains("total")) out.total = j.at("total").get<ResourceSet>();
    if (j.contains("gpus")) out.gpus = j.at("gpus").get<std::vector<GpuInfo>>();
    node = std::move(out);
  } catch (const nlohmann::json::exception& e) {
    throw SpecError(fmt::format("bad node description {}: {}", j.dump(), e.what()));
  }
}

// --- NodeState ----------------------------------------------------------------

NodeState::NodeState(NodeInfo info) : info_(std::move(info)) {
  std::set<int> seen;
  for (const GpuInfo& gpu : info_.gpus) {
    if (!seen.insert(gpu.index).second) {
      throw SpecError(fmt::format("node \"{}\" lists GPU index {} twice", info_.node_id, gpu.index));
    }
  }
  const double gpu_count = static_cast<double>(info_.gpus.size());
  if (!info_.total.contains(kGpu)) {
    info_.total.set(kGpu, gpu_count);
  } else if (std::fabs(info_.total.get(kGpu) - gpu_count) > kEpsilon) {
    throw SpecError(fmt::format("node \"{}\" declares GPU={} but describes {} GPU(s)",
                                info_.node_id, detail::format_amount(kGpu, info_.total.get(kGpu)),
                                info_.gpus.size()));
  }
  available_ = info_.total;
  gpu_allocated_.assign(info_.gpus.size(), 0.0);
}

int NodeState::gpu_slot(int gpu_index) const noexcept {
  for (std::size_t slot = 0; slot < info_.gpus.size(); ++slot) {
    if (info_.gpus[slot].index == gpu_index) return static_cast<int>(slot);
  }
  return -1;
}

bool NodeState::idle() const noexcept { return available_ == info_.total; }

bool NodeState::check(const ResourceSet& amounts, std::span<const int> gpu_indexes,
                      bool releasing, std::string* why) const {
  auto fail = [&](std::string message) {
    if (why) *why = fmt::format("node \"{}\": {}", info_.node_id, std::move(message));
    return false;
  };
  const double gpus = amounts.get(kGpu);
  if (gpus <= kEpsilon) {
    if (!gpu_indexes.empty()) return fail("GPU indexes given for a request without GPUs");
  } else if (gpus < 1.0 - kEpsilon) {
    if (gpu_indexes.size() != 1) {
      return fail(fmt::format("a fractional GPU request (GPU={}) needs exactly one GPU index, got {}",
                              detail::format_amount(kGpu, gpus), gpu_indexes.size()));
    }
  } else {
    if (std::fabs(gpus - std::round(gpus)) > kEpsilon) {
      return fail(fmt::format("GPU={} is neither below one nor a whole number",
                              detail::format_amount(kGpu, gpus)));
    }
    if (gpu_indexes.size() != static_cast<std::size_t>(std::llround(gpus))) {
      return fail(fmt::format("GPU={} needs as many GPU indexes, got {}",
                              detail::format_amount(kGpu, gpus), gpu_indexes.size()));
    }
  }
  const double share = gpus < 1.0 - kEpsilon ? gpus : 1.0;
  std::set<int> seen;
  for (int index : gpu_indexes) {
    const int slot = gpu_slot(index);
    if (slot < 0) return fail(fmt::format("no GPU with index {}", index));
    if (!seen.insert(index).second) return fail(fmt::format("GPU index {} given twice", index));
    const double allocated = gpu_allocated_[static_cast<std::size_t>(slot)];
    if (releasing) {
      if (allocated + kEpsilon < share) {
        return fail(fmt::format("cannot release {} of GPU {}: only {} is allocated",
                                detail::format_amount(kGpu, share), index,
                                detail::format_amount(kGpu, allocated)));
      }
    } else if (share >= 1.0 - kEpsilon ? allocated > kEpsilon
                                       : allocated + share > 1.0 + kEpsilon) {
      return fail(fmt::format("GPU {} has {} free, {} requested", index,
                              detail::format_amount(kGpu, 1.0 - allocated),
                              detail::format_amount(kGpu, share)));
    }
  }
  for (const auto& [name, amount] : amounts.amounts()) {
    if (amount <= kEpsilon) continue;
    const double have = available_.get(name);
    if (releasing) {
      if (have + amount > info_.total.get(name) + kEpsilon) {
        return fail(fmt::format("releasing {}={} would exceed the total {}={}", name,
                                detail::format_amount(name, amount), name,
                                detail::format_amount(name, info_.total.get(name))));
      }
    } else if (have + kEpsilon < amount) {
      return fail(fmt::format("{}={} requested, {}={} free", name,
                              detail::format_amount(name, amount), name,
                              detail::format_amount(name, have)));
    }
  }
  return true;
}

bool NodeState::can_allocate(const ResourceSet& amounts, std::span<const int> gpu_indexes,
                             std::string* why) const {
  return check(amounts, gpu_indexes, /*releasing=*/false, why);
}

void NodeState::allocate(const ResourceSet& amounts, std::span<const int> gpu_indexes) {
  std::string why;
  if (!check(amounts, gpu_indexes, /*releasing=*/false, &why)) throw AllocationError(why);
  available_.subtract(amounts);
  const double gpus = amounts.get(kGpu);
  const double share = gpus < 1.0 - kEpsilon ? gpus : 1.0;
  for (int index : gpu_indexes) {
    double& allocated = gpu_allocated_[static_cast<std::size_t>(gpu_slot(index))];
    allocated = std::clamp(snap(allocated + share), 0.0, 1.0);
  }
}

void NodeState::release(const ResourceSet& amounts, std::span<const int> gpu_indexes) {
  std::string why;
  if (!check(amounts, gpu_indexes, /*releasing=*/true, &why)) throw AllocationError(why);
  for (const auto& [name, amount] : amounts.amounts()) {
    if (amount <= kEpsilon) continue;
    available_.set(name, std::min(info_.total.get(name), available_.get(name) + amount));
  }
  const double gpus = amounts.get(kGpu);
  const double share = gpus < 1.0 - kEpsilon ? gpus : 1.0;
  for (int index : gpu_indexes) {
    double& allocated = gpu_allocated_[static_cast<std::size_t>(gpu_slot(index))];
    allocated = std::clamp(snap(allocated - share), 0.0, 1.0);
  }
}

void to_json(nlohmann::json& j, const NodeState& node) {
  j = node.info();
  j["available"] = node.available();
  for (std::size_t slot = 0; slot < node.gpus().size(); ++slot) {
    j["gpus"][slot]["allocated"] = node.gpu_allocated(slot);
  }
}

}  // namespace troupe::scheduler
