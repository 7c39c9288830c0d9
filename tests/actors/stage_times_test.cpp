// Measured stage times beside the plan's (troupe/actors/stage_times.hpp), in
// local mode: stages that take a known time per call, chained as a pipeline
// driver chains them, measured from the driver.
// TROUPE_TEST_LABELS: fast
#include "troupe/actors/stage_times.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <string>
#include <thread>
#include <vector>

#include "troupe/actors/pipeline.hpp"
#include "troupe/actors/stage.hpp"
#include "troupe/runtime/error.hpp"
#include "troupe/scheduler/planner.hpp"
#include "troupe/troupe.hpp"

namespace {

using namespace std::chrono_literals;
namespace sched = troupe::scheduler;

// Takes `ms` per call, as a stage of that speed would.
class Sleeper {
 public:
  explicit Sleeper(int ms) : ms_(ms) {}
  int run(int x) {
    std::this_thread::sleep_for(std::chrono::milliseconds(ms_));
    return x + 1;
  }

 private:
  int ms_;
};

}  // namespace

TROUPE_ACTOR(Sleeper, (int), run);

namespace {

class StageTimes : public ::testing::Test {
 protected:
  void SetUp() override { troupe::init({.num_threads = 4}); }
  void TearDown() override { troupe::shutdown(); }
};

// A plan with costs: the uniform split of 4 layers over a T4 and an H100.
sched::Plan evaluated_plan() {
  sched::ModelProfile model;
  model.name = "four";
  model.layers = {{"a", 1e10, 1e6, 1e6}, {"b", 2e10, 1e6, 1e6}, {"c", 3e10, 1e6, 1e6}, {"d", 4e10, 1e6, 1e6}};
  sched::ClusterSpec cluster;
  cluster.name = "two";
  cluster.inter_node_gbps = 10;
  cluster.nodes = {{"n", 100, {{"T4-16GB", 65, 16}, {"H100-80GB", 990, 80}}}};
  const sched::PlanEvaluation evaluation = sched::evaluate(model, cluster, sched::uniform_plan(model, cluster));
  EXPECT_TRUE(evaluation.valid) << evaluation.reason;
  return evaluation.plan;
}

TEST_F(StageTimes, TheReportHasOneRowPerStageWithMeasuredAndPredictedTimes) {
  const sched::Plan plan = evaluated_plan();
  ASSERT_EQ(plan.stages.size(), 2u);
  const int sleep_ms[] = {4, 12};  // the second stage three times the first
  std::vector<troupe::ActorHandle<Sleeper>> stages;
  for (int ms : sleep_ms) stages.push_back(troupe::actor<Sleeper>(ms));

  troupe::actors::StageClock clock(stages.size());
  std::vector<troupe::ObjectRef<int>> results;
  constexpr int kRequests = 6;
  for (int r = 0; r < kRequests; ++r) {  // all in flight at once: stage 1 queues behind itself
    troupe::ObjectRef<int> x = stages[0].call<&Sleeper::run>(r);
    auto op = clock.record(0, x);
    troupe::ObjectRef<int> y = stages[1].call<&Sleeper::run>(x);
    clock.record(1, y, op);
    results.push_back(y);
  }
  for (int r = 0; r < kRequests; ++r) EXPECT_EQ(results[r].get(10s), r + 2);

  const auto measured = clock.measure();
  const auto rows = troupe::actors::stage_time_report(plan, measured);
  ASSERT_EQ(rows.size(), plan.stages.size());
  for (std::size_t k = 0; k < rows.size(); ++k) {
    SCOPED_TRACE(k);
    EXPECT_EQ(rows[k].stage, static_cast<int>(k));
    EXPECT_EQ(rows[k].first_layer, plan.stages[k].first_layer);
    EXPECT_EQ(rows[k].last_layer, plan.stages[k].last_layer);
    EXPECT_EQ(rows[k].gpu_type, plan.stages[k].gpu_type);
    EXPECT_GT(rows[k].predicted_ms, 0);
    EXPECT_DOUBLE_EQ(rows[k].predicted_ms, plan.stages[k].time_s * 1e3);
    EXPECT_EQ(rows[k].units, kRequests);
    // Each call's own time, not its wait in the queue: about the sleep
    // (both ends seen from the driver, each a notification late), and well
    // under the queueing (stage 1's last call waits ~5 x 12 ms).
    EXPECT_GE(rows[k].measured_ms, sleep_ms[k] * 0.75);
    EXPECT_LT(rows[k].measured_ms, sleep_ms[k] * 2.0 + 10);
    EXPECT_DOUBLE_EQ(rows[k].ratio, rows[k].measured_ms / rows[k].predicted_ms);
  }
  EXPECT_GT(rows[1].measured_ms, rows[0].measured_ms);

  const std::string table = troupe::actors::format_stage_time_report(rows);
  EXPECT_NE(table.find("PREDICTED ms"), std::string::npos) << table;
  EXPECT_NE(table.find("MEASURED ms"), std::string::npos) << table;
  EXPECT_NE(table.find("RATIO"), std::string::npos) << table;
  EXPECT_NE(table.find("H100-80GB"), std::string::npos) << table;
  EXPECT_EQ(std::count(table.begin(), table.end(), '\n'), 1 + static_cast<long>(rows.size())) << table;
}

TEST_F(StageTimes, CallsOfOneUnitAddUp) {
  // A micro-batch's forward and backward on one stage: one unit, two calls.
  auto stage = troupe::actor<Sleeper>(5);
  troupe::actors::StageClock clock(1);
  std::vector<troupe::ObjectRef<int>> results;
  for (int unit = 0; unit < 3; ++unit) {
    for (int call = 0; call < 2; ++call) {
      results.push_back(stage.call<&Sleeper::run>(unit));
      clock.record(0, results.back(), troupe::actors::StageClock::kNoInput, unit);
    }
  }
  for (const auto& r : results) (void)r.get(10s);
  const auto measured = clock.measure();
  ASSERT_EQ(measured.size(), 1u);
  EXPECT_EQ(measured[0].units, 3);
  EXPECT_GE(measured[0].mean_ms, 2 * 5 * 0.75);
  EXPECT_LT(measured[0].mean_ms, 2 * 5 * 2.0 + 10);
}

// The training side: StagePipeline records every forward, backward and
// loss call, a micro-batch's calls on a stage as one unit, so a stage's
// measured time is its forward plus backward per micro-batch, under 1F1B and
// under ZB-H1 (backward split in two halves).
TEST_F(StageTimes, AStagePipelineMeasuresForwardPlusBackwardPerMicroBatch) {
  using troupe::actors::PipelineStage;
  auto specs = troupe::actors::split_mlp({8, 16, 4}, 2, {.seed = 3});
  const int forward_ms[] = {3, 6};  // backward twice the forward, stage 1 twice stage 0
  for (std::size_t k = 0; k < specs.size(); ++k) {
    specs[k].simulated_forward_us = forward_ms[k] * 1000;
    specs[k].simulated_backward_us = 2 * forward_ms[k] * 1000;
  }
  std::vector<troupe::ActorHandle<PipelineStage>> stages;
  for (const auto& spec : specs) stages.push_back(troupe::actor<PipelineStage>(spec));
  troupe::actors::StagePipeline<PipelineStage> pipeline(stages);

  constexpr int kMicro = 4, kRows = 2;
  std::vector<troupe::Tensor> inputs, labels;
  for (int i = 0; i < kMicro; ++i) {
    troupe::Tensor x = troupe::Tensor::empty({kRows, 8}, troupe::DType::f32);
    for (std::int64_t j = 0; j < x.numel(); ++j) x.data<float>()[j] = 0.01f * static_cast<float>((j * 7 + i) % 13);
    troupe::Tensor y = troupe::Tensor::empty({kRows}, troupe::DType::i32);
    for (std::int64_t j = 0; j < kRows; ++j) y.data<std::int32_t>()[j] = static_cast<std::int32_t>((i + j) % 4);
    inputs.push_back(x);
    labels.push_back(y);
  }
  sched::Plan plan;  // what a planner would predict for those speeds
  plan.stages = {{"local", 0, 0, 0, "T4-16GB", 0.009, 0, 0.009}, {"local", 1, 1, 1, "T4-16GB", 0.018, 0, 0.018}};

  for (const auto schedule : {troupe::actors::Schedule::one_f_one_b, troupe::actors::Schedule::zero_bubble_h1}) {
    SCOPED_TRACE(std::string(troupe::actors::to_string(schedule)));
    troupe::actors::StageClock clock(stages.size());
    pipeline.set_stage_clock(&clock);
    const float loss = pipeline.train_batch(inputs, labels, kMicro * kRows, schedule);
    pipeline.set_stage_clock(nullptr);
    EXPECT_GT(loss, 0);
    const auto rows = troupe::actors::stage_time_report(plan, clock.measure());
    ASSERT_EQ(rows.size(), 2u);
    for (std::size_t k = 0; k < rows.size(); ++k) {
      SCOPED_TRACE(k);
      const double want_ms = 3.0 * forward_ms[k];
      EXPECT_EQ(rows[k].units, kMicro);
      EXPECT_DOUBLE_EQ(rows[k].predicted_ms, plan.stages[k].time_s * 1e3);
      EXPECT_GE(rows[k].measured_ms, want_ms * 0.75);
      EXPECT_LT(rows[k].measured_ms, want_ms * 2.0 + 10);
    }
  }
  // A clock of the wrong size is refused before anything is submitted.
  troupe::actors::StageClock wrong(3);
  pipeline.set_stage_clock(&wrong);
  EXPECT_THROW((void)pipeline.submit_batch(inputs, labels, kMicro * kRows, troupe::actors::Schedule::gpipe),
               troupe::Error);
}

TEST_F(StageTimes, ThePipelineDriverOfMlpStagesMeasuresForwardPlusBackwardPerMicroBatch) {
  auto specs = troupe::actors::split_mlp({8, 16, 4}, 2, {.seed = 3});
  const int forward_ms[] = {4, 2};
  for (std::size_t k = 0; k < specs.size(); ++k) {
    specs[k].simulated_forward_us = forward_ms[k] * 1000;
    specs[k].simulated_backward_us = 2 * forward_ms[k] * 1000;
  }
  troupe::actors::Pipeline pipeline(specs);
  constexpr int kMicro = 4, kRows = 8;
  troupe::Tensor x = troupe::Tensor::empty({kRows, 8}, troupe::DType::f32);
  for (std::int64_t j = 0; j < x.numel(); ++j) x.data<float>()[j] = 0.01f * static_cast<float>(j % 13);
  troupe::Tensor y = troupe::Tensor::empty({kRows}, troupe::DType::i32);
  for (std::int64_t j = 0; j < kRows; ++j) y.data<std::int32_t>()[j] = static_cast<std::int32_t>(j % 4);
  sched::Plan plan;
  plan.stages = {{"local", 0, 0, 0, "T4-16GB", 0.012, 0, 0.012}, {"local", 1, 1, 1, "T4-16GB", 0.006, 0, 0.006}};

  troupe::actors::StageClock clock(2);
  pipeline.set_stage_clock(&clock);
  EXPECT_GT(pipeline.train_batch(x, y, kMicro, troupe::actors::Schedule::one_f_one_b), 0);
  pipeline.set_stage_clock(nullptr);
  (void)pipeline.train_batch(x, y, kMicro, troupe::actors::Schedule::one_f_one_b);  // not recorded
  const auto rows = troupe::actors::stage_time_report(plan, clock.measure());
  ASSERT_EQ(rows.size(), 2u);
  for (std::size_t k = 0; k < rows.size(); ++k) {
    SCOPED_TRACE(k);
    const double want_ms = 3.0 * forward_ms[k];
    EXPECT_EQ(rows[k].units, kMicro);
    EXPECT_GE(rows[k].measured_ms, want_ms * 0.75);
    EXPECT_LT(rows[k].measured_ms, want_ms * 2.0 + 10);
  }
  troupe::actors::StageClock wrong(3);
  EXPECT_THROW(pipeline.set_stage_clock(&wrong), troupe::Error);
}

TEST_F(StageTimes, BadUseIsRefused) {
  EXPECT_THROW(troupe::actors::StageClock(0), troupe::Error);
  troupe::actors::StageClock clock(2);
  auto stage = troupe::actor<Sleeper>(0);
  auto ref = stage.call<&Sleeper::run>(1);
  EXPECT_THROW(clock.record(2, ref), troupe::Error);
  EXPECT_THROW(clock.record(0, ref, 5), troupe::Error);
  EXPECT_THROW(clock.record(0, troupe::ObjectRef<int>()), troupe::Error);
  (void)ref.get(10s);
  // Nothing complete measured yet is zero units, not an error.
  EXPECT_EQ(clock.measure()[1].units, 0);
  EXPECT_THROW((void)troupe::actors::stage_time_report(evaluated_plan(), std::vector<troupe::actors::StageMeasure>(3)),
               troupe::Error);
}

}  // namespace
