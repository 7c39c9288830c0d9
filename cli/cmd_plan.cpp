// `troupe plan --model MODEL.json (--cluster CLUSTER.json | --address HEAD)`:
// the optimal pipeline split of a model over a cluster file or a running
// cluster (scheduler/planner.hpp), next to the uniform baseline. With a
// version-2 model (layers with tp_bytes or grad_bytes), a cluster with
// tp_efficiency, or --v2, the plan's stages are tensor-parallel and
// replicated groups (scheduler/planner_v2.hpp), next to the best version-1
// plan; other inputs print exactly what version 1 printed.
//
// Exit codes: 0 a plan was found; 1 no valid plan exists (or the cluster is
// unreachable, or the search is too large), the reason on stderr; 2 the
// command line or an input file is wrong.
#include <algorithm>
#include <cmath>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include "cluster_commands.hpp"
#include "command.hpp"
#include "session.hpp"
#include "troupe/runtime/error.hpp"
#include "troupe/runtime/ids.hpp"
#include "troupe/scheduler/error.hpp"
#include "troupe/scheduler/planner.hpp"
#include "troupe/scheduler/planner_v2.hpp"

namespace troupe::cli {

namespace {

namespace sched = troupe::scheduler;

// Bandwidths assumed for a running cluster, whose links troupe does not
// measure: PCIe gen3 between GPUs of a node, 25 GbE between nodes.
constexpr double kDefaultIntraGbps = 16.0;
constexpr double kDefaultInterGbps = 3.1;

struct PlanOptions {
  std::string model_path;
  std::string cluster_path;
  std::string gpu_table_path;
  HeadOptions head;
  bool json = false;
  double intra_gbps = kDefaultIntraGbps;
  double inter_gbps = kDefaultInterGbps;
  bool intra_given = false;  // the flags override a cluster file's values only when given
  bool inter_given = false;
  int max_stages = 0;
  // Version 2: --v1 / --v2 force a version; neither: v2 when the inputs use
  // a version-2 field.
  bool v1 = false;
  bool v2 = false;
  int micro_batches = 32;
  int max_tp = 8;
  int max_dp = 0;
  bool v2_option_given = false;  // --micro-batches, --max-tp or --max-dp
};

// The inputs use a field only version 2 prices.
bool uses_version_two(const sched::ModelProfile& model, const sched::ClusterSpec& cluster) {
  if (!cluster.tp_efficiency.empty()) return true;
  return std::any_of(model.layers.begin(), model.layers.end(),
                     [](const sched::LayerProfile& layer) { return layer.tp_bytes || layer.grad_bytes; });
}

// The alive nodes of the running cluster, one ClusterSpec node each, named by
// their short node id (as `troupe status` shows them). GPU figures come from
// the GPU type table; nodes without GPUs are left out.
sched::ClusterSpec live_cluster(const PlanOptions& options) {
  sched::GpuTypeTable user_types;
  if (!options.gpu_table_path.empty()) user_types = sched::load_gpu_type_table(options.gpu_table_path);

  auto reply = get_cluster_state(options.head);
  auto state = reply.root<wire::ControlMessage>().getClusterState();
  sched::ClusterSpec cluster;
  cluster.name = "cluster at " + resolve_head_address(options.head.address, temp_root(options.head.temp_dir));
  cluster.inter_node_gbps = options.inter_gbps;
  for (auto info : state.getNodes()) {
    if (info.getState() != wire::NodeState::ALIVE) continue;
    auto node = info.getNode();
    sched::ClusterNode out;
    out.name = from_wire<NodeId>(node.getNodeId()).short_hex();
    out.intra_node_gbps = options.intra_gbps;
    for (auto gpu : node.getGpus()) {
      const std::string model = gpu.getModel().cStr();
      const std::optional<sched::GpuTypeSpec> spec = sched::find_gpu_type(model, user_types);
      if (!spec) {
        throw UsageError(fmt::format(
            "node {} ({}) has GPU {} of unknown type \"{}\": give its figures with --gpu-table FILE, "
            "e.g. {{\"{}\": {{\"tflops\": 100, \"memory_gb\": 24}}}}",
            out.name, node.getHostname().cStr(), gpu.getIndex(), model, model));
      }
      out.gpus.push_back({model, spec->tflops, spec->memory_gb});
    }
    if (!out.gpus.empty()) cluster.nodes.push_back(std::move(out));
  }
  if (cluster.nodes.empty()) {
    throw Error(Errc::unschedulable, fmt::format("the {} has no alive node with GPUs to plan on", cluster.name));
  }
  return cluster;
}

sched::ClusterSpec file_cluster(const PlanOptions& options) {
  sched::ClusterSpec cluster = sched::load_cluster(options.cluster_path);
  if (options.intra_given) {
    for (sched::ClusterNode& node : cluster.nodes) node.intra_node_gbps = options.intra_gbps;
  }
  if (options.inter_given) cluster.inter_node_gbps = options.inter_gbps;
  sched::validate(cluster);
  return cluster;
}

// plan_to_json() laid out as in docs/planner.md: one line per
// stage, keys in the README's order, "bottleneck_s" last.
std::string plan_json_text(const sched::Plan& plan) {
  const nlohmann::json doc = sched::plan_to_json(plan);
  std::string text = "{\"stages\": [";
  for (std::size_t k = 0; k < doc["stages"].size(); ++k) {
    const nlohmann::json& stage = doc["stages"][k];
    text += fmt::format("{}\n  {{\"node\": {}, \"gpu\": {}, \"layers\": [{}, {}]}}", k == 0 ? "" : ",",
                        stage["node"].dump(), stage["gpu"].dump(), stage["layers"][0].dump(),
                        stage["layers"][1].dump());
  }
  return text + "],\n \"bottleneck_s\": " + doc["bottleneck_s"].dump() + "}";
}

// plan_v2_to_json() laid out like plan_json_text(): one line per stage.
std::string plan_v2_json_text(const sched::PlanResultV2& result, int micro_batches) {
  const nlohmann::json doc = sched::plan_v2_to_json(result.plan, micro_batches);
  std::string text = "{\"stages\": [";
  for (std::size_t k = 0; k < doc["stages"].size(); ++k) {
    const nlohmann::json& stage = doc["stages"][k];
    text += fmt::format("{}\n  {{\"node\": {}, \"gpus\": [{}], \"tp\": {}, \"layers\": [{}, {}]}}",
                        k == 0 ? "" : ",", stage["node"].dump(), fmt::join(result.plan.stages[k].gpus, ", "),
                        stage["tp"].dump(), stage["layers"][0].dump(), stage["layers"][1].dump());
  }
  text += "],\n \"micro_batches\": " + doc["micro_batches"].dump() + ",\n \"bottleneck_s\": " +
          doc["bottleneck_s"].dump();
  const nlohmann::json v1 = result.v1_status == sched::PlanStatus::optimal
                                ? nlohmann::json(result.v1_plan.bottleneck_s)
                                : nlohmann::json("infeasible");
  text += ",\n \"v1_bottleneck_s\": " + v1.dump();
  if (result.v1_status == sched::PlanStatus::optimal) {
    text += ",\n \"speedup_over_v1\": " + nlohmann::json(result.speedup_over_v1()).dump();
  }
  return text + "}";
}

std::string ms(double seconds) { return fmt::format("{:.3f}", seconds * 1e3); }
std::string gb(double bytes) { return fmt::format("{:.2f}", bytes / 1e9); }

void print_table(const std::vector<std::vector<std::string>>& rows) {
  std::vector<std::size_t> widths;
  for (const auto& row : rows) {
    if (widths.size() < row.size()) widths.resize(row.size(), 0);
    for (std::size_t i = 0; i < row.size(); ++i) widths[i] = std::max(widths[i], row[i].size());
  }
  for (const auto& row : rows) {
    std::string line = "  ";
    for (std::size_t i = 0; i < row.size(); ++i) {
      line += row[i];
      if (i + 1 < row.size()) line += std::string(widths[i] - row[i].size() + 2, ' ');
    }
    while (!line.empty() && line.back() == ' ') line.pop_back();
    std::cout << line << '\n';
  }
}

void print_header(const sched::ModelProfile& model, const sched::ClusterSpec& cluster) {
  double flops = 0, params = 0;
  for (const auto& layer : model.layers) flops += layer.flops, params += layer.param_bytes;
  std::cout << "Model " << (model.name.empty() ? "(unnamed)" : model.name) << ": " << model.layers.size()
            << " layers, " << fmt::format("{:.2f}", flops / 1e12) << " TFLOP per micro-batch, " << gb(params)
            << " GB of parameters\n";
  std::cout << "Cluster " << (cluster.name.empty() ? "(unnamed)" : cluster.name) << ": " << cluster.gpu_count()
            << " GPUs on " << cluster.nodes.size() << (cluster.nodes.size() == 1 ? " node" : " nodes") << "\n\n";
}

// The uniform baseline's line, after the plan's.
void print_uniform(std::size_t stages, bool valid, const std::string& reason, double bottleneck_s, double throughput,
                   double plan_bottleneck_s) {
  std::cout << "Uniform baseline (" << stages << (stages == 1 ? " stage" : " stages")
            << " on the first GPUs in file order, equal layer counts): ";
  if (!valid) {
    std::cout << "infeasible: " << reason << '\n';
  } else if (plan_bottleneck_s > 0) {
    std::cout << "bottleneck " << ms(bottleneck_s) << " ms, " << fmt::format("{:.2f}", throughput)
              << " micro-batches/s; the plan is " << fmt::format("{:.2f}x", bottleneck_s / plan_bottleneck_s)
              << " as fast\n";
  } else {
    std::cout << "bottleneck " << ms(bottleneck_s) << " ms\n";
  }
}

void print_plan(const sched::ModelProfile& model, const sched::ClusterSpec& cluster, const sched::Plan& plan,
                const sched::PlanEvaluation& uniform) {
  print_header(model, cluster);

  std::cout << "Optimal plan: " << plan.stages.size() << (plan.stages.size() == 1 ? " stage" : " stages") << '\n';
  std::vector<std::vector<std::string>> rows{
      {"STAGE", "NODE", "GPU", "LAYERS", "COMPUTE ms", "COMM ms", "TIME ms", "MEMORY GB / CAPACITY GB"}};
  for (std::size_t k = 0; k < plan.stages.size(); ++k) {
    const sched::PlanStage& s = plan.stages[k];
    rows.push_back({std::to_string(k) + (static_cast<int>(k) == plan.bottleneck_stage ? " *" : ""), s.node,
                    fmt::format("{} {}", s.gpu, s.gpu_type), fmt::format("{}-{}", s.first_layer, s.last_layer),
                    ms(s.compute_s), ms(s.comm_s), ms(s.time_s),
                    gb(s.memory_bytes) + " / " + gb(s.memory_capacity_bytes)});
  }
  print_table(rows);
  const sched::PlanStage& slowest = plan.stages[static_cast<std::size_t>(plan.bottleneck_stage)];
  std::cout << "\nBottleneck: stage " << plan.bottleneck_stage << " (" << slowest.node << " GPU " << slowest.gpu
            << "), " << ms(plan.bottleneck_s) << " ms per micro-batch\n";
  std::cout << "Throughput: " << fmt::format("{:.2f}", plan.throughput()) << " micro-batches/s\n";
  print_uniform(uniform.plan.stages.size(), uniform.valid, uniform.reason, uniform.plan.bottleneck_s,
                uniform.plan.throughput(), plan.bottleneck_s);
}

void print_plan_v2(const sched::ModelProfile& model, const sched::ClusterSpec& cluster,
                   const sched::PlanResultV2& result, int micro_batches, const sched::PlanEvaluationV2& uniform) {
  const sched::PlanV2& plan = result.plan;
  print_header(model, cluster);
  std::cout << "Micro-batches per iteration (M): " << micro_batches << "\n\n";
  std::cout << "Optimal plan (version 2: tensor-parallel x data-parallel stages): " << plan.stages.size()
            << (plan.stages.size() == 1 ? " stage" : " stages") << '\n';
  std::vector<std::vector<std::string>> rows{{"STAGE", "NODE", "GPUS", "TYPE", "T", "D", "LAYERS", "COMPUTE ms",
                                              "TP ms", "SEND ms", "SYNC ms", "TIME ms",
                                              "MEMORY GB / CAPACITY GB (per GPU)"}};
  for (std::size_t k = 0; k < plan.stages.size(); ++k) {
    const sched::PlanStageV2& s = plan.stages[k];
    rows.push_back({std::to_string(k) + (static_cast<int>(k) == plan.bottleneck_stage ? " *" : ""), s.node,
                    fmt::format("{}", fmt::join(s.gpus, ",")), s.gpu_type, std::to_string(s.tp), std::to_string(s.dp),
                    fmt::format("{}-{}", s.first_layer, s.last_layer), ms(s.compute_s), ms(s.tp_s), ms(s.comm_s),
                    ms(s.sync_s), ms(s.time_s), gb(s.memory_bytes) + " / " + gb(s.memory_capacity_bytes)});
  }
  print_table(rows);
  const sched::PlanStageV2& slowest = plan.stages[static_cast<std::size_t>(plan.bottleneck_stage)];
  std::cout << "\nBottleneck: stage " << plan.bottleneck_stage << " (" << slowest.node << " GPUs "
            << fmt::format("{}", fmt::join(slowest.gpus, ",")) << ", t " << slowest.tp << " x d " << slowest.dp << "), "
            << ms(plan.bottleneck_s) << " ms per micro-batch\n";
  std::cout << "Throughput: " << fmt::format("{:.2f}", plan.throughput()) << " micro-batches/s\n";
  std::cout << "Best version-1 plan (one GPU per stage, t = d = 1): ";
  if (result.v1_status != sched::PlanStatus::optimal) {
    std::cout << (result.v1_status == sched::PlanStatus::infeasible ? "infeasible: " : "not searched: ")
              << result.v1_reason << '\n';
  } else {
    std::cout << result.v1_plan.stages.size() << (result.v1_plan.stages.size() == 1 ? " stage" : " stages")
              << ", bottleneck " << ms(result.v1_plan.bottleneck_s) << " ms; version 2 is "
              << fmt::format("{:.2f}x", result.speedup_over_v1()) << " as fast\n";
  }
  print_uniform(uniform.plan.stages.size(), uniform.valid, uniform.reason, uniform.plan.bottleneck_s,
                uniform.plan.throughput(), plan.bottleneck_s);
}

int plan_v2(const PlanOptions& options, const sched::ModelProfile& model, const sched::ClusterSpec& cluster) {
  sched::PlannerOptionsV2 planner;
  planner.micro_batches = options.micro_batches;
  planner.max_stages = options.max_stages;
  planner.max_tp = options.max_tp;
  planner.max_dp = options.max_dp;
  const sched::PlanResultV2 result = sched::plan_pipeline_v2(model, cluster, planner);
  if (!result.feasible()) {
    std::cerr << "Error: " << (result.status == sched::PlanStatus::infeasible ? "no valid pipeline plan: " : "")
              << result.reason << '\n';
    return kExitFailure;
  }
  if (options.json) {
    std::cout << plan_v2_json_text(result, options.micro_batches) << '\n';
    return kExitOk;
  }
  print_plan_v2(model, cluster, result, options.micro_batches,
                sched::evaluate_v2(model, cluster, sched::to_plan_v2(sched::uniform_plan(model, cluster)),
                                   options.micro_batches));
  return kExitOk;
}

int plan(const PlanOptions& options) {
  sched::ModelProfile model;
  sched::ClusterSpec cluster;
  try {
    model = sched::load_model(options.model_path);
    cluster = options.cluster_path.empty() ? live_cluster(options) : file_cluster(options);
  } catch (const sched::SpecError& e) {
    throw UsageError(e.message());
  }

  if (options.v2 || (!options.v1 && (uses_version_two(model, cluster) || options.v2_option_given))) {
    return plan_v2(options, model, cluster);
  }
  sched::PlannerOptions planner;
  planner.max_stages = options.max_stages;
  const sched::PlanResult result = sched::plan_pipeline(model, cluster, planner);
  if (!result.feasible()) {
    std::cerr << "Error: " << (result.status == sched::PlanStatus::infeasible ? "no valid pipeline plan: " : "")
              << result.reason << '\n';
    return kExitFailure;
  }
  if (options.json) {
    std::cout << plan_json_text(result.plan) << '\n';
    return kExitOk;
  }
  print_plan(model, cluster, result.plan, sched::evaluate(model, cluster, sched::uniform_plan(model, cluster)));
  return kExitOk;
}

}  // namespace

void add_plan_command(CLI::App& app) {
  auto options = std::make_shared<PlanOptions>();
  auto* command = app.add_subcommand(
      "plan", "Split a model into pipeline stages over a cluster's GPUs, minimizing the slowest stage");
  command->footer(
      "The cost model and the file formats are those of docs/planner.md: a stage's time is its\n"
      "compute (FLOP / GPU tflops) plus sending its last layer's activations to the next stage; a stage\n"
      "k of S must hold its parameters plus S-k micro-batches of activations. The plan is optimal under\n"
      "that model. With --address (or no --cluster: the latest local session's head), each alive node\n"
      "becomes a node of the cluster; GPU figures come from the built-in table (H100-80GB, A100-80GB,\n"
      "A100-40GB, V100-32GB, V100-16GB, T4-16GB, L4-24GB, RTX4090-24GB) or --gpu-table, and the\n"
      "bandwidths from --intra-gbps/--inter-gbps.\n"
      "Version 2 (docs/planner.md, \"Version 2\"): when the model has tp_bytes or grad_bytes, the cluster\n"
      "tp_efficiency, or --v2/--micro-batches/--max-tp/--max-dp is given, a stage may be a group of g = t x d\n"
      "identical GPUs on one node: t-way tensor parallelism (t in 1, 2, 4, 8; all-reduces tp_bytes per\n"
      "micro-batch) times d replicas (share the micro-batches, all-reduce grad_bytes once per M). Each stage\n"
      "is printed with its GPUs, t, d and each term of its time (compute, TP, send, sync), followed by the\n"
      "best version-1 plan and the speed-up over it. Version-1 inputs without these flags plan as before.\n"
      "Exit codes: 0 a plan was found, 1 no valid plan exists (reason on stderr) or the cluster cannot\n"
      "be reached, 2 bad command line or input file.");
  command->add_option("--model", options->model_path, "Model profile JSON (layers with flops, param_bytes, "
                                                      "activation_bytes)")
      ->required()
      ->check(CLI::ExistingFile);
  auto* cluster = command->add_option("--cluster", options->cluster_path,
                                      "Cluster description JSON; without it the running cluster is used")
                      ->check(CLI::ExistingFile);
  command->add_flag("--json", options->json,
                    "Print the plan as JSON: {\"stages\": [{\"node\", \"gpu\", \"layers\": [first, last]}], "
                    "\"bottleneck_s\"}; version 2: stages {\"node\", \"gpus\": [...], \"tp\", \"layers\"}, then "
                    "\"micro_batches\", \"bottleneck_s\", \"v1_bottleneck_s\" and \"speedup_over_v1\"");
  auto* table = command->add_option("--gpu-table", options->gpu_table_path,
                                    "JSON {\"TYPE\": {\"tflops\": T, \"memory_gb\": M}} adding to or overriding "
                                    "the built-in GPU types (running cluster only)")
                    ->check(CLI::ExistingFile);
  auto* intra = command->add_option("--intra-gbps", options->intra_gbps,
                                    "GB/s between GPUs of one node (default 16, PCIe gen3; with --cluster it "
                                    "replaces every node's intra_node_gbps)");
  auto* inter = command->add_option("--inter-gbps", options->inter_gbps,
                                    "GB/s between nodes (default 3.1, 25 GbE; with --cluster it replaces "
                                    "inter_node_gbps)");
  intra->check(CLI::PositiveNumber);
  inter->check(CLI::PositiveNumber);
  command->add_option("--max-stages", options->max_stages, "Use at most this many stages (default: no limit)")
      ->check(CLI::NonNegativeNumber);
  auto* v1 = command->add_flag("--v1", options->v1,
                               "Version 1: one GPU per stage, even when the inputs have version-2 fields");
  auto* v2 = command->add_flag("--v2", options->v2,
                               "Version 2: stages of t x d identical GPUs (tensor-parallel x replicated), also for "
                               "version-1 inputs (grad_bytes = param_bytes / 4, no layer splittable without tp_bytes)");
  v1->excludes(v2);
  auto* micro = command->add_option("--micro-batches", options->micro_batches,
                                    "Version 2: micro-batches per iteration M, over which a replicated stage spreads "
                                    "its gradient all-reduce (default 32)")
                    ->check(CLI::PositiveNumber);
  auto* max_tp = command->add_option("--max-tp", options->max_tp,
                                     "Version 2: largest tensor-parallel degree t (1, 2, 4 or 8; default 8)")
                     ->check(CLI::IsMember({1, 2, 4, 8}));
  auto* max_dp = command->add_option("--max-dp", options->max_dp,
                                     "Version 2: largest data-parallel degree d (default: no limit)")
                     ->check(CLI::NonNegativeNumber);
  for (CLI::Option* option : {micro, max_tp, max_dp}) option->excludes(v1);
  add_head_options(*command, options->head);
  cluster->excludes(command->get_option("--address"));
  table->excludes(cluster);
  set_action(*command, [options, intra, inter, micro, max_tp, max_dp] {
    options->intra_given = intra->count() > 0;
    options->inter_given = inter->count() > 0;
    options->v2_option_given = micro->count() + max_tp->count() + max_dp->count() > 0;
    return plan(*options);
  });
}

}  // namespace troupe::cli
