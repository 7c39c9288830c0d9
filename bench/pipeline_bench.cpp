// Pipeline schedules against their bubble bound: S stage actors whose every
// forward and backward takes a calibrated time (the stage method sleeps until
// --forward-us / --backward-us after it started; the layers themselves are
// tiny), trained with troupe::actors::Pipeline under GPipe and 1F1B for
// m = 4, 8, 16, 32 micro-batches per batch.
//
// Baseline: the ideal time of one batch, (m + S - 1) * (t_f + t_b): the m
// micro-batches of the slowest stage plus the S - 1 slots of the pipeline's
// fill and drain (the bubble). An ideal pipeline's throughput is m / (m + S - 1)
// of a single stage's; `vs_bound` is the measured throughput divided by that
// bound (= ideal / measured time; 1.0 is perfect, the target is >= 0.95).
// `overhead` is what the runtime adds on the critical path: (measured - ideal)
// / (m * S), in microseconds per micro-batch per stage. It includes the
// operating system's sleep overshoot, reported separately (`sleep_overshoot`,
// measured the same way in a plain thread); `overhead_net` takes the
// 2 (m + S - 1) late wake-ups of the critical path off.
//
// Second table (rows `stage_<schedule>_m<m>_...`): every schedule of
// schedule.hpp on a stage class of this file (SleepStage: chunked, with the
// backward split into backward_input and backward_weight, each sleeping its
// calibrated time: --forward-us, --backward-input-us, --backward-weight-us,
// a chunk 1/v of them) driven by StagePipeline, against the schedule's own
// theoretical time (theoretical_batch_time: GPipe and 1F1B (m+S-1)(t_f+t_b);
// interleaved m(t_f+t_b) + (S-1)(t_f+t_b)/v; ZB-H1 m(t_f+t_b) +
// (S-1)(t_f+t_bi-t_w)), with the measured bubble fraction, 1 - m(t_f+t_b) /
// measured, beside the theoretical one.
//
// Local mode, with enough pool threads that every sleeping stage has one.
// Each figure is the median over repeats, schedules and sizes interleaved.
#include "bench_util.hpp"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "troupe/actors/kernels.hpp"
#include "troupe/actors/pipeline.hpp"
#include "troupe/actors/stage.hpp"
#include "troupe/troupe.hpp"

// A stage that only takes time: each op sleeps until its calibrated time
// after it started (a chunk's share of the stage's); the tensor passes through.
class SleepStage {
 public:
  SleepStage(std::int64_t forward_us, std::int64_t backward_input_us, std::int64_t backward_weight_us, int chunks)
      : forward_us_(forward_us / chunks), input_us_(backward_input_us / chunks), weight_us_(backward_weight_us / chunks) {}
  troupe::Tensor forward(int, std::int64_t, troupe::Tensor x) { return pass(x, forward_us_); }
  float forward_loss(int, std::int64_t, troupe::Tensor x, troupe::Tensor, std::int64_t) {
    (void)pass(x, forward_us_);
    dy_ = x;
    return 0.0f;
  }
  troupe::Tensor backward(int, std::int64_t, troupe::Tensor dy) { return pass(dy, input_us_ + weight_us_); }
  troupe::Tensor backward_loss(int, std::int64_t) { return pass(dy_, input_us_ + weight_us_); }
  troupe::Tensor backward_input(int, std::int64_t, troupe::Tensor dy) { return pass(dy, input_us_); }
  troupe::Tensor backward_input_loss(int, std::int64_t) { return pass(dy_, input_us_); }
  std::int64_t backward_weight(int, std::int64_t) {
    (void)pass(dy_, weight_us_);
    return 0;
  }
  std::int64_t step(std::int64_t micro_batches) { return micro_batches; }

 private:
  static troupe::Tensor pass(troupe::Tensor x, std::int64_t us) {
    std::this_thread::sleep_for(std::chrono::microseconds(us));
    return x;
  }
  std::int64_t forward_us_, input_us_, weight_us_;
  troupe::Tensor dy_;
};

TROUPE_ACTOR(SleepStage, (std::int64_t, std::int64_t, std::int64_t, int), forward, forward_loss, backward,
             backward_loss, backward_input, backward_input_loss, backward_weight, step);

namespace {

using troupe::Tensor;
using troupe::actors::Pipeline;
using troupe::actors::Schedule;
using troupe::bench::Better;
using troupe::bench::Clock;

// How late sleep_until(start + duration) returns, in microseconds (median).
double sleep_overshoot_us(int samples, std::chrono::microseconds duration) {
  troupe::bench::Samples late;
  for (int i = 0; i < samples; ++i) {
    const auto start = Clock::now();
    std::this_thread::sleep_until(start + duration);
    late.add(troupe::bench::micros_since(start) - static_cast<double>(duration.count()));
  }
  return late.median();
}

}  // namespace

int main(int argc, char** argv) {
  int stages = 4;
  int forward_us = 10000;
  int backward_us = 10000;
  int threads = 0;
  int rows = 8;
  troupe::bench::Cli cli("pipeline_bench",
                         "GPipe and 1F1B pipelines of stage actors with calibrated compute times, against the\n"
                         "bubble bound: ideal time per batch (m + S - 1) * (t_f + t_b).");
  cli.add_int("--stages", &stages, "pipeline stages S (default 4)");
  cli.add_int("--forward-us", &forward_us, "time of each forward call, microseconds (default 10000)");
  cli.add_int("--backward-us", &backward_us, "time of each backward call, microseconds (default 10000)");
  int backward_input_us = 10000;
  int backward_weight_us = 10000;
  cli.add_int("--backward-input-us", &backward_input_us,
              "second table: time of each backward_input (t_bi), microseconds (default 10000)");
  cli.add_int("--backward-weight-us", &backward_weight_us,
              "second table: time of each backward_weight (t_w), microseconds (default 10000)");
  cli.add_int("--threads", &threads, "local-mode pool threads (default: stages + 2)");
  cli.add_int("--rows", &rows, "rows per micro-batch (default 8)");
  const auto options = cli.parse(argc, argv);
  if (stages < 1 || forward_us < 0 || backward_us < 0 || rows < 1) {
    std::fprintf(stderr, "pipeline_bench: --stages and --rows must be >= 1, times >= 0\n");
    return 2;
  }
  const std::vector<int> micro_batch_counts = options.quick ? std::vector<int>{4, 8} : std::vector<int>{4, 8, 16, 32};
  const int repeats = options.repeats_or(5, 1);

  troupe::InitOptions init_options;
  init_options.num_threads = threads > 0 ? threads : stages + 2;
  troupe::init(init_options);

  // Layers of 16 features: their math takes microseconds, the sleeps dominate.
  std::vector<std::int64_t> sizes(static_cast<std::size_t>(stages) + 1, 16);
  troupe::actors::StageSpec common;
  common.simulated_forward_us = forward_us;
  common.simulated_backward_us = backward_us;
  common.optimizer = troupe::actors::OptimizerSpec::make_sgd(0.01f);
  const auto specs = troupe::actors::split_mlp(sizes, stages, common);

  const Schedule schedules[] = {Schedule::gpipe, Schedule::one_f_one_b};
  // One pipeline per schedule, built once (actor start-up is not measured).
  std::vector<Pipeline> pipelines;
  for (std::size_t s = 0; s < std::size(schedules); ++s) pipelines.emplace_back(specs);

  // Seconds per batch, per schedule and micro-batch count.
  std::vector<std::vector<std::vector<double>>> figures(std::size(schedules),
                                                        std::vector<std::vector<double>>(micro_batch_counts.size()));
  auto batch_of = [&](int m, std::uint32_t seed, Tensor& x, Tensor& y) {
    x = Tensor::empty({static_cast<std::int64_t>(m) * rows, 16}, troupe::DType::f32);
    troupe::kernels::uniform_(x, 1.0f, seed);
    y = Tensor::zeros({static_cast<std::int64_t>(m) * rows}, troupe::DType::i64);
  };
  // Warm-up: one small batch per pipeline.
  for (std::size_t s = 0; s < std::size(schedules); ++s) {
    Tensor x, y;
    batch_of(2, 1, x, y);
    (void)pipelines[s].train_batch(x, y, 2, schedules[s]);
  }
  for (int r = 0; r < repeats; ++r) {
    for (std::size_t i = 0; i < micro_batch_counts.size(); ++i) {
      const int m = micro_batch_counts[i];
      Tensor x, y;
      batch_of(m, static_cast<std::uint32_t>(r * 100 + i), x, y);
      // Alternate which schedule goes first.
      for (std::size_t n = 0; n < std::size(schedules); ++n) {
        const std::size_t s = (n + static_cast<std::size_t>(r)) % std::size(schedules);
        const auto start = Clock::now();
        (void)pipelines[s].train_batch(x, y, m, schedules[s]);
        figures[s][i].push_back(troupe::bench::seconds_since(start));
      }
    }
  }
  // Second table: every schedule on SleepStage actors through StagePipeline.
  struct StageRun {
    Schedule schedule;
    int v;
    std::string name;
  };
  const std::vector<StageRun> stage_runs = {{Schedule::gpipe, 1, "gpipe"},
                                            {Schedule::one_f_one_b, 1, "1f1b"},
                                            {Schedule::interleaved_1f1b, 2, "interleaved2"},
                                            {Schedule::zero_bubble_h1, 1, "zbh1"}};
  const std::vector<int> stage_ms = options.quick ? std::vector<int>{8} : std::vector<int>{8, 16};
  std::vector<std::vector<std::vector<double>>> stage_figures(stage_runs.size(),
                                                              std::vector<std::vector<double>>(stage_ms.size()));
  {
    std::vector<troupe::actors::StagePipeline<SleepStage>> drivers;
    std::vector<std::vector<troupe::ActorHandle<SleepStage>>> actors;
    for (const StageRun& run : stage_runs) {
      std::vector<troupe::ActorHandle<SleepStage>> handles;
      for (int k = 0; k < stages; ++k) {
        handles.push_back(troupe::actor<SleepStage>(std::int64_t{forward_us}, std::int64_t{backward_input_us},
                                                    std::int64_t{backward_weight_us}, run.v));
      }
      actors.push_back(handles);
      drivers.emplace_back(handles, run.v);
    }
    const auto micro_inputs = [&](int m) {
      Tensor x = Tensor::zeros({static_cast<std::int64_t>(m) * 2, 4}, troupe::DType::f32);
      Tensor y = Tensor::zeros({static_cast<std::int64_t>(m) * 2}, troupe::DType::i64);
      return std::pair{x.chunk(m), y.chunk(m)};
    };
    for (std::size_t s = 0; s < stage_runs.size(); ++s) {  // warm-up
      const auto [xs, ys] = micro_inputs(stages);
      (void)drivers[s].train_batch(xs, ys, 1, stage_runs[s].schedule);
    }
    for (int r = 0; r < std::max(1, repeats - 2); ++r) {
      for (std::size_t i = 0; i < stage_ms.size(); ++i) {
        const auto [xs, ys] = micro_inputs(stage_ms[i]);
        for (std::size_t n = 0; n < stage_runs.size(); ++n) {
          const std::size_t s = (n + static_cast<std::size_t>(r)) % stage_runs.size();
          const auto start = Clock::now();
          (void)drivers[s].train_batch(xs, ys, 1, stage_runs[s].schedule);
          stage_figures[s][i].push_back(troupe::bench::seconds_since(start));
        }
      }
    }
    for (const auto& handles : actors) {
      for (const auto& handle : handles) troupe::kill(handle);
    }
  }

  // The most micro-batches stage 0 held at once (at the largest m).
  std::vector<std::int64_t> peak_stash;
  for (const Pipeline& pipeline : pipelines) peak_stash.push_back(pipeline.stats()[0].peak_stashed_micro_batches);
  const double overshoot = forward_us > 0 || backward_us > 0
                               ? sleep_overshoot_us(options.quick ? 20 : 100, std::chrono::microseconds(forward_us))
                               : 0.0;
  pipelines.clear();
  troupe::shutdown();

  troupe::bench::Reporter report("pipeline", options);
  report.set_labels("measured", "ideal");
  const double slot_ms = (forward_us + backward_us) / 1e3;
  for (std::size_t s = 0; s < std::size(schedules); ++s) {
    const std::string name = schedules[s] == Schedule::gpipe ? "gpipe" : "1f1b";
    for (std::size_t i = 0; i < micro_batch_counts.size(); ++i) {
      const int m = micro_batch_counts[i];
      const double measured_ms = troupe::bench::median(figures[s][i]) * 1e3;
      const double ideal_ms = (m + stages - 1) * slot_ms;
      const std::string prefix = name + "_m" + std::to_string(m);
      report.add(prefix + "_batch_time", measured_ms, "ms", Better::lower, ideal_ms);
      report.add(prefix + "_vs_bound", ideal_ms / measured_ms, "x", Better::higher);
      report.add(prefix + "_overhead", (measured_ms - ideal_ms) * 1e3 / (m * stages), "us/mb/stage", Better::lower);
      // The critical path has 2 (m + S - 1) sleeps, each late by about the overshoot.
      const double sleeps_late_ms = 2.0 * (m + stages - 1) * overshoot / 1e3;
      report.add(prefix + "_overhead_net", (measured_ms - ideal_ms - sleeps_late_ms) * 1e3 / (m * stages),
                 "us/mb/stage", Better::lower);
    }
    report.add(name + "_stage0_peak_stash", static_cast<double>(peak_stash[s]), "micro-batches", Better::lower);
  }
  const double t_f = forward_us / 1e3, t_bi = backward_input_us / 1e3, t_w = backward_weight_us / 1e3;
  for (std::size_t s = 0; s < stage_runs.size(); ++s) {
    for (std::size_t i = 0; i < stage_ms.size(); ++i) {
      const int m = stage_ms[i];
      const double measured_ms = troupe::bench::median(stage_figures[s][i]) * 1e3;
      const double theory_ms =
          troupe::actors::theoretical_batch_time(stage_runs[s].schedule, stages, m, stage_runs[s].v, t_f, t_bi, t_w);
      const double work_ms = m * (t_f + t_bi + t_w);
      const std::string prefix = "stage_" + stage_runs[s].name + "_m" + std::to_string(m);
      report.add(prefix + "_batch_time", measured_ms, "ms", Better::lower, theory_ms);
      report.add(prefix + "_vs_own_bound", theory_ms / measured_ms, "x", Better::higher);
      report.add(prefix + "_bubble", 1.0 - work_ms / measured_ms, "fraction", Better::lower,
                 1.0 - work_ms / theory_ms);
    }
  }
  report.add("sleep_overshoot", overshoot, "us", Better::lower);
  char setup[320];
  std::snprintf(setup, sizeof setup,
                "S = %d stages, t_f = %.1f ms, t_b = %.1f ms per micro-batch of %d rows; %d pool threads; "
                "median of %d batches each.",
                stages, forward_us / 1e3, backward_us / 1e3, rows, init_options.num_threads, repeats);
  report.note(setup);
  report.note("ideal: (m + S - 1) * (t_f + t_b); vs_bound = measured throughput / (m / (m + S - 1) of one stage's)");
  report.note("= ideal / measured (target >= 0.95); overhead = (measured - ideal) / (m * S); overhead_net also");
  report.note("subtracts 2 (m + S - 1) * sleep_overshoot, the late wake-ups on the critical path.");
  report.note("stage0_peak_stash: the most micro-batches stage 0 held for their backward at once (m = " +
              std::to_string(micro_batch_counts.back()) + "): GPipe holds m, 1F1B at most S.");
  report.note("stage_*: every schedule on SleepStage actors (t_f = " + std::to_string(forward_us / 1000.0).substr(0, 4) +
              " ms, t_bi = " + std::to_string(backward_input_us / 1000.0).substr(0, 4) + " ms, t_w = " +
              std::to_string(backward_weight_us / 1000.0).substr(0, 4) +
              " ms; interleaved2: v = 2, chunks of half those) through StagePipeline; the second column of");
  report.note("batch_time is the schedule's own theoretical time, of bubble the theoretical bubble fraction.");
  report.print_table();
  return 0;
}
