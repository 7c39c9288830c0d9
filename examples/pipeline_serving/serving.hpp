// pipeline_serving's parts (main.cpp describes the program):
//   model.cpp       the model profile, its layers, the stage actor and its per-layer checkpoints
//   flags.cpp       the command line
//   serving.cpp     printing a plan, placing it (one stage actor per bundle), serving on it
//   replanning.cpp  serving with live re-planning (--replans N)
//   main.cpp        planning, the check against the single-thread model, main()
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <troupe/actors/kernels.hpp>
#include <troupe/actors/replan.hpp>
#include <troupe/actors/stage_times.hpp>
#include <troupe/scheduler/planner.hpp>
#include <troupe/troupe.hpp>

namespace serving {

namespace kernels = troupe::kernels;
namespace sched = troupe::scheduler;
using troupe::Tensor;

constexpr const char* kDefaultGpus = "H100-80GB:1,A100-40GB:1,T4-16GB:2";

// ---- the model (model.cpp) ------------------------------------------------------------------

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
Model load_model(const std::string& path);

// Layer `index`: Linear(in, out) seeded from the model seed; whoever builds
// it (a stage actor, the single-thread check) gets the same numbers.
kernels::Linear make_layer(const LayerSize& size, std::uint32_t seed, int index, troupe::Device device);

// ---- a pipeline stage (model.cpp) -----------------------------------------------------------

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

// A stage's state is its layers' parameters and, per layer, serving
// statistics that every request changes: the rows served and the sum of each
// output feature over them (what a drift monitor would watch). Checkpoints
// are per layer, `<directory>/layer-<l>/step-<S>.ckpt` (troupe's checkpoint
// files, kind "ServingLayer": weight, bias, sums, rows), S the requests the
// state has taken, so a plan that cuts the model elsewhere restores each new
// stage from the layers it now holds.
// The digest of layers [first, last] as the checkpoint of `step` holds them
// (Stage::digest gives the same for the state they hold).
std::uint64_t checkpoint_digest(const std::string& directory, int first, int last, std::int64_t step);

struct Placement {
  std::string node;       // the node's name (short id), "local" in local mode
  std::vector<int> gpus;  // the node's indexes of the stage's GPUs
  std::string device;     // where the math runs: "cpu" or "cuda:<i>"

  template <class Archive>
  void serialize(Archive& archive) {
    archive(node, gpus, device);
  }
};

// The stage actor: a run of the model's layers (registered at the end of this file).
class Stage {
 public:
  // Makes the layers from the seed, or reads them from the checkpoint the
  // spec names (and removes that layer's later checkpoints: a timeline
  // given up). Throws Error(serialization) for a checkpoint that does not fit.
  explicit Stage(StageSpec spec);

  // The stage's layers on x [rows, widths.front()]: Linear, then ReLU except
  // after the model's last layer. The result stays on this stage's device;
  // the runtime may send its bytes to another process as soon as this
  // returns, so the kernels that wrote it must have finished.
  Tensor forward(const Tensor& x);

  // Writes every layer's state as the checkpoint of `step` (requests taken)
  // and keeps the newest few per layer; returns the state's digest.
  std::uint64_t save(std::string directory, std::int64_t step);

  // The digest of the stage's state (checkpoint_digest over its layers'
  // files gives the same for the state they hold).
  std::uint64_t digest() const;

  // Where this stage runs: its node and the node's index of its GPU.
  Placement where() const;

 private:
  static troupe::Device pick_device();
  // Layer i served `out`: its rows and per-feature sums, in the order the
  // requests came (one caller, in order: deterministic).
  void count(std::size_t i, const Tensor& out);

  StageSpec spec_;
  troupe::Device device_;
  std::vector<kernels::Linear> layers_;
  std::vector<Tensor> sums_;  // per layer: [out] f32, host
  std::vector<Tensor> rows_;  // per layer: [1] i64, host
};

// ---- flags (flags.cpp) ----------------------------------------------------------------------

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


extern const char* const kUsage;

// Parses our flags (not the --troupe-* ones); prints what is wrong and
// returns false on a bad one; sets `help` for --help.
bool parse_flags(int argc, char** argv, Flags& flags, bool& help);

// ---- output (serving.cpp) -------------------------------------------------------------------

// Planned times are microseconds for this model on these GPUs.
std::string us(double seconds);
void print_stages(const sched::Plan& plan);
void print_plan(const Model& model, const sched::ClusterSpec& cluster, const sched::Plan& plan,
                const sched::PlanEvaluation& uniform, const Flags& flags);
// splitmix64 in [-1, 1): request inputs, the same on every platform.
Tensor request_input(std::int64_t rows, std::int64_t features, std::uint64_t seed);
double max_relative_error(const Tensor& got_any, const Tensor& want);
double percentile(std::vector<double> values, double p);

// ---- placing a plan and serving on it (serving.cpp) -----------------------------------------

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
                                 std::int64_t restore_step);

// Submits request `request` through the stages (chained: each stage's
// result ref goes into the next one's call); records its calls in `clock`.
troupe::ObjectRef<Tensor> submit_request(const Flags& flags, const Model& model, const Deployment& deployment,
                                         int request, troupe::actors::StageClock* clock);

// Responses to check against the single-thread model: (request, response).
using Checked = std::vector<std::pair<int, troupe::ObjectRef<Tensor>>>;

// Serves --requests requests on one plan, --inflight at a time, and prints
// latency, throughput and the stage times beside the plan's; the first
// --check responses go to `checked`. Returns the exit status.
int serve(const Flags& flags, const Model& model, const Deployment& deployment, Checked& checked);

// ---- serving with live re-planning (replanning.cpp) -----------------------------------------

// Serves while watching the cluster, re-planning on a join or a loss (see
// replanning.cpp), with per-layer checkpoints in `checkpoint_dir`. Returns
// the exit status.
int serve_with_replanning(const Flags& flags, const Model& model, Deployment deployment,
                          const std::string& checkpoint_dir, const troupe::actors::LiveClusterOptions& live,
                          Checked& checked);

}  // namespace serving

// The stage actor is registered where its callers see it.
TROUPE_ACTOR(serving::Stage, (serving::StageSpec), forward, where, save, digest);
