// examples/pipeline_custom_stage: the user's own stage class (residual
// blocks with layer norm) trains under 1F1B, ZB-H1 and interleaved 1F1B to
// the unpipelined model's losses; its layer norm's gradients match finite
// differences. Local mode, in process.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "troupe/runtime/runtime.hpp"

#include "../../examples/pipeline_custom_stage/residual_stage.hpp"

namespace {

using troupe::Tensor;
using troupe::actors::Schedule;

Tensor filled(std::vector<std::int64_t> shape, std::uint32_t seed) {
  Tensor t = Tensor::empty(shape, troupe::DType::f32);
  troupe::kernels::uniform_(t, 1.0f, seed);
  return t;
}

// L = sum(layer_norm(x) * r): dL/dx, dL/dgamma and dL/dbeta against
// central differences.
TEST(CustomStageLayerNorm, GradientsMatchFiniteDifferences) {
  const std::int64_t rows = 3, d = 5;
  Tensor x = filled({rows, d}, 1), gamma = filled({d}, 2), beta = filled({d}, 3), r = filled({rows, d}, 4);
  const auto loss = [&]() {
    const residual::LayerNormResult y = residual::layer_norm(x, gamma, beta);
    double sum = 0;
    for (std::int64_t j = 0; j < rows * d; ++j) sum += double{y.y.data<float>()[j]} * r.data<float>()[j];
    return sum;
  };
  const residual::LayerNormResult y = residual::layer_norm(x, gamma, beta);
  Tensor dx = residual::layer_norm_backward_input(r, y, gamma);
  Tensor dgamma = Tensor::zeros({d}, troupe::DType::f32), dbeta = Tensor::zeros({d}, troupe::DType::f32);
  residual::layer_norm_backward_weight(r, y.xhat, dgamma, dbeta);
  const float h = 1e-2f;
  for (auto [param, grad] : {std::pair{&x, &dx}, std::pair{&gamma, &dgamma}, std::pair{&beta, &dbeta}}) {
    for (std::int64_t j = 0; j < param->numel(); ++j) {
      float& v = param->template data<float>()[j];
      const float keep = v;
      v = keep + h;
      const double up = loss();
      v = keep - h;
      const double down = loss();
      v = keep;
      EXPECT_NEAR(grad->template data<float>()[j], (up - down) / (2 * h), 2e-3) << "element " << j;
    }
  }
}

class CustomStageTest : public ::testing::Test {
 protected:
  void SetUp() override {
    troupe::InitOptions options;
    options.num_threads = 4;
    troupe::init(options);
  }
  void TearDown() override { troupe::shutdown(); }
};

TEST_F(CustomStageTest, LossesEqualTheUnpipelinedModelsUnderOneFOneBZeroBubbleAndInterleaved) {
  const residual::ModelSpec spec{.dim = 8, .hidden = 16, .classes = 3, .blocks = 4, .seed = 5, .lr = 0.1f};
  constexpr int steps = 4;
  constexpr std::int64_t rows = 24;
  const std::vector<float> want = residual::train_unpipelined(spec, steps, rows);
  for (const auto& [schedule, stages] : std::vector<std::pair<Schedule, int>>{
           {Schedule::one_f_one_b, 4}, {Schedule::zero_bubble_h1, 4},
           {Schedule::interleaved_1f1b, 2}, {Schedule::gpipe, 4}}) {
    SCOPED_TRACE(std::string(to_string(schedule)) + " on " + std::to_string(stages) + " stages");
    const std::vector<float> got = residual::train_pipelined(spec, stages, schedule, steps, rows, 6);
    ASSERT_EQ(got.size(), want.size());
    for (std::size_t i = 0; i < got.size(); ++i) EXPECT_NEAR(got[i], want[i], 1e-5) << "step " << i;
  }
  // The model learns: the last loss is below the first.
  EXPECT_LT(want.back(), want.front());
}

// Data-parallel replicas of the user's stages: the losses stay the
// unpipelined model's and the replicas of a stage end bit-identical,
// whichever stage is replicated and under every schedule.
TEST_F(CustomStageTest, ReplicatedStagesTrainAsTheUnpipelinedModelWithBitIdenticalReplicas) {
  const residual::ModelSpec spec{.dim = 8, .hidden = 16, .classes = 3, .blocks = 4, .seed = 5, .lr = 0.1f};
  constexpr int steps = 3;
  constexpr std::int64_t rows = 24;
  const std::vector<float> want = residual::train_unpipelined(spec, steps, rows);
  struct Case {
    Schedule schedule;
    int stages;
    std::vector<int> replicas;
  };
  for (const Case& c : {Case{Schedule::one_f_one_b, 4, {1, 2, 1, 1}}, Case{Schedule::zero_bubble_h1, 4, {2, 1, 1, 3}},
                        Case{Schedule::gpipe, 4, {1, 1, 2, 1}}, Case{Schedule::interleaved_1f1b, 2, {1, 2}},
                        Case{Schedule::interleaved_1f1b, 2, {3, 2}}}) {
    SCOPED_TRACE(std::string(to_string(c.schedule)) + " on " + std::to_string(c.stages) + " stages");
    const residual::PipelinedRun got = residual::train_replicated(spec, c.stages, c.schedule, steps, rows, 6, c.replicas);
    ASSERT_EQ(got.losses.size(), want.size());
    for (std::size_t i = 0; i < got.losses.size(); ++i) EXPECT_NEAR(got.losses[i], want[i], 1e-5) << "step " << i;
    EXPECT_EQ(got.replica_spread, 0.0);
  }
}

}  // namespace
