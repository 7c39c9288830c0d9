// Replicated (data-parallel) pipeline stages (stage.hpp, "Replicated
// stages"): a stage given as d actors splits its micro-batches between them
// (micro-batch i on replica i mod d), the replicas sum their gradients
// replica to replica before they step, and the pipeline trains as the
// unreplicated one: losses to 1e-5 under GPipe, 1F1B and ZB-H1, replicas
// bit-identical after each step, a failed batch steps no replica, misuse
// is an invalid argument. Also: StageClock's per-replica times and the
// version-2 stage time report, and replicas created from a placed plan.
// Local mode, in process.
#include "troupe/actors/stage.hpp"

#include <gtest/gtest.h>

#include <chrono>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "troupe/actors/kernels.hpp"
#include "troupe/actors/pipeline.hpp"
#include "troupe/actors/plan_placement.hpp"
#include "troupe/actors/stage_times.hpp"
#include "troupe/runtime/runtime.hpp"
#include "troupe/runtime/tensor.hpp"
#include "troupe/scheduler/planner_v2.hpp"

namespace {

// A stage without the gradient sync methods (one weight, y = w x).
class PlainStage {
 public:
  explicit PlainStage(float w) : w_(w) {}
  troupe::Tensor forward(std::int64_t, troupe::Tensor x) { return x; }
  troupe::Tensor backward(std::int64_t, troupe::Tensor dy) { return dy; }
  float forward_loss(std::int64_t, troupe::Tensor, troupe::Tensor, std::int64_t) { return w_; }
  troupe::Tensor backward_loss(std::int64_t) { return {}; }
  std::int64_t step(std::int64_t) { return 1; }

 private:
  float w_;
};

static_assert(troupe::actors::PipelineStageClass<PlainStage>);
static_assert(!troupe::actors::stage_traits<PlainStage>::syncs_gradients);
static_assert(troupe::actors::stage_traits<troupe::actors::PipelineStage>::syncs_gradients);
static_assert(std::is_same_v<troupe::actors::stage_traits<troupe::actors::PipelineStage>::gradient_type, troupe::Tensor>);

}  // namespace

TROUPE_ACTOR(PlainStage, (float), forward, backward, forward_loss, backward_loss, step);

namespace {

using namespace std::chrono_literals;
using troupe::Tensor;
using troupe::actors::PipelineStage;
using troupe::actors::Schedule;
using troupe::actors::StageSpec;
namespace sched = troupe::scheduler;
using Replicas = troupe::actors::StageReplicas<PipelineStage>;

constexpr std::int64_t kRows = 24;
constexpr int kMicroBatches = 6;

class StageReplicasTest : public ::testing::Test {
 protected:
  void SetUp() override { troupe::init({.num_threads = 4, .gpus = "T4-16GB:4"}); }
  void TearDown() override { troupe::shutdown(); }
};

std::vector<StageSpec> mlp(troupe::actors::OptimizerSpec optimizer, int stages = 3) {
  StageSpec common;
  common.seed = 3;
  common.optimizer = optimizer;
  return troupe::actors::split_mlp({10, 16, 12, 12, 4}, stages, common);
}

// Batch b: inputs [kRows, 10] and labels [kRows], as micro-batches.
std::pair<std::vector<Tensor>, std::vector<Tensor>> batch(int b) {
  Tensor x = Tensor::empty({kRows, 10}, troupe::DType::f32);
  troupe::kernels::uniform_(x, 1.0f, 100 + static_cast<std::uint32_t>(b));
  Tensor labels = Tensor::empty({kRows}, troupe::DType::i64);
  for (std::int64_t i = 0; i < kRows; ++i) labels.data<std::int64_t>()[i] = (i * 7 + b) % 4;
  return {x.chunk(kMicroBatches), labels.chunk(kMicroBatches)};
}

Replicas make_replicas(const std::vector<StageSpec>& specs, const std::vector<int>& counts) {
  Replicas out(specs.size());
  for (std::size_t k = 0; k < specs.size(); ++k) {
    for (int r = 0; r < counts[k]; ++r) out[k].push_back(troupe::actor<PipelineStage>(specs[k]));
  }
  return out;
}

std::vector<std::vector<Tensor>> parameters_of(const Replicas& replicas, std::size_t stage) {
  std::vector<std::vector<Tensor>> out;
  for (const auto& replica : replicas[stage]) out.push_back(replica.call<&PipelineStage::get_parameters>().get(30s));
  return out;
}

bool same_bits(const std::vector<Tensor>& a, const std::vector<Tensor>& b) {
  if (a.size() != b.size()) return false;
  for (std::size_t j = 0; j < a.size(); ++j) {
    if (a[j].shape() != b[j].shape() || std::memcmp(a[j].raw_data(), b[j].raw_data(), a[j].nbytes()) != 0) return false;
  }
  return true;
}

double largest_difference(const std::vector<Tensor>& a, const std::vector<Tensor>& b) {
  double worst = 0;
  for (std::size_t j = 0; j < a.size(); ++j) {
    for (std::int64_t e = 0; e < a[j].numel(); ++e) {
      worst = std::max(worst, static_cast<double>(std::abs(a[j].data<float>()[e] - b[j].data<float>()[e])));
    }
  }
  return worst;
}

TEST_F(StageReplicasTest, AReplicatedStageTrainsAsTheUnreplicatedPipelineUnderGpipeOneFOneBAndZeroBubble) {
  constexpr int batches = 3;
  for (const auto& optimizer :
       {troupe::actors::OptimizerSpec::make_sgd(0.2f, 0.5f), troupe::actors::OptimizerSpec::make_adam(1e-2f)}) {
    const std::vector<StageSpec> specs = mlp(optimizer);
    for (const Schedule schedule : {Schedule::gpipe, Schedule::one_f_one_b, Schedule::zero_bubble_h1}) {
      // The reference: one actor per stage.
      Replicas reference = make_replicas(specs, {1, 1, 1});
      troupe::actors::StagePipeline<PipelineStage> unreplicated(reference);
      std::vector<float> want;
      for (int b = 0; b < batches; ++b) {
        const auto [xs, ys] = batch(b);
        want.push_back(unreplicated.train_batch(xs, ys, kRows, schedule));
      }
      // d = 2 in the middle (a power of two), 3 on the first stage (an odd
      // tree), 4 on the last with m = 6 (replicas of 2, 2, 1 and 1 micro-batches).
      for (const std::vector<int>& counts : std::vector<std::vector<int>>{{1, 2, 1}, {3, 1, 4}, {2, 2, 2}}) {
        SCOPED_TRACE(std::string(to_string(schedule)) + " replicas " + std::to_string(counts[0]) + "," +
                     std::to_string(counts[1]) + "," + std::to_string(counts[2]) +
                     (optimizer.kind == troupe::actors::OptimizerSpec::Kind::adam ? " adam" : " sgd"));
        Replicas replicas = make_replicas(specs, counts);
        troupe::actors::StagePipeline<PipelineStage> pipeline(replicas);
        EXPECT_EQ(pipeline.replica_counts(), counts);
        for (int b = 0; b < batches; ++b) {
          const auto [xs, ys] = batch(b);
          const float loss = pipeline.train_batch(xs, ys, kRows, schedule);
          EXPECT_NEAR(loss, want[b], 1e-5) << "batch " << b;
        }
        for (std::size_t k = 0; k < specs.size(); ++k) {
          const auto got = parameters_of(replicas, k);
          const auto expected = parameters_of(reference, k).front();
          for (std::size_t r = 0; r < got.size(); ++r) {
            EXPECT_TRUE(same_bits(got[r], got[0])) << "stage " << k << " replica " << r << " differs from replica 0";
            EXPECT_LE(largest_difference(got[r], expected), 1e-5) << "stage " << k << " replica " << r;
          }
          // Each replica ran its share of the micro-batches and stepped once a batch.
          std::int64_t forwards = 0;
          for (const auto& replica : replicas[k]) {
            const troupe::actors::StageStats stats = replica.call<&PipelineStage::stats>().get(30s);
            EXPECT_EQ(stats.steps, batches);
            forwards += stats.forwards;
          }
          EXPECT_EQ(forwards, std::int64_t{batches} * kMicroBatches) << "stage " << k;
        }
        for (const auto& stage : replicas) {
          for (const auto& replica : stage) troupe::kill(replica);
        }
      }
      for (const auto& stage : reference) troupe::kill(stage.front());
    }
  }
}

TEST_F(StageReplicasTest, AFailedBatchStepsNoReplicaAndTheNextBatchTrainsAsIfItNeverRan) {
  const std::vector<StageSpec> specs = mlp(troupe::actors::OptimizerSpec::make_sgd(0.2f));
  Replicas reference = make_replicas(specs, {1, 1, 1});
  troupe::actors::StagePipeline<PipelineStage> unreplicated(reference);
  Replicas replicas = make_replicas(specs, {1, 2, 1});
  troupe::actors::StagePipeline<PipelineStage> pipeline(replicas);
  const auto initial = parameters_of(replicas, 1);

  auto [xs, ys] = batch(0);
  std::vector<Tensor> broken = xs;
  broken[3] = Tensor::zeros({kRows / kMicroBatches, 7}, troupe::DType::f32);  // stage 0 wants 10 features
  EXPECT_THROW((void)pipeline.train_batch(broken, ys, kRows, Schedule::one_f_one_b), troupe::Error);
  // Micro-batch 3 was replica 1's: replica 0's batch went through, yet no replica stepped.
  const auto after = parameters_of(replicas, 1);
  for (std::size_t r = 0; r < after.size(); ++r) EXPECT_TRUE(same_bits(after[r], initial[r])) << "replica " << r;

  const float want = unreplicated.train_batch(xs, ys, kRows, Schedule::one_f_one_b);
  EXPECT_NEAR(pipeline.train_batch(xs, ys, kRows, Schedule::one_f_one_b), want, 1e-5);
  const auto trained = parameters_of(replicas, 1);
  EXPECT_TRUE(same_bits(trained[0], trained[1]));
  EXPECT_LE(largest_difference(trained[0], parameters_of(reference, 1).front()), 1e-5);
}

TEST_F(StageReplicasTest, ReplicasOfAStageClassWithoutGradientSyncOrWithoutActorsAreInvalidArguments) {
  const auto expect_invalid = [](auto&& f, const std::string& says, troupe::Errc code = troupe::Errc::invalid_argument) {
    try {
      f();
      ADD_FAILURE() << "accepted; wanted an error saying " << says;
    } catch (const troupe::Error& e) {
      EXPECT_EQ(e.code(), code) << e.what();
      EXPECT_NE(std::string(e.what()).find(says), std::string::npos) << e.what();
    }
  };
  troupe::actors::StageReplicas<PlainStage> plain{{troupe::actor<PlainStage>(1.0f)},
                                                   {troupe::actor<PlainStage>(1.0f), troupe::actor<PlainStage>(1.0f)}};
  expect_invalid([&] { troupe::actors::StagePipeline<PlainStage> p(plain); }, "no take_gradients");
  // The README's braced form: {{stage 0}, {replica a, replica b}}.
  expect_invalid([&] { troupe::actors::StagePipeline<PlainStage> p({{plain[0][0]}, {plain[1][0], plain[1][1]}}); },
                 "stage 1 has 2 replicas");
  const std::vector<Tensor> xs{Tensor::zeros({1, 1}, troupe::DType::f32)};
  expect_invalid([&] { (void)troupe::actors::submit_stage_calls(plain, xs, xs, 1, Schedule::gpipe, 1, 0); },
                 "stage 1 has 2 replicas");
  expect_invalid([&] { troupe::actors::StagePipeline<PlainStage> p(troupe::actors::StageReplicas<PlainStage>(1)); },
                 "stage 0 has no replica actor");
  // One replica per stage needs no sync: that pipeline runs.
  troupe::actors::StagePipeline<PlainStage> single(std::vector<troupe::ActorHandle<PlainStage>>{plain[0][0], plain[1][0]});
  EXPECT_EQ(single.train_batch(xs, xs, 1, Schedule::one_f_one_b), 1.0f);

  // PipelineStage's sync methods check what they are given (their
  // invalid_argument comes back as the call's task_failed, message kept).
  const auto failed_call = troupe::Errc::task_failed;
  auto stage = troupe::actor<PipelineStage>(mlp(troupe::actors::OptimizerSpec::make_sgd(0.1f))[1]);
  expect_invalid([&] { (void)stage.call<&PipelineStage::take_gradients>(std::int64_t{2}).get(30s); },
                 "expected 2 backward passes", failed_call);
  expect_invalid(
      [&] { (void)stage.call<&PipelineStage::step_with_gradients>(Tensor::zeros({3}, troupe::DType::f32)).get(30s); },
      "expected f32", failed_call);
}

TEST_F(StageReplicasTest, TheClockMeasuresEachReplicaAndTheReportDividesAStagesTimeByItsReplicas) {
  std::vector<StageSpec> specs = mlp(troupe::actors::OptimizerSpec::make_sgd(0.1f));
  for (StageSpec& spec : specs) spec.simulated_forward_us = spec.simulated_backward_us = 2000;
  specs[1].simulated_forward_us = specs[1].simulated_backward_us = 4000;  // twice as slow, on two replicas
  Replicas replicas = make_replicas(specs, {1, 2, 1});
  troupe::actors::StagePipeline<PipelineStage> pipeline(replicas);
  troupe::actors::StageClock clock(3);
  pipeline.set_stage_clock(&clock);
  const auto [xs, ys] = batch(0);
  (void)pipeline.train_batch(xs, ys, kRows, Schedule::one_f_one_b);
  const std::vector<troupe::actors::StageMeasure> measured = clock.measure();
  ASSERT_EQ(measured.size(), 3u);
  EXPECT_EQ(measured[0].replicas, 1);
  EXPECT_EQ(measured[1].replicas, 2);
  EXPECT_EQ(measured[2].replicas, 1);
  for (const auto& m : measured) {
    EXPECT_EQ(m.units, kMicroBatches);
    EXPECT_DOUBLE_EQ(m.throughput_ms, m.mean_ms / m.replicas);
  }
  EXPECT_GE(measured[1].mean_ms, 8.0);  // a replica's forward + backward
  EXPECT_GE(measured[0].mean_ms, 4.0);
  EXPECT_LT(measured[1].throughput_ms, measured[1].mean_ms);

  sched::PlanV2 plan;
  plan.stages = {{"local", {0}, 1, 0, 0}, {"local", {1, 2}, 1, 1, 2}, {"local", {3}, 1, 3, 3}};
  plan.stages[1].dp = 2;
  plan.stages[1].gpu_type = "T4-16GB";
  for (auto& s : plan.stages) s.time_s = 0.004;
  const auto rows = troupe::actors::stage_time_report(plan, measured);
  ASSERT_EQ(rows.size(), 3u);
  EXPECT_EQ(rows[1].dp, 2);
  EXPECT_EQ(rows[0].dp, 1);  // dp left 0 by the plan: from its GPUs / tp
  EXPECT_DOUBLE_EQ(rows[1].measured_ms, measured[1].throughput_ms);
  EXPECT_DOUBLE_EQ(rows[1].replica_ms, measured[1].mean_ms);
  EXPECT_DOUBLE_EQ(rows[1].predicted_ms, 4.0);
  const std::string table = troupe::actors::format_stage_time_report(rows);
  EXPECT_NE(table.find("REPLICA ms"), std::string::npos) << table;
  EXPECT_NE(table.find("1 T4-16GB (1x2)"), std::string::npos) << table;

  sched::PlanV2 too_few = plan;
  too_few.stages[1].gpus = {1};
  too_few.stages[1].dp = 1;
  EXPECT_THROW((void)troupe::actors::stage_time_report(too_few, measured), troupe::Error);
}

TEST_F(StageReplicasTest, APlacedVersionTwoPlanGivesEachStageItsReplicasOnTheirGpus) {
  sched::PlanV2 plan;
  plan.stages = {{"local", {0}, 1, 0, 0}, {"local", {1, 2}, 1, 1, 2}, {"local", {3}, 1, 3, 3}};
  const auto placed = troupe::actors::place_plan(plan, troupe::actors::live_cluster_spec());
  placed.group.ready().get(30s);
  const std::vector<StageSpec> specs = mlp(troupe::actors::OptimizerSpec::make_sgd(0.2f));
  const Replicas replicas = troupe::actors::create_stage_replicas(
      placed, [&](int k, int, const std::vector<troupe::ActorOptions>& shards) {
        EXPECT_EQ(shards.size(), 1u);  // t = 1
        return troupe::actor<PipelineStage>(shards.front(), specs[static_cast<std::size_t>(k)]);
      });
  ASSERT_EQ(replicas.size(), 3u);
  EXPECT_EQ(replicas[0].size(), 1u);
  EXPECT_EQ(replicas[1].size(), 2u);
  EXPECT_EQ(replicas[2].size(), 1u);

  Replicas reference = make_replicas(specs, {1, 1, 1});
  troupe::actors::StagePipeline<PipelineStage> unreplicated(reference);
  troupe::actors::StagePipeline<PipelineStage> pipeline(replicas);
  for (int b = 0; b < 2; ++b) {
    const auto [xs, ys] = batch(b);
    EXPECT_NEAR(pipeline.train_batch(xs, ys, kRows, Schedule::zero_bubble_h1),
                unreplicated.train_batch(xs, ys, kRows, Schedule::zero_bubble_h1), 1e-5);
  }

  // A make that fails half-way: what it made is killed, the error goes on.
  std::vector<troupe::ActorHandle<PipelineStage>> made;
  EXPECT_THROW((void)troupe::actors::create_stage_replicas(placed,
                                                           [&](int k, int r, const std::vector<troupe::ActorOptions>&) {
                                                             if (k == 1 && r == 1) {
                                                               throw troupe::Error(troupe::Errc::invalid_argument,
                                                                                   "no");
                                                             }
                                                             made.push_back(troupe::actor<PipelineStage>(
                                                                 specs[static_cast<std::size_t>(k)]));
                                                             return made.back();
                                                           }),
               troupe::Error);
  ASSERT_EQ(made.size(), 2u);
  for (const auto& handle : made) EXPECT_THROW((void)handle.call<&PipelineStage::stats>().get(30s), troupe::Error);
}

}  // namespace
