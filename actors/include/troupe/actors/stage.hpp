// Pipelines of the user's own stages: the stage concept, and the driver
// that runs any stage actor class under any schedule of schedule.hpp.
//
// A stage is any registered actor class (TROUPE_ACTOR) with these methods,
// where A is what travels between stages (a Tensor, or a serializable
// struct of several tensors: a residual stream and a mask) and L the
// labels or targets the last stage's loss takes:
//
//   A            forward(std::int64_t micro_batch, A x);          // not the last stage
//   A            backward(std::int64_t micro_batch, A dy);        // returns dx (anything on the first stage)
//   float        forward_loss(std::int64_t micro_batch, A x, L target, std::int64_t batch_size);  // last stage
//   A            backward_loss(std::int64_t micro_batch);         // last stage: dx from its loss
//   std::int64_t step(std::int64_t micro_batches);               // optimizer step after the batch
// and, to run under zero-bubble schedules (zero_bubble_h1), the backward split:
//   A            backward_input(std::int64_t micro_batch, A dy); // dx only; keeps what W needs
//   A            backward_input_loss(std::int64_t micro_batch);  // last stage
//   R            backward_weight(std::int64_t micro_batch);      // the weight gradients (any result)
//
// A stage that holds several model chunks (interleaved_1f1b, v > 1) takes
// the chunk first in every method but step: forward(int chunk, std::int64_t
// micro_batch, A x), ...; chunk c of stage k is virtual stage c*S + k, so
// the first chunk of stage 0 takes the batch's input and the last chunk of
// the last stage computes the loss (forward_loss / backward_loss there).
//
// Contract the driver relies on. Micro-batch ids are unique over a
// pipeline's life (one id may be in flight once per chunk); forward(i) stashes
// what backward(i) needs. `step(n)` runs after the stage's last backward
// (or backward_weight) of the batch, with n the number of micro-batches
// (times chunks) the driver submitted; it should refuse to step (throw) when
// it saw another number, which is how a batch that failed half-way leaves
// the parameters alone. forward_loss returns the micro-batch's share of the
// batch loss (divide by batch_size), so the driver's sum is the batch's.
//
// Data path. The driver passes the ref of stage k's result straight into
// stage k+1's call (ActorHandle::call with an ObjectRef argument): a value
// of A, whatever it holds, goes stage to stage and never through the driver.
//
// Replicated (data-parallel) stages. Stage k may be given as d_k >= 1
// replica actors holding the same initial parameters (the planner's d, e.g.
// a slow stage on several cheap GPUs). Micro-batch i of stage k runs on
// replica i mod d_k: its forward and its backward (or backward_input and
// backward_weight), every chunk. A stage with d_k > 1 needs three more
// methods, where G is any serializable value holding the weight gradients
// (a flattened Tensor):
//   G            take_gradients(std::int64_t micro_batches); // this replica's gradients summed since the last
//                                                             // step; checks it ran `micro_batches` backwards
//                                                             // (else drops the batch and throws, as step
//                                                             // does) and clears them either way
//   G            sum_gradients(G a, G b);                    // a + b
//   std::int64_t step_with_gradients(G total);               // one optimizer step with `total` as the
//                                                             // gradients (the sum over the replicas)
// After the batch's last backward the driver calls take_gradients on every
// replica, adds the results pairwise in a tree whose sums run on the
// replicas (sum_gradients on replica r of its own part and a neighbour's:
// the bytes go replica to replica, never through the driver), and passes
// the one total ref to every replica's step_with_gradients: all replicas
// step with the same bits and stay bit-identical. A failed take_gradients
// fails the total, so no replica steps. The sum over replicas of the
// per-micro-batch gradients is the unreplicated stage's sum (to float
// rounding), so a replicated pipeline trains as the unreplicated one.
// Replica r receives a subsequence of the stage's schedule order (the ops
// of its micro-batches, in that order), so the walk below and its
// no-deadlock argument are unchanged: every call still waits only on refs
// created earlier and on earlier calls to the same actor.
#pragma once

#include <cstdint>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "troupe/actors/schedule.hpp"
#include "troupe/actors/stage_times.hpp"
#include "troupe/runtime/actor.hpp"
#include "troupe/runtime/error.hpp"
#include "troupe/runtime/object_ref.hpp"

namespace troupe::actors {

namespace stage_detail {

template <auto M>
using params_t = typename troupe::detail::method_traits<decltype(M)>::params;
template <auto M>
using result_t = troupe::detail::method_result_t<typename troupe::detail::method_traits<decltype(M)>::return_type>;
template <auto M, std::size_t I>
using param_t = std::remove_cvref_t<std::tuple_element_t<I, params_t<M>>>;

template <class T>
concept has_stage_methods = requires {
  &T::forward;
  &T::backward;
  &T::forward_loss;
  &T::backward_loss;
  &T::step;
};

template <class T>
concept has_split_backward = requires {
  &T::backward_input;
  &T::backward_input_loss;
  &T::backward_weight;
};

template <class T>
concept has_gradient_sync = requires {
  &T::take_gradients;
  &T::sum_gradients;
  &T::step_with_gradients;
};

template <class T>
struct gradient_type_of {
  using type = void;
};
template <class T>
  requires has_gradient_sync<T>
struct gradient_type_of<T> {
  using type = result_t<&T::take_gradients>;
};

}  // namespace stage_detail

// What the driver reads off a stage class.
template <class T>
  requires stage_detail::has_stage_methods<T>
struct stage_traits {
  // forward(int chunk, id, A) rather than forward(id, A).
  static constexpr bool chunked = std::tuple_size_v<stage_detail::params_t<&T::forward>> == 3;
  static constexpr std::size_t offset = chunked ? 1 : 0;
  using activation_type = stage_detail::param_t<&T::forward, offset + 1>;
  using target_type = stage_detail::param_t<&T::forward_loss, offset + 2>;
  static constexpr bool splits_backward = stage_detail::has_split_backward<T>;
  // take_gradients / sum_gradients / step_with_gradients: replicas allowed.
  static constexpr bool syncs_gradients = stage_detail::has_gradient_sync<T>;
  // G, what take_gradients returns (void without the sync methods).
  using gradient_type = typename stage_detail::gradient_type_of<T>::type;
};

namespace stage_detail {

template <class T>
constexpr bool well_formed_stage() {
  using Tr = stage_traits<T>;
  using A = typename Tr::activation_type;
  constexpr std::size_t o = Tr::offset;
  bool ok = std::tuple_size_v<params_t<&T::forward>> == o + 2 &&
            std::tuple_size_v<params_t<&T::backward>> == o + 2 &&
            std::tuple_size_v<params_t<&T::forward_loss>> == o + 4 &&
            std::tuple_size_v<params_t<&T::backward_loss>> == o + 1 &&
            std::tuple_size_v<params_t<&T::step>> == 1;
  if constexpr (std::tuple_size_v<params_t<&T::backward>> == o + 2) {
    ok = ok && std::is_same_v<param_t<&T::backward, o + 1>, A>;
  }
  ok = ok && std::is_same_v<result_t<&T::forward>, A> && std::is_same_v<result_t<&T::backward>, A> &&
       std::is_same_v<result_t<&T::backward_loss>, A> && std::is_convertible_v<result_t<&T::forward_loss>, float> &&
       std::is_same_v<result_t<&T::step>, std::int64_t>;
  if constexpr (has_split_backward<T>) {
    ok = ok && std::tuple_size_v<params_t<&T::backward_input>> == o + 2 &&
         std::tuple_size_v<params_t<&T::backward_input_loss>> == o + 1 &&
         std::tuple_size_v<params_t<&T::backward_weight>> == o + 1 &&
         std::is_same_v<result_t<&T::backward_input>, A> && std::is_same_v<result_t<&T::backward_input_loss>, A>;
  }
  if constexpr (has_gradient_sync<T>) {
    using G = result_t<&T::take_gradients>;
    ok = ok && std::tuple_size_v<params_t<&T::take_gradients>> == 1 &&
         std::tuple_size_v<params_t<&T::sum_gradients>> == 2 &&
         std::tuple_size_v<params_t<&T::step_with_gradients>> == 1 && std::is_same_v<result_t<&T::sum_gradients>, G> &&
         std::is_same_v<result_t<&T::step_with_gradients>, std::int64_t>;
    if constexpr (std::tuple_size_v<params_t<&T::sum_gradients>> == 2 &&
                  std::tuple_size_v<params_t<&T::step_with_gradients>> == 1) {
      ok = ok && std::is_same_v<param_t<&T::sum_gradients, 0>, G> && std::is_same_v<param_t<&T::sum_gradients, 1>, G> &&
           std::is_same_v<param_t<&T::step_with_gradients, 0>, G>;
    }
  }
  return ok;
}

}  // namespace stage_detail

// A class the pipeline driver can drive (see the top of this file).
template <class T>
concept PipelineStageClass = stage_detail::has_stage_methods<T> && stage_detail::well_formed_stage<T>();

// The calls of one batch: per micro-batch loss refs, step refs (one per
// actor: stage by stage, a replicated stage's replicas in order), and every
// call made (for cancel()).
struct StageBatchCalls {
  std::vector<ObjectRef<float>> losses;
  std::vector<ObjectRef<std::int64_t>> steps;
  std::vector<ObjectRefBase> calls;
};

namespace stage_detail {

template <auto Method, class Stage, class... Args>
auto call_stage(const ActorHandle<Stage>& stage, int chunk, Args&&... args) {
  if constexpr (stage_traits<Stage>::chunked) {
    return stage.template call<Method>(chunk, std::forward<Args>(args)...);
  } else {
    return stage.template call<Method>(std::forward<Args>(args)...);
  }
}

[[noreturn]] inline void fail(const std::string& what) {
  throw_error(Errc::invalid_argument, "pipeline driver: " + what);
}

}  // namespace stage_detail

// The replica actors of each stage: replicas[k][r] is replica r of stage
// k (one entry: an unreplicated stage).
template <class Stage>
using StageReplicas = std::vector<std::vector<ActorHandle<Stage>>>;

namespace stage_detail {

// The replicas' gradients summed in a tree (sum_gradients on the replica
// holding the left part; log2(d) rounds), then the one total stepped on
// every replica. Appends each replica's step ref to out.steps.
// TODO(perf): the root sends the total to each of the d - 1 others; a
// ring or a broadcast tree would spread that for large d.
template <class Stage>
void step_replicas(const std::vector<ActorHandle<Stage>>& replicas, const std::vector<std::int64_t>& backwards,
                   StageBatchCalls& out) {
  if constexpr (stage_traits<Stage>::syncs_gradients) {
    using G = typename stage_traits<Stage>::gradient_type;
    std::vector<ObjectRef<G>> parts;
    std::vector<std::size_t> owner;
    for (std::size_t r = 0; r < replicas.size(); ++r) {
      parts.push_back(replicas[r].template call<&Stage::take_gradients>(backwards[r]));
      out.calls.push_back(parts.back());
      owner.push_back(r);
    }
    while (parts.size() > 1) {
      std::vector<ObjectRef<G>> joined;
      std::vector<std::size_t> joined_owner;
      for (std::size_t j = 0; j < parts.size(); j += 2) {
        if (j + 1 == parts.size()) {
          joined.push_back(parts[j]);
        } else {
          joined.push_back(replicas[owner[j]].template call<&Stage::sum_gradients>(parts[j], parts[j + 1]));
          out.calls.push_back(joined.back());
        }
        joined_owner.push_back(owner[j]);
      }
      parts = std::move(joined);
      owner = std::move(joined_owner);
    }
    for (const auto& replica : replicas) {
      out.steps.push_back(replica.template call<&Stage::step_with_gradients>(parts.front()));
      out.calls.push_back(out.steps.back());
    }
  } else {
    (void)replicas;
    (void)backwards;
    (void)out;
  }
}

}  // namespace stage_detail

// Submits one batch to `replicas` (stage k = replicas[k], d_k =
// replicas[k].size() >= 1 actors) under `schedule`: every stage's ops in
// the schedule's order, micro-batch i of stage k on replica i mod d_k,
// taking, from any stage, the next op whose input refs exist (the walk
// pipeline.hpp explains: no wait can point forward, so nothing deadlocks;
// a replica's calls are a subsequence of its stage's, so that holds per
// replica too), then the step: step(m * v) on an unreplicated stage, the
// gradient all-reduce and step_with_gradients on a replicated one (see the
// top of this file). inputs[i] and targets[i] are micro-batch i's;
// micro-batch i gets id first_id + i. Returns at once. Throws
// Error(invalid_argument) for no stages, a stage without replicas, empty
// or mismatched inputs, v > 1 on a stage that is not chunked, a
// zero-bubble schedule on a stage without the split backward, d_k > 1 on a
// stage class without the gradient sync methods, and Error(internal) for
// a schedule whose orders wait on each other.
// With a `clock` (stage_times.hpp; as many stages as `replicas`), every
// forward, backward and loss call is recorded there, stage k as stage k
// and replica r as replica r, its input the call whose result it takes,
// its unit the micro-batch id: a stage's measured time is then one
// micro-batch's forward plus backward (over all its chunks) on a replica,
// and its throughput time that over d_k (StageMeasure).
// With `with_step` false no step is submitted (out.steps stays empty): the
// caller steps each stage itself, e.g. after clipping the gradients by a
// norm over all stages (gpt_stage.hpp's gpt_pipeline_step).
template <PipelineStageClass Stage>
StageBatchCalls submit_stage_calls(const StageReplicas<Stage>& replicas,
                                   const std::vector<typename stage_traits<Stage>::activation_type>& inputs,
                                   const std::vector<typename stage_traits<Stage>::target_type>& targets,
                                   std::int64_t batch_size, Schedule schedule, int virtual_stages,
                                   std::int64_t first_id, StageClock* clock = nullptr, bool with_step = true) {
  using Traits = stage_traits<Stage>;
  using A = typename Traits::activation_type;
  using Kind = PipelineOp::Kind;
  const int S = static_cast<int>(replicas.size());
  const int m = static_cast<int>(inputs.size());
  const int v = virtual_stages;
  if (S < 1) stage_detail::fail("no stages");
  for (int k = 0; k < S; ++k) {
    const std::size_t d = replicas[k].size();
    if (d < 1) stage_detail::fail("stage " + std::to_string(k) + " has no replica actor");
    if (d > 1 && !Traits::syncs_gradients) {
      stage_detail::fail("stage " + std::to_string(k) + " has " + std::to_string(d) +
                         " replicas, but the stage class has no take_gradients / sum_gradients / "
                         "step_with_gradients to keep them equal (stage.hpp); give it one replica or add them");
    }
  }
  if (m < 1 || targets.size() != inputs.size()) {
    stage_detail::fail(std::to_string(inputs.size()) + " micro-batch inputs and " + std::to_string(targets.size()) +
                       " targets (want the same number, at least 1)");
  }
  if (v > 1 && !Traits::chunked) {
    stage_detail::fail("virtual_stages " + std::to_string(v) +
                       " needs a stage class whose methods take the chunk (forward(int chunk, id, x), ...)");
  }
  if (splits_backward(schedule) && !Traits::splits_backward) {
    stage_detail::fail(std::string(to_string(schedule)) +
                       " needs a stage class with backward_input, backward_input_loss and backward_weight");
  }
  if (clock != nullptr && clock->num_stages() != replicas.size()) {
    stage_detail::fail("a StageClock of " + std::to_string(clock->num_stages()) + " stages for " + std::to_string(S));
  }
  const std::vector<std::vector<PipelineOp>> orders = schedule_orders(schedule, S, m, v);
  const int G = S * v;
  StageBatchCalls out;
  out.losses.resize(m);
  std::vector<std::vector<ObjectRef<A>>> activations(G, std::vector<ObjectRef<A>>(m));
  std::vector<std::vector<ObjectRef<A>>> gradients(G, std::vector<ObjectRef<A>>(m));
  std::vector<std::vector<char>> forwarded(G, std::vector<char>(m, 0));
  // The clock's op of each activation and gradient (what a later call takes).
  std::vector<std::vector<StageClock::Op>> activation_op(G, std::vector<StageClock::Op>(m, StageClock::kNoInput));
  std::vector<std::vector<StageClock::Op>> gradient_op(G, std::vector<StageClock::Op>(m, StageClock::kNoInput));
  auto timed = [&](int k, int replica, const ObjectRefBase& ref, StageClock::Op input, std::int64_t id) {
    return clock != nullptr ? clock->record(static_cast<std::size_t>(k), ref, input, id, replica)
                            : StageClock::kNoInput;
  };
  // Backward calls (B or W: what step counts) per replica.
  std::vector<std::vector<std::int64_t>> backwards(S);
  for (int k = 0; k < S; ++k) backwards[k].assign(replicas[k].size(), 0);
  std::vector<std::size_t> next(S, 0);
  std::size_t left = 0;
  for (const auto& order : orders) left += order.size();
  while (left > 0) {
    bool progressed = false;
    for (int k = 0; k < S; ++k) {
      const int d = static_cast<int>(replicas[k].size());
      while (next[k] < orders[k].size()) {
        const PipelineOp op = orders[k][next[k]];
        const int i = op.micro_batch;
        const int c = op.chunk;
        const int g = c * S + k;
        const int r = i % d;
        const ActorHandle<Stage>& stage = replicas[k][r];
        const std::int64_t id = first_id + i;
        const bool last = g == G - 1;
        if (op.kind == Kind::forward) {
          if (g > 0 && !activations[g - 1][i].valid()) break;
          if (last) {
            out.losses[i] = g == 0 ? stage_detail::call_stage<&Stage::forward_loss>(stage, c, id, inputs[i], targets[i],
                                                                                   batch_size)
                                   : stage_detail::call_stage<&Stage::forward_loss>(stage, c, id, activations[g - 1][i],
                                                                                   targets[i], batch_size);
            out.calls.push_back(out.losses[i]);
            (void)timed(k, r, out.losses[i], g > 0 ? activation_op[g - 1][i] : StageClock::kNoInput, id);
          } else {
            activations[g][i] = g == 0 ? stage_detail::call_stage<&Stage::forward>(stage, c, id, inputs[i])
                                       : stage_detail::call_stage<&Stage::forward>(stage, c, id, activations[g - 1][i]);
            out.calls.push_back(activations[g][i]);
            activation_op[g][i] =
                timed(k, r, activations[g][i], g > 0 ? activation_op[g - 1][i] : StageClock::kNoInput, id);
          }
          forwarded[g][i] = 1;
        } else if (op.kind == Kind::backward || op.kind == Kind::backward_input) {
          if (!forwarded[g][i]) {
            throw_error(Errc::internal, "pipeline driver: the " + std::string(to_string(schedule)) +
                                            " order of stage " + std::to_string(k) + " runs backward " +
                                            std::to_string(i) + " before its forward");
          }
          if (!last && !gradients[g + 1][i].valid()) break;
          if (op.kind == Kind::backward) {
            gradients[g][i] = last ? stage_detail::call_stage<&Stage::backward_loss>(stage, c, id)
                                   : stage_detail::call_stage<&Stage::backward>(stage, c, id, gradients[g + 1][i]);
            ++backwards[k][r];
          } else if constexpr (Traits::splits_backward) {
            gradients[g][i] = last ? stage_detail::call_stage<&Stage::backward_input_loss>(stage, c, id)
                                   : stage_detail::call_stage<&Stage::backward_input>(stage, c, id, gradients[g + 1][i]);
          }
          out.calls.push_back(gradients[g][i]);
          gradient_op[g][i] = timed(k, r, gradients[g][i], last ? StageClock::kNoInput : gradient_op[g + 1][i], id);
        } else {
          if constexpr (Traits::splits_backward) {
            out.calls.push_back(stage_detail::call_stage<&Stage::backward_weight>(stage, c, id));
            (void)timed(k, r, out.calls.back(), StageClock::kNoInput, id);
            ++backwards[k][r];
          }
        }
        ++next[k];
        --left;
        progressed = true;
      }
    }
    if (!progressed) {
      throw_error(Errc::internal, "pipeline driver: the " + std::string(to_string(schedule)) +
                                      " orders of the stages wait on each other; nothing was left to submit");
    }
  }
  // The step runs after each actor's last backward (its call order).
  for (int k = 0; with_step && k < S; ++k) {
    if (replicas[k].size() == 1) {
      out.steps.push_back(replicas[k].front().template call<&Stage::step>(std::int64_t{m} * v));
      out.calls.push_back(out.steps.back());
    } else {
      stage_detail::step_replicas(replicas[k], backwards[k], out);
    }
  }
  return out;
}

// submit_stage_calls with one actor per stage (stage k = stages[k]).
template <PipelineStageClass Stage>
StageBatchCalls submit_stage_calls(const std::vector<ActorHandle<Stage>>& stages,
                                   const std::vector<typename stage_traits<Stage>::activation_type>& inputs,
                                   const std::vector<typename stage_traits<Stage>::target_type>& targets,
                                   std::int64_t batch_size, Schedule schedule, int virtual_stages,
                                   std::int64_t first_id, StageClock* clock = nullptr, bool with_step = true) {
  StageReplicas<Stage> replicas;
  replicas.reserve(stages.size());
  for (const auto& stage : stages) replicas.push_back({stage});
  return submit_stage_calls(replicas, inputs, targets, batch_size, schedule, virtual_stages, first_id, clock,
                            with_step);
}

// The driver of a pipeline of the user's stage actors. The caller creates
// the actors (troupe::actor<Stage>(options, args...), placed as it likes,
// e.g. by place_plan) and keeps owning them; StagePipeline only submits
// calls. Use one from one thread at a time.
//
//   std::vector<ActorHandle<MyStage>> stages = ...;
//   troupe::actors::StagePipeline<MyStage> pipeline(stages);
//   float loss = pipeline.train_batch(micro_inputs, micro_labels, batch_rows, Schedule::zero_bubble_h1);
//
// Replicated stages: give each stage its replica actors (created alike, with
// the same initial parameters), e.g. {{s0}, {s1a, s1b}, {s2}}; the middle
// stage's micro-batches then alternate between s1a and s1b, and their
// gradients are summed replica to replica before both step (top of this file).
template <PipelineStageClass Stage>
class StagePipeline {
 public:
  using activation_type = typename stage_traits<Stage>::activation_type;
  using target_type = typename stage_traits<Stage>::target_type;

  // `virtual_stages` chunks per stage (> 1 only for a chunked stage class,
  // under interleaved_1f1b; the other schedules then refuse to run).
  explicit StagePipeline(std::vector<ActorHandle<Stage>> stages, int virtual_stages = 1)
      : StagePipeline(one_replica_each(std::move(stages)), virtual_stages) {}
  // replicas[k]: the d_k >= 1 replica actors of stage k. Throws
  // Error(invalid_argument) for no stages, a stage without replicas, or one
  // with several on a stage class without the gradient sync methods.
  explicit StagePipeline(StageReplicas<Stage> replicas, int virtual_stages = 1)
      : replicas_(std::move(replicas)), virtual_stages_(virtual_stages) {
    if (replicas_.empty()) stage_detail::fail("no stages");
    if (virtual_stages_ < 1) stage_detail::fail("virtual_stages must be >= 1");
    if (virtual_stages_ > 1 && !stage_traits<Stage>::chunked) {
      stage_detail::fail("virtual_stages > 1 needs a chunked stage class");
    }
    for (std::size_t k = 0; k < replicas_.size(); ++k) {
      if (replicas_[k].empty()) stage_detail::fail("stage " + std::to_string(k) + " has no replica actor");
      if (replicas_[k].size() > 1 && !stage_traits<Stage>::syncs_gradients) {
        stage_detail::fail("stage " + std::to_string(k) + " has " + std::to_string(replicas_[k].size()) +
                           " replicas, but the stage class has no take_gradients / sum_gradients / "
                           "step_with_gradients to keep them equal (stage.hpp)");
      }
      stages_.push_back(replicas_[k].front());
    }
  }

  // The first replica of each stage (every stage's actor when none is replicated).
  const std::vector<ActorHandle<Stage>>& stages() const noexcept { return stages_; }
  // Every replica of every stage: replicas()[k][r].
  const StageReplicas<Stage>& replicas() const noexcept { return replicas_; }
  // d_k of each stage.
  std::vector<int> replica_counts() const {
    std::vector<int> out;
    for (const auto& stage : replicas_) out.push_back(static_cast<int>(stage.size()));
    return out;
  }
  int virtual_stages() const noexcept { return virtual_stages_; }

  // Records the calls of every batch submitted from now on in `clock`
  // (nullptr: stop), which must outlive those submissions and have one
  // stage per stage (not per replica): stage_time_report(plan,
  // clock->measure()) then shows each stage's measured forward + backward
  // per micro-batch beside the plan's prediction (stage_times.hpp), a
  // replicated stage's divided by its replicas.
  void set_stage_clock(StageClock* clock) { clock_ = clock; }

  // One training step on the micro-batches (inputs[i], targets[i]);
  // batch_size is passed to every forward_loss. Returns at once; the ref
  // completes, once every stage (every replica) stepped, with the sum of
  // the micro-batch losses (in micro-batch order), or with the first error.
  [[nodiscard]] ObjectRef<float> submit_batch(const std::vector<activation_type>& inputs,
                                              const std::vector<target_type>& targets, std::int64_t batch_size,
                                              Schedule schedule) {
    StageBatchCalls calls =
        submit_stage_calls(replicas_, inputs, targets, batch_size, schedule, virtual_stages_, next_id_, clock_);
    next_id_ += static_cast<std::int64_t>(inputs.size());
    return when_all(when_all(calls.losses), when_all(calls.steps))
        .then([](std::tuple<std::vector<float>, std::vector<std::int64_t>> done) {
          double sum = 0;
          for (const float loss : std::get<0>(done)) sum += loss;
          return static_cast<float>(sum);
        });
  }
  // The batch's forward and backward passes only, as submit_batch without
  // the step: the ref completes with the sum of the micro-batch losses once
  // every loss is computed (backwards may still run). The caller must then
  // call every stage's step (or its own optimizer method) with
  // inputs.size() * virtual_stages() micro-batches; calls it makes to a
  // stage run after that stage's last backward (the actor's call order).
  // Only for unreplicated stages (a replicated one needs the driver's
  // gradient sum before its step): Error(invalid_argument) otherwise.
  [[nodiscard]] ObjectRef<float> submit_passes(const std::vector<activation_type>& inputs,
                                               const std::vector<target_type>& targets, std::int64_t batch_size,
                                               Schedule schedule) {
    for (std::size_t k = 0; k < replicas_.size(); ++k) {
      if (replicas_[k].size() > 1) {
        stage_detail::fail("submit_passes: stage " + std::to_string(k) + " is replicated; its step needs the "
                           "replicas' gradient sum: use submit_batch");
      }
    }
    StageBatchCalls calls = submit_stage_calls(stages_, inputs, targets, batch_size, schedule, virtual_stages_,
                                               next_id_, clock_, false);
    next_id_ += static_cast<std::int64_t>(inputs.size());
    return when_all(calls.losses).then([](std::vector<float> losses) {
      double sum = 0;
      for (const float loss : losses) sum += loss;
      return static_cast<float>(sum);
    });
  }
  // submit_batch(...).get().
  float train_batch(const std::vector<activation_type>& inputs, const std::vector<target_type>& targets,
                    std::int64_t batch_size, Schedule schedule) {
    return submit_batch(inputs, targets, batch_size, schedule).get();
  }

 private:
  static StageReplicas<Stage> one_replica_each(std::vector<ActorHandle<Stage>> stages) {
    StageReplicas<Stage> out;
    out.reserve(stages.size());
    for (auto& stage : stages) out.push_back({std::move(stage)});
    return out;
  }

  StageReplicas<Stage> replicas_;
  std::vector<ActorHandle<Stage>> stages_;
  int virtual_stages_ = 1;
  std::int64_t next_id_ = 0;
  StageClock* clock_ = nullptr;
};

}  // namespace troupe::actors
