// pipeline_serving: model serving over heterogeneous GPUs, planned.
//
// 1. Reads a model profile (model.json beside this file: a 12-layer MLP whose
//    per-layer flops, parameter and activation bytes are computed from its
//    layer sizes, and checked against them here).
// 2. Describes the GPUs it runs on for the planner: the running cluster's
//    alive nodes and their declared or detected GPUs (troupe::nodes()), or,
//    in local mode, this process's declared GPUs (default
//    "H100-80GB:1,A100-40GB:1,T4-16GB:2").
// 3. Plans the pipeline (troupe::scheduler::plan_pipeline: the split that
//    minimises the slowest stage) and prints it beside the uniform split.
// 4. Reserves the plan as a placement group (troupe::actors::place_plan:
//    bundle k pins stage k to its node and GPU type) and creates one stage
//    actor per bundle, holding its layers.
// 5. Streams requests (batches of random inputs) through the stages with
//    chained futures: stage k's result ref goes straight into stage k+1's
//    call, up to --inflight requests at once, so the stages work on
//    different requests at the same time and activations never pass through
//    the driver. Prints latency p50/p99 and throughput, each stage's measured
//    time per request beside the plan's predicted one
//    (troupe::actors::StageClock), and checks the first responses against
//    the same model run in one thread.
// 6. With --replans N, re-plans live (troupe/actors/replan.hpp): it polls the
//    cluster; when a node joins (and the plan over the larger cluster is
//    faster) or a node the plan uses is lost (or a stage dies), it ends the
//    requests in flight, checkpoints (a join) or takes the last checkpoint (a
//    loss), replaces the stages by the new plan's, restored per layer from
//    the checkpoint and checked against it, and goes on; it prints the old and
//    new plans and each plan's throughput. A stage's state is its layers and
//    per-layer serving statistics (rows served, per-feature sums).
//
//   ./pipeline_serving --requests 200 --inflight 8           # local mode, declared GPUs
//   troupe submit -- ./build/examples/pipeline_serving/pipeline_serving   # on a cluster
//   ./pipeline_serving --cluster cluster.json   # plan over a cluster file; stages placed by GPU type here
//   troupe submit -- ./pipeline_serving --replans 2 --requests 100   # add and stop a worker while it runs
//
// Stage math runs on the stage's GPU when its process has that CUDA device
// (declared GPUs have none: then on the CPU).
//
// Exit status: 0 when the checked responses match, 1 on a mismatch, an
// infeasible plan or a runtime error, 2 for a bad flag or input file.
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <string>
#include <vector>

#include <unistd.h>

#include <troupe/scheduler/error.hpp>

#include "serving.hpp"

namespace serving {
namespace {

int run(const Flags& flags, const Model& model, const sched::ClusterSpec& cluster,
        const troupe::actors::LiveClusterOptions& live) {
  using namespace std::chrono_literals;

  const sched::PlanResult result = sched::plan_pipeline(model.profile, cluster);
  if (!result.feasible()) {
    std::printf("pipeline_serving: no plan: %s\n", result.reason.c_str());
    return 1;
  }
  const sched::Plan& plan = result.plan;
  print_plan(model, cluster, plan, sched::evaluate(model.profile, cluster, sched::uniform_plan(model.profile, cluster)),
             flags);

  std::optional<Deployment> deployment = deploy(flags, model, plan, cluster, 0, "", -1);
  if (!deployment) return 1;

  Checked checked;
  if (flags.replans == 0) {
    const int status = serve(flags, model, *deployment, checked);
    if (status != 0) return status;
  } else {
    // Per-layer checkpoints every node can reach: here, one machine's /tmp
    // (a cluster of several machines needs a shared directory).
    std::string dir = flags.checkpoint_dir;
    const bool own_dir = dir.empty();
    if (own_dir) {
      const char* temp = std::getenv("TROUPE_TEMP_DIR");
      dir = (std::filesystem::path(temp != nullptr && *temp != '\0' ? temp : "/tmp") /
             ("pipeline-serving-" + std::to_string(::getpid())))
                .string();
    }
    const int status = serve_with_replanning(flags, model, std::move(*deployment), dir, live, checked);
    if (own_dir) {
      std::error_code error;
      std::filesystem::remove_all(dir, error);
    }
    if (status != 0) return status;
  }

  // The first responses (of each plan, when re-planning) against the whole
  // model in this thread.
  const std::int64_t rows = flags.batch > 0 ? flags.batch : model.batch_size;
  const std::int64_t features = model.layers.front().in;
  std::vector<kernels::Linear> reference;
  for (std::size_t l = 0; l < model.layers.size(); ++l) {
    reference.push_back(make_layer(model.layers[l], flags.seed, static_cast<int>(l), troupe::Device::cpu()));
  }
  constexpr double kTolerance = 1e-4;  // GPU stages use cuBLAS, the reference OpenBLAS
  int mismatches = 0;
  for (const auto& [request, response] : checked) {
    Tensor h = request_input(rows, features, flags.seed * 1000003ULL + request);
    for (std::size_t l = 0; l < reference.size(); ++l) {
      h = reference[l].forward(h);
      if (l + 1 < reference.size()) h = kernels::relu(h);
    }
    const double error = max_relative_error(response.get(60s), h);
    if (!(error <= kTolerance)) {
      std::printf("request %d: MISMATCH, max relative error %.2e\n", request, error);
      ++mismatches;
    }
  }
  if (mismatches > 0) {
    std::printf("result: MISMATCH in %d of %zu checked requests\n", mismatches, checked.size());
    return 1;
  }
  std::printf("result: OK, %zu of %zu checked requests match the single-thread model\n", checked.size(),
              checked.size());
  return 0;
}

// Local mode with no GPUs declared: declare the default set, or with
// --cluster every GPU of the file, so the plan's GPU types exist here.
void declare_local_gpus(int argc, char** argv, const sched::ClusterSpec* file) {
  const char* address = std::getenv("TROUPE_ADDRESS");
  const char* declared = std::getenv("TROUPE_GPUS");
  if ((address && *address) || (declared && *declared)) return;
  for (int i = 1; i < argc; ++i) {
    if (std::strncmp(argv[i], "--troupe-address=", 17) == 0 || std::strncmp(argv[i], "--troupe-gpus=", 14) == 0) return;
  }
  std::string spec = kDefaultGpus;
  if (file != nullptr) {
    spec.clear();
    for (const auto& node : file->nodes) {
      for (const auto& gpu : node.gpus) spec += (spec.empty() ? "" : ",") + gpu.type + ":1";
    }
  }
  ::setenv("TROUPE_GPUS", spec.c_str(), 1);
}

}  // namespace
}  // namespace serving

int main(int argc, char** argv) {
  using namespace serving;
  // Our flags first (init() removes the --troupe-* ones it knows).
  Flags flags;
  bool help = false;
  std::vector<char*> own{argv[0]};
  for (int i = 1; i < argc; ++i) {
    if (std::strncmp(argv[i], "--troupe-", 9) != 0) own.push_back(argv[i]);
  }
  if (!parse_flags(static_cast<int>(own.size()), own.data(), flags, help)) return 2;
  if (help) {
    std::cout << kUsage;
    return 0;
  }

  // The cluster file decides which GPUs local mode declares, so it is read
  // before init(); everything else after it, because an actor host (this
  // binary started by a node manager, with no flags) must reach init(),
  // which serves its actor and never returns, whatever files it lacks.
  sched::ClusterSpec file_cluster;
  try {
    if (!flags.cluster.empty()) file_cluster = sched::load_cluster(flags.cluster);
  } catch (const sched::SpecError& e) {
    std::cerr << "pipeline_serving: " << e.message() << '\n';
    return 2;
  }
  declare_local_gpus(argc, argv, flags.cluster.empty() ? nullptr : &file_cluster);
  try {
    troupe::init(argc, argv);
  } catch (const troupe::Error& e) {
    std::cerr << "pipeline_serving: " << e.message() << '\n';
    return 2;
  }

  Model model;
  sched::GpuTypeTable gpu_types;
  try {
    model = load_model(flags.model);
    if (!flags.gpu_table.empty()) gpu_types = sched::load_gpu_type_table(flags.gpu_table);
  } catch (const sched::SpecError& e) {
    std::cerr << "pipeline_serving: " << e.message() << '\n';
    troupe::shutdown();
    return 2;
  }
  int status = 1;
  try {
    sched::ClusterSpec cluster = file_cluster;
    const troupe::actors::LiveClusterOptions live{gpu_types, flags.intra_gbps, flags.inter_gbps};
    if (flags.cluster.empty()) cluster = troupe::actors::live_cluster_spec(live);
    if (flags.replans > 0 && !flags.cluster.empty()) {
      std::cerr << "pipeline_serving: --replans re-plans over the running cluster, not a --cluster file\n";
      troupe::shutdown();
      return 2;
    }
    status = run(flags, model, cluster, live);
  } catch (const std::exception& e) {
    std::cerr << "pipeline_serving: " << e.what() << '\n';
  }
  troupe::shutdown();
  return status;
}
