// The stage concept: a user's own stage class, whose activations are a
// struct of two tensors, chunked (v virtual stages) and with the backward
// split, runs under every schedule and trains exactly as the same chunks
// run one after another in one process.
#include "troupe/actors/stage.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <utility>
#include <vector>

#include "troupe/runtime/runtime.hpp"
#include "troupe/runtime/tensor.hpp"

namespace {

using troupe::Tensor;
using troupe::actors::Schedule;

// What travels between stages: a stream and a mask the stages pass along.
struct Flow {
  Tensor h;
  Tensor mask;
  template <class Archive>
  void serialize(Archive& ar) {
    ar(h, mask);
  }
};

Tensor scaled(const Tensor& t, float factor) {
  Tensor out = Tensor::empty(t.shape(), troupe::DType::f32);
  for (std::int64_t j = 0; j < t.numel(); ++j) out.data<float>()[j] = t.data<float>()[j] * factor;
  return out;
}

// Chunk c holds one weight w: y = w * h. The loss on the last chunk is
// sum(mask * (y - target)^2) / batch_size.
class ScaleStage {
 public:
  explicit ScaleStage(std::vector<float> weights) : w_(std::move(weights)), grad_(w_.size(), 0.0) {}

  Flow forward(int chunk, std::int64_t id, Flow x) {
    inputs_[{chunk, id}] = x.h;
    return {scaled(x.h, w_[chunk]), x.mask};
  }
  float forward_loss(int chunk, std::int64_t id, Flow x, Tensor target, std::int64_t batch_size) {
    inputs_[{chunk, id}] = x.h;
    Tensor dy = Tensor::empty(x.h.shape(), troupe::DType::f32);
    double loss = 0;
    for (std::int64_t j = 0; j < x.h.numel(); ++j) {
      const float diff = w_[chunk] * x.h.data<float>()[j] - target.data<float>()[j];
      const float mask = x.mask.data<float>()[j];
      loss += mask * diff * diff / static_cast<double>(batch_size);
      dy.data<float>()[j] = 2.0f * mask * diff / static_cast<float>(batch_size);
    }
    loss_grads_[{chunk, id}] = {dy, x.mask};
    return static_cast<float>(loss);
  }
  Flow backward(int chunk, std::int64_t id, Flow dy) {
    Flow dx = backward_input(chunk, id, std::move(dy));
    backward_weight(chunk, id);
    return dx;
  }
  Flow backward_loss(int chunk, std::int64_t id) {
    Flow dx = backward_input_loss(chunk, id);
    backward_weight(chunk, id);
    return dx;
  }
  Flow backward_input(int chunk, std::int64_t id, Flow dy) {
    weight_inputs_[{chunk, id}] = {inputs_.at({chunk, id}), dy.h};
    inputs_.erase({chunk, id});
    return {scaled(dy.h, w_[chunk]), dy.mask};
  }
  Flow backward_input_loss(int chunk, std::int64_t id) {
    Flow dy = loss_grads_.at({chunk, id});
    loss_grads_.erase({chunk, id});
    return backward_input(chunk, id, dy);
  }
  std::int64_t backward_weight(int chunk, std::int64_t id) {
    const auto [h, dy] = weight_inputs_.at({chunk, id});
    weight_inputs_.erase({chunk, id});
    for (std::int64_t j = 0; j < h.numel(); ++j) grad_[chunk] += double{h.data<float>()[j]} * dy.data<float>()[j];
    ++backwards_;
    return backwards_;
  }
  std::int64_t step(std::int64_t micro_batches) {
    if (micro_batches != backwards_ || !inputs_.empty() || !weight_inputs_.empty()) {
      throw troupe::Error(troupe::Errc::invalid_argument, "ScaleStage::step: the batch is incomplete");
    }
    for (std::size_t c = 0; c < w_.size(); ++c) {
      w_[c] -= 0.1f * static_cast<float>(grad_[c]);
      grad_[c] = 0;
    }
    backwards_ = 0;
    return ++steps_;
  }
  std::vector<float> weights() const { return w_; }

 private:
  std::vector<float> w_;
  std::vector<double> grad_;
  std::map<std::pair<int, std::int64_t>, Tensor> inputs_;
  std::map<std::pair<int, std::int64_t>, Flow> loss_grads_;
  std::map<std::pair<int, std::int64_t>, std::pair<Tensor, Tensor>> weight_inputs_;
  std::int64_t backwards_ = 0;
  std::int64_t steps_ = 0;
};

static_assert(troupe::actors::PipelineStageClass<ScaleStage>);
static_assert(troupe::actors::stage_traits<ScaleStage>::chunked);
static_assert(troupe::actors::stage_traits<ScaleStage>::splits_backward);

}  // namespace

TROUPE_ACTOR(ScaleStage, (std::vector<float>), forward, forward_loss, backward, backward_loss, backward_input,
             backward_input_loss, backward_weight, step, weights);

namespace {

class StageConceptTest : public ::testing::Test {
 protected:
  void SetUp() override {
    troupe::InitOptions options;
    options.num_threads = 4;
    troupe::init(options);
  }
  void TearDown() override { troupe::shutdown(); }
};

Tensor column(std::vector<float> values) {
  const auto rows = static_cast<std::int64_t>(values.size());
  return Tensor::from_vector(values, Tensor::Shape{rows, 1});
}

TEST_F(StageConceptTest, AUsersChunkedStageWithTwoTensorActivationsTrainsAlikeUnderEverySchedule) {
  constexpr int S = 2, m = 4, batches = 3;
  for (const auto& [schedule, v] : std::vector<std::pair<Schedule, int>>{{Schedule::gpipe, 1},
                                                                         {Schedule::one_f_one_b, 1},
                                                                         {Schedule::zero_bubble_h1, 1},
                                                                         {Schedule::interleaved_1f1b, 2}}) {
    SCOPED_TRACE(std::string(to_string(schedule)));
    const int G = S * v;
    std::vector<float> initial;
    for (int g = 0; g < G; ++g) initial.push_back(0.9f + 0.05f * static_cast<float>(g));
    // Stage k holds chunks c = 0..v-1, virtual stages c*S + k.
    std::vector<troupe::ActorHandle<ScaleStage>> stages;
    std::vector<ScaleStage> reference;  // one object per stage, run in model order
    for (int k = 0; k < S; ++k) {
      std::vector<float> mine;
      for (int c = 0; c < v; ++c) mine.push_back(initial[c * S + k]);
      stages.push_back(troupe::actor<ScaleStage>(mine));
      reference.emplace_back(mine);
    }
    troupe::actors::StagePipeline<ScaleStage> pipeline(stages, v);
    for (int b = 0; b < batches; ++b) {
      std::vector<Flow> inputs;
      std::vector<Tensor> targets;
      for (int i = 0; i < m; ++i) {
        const float base = static_cast<float>(b * m + i);
        inputs.push_back({column({0.5f + base * 0.1f, -0.3f + base * 0.05f}), column({1.0f, i % 2 == 0 ? 1.0f : 0.0f})});
        targets.push_back(column({0.2f * base, 0.4f}));
      }
      const float loss = pipeline.train_batch(inputs, targets, 2 * m, schedule);
      double want = 0;
      for (int i = 0; i < m; ++i) {
        Flow h = inputs[i];
        for (int g = 0; g + 1 < G; ++g) h = reference[g % S].forward(g / S, 1000 * b + i, h);
        want += reference[(G - 1) % S].forward_loss((G - 1) / S, 1000 * b + i, h, targets[i], 2 * m);
        Flow dy = reference[(G - 1) % S].backward_loss((G - 1) / S, 1000 * b + i);
        for (int g = G - 2; g >= 0; --g) dy = reference[g % S].backward(g / S, 1000 * b + i, dy);
      }
      for (ScaleStage& r : reference) r.step(static_cast<std::int64_t>(m) * v);
      EXPECT_NEAR(loss, want, 1e-5 * std::max(1.0, std::abs(want))) << "batch " << b;
    }
    for (int k = 0; k < S; ++k) {
      const std::vector<float> got = stages[k].call<&ScaleStage::weights>().get();
      const std::vector<float> want = reference[k].weights();
      ASSERT_EQ(got.size(), want.size());
      for (std::size_t c = 0; c < got.size(); ++c) EXPECT_NEAR(got[c], want[c], 1e-5) << "stage " << k;
    }
  }
}

TEST_F(StageConceptTest, ASchedulesNeedsAreCheckedBeforeAnythingRuns) {
  std::vector<troupe::ActorHandle<ScaleStage>> stages{troupe::actor<ScaleStage>(std::vector<float>{1.0f})};
  troupe::actors::StagePipeline<ScaleStage> pipeline(stages);
  // interleaved needs m a multiple of S; here S = 1, so any m works; a
  // mismatch of inputs and targets does not.
  EXPECT_THROW((void)pipeline.submit_batch({Flow{column({1.0f}), column({1.0f})}}, {}, 1, Schedule::one_f_one_b),
               troupe::Error);
}

}  // namespace
