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
//
//   ./pipeline_serving --requests 200 --inflight 8           # local mode, declared GPUs
//   troupe submit -- ./build/examples/pipeline_serving/pipeline_serving   # on a cluster
//   ./pipeline_serving --cluster cluster.json   # plan over a cluster file; stages placed by GPU type here
//
// Stage math runs on the stage's GPU when its process has that CUDA device
// (declared GPUs have none: then on the CPU).
//
// Exit status: 0 when the checked responses match, 1 on a mismatch, an
// infeasible plan or a runtime error, 2 for a bad flag or input file.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <mutex>
#include <semaphore>
#include <string>
#include <string_view>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <troupe/actors/kernels.hpp>
#include <troupe/actors/plan_placement.hpp>
#include <troupe/actors/stage_times.hpp>
#include <troupe/runtime/cuda.hpp>
#include <troupe/scheduler/error.hpp>
#include <troupe/scheduler/planner.hpp>
#include <troupe/troupe.hpp>


namespace serving {

namespace kernels = troupe::kernels;
namespace sched = troupe::scheduler;
using troupe::Tensor;

constexpr const char* kDefaultGpus = "H100-80GB:1,A100-40GB:1,T4-16GB:2";

// ---- the model ------------------------------------------------------------------------------

struct LayerSize {
  std::int64_t in = 0;
  std::int64_t out = 0;
};

struct Model {
  sched::ModelProfile profile;
  std::vector<LayerSize> layers;
  std::int64_t batch_size = 0;  // the rows the profile's numbers are for
};

// Reads the profile and the layer sizes beside it, and checks that the
// profile is what the sizes give (see model.json's description). Throws
// sched::SpecError.
Model load_model(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw sched::SpecError(path + ": cannot open");
  nlohmann::json doc;
  try {
    doc = nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    throw sched::SpecError(path + ": " + e.what());
  }
  Model model;
  try {
    model.profile = sched::parse_model(doc);
  } catch (const sched::SpecError& e) {
    throw sched::SpecError(path + ": " + e.message());
  }
  if (!doc.contains("batch_size") || !doc["batch_size"].is_number_integer() || doc["batch_size"].get<long>() < 1) {
    throw sched::SpecError(path + ": \"batch_size\" must be a whole number >= 1");
  }
  model.batch_size = doc["batch_size"].get<std::int64_t>();
  const double b = static_cast<double>(model.batch_size);
  for (std::size_t l = 0; l < doc["layers"].size(); ++l) {
    const auto& layer = doc["layers"][l];
    const std::string where = fmt::format("{}: layers[{}]", path, l);
    if (!layer.contains("in_features") || !layer.contains("out_features") || !layer["in_features"].is_number_integer() ||
        !layer["out_features"].is_number_integer() || layer["in_features"].get<long>() < 1 ||
        layer["out_features"].get<long>() < 1) {
      throw sched::SpecError(where + ": needs whole \"in_features\" and \"out_features\" >= 1");
    }
    LayerSize size{layer["in_features"].get<std::int64_t>(), layer["out_features"].get<std::int64_t>()};
    if (l > 0 && size.in != model.layers.back().out) {
      throw sched::SpecError(fmt::format("{}: in_features {} but the layer before gives {}", where, size.in,
                                         model.layers.back().out));
    }
    const auto& p = model.profile.layers[l];
    const double in_f = static_cast<double>(size.in), out_f = static_cast<double>(size.out);
    if (p.flops != 2 * b * in_f * out_f || p.param_bytes != 4 * (in_f * out_f + out_f) ||
        p.activation_bytes != 4 * b * out_f) {
      throw sched::SpecError(where + ": flops, param_bytes or activation_bytes differ from what the layer sizes give");
    }
    model.layers.push_back(size);
  }
  return model;
}

// Layer `index`: Linear(in, out) seeded from the model seed; whoever builds
// it (a stage actor, the single-thread check) gets the same numbers.
kernels::Linear make_layer(const LayerSize& size, std::uint32_t seed, int index, troupe::Device device) {
  return kernels::Linear(size.in, size.out, seed + static_cast<std::uint32_t>(index) * 7919u, device);
}

// ---- a pipeline stage -------------------------------------------------------------------------

struct StageSpec {
  int first_layer = 0;
  std::vector<std::int64_t> widths;  // layer first_layer + i maps widths[i] -> widths[i + 1]
  bool ends_model = false;           // no ReLU after the model's last layer
  std::uint32_t seed = 0;

  template <class Archive>
  void serialize(Archive& archive) {
    archive(first_layer, widths, ends_model, seed);
  }
};

struct Placement {
  std::string node;       // the node's name (short id), "local" in local mode
  std::vector<int> gpus;  // the node's indexes of the stage's GPUs
  std::string device;     // where the math runs: "cpu" or "cuda:<i>"

  template <class Archive>
  void serialize(Archive& archive) {
    archive(node, gpus, device);
  }
};

class Stage {
 public:
  explicit Stage(StageSpec spec) : spec_(std::move(spec)), device_(pick_device()) {
    for (std::size_t i = 0; i + 1 < spec_.widths.size(); ++i) {
      layers_.push_back(make_layer({spec_.widths[i], spec_.widths[i + 1]}, spec_.seed,
                                   spec_.first_layer + static_cast<int>(i), device_));
    }
  }

  // The stage's layers on x [rows, widths.front()]: Linear, then ReLU except
  // after the model's last layer. The result stays on this stage's device;
  // the runtime may send its bytes to another process as soon as this
  // returns, so the kernels that wrote it must have finished.
  Tensor forward(const Tensor& x) {
    Tensor h = x.to(device_);
    for (std::size_t i = 0; i < layers_.size(); ++i) {
      h = layers_[i].forward(h);
      if (!(spec_.ends_model && i + 1 == layers_.size())) h = kernels::relu(h);
    }
    if (device_.is_cuda()) kernels::synchronize(device_);
    return h;
  }

  // Where this stage runs: its node and the node's index of its GPU.
  Placement where() const {
    Placement placement;
    placement.device = device_.to_string();
    const char* node = std::getenv("TROUPE_NODE_ID");
    if (node == nullptr || *node == '\0') {  // local mode: one node, GPU ids are the node's
      placement.node = "local";
      placement.gpus = troupe::get_gpu_ids();
      return placement;
    }
    // An actor host: the node manager named the node's GPUs in CUDA_VISIBLE_DEVICES.
    placement.node = std::string(node).substr(0, 12);
    const char* visible = std::getenv("CUDA_VISIBLE_DEVICES");
    for (const char* p = visible; p != nullptr && *p != '\0';) {
      char* end = nullptr;
      placement.gpus.push_back(static_cast<int>(std::strtol(p, &end, 10)));
      if (end == p) break;
      p = *end == ',' ? end + 1 : end;
    }
    return placement;
  }

 private:
  static troupe::Device pick_device() {
    const std::vector<int> gpus = troupe::get_gpu_ids();
    if (gpus.empty() || !troupe::cuda::available() || gpus.front() >= troupe::cuda::device_count()) {
      return troupe::Device::cpu();
    }
    return troupe::Device::cuda(gpus.front());
  }

  StageSpec spec_;
  troupe::Device device_;
  std::vector<kernels::Linear> layers_;
};

// ---- flags --------------------------------------------------------------------------------------

struct Flags {
  // Beside this source file.
#ifdef PIPELINE_SERVING_DIR
  std::string model = std::string(PIPELINE_SERVING_DIR) + "/model.json";
#else
  std::string model = (std::filesystem::path(__FILE__).parent_path() / "model.json").string();
#endif
  std::string cluster;    // a cluster file to plan over instead of the running GPUs
  std::string gpu_table;  // extra GPU figures
  int requests = 64;
  int inflight = 8;
  int batch = 0;  // 0: the profile's batch_size
  int check = 4;
  double intra_gbps = 450;   // NVLink-class: stages on one node hand activations over fast
  double inter_gbps = 12.5;  // 100 Gb/s between nodes
  std::uint32_t seed = 7;
};

constexpr const char* kUsage =
    "usage: pipeline_serving [--model FILE] [--cluster FILE] [--gpu-table FILE] [--requests N]\n"
    "                        [--inflight N] [--batch N] [--check N] [--intra-gbps G] [--inter-gbps G]\n"
    "                        [--seed N] [--troupe-gpus=SPEC] [--troupe-address=HOST:PORT]\n"
    "  --model       model profile with layer sizes (default: model.json beside the source)\n"
    "  --cluster     plan over this cluster file instead of the running GPUs; stages are then\n"
    "                placed by GPU type only (local mode declares the file's GPUs)\n"
    "  --gpu-table   JSON {\"TYPE\": {\"tflops\": T, \"memory_gb\": M}} for GPU models not built in\n"
    "  --requests    requests to serve (default 64)\n"
    "  --inflight    requests in flight at once (default 8)\n"
    "  --batch       rows per request (default: the profile's batch_size)\n"
    "  --check       responses checked against the single-thread model (default 4)\n"
    "  --intra-gbps  assumed GB/s between GPUs of a node (default 450, NVLink)\n"
    "  --inter-gbps  assumed GB/s between nodes (default 12.5, 100 Gb/s)\n"
    "  --seed        seed of weights and inputs (default 7)\n"
    "Local mode (no TROUPE_ADDRESS) declares the GPUs of TROUPE_GPUS or --troupe-gpus, else\n"
    "H100-80GB:1,A100-40GB:1,T4-16GB:2.\n";

bool parse_flags(int argc, char** argv, Flags& flags, bool& help) {
  for (int i = 1; i < argc; ++i) {
    std::string_view arg = argv[i];
    if (arg == "-h" || arg == "--help") {
      help = true;
      return true;
    }
    const auto eq = arg.find('=');
    const std::string name(arg.substr(0, eq));
    std::string value;
    if (eq != std::string_view::npos) {
      value = std::string(arg.substr(eq + 1));
    } else if (i + 1 < argc) {
      value = argv[++i];
    } else {
      std::cerr << "pipeline_serving: " << name << " needs a value\n" << kUsage;
      return false;
    }
    auto whole = [&](long min, long max, auto& out) {
      char* end = nullptr;
      const long parsed = std::strtol(value.c_str(), &end, 10);
      if (value.empty() || *end != '\0' || parsed < min || parsed > max) {
        std::cerr << "pipeline_serving: " << name << " wants a whole number from " << min << " to " << max
                  << ", got '" << value << "'\n";
        return false;
      }
      out = static_cast<std::remove_reference_t<decltype(out)>>(parsed);
      return true;
    };
    auto positive = [&](double& out) {
      char* end = nullptr;
      const double parsed = std::strtod(value.c_str(), &end);
      if (value.empty() || *end != '\0' || !(parsed > 0) || !std::isfinite(parsed)) {
        std::cerr << "pipeline_serving: " << name << " wants a number > 0, got '" << value << "'\n";
        return false;
      }
      out = parsed;
      return true;
    };
    bool ok = true;
    if (name == "--model") flags.model = value;
    else if (name == "--cluster") flags.cluster = value;
    else if (name == "--gpu-table") flags.gpu_table = value;
    else if (name == "--requests") ok = whole(1, 1000000, flags.requests);
    else if (name == "--inflight") ok = whole(1, 4096, flags.inflight);
    else if (name == "--batch") ok = whole(1, 1 << 20, flags.batch);
    else if (name == "--check") ok = whole(0, 1000000, flags.check);
    else if (name == "--seed") ok = whole(0, 1L << 31, flags.seed);
    else if (name == "--intra-gbps") ok = positive(flags.intra_gbps);
    else if (name == "--inter-gbps") ok = positive(flags.inter_gbps);
    else {
      std::cerr << "pipeline_serving: unknown flag '" << arg << "'\n" << kUsage;
      return false;
    }
    if (!ok) return false;
  }
  return true;
}

// ---- output ---------------------------------------------------------------------------------------

// Planned times are microseconds for this model on these GPUs.
std::string us(double seconds) { return fmt::format("{:.2f}", seconds * 1e6); }

void print_plan(const Model& model, const sched::ClusterSpec& cluster, const sched::Plan& plan,
                const sched::PlanEvaluation& uniform, const Flags& flags) {
  double params = 0;
  for (const auto& layer : model.profile.layers) params += layer.param_bytes;
  std::printf("pipeline_serving: model %s, %zu layers, %.1f MB of parameters (profile for %lld rows)\n",
              model.profile.name.c_str(), model.profile.layers.size(), params / 1e6,
              static_cast<long long>(model.batch_size));
  std::printf("cluster: %s, %zu GPUs on %zu node%s; links assumed %g GB/s in a node, %g GB/s between nodes\n",
              cluster.name.c_str(), cluster.gpu_count(), cluster.nodes.size(), cluster.nodes.size() == 1 ? "" : "s",
              flags.cluster.empty() ? flags.intra_gbps : cluster.nodes.front().intra_node_gbps,
              cluster.inter_node_gbps);
  std::printf("plan: %zu stage%s, bottleneck %s us per request (stage %d), %.0f requests/s on those GPUs\n",
              plan.stages.size(), plan.stages.size() == 1 ? "" : "s", us(plan.bottleneck_s).c_str(),
              plan.bottleneck_stage, plan.throughput());
  std::printf("  STAGE  NODE          GPU              LAYERS   COMPUTE us  COMM us\n");
  for (std::size_t k = 0; k < plan.stages.size(); ++k) {
    const auto& s = plan.stages[k];
    std::printf("  %-5zu  %-12s  %-15s  %-7s  %10s  %7s\n", k, s.node.c_str(),
                fmt::format("{} {}", s.gpu, s.gpu_type).c_str(),
                fmt::format("{}-{}", s.first_layer, s.last_layer).c_str(), us(s.compute_s).c_str(),
                us(s.comm_s).c_str());
  }
  if (uniform.valid && plan.bottleneck_s > 0) {
    std::printf("uniform split over %zu GPUs: bottleneck %s us; the plan is %.2fx as fast\n",
                uniform.plan.stages.size(), us(uniform.plan.bottleneck_s).c_str(),
                uniform.plan.bottleneck_s / plan.bottleneck_s);
  } else if (!uniform.valid) {
    std::printf("uniform split: infeasible (%s)\n", uniform.reason.c_str());
  }
}

// splitmix64 in [-1, 1): request inputs, the same on every platform.
Tensor request_input(std::int64_t rows, std::int64_t features, std::uint64_t seed) {
  Tensor out = Tensor::empty({rows, features}, troupe::DType::f32);
  float* data = out.data<float>();
  std::uint64_t state = seed;
  for (std::int64_t i = 0; i < out.numel(); ++i) {
    std::uint64_t z = (state += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    z ^= z >> 31;
    data[i] = static_cast<float>(z >> 40) / static_cast<float>(1ULL << 23) - 1.0f;
  }
  return out;
}

double max_relative_error(const Tensor& got_any, const Tensor& want) {
  const Tensor got = got_any.to(troupe::Device::cpu());
  if (got.shape() != want.shape()) return INFINITY;
  const float* g = got.data<float>();
  const float* w = want.data<float>();
  double diff = 0, scale = 1e-30;
  for (std::int64_t i = 0; i < got.numel(); ++i) {
    diff = std::max(diff, std::abs(static_cast<double>(g[i]) - w[i]));
    scale = std::max(scale, std::abs(static_cast<double>(w[i])));
  }
  return diff / scale;
}

double percentile(std::vector<double> values, double p) {
  std::sort(values.begin(), values.end());
  const std::size_t index = static_cast<std::size_t>(std::ceil(p * static_cast<double>(values.size()))) - 1;
  return values[std::min(index, values.size() - 1)];
}

// ---- the run --------------------------------------------------------------------------------------

int run(const Flags& flags, const Model& model, const sched::ClusterSpec& cluster) {
  using Clock = std::chrono::steady_clock;
  using namespace std::chrono_literals;

  const sched::PlanResult result = sched::plan_pipeline(model.profile, cluster);
  if (!result.feasible()) {
    std::printf("pipeline_serving: no plan: %s\n", result.reason.c_str());
    return 1;
  }
  const sched::Plan& plan = result.plan;
  print_plan(model, cluster, plan, sched::evaluate(model.profile, cluster, sched::uniform_plan(model.profile, cluster)),
             flags);

  // Reserve the plan, then one actor per stage in its bundle.
  troupe::actors::PlacePlanOptions placing;
  placing.pin_nodes = flags.cluster.empty();  // a cluster file's nodes are not this runtime's
  placing.group_name = "pipeline-serving";
  const troupe::actors::PlacedPlan placed = troupe::actors::place_plan(plan, cluster, placing);
  if (!placed.group.ready().wait_for(120s)) {
    std::printf("pipeline_serving: the plan's GPUs are not free: %s\n", placed.group.pending_reason().c_str());
    return 1;
  }
  std::vector<troupe::ActorHandle<Stage>> stages;
  for (std::size_t k = 0; k < plan.stages.size(); ++k) {
    const auto& s = plan.stages[k];
    StageSpec spec{s.first_layer, {model.layers[static_cast<std::size_t>(s.first_layer)].in}, k + 1 == plan.stages.size(),
                   flags.seed};
    for (int l = s.first_layer; l <= s.last_layer; ++l) spec.widths.push_back(model.layers[static_cast<std::size_t>(l)].out);
    troupe::ActorOptions options = placed.stages[k];
    options.name = "serving-stage-" + std::to_string(k);
    stages.push_back(troupe::actor<Stage>(options, spec));
  }
  // Check that each stage runs where its plan stage said: the planned node,
  // a GPU of the planned type there.
  const std::vector<troupe::NodeDescription> nodes = troupe::nodes();
  int misplaced = 0;
  for (std::size_t k = 0; k < stages.size(); ++k) {
    const Placement at = stages[k].call<&Stage::where>().get(120s);
    std::string model = "?";
    for (const auto& node : nodes) {
      if (node.name != at.node) continue;
      for (const auto& gpu : node.gpus) {
        if (!at.gpus.empty() && gpu.index == at.gpus.front()) model = gpu.model;
      }
    }
    const bool as_planned = model == plan.stages[k].gpu_type && (!placing.pin_nodes || at.node == plan.stages[k].node);
    if (!as_planned) ++misplaced;
    std::printf("stage %zu: layers %d-%d on node %s GPU %d %s, math on %s%s\n", k, plan.stages[k].first_layer,
                plan.stages[k].last_layer, at.node.c_str(), at.gpus.empty() ? -1 : at.gpus.front(), model.c_str(),
                at.device.c_str(), as_planned ? "" : fmt::format("  MISPLACED: planned {} {}", plan.stages[k].node,
                                                                   plan.stages[k].gpu_type).c_str());
  }
  if (misplaced > 0) {
    std::printf("result: MISPLACED, %d stage%s not where the plan put them\n", misplaced, misplaced == 1 ? "" : "s");
    return 1;
  }
  std::printf("placement: every stage is on its planned %s\n", placing.pin_nodes ? "node and GPU type" : "GPU type");

  const std::int64_t rows = flags.batch > 0 ? flags.batch : model.batch_size;
  const std::int64_t features = model.layers.front().in;
  // Every served request's calls are timed per stage (not the warm-up's).
  troupe::actors::StageClock clock(stages.size());
  auto submit = [&](int request, bool timed) {
    troupe::ObjectRef<Tensor> activation =
        stages[0].call<&Stage::forward>(request_input(rows, features, flags.seed * 1000003ULL + request));
    auto op = timed ? clock.record(0, activation) : troupe::actors::StageClock::kNoInput;
    for (std::size_t k = 1; k < stages.size(); ++k) {
      activation = stages[k].call<&Stage::forward>(activation);
      if (timed) op = clock.record(k, activation, op);
    }
    return activation;
  };
  (void)submit(-1, false).get(120s);  // warm-up: every stage has run once

  // Closed loop: at most `inflight` requests outstanding; each completion
  // (a continuation on the runtime's pool) records its latency and lets the
  // next request in.
  std::printf("serving %d requests of %lld rows, up to %d in flight\n", flags.requests, static_cast<long long>(rows),
              flags.inflight);
  struct Books {
    explicit Books(int inflight, int requests) : slots(inflight), latency_ms(static_cast<std::size_t>(requests)) {}
    std::counting_semaphore<> slots;
    std::vector<double> latency_ms;
  };
  auto books = std::make_shared<Books>(flags.inflight, flags.requests);  // outlives late continuations
  std::vector<troupe::ObjectRef<Tensor>> checked;
  std::vector<troupe::ObjectRef<int>> done;
  const auto start = Clock::now();
  for (int r = 0; r < flags.requests; ++r) {
    // A failed request skips its continuation and frees no slot: look for
    // one while waiting, and let its error out.
    while (!books->slots.try_acquire_for(100ms)) {
      for (const auto& d : done) {
        if (d.is_ready() && d.has_error()) (void)d.get();
      }
    }
    const auto submitted = Clock::now();
    troupe::ObjectRef<Tensor> response = submit(r, true);
    done.push_back(response.then([books, r, submitted](const Tensor&) {
      books->latency_ms[static_cast<std::size_t>(r)] =
          std::chrono::duration<double, std::milli>(Clock::now() - submitted).count();
      books->slots.release();
      return r;
    }));
    if (r < flags.check) checked.push_back(response);
  }
  (void)troupe::when_all(done).get(600s);
  const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
  const std::vector<double>& latency_ms = books->latency_ms;

  std::printf("latency p50 %.2f ms, p99 %.2f ms; throughput %.1f requests/s (%.0f rows/s)\n",
              percentile(latency_ms, 0.50), percentile(latency_ms, 0.99), flags.requests / seconds,
              static_cast<double>(flags.requests * rows) / seconds);
  // What each stage took per request (its own time, not its queue) beside
  // what the plan predicted for its GPU; on declared GPUs the math runs on
  // the CPU, so expect ratios well above 1 there.
  std::printf("stage times per request, measured beside the plan's:\n%s",
              troupe::actors::format_stage_time_report(troupe::actors::stage_time_report(plan, clock.measure()))
                  .c_str());

  // The first responses against the whole model in this thread.
  std::vector<kernels::Linear> reference;
  for (std::size_t l = 0; l < model.layers.size(); ++l) {
    reference.push_back(make_layer(model.layers[l], flags.seed, static_cast<int>(l), troupe::Device::cpu()));
  }
  constexpr double kTolerance = 1e-4;  // GPU stages use cuBLAS, the reference OpenBLAS
  int mismatches = 0;
  for (std::size_t r = 0; r < checked.size(); ++r) {
    Tensor h = request_input(rows, features, flags.seed * 1000003ULL + r);
    for (std::size_t l = 0; l < reference.size(); ++l) {
      h = reference[l].forward(h);
      if (l + 1 < reference.size()) h = kernels::relu(h);
    }
    const double error = max_relative_error(checked[r].get(60s), h);
    if (!(error <= kTolerance)) {
      std::printf("request %zu: MISMATCH, max relative error %.2e\n", r, error);
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

}  // namespace serving

TROUPE_ACTOR(serving::Stage, (serving::StageSpec), forward, where);

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
    if (flags.cluster.empty()) {
      troupe::actors::LiveClusterOptions live{gpu_types, flags.intra_gbps, flags.inter_gbps};
      cluster = troupe::actors::live_cluster_spec(live);
    }
    status = run(flags, model, cluster);
  } catch (const std::exception& e) {
    std::cerr << "pipeline_serving: " << e.what() << '\n';
  }
  troupe::shutdown();
  return status;
}
