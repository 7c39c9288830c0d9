// Pipeline schedules as pure functions: the order in which each stage actor
// runs the forwards and backwards of a batch's micro-batches, what each
// order's peak stash is, and a discrete-event simulator that runs the
// orders under the actors' per-caller FIFO with given op times.
//
//   auto orders = troupe::actors::schedule_orders(Schedule::zero_bubble_h1, 4, 8);
//   auto run = troupe::actors::simulate_schedule(orders, 4, 1, [](const PipelineOp& op, int stage) {
//     return op.kind == PipelineOp::Kind::forward ? 1.0 : 1.0; });
//   // run.makespan, run.peak_stashed[k], run.deadlocked
//
// Model and names. S stage actors; with interleaving each actor holds v
// virtual stages (model chunks), so the model is cut into S*v chunks and
// chunk c of actor k is virtual stage g = c*S + k (Megatron's layout: the
// micro-batch goes round the actors v times). Without interleaving v = 1
// and chunk is 0. Ops of micro-batch i on virtual stage g:
//   forward F(g, i):          needs F(g-1, i) (its input) unless g = 0.
//   backward B(g, i):         needs B(g+1, i) (its output's gradient) unless g
//                             is the last, and F(g, i) (its stash).
//   backward_input BI(g, i):  zero-bubble's half of B that computes the input
//                             gradient: B's dependencies, on BI(g+1, i).
//   backward_weight W(g, i):  the other half, the weight gradient: needs
//                             BI(g, i) only, so it can wait to fill a bubble.
// A stage stashes a micro-batch (per chunk) from its F until its B or BI;
// under zero-bubble what W needs (less: a Linear's input and output
// gradient) is kept from BI until W (peak_deferred_weights).
//
// Why a fixed per-stage order is the execution order, and why it cannot
// deadlock: see pipeline.hpp (the driver submits each stage's calls in this
// order; an actor runs one caller's calls in submission order).
// simulate_schedule() checks the orders of a schedule for exactly that: it
// runs each stage's ops in order, each once its dependencies finished, and
// says whether some stage waits forever.
#pragma once

#include <cstdint>
#include <functional>
#include <string_view>
#include <vector>

namespace troupe::actors {

// GPipe: all forwards, then all backwards; every stage stashes all m
//   micro-batches; bubble (S-1)(t_f+t_b) per batch.
// 1F1B: stage k runs w = min(S-k-1, m) warm-up forwards, then alternates
//   F, B, then drains; stashes at most min(S-k, m); the same bubble as GPipe.
// interleaved_1f1b: Megatron's interleaved 1F1B, v virtual stages per actor
//   (needs m a multiple of S): forwards walk the chunks in groups of S
//   micro-batches; stage k warms up with w = min((S-k-1)*2 + (v-1)*S, m*v)
//   chunk-forwards and stashes at most min(w+1, m*v) (micro-batch, chunk)
//   pairs, each 1/v of a stage's activations; bubble (S-1)(t_f+t_b)/v.
// zero_bubble_h1: ZB-H1 (Qi et al., "Zero Bubble Pipeline Parallelism"):
//   the backward split into BI and W, with W deferred into what would be
//   bubbles; the same stash bound as 1F1B (min(S-k, m) until BI), and at
//   most min(S, m) deferred W's;
//   bubble about (S-1)(t_f + t_bi - t_w): a third of 1F1B's when the three
//   take the same time.
enum class Schedule : std::uint8_t { gpipe, one_f_one_b, interleaved_1f1b, zero_bubble_h1 };
// "gpipe", "1f1b", "interleaved-1f1b", "zb-h1"; parse_schedule also takes
// "one_f_one_b", "interleaved_1f1b", "zero_bubble_h1" and "zbh1", and throws
// Error(invalid_argument) for anything else.
std::string_view to_string(Schedule schedule) noexcept;
Schedule parse_schedule(std::string_view name);
// Whether the schedule splits the backward (BI + W): zero_bubble_h1.
bool splits_backward(Schedule schedule) noexcept;

struct PipelineOp {
  enum class Kind : std::uint8_t { forward, backward, backward_input, backward_weight };
  Kind kind = Kind::forward;
  int micro_batch = 0;
  int chunk = 0;  // the actor's chunk (0 .. v-1): virtual stage chunk*S + stage
  friend bool operator==(const PipelineOp&, const PipelineOp&) = default;
};

// The order in which stage `stage` (0-based) of `stages` runs the ops of
// `micro_batches` micro-batches under `schedule`, with `virtual_stages`
// chunks per stage (only interleaved_1f1b takes more than 1). Throws
// Error(invalid_argument) for counts < 1, a stage out of range, v != 1 for
// a schedule other than interleaved, or an interleaved m not a multiple of S.
std::vector<PipelineOp> schedule_order(Schedule schedule, int stage, int stages, int micro_batches,
                                       int virtual_stages = 1);
// Every stage's order.
std::vector<std::vector<PipelineOp>> schedule_orders(Schedule schedule, int stages, int micro_batches,
                                                     int virtual_stages = 1);

// The schedule's known bound on the micro-batches (per chunk) stage `stage`
// holds stashed at once (see Schedule).
int peak_stash_bound(Schedule schedule, int stage, int stages, int micro_batches, int virtual_stages = 1);

// Peak of stashed (micro-batch, chunk) pairs along one order: +1 at F, -1 at
// B or BI (the activations a backward needs).
int peak_stashed(const std::vector<PipelineOp>& order);
// Peak of deferred weight gradients along one order: +1 at BI, -1 at W (a
// W keeps what the weight gradient needs, for a Linear its input and the
// output's gradient). ZB-H1 defers at most min(S, m).
int peak_deferred_weights(const std::vector<PipelineOp>& order);

struct SimulatedRun {
  bool deadlocked = false;           // some stage's next op waits for an op that never runs
  double makespan = 0;               // time the last op finished
  std::vector<double> busy;          // per stage: time spent running ops
  std::vector<int> peak_stashed;     // per stage
  std::vector<std::vector<double>> finish;  // per stage, per op of its order: when it finished
};

// Runs `orders` (one per stage) as actors would: each stage runs its ops in
// order, one at a time, each starting once the stage is free and the ops it
// depends on (see the top of this file) have finished; `duration(op,
// stage)` is how long an op takes. Throws Error(invalid_argument) when an
// op is named twice or an order names a micro-batch or chunk out of range.
SimulatedRun simulate_schedule(const std::vector<std::vector<PipelineOp>>& orders, int micro_batches,
                               int virtual_stages, const std::function<double(const PipelineOp&, int)>& duration);

// Replicated stages (stage.hpp): stage k run by d_k actors, micro-batch i
// on replica i mod d_k. Replica r of a stage runs the ops of its
// micro-batches in the stage's order: replica_order(order, d, r) is that
// subsequence. Throws Error(invalid_argument) unless 0 <= replica < replicas.
std::vector<PipelineOp> replica_order(const std::vector<PipelineOp>& order, int replicas, int replica);

// simulate_schedule with stage k run by replicas[k] >= 1 actors, replica r
// running replica_order(orders[k], replicas[k], r); duration(op, stage,
// replica). busy[k] sums over the stage's replicas, peak_stashed[k] is the
// highest of its replicas', finish[k][j] is when op j of orders[k] finished
// (on whichever replica ran it). Throws as simulate_schedule, and for a
// replicas vector of another length or a count < 1.
SimulatedRun simulate_replicated_schedule(const std::vector<std::vector<PipelineOp>>& orders, int micro_batches,
                                          int virtual_stages, const std::vector<int>& replicas,
                                          const std::function<double(const PipelineOp&, int, int)>& duration);

// The schedule's ideal batch time for stages whose ops take t_forward,
// t_backward_input and t_backward_weight (t_b = t_bi + t_w) per micro-batch
// and whole stage (a chunk takes 1/v of it): GPipe and 1F1B
// (m+S-1)(t_f+t_b); interleaved m(t_f+t_b) + (S-1)(t_f+t_b)/v; ZB-H1
// m(t_f+t_b) + (S-1)(t_f+t_bi-t_w) (not below m(t_f+t_b)).
double theoretical_batch_time(Schedule schedule, int stages, int micro_batches, int virtual_stages,
                              double t_forward, double t_backward_input, double t_backward_weight);

}  // namespace troupe::actors
