// Pipeline-parallel training with stage actors (troupe::actors::Pipeline), in
// local mode: both schedules, several micro-batch counts, give the losses and
// parameters of the same model trained in one thread without micro-batches;
// the schedules stash what they promise; errors are clear and recoverable.
#include "troupe/actors/pipeline.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstdint>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "troupe/actors/kernels.hpp"
#include "troupe/runtime/cuda.hpp"
#include "troupe/troupe.hpp"

namespace {

using troupe::DType;
using troupe::Tensor;
using troupe::actors::Activation;
using troupe::actors::OptimizerSpec;
using troupe::actors::Pipeline;
using troupe::actors::PipelineOp;
using troupe::actors::PipelineStage;
using troupe::actors::Schedule;
using troupe::actors::StageSpec;
namespace kernels = troupe::kernels;

constexpr double kTolerance = 1e-5;

// max |got - want| / max |want|.
double relative_error(const Tensor& got, const Tensor& want) {
  EXPECT_EQ(got.shape(), want.shape());
  const float* g = got.data<float>();
  const float* w = want.data<float>();
  double diff = 0, scale = 0;
  for (std::int64_t i = 0; i < want.numel(); ++i) {
    diff = std::max(diff, std::abs(static_cast<double>(g[i]) - w[i]));
    scale = std::max(scale, std::abs(static_cast<double>(w[i])));
  }
  return scale > 0 ? diff / scale : diff;
}

Tensor random_inputs(std::int64_t rows, std::int64_t cols, std::uint32_t seed) {
  Tensor x = Tensor::empty({rows, cols}, DType::f32);
  kernels::uniform_(x, 1.0f, seed);
  return x;
}

Tensor random_labels(std::int64_t rows, std::int64_t classes, std::uint32_t seed) {
  std::vector<std::int64_t> labels(static_cast<std::size_t>(rows));
  std::uint32_t state = seed;
  for (auto& label : labels) {
    state = state * 1664525u + 1013904223u;
    label = static_cast<std::int64_t>((state >> 8) % static_cast<std::uint32_t>(classes));
  }
  return Tensor::from_vector(labels);
}

// The unpipelined model, written straight from the kernels: one Linear stack
// trained on whole batches (no micro-batches), in this thread.
class Reference {
 public:
  Reference(const std::vector<std::int64_t>& sizes, Activation activation, std::uint32_t seed,
            OptimizerSpec optimizer)
      : activation_(activation), optimizer_(optimizer) {
    for (std::size_t j = 0; j + 1 < sizes.size(); ++j) {
      layers_.emplace_back(sizes[j], sizes[j + 1], seed + static_cast<std::uint32_t>(j));
      for (const Tensor* p : {&layers_.back().weight, &layers_.back().bias}) {
        m_.push_back(kernels::zeros_like(*p));
        v_.push_back(kernels::zeros_like(*p));
      }
    }
  }

  Tensor forward(const Tensor& x, std::vector<Tensor>* preacts) {
    Tensor h = x;
    for (std::size_t j = 0; j < layers_.size(); ++j) {
      Tensor z = layers_[j].forward(h);
      if (j + 1 == layers_.size() || activation_ == Activation::none) {
        h = z;
        if (preacts) preacts->push_back(Tensor());
      } else {
        if (preacts) preacts->push_back(z);
        h = activation_ == Activation::relu ? kernels::relu(z) : kernels::gelu(z);
      }
    }
    return h;
  }

  float train(const Tensor& x, const Tensor& labels) {
    std::vector<Tensor> preacts;
    const Tensor logits = forward(x, &preacts);
    kernels::CrossEntropyResult result = kernels::softmax_cross_entropy(logits, labels);
    Tensor g = result.dlogits;
    for (std::size_t j = layers_.size(); j-- > 0;) {
      if (preacts[j].defined()) {
        g = activation_ == Activation::relu ? kernels::relu_backward(g, preacts[j])
                                            : kernels::gelu_backward(g, preacts[j]);
      }
      g = layers_[j].backward(g);  // uses the input kept by its forward
    }
    ++steps_;
    std::size_t p = 0;
    for (kernels::Linear& layer : layers_) {
      for (auto [param, grad] : {std::pair{&layer.weight, &layer.weight_grad}, std::pair{&layer.bias, &layer.bias_grad}}) {
        if (optimizer_.kind == OptimizerSpec::Kind::adam) {
          kernels::adam_step(*param, *grad, m_[p], v_[p], steps_, optimizer_.adam);
        } else {
          kernels::sgd_step(*param, *grad, optimizer_.sgd.momentum != 0 ? m_[p] : Tensor(), optimizer_.sgd);
        }
        ++p;
      }
      layer.zero_grad();
    }
    return result.loss;
  }

  std::vector<Tensor> parameters() const {
    std::vector<Tensor> out;
    for (const kernels::Linear& layer : layers_) {
      out.push_back(layer.weight);
      out.push_back(layer.bias);
    }
    return out;
  }

 private:
  Activation activation_;
  OptimizerSpec optimizer_;
  std::vector<kernels::Linear> layers_;
  std::vector<Tensor> m_, v_;
  std::int64_t steps_ = 0;
};

class PipelineTest : public ::testing::Test {
 protected:
  void SetUp() override {
    troupe::InitOptions options;
    options.num_threads = 4;
    troupe::init(options);
  }
  void TearDown() override { troupe::shutdown(); }
};

const std::vector<std::int64_t> kSizes = {20, 32, 24, 16, 5};  // 4 layers: one per stage

struct Case {
  Schedule schedule;
  int micro_batches;
  std::int64_t batch;
  OptimizerSpec optimizer;
  Activation activation = Activation::relu;
};

std::string describe(const Case& c) {
  return std::string(to_string(c.schedule)) + ", " + std::to_string(c.micro_batches) + " micro-batches of a batch of " +
         std::to_string(c.batch);
}

// Trains `steps` batches through a 4-stage pipeline and the reference and
// compares every loss and, at the end, every parameter.
void expect_matches_reference(const Case& c, int steps = 3) {
  SCOPED_TRACE(describe(c));
  StageSpec common;
  common.activation = c.activation;
  common.seed = 11;
  common.optimizer = c.optimizer;
  Pipeline pipeline(troupe::actors::split_mlp(kSizes, 4, common));
  Reference reference(kSizes, c.activation, common.seed, c.optimizer);
  for (int step = 0; step < steps; ++step) {
    const Tensor x = random_inputs(c.batch, kSizes.front(), 100 + step);
    const Tensor labels = random_labels(c.batch, kSizes.back(), 200 + step);
    const float got = pipeline.train_batch(x, labels, c.micro_batches, c.schedule);
    const float want = reference.train(x, labels);
    EXPECT_NEAR(got, want, kTolerance * std::abs(want)) << "step " << step;
  }
  std::vector<Tensor> got;
  for (const auto& stage : pipeline.parameters()) got.insert(got.end(), stage.begin(), stage.end());
  const std::vector<Tensor> want = reference.parameters();
  ASSERT_EQ(got.size(), want.size());
  double worst = 0;
  for (std::size_t i = 0; i < want.size(); ++i) {
    const double error = relative_error(got[i], want[i]);
    EXPECT_LE(error, kTolerance) << "parameter " << i;
    worst = std::max(worst, error);
  }
  if (std::getenv("PIPELINE_TEST_VERBOSE")) std::printf("  %s: worst parameter error %.2e\n", describe(c).c_str(), worst);
}

// ---- schedules ------------------------------------------------------------------------

// Checks that an order runs every forward and backward once, each backward
// after its forward, and returns the most micro-batches in flight at once.
int peak_in_flight(const std::vector<PipelineOp>& order, int micro_batches) {
  std::vector<int> seen(static_cast<std::size_t>(micro_batches), 0);
  int in_flight = 0, peak = 0;
  for (const PipelineOp& op : order) {
    if (op.kind == PipelineOp::Kind::forward) {
      EXPECT_EQ(seen[op.micro_batch]++, 0) << "forward " << op.micro_batch << " twice";
      peak = std::max(peak, ++in_flight);
    } else {
      EXPECT_EQ(seen[op.micro_batch]++, 1) << "backward " << op.micro_batch << " before its forward or twice";
      --in_flight;
    }
  }
  EXPECT_EQ(order.size(), 2u * micro_batches);
  return peak;
}

TEST(PipelineSchedule, GPipeRunsAllForwardsThenAllBackwards) {
  using K = PipelineOp::Kind;
  const auto order = troupe::actors::schedule_order(Schedule::gpipe, 1, 4, 3);
  const std::vector<PipelineOp> want = {{K::forward, 0},  {K::forward, 1},  {K::forward, 2},
                                        {K::backward, 0}, {K::backward, 1}, {K::backward, 2}};
  EXPECT_EQ(order, want);
}

TEST(PipelineSchedule, OneFOneBWarmsUpAlternatesAndDrains) {
  using K = PipelineOp::Kind;
  // Stage 1 of 4 with 5 micro-batches: 2 warm-up forwards, 3 pairs, 2 drains.
  const std::vector<PipelineOp> want = {{K::forward, 0},  {K::forward, 1},  {K::forward, 2},  {K::backward, 0},
                                        {K::forward, 3},  {K::backward, 1}, {K::forward, 4},  {K::backward, 2},
                                        {K::backward, 3}, {K::backward, 4}};
  EXPECT_EQ(troupe::actors::schedule_order(Schedule::one_f_one_b, 1, 4, 5), want);
  // The last stage alternates from the start.
  const std::vector<PipelineOp> last = {{K::forward, 0}, {K::backward, 0}, {K::forward, 1}, {K::backward, 1}};
  EXPECT_EQ(troupe::actors::schedule_order(Schedule::one_f_one_b, 3, 4, 2), last);
}

TEST(PipelineSchedule, OneFOneBHoldsAtMostStagesLeftMicroBatchesGPipeHoldsAll) {
  for (int stages : {1, 2, 4, 7}) {
    for (int m : {1, 2, 3, 4, 8, 16}) {
      for (int k = 0; k < stages; ++k) {
        SCOPED_TRACE("stage " + std::to_string(k) + " of " + std::to_string(stages) + ", m = " + std::to_string(m));
        EXPECT_EQ(peak_in_flight(troupe::actors::schedule_order(Schedule::gpipe, k, stages, m), m), m);
        EXPECT_EQ(peak_in_flight(troupe::actors::schedule_order(Schedule::one_f_one_b, k, stages, m), m),
                  std::min(stages - k, m));
      }
    }
  }
}

TEST(PipelineSchedule, NamesRoundTripAndBadInputIsRejected) {
  EXPECT_EQ(troupe::actors::parse_schedule("gpipe"), Schedule::gpipe);
  EXPECT_EQ(troupe::actors::parse_schedule("1f1b"), Schedule::one_f_one_b);
  EXPECT_EQ(troupe::actors::parse_schedule(to_string(Schedule::one_f_one_b)), Schedule::one_f_one_b);
  EXPECT_THROW(troupe::actors::parse_schedule("pipedream"), troupe::Error);
  EXPECT_EQ(troupe::actors::parse_activation("gelu"), Activation::gelu);
  EXPECT_THROW(troupe::actors::parse_activation("tanh"), troupe::Error);
  EXPECT_THROW(troupe::actors::schedule_order(Schedule::gpipe, 4, 4, 2), troupe::Error);
  EXPECT_THROW(troupe::actors::schedule_order(Schedule::gpipe, 0, 4, 0), troupe::Error);
}

TEST(PipelineSplit, SplitsLayersEvenlyWithTheWholeModelsSeeds) {
  StageSpec common;
  common.seed = 40;
  const auto specs = troupe::actors::split_mlp({8, 7, 6, 5, 4, 3}, 2, common);
  ASSERT_EQ(specs.size(), 2u);
  EXPECT_EQ(specs[0].sizes, (std::vector<std::int64_t>{8, 7, 6, 5}));
  EXPECT_EQ(specs[1].sizes, (std::vector<std::int64_t>{5, 4, 3}));
  EXPECT_EQ(specs[0].seed, 40u);
  EXPECT_EQ(specs[1].seed, 43u);
  EXPECT_TRUE(specs[0].is_first && !specs[0].is_last);
  EXPECT_TRUE(!specs[1].is_first && specs[1].is_last);
  EXPECT_THROW(troupe::actors::split_mlp({8, 7, 6}, 3), troupe::Error);
  EXPECT_THROW(troupe::actors::split_mlp({8, 7, 6}, 0), troupe::Error);
}

TEST(PipelineSplit, SpecsSurviveSerialization) {
  StageSpec spec;
  spec.sizes = {3, 4};
  spec.activation = Activation::gelu;
  spec.is_last = true;
  spec.seed = 9;
  spec.optimizer = OptimizerSpec::make_adam(0.5f, 0.25f);
  spec.device = troupe::actors::StageDevice::prefer_cuda;
  spec.simulated_backward_us = 77;
  spec.host_math_threads = 1;
  const StageSpec back = troupe::deserialize<StageSpec>(troupe::serialize(spec));
  EXPECT_EQ(back.sizes, spec.sizes);
  EXPECT_EQ(back.activation, Activation::gelu);
  EXPECT_TRUE(back.is_last);
  EXPECT_EQ(back.seed, 9u);
  EXPECT_EQ(back.optimizer.kind, OptimizerSpec::Kind::adam);
  EXPECT_EQ(back.optimizer.adam.lr, 0.5f);
  EXPECT_EQ(back.optimizer.adam.weight_decay, 0.25f);
  EXPECT_EQ(back.device, troupe::actors::StageDevice::prefer_cuda);
  EXPECT_EQ(back.simulated_backward_us, 77);
  EXPECT_EQ(back.host_math_threads, 1);
}

// ---- training matches the unpipelined model -----------------------------------------------

TEST_F(PipelineTest, GPipeMatchesTheUnpipelinedModelForEveryMicroBatchCount) {
  for (int m : {1, 2, 4, 8}) expect_matches_reference({Schedule::gpipe, m, 32, OptimizerSpec::make_adam(0.001f)});
}

TEST_F(PipelineTest, OneFOneBMatchesTheUnpipelinedModelForEveryMicroBatchCount) {
  for (int m : {1, 2, 3, 4, 8, 16}) {
    expect_matches_reference({Schedule::one_f_one_b, m, 32, OptimizerSpec::make_adam(0.001f)});
  }
}

TEST_F(PipelineTest, ZeroBubbleH1MatchesTheUnpipelinedModelForEveryMicroBatchCount) {
  for (int m : {1, 2, 3, 4, 8, 16}) {
    expect_matches_reference({Schedule::zero_bubble_h1, m, 32, OptimizerSpec::make_adam(0.001f)});
  }
  expect_matches_reference({Schedule::zero_bubble_h1, 4, 32, OptimizerSpec::make_sgd(0.05f, 0.9f), Activation::gelu});
}

TEST_F(PipelineTest, SgdWithMomentumAndGeluMatchTheUnpipelinedModel) {
  for (Schedule schedule : {Schedule::gpipe, Schedule::one_f_one_b}) {
    expect_matches_reference({schedule, 4, 24, OptimizerSpec::make_sgd(0.1f, 0.9f), Activation::gelu}, 4);
  }
}

TEST_F(PipelineTest, AnUnevenLastMicroBatchAndMoreMicroBatchesThanRowsStillMatch) {
  // 30 rows in chunks of 8: 8, 8, 8, 6 (the loss divides by 30 in every chunk).
  expect_matches_reference({Schedule::one_f_one_b, 4, 30, OptimizerSpec::make_adam(0.001f)});
  // 3 rows asked for 8 micro-batches: 3 micro-batches of one row.
  expect_matches_reference({Schedule::gpipe, 8, 3, OptimizerSpec::make_sgd(0.1f)});
}

TEST_F(PipelineTest, BatchesSubmittedBackToBackQueueAndMatch) {
  StageSpec common;
  common.seed = 11;
  common.optimizer = OptimizerSpec::make_adam(0.001f);
  Pipeline pipeline(troupe::actors::split_mlp(kSizes, 4, common));
  Reference reference(kSizes, Activation::relu, 11, common.optimizer);
  std::vector<troupe::ObjectRef<float>> losses;
  std::vector<float> want;
  for (int step = 0; step < 4; ++step) {
    const Tensor x = random_inputs(16, kSizes.front(), 300 + step);
    const Tensor labels = random_labels(16, kSizes.back(), 400 + step);
    losses.push_back(pipeline.submit_batch(x, labels, 4, step % 2 ? Schedule::gpipe : Schedule::one_f_one_b));
    want.push_back(reference.train(x, labels));
  }
  for (int step = 0; step < 4; ++step) EXPECT_NEAR(losses[step].get(), want[step], kTolerance * want[step]);
}

TEST_F(PipelineTest, PredictGivesTheModelsLogits) {
  StageSpec common;
  common.seed = 5;
  Pipeline pipeline(troupe::actors::split_mlp(kSizes, 4, common));
  Reference reference(kSizes, Activation::relu, 5, common.optimizer);
  const Tensor x = random_inputs(10, kSizes.front(), 7);
  EXPECT_LE(relative_error(pipeline.predict(x).get(), reference.forward(x, nullptr)), kTolerance);
  // predict stashes nothing.
  for (const auto& stats : pipeline.stats()) EXPECT_EQ(stats.peak_stashed_micro_batches, 0);
}

TEST_F(PipelineTest, OneStageIsAPlainModel) {
  StageSpec common;
  common.seed = 3;
  common.optimizer = OptimizerSpec::make_adam(0.001f);
  Pipeline pipeline(troupe::actors::split_mlp(kSizes, 1, common));
  Reference reference(kSizes, Activation::relu, 3, common.optimizer);
  for (int step = 0; step < 2; ++step) {
    const Tensor x = random_inputs(12, kSizes.front(), 50 + step);
    const Tensor labels = random_labels(12, kSizes.back(), 60 + step);
    const float want = reference.train(x, labels);
    EXPECT_NEAR(pipeline.train_batch(x, labels, 3, Schedule::one_f_one_b), want, kTolerance * want);
  }
}

// ---- memory: the stash each schedule promises ---------------------------------------------

TEST_F(PipelineTest, StagesStashWhatTheScheduleAllowsAndFreeItAll) {
  const int m = 8;
  for (Schedule schedule : {Schedule::gpipe, Schedule::one_f_one_b}) {
    SCOPED_TRACE(std::string(to_string(schedule)));
    Pipeline pipeline(troupe::actors::split_mlp(kSizes, 4, {}));
    (void)pipeline.train_batch(random_inputs(32, kSizes.front(), 1), random_labels(32, kSizes.back(), 2), m,
                               schedule);
    const auto stats = pipeline.stats();
    for (int k = 0; k < 4; ++k) {
      EXPECT_EQ(stats[k].peak_stashed_micro_batches, schedule == Schedule::gpipe ? m : 4 - k) << "stage " << k;
      EXPECT_EQ(stats[k].stashed_micro_batches, 0);
      EXPECT_EQ(stats[k].stash_bytes, 0);
      EXPECT_GT(stats[k].peak_stash_bytes, 0);
      EXPECT_EQ(stats[k].forwards, m);
      EXPECT_EQ(stats[k].backwards, m);
      EXPECT_EQ(stats[k].steps, 1);
      EXPECT_EQ(stats[k].parameters, kSizes[k] * kSizes[k + 1] + kSizes[k + 1]);
      EXPECT_EQ(stats[k].parameter_bytes, 4 * stats[k].parameters);
      EXPECT_EQ(stats[k].gradient_bytes, stats[k].parameter_bytes);
      EXPECT_EQ(stats[k].optimizer_bytes, 0);  // plain SGD keeps no state
      EXPECT_EQ(stats[k].device, "cpu");
    }
  }
}

// ---- errors ----------------------------------------------------------------------------------

template <class F>
std::string error_of(F&& fn) {
  try {
    fn();
  } catch (const troupe::Error& e) {
    return std::string(troupe::to_string(e.code())) + ": " + e.message();
  }
  return "no error";
}

bool contains(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

TEST_F(PipelineTest, BadBatchesAreRejectedAtOnceNamingTheProblem) {
  Pipeline pipeline(troupe::actors::split_mlp(kSizes, 4, {}));
  const Tensor x = random_inputs(8, kSizes.front(), 1);
  const Tensor labels = random_labels(8, kSizes.back(), 1);
  auto submit = [&](const Tensor& xs, const Tensor& ys, int m) {
    return error_of([&] { (void)pipeline.submit_batch(xs, ys, m, Schedule::gpipe); });
  };
  EXPECT_TRUE(contains(submit(x, labels, 0), "micro_batches must be >= 1")) << submit(x, labels, 0);
  EXPECT_TRUE(contains(submit(x.slice(0, 0), labels.slice(0, 0), 2), "empty"));
  EXPECT_TRUE(contains(submit(x, labels.slice(0, 4), 2), "labels is"));
  EXPECT_TRUE(contains(submit(random_inputs(8, 7, 1), labels, 2), "expected f32 [batch, 20]"));
  EXPECT_TRUE(contains(submit(x, x.slice(0, 8), 2), "expected i32 or i64"));
  EXPECT_TRUE(contains(submit(x, labels, 0), "invalid_argument"));
  // Nothing was submitted: the pipeline still trains.
  EXPECT_GT(pipeline.train_batch(x, labels, 2, Schedule::gpipe), 0.0f);
}

TEST_F(PipelineTest, InconsistentStagesAreRejectedBeforeAnyActorStarts) {
  auto specs = troupe::actors::split_mlp(kSizes, 4, {});
  auto broken = specs;
  broken[2].sizes.front() = 99;
  EXPECT_TRUE(contains(error_of([&] { Pipeline p(broken); }), "stage 2 takes 99 features but stage 1 gives 24"));
  broken = specs;
  broken[3].is_last = false;
  EXPECT_TRUE(contains(error_of([&] { Pipeline p(broken); }), "stage 3 must have is_last set"));
  EXPECT_TRUE(contains(error_of([&] { Pipeline p({}); }), "no stages"));
  std::vector<troupe::ActorOptions> options(4);
  options[1].max_concurrency = 2;
  EXPECT_TRUE(contains(error_of([&] { Pipeline p(specs, options); }), "max_concurrency must be 1"));
  options.resize(3);
  EXPECT_TRUE(contains(error_of([&] { Pipeline p(specs, options); }), "3 actor options for 4 stages"));
  EXPECT_EQ(troupe::live_actors(), 0u);
}

TEST_F(PipelineTest, AFailedBatchDropsItsGradientsAndTheNextBatchTrains) {
  StageSpec common;
  common.seed = 11;
  common.optimizer = OptimizerSpec::make_adam(0.001f);
  Pipeline pipeline(troupe::actors::split_mlp(kSizes, 4, common));
  const auto before = pipeline.parameters();
  // A label out of range fails the last stage's forward_loss; every later
  // call of the batch fails with it, and every stage drops the batch.
  const Tensor x = random_inputs(8, kSizes.front(), 1);
  std::vector<std::int64_t> bad(8, 1);
  bad[5] = 99;
  const std::string error = error_of([&] { (void)pipeline.train_batch(x, Tensor::from_vector(bad), 2, Schedule::one_f_one_b); });
  EXPECT_TRUE(contains(error, "label")) << error;
  const auto after = pipeline.parameters();
  for (std::size_t k = 0; k < before.size(); ++k) {
    for (std::size_t i = 0; i < before[k].size(); ++i) EXPECT_TRUE(troupe::equal(before[k][i], after[k][i]));
  }
  for (const auto& stats : pipeline.stats()) {
    EXPECT_EQ(stats.stashed_micro_batches, 0);
    EXPECT_EQ(stats.steps, 0);
  }
  // The pipeline goes on as if the bad batch had never been sent.
  Reference reference(kSizes, Activation::relu, 11, common.optimizer);
  const Tensor labels = random_labels(8, kSizes.back(), 3);
  const float want = reference.train(x, labels);
  EXPECT_NEAR(pipeline.train_batch(x, labels, 2, Schedule::one_f_one_b), want, kTolerance * want);
}

TEST_F(PipelineTest, StageMisuseFailsTheCallWithAClearMessage) {
  auto specs = troupe::actors::split_mlp(kSizes, 2, {});
  auto first = troupe::actor<PipelineStage>(specs[0]);
  auto last = troupe::actor<PipelineStage>(specs[1]);
  const Tensor x = random_inputs(4, kSizes.front(), 1);
  auto message = [](auto ref) { return error_of([&] { (void)ref.get(); }); };
  EXPECT_TRUE(contains(message(first.call<&PipelineStage::backward>(std::int64_t{7}, random_inputs(4, 24, 1))),
                       "no stashed forward for micro-batch 7"));
  EXPECT_TRUE(contains(message(first.call<&PipelineStage::forward_loss>(std::int64_t{1}, x, random_labels(4, 5, 1),
                                                                        std::int64_t{4})),
                       "only the last stage"));
  EXPECT_TRUE(contains(message(last.call<&PipelineStage::forward>(std::int64_t{1}, random_inputs(4, 24, 1))),
                       "the last stage takes forward_loss"));
  (void)first.call<&PipelineStage::forward>(std::int64_t{1}, x).get();
  EXPECT_TRUE(contains(message(first.call<&PipelineStage::forward>(std::int64_t{1}, x)), "already in flight"));
  EXPECT_TRUE(contains(message(first.call<&PipelineStage::forward>(std::int64_t{2}, random_inputs(4, 3, 1))),
                       "expected [rows, 20]"));
  EXPECT_TRUE(contains(message(first.call<&PipelineStage::backward>(std::int64_t{1}, random_inputs(3, 24, 1))),
                       "expected [4, 24]"));
  EXPECT_TRUE(contains(message(first.call<&PipelineStage::step>(std::int64_t{1})), "gradients were dropped"));
  EXPECT_TRUE(contains(message(first.call<&PipelineStage::set_parameters>(std::vector<Tensor>{x})), "got 1 tensors"));
  // get/set_parameters round trip.
  auto params = first.call<&PipelineStage::get_parameters>().get();
  kernels::fill_(params[0], 0.5f);
  (void)first.call<&PipelineStage::set_parameters>(params).get();
  EXPECT_TRUE(troupe::equal(first.call<&PipelineStage::get_parameters>().get()[0], params[0]));
}

// ---- devices -------------------------------------------------------------------------------------

TEST_F(PipelineTest, CudaStagesMatchCpuStages) {
  if (!troupe::cuda::available()) GTEST_SKIP() << "no CUDA device: " << troupe::cuda::unavailable_reason();
  StageSpec common;
  common.seed = 11;
  common.optimizer = OptimizerSpec::make_adam(0.001f);
  Pipeline cpu(troupe::actors::split_mlp(kSizes, 4, common));
  common.device = troupe::actors::StageDevice::cuda;
  Pipeline gpu(troupe::actors::split_mlp(kSizes, 4, common));
  for (int step = 0; step < 3; ++step) {
    const Tensor x = random_inputs(32, kSizes.front(), 100 + step);
    const Tensor labels = random_labels(32, kSizes.back(), 200 + step);
    const float want = cpu.train_batch(x, labels, 4, Schedule::one_f_one_b);
    EXPECT_NEAR(gpu.train_batch(x, labels, 4, Schedule::one_f_one_b), want, 1e-4 * want);
  }
  for (const auto& stats : gpu.stats()) EXPECT_EQ(stats.device, "cuda:0");
}

TEST_F(PipelineTest, AHostStagesResultsAreInHostMemory) {
  auto specs = troupe::actors::split_mlp(kSizes, 2, {});
  auto first = troupe::actor<PipelineStage>(specs[0]);
  auto last = troupe::actor<PipelineStage>(specs[1]);
  const Tensor x = random_inputs(4, kSizes.front(), 1);
  const auto h = first.call<&PipelineStage::forward>(std::int64_t{1}, x);
  (void)last.call<&PipelineStage::forward_loss>(std::int64_t{1}, h, random_labels(4, kSizes.back(), 2),
                                                std::int64_t{4}).get();
  const Tensor dx = last.call<&PipelineStage::backward_loss>(std::int64_t{1}).get();
  EXPECT_TRUE(h.get().device().is_cpu()) << h.get().device().to_string();
  EXPECT_TRUE(dx.device().is_cpu()) << dx.device().to_string();
  EXPECT_TRUE(first.call<&PipelineStage::predict>(x).get().device().is_cpu());
}

// A CUDA stage's activations and gradients stay on its GPU (the runtime, not
// the stage, moves them); a host stage next to it takes them as they come.
TEST_F(PipelineTest, ACudaStagesResultsStayOnItsGpu) {
  if (!troupe::cuda::available()) GTEST_SKIP() << "no CUDA device: " << troupe::cuda::unavailable_reason();
  auto specs = troupe::actors::split_mlp(kSizes, 3, {});  // 20-32-24 | 24-16 | 16-5
  specs[1].device = troupe::actors::StageDevice::cuda;
  auto first = troupe::actor<PipelineStage>(specs[0]);
  auto middle = troupe::actor<PipelineStage>(specs[1]);
  auto last = troupe::actor<PipelineStage>(specs[2]);
  const Tensor x = random_inputs(4, kSizes.front(), 1);
  const auto h0 = first.call<&PipelineStage::forward>(std::int64_t{1}, x);
  const auto h1 = middle.call<&PipelineStage::forward>(std::int64_t{1}, h0);  // host in, GPU out
  const float loss = last.call<&PipelineStage::forward_loss>(std::int64_t{1}, h1, random_labels(4, kSizes.back(), 2),
                                                             std::int64_t{4}).get();  // GPU in, host stage
  const auto g2 = last.call<&PipelineStage::backward_loss>(std::int64_t{1});
  const auto g1 = middle.call<&PipelineStage::backward>(std::int64_t{1}, g2);
  const Tensor g0 = first.call<&PipelineStage::backward>(std::int64_t{1}, g1).get();  // GPU in, host stage
  EXPECT_TRUE(std::isfinite(loss));
  EXPECT_FALSE(g0.defined());  // the first stage computes no input gradient
  EXPECT_TRUE(h0.get().device().is_cpu()) << h0.get().device().to_string();
  EXPECT_EQ(h1.get().device(), troupe::Device::cuda(0)) << h1.get().device().to_string();
  EXPECT_TRUE(g2.get().device().is_cpu()) << g2.get().device().to_string();
  EXPECT_EQ(g1.get().device(), troupe::Device::cuda(0)) << g1.get().device().to_string();
  EXPECT_EQ(middle.call<&PipelineStage::predict>(h0.get()).get().device(), troupe::Device::cuda(0));
}

TEST_F(PipelineTest, MixedHostAndCudaStagesMatchCpuStagesAndPredictGivesHostLogits) {
  if (!troupe::cuda::available()) GTEST_SKIP() << "no CUDA device: " << troupe::cuda::unavailable_reason();
  StageSpec common;
  common.seed = 11;
  common.optimizer = OptimizerSpec::make_adam(0.001f);
  Pipeline cpu(troupe::actors::split_mlp(kSizes, 4, common));
  std::vector<StageSpec> specs = troupe::actors::split_mlp(kSizes, 4, common);
  for (const int k : {0, 2, 3}) specs[k].device = troupe::actors::StageDevice::cuda;  // the last one too
  Pipeline mixed(specs);
  for (int step = 0; step < 2; ++step) {
    const Tensor x = random_inputs(16, kSizes.front(), 100 + step);
    const Tensor labels = random_labels(16, kSizes.back(), 200 + step);
    const float want = cpu.train_batch(x, labels, 4, Schedule::one_f_one_b);
    EXPECT_NEAR(mixed.train_batch(x, labels, 4, Schedule::one_f_one_b), want, 1e-4 * want);
  }
  const Tensor x = random_inputs(10, kSizes.front(), 7);
  const Tensor logits = mixed.predict(x).get();
  EXPECT_TRUE(logits.device().is_cpu()) << logits.device().to_string();
  EXPECT_LE(relative_error(logits, cpu.predict(x).get()), 1e-4);
}

TEST_F(PipelineTest, ACudaStageWithoutADeviceFailsWithTheReason) {
  if (troupe::cuda::available()) GTEST_SKIP() << "this machine has a CUDA device";
  StageSpec common;
  common.device = troupe::actors::StageDevice::cuda;
  Pipeline pipeline(troupe::actors::split_mlp(kSizes, 2, common));
  const std::string error = error_of([&] {
    (void)pipeline.train_batch(random_inputs(4, kSizes.front(), 1), random_labels(4, 5, 1), 2, Schedule::gpipe);
  });
  EXPECT_TRUE(contains(error, "no CUDA device")) << error;
  // prefer_cuda falls back to the CPU.
  common.device = troupe::actors::StageDevice::prefer_cuda;
  Pipeline fallback(troupe::actors::split_mlp(kSizes, 2, common));
  for (const auto& stats : fallback.stats()) EXPECT_EQ(stats.device, "cpu");
}

}  // namespace
