// The planner's file formats (docs/planner.md) and GPU type tables.
//
// Parsing checks types and presence of keys here, then leaves value rules
// (ranges, uniqueness) to validate() so code-built inputs obey the same ones.
#include "troupe/scheduler/planner.hpp"

#include <cmath>
#include <fstream>
#include <optional>
#include <sstream>
#include <tuple>
#include <utility>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "text.hpp"
#include "troupe/scheduler/error.hpp"
#include "troupe/scheduler/planner_v2.hpp"

namespace troupe::scheduler {

namespace {

using nlohmann::json;

// A short rendering of a JSON value for messages: the value itself when
// small, else its type.
std::string shown(const json& value) {
  std::string text = value.dump();
  if (text.size() > 40) return std::string("a JSON ") + value.type_name();
  return text;
}

const json& member(const json& object, std::string_view key, const std::string& where) {
  if (!object.is_object()) {
    throw SpecError(fmt::format("{}: expected a JSON object, got {}", where, shown(object)));
  }
  auto it = object.find(key);
  if (it == object.end()) throw SpecError(fmt::format("{}: missing key \"{}\"", where, key));
  return *it;
}

double number(const json& object, std::string_view key, const std::string& where) {
  const json& value = member(object, key, where);
  if (!value.is_number()) {
    throw SpecError(fmt::format("{}: \"{}\" must be a number, got {}", where, key, shown(value)));
  }
  return value.get<double>();
}

std::string string(const json& object, std::string_view key, const std::string& where) {
  const json& value = member(object, key, where);
  if (!value.is_string()) {
    throw SpecError(fmt::format("{}: \"{}\" must be a string, got {}", where, key, shown(value)));
  }
  return value.get<std::string>();
}

int integer(const json& value, const std::string& where) {
  if (!value.is_number_integer() || value.get<long long>() < 0 || value.get<long long>() > (1LL << 30)) {
    throw SpecError(fmt::format("{}: must be a whole number >= 0, got {}", where, shown(value)));
  }
  return static_cast<int>(value.get<long long>());
}

const json& array(const json& object, std::string_view key, const std::string& where) {
  const json& value = member(object, key, where);
  if (!value.is_array()) {
    throw SpecError(fmt::format("{}: \"{}\" must be an array, got {}", where, key, shown(value)));
  }
  return value;
}

// A plan stage's "layers": [first, last].
std::pair<int, int> layer_range(const json& stage, const std::string& where) {
  const json& layers = array(stage, "layers", where);
  if (layers.size() != 2) {
    throw SpecError(fmt::format("{}: \"layers\" must be [first, last], got {}", where, shown(layers)));
  }
  return {integer(layers[0], where + ".layers[0]"), integer(layers[1], where + ".layers[1]")};
}

std::string optional_string(const json& object, std::string_view key, const std::string& where) {
  if (!object.contains(key)) return {};
  return string(object, key, where);
}

// Reads and parses a JSON file; `what` ("model", "cluster") names it in
// messages. Errors in the content get the path in front.
template <typename Parse>
auto load(const std::filesystem::path& path, std::string_view what, Parse parse) {
  std::ifstream in(path);
  if (!in) throw SpecError(fmt::format("cannot read the {} file {}", what, path.string()));
  std::stringstream text;
  text << in.rdbuf();
  json document;
  try {
    document = json::parse(text.str());
  } catch (const json::parse_error& e) {
    throw SpecError(fmt::format("{} file {}: not valid JSON: {}", what, path.string(), e.what()));
  }
  try {
    return parse(document);
  } catch (const SpecError& e) {
    throw SpecError(fmt::format("{} file {}: {}", what, path.string(), e.message()));
  }
}

// Lower-case tokens of `needle` appear in `haystack`'s tokens in the same
// order (not necessarily adjacent): "A100-40GB" in "NVIDIA A100-SXM4-40GB".
bool tokens_in_order(const std::vector<std::string>& needle, const std::vector<std::string>& haystack) {
  if (needle.empty()) return false;
  std::size_t next = 0;
  for (const std::string& token : haystack) {
    if (next < needle.size() && token == needle[next]) ++next;
  }
  return next == needle.size();
}

std::optional<GpuTypeSpec> find_in(std::string_view model, const GpuTypeTable& table) {
  for (const auto& [type, spec] : table) {
    if (detail::iequals(type, model)) return spec;
  }
  const std::vector<std::string> model_tokens = detail::model_tokens(model);
  const GpuTypeSpec* best = nullptr;
  std::size_t best_length = 0;
  for (const auto& [type, spec] : table) {
    if (type.size() > best_length && tokens_in_order(detail::model_tokens(type), model_tokens)) {
      best = &spec;
      best_length = type.size();
    }
  }
  if (best == nullptr) return std::nullopt;
  return *best;
}

}  // namespace

ModelProfile parse_model(const json& document) {
  ModelProfile model;
  if (!document.is_object()) {
    throw SpecError(fmt::format("expected a JSON object with \"layers\", got {}", shown(document)));
  }
  model.name = optional_string(document, "name", "model");
  const json& layers = array(document, "layers", "model");
  for (std::size_t l = 0; l < layers.size(); ++l) {
    const std::string where = fmt::format("layers[{}]", l);
    LayerProfile layer;
    layer.name = string(layers[l], "name", where);
    layer.flops = number(layers[l], "flops", where);
    layer.param_bytes = number(layers[l], "param_bytes", where);
    layer.activation_bytes = number(layers[l], "activation_bytes", where);
    // Version 2: null or absent tp_bytes = the layer cannot be split; absent
    // grad_bytes = param_bytes / 4.
    if (layers[l].contains("tp_bytes") && !layers[l]["tp_bytes"].is_null()) {
      layer.tp_bytes = number(layers[l], "tp_bytes", where);
    }
    if (layers[l].contains("grad_bytes") && !layers[l]["grad_bytes"].is_null()) {
      layer.grad_bytes = number(layers[l], "grad_bytes", where);
    }
    model.layers.push_back(std::move(layer));
  }
  validate(model);
  return model;
}

ModelProfile load_model(const std::filesystem::path& path) { return load(path, "model", parse_model); }

ClusterSpec parse_cluster(const json& document) {
  ClusterSpec cluster;
  if (!document.is_object()) {
    throw SpecError(fmt::format("expected a JSON object with \"nodes\", got {}", shown(document)));
  }
  cluster.name = optional_string(document, "name", "cluster");
  cluster.inter_node_gbps = number(document, "inter_node_gbps", "cluster");
  if (document.contains("tp_efficiency")) {
    const json& efficiency = document["tp_efficiency"];
    if (!efficiency.is_object()) {
      throw SpecError(fmt::format("cluster: \"tp_efficiency\" must be an object {{\"2\": 0.95, ...}}, got {}",
                                  shown(efficiency)));
    }
    for (const auto& [key, value] : efficiency.items()) {
      if (key != "1" && key != "2" && key != "4" && key != "8") {
        throw SpecError(fmt::format("cluster: tp_efficiency has key \"{}\"; only \"1\", \"2\", \"4\" and \"8\" are "
                                    "allowed",
                                    key));
      }
      cluster.tp_efficiency[std::stoi(key)] = number(efficiency, key, "cluster.tp_efficiency");
    }
  }
  const json& nodes = array(document, "nodes", "cluster");
  for (std::size_t n = 0; n < nodes.size(); ++n) {
    const std::string where = fmt::format("nodes[{}]", n);
    ClusterNode node;
    node.name = string(nodes[n], "name", where);
    node.intra_node_gbps = number(nodes[n], "intra_node_gbps", where);
    const json& gpus = array(nodes[n], "gpus", where);
    for (std::size_t g = 0; g < gpus.size(); ++g) {
      const std::string gpu_where = fmt::format("{}.gpus[{}]", where, g);
      ClusterGpu gpu;
      gpu.type = string(gpus[g], "type", gpu_where);
      gpu.tflops = number(gpus[g], "tflops", gpu_where);
      gpu.memory_gb = number(gpus[g], "memory_gb", gpu_where);
      node.gpus.push_back(std::move(gpu));
    }
    cluster.nodes.push_back(std::move(node));
  }
  validate(cluster);
  return cluster;
}

ClusterSpec load_cluster(const std::filesystem::path& path) { return load(path, "cluster", parse_cluster); }

json plan_to_json(const Plan& plan) {
  json stages = json::array();
  for (const PlanStage& stage : plan.stages) {
    stages.push_back({{"node", stage.node}, {"gpu", stage.gpu}, {"layers", {stage.first_layer, stage.last_layer}}});
  }
  return {{"stages", std::move(stages)}, {"bottleneck_s", plan.bottleneck_s}};
}

Plan parse_plan(const json& document) {
  Plan plan;
  const json& stages = array(document, "stages", "plan");
  for (std::size_t k = 0; k < stages.size(); ++k) {
    const std::string where = fmt::format("stages[{}]", k);
    PlanStage stage;
    stage.node = string(stages[k], "node", where);
    stage.gpu = integer(member(stages[k], "gpu", where), where + ".gpu");
    std::tie(stage.first_layer, stage.last_layer) = layer_range(stages[k], where);
    plan.stages.push_back(std::move(stage));
  }
  return plan;
}

json plan_v2_to_json(const PlanV2& plan, int micro_batches) {
  json stages = json::array();
  for (const PlanStageV2& stage : plan.stages) {
    stages.push_back({{"node", stage.node},
                      {"gpus", stage.gpus},
                      {"tp", stage.tp},
                      {"layers", {stage.first_layer, stage.last_layer}}});
  }
  json document{{"stages", std::move(stages)}};
  if (micro_batches > 0) document["micro_batches"] = micro_batches;
  document["bottleneck_s"] = plan.bottleneck_s;
  return document;
}

PlanV2 parse_plan_v2(const json& document) {
  PlanV2 plan;
  const json& stages = array(document, "stages", "plan");
  for (std::size_t k = 0; k < stages.size(); ++k) {
    const std::string where = fmt::format("stages[{}]", k);
    PlanStageV2 stage;
    stage.node = string(stages[k], "node", where);
    const bool one = stages[k].contains("gpu"), many = stages[k].contains("gpus");
    if (one && many) throw SpecError(fmt::format("{}: has both \"gpu\" and \"gpus\"; give one", where));
    if (one) {
      stage.gpus = {integer(stages[k]["gpu"], where + ".gpu")};
    } else {
      const json& gpus = array(stages[k], "gpus", where);
      for (std::size_t g = 0; g < gpus.size(); ++g) {
        stage.gpus.push_back(integer(gpus[g], fmt::format("{}.gpus[{}]", where, g)));
      }
    }
    stage.tp = stages[k].contains("tp") ? integer(stages[k]["tp"], where + ".tp") : 1;
    std::tie(stage.first_layer, stage.last_layer) = layer_range(stages[k], where);
    plan.stages.push_back(std::move(stage));
  }
  return plan;
}

const GpuTypeTable& builtin_gpu_types() {
  // docs/planner.md, "Cluster" (the shared planner README's GPU types).
  static const GpuTypeTable table{
      {"H100-80GB", {700, 80}}, {"A100-80GB", {300, 80}}, {"A100-40GB", {300, 40}},
      {"V100-32GB", {110, 32}}, {"V100-16GB", {110, 16}}, {"T4-16GB", {60, 16}},
      {"L4-24GB", {120, 24}},   {"RTX4090-24GB", {160, 24}},
  };
  return table;
}

GpuTypeTable parse_gpu_type_table(const json& document) {
  if (!document.is_object()) {
    throw SpecError(fmt::format("expected a JSON object {{\"TYPE\": {{\"tflops\": ..., \"memory_gb\": ...}}}}, got {}",
                                shown(document)));
  }
  GpuTypeTable table;
  for (const auto& [type, entry] : document.items()) {
    const std::string where = fmt::format("GPU type \"{}\"", type);
    if (detail::trim(type).empty()) throw SpecError("a GPU type name must not be empty");
    GpuTypeSpec spec{number(entry, "tflops", where), number(entry, "memory_gb", where)};
    if (!std::isfinite(spec.tflops) || spec.tflops <= 0) {
      throw SpecError(fmt::format("{}: tflops must be a finite number > 0, got {}", where, spec.tflops));
    }
    if (!std::isfinite(spec.memory_gb) || spec.memory_gb <= 0) {
      throw SpecError(fmt::format("{}: memory_gb must be a finite number > 0, got {}", where, spec.memory_gb));
    }
    table.emplace(type, spec);
  }
  return table;
}

GpuTypeTable load_gpu_type_table(const std::filesystem::path& path) {
  return load(path, "GPU table", parse_gpu_type_table);
}

std::optional<GpuTypeSpec> find_gpu_type(std::string_view model, const GpuTypeTable& user) {
  if (auto spec = find_in(model, user)) return spec;
  return find_in(model, builtin_gpu_types());
}

}  // namespace troupe::scheduler
