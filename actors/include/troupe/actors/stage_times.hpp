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

namespace troupe::actors {

struct StageMeasure {
  std::int64_t units = 0;  // units (calls, without a unit) measured
  double mean_ms = 0;      // mean time of one unit; 0 when units == 0
  double max_ms = 0;
};

class StageClock {
 public:
  using Op = std::int64_t;
  static constexpr Op kNoInput = -1;  // the call's inputs were at hand when it was submitted

  // Throws Error(invalid_argument) for stages < 1.
  explicit StageClock(std::size_t stages);

  // Records a call submitted now (call it right after submitting) to
  // `stage`, whose result is `result` and whose input is the result of the
  // recorded call `input` (kNoInput: none). Returns the call's Op, to pass as
  // a later call's input. Throws Error(invalid_argument) for a stage out of
  // range, an invalid ref or an unknown input.
  Op record(std::size_t stage, const ObjectRefBase& result, Op input = kNoInput, std::int64_t unit = -1);

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
  double measured_ms = 0;   // StageMeasure::mean_ms
  std::int64_t units = 0;
  double ratio = 0;  // measured / predicted (0 when nothing was predicted or measured)
};

// Pairs plan.stages[k] with measured[k]. Throws Error(invalid_argument)
// when the two differ in length.
std::vector<StageTimeRow> stage_time_report(const scheduler::Plan& plan, const std::vector<StageMeasure>& measured);
// The table: STAGE / LAYERS / GPU / PREDICTED ms / MEASURED ms / RATIO, a
// header line and one line per row, each ending in '\n'.
std::string format_stage_time_report(const std::vector<StageTimeRow>& rows);

}  // namespace troupe::actors
