// Pipeline-parallel training with actors: a model's layers split into stages,
// each stage an actor that owns its parameters, gradients and optimizer state,
// and a driver-side Pipeline that feeds micro-batches through them in a GPipe
// or 1F1B order by chaining futures.
//
//   auto specs = troupe::actors::split_mlp({784, 512, 256, 128, 10}, 4,
//       {.seed = 7, .optimizer = troupe::actors::OptimizerSpec::make_adam(1e-3f)});
//   troupe::actors::Pipeline pipeline(specs);                  // one actor per stage
//   float loss = pipeline.train_batch(x, labels, 8, troupe::actors::Schedule::one_f_one_b);
//   troupe::Tensor logits = pipeline.predict(x_test).get();
//
// Data path. Stage k's output ref goes straight into stage k+1's call and the
// gradient refs flow back the same way: the driver never waits in the middle
// of a batch and never touches an activation. A stage's results stay in its
// own memory (GPU memory for a CUDA stage); in a cluster the runtime's data
// plane (UCX) moves them actor host to actor host, into the consumer's GPU
// memory where it has one (staged through host memory where UCX lacks CUDA),
// and each stage moves what arrives onto its device if it is elsewhere.
// TODO(correctness): a CUDA result small enough to travel inline in a reply
// (up to 64 KiB with the data plane up) is decoded into CUDA memory, which a
// process without a GPU cannot do (Error(Errc::cuda)); so a host stage in a
// GPU-less process next to a CUDA stage fails on small activations. Large
// ones come over the data plane, which lands them in host memory there.
//
// Schedules and why the driver's submission order is the schedule. An actor
// (max_concurrency 1) runs the calls of one caller in the order they were
// submitted, each once its ref arguments are ready. So the order in which
// the driver submits forward(i) / backward(i) calls to stage k is exactly
// the order stage k runs them; schedule_order() gives that order per stage:
//   GPipe: F0 .. F(m-1), then B0 .. B(m-1): m micro-batches stashed per stage.
//   1F1B:  stage k of S runs w = min(S-k-1, m) warm-up forwards, then
//          alternates F(w+i), B(i), then drains the last w backwards: at most
//          w + 1 micro-batches stashed. Both have the same bubble, (S-1)
//          slots of (t_forward + t_backward) per batch.
//   ZB-H1:  backward_input / backward_weight instead of backward, the
//          weight halves deferred into the bubbles (schedule.hpp).
// Interleaved 1F1B needs a stage class holding several chunks: write one
// against stage.hpp and drive it with StagePipeline.
// Deadlock freedom. A call can only be given a ref that already exists, that
// is, whose producing call was submitted earlier; and an actor's FIFO makes
// a call wait only for calls submitted earlier to the same actor. Every wait
// therefore points backwards in the driver's (single-threaded) submission
// order, so the waits can never form a cycle. What the driver must get right
// is to find a global submission order that respects every stage's schedule
// order *and* creates each ref before it is passed on: Pipeline submits by
// repeatedly taking, from any stage, the next op of that stage's order whose
// input refs exist. If no stage can go on, the schedule itself is circular
// (e.g. a stage ordered B(i) before F(i) on the stage after it could run);
// that is reported as Error(Errc::internal) before anything waits, instead
// of a hang.
//
// Fault tolerance. With PipelineOptions::checkpoint_every the stages
// checkpoint every N steps and the Pipeline survives a stage's restart: it
// rolls every stage back to their newest common checkpoint and replays the
// batches from there, which recomputes exactly what was lost (see
// PipelineOptions and docs/fault-tolerance.md).
//
// Threads. PipelineStage is an actor class and not thread-safe (one call at a
// time; Pipeline refuses max_concurrency > 1). Pipeline itself is a driver
// object: use one from one thread at a time; its refs' continuations run on
// the runtime's thread pool (ObjectRef::then). With fault tolerance on, a
// supervisor thread of the Pipeline completes the refs it hands out.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "troupe/actors/checkpoint.hpp"
#include "troupe/actors/kernels.hpp"
#include "troupe/actors/schedule.hpp"
#include "troupe/actors/stage.hpp"
#include "troupe/runtime/actor.hpp"
#include "troupe/runtime/object_ref.hpp"
#include "troupe/runtime/serialization.hpp"
#include "troupe/runtime/tensor.hpp"

namespace troupe::actors {

// ---- what a stage is --------------------------------------------------------------

enum class Activation : std::uint8_t { none, relu, gelu };
// "none", "relu", "gelu"; parse_activation throws Error(invalid_argument) for others.
std::string_view to_string(Activation activation) noexcept;
Activation parse_activation(std::string_view name);

// Where a stage keeps its parameters and runs its math.
//   cpu:         host memory, OpenBLAS.
//   cuda:        the first GPU the actor was given (ActorOptions resources
//                {"GPU", 1}), or device 0 when it was given none; the stage's
//                constructor throws Error(Errc::cuda) where there is no device.
//   prefer_cuda: cuda when the actor was given a GPU that this process can
//                use, else cpu.
enum class StageDevice : std::uint8_t { cpu, cuda, prefer_cuda };
std::string_view to_string(StageDevice device) noexcept;

struct OptimizerSpec {
  enum class Kind : std::uint8_t { sgd, adam };
  Kind kind = Kind::sgd;
  kernels::SgdOptions sgd{};    // used when kind == sgd
  kernels::AdamOptions adam{};  // used when kind == adam

  static OptimizerSpec make_sgd(float lr, float momentum = 0.0f, float weight_decay = 0.0f);
  static OptimizerSpec make_adam(float lr, float weight_decay = 0.0f);

  template <class Archive>
  void serialize(Archive& ar) {
    ar(kind, sgd.lr, sgd.momentum, sgd.weight_decay, adam.lr, adam.beta1, adam.beta2, adam.eps,
       adam.weight_decay);
  }
};

// One stage of an MLP: Linear layers sizes[0] -> sizes[1] -> ... ->
// sizes.back(), each followed by `activation` except the model's very last
// layer (the last layer of the stage with is_last), which gives logits.
struct StageSpec {
  std::vector<std::int64_t> sizes{};         // >= 2 entries, each >= 1
  Activation activation = Activation::relu;
  bool is_first = false;  // nobody needs its input gradient: backward skips dx and returns an undefined Tensor
  bool is_last = false;   // ends in logits: use forward_loss / backward_loss instead of forward / backward
  // Layer j of this stage is kernels::Linear(sizes[j], sizes[j+1], seed + j):
  // split_mlp gives stage k the seed of its first layer's index in the whole
  // model, so the split model starts from the same numbers as the unsplit one.
  std::uint32_t seed = 0;
  OptimizerSpec optimizer{};
  StageDevice device = StageDevice::cpu;
  // Extra time each forward / backward call takes at least (the method
  // sleeps until that long after it started): benchmarks use it to give
  // stages a known compute time, and it can mimic a slower device.
  std::int64_t simulated_forward_us = 0;
  std::int64_t simulated_backward_us = 0;
  // When > 0, the stage's constructor calls set_host_math_threads(this):
  // per stage in a cluster (one process per actor), process-wide in local
  // mode (the last stage built wins). 0 leaves the process's setting alone.
  int host_math_threads = 0;
  // Checkpoints of the stage's state (parameters, optimizer state, step)
  // every `checkpoint.every` steps into `checkpoint.directory`, one directory
  // per stage (Pipeline fills it in from PipelineOptions). See PipelineStage.
  CheckpointSpec checkpoint{};

  std::int64_t layers() const noexcept { return sizes.empty() ? 0 : static_cast<std::int64_t>(sizes.size()) - 1; }

  template <class Archive>
  void serialize(Archive& ar) {
    ar(sizes, activation, is_first, is_last, seed, optimizer, device, simulated_forward_us,
       simulated_backward_us, host_math_threads, checkpoint);
  }
};

// kernels::set_host_math_threads, here too for pipeline code.
using kernels::set_host_math_threads;

// Splits the MLP `sizes` (sizes.size() - 1 layers) into `stages` stages of
// consecutive layers, as even in layer count as possible (earlier stages take
// the extra layers). Every field but sizes, seed, is_first and is_last comes
// from `common`; stage k's seed is common.seed + (index of its first layer).
// Throws Error(invalid_argument) unless 1 <= stages <= layers.
std::vector<StageSpec> split_mlp(const std::vector<std::int64_t>& sizes, int stages, const StageSpec& common = {});

// Memory and activity of one stage. Bytes count the tensors the stage holds
// (a stashed input may share storage with its sender in local mode).
struct StageStats {
  std::int64_t parameters = 0;       // elements
  std::int64_t parameter_bytes = 0;
  std::int64_t gradient_bytes = 0;
  std::int64_t optimizer_bytes = 0;  // SGD velocity or Adam moments
  std::int64_t stashed_micro_batches = 0;  // forwards waiting for their backward now
  std::int64_t stash_bytes = 0;
  std::int64_t peak_stashed_micro_batches = 0;  // highest at any time since construction
  std::int64_t peak_stash_bytes = 0;
  std::int64_t forwards = 0;   // totals since construction (predict not counted)
  std::int64_t backwards = 0;
  std::int64_t steps = 0;
  std::string device;  // "cpu", "cuda:0"

  template <class Archive>
  void serialize(Archive& ar) {
    ar(parameters, parameter_bytes, gradient_bytes, optimizer_bytes, stashed_micro_batches, stash_bytes,
       peak_stashed_micro_batches, peak_stash_bytes, forwards, backwards, steps, device);
  }
};

// ---- the stage actor ---------------------------------------------------------------

// One pipeline stage: troupe's own implementation of the stage concept
// (stage.hpp; activation type Tensor, target the labels Tensor), for MLPs. Registered with TROUPE_ACTOR (below), so it runs in
// local mode and in actor hosts of a cluster; it can also be used as a plain
// object (the single-process reference of the examples and tests).
//
// Micro-batch ids name the stash: forward(i) keeps what backward(i) needs,
// backward(i) consumes it. Ids are the caller's; one id may be in flight once.
// Tensors may arrive on any device and are moved to the stage's. Tensor
// results that go to another stage (forward's activations, backward's and
// backward_loss's input gradients, predict on a stage but the last) are
// returned in the stage's own memory: a CUDA stage's on its GPU, once the
// kernels that wrote them have finished, so the runtime can hand them to
// another process as they are. The last stage's predict returns the logits
// in host memory: they are the model's output, for the driver.
// Errors: Error(invalid_argument) for shapes that do not fit, an id already
// stashed or never stashed, forward on the last stage, forward_loss on
// another; kernel errors as in kernels.hpp.
//
// Checkpoints (spec.checkpoint enabled). After every `every`-th step the
// stage writes its parameters, optimizer state (SGD velocity or Adam
// moments) and step count to its directory (checkpoint.hpp: atomic, with a
// checksum; the newest `keep` kept). The constructor marks the directory;
// when it finds the mark (the runtime restarted the actor, or a directory
// of an earlier run) it restores the newest checkpoint that reads back whole
// (step 0, the seed's initial state, when there is none) and then *awaits a
// restore*: forward, backward, the loss calls, step, predict and
// get/set_parameters fail with Error(invalid_argument) saying so, until the
// driver calls restore(step) with a step every stage has, so a restarted
// stage never trains on from a state the others do not share.
// checkpoint_info and stats always answer.
class PipelineStage {
 public:
  explicit PipelineStage(StageSpec spec);

  // Runs the stage's layers on x [rows, sizes[0]] and stashes the layer
  // inputs and pre-activations under `micro_batch`. Not for the last stage.
  Tensor forward(std::int64_t micro_batch, Tensor x);
  // Gradient of the stage's output, dy [rows, sizes.back()]: accumulates the
  // parameter gradients, frees the stash and returns dx [rows, sizes[0]]
  // (undefined on the first stage). Not for the last stage.
  Tensor backward(std::int64_t micro_batch, Tensor dy);
  // Last stage: forward, then softmax cross-entropy against labels [rows]
  // (i32 or i64) with CrossEntropyOptions::batch_size = batch_size (the whole
  // batch's rows, so micro-batch losses and gradients add up to the
  // batch's). Returns the micro-batch's share of the batch loss and stashes
  // dlogits for backward_loss.
  float forward_loss(std::int64_t micro_batch, Tensor x, Tensor labels, std::int64_t batch_size);
  // Last stage: backward from the stashed dlogits; returns dx (undefined when
  // the last stage is also the first).
  Tensor backward_loss(std::int64_t micro_batch);
  // The backward split for zero-bubble schedules (Schedule::zero_bubble_h1):
  // backward_input (backward_input_loss on the last stage) returns dx as
  // backward does, frees the pre-activations and keeps the layer inputs and
  // the layers' output gradients; backward_weight(micro_batch) then adds
  // the parameter gradients and counts as the micro-batch's backward for
  // step(). Each takes half of spec.simulated_backward_us. The same errors
  // as backward, and for a backward_weight without its backward_input.
  Tensor backward_input(std::int64_t micro_batch, Tensor dy);
  Tensor backward_input_loss(std::int64_t micro_batch);
  std::int64_t backward_weight(std::int64_t micro_batch);
  // Forward without stashing or counting (evaluation); the last stage returns
  // logits, in host memory.
  Tensor predict(Tensor x);
  // Applies the optimizer to the gradients summed since the previous step
  // and zeroes them. `micro_batches` is how many backwards the caller
  // submitted: if the stage saw another number, or forwards are still
  // stashed, the batch failed somewhere; then the gradients and stash are
  // dropped, the parameters are left alone and Error(invalid_argument) says
  // so. Returns the number of optimizer steps taken so far.
  std::int64_t step(std::int64_t micro_batches);
  // Data-parallel replicas of a stage (stage.hpp, "Replicated stages"):
  // take_gradients checks the stage ran `micro_batches` backwards since
  // the last step (else, as step, drops the batch and throws) and returns
  // its gradients flattened, W0, b0, W1, b1, ... into one f32 vector in
  // the stage's memory, zeroing its own; sum_gradients(a, b) is a + b
  // there; step_with_gradients(total) takes the optimizer step of step()
  // with `total` (a flattened sum over the replicas) as the gradients.
  // Errors: Error(invalid_argument) for a vector of another size.
  Tensor take_gradients(std::int64_t micro_batches);
  Tensor sum_gradients(Tensor a, Tensor b);
  std::int64_t step_with_gradients(Tensor total);

  // Copies of the parameters in host memory: W0, b0, W1, b1, ...
  std::vector<Tensor> get_parameters() const;
  // Gradients accumulated since the last step, in the same order.
  std::vector<Tensor> get_gradients() const;
  // Overwrites the parameters (same order, shapes and f32, any device);
  // gradients and optimizer state are kept.
  void set_parameters(std::vector<Tensor> parameters);
  StageStats stats() const;
  StageSpec spec() const { return spec_; }

  // The step, whether the stage awaits a restore, the checkpoints on disk.
  CheckpointInfo checkpoint_info() const;
  // Rolls the stage back (or forward) to its state after `step` steps: the
  // checkpoint file of that step (step 0: the initial state from the seed),
  // drops gradients and stash, deletes the checkpoints after `step` (that
  // future is replayed) and ends awaiting a restore. Returns `step`. A torn
  // or corrupt file is refused with Error(serialization) naming it (and
  // renamed .corrupt); a missing one is Error(not_found); the stage is then
  // unchanged.
  std::int64_t restore(std::int64_t step);

 private:
  struct Stash {
    std::vector<Tensor> inputs;  // per layer: its input
    std::vector<Tensor> preacts;  // per layer: x W + b before the activation (undefined without one)
    Tensor dlogits;               // last stage
    std::vector<Tensor> grads;    // per layer: gradient of its output (backward_input, for backward_weight)
    std::int64_t bytes = 0;
  };

  bool activated(std::size_t layer) const;
  Tensor run_layers(Tensor x, Stash* stash);
  Tensor backward_from(Stash stash, Tensor dy);
  Tensor backward_input_from(std::int64_t micro_batch, Stash stash, Tensor dy);
  Stash take_stash(std::int64_t micro_batch, const char* op);
  void keep_stash(std::int64_t micro_batch, Stash stash, const char* op);
  Tensor to_output(const Tensor& t) const;
  void pause_until(std::chrono::steady_clock::time_point start, std::int64_t micro_seconds) const;
  void drop_batch();
  void check_batch_complete(std::int64_t micro_batches, const char* op);
  void apply_step();
  std::int64_t flat_gradient_size() const;
  void init_state();
  std::vector<Tensor> state_tensors() const;
  void apply_checkpoint(const CheckpointData& data);
  void require_restored(const char* op) const;

  StageSpec spec_;
  Device device_;
  std::vector<kernels::Linear> layers_;
  std::vector<Tensor> velocity_;  // SGD with momentum: per parameter
  std::vector<Tensor> adam_m_;
  std::vector<Tensor> adam_v_;
  std::map<std::int64_t, Stash> stash_;
  std::map<std::int64_t, Stash> deferred_;  // backward_input done, backward_weight not yet
  std::int64_t stash_bytes_ = 0;
  std::int64_t peak_stashed_ = 0;
  std::int64_t peak_stash_bytes_ = 0;
  std::int64_t backwards_since_step_ = 0;
  std::int64_t forwards_ = 0;
  std::int64_t backwards_ = 0;
  std::int64_t steps_ = 0;
  CheckpointStore checkpoints_;
  bool awaiting_restore_ = false;
  std::int64_t restored_from_ = -1;
  std::string checkpoint_note_;
};

// ---- the driver side -----------------------------------------------------------------

// Schedule, PipelineOp and schedule_order are in schedule.hpp.

// ---- fault tolerance ----------------------------------------------------------------

// What the driver did after losing a stage (PipelineOptions::on_recovery).
struct RecoveryEvent {
  std::vector<int> stages;   // the stages that had restarted (empty: a batch failed and none had)
  std::string reason;        // what the driver saw first, e.g. "stage 2 restarted (restarting: ...)"
  std::int64_t restored_step = 0;     // every stage is back at its state after this many steps
  std::int64_t replayed_batches = 0;  // batches submitted again from there
};

struct RecoveryStats {
  std::int64_t recoveries = 0;
  std::int64_t replayed_batches = 0;
  // Replayed batches whose loss differed from the first time they ran (0:
  // the replay recomputed exactly what the lost run had).
  std::int64_t replay_mismatches = 0;
  std::int64_t committed_steps = 0;  // batches every stage stepped and the driver handed back
};

// Fault tolerance of a Pipeline (off while checkpoint_every is 0).
//
// With it on, stage k checkpoints into <checkpoint_directory>/stage-<k>
// every `checkpoint_every` steps, and a supervisor thread of the Pipeline
// watches the batches. When a stage restarts (give the stages ActorOptions
// max_restarts; the runtime re-runs the constructor, which restores its
// newest checkpoint and awaits a restore), the driver cancels the calls in
// flight, waits for every stage to be alive again (at most
// `restart_timeout`; a stage that is dead or stays away ends the training:
// every batch not yet handed back, and every later one, fails with
// Error(actor_died) saying which stage and why), rolls every stage back to
// the newest step all of them have a checkpoint of (restore), and submits
// the batches from there again, in the same order with the same
// micro-batches: a replay computes exactly what the lost run would have.
// Batch results are handed back once, in order; a replayed batch's loss is
// compared with the first run's (RecoveryStats::replay_mismatches).
// A batch that fails while no stage restarted (a bad label) fails its ref
// with its error; the stages are rolled back and the batches after it
// replayed without it, so none of them trains on half a batch.
// The Pipeline keeps every batch (its tensors, shared, not copied) back to
// the oldest of the last `keep_checkpoints` common checkpoints, to replay
// from: do not overwrite a batch's tensors after submitting it.
struct PipelineOptions {
  std::string checkpoint_directory{};
  std::int64_t checkpoint_every = 0;
  int keep_checkpoints = 3;
  std::chrono::milliseconds restart_timeout{120'000};
  // Recoveries in a row without a batch finishing before the Pipeline gives
  // up (Error(actor_died)).
  int max_recoveries = 10;
  // Called on the Pipeline's supervisor thread after each recovery (not for a
  // start that resumes an earlier run: see resume_step()).
  std::function<void(const RecoveryEvent&)> on_recovery{};

  bool fault_tolerant() const noexcept { return checkpoint_every > 0; }
};

namespace detail {
class PipelineSupervisor;
}

// A model split over stage actors. Owns them: destroying the Pipeline kills
// its stages. Move-only.
class Pipeline {
 public:
  // Creates one PipelineStage actor per spec (specs[0].is_first and
  // specs.back().is_last must be set, and consecutive stages must agree on
  // their boundary width). `options`, if not empty, has one entry per stage
  // for placement (resources, gpu_type, placement_group + bundle_index, ...).
  // `pipeline_options` turns on checkpoints and recovery (see above); it
  // overrides the specs' `checkpoint`.
  // Throws Error(invalid_argument) for inconsistent specs or options, or
  // an option with max_concurrency != 1 (the schedule relies on call order).
  explicit Pipeline(std::vector<StageSpec> specs, std::vector<ActorOptions> options = {},
                    PipelineOptions pipeline_options = {});
  ~Pipeline();
  Pipeline(Pipeline&& other) noexcept;
  Pipeline& operator=(Pipeline&& other) noexcept;
  Pipeline(const Pipeline&) = delete;
  Pipeline& operator=(const Pipeline&) = delete;

  std::size_t num_stages() const noexcept { return stages_.size(); }
  const std::vector<ActorHandle<PipelineStage>>& stages() const noexcept { return stages_; }
  const std::vector<StageSpec>& specs() const noexcept { return specs_; }

  // One training step on the batch x [B, in] with labels [B]: splits it into
  // micro-batches with Tensor::chunk (views, no copy: ceil(B / micro_batches)
  // rows each, the last may be smaller, and there are fewer than asked when
  // B < micro_batches), submits every stage's forwards and backwards in the
  // schedule's order, then step() on every stage. Returns at once; the ref
  // completes, once every stage has stepped, with the batch's mean loss (the
  // sum of the micro-batch losses, each divided by B), or with the first
  // error. Batches submitted back to back queue behind each other on every
  // stage. Throws Error(invalid_argument) at once for micro_batches < 1, an
  // empty batch, labels that are not [B], or x that is not [B, in].
  // A batch that fails in a forward (or the loss) fails every backward after
  // it, so every stage drops it and the parameters stay as they were; a
  // failure inside a backward of stage k leaves the stages after k stepped.
  // TODO(correctness): a step that waits for the first stage's backwards
  // would make that all-or-nothing too.
  [[nodiscard]] ObjectRef<float> submit_batch(const Tensor& x, const Tensor& labels, int micro_batches,
                                              Schedule schedule);
  // submit_batch(...).get(): blocks, throws the batch's error.
  float train_batch(const Tensor& x, const Tensor& labels, int micro_batches, Schedule schedule);

  // Records every forward, backward and loss call of the batches submitted
  // after it in `clock` (stage_times.hpp; stage k as stage k, the unit the
  // micro-batch), so stage_time_report(plan, clock->measure()) puts each
  // stage's forward + backward per micro-batch beside the plan's time, as
  // StagePipeline::set_stage_clock does. nullptr stops recording; the clock
  // must outlive the calls recorded. Throws Error(invalid_argument) for a
  // clock of another stage count, and with fault tolerance on (a replay
  // would time calls twice).
  void set_stage_clock(StageClock* clock);

  // The model's logits for x [rows, in], through every stage's predict (no
  // stash, no gradient), in host memory whatever the last stage's device (the
  // activations between stages stay on the stages' devices). Returns at once.
  [[nodiscard]] ObjectRef<Tensor> predict(const Tensor& x);

  // Blocking conveniences: every stage's get_parameters / stats, in stage order.
  // With fault tolerance on they run after the batches submitted before
  // them and are retried after a recovery.
  std::vector<std::vector<Tensor>> parameters() const;
  std::vector<StageStats> stats() const;

  bool fault_tolerant() const noexcept { return supervisor_ != nullptr; }
  // Fault tolerance on: the step the first batch continues from; blocks
  // until the stages answered. Not 0 when the checkpoint directory held
  // checkpoints of every stage (an earlier run's): the stages are rolled
  // back to the newest step they all have, and the caller skips that many
  // batches. Off: 0.
  std::int64_t resume_step() const;
  RecoveryStats recovery_stats() const;

 private:
  void kill_stages() noexcept;

  std::vector<StageSpec> specs_;
  std::vector<ActorHandle<PipelineStage>> stages_;
  std::int64_t next_micro_batch_ = 0;
  StageClock* clock_ = nullptr;  // not owned
  std::unique_ptr<detail::PipelineSupervisor> supervisor_;
};

namespace detail {

// The calls of one batch (Pipeline::submit_batch's walk), for the
// supervisor too: submit_stage_calls (stage.hpp) on micro-batches of x.
using BatchCalls = StageBatchCalls;
BatchCalls submit_batch_calls(const std::vector<ActorHandle<PipelineStage>>& stages, const Tensor& x,
                              const Tensor& labels, int micro_batches, Schedule schedule,
                              std::int64_t& next_micro_batch, StageClock* clock = nullptr);

}  // namespace detail

}  // namespace troupe::actors

static_assert(troupe::actors::PipelineStageClass<troupe::actors::PipelineStage>);

// Every binary that includes this header registers the stage class (the
// registry takes the same class twice as one), so drivers and actor hosts
// built from it always agree, also when the library is linked statically.
TROUPE_ACTOR(troupe::actors::PipelineStage, (troupe::actors::StageSpec), forward, backward, forward_loss,
             backward_loss, backward_input, backward_input_loss, backward_weight, predict, step, take_gradients, sum_gradients,
             step_with_gradients, get_parameters, get_gradients, set_parameters, stats, spec,
             checkpoint_info, restore);
