// The GPT as pipeline stages (troupe/actors/gpt_stage.hpp) in local mode: a
// tiny model cut into 4 stages (and into 2 and 4 stages of 2 tensor-parallel
// shards each) trains under 1F1B and GPipe with the same batch losses, step
// after step, as the unsplit model trained whole batches in one object.
// TROUPE_TEST_LABELS: fast
#include "troupe/actors/gpt_stage.hpp"

#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <cstdint>
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
  GptStage whole(GptStageSpec{spec, 0, 1, 0, spec.layers - 1}, {});
  EXPECT_TRUE(std::isfinite(troupe::actors::gpt_train_step(whole, tokens, targets)));
  EXPECT_THROW((void)troupe::actors::gpt_even_stages(spec, 5), troupe::Error);
  GptSpec bad = spec;
  bad.heads = 3;
  EXPECT_THROW(bad.validate(), troupe::Error);
}

}  // namespace
