#include "troupe/actors/stage_times.hpp"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <map>
#include <thread>

#include <fmt/format.h>

#include "troupe/runtime/error.hpp"
#include "troupe/runtime/object_state.hpp"

namespace troupe::actors {

namespace {

std::int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

}  // namespace

// One recorded call. `done_ns` is written once by the ref's completion
// callback (any thread) and read by measure() (the driver's).
struct StageClock::Call {
  std::size_t stage = 0;
  int replica = 0;
  Op input = kNoInput;
  std::int64_t unit = -1;
  std::int64_t submitted_ns = 0;
  std::atomic<std::int64_t> done_ns{0};  // 0: not complete
  std::atomic<bool> failed{false};
  // To tell a call not complete from one whose callback is about to run: a
  // waiter on the ref can wake before the completing thread ran the
  // callbacks. Weak, so the clock keeps no result alive.
  std::weak_ptr<detail::ObjectState> state;
};

StageClock::StageClock(std::size_t stages) : stages_(stages) {
  if (stages < 1) throw_error(Errc::invalid_argument, "StageClock: needs at least one stage");
}

StageClock::Op StageClock::record(std::size_t stage, const ObjectRefBase& result, Op input, std::int64_t unit,
                                  int replica) {
  if (stage >= stages_) {
    throw_error(Errc::invalid_argument,
                fmt::format("StageClock::record: stage {} of a clock of {} stages", stage, stages_));
  }
  if (replica < 0) throw_error(Errc::invalid_argument, fmt::format("StageClock::record: replica {} < 0", replica));
  if (!result.valid()) throw_error(Errc::invalid_argument, "StageClock::record: an invalid (empty) ref");
  if (input != kNoInput && (input < 0 || input >= static_cast<Op>(calls_.size()))) {
    throw_error(Errc::invalid_argument, fmt::format("StageClock::record: input {} was never recorded", input));
  }
  auto call = std::make_shared<Call>();
  call->stage = stage;
  call->replica = replica;
  call->input = input;
  call->unit = unit;
  call->submitted_ns = now_ns();
  call->state = result.state();
  // The callback runs on the completing thread once the state is visible
  // (or here, now, if it already is): the raw state pointer is alive then.
  detail::ObjectState* state = result.state().get();
  std::weak_ptr<Call> weak = call;
  state->on_complete([weak, state] {
    if (auto c = weak.lock()) {
      c->failed.store(state->has_error(), std::memory_order_relaxed);
      c->done_ns.store(std::max<std::int64_t>(now_ns(), 1), std::memory_order_release);
    }
  });
  calls_.push_back(std::move(call));
  return static_cast<Op>(calls_.size()) - 1;
}

std::vector<StageMeasure> StageClock::measure() const {
  // Per actor (stage, replica), the end of its previous call (in
  // submission order); a call of the actor not complete: later starts are
  // unknown.
  std::map<std::pair<std::size_t, int>, std::int64_t> previous_end;
  std::map<std::pair<std::size_t, int>, bool> broken;
  std::vector<int> replicas(stages_, 1);
  std::vector<std::int64_t> done(calls_.size(), 0);
  std::vector<std::map<std::int64_t, double>> units(stages_);  // unit -> summed ms
  std::vector<std::int64_t> solo(stages_, 0);                  // keys for calls without a unit
  for (std::size_t i = 0; i < calls_.size(); ++i) {
    const Call& c = *calls_[i];
    done[i] = c.done_ns.load(std::memory_order_acquire);
    if (done[i] == 0) {
      // Complete, callback not run yet: it runs next on the completing
      // thread and is short (a bounded wait, in case it never comes).
      const auto state = c.state.lock();
      if (state != nullptr && state->is_ready()) {
        const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(100);
        while ((done[i] = c.done_ns.load(std::memory_order_acquire)) == 0 &&
               std::chrono::steady_clock::now() < deadline) {
          std::this_thread::yield();
        }
      }
    }
    const std::size_t k = c.stage;
    const std::pair<std::size_t, int> actor{k, c.replica};
    replicas[k] = std::max(replicas[k], c.replica + 1);
    if (done[i] == 0) {
      broken[actor] = true;
      continue;
    }
    std::int64_t start = std::max(c.submitted_ns, previous_end[actor]);
    bool known = !broken[actor];
    if (c.input != kNoInput) {
      const std::int64_t input_done = done[static_cast<std::size_t>(c.input)];
      if (input_done == 0) known = false;
      start = std::max(start, input_done);
    }
    previous_end[actor] = done[i];
    if (!known || c.failed.load(std::memory_order_relaxed)) continue;
    const double ms = static_cast<double>(std::max<std::int64_t>(done[i] - start, 0)) / 1e6;
    // Units without an id get negative keys of their own.
    const std::int64_t key = c.unit >= 0 ? c.unit : -1 - solo[k]++;
    units[k][key] += ms;
  }
  std::vector<StageMeasure> out(stages_);
  for (std::size_t k = 0; k < stages_; ++k) {
    double sum = 0;
    for (const auto& [key, ms] : units[k]) {
      sum += ms;
      out[k].max_ms = std::max(out[k].max_ms, ms);
    }
    out[k].units = static_cast<std::int64_t>(units[k].size());
    out[k].mean_ms = out[k].units > 0 ? sum / static_cast<double>(out[k].units) : 0;
    out[k].replicas = replicas[k];
    out[k].throughput_ms = out[k].mean_ms / replicas[k];
  }
  return out;
}

std::vector<StageTimeRow> stage_time_report(const scheduler::Plan& plan, const std::vector<StageMeasure>& measured) {
  if (measured.size() != plan.stages.size()) {
    throw_error(Errc::invalid_argument, fmt::format("stage_time_report: a plan of {} stages and {} measured",
                                                    plan.stages.size(), measured.size()));
  }
  std::vector<StageTimeRow> rows;
  for (std::size_t k = 0; k < plan.stages.size(); ++k) {
    const scheduler::PlanStage& s = plan.stages[k];
    StageTimeRow row;
    row.stage = static_cast<int>(k);
    row.first_layer = s.first_layer;
    row.last_layer = s.last_layer;
    row.node = s.node;
    row.gpu = s.gpu;
    row.gpu_type = s.gpu_type;
    row.predicted_ms = s.time_s * 1e3;
    row.measured_ms = measured[k].throughput_ms;
    row.replica_ms = measured[k].mean_ms;
    row.units = measured[k].units;
    row.ratio = row.predicted_ms > 0 && row.measured_ms > 0 ? row.measured_ms / row.predicted_ms : 0;
    rows.push_back(std::move(row));
  }
  return rows;
}

std::vector<StageTimeRow> stage_time_report(const scheduler::PlanV2& plan, const std::vector<StageMeasure>& measured) {
  if (measured.size() != plan.stages.size()) {
    throw_error(Errc::invalid_argument, fmt::format("stage_time_report: a plan of {} stages and {} measured",
                                                    plan.stages.size(), measured.size()));
  }
  std::vector<StageTimeRow> rows;
  for (std::size_t k = 0; k < plan.stages.size(); ++k) {
    const scheduler::PlanStageV2& s = plan.stages[k];
    const int tp = std::max(s.tp, 1);
    const int dp = s.dp > 0 ? s.dp : std::max(static_cast<int>(s.gpus.size()) / tp, 1);
    if (measured[k].units > 0 && measured[k].replicas > dp) {
      throw_error(Errc::invalid_argument,
                  fmt::format("stage_time_report: stage {} measured on {} replicas; the plan gives it {}", k,
                              measured[k].replicas, dp));
    }
    StageTimeRow row;
    row.stage = static_cast<int>(k);
    row.first_layer = s.first_layer;
    row.last_layer = s.last_layer;
    row.node = s.node;
    row.gpu = s.gpus.empty() ? 0 : s.gpus.front();
    row.gpu_type = s.gpu_type;
    row.tp = tp;
    row.dp = dp;
    row.predicted_ms = s.time_s * 1e3;
    row.measured_ms = measured[k].throughput_ms;
    row.replica_ms = measured[k].mean_ms;
    row.units = measured[k].units;
    row.ratio = row.predicted_ms > 0 && row.measured_ms > 0 ? row.measured_ms / row.predicted_ms : 0;
    rows.push_back(std::move(row));
  }
  return rows;
}

std::string format_stage_time_report(const std::vector<StageTimeRow>& rows) {
  const bool parallel = std::any_of(rows.begin(), rows.end(), [](const StageTimeRow& r) { return r.tp > 1 || r.dp > 1; });
  if (parallel) {
    std::string out = fmt::format("{:<5}  {:<7}  {:<26}  {:>10}  {:>12}  {:>11}  {:>8}\n", "STAGE", "LAYERS",
                                  "GPU (t x d)", "REPLICA ms", "PREDICTED ms", "MEASURED ms", "RATIO");
    for (const StageTimeRow& r : rows) {
      out += fmt::format("{:<5}  {:<7}  {:<26}  {:>10.4g}  {:>12.4g}  {:>11.4g}  {:>8.3g}\n", r.stage,
                         fmt::format("{}-{}", r.first_layer, r.last_layer),
                         fmt::format("{} {} ({}x{})", r.gpu, r.gpu_type, r.tp, r.dp), r.replica_ms, r.predicted_ms,
                         r.measured_ms, r.ratio);
    }
    return out;
  }
  std::string out = fmt::format("{:<5}  {:<7}  {:<20}  {:>12}  {:>11}  {:>8}\n", "STAGE", "LAYERS", "GPU",
                                "PREDICTED ms", "MEASURED ms", "RATIO");
  for (const StageTimeRow& r : rows) {
    out += fmt::format("{:<5}  {:<7}  {:<20}  {:>12.4g}  {:>11.4g}  {:>8.3g}\n", r.stage,
                       fmt::format("{}-{}", r.first_layer, r.last_layer), fmt::format("{} {}", r.gpu, r.gpu_type),
                       r.predicted_ms, r.measured_ms, r.ratio);
  }
  return out;
}

}  // namespace troupe::actors
