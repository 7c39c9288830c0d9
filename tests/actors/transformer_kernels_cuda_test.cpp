// troupe::kernels for transformers on CUDA tensors: each op on the GPU
// against the same op on the host (float tolerance, not bitwise). Each test
// skips, naming the reason, where there is no CUDA device; scripts/gpu-check.sh
// runs them (its pattern 'Cuda' matches the suite name).
// TROUPE_TEST_LABELS: fast
#include "troupe/actors/transformer_kernels.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <vector>

#include "actors/kernel_testing.hpp"

namespace {

namespace kernels = troupe::kernels;
using namespace kernel_testing;

Tensor gpu(const Tensor& t) { return t.to(Device::cuda(0)); }

void expect_close(const Tensor& device_result, const Tensor& host_result, double tolerance, const char* what) {
  ASSERT_TRUE(device_result.device().is_cuda()) << what;
  ASSERT_EQ(device_result.shape(), host_result.shape()) << what;
  EXPECT_LT(relative_error(values_of(device_result), values_of(host_result)), tolerance) << what;
}

TEST(TransformerKernelsCuda, EmbeddingForwardBackwardAndBadTokens) {
  SKIP_WITHOUT_GPU();
  for (const bool wide : {false, true}) {
    const Tensor tokens = wide ? Tensor::from_vector(std::vector<std::int64_t>{2, 0, 2, 1, 1, 2, 3, 3}, {2, 4})
                               : Tensor::from_vector(std::vector<std::int32_t>{2, 0, 2, 1, 1, 2, 3, 3}, {2, 4});
    const Tensor table = random_tensor({5, 6}, 1);
    const Tensor positions = random_tensor({4, 6}, 2);
    const Tensor dout = random_tensor({8, 6}, 3);
    expect_close(kernels::embedding(gpu(tokens), gpu(table), gpu(positions)),
                 kernels::embedding(tokens, table, positions), 1e-6, "embedding");
    const Tensor dt = kernels::zeros_like(table), dp = kernels::zeros_like(positions);
    const Tensor gdt = gpu(dt), gdp = gpu(dp);
    kernels::embedding_backward(tokens, dout, dt, dp);
    kernels::embedding_backward(gpu(tokens), gpu(dout), gdt, gdp);
    expect_close(gdt, dt, 1e-6, "dtoken_table");
    expect_close(gdp, dp, 1e-6, "dposition_table");
  }
  const Tensor bad = Tensor::from_vector(std::vector<std::int64_t>{0, 7}, {1, 2});
  EXPECT_EQ(error_code_of([&] {
              (void)kernels::embedding(gpu(bad), gpu(random_tensor({5, 6}, 1)), gpu(random_tensor({4, 6}, 2)));
            }),
            Errc::invalid_argument);
}

TEST(TransformerKernelsCuda, LayerNormForwardAndBackward) {
  SKIP_WITHOUT_GPU();
  const Tensor x = random_tensor({37, 24}, 4, -3.0f, 3.0f);
  const Tensor gamma = random_tensor({24}, 5), beta = random_tensor({24}, 6);
  const Tensor dy = random_tensor({37, 24}, 7);
  const kernels::LayerNormResult h = kernels::layer_norm(x, gamma, beta);
  const kernels::LayerNormResult d = kernels::layer_norm(gpu(x), gpu(gamma), gpu(beta));
  expect_close(d.y, h.y, 1e-5, "y");
  expect_close(d.rstd, h.rstd, 1e-5, "rstd");
  const Tensor dg = kernels::zeros_like(gamma), db = kernels::zeros_like(beta);
  const Tensor gdg = gpu(dg), gdb = gpu(db);
  const Tensor dx = kernels::layer_norm_backward(dy, x, gamma, h.mean, h.rstd, dg, db);
  const Tensor gdx = kernels::layer_norm_backward(gpu(dy), gpu(x), gpu(gamma), d.mean, d.rstd, gdg, gdb);
  expect_close(gdx, dx, 1e-5, "dx");
  expect_close(gdg, dg, 1e-5, "dgamma");
  expect_close(gdb, db, 1e-5, "dbeta");
}

TEST(TransformerKernelsCuda, CausalAttentionForwardAndBackward) {
  SKIP_WITHOUT_GPU();
  const kernels::AttentionShape s{3, 19, 4, 8, 5};
  const Tensor qkv = random_tensor({3 * 19, 3 * 32}, 8, -2.0f, 2.0f);
  const Tensor dout = random_tensor({3 * 19, 32}, 9);
  const kernels::AttentionResult h = kernels::causal_attention(qkv, s);
  const kernels::AttentionResult d = kernels::causal_attention(gpu(qkv), s);
  expect_close(d.out, h.out, 1e-5, "out");
  expect_close(d.lse, h.lse, 1e-5, "lse");
  expect_close(kernels::causal_attention_backward(gpu(dout), gpu(qkv), d.out, d.lse, s),
               kernels::causal_attention_backward(dout, qkv, h.out, h.lse, s), 1e-4, "dqkv");
}

TEST(TransformerKernelsCuda, AdamWAndGlobalNorm) {
  SKIP_WITHOUT_GPU();
  const Tensor param = random_tensor({300}, 10), grad = random_tensor({300}, 11);
  const Tensor m = kernels::zeros_like(param), v = kernels::zeros_like(param);
  const Tensor gp = gpu(param), gg = gpu(grad), gm = gpu(m), gv = gpu(v);
  for (std::int64_t step = 1; step <= 3; ++step) {
    kernels::adamw_step(param, grad, m, v, step, {.lr = 0.01f, .weight_decay = 0.1f});
    kernels::adamw_step(gp, gg, gm, gv, step, {.lr = 0.01f, .weight_decay = 0.1f});
  }
  expect_close(gp, param, 1e-6, "param");
  const std::vector<Tensor> host = {grad, param};
  const std::vector<Tensor> device = {gg, gp};
  EXPECT_NEAR(kernels::global_norm(device), kernels::global_norm(host), 1e-9 * kernels::global_norm(host) + 1e-5);
  const double before = kernels::clip_grad_norm_(device, 1.0);
  EXPECT_GT(before, 1.0);
  EXPECT_NEAR(kernels::global_norm(device), 1.0, 1e-5);
}

}  // namespace
