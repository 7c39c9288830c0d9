// Tensor-parallel transformer block (troupe/actors/tensor_parallel_block.hpp)
// in local mode: t = 1, 2, 4 shards (heads and MLP split, two all-reduces a
// pass, actor to actor) against the unsplit block, forward, backward (dx
// and every shard's slice of every parameter gradient) and an update step.
// TROUPE_TEST_LABELS: fast
#include "troupe/actors/tensor_parallel_block.hpp"

#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "actors/kernel_testing.hpp"
#include "troupe/troupe.hpp"

namespace {

using namespace std::chrono_literals;
using namespace kernel_testing;
namespace kernels = troupe::kernels;
using troupe::ObjectRef;
using troupe::actors::BlockParameters;
using troupe::actors::BlockSpec;
using troupe::actors::TensorParallelBlock;
using troupe::actors::TransformerBlockShard;

constexpr auto kWait = 60s;
constexpr double kTolerance = 1e-5;  // relative, over a whole tensor
constexpr std::int64_t kBatch = 2;

// 4 heads of 3, hidden 20 (4 shards: 5 units each), 6 positions.
BlockSpec spec() {
  return {.channels = 12, .heads = 4, .hidden = 20, .seq_len = 6, .seed = 99, .use_gpu = false};
}

class TensorParallelBlockShards : public ::testing::TestWithParam<int> {
 protected:
  void SetUp() override { troupe::init({.num_threads = 4}); }
  void TearDown() override { troupe::shutdown(); }
};

TEST_P(TensorParallelBlockShards, ForwardBackwardAndStepEqualTheUnsplitBlock) {
  const int shards = GetParam();
  const Tensor x = random_tensor({kBatch * spec().seq_len, spec().channels}, 1);
  const Tensor dz = random_tensor({kBatch * spec().seq_len, spec().channels}, 2);

  // The unsplit block: shard 0 of 1, used directly (each all-reduce is the identity).
  TransformerBlockShard whole(spec());
  const Tensor z_want = whole.output(whole.mlp_partial(whole.attention_partial(x)));
  const Tensor dx_want = whole.backward_output(whole.backward_attention(whole.backward_mlp(dz)));
  const BlockParameters grads_want = BlockParameters::from_list(whole.gradients());

  const TensorParallelBlock block(spec(), shards);
  const std::vector<ObjectRef<Tensor>> z = block.forward_shards(troupe::make_ready(x));
  const std::vector<ObjectRef<Tensor>> dx = block.backward_shards(troupe::make_ready(dz));
  ASSERT_EQ(z.size(), static_cast<std::size_t>(shards));
  const Tensor z0 = z[0].get(kWait);
  const Tensor dx0 = dx[0].get(kWait);
  EXPECT_LE(relative_error(values_of(z0), values_of(z_want)), kTolerance);
  EXPECT_LE(relative_error(values_of(dx0), values_of(dx_want)), kTolerance);
  for (int k = 1; k < shards; ++k) {  // all-reduced: every shard holds the same bits
    EXPECT_TRUE(troupe::equal(z[k].get(kWait), z0)) << "shard " << k;
    EXPECT_TRUE(troupe::equal(dx[k].get(kWait), dx0)) << "shard " << k;
  }

  // Every shard's gradients are its slice of the unsplit block's.
  const char* names[] = {"ln1_gamma", "ln1_beta", "w_qkv", "b_qkv", "w_o", "b_o",
                         "ln2_gamma", "ln2_beta", "w_1",   "b_1",   "w_2", "b_2"};
  for (int k = 0; k < shards; ++k) {
    BlockSpec shard_spec = spec();
    shard_spec.index = k;
    shard_spec.count = shards;
    const std::vector<Tensor> want = troupe::actors::shard_parameters(grads_want, shard_spec).list();
    const std::vector<Tensor> got = block.shards()[k].call<&TransformerBlockShard::gradients>().get(kWait);
    ASSERT_EQ(got.size(), want.size());
    for (std::size_t i = 0; i < want.size(); ++i) {
      ASSERT_EQ(got[i].defined(), want[i].defined()) << names[i] << " on shard " << k;
      if (!want[i].defined()) continue;
      ASSERT_EQ(got[i].shape(), want[i].shape()) << names[i] << " on shard " << k;
      EXPECT_LE(relative_error(values_of(got[i]), values_of(want[i])), kTolerance) << names[i] << " on shard " << k;
    }
  }

  // The shards' gradient sums of squares add up to the unsplit block's
  // (replicated layer norms counted once); scaling scales the norm.
  double sum_of_squares = 0.0;
  for (const auto& part : block.grad_sums_of_squares()) sum_of_squares += part.get(kWait);
  const double whole_norm = std::sqrt(whole.grad_sum_of_squares());
  EXPECT_NEAR(std::sqrt(sum_of_squares), whole_norm, 1e-5 * whole_norm);
  block.scale_grads(0.5f).get(kWait);
  sum_of_squares = 0.0;
  for (const auto& part : block.grad_sums_of_squares()) sum_of_squares += part.get(kWait);
  EXPECT_NEAR(std::sqrt(sum_of_squares), 0.5 * whole_norm, 1e-5 * whole_norm);
  block.scale_grads(2.0f).get(kWait);

  // One AdamW step, then a second forward: still the unsplit block's output.
  whole.adamw_step(1, 1e-2f, 0.1f);
  block.adamw_step(1, 1e-2f, 0.1f).get(kWait);
  const Tensor z2_want = whole.output(whole.mlp_partial(whole.attention_partial(x)));
  EXPECT_LE(relative_error(values_of(block.forward(troupe::make_ready(x)).get(kWait)), values_of(z2_want)), 1e-4);
}

INSTANTIATE_TEST_SUITE_P(Actors, TensorParallelBlockShards, ::testing::Values(1, 2, 4),
                         [](const ::testing::TestParamInfo<int>& info) {
                           return std::to_string(info.param) + "shards";
                         });

TEST(TransformerBlock, TheUnsplitBlockIsThePreNormFormula) {
  // z = y + gelu(ln2(y) W1 + b1) W2 + b2, y = x + attn(ln1(x) Wqkv + bqkv) Wo + bo,
  // composed here from the kernels and the block's parameters.
  const BlockSpec s = spec();
  const BlockParameters p = troupe::actors::block_parameters(s);
  const Tensor x = random_tensor({kBatch * s.seq_len, s.channels}, 3);
  const Tensor qkv = kernels::matmul(kernels::layer_norm(x, p.ln1_gamma, p.ln1_beta).y, p.w_qkv);
  kernels::add_bias(qkv, p.b_qkv);
  const kernels::AttentionShape shape{kBatch, s.seq_len, s.heads, s.head_dim(), 32};
  const Tensor y = kernels::matmul(kernels::causal_attention(qkv, shape).out, p.w_o);
  kernels::add_bias(y, p.b_o);
  kernels::add_(y, x);
  const Tensor h = kernels::matmul(kernels::layer_norm(y, p.ln2_gamma, p.ln2_beta).y, p.w_1);
  kernels::add_bias(h, p.b_1);
  const Tensor z = kernels::matmul(kernels::gelu(h), p.w_2);
  kernels::add_bias(z, p.b_2);
  kernels::add_(z, y);
  TransformerBlockShard whole(s);
  const Tensor got = whole.output(whole.mlp_partial(whole.attention_partial(x)));
  EXPECT_TRUE(troupe::equal(got, z));
}

TEST(TransformerBlock, RejectsShardCountsThatDoNotDivideTheWork) {
  BlockSpec s = spec();
  s.count = 5;  // more shards than heads
  EXPECT_EQ(error_code_of([&] { TransformerBlockShard shard(s); }), Errc::invalid_argument);
  s = spec();
  s.channels = 10;  // not a multiple of 4 heads
  EXPECT_EQ(error_code_of([&] { TransformerBlockShard shard(s); }), Errc::invalid_argument);
}

}  // namespace
