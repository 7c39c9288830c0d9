// The GPT as pipeline stages (troupe/actors/gpt_stage.hpp) in local mode: a
// tiny model cut into 4 stages (and into 2 and 4 stages of 2 tensor-parallel
// shards each) trains under 1F1B and GPipe with the same batch losses, step
// after step, as the unsplit model trained whole batches in one object.
// TROUPE_TEST_LABELS: fast
#include "troupe/actors/gpt_stage.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <utility>
#include <random>
#include <string>
#include <vector>

#include "troupe/actors/kernels.hpp"
#include "troupe/troupe.hpp"

namespace {

using namespace std::chrono_literals;
using troupe::ActorHandle;
using troupe::Tensor;
using troupe::actors::GptShard;
using troupe::actors::GptShardHandles;
using troupe::actors::GptSpec;
using troupe::actors::GptStage;
using troupe::actors::GptStageSpec;
using troupe::actors::Schedule;

constexpr int kSteps = 4;
constexpr std::int64_t kRows = 8;  // sequences per batch
constexpr int kMicroBatches = 4;

GptSpec tiny() {
  return {.vocab = 11, .seq_len = 8, .channels = 16, .heads = 4, .hidden = 32, .layers = 4, .seed = 5,
          .lr = 1e-2f, .weight_decay = 0.1f, .use_gpu = false};
}

// Batch `step`: tokens [rows, T] and each position's next token [rows*T],
// from a stream with some structure (a repeating pattern plus noise).
std::pair<Tensor, Tensor> batch(const GptSpec& spec, int step) {
  std::mt19937 rng(1000 + step);
  Tensor tokens = Tensor::empty({kRows, spec.seq_len}, troupe::DType::i64);
  Tensor targets = Tensor::empty({kRows * spec.seq_len}, troupe::DType::i64);
  for (std::int64_t r = 0; r < kRows; ++r) {
    std::vector<std::int64_t> stream;
    std::int64_t at = rng() % spec.vocab;
    for (std::int64_t t = 0; t <= spec.seq_len; ++t) {
      stream.push_back(rng() % 4 == 0 ? static_cast<std::int64_t>(rng() % spec.vocab) : at);
      at = (at + 3) % spec.vocab;
    }
    for (std::int64_t t = 0; t < spec.seq_len; ++t) {
      tokens.data<std::int64_t>()[r * spec.seq_len + t] = stream[t];
      targets.data<std::int64_t>()[r * spec.seq_len + t] = stream[t + 1];
    }
  }
  return {tokens, targets};
}

std::vector<float> unsplit_losses(const GptSpec& spec) {
  GptStage model(GptStageSpec{spec, 0, 1, 0, spec.layers - 1}, {});
  std::vector<float> losses;
  for (int step = 0; step < kSteps; ++step) {
    const auto [tokens, targets] = batch(spec, step);
    losses.push_back(troupe::actors::gpt_train_step(model, tokens, targets));
  }
  return losses;
}

std::vector<float> pipelined_losses(const GptSpec& spec, int stages, int tp, Schedule schedule) {
  std::vector<ActorHandle<GptStage>> handles;
  std::vector<ActorHandle<GptShard>> all_shards;
  for (const GptStageSpec& stage : troupe::actors::gpt_even_stages(spec, stages)) {
    GptShardHandles shards;
    for (int s = 0; tp > 1 && s < tp; ++s) shards.push_back(troupe::actor<GptShard>(stage, s, tp));
    all_shards.insert(all_shards.end(), shards.begin(), shards.end());
    troupe::ActorOptions options;
    options.detached = true;  // it waits for its shards
    handles.push_back(troupe::actor<GptStage>(options, stage, shards));
  }
  troupe::actors::StagePipeline<GptStage> pipeline(handles);
  std::vector<float> losses;
  for (int step = 0; step < kSteps; ++step) {
    const auto [tokens, targets] = batch(spec, step);
    losses.push_back(pipeline.submit_batch(tokens.chunk(kMicroBatches), targets.chunk(kMicroBatches),
                                           targets.numel(), schedule)
                         .get(120s));
  }
  for (const auto& h : handles) troupe::kill(h);
  for (const auto& h : all_shards) troupe::kill(h);
  return losses;
}

class GptStages : public ::testing::Test {
 protected:
  void SetUp() override {
    troupe::init({.num_threads = 4});
    previous_threads_ = troupe::kernels::set_host_math_threads(1);
  }
  void TearDown() override {
    troupe::kernels::set_host_math_threads(previous_threads_);
    troupe::shutdown();
  }
  int previous_threads_ = 1;
};

void expect_same_losses(const std::vector<float>& got, const std::vector<float>& want, const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  for (std::size_t i = 0; i < got.size(); ++i) {
    EXPECT_NEAR(got[i], want[i], 1e-4) << what << ", step " << i;
  }
}

TEST_F(GptStages, FourStagesUnder1F1BTrainAsTheUnsplitModel) {
  const std::vector<float> want = unsplit_losses(tiny());
  // Training does something: the loss falls from about log(V).
  EXPECT_NEAR(want.front(), std::log(11.0), 0.3);
  EXPECT_LT(want.back(), want.front());
  expect_same_losses(pipelined_losses(tiny(), 4, 1, Schedule::one_f_one_b), want, "4 stages, 1f1b");
}

TEST_F(GptStages, FourStagesUnderGPipeTrainAsTheUnsplitModel) {
  expect_same_losses(pipelined_losses(tiny(), 4, 1, Schedule::gpipe), unsplit_losses(tiny()), "4 stages, gpipe");
}

TEST_F(GptStages, TensorParallelStagesOfTwoShardsTrainAsTheUnsplitModel) {
  const std::vector<float> want = unsplit_losses(tiny());
  expect_same_losses(pipelined_losses(tiny(), 2, 2, Schedule::one_f_one_b), want, "2 stages x 2 shards");
  expect_same_losses(pipelined_losses(tiny(), 4, 2, Schedule::one_f_one_b), want, "4 stages x 2 shards");
}

TEST_F(GptStages, UnevenCutsAndOneStageAreTheSameModel) {
  GptSpec spec = tiny();
  spec.layers = 3;
  const std::vector<float> want = unsplit_losses(spec);
  expect_same_losses(pipelined_losses(spec, 2, 1, Schedule::one_f_one_b), want, "3 blocks on 2 stages");
  expect_same_losses(pipelined_losses(spec, 1, 2, Schedule::one_f_one_b), want, "1 stage x 2 shards");
}

// Pipelined steps with clipping: gpt_pipeline_step; unsplit: gpt_train_step
// with the same options. Returns each step's result.
std::vector<troupe::actors::GptStepResult> clipped_steps(const GptSpec& spec, int stages, int tp,
                                                         const troupe::actors::GptStepOptions& options) {
  std::vector<troupe::actors::GptStepResult> out;
  if (stages == 0) {
    GptStage model(GptStageSpec{spec, 0, 1, 0, spec.layers - 1}, {});
    for (int step = 0; step < kSteps; ++step) {
      const auto [tokens, targets] = batch(spec, step);
      out.push_back(troupe::actors::gpt_train_step(model, tokens, targets, options));
    }
    return out;
  }
  std::vector<ActorHandle<GptStage>> handles;
  std::vector<ActorHandle<GptShard>> all_shards;
  for (const GptStageSpec& stage : troupe::actors::gpt_even_stages(spec, stages)) {
    GptShardHandles shards;
    for (int s = 0; tp > 1 && s < tp; ++s) shards.push_back(troupe::actor<GptShard>(stage, s, tp));
    all_shards.insert(all_shards.end(), shards.begin(), shards.end());
    troupe::ActorOptions options_;
    options_.detached = true;
    handles.push_back(troupe::actor<GptStage>(options_, stage, shards));
  }
  troupe::actors::StagePipeline<GptStage> pipeline(handles);
  for (int step = 0; step < kSteps; ++step) {
    const auto [tokens, targets] = batch(spec, step);
    out.push_back(troupe::actors::gpt_pipeline_step(pipeline, tokens.chunk(kMicroBatches), targets.chunk(kMicroBatches),
                                                    targets.numel(), Schedule::one_f_one_b, options, 120s));
  }
  for (const auto& h : handles) troupe::kill(h);
  for (const auto& h : all_shards) troupe::kill(h);
  return out;
}

TEST_F(GptStages, ClippedStepsOfFourStagesOfTwoShardsEqualTheUnsplitModelsClippedSteps) {
  // A norm low enough that every step clips, and a large learning rate, so
  // the clip factor shows in the losses.
  const troupe::actors::GptStepOptions clip{.lr = 3e-2f, .clip_norm = 0.05f};
  const auto want = clipped_steps(tiny(), 0, 1, clip);
  for (std::size_t i = 0; i < want.size(); ++i) {
    EXPECT_GT(want[i].grad_norm, 0.05) << "step " << i;
    EXPECT_LT(want[i].grad_scale, 1.0f) << "step " << i;
    EXPECT_NEAR(want[i].grad_scale, 0.05 / (want[i].grad_norm + 1e-6), 1e-6) << "step " << i;
  }
  // The unclipped model trains differently from step 2 on (AdamW's first
  // step is the same for any scale of the gradient).
  const auto unclipped = clipped_steps(tiny(), 0, 1, {.lr = 3e-2f, .clip_norm = 0.0f});
  EXPECT_EQ(unclipped[1].grad_norm, 0.0);  // not computed
  double apart = 0;
  for (std::size_t i = 0; i < want.size(); ++i) apart = std::max(apart, std::abs(double(unclipped[i].loss) - want[i].loss));
  EXPECT_GT(apart, 1e-3) << "clipping did not change the training";

  for (const auto& [stages, tp] : {std::pair{4, 2}, std::pair{4, 1}, std::pair{1, 2}}) {
    const auto got = clipped_steps(tiny(), stages, tp, clip);
    ASSERT_EQ(got.size(), want.size());
    for (std::size_t i = 0; i < got.size(); ++i) {
      const std::string what = std::to_string(stages) + " stages x " + std::to_string(tp) + ", step " + std::to_string(i);
      EXPECT_NEAR(got[i].loss, want[i].loss, 1e-4) << what;
      EXPECT_NEAR(got[i].grad_norm, want[i].grad_norm, 1e-4 * want[i].grad_norm) << what;
      EXPECT_NEAR(got[i].grad_scale, want[i].grad_scale, 1e-4 * want[i].grad_scale) << what;
    }
  }
}

// The global norm over 2 stages of 2 shards counts every parameter's
// gradient once: the replicated layer norms of the row-parallel blocks on
// shard 0 only, b_o and b_2 where they live (shard 0).
TEST_F(GptStages, TheGlobalGradientNormOfTwoShardStagesCountsReplicatedParametersOnce) {
  const GptSpec spec = tiny();
  const auto [tokens, targets] = batch(spec, 0);
  GptStage whole(GptStageSpec{spec, 0, 1, 0, spec.layers - 1}, {});
  (void)whole.forward_loss(0, tokens, targets, targets.numel());
  (void)whole.backward_loss(0);
  const double want = whole.grad_sum_of_squares();
  ASSERT_GT(want, 0);

  std::vector<ActorHandle<GptStage>> handles;
  std::vector<ActorHandle<GptShard>> all_shards;
  for (const GptStageSpec& stage : troupe::actors::gpt_even_stages(spec, 2)) {
    GptShardHandles shards;
    for (int s = 0; s < 2; ++s) shards.push_back(troupe::actor<GptShard>(stage, s, 2));
    all_shards.insert(all_shards.end(), shards.begin(), shards.end());
    troupe::ActorOptions options;
    options.detached = true;
    handles.push_back(troupe::actor<GptStage>(options, stage, shards));
  }
  troupe::actors::StagePipeline<GptStage> pipeline(handles);
  (void)pipeline.submit_passes(tokens.chunk(kMicroBatches), targets.chunk(kMicroBatches), targets.numel(),
                               Schedule::one_f_one_b)
      .get(120s);
  double got = 0;
  for (const auto& h : handles) got += h.call<&GptStage::grad_sum_of_squares>().get(120s);
  EXPECT_NEAR(got, want, 1e-5 * want);
  // Each shard's part: the shards differ (shard 1 holds no layer norm, b_o
  // or b_2), and shard 0 + shard 1 of every stage plus the stages' own
  // (embeddings, head) is the whole.
  double shard_sum = 0;
  for (std::size_t k = 0; k < all_shards.size(); ++k) {
    shard_sum += all_shards[k].call<&GptShard::grad_sum_of_squares>().get(120s);
  }
  EXPECT_LT(shard_sum, got);
  // Parameters, counted the same way, add up to the unsplit model's.
  std::int64_t params = 0;
  for (const auto& h : handles) params += h.call<&GptStage::parameter_count>().get(120s);
  EXPECT_EQ(params, whole.parameter_count());
  // The step after the sums still sees every backward.
  for (const auto& h : handles) EXPECT_EQ(h.call<&GptStage::adamw_step>(std::int64_t{kMicroBatches}, 1e-3f, 0.5f).get(120s), 1);
  for (const auto& h : handles) troupe::kill(h);
  for (const auto& h : all_shards) troupe::kill(h);
}

// The model's parameters, counted from its tensors, are what PyTorch counts
// for the same architecture (examples/gpt_kjv/reference.py --list-parameters
// prints 212287 for the KJV's 63 characters, 4 blocks of 64 channels, MLP
// 256, context 64), on any cut.
TEST(GptParameters, CountedFromTheTensorsAsPyTorchCountsThem) {
  GptSpec kjv{.vocab = 63, .seq_len = 64, .channels = 64, .heads = 4, .hidden = 256, .layers = 4, .use_gpu = false};
  EXPECT_EQ(troupe::actors::gpt_parameter_count(kjv), 212287);
  GptStage whole(GptStageSpec{kjv, 0, 1, 0, 3}, {});
  EXPECT_EQ(whole.parameter_count(), 212287);
  std::int64_t staged = 0;
  for (const GptStageSpec& stage : troupe::actors::gpt_even_stages(kjv, 4)) {
    for (int s = 0; s < 2; ++s) staged += GptShard(stage, s, 2).parameter_count();
    staged += GptStage(stage, {}).parameter_count();
    // The stage without shards holds its blocks itself: subtract them once.
    for (int b = stage.first_block; b <= stage.last_block; ++b) {
      staged -= troupe::actors::TransformerBlockShard(troupe::actors::gpt_block_spec(kjv, b)).parameter_count();
    }
  }
  EXPECT_EQ(staged, 212287);
  EXPECT_EQ(troupe::actors::gpt_parameter_count(tiny()), GptStage(GptStageSpec{tiny(), 0, 1, 0, 3}, {}).parameter_count());
}

TEST_F(GptStages, RefusesMisuseWithClearErrors) {
  const GptSpec spec = tiny();
  GptStage last(GptStageSpec{spec, 1, 2, 2, 3}, {});
  EXPECT_THROW((void)last.forward(0, Tensor::zeros({2 * spec.seq_len, spec.channels}, troupe::DType::f32)),
               troupe::Error);
  GptStage first(GptStageSpec{spec, 0, 2, 0, 1}, {});
  // Stage 0 takes tokens [b, T], not activations.
  EXPECT_THROW((void)first.forward(0, Tensor::zeros({2 * spec.seq_len, spec.channels}, troupe::DType::f32)),
               troupe::Error);
  // A step that saw fewer backwards than the driver says refuses, and the
  // stage can train again afterwards.
  const auto [tokens, targets] = batch(spec, 0);
  (void)first.forward(0, tokens);
  EXPECT_THROW((void)first.step(1), troupe::Error);
  EXPECT_THROW((void)first.adamw_step(0, 1e-3f, 0.0f), troupe::Error);  // a gradient factor of 0
  EXPECT_EQ(troupe::actors::gpt_clip_scale(2.0, 0.0), 1.0f);             // off
  EXPECT_EQ(troupe::actors::gpt_clip_scale(0.5, 1.0), 1.0f);             // under the limit
  EXPECT_NEAR(troupe::actors::gpt_clip_scale(4.0, 1.0), 0.25f, 1e-6);
  GptStage whole(GptStageSpec{spec, 0, 1, 0, spec.layers - 1}, {});
  EXPECT_TRUE(std::isfinite(troupe::actors::gpt_train_step(whole, tokens, targets)));
  EXPECT_THROW((void)troupe::actors::gpt_even_stages(spec, 5), troupe::Error);
  GptSpec bad = spec;
  bad.heads = 3;
  EXPECT_THROW(bad.validate(), troupe::Error);
}

}  // namespace
