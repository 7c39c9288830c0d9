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
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <memory>
#include <mutex>
#include <optional>
#include <semaphore>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include <unistd.h>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <troupe/actors/checkpoint.hpp>
#include <troupe/actors/kernels.hpp>
#include <troupe/actors/plan_placement.hpp>
#include <troupe/actors/replan.hpp>
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
  // Re-planning: the stage's layers are read from the checkpoint of this
  // step in restore_directory (layer l from layer-<l>/) instead of made from
  // the seed; -1: a fresh start.
  std::string restore_directory{};
  std::int64_t restore_step = -1;

  template <class Archive>
  void serialize(Archive& archive) {
    archive(first_layer, widths, ends_model, seed, restore_directory, restore_step);
  }
};

// ---- a layer's state and its checkpoints ------------------------------------------------------
//
// A stage's state is its layers' parameters and, per layer, serving
// statistics that every request changes: the rows served and the sum of each
// output feature over them (what a drift monitor would watch). Checkpoints
// are per layer, `<directory>/layer-<l>/step-<S>.ckpt` (troupe's checkpoint
// files, kind "ServingLayer": weight, bias, sums, rows), S the requests the
// state has taken, so a plan that cuts the model elsewhere restores each new
// stage from the layers it now holds.

constexpr const char* kLayerKind = "ServingLayer";
constexpr int kKeepCheckpoints = 3;

std::filesystem::path layer_directory(const std::string& directory, int layer) {
  return std::filesystem::path(directory) / ("layer-" + std::to_string(layer));
}

// FNV-1a-64 over the tensors' bytes, in order: equal digests, equal state.
struct Digest {
  std::uint64_t value = 0xcbf29ce484222325ULL;
  void add(const Tensor& tensor) {
    const Tensor host = tensor.to(troupe::Device::cpu());
    const auto* bytes = static_cast<const unsigned char*>(host.raw_data());
    for (std::size_t i = 0; i < host.nbytes(); ++i) value = (value ^ bytes[i]) * 0x100000001b3ULL;
  }
};

// The digest of layers [first, last] as the checkpoint of `step` holds them.
std::uint64_t checkpoint_digest(const std::string& directory, int first, int last, std::int64_t step) {
  Digest digest;
  for (int l = first; l <= last; ++l) {
    const auto data = troupe::actors::read_checkpoint(
        troupe::actors::checkpoint_path(layer_directory(directory, l), step), kLayerKind);
    for (const Tensor& t : data.tensors) digest.add(t);
  }
  return digest.value;
}

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
      const int l = spec_.first_layer + static_cast<int>(i);
      const std::int64_t out = spec_.widths[i + 1];
      if (spec_.restore_step < 0) {
        layers_.push_back(make_layer({spec_.widths[i], out}, spec_.seed, l, device_));
        sums_.push_back(Tensor::zeros({out}, troupe::DType::f32));
        rows_.push_back(Tensor::zeros({1}, troupe::DType::i64));
        continue;
      }
      const std::filesystem::path dir = layer_directory(spec_.restore_directory, l);
      auto data = troupe::actors::read_checkpoint(troupe::actors::checkpoint_path(dir, spec_.restore_step), kLayerKind);
      if (data.tensors.size() != 4 || data.tensors[0].shape() != Tensor::Shape{spec_.widths[i], out} ||
          data.tensors[2].shape() != Tensor::Shape{out}) {
        throw troupe::Error(troupe::Errc::serialization,
                            fmt::format("layer {}: the checkpoint of step {} does not fit a {}x{} layer", l,
                                        spec_.restore_step, spec_.widths[i], out));
      }
      layers_.emplace_back(data.tensors[0].to(device_), data.tensors[1].to(device_));
      sums_.push_back(data.tensors[2]);
      rows_.push_back(data.tensors[3]);
      // The files after this step belong to a timeline that was given up.
      for (const std::int64_t step : troupe::actors::list_checkpoints(dir)) {
        if (step > spec_.restore_step) std::filesystem::remove(troupe::actors::checkpoint_path(dir, step));
      }
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
      count(i, h);
    }
    if (device_.is_cuda()) kernels::synchronize(device_);
    return h;
  }

  // Writes every layer's state as the checkpoint of `step` (requests taken)
  // and keeps the newest kKeepCheckpoints per layer; returns the state's digest.
  std::uint64_t save(std::string directory, std::int64_t step) {
    for (std::size_t i = 0; i < layers_.size(); ++i) {
      const std::filesystem::path dir = layer_directory(directory, spec_.first_layer + static_cast<int>(i));
      troupe::actors::write_checkpoint(
          dir, {kLayerKind, step,
                {layers_[i].weight.to(troupe::Device::cpu()), layers_[i].bias.to(troupe::Device::cpu()), sums_[i],
                 rows_[i]}});
      std::vector<std::int64_t> steps = troupe::actors::list_checkpoints(dir);
      for (std::size_t k = 0; k + kKeepCheckpoints < steps.size(); ++k) {
        std::filesystem::remove(troupe::actors::checkpoint_path(dir, steps[k]));
      }
    }
    return digest();
  }

  // The digest of the stage's state (checkpoint_digest over its layers'
  // files gives the same for the state they hold).
  std::uint64_t digest() const {
    Digest digest;
    for (std::size_t i = 0; i < layers_.size(); ++i) {
      digest.add(layers_[i].weight);
      digest.add(layers_[i].bias);
      digest.add(sums_[i]);
      digest.add(rows_[i]);
    }
    return digest.value;
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

  // Layer i served `out`: its rows and per-feature sums, in the order the
  // requests came (one caller, in order: deterministic).
  void count(std::size_t i, const Tensor& out) {
    const Tensor host = out.to(troupe::Device::cpu());
    const float* v = host.data<float>();
    float* sums = sums_[i].data<float>();
    const std::int64_t rows = host.size(0), features = host.size(1);
    for (std::int64_t r = 0; r < rows; ++r) {
      for (std::int64_t f = 0; f < features; ++f) sums[f] += v[r * features + f];
    }
    rows_[i].data<std::int64_t>()[0] += rows;
  }

  StageSpec spec_;
  troupe::Device device_;
  std::vector<kernels::Linear> layers_;
  std::vector<Tensor> sums_;  // per layer: [out] f32, host
  std::vector<Tensor> rows_;  // per layer: [1] i64, host
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
  // Live re-planning (0 re-plans: off).
  int replans = 0;
  std::string checkpoint_dir;  // "" = <TROUPE_TEMP_DIR or /tmp>/pipeline-serving-<pid>, removed at the end
  int checkpoint_every = 16;
  int poll_ms = 1000;
  int loss_wait_s = 15;
  int max_seconds = 600;
  double min_gain = 0.05;
  std::string status_file;
};

constexpr const char* kUsage =
    "usage: pipeline_serving [--model FILE] [--cluster FILE] [--gpu-table FILE] [--requests N]\n"
    "                        [--inflight N] [--batch N] [--check N] [--intra-gbps G] [--inter-gbps G]\n"
    "                        [--seed N] [--replans N] [--checkpoint-dir DIR] [--checkpoint-every N]\n"
    "                        [--poll-ms MS] [--loss-wait-s S] [--max-seconds S] [--min-gain F]\n"
    "                        [--status-file FILE] [--troupe-gpus=SPEC] [--troupe-address=HOST:PORT]\n"
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
    "Live re-planning (--replans N > 0): the cluster is polled; when a node joins or one the\n"
    "plan uses is lost (or a stage dies), a new plan over the cluster as it is now replaces the\n"
    "stages, restored from their last checkpoint; the run ends after N re-plans and --requests\n"
    "requests served after the last one.\n"
    "  --replans          re-plans to wait for (default 0: no re-planning)\n"
    "  --checkpoint-dir   per-layer checkpoints, reachable from every node (default: a new\n"
    "                     directory under TROUPE_TEMP_DIR or /tmp, removed at the end)\n"
    "  --checkpoint-every requests between checkpoints (default 16)\n"
    "  --poll-ms          cluster poll interval (default 1000)\n"
    "  --loss-wait-s      after a stage died, how long to wait for the head to drop its node\n"
    "                     (default 15); then re-plan over the nodes listed\n"
    "  --max-seconds      give up (status 1) when the run takes longer (default 600)\n"
    "  --min-gain         a join is acted on only if the new plan's bottleneck is this\n"
    "                     fraction lower (default 0.05)\n"
    "  --status-file      rewritten with \"replans=R answered=N step=S\" as the run goes\n"
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
    else if (name == "--replans") ok = whole(0, 1000, flags.replans);
    else if (name == "--checkpoint-dir") flags.checkpoint_dir = value;
    else if (name == "--checkpoint-every") ok = whole(1, 1000000, flags.checkpoint_every);
    else if (name == "--poll-ms") ok = whole(10, 60000, flags.poll_ms);
    else if (name == "--loss-wait-s") ok = whole(0, 3600, flags.loss_wait_s);
    else if (name == "--max-seconds") ok = whole(1, 86400, flags.max_seconds);
    else if (name == "--status-file") flags.status_file = value;
    else if (name == "--min-gain") {
      char* end = nullptr;
      const double parsed = std::strtod(value.c_str(), &end);
      if (value.empty() || *end != '\0' || !(parsed >= 0 && parsed < 1)) {
        std::cerr << "pipeline_serving: --min-gain wants a number in [0, 1), got '" << value << "'\n";
        return false;
      }
      flags.min_gain = parsed;
    }
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

void print_stages(const sched::Plan& plan) {
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
}

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
  print_stages(plan);
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

// ---- placing a plan ---------------------------------------------------------------------------

struct Deployment {
  sched::Plan plan;
  sched::ClusterSpec cluster;  // the cluster it was planned and placed over
  troupe::PlacementGroup group;
  std::vector<troupe::ActorHandle<Stage>> stages;
};

// Reserves `plan` as a placement group and creates one stage actor per
// bundle (generation g > 0: the g-th re-plan, its stages restored from the
// checkpoint of `restore_step`), then checks that each stage runs where its
// plan stage said: the planned node, a GPU of the planned type there.
// Returns nullopt after printing why not.
std::optional<Deployment> deploy(const Flags& flags, const Model& model, const sched::Plan& plan,
                                 const sched::ClusterSpec& cluster, int generation, const std::string& checkpoint_dir,
                                 std::int64_t restore_step) {
  using namespace std::chrono_literals;
  troupe::actors::PlacePlanOptions placing;
  placing.pin_nodes = flags.cluster.empty();  // a cluster file's nodes are not this runtime's
  placing.group_name = generation == 0 ? "pipeline-serving" : fmt::format("pipeline-serving-{}", generation);
  const troupe::actors::PlacedPlan placed = troupe::actors::place_plan(plan, cluster, placing);
  if (!placed.group.ready().wait_for(120s)) {
    std::printf("pipeline_serving: the plan's GPUs are not free: %s\n", placed.group.pending_reason().c_str());
    return std::nullopt;
  }
  Deployment out{plan, cluster, placed.group, {}};
  for (std::size_t k = 0; k < plan.stages.size(); ++k) {
    const auto& s = plan.stages[k];
    StageSpec spec{s.first_layer, {model.layers[static_cast<std::size_t>(s.first_layer)].in}, k + 1 == plan.stages.size(),
                   flags.seed};
    for (int l = s.first_layer; l <= s.last_layer; ++l) spec.widths.push_back(model.layers[static_cast<std::size_t>(l)].out);
    spec.restore_directory = checkpoint_dir;
    spec.restore_step = restore_step;
    troupe::ActorOptions options = placed.stages[k];
    options.name = generation == 0 ? "serving-stage-" + std::to_string(k)
                                   : fmt::format("serving-stage-{}-plan-{}", k, generation);
    out.stages.push_back(troupe::actor<Stage>(options, spec));
  }
  const std::vector<troupe::NodeDescription> nodes = troupe::nodes();
  int misplaced = 0;
  for (std::size_t k = 0; k < out.stages.size(); ++k) {
    const Placement at = out.stages[k].call<&Stage::where>().get(120s);
    std::string gpu_model = "?";
    for (const auto& node : nodes) {
      if (node.name != at.node) continue;
      for (const auto& gpu : node.gpus) {
        if (!at.gpus.empty() && gpu.index == at.gpus.front()) gpu_model = gpu.model;
      }
    }
    const bool as_planned =
        gpu_model == plan.stages[k].gpu_type && (!placing.pin_nodes || at.node == plan.stages[k].node);
    if (!as_planned) ++misplaced;
    std::printf("stage %zu: layers %d-%d on node %s GPU %d %s, math on %s%s\n", k, plan.stages[k].first_layer,
                plan.stages[k].last_layer, at.node.c_str(), at.gpus.empty() ? -1 : at.gpus.front(), gpu_model.c_str(),
                at.device.c_str(), as_planned ? "" : fmt::format("  MISPLACED: planned {} {}", plan.stages[k].node,
                                                                   plan.stages[k].gpu_type).c_str());
  }
  if (misplaced > 0) {
    std::printf("result: MISPLACED, %d stage%s not where the plan put them\n", misplaced, misplaced == 1 ? "" : "s");
    return std::nullopt;
  }
  std::printf("placement: every stage is on its planned %s\n", placing.pin_nodes ? "node and GPU type" : "GPU type");
  return out;
}

// Submits request `request` through the stages (chained: each stage's
// result ref goes into the next one's call); records its calls in `clock`.
troupe::ObjectRef<Tensor> submit_request(const Flags& flags, const Model& model, const Deployment& deployment,
                                         int request, troupe::actors::StageClock* clock) {
  const std::int64_t rows = flags.batch > 0 ? flags.batch : model.batch_size;
  const std::int64_t features = model.layers.front().in;
  const auto& stages = deployment.stages;
  troupe::ObjectRef<Tensor> activation =
      stages[0].call<&Stage::forward>(request_input(rows, features, flags.seed * 1000003ULL + request));
  auto op = clock != nullptr ? clock->record(0, activation) : troupe::actors::StageClock::kNoInput;
  for (std::size_t k = 1; k < stages.size(); ++k) {
    activation = stages[k].call<&Stage::forward>(activation);
    if (clock != nullptr) op = clock->record(k, activation, op);
  }
  return activation;
}

// Responses to check against the single-thread model: (request, response).
using Checked = std::vector<std::pair<int, troupe::ObjectRef<Tensor>>>;

// ---- serving on one plan ----------------------------------------------------------------------

int serve(const Flags& flags, const Model& model, const Deployment& deployment, Checked& checked) {
  using Clock = std::chrono::steady_clock;
  using namespace std::chrono_literals;
  const std::int64_t rows = flags.batch > 0 ? flags.batch : model.batch_size;
  // Every served request's calls are timed per stage (not the warm-up's).
  troupe::actors::StageClock clock(deployment.stages.size());
  (void)submit_request(flags, model, deployment, -1, nullptr).get(120s);  // warm-up: every stage has run once

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
    troupe::ObjectRef<Tensor> response = submit_request(flags, model, deployment, r, &clock);
    done.push_back(response.then([books, r, submitted](const Tensor&) {
      books->latency_ms[static_cast<std::size_t>(r)] =
          std::chrono::duration<double, std::milli>(Clock::now() - submitted).count();
      books->slots.release();
      return r;
    }));
    if (r < flags.check) checked.emplace_back(r, response);
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
              troupe::actors::format_stage_time_report(
                  troupe::actors::stage_time_report(deployment.plan, clock.measure()))
                  .c_str());
  return 0;
}

// ---- serving with live re-planning ------------------------------------------------------------
//
// The driver polls the cluster (ClusterWatcher) between requests. When it
// changes, or a request fails because a stage died, decide_replan says
// whether the plan must (a node or GPU it uses is gone, a stage died) or
// may (nodes joined and the new plan is min_gain faster) be replaced. To
// replace it: let the requests in flight end (a join: all complete, and
// every stage checkpoints now, so nothing is lost; a loss: the dead stages'
// requests fail and are sent again later), take the newest checkpoint every
// layer has, kill the old stages and remove their placement group, place the
// new plan, construct its stages from the checkpoint's layer files, check
// each new stage's state digest against the files, and go on serving.

class Replanning {
 public:
  using Clock = std::chrono::steady_clock;

  Replanning(const Flags& flags, const Model& model, Deployment deployment, std::string checkpoint_dir,
             const troupe::actors::LiveClusterOptions& live, Checked& checked)
      : flags_(flags),
        model_(model),
        deployment_(std::move(deployment)),
        dir_(std::move(checkpoint_dir)),
        checked_(checked),
        watcher_({.interval = std::chrono::milliseconds(flags.poll_ms), .cluster = live}),
        known_(deployment_.cluster),
        started_(Clock::now()) {
    policy_.min_gain = flags.min_gain;
    const auto view = watcher_.current();
    // A change between planning and now is acted on at the first look.
    seen_version_ = troupe::actors::cluster_change(known_, view.cluster).empty() ? view.version : ~view.version;
  }

  int run() {
    using namespace std::chrono_literals;
    // Step 0: the state every later checkpoint grows from.
    if (!checkpoint_now()) {
      std::printf("pipeline_serving: the first checkpoint failed: %s\n", failure_.c_str());
      return 1;
    }
    start_phase();
    std::printf("serving with live re-planning: until %d re-plan%s and %d requests after the last, up to %d in "
                "flight; checkpoints every %d requests in %s; polling the cluster every %d ms\n",
                flags_.replans, flags_.replans == 1 ? "" : "s", flags_.requests, flags_.inflight,
                flags_.checkpoint_every, dir_.c_str(), flags_.poll_ms);
    while (true) {
      harvest();
      finish_checkpoint(false);
      write_status();
      if (done_submitting() && inflight_.empty() && !stage_failed_) break;
      if (Clock::now() - started_ > std::chrono::seconds(flags_.max_seconds)) {
        std::printf("pipeline_serving: gave up after %d s with %d of %d re-plans (%s)\n", flags_.max_seconds,
                    replans_, flags_.replans, watcher_.last_error().empty() ? "no more cluster changes"
                                                                            : watcher_.last_error().c_str());
        return 1;
      }
      if (stage_failed_ || watcher_.current().version != seen_version_) {
        const int status = replan();
        if (status != 0) return status;
        continue;
      }
      if (!done_submitting() && inflight_.size() < static_cast<std::size_t>(flags_.inflight)) {
        submit_next();
        continue;
      }
      if (!inflight_.empty()) (void)inflight_.front().response.wait_for(20ms);
      else std::this_thread::sleep_for(20ms);
    }
    end_phase();
    std::printf("served %d requests over %d plan%s; %d re-plan%s\n", answered_, replans_ + 1, replans_ == 0 ? "" : "s",
                replans_, replans_ == 1 ? "" : "s");
    return 0;
  }

 private:
  struct InFlight {
    int request = 0;
    troupe::ObjectRef<Tensor> response;
    Clock::time_point submitted{};
  };
  struct PendingCheckpoint {
    std::int64_t step = 0;
    std::vector<troupe::ObjectRef<std::uint64_t>> saves;
  };

  bool done_submitting() const {
    return replans_ >= flags_.replans && submitted_in_phase_ >= flags_.requests && resend_.empty();
  }

  void submit_next() {
    int request;
    if (!resend_.empty()) {
      request = resend_.front();
      resend_.pop_front();
    } else {
      request = next_request_++;
    }
    inflight_.push_back({request, submit_request(flags_, model_, deployment_, request, clock_.get()), Clock::now()});
    ++submitted_in_phase_;
    ++state_step_;
    if (state_step_ % flags_.checkpoint_every == 0 && !pending_) {
      // Each stage runs this caller's calls in order: its save comes after
      // its part of every request submitted so far, and before any later.
      PendingCheckpoint pending{state_step_, {}};
      for (const auto& stage : deployment_.stages) pending.saves.push_back(stage.call<&Stage::save>(dir_, state_step_));
      pending_ = std::move(pending);
    }
  }

  // Takes the finished requests at the front (responses complete in order).
  void harvest() {
    while (!inflight_.empty() && inflight_.front().response.is_ready()) {
      take(inflight_.front());
      inflight_.pop_front();
    }
  }

  void take(const InFlight& f) {
    if (f.response.has_error()) {
      if (!stage_failed_) {
        try {
          (void)f.response.get();
        } catch (const std::exception& e) {
          failure_ = e.what();
        }
      }
      stage_failed_ = true;
      resend_.push_back(f.request);
      ++resent_;
      return;
    }
    ++answered_;
    ++phase_answered_;
    latency_ms_.push_back(std::chrono::duration<double, std::milli>(Clock::now() - f.submitted).count());
    if (phase_checked_ < flags_.check) {
      checked_.emplace_back(f.request, f.response);
      ++phase_checked_;
    }
  }

  // A checkpoint counts once every stage wrote it; wait: block for it.
  void finish_checkpoint(bool wait) {
    using namespace std::chrono_literals;
    if (!pending_) return;
    bool ok = true;
    for (const auto& save : pending_->saves) {
      if (wait) (void)save.wait_for(60s);
      if (!save.is_ready()) {
        if (!wait) return;
        (void)save.cancel();
        ok = false;
      } else if (save.has_error()) {
        ok = false;
      }
    }
    if (ok) last_checkpoint_ = pending_->step;
    pending_.reset();
  }

  bool checkpoint_now() {
    using namespace std::chrono_literals;
    finish_checkpoint(true);
    PendingCheckpoint pending{state_step_, {}};
    for (const auto& stage : deployment_.stages) pending.saves.push_back(stage.call<&Stage::save>(dir_, state_step_));
    for (const auto& save : pending.saves) {
      try {
        (void)save.get(60s);
      } catch (const std::exception& e) {
        failure_ = e.what();
        return false;
      }
    }
    last_checkpoint_ = state_step_;
    return true;
  }

  void start_phase() {
    phase_started_ = Clock::now();
    phase_answered_ = 0;
    phase_checked_ = 0;
    submitted_in_phase_ = 0;
    latency_ms_.clear();
    clock_ = std::make_unique<troupe::actors::StageClock>(deployment_.stages.size());
  }

  void end_phase() {
    const double seconds = std::chrono::duration<double>(Clock::now() - phase_started_).count();
    std::printf("plan %d: served %d requests in %.2f s: throughput %.1f requests/s; latency p50 %.2f ms, p99 %.2f ms\n",
                replans_, phase_answered_, seconds, seconds > 0 ? phase_answered_ / seconds : 0.0,
                latency_ms_.empty() ? 0.0 : percentile(latency_ms_, 0.5),
                latency_ms_.empty() ? 0.0 : percentile(latency_ms_, 0.99));
    std::printf("plan %d stage times per request, measured beside the plan's:\n%s", replans_,
                troupe::actors::format_stage_time_report(
                    troupe::actors::stage_time_report(deployment_.plan, clock_->measure()))
                    .c_str());
  }

  void write_status() {
    if (flags_.status_file.empty()) return;
    const std::string text = fmt::format("replans={} answered={} step={}\n", replans_, answered_, state_step_);
    if (text == last_status_) return;
    const std::string temp = flags_.status_file + ".tmp";
    {
      std::ofstream out(temp, std::ios::trunc);
      out << text;
    }
    std::error_code error;
    std::filesystem::rename(temp, flags_.status_file, error);
    last_status_ = text;
  }

  int replan() {
    using namespace std::chrono_literals;
    const auto began = Clock::now();
    troupe::actors::ClusterWatcher::View view;
    if (stage_failed_) {
      std::printf("a stage failed (%s); waiting up to %d s for the cluster to show the loss\n", failure_.c_str(),
                  flags_.loss_wait_s);
      view = watcher_.wait_for_change(seen_version_, std::chrono::seconds(flags_.loss_wait_s));
    } else {
      view = watcher_.current();
    }
    const auto decision = troupe::actors::decide_replan(model_.profile, deployment_.plan, known_, view.cluster,
                                                        stage_failed_, policy_);
    std::printf("cluster: %s\n", decision.change.describe(known_, view.cluster).c_str());
    if (!decision.adopt) {
      std::printf("re-plan: %s\n", decision.reason.c_str());
      if (decision.need == troupe::actors::ReplanNeed::forced) return 1;
      known_ = view.cluster;
      seen_version_ = view.version;
      return 0;
    }
    // Let every request in flight end: completed ones are answered, failed
    // ones sent again on the new plan.
    for (auto& f : inflight_) {
      if (!f.response.wait_for(60s)) (void)f.response.cancel();
    }
    while (!inflight_.empty()) {
      if (inflight_.front().response.is_ready()) take(inflight_.front());
      else resend_.push_back(inflight_.front().request);
      inflight_.pop_front();
    }
    finish_checkpoint(true);
    // A plan that still runs checkpoints now and loses nothing; after a loss
    // the newest checkpoint every layer has is the state to go on from.
    bool fresh = false;
    if (!stage_failed_ && decision.need != troupe::actors::ReplanNeed::forced) fresh = checkpoint_now();
    const double drained_s = std::chrono::duration<double>(Clock::now() - began).count();
    const std::int64_t restore = last_checkpoint_;
    const std::int64_t lost = state_step_ - restore;
    end_phase();

    std::printf("re-plan %d (%s): %s\n", replans_ + 1, troupe::actors::to_string(decision.need),
                decision.reason.c_str());
    std::printf("  old plan: %s (bottleneck %s us)\n", troupe::actors::plan_summary(deployment_.plan).c_str(),
                us(deployment_.plan.bottleneck_s).c_str());
    std::printf("  new plan: %s (bottleneck %s us)\n", troupe::actors::plan_summary(decision.candidate.plan).c_str(),
                us(decision.candidate.plan.bottleneck_s).c_str());
    print_stages(decision.candidate.plan);

    // The old stages go, with the reservation that holds their GPUs.
    const auto placing = Clock::now();
    for (const auto& stage : deployment_.stages) {
      try {
        troupe::kill(stage);
      } catch (const std::exception&) {  // already dead with its node
      }
    }
    try {
      troupe::remove_placement_group(deployment_.group);
    } catch (const std::exception& e) {
      std::printf("  (removing the old placement group: %s)\n", e.what());
    }
    std::optional<Deployment> next =
        deploy(flags_, model_, decision.candidate.plan, view.cluster, replans_ + 1, dir_, restore);
    if (!next) return 1;
    const auto checking = Clock::now();
    const double placed_s = std::chrono::duration<double>(checking - placing).count();
    for (std::size_t k = 0; k < next->stages.size(); ++k) {
      const auto& s = next->plan.stages[k];
      const std::uint64_t got = next->stages[k].call<&Stage::digest>().get(60s);
      const std::uint64_t want = checkpoint_digest(dir_, s.first_layer, s.last_layer, restore);
      if (got != want) {
        std::printf("result: STATE MISMATCH, stage %zu (layers %d-%d) restored %016llx, its checkpoint files hold "
                    "%016llx\n", k, s.first_layer, s.last_layer, static_cast<unsigned long long>(got),
                    static_cast<unsigned long long>(want));
        return 1;
      }
    }
    std::printf("  restored: every stage's state equals the checkpoint of step %lld (layers, rows served and "
                "feature sums)\n", static_cast<long long>(restore));
    std::printf("  re-plan %d took %.2f s: %.2f s to end the requests in flight%s, %.2f s to place and restore "
                "the %zu new stages, %.2f s to check their state; %s; %d failed request%s sent again\n",
                replans_ + 1, std::chrono::duration<double>(Clock::now() - began).count(), drained_s,
                fresh ? " and checkpoint" : (stage_failed_ ? " and wait for the loss to show" : ""), placed_s,
                next->stages.size(), std::chrono::duration<double>(Clock::now() - checking).count(),
                lost == 0 ? std::string("nothing lost").c_str()
                          : fmt::format("lost the state updates of the {} requests served since that checkpoint "
                                        "(their responses were delivered)", lost).c_str(),
                resent_, resent_ == 1 ? "" : "s");
    deployment_ = std::move(*next);
    known_ = view.cluster;
    seen_version_ = view.version;
    state_step_ = restore;
    stage_failed_ = false;
    failure_.clear();
    resent_ = 0;
    ++replans_;
    start_phase();
    write_status();
    return 0;
  }

  const Flags& flags_;
  const Model& model_;
  Deployment deployment_;
  std::string dir_;
  Checked& checked_;
  troupe::actors::ClusterWatcher watcher_;
  troupe::actors::ReplanPolicy policy_;
  sched::ClusterSpec known_;  // the cluster the decisions so far were made over
  std::uint64_t seen_version_ = 0;
  Clock::time_point started_;

  std::deque<InFlight> inflight_;
  std::deque<int> resend_;
  int next_request_ = 0;
  int answered_ = 0;
  int replans_ = 0;
  int resent_ = 0;
  bool stage_failed_ = false;
  std::string failure_;
  std::int64_t state_step_ = 0;  // requests the stages' state has taken
  std::int64_t last_checkpoint_ = -1;
  std::optional<PendingCheckpoint> pending_;
  std::string last_status_;

  Clock::time_point phase_started_{};
  int phase_answered_ = 0;
  int phase_checked_ = 0;
  int submitted_in_phase_ = 0;
  std::vector<double> latency_ms_;
  std::unique_ptr<troupe::actors::StageClock> clock_;
};

// ---- the run --------------------------------------------------------------------------------------

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
    int status = 1;
    {
      Replanning replanning(flags, model, std::move(*deployment), dir, live, checked);
      status = replanning.run();
    }
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

}  // namespace serving

TROUPE_ACTOR(serving::Stage, (serving::StageSpec), forward, where, save, digest);

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
