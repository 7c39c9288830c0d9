// Measured stage times beside the planner's predicted ones.
//
// A driver that runs a planned pipeline (scheduler::plan_pipeline, placed
// with place_plan) records each call it makes to a stage in a StageClock;
// once the calls are done, stage_time_report puts every stage's measured
// time next to the time the plan predicted for it:
//
//   troupe::actors::StageClock clock(stages.size());
//   auto x0 = stages[0].call<&S::forward>(input);
//   auto op = clock.record(0, x0);                     // its input was at hand
//   auto x1 = stages[1].call<&S::forward>(x0);
//   clock.record(1, x1, op);                           // its input: op's result
//   ... wait for the results ...
//   auto rows = troupe::actors::stage_time_report(plan, clock.measure());
//   std::cout << troupe::actors::format_stage_time_report(rows);
//
//   STAGE  LAYERS   GPU                   PREDICTED ms  MEASURED ms     RATIO
//   0      0-2      1 A100-40GB              0.0008505         15.8  1.86e+04
//
// How a stage's time is measured, from the driver only (any stage class,
// nothing returned by the stage). An actor runs one caller's calls in the
// order they were submitted, each once its inputs are ready, so a call of
// stage k starts at the latest of: its submission, the completion of the
// call whose result it takes (its `input`), and the completion of the call
// submitted to stage k before it. Its service time is its completion minus
// that start. Completions are the moments the driver learns of them (the
// ref's completion callback: no value is fetched, an activation stays where
// it is), so each time includes one call's round trip of overhead. Calls
// that failed or are not complete when measure() runs are left out.
//
// Units. Calls recorded with the same `unit` (e.g. a micro-batch's forward
// and backward on one stage) add up to one unit's time; a stage's measured
// time is the mean over its units. Without a unit each call is its own.
// The planner's stage time (PlanStage::time_s: compute plus the send to the
// next stage) is for one micro-batch's forward and backward when the
// profile's flops count both (docs/planner.md), its forward alone when they
// count only the forward (a serving profile): record units to match.
// StagePipeline::set_stage_clock (stage.hpp) records a training driver's
// calls that way, with the micro-batch as the unit.
//
// Replicas. A stage run by d data-parallel replica actors (stage.hpp)
// records each call with its replica: the previous call a call waits for is
// the one submitted to the same replica before it. A unit's time is then
// its time on a replica, and the stage's throughput time, the time per
// micro-batch of the stage as a whole, is the mean over d: the planner's
// version-2 stage time (compute / d) is that one.
//
// Threads: record() and measure() from one thread (the driver's); the
// completion callbacks they install may run on any.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "troupe/runtime/object_ref.hpp"
#include "troupe/scheduler/planner.hpp"
#include "troupe/scheduler/planner_v2.hpp"

namespace troupe::actors {

struct StageMeasure {
  std::int64_t units = 0;  // units (calls, without a unit) measured
  double mean_ms = 0;      // mean time of one unit (on one replica); 0 when units == 0
  double max_ms = 0;
  int replicas = 1;        // the replicas recorded (1 + the highest replica index)
  double throughput_ms = 0;  // mean_ms / replicas: the stage's time per unit with its replicas side by side
};

class StageClock {
 public:
  using Op = std::int64_t;
  static constexpr Op kNoInput = -1;  // the call's inputs were at hand when it was submitted

  // Throws Error(invalid_argument) for stages < 1.
  explicit StageClock(std::size_t stages);

  // Records a call submitted now (call it right after submitting) to
  // replica `replica` of `stage`, whose result is `result` and whose input
  // is the result of the recorded call `input` (kNoInput: none). Returns
  // the call's Op, to pass as a later call's input. Throws
  // Error(invalid_argument) for a stage out of range, a negative replica,
  // an invalid ref or an unknown input.
  Op record(std::size_t stage, const ObjectRefBase& result, Op input = kNoInput, std::int64_t unit = -1,
            int replica = 0);

  // Per stage (index k: stage k), what the calls complete so far measured.
  std::vector<StageMeasure> measure() const;

  std::size_t num_stages() const noexcept { return stages_; }

 private:
  struct Call;
  std::size_t stages_;
  std::vector<std::shared_ptr<Call>> calls_;
};

// One row of the report: stage k of the plan and what was measured of it.
struct StageTimeRow {
  int stage = 0;
  int first_layer = 0;
  int last_layer = 0;
  std::string node;
  int gpu = 0;
  std::string gpu_type;
  double predicted_ms = 0;  // PlanStage::time_s in ms
  double measured_ms = 0;   // StageMeasure::throughput_ms (mean_ms when the stage has one replica)
  std::int64_t units = 0;
  double ratio = 0;  // measured / predicted (0 when nothing was predicted or measured)
  // Version-2 plans: the stage's t and d, and one replica's time per unit
  // (StageMeasure::mean_ms; measured_ms is it over the replicas measured).
  int tp = 1;
  int dp = 1;
  double replica_ms = 0;
};

// Pairs plan.stages[k] with measured[k]. Throws Error(invalid_argument)
// when the two differ in length.
std::vector<StageTimeRow> stage_time_report(const scheduler::Plan& plan, const std::vector<StageMeasure>& measured);
// The same for a version-2 plan (evaluated: PlanStageV2::time_s, the
// stage's time per micro-batch with its d replicas, is the prediction);
// gpu is the stage's first GPU. Also throws when a stage's measure has
// more replicas than the plan gives it.
std::vector<StageTimeRow> stage_time_report(const scheduler::PlanV2& plan, const std::vector<StageMeasure>& measured);
// The table: STAGE / LAYERS / GPU / PREDICTED ms / MEASURED ms / RATIO, a
// header line and one line per row, each ending in '\n'. When a row has
// tp or dp above 1, GPU reads "t x d" and a REPLICA ms column (one
// replica's time per micro-batch) comes before PREDICTED.
std::string format_stage_time_report(const std::vector<StageTimeRow>& rows);

}  // namespace troupe::actors
