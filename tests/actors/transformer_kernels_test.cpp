// troupe::kernels for transformers on the host: every backward against
// central finite differences, attention against a naive double-precision
// full-softmax reference (forward and backward, several block sizes),
// stability with scores and logits near 1e4, AdamW against hand-computed
// steps and global-norm clipping.
#include "troupe/actors/transformer_kernels.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "actors/kernel_testing.hpp"

namespace {

namespace kernels = troupe::kernels;
using namespace kernel_testing;

// sum_k t[k] * w[k] in double: a scalar loss whose gradient w.r.t. t is w.
double project(const Tensor& t, const Tensor& w) {
  const std::vector<double> a = doubles_of(t);
  const std::vector<double> b = doubles_of(w);
  double sum = 0.0;
  for (std::size_t i = 0; i < a.size(); ++i) sum += a[i] * b[i];
  return sum;
}

// Checks `grad` (the analytic d loss / d param) against central differences
// of loss() as param's elements are nudged by +-step in place.
void expect_matches_finite_differences(const Tensor& param, const Tensor& grad, const std::function<double()>& loss,
                                       const std::string& what, double step = 1e-2, double tolerance = 2e-3) {
  ASSERT_EQ(param.shape(), grad.shape()) << what;
  float* p = param.data<float>();
  const std::vector<float> analytic = values_of(grad);
  for (std::int64_t i = 0; i < param.numel(); ++i) {
    const float saved = p[i];
    p[i] = saved + static_cast<float>(step);
    const double up = loss();
    p[i] = saved - static_cast<float>(step);
    const double down = loss();
    p[i] = saved;
    const double numeric = (up - down) / (2.0 * step);
    EXPECT_NEAR(analytic[static_cast<std::size_t>(i)], numeric, tolerance * (1.0 + std::fabs(numeric)))
        << what << " element " << i;
  }
}

Tensor tokens_i64(const std::vector<std::int64_t>& values, std::int64_t batch, std::int64_t seq_len) {
  return Tensor::from_vector(values, {batch, seq_len});
}

// ---- embedding ----

TEST(Embedding, AddsTheTokenRowAndThePositionRow) {
  const Tensor tokens = tokens_i64({2, 0, 2, 1, 1, 2}, 2, 3);
  const Tensor table = random_tensor({3, 4}, 1);
  const Tensor positions = random_tensor({5, 4}, 2);
  const Tensor out = kernels::embedding(tokens, table, positions);
  ASSERT_EQ(out.shape(), (Tensor::Shape{6, 4}));
  const std::vector<std::int64_t> ids = {2, 0, 2, 1, 1, 2};
  for (std::int64_t i = 0; i < 6; ++i) {
    for (std::int64_t c = 0; c < 4; ++c) {
      EXPECT_EQ(out.data<float>()[i * 4 + c],
                table.data<float>()[ids[i] * 4 + c] + positions.data<float>()[(i % 3) * 4 + c]);
    }
  }
  // i32 tokens give the same rows.
  const Tensor tokens32 = Tensor::from_vector(std::vector<std::int32_t>{2, 0, 2, 1, 1, 2}, {2, 3});
  EXPECT_EQ(values_of(kernels::embedding(tokens32, table, positions)), values_of(out));
}

TEST(Embedding, BackwardScattersIntoBothTablesAndMatchesFiniteDifferences) {
  // Token 2 appears three times: its gradient row is the sum of three rows.
  const Tensor tokens = tokens_i64({2, 0, 2, 1, 1, 2}, 2, 3);
  const Tensor table = random_tensor({3, 4}, 1);
  const Tensor positions = random_tensor({5, 4}, 2);
  const Tensor w = random_tensor({6, 4}, 3);
  const Tensor dtable = kernels::zeros_like(table);
  const Tensor dpositions = kernels::zeros_like(positions);
  kernels::embedding_backward(tokens, w, dtable, dpositions);
  const auto loss = [&] { return project(kernels::embedding(tokens, table, positions), w); };
  expect_matches_finite_differences(table, dtable, loss, "token table");
  expect_matches_finite_differences(positions, dpositions, loss, "position table");
  // Positions 3 and 4 are beyond seq_len: untouched. Gradients accumulate.
  for (std::int64_t k = 12; k < 20; ++k) EXPECT_EQ(dpositions.data<float>()[k], 0.0f);
  const std::vector<float> once = values_of(dtable);
  kernels::embedding_backward(tokens, w, dtable, dpositions);
  for (std::size_t k = 0; k < once.size(); ++k) EXPECT_FLOAT_EQ(values_of(dtable)[k], 2.0f * once[k]);
}

TEST(Embedding, RejectsTokensOutsideTheVocabularyAndTooFewPositions) {
  const Tensor table = random_tensor({3, 4}, 1);
  const Tensor positions = random_tensor({3, 4}, 2);
  const std::string message =
      error_message_of([&] { (void)kernels::embedding(tokens_i64({0, 3, 1}, 1, 3), table, positions); });
  EXPECT_NE(message.find("token 1 = 3 is outside [0, 3)"), std::string::npos) << message;
  EXPECT_EQ(error_code_of([&] { (void)kernels::embedding(tokens_i64({0, -1, 1}, 1, 3), table, positions); }),
            Errc::invalid_argument);
  EXPECT_EQ(error_code_of([&] { (void)kernels::embedding(tokens_i64({0, 1, 1, 0}, 1, 4), table, positions); }),
            Errc::invalid_argument);
  EXPECT_EQ(error_code_of([&] { (void)kernels::embedding(tokens_i64({0, 1}, 1, 2), table, random_tensor({3, 5}, 2)); }),
            Errc::invalid_argument);
}

// ---- layer norm ----

TEST(LayerNorm, NormalisesEachRowThenScalesAndShifts) {
  const Tensor x = random_tensor({5, 8}, 4, -3.0f, 5.0f);
  const Tensor gamma = random_tensor({8}, 5);
  const Tensor beta = random_tensor({8}, 6);
  const kernels::LayerNormResult r = kernels::layer_norm(x, gamma, beta, 1e-5f);
  const std::vector<double> xv = doubles_of(x);
  for (std::int64_t i = 0; i < 5; ++i) {
    double mean = 0.0;
    for (std::int64_t c = 0; c < 8; ++c) mean += xv[i * 8 + c] / 8.0;
    double var = 0.0;
    for (std::int64_t c = 0; c < 8; ++c) var += (xv[i * 8 + c] - mean) * (xv[i * 8 + c] - mean) / 8.0;
    EXPECT_NEAR(r.mean.data<float>()[i], mean, 1e-6);
    EXPECT_NEAR(r.rstd.data<float>()[i], 1.0 / std::sqrt(var + 1e-5), 1e-5);
    for (std::int64_t c = 0; c < 8; ++c) {
      const double expected = (xv[i * 8 + c] - mean) / std::sqrt(var + 1e-5) * gamma.data<float>()[c] +
                              beta.data<float>()[c];
      EXPECT_NEAR(r.y.data<float>()[i * 8 + c], expected, 1e-5);
    }
  }
}

TEST(LayerNorm, BackwardMatchesFiniteDifferencesForInputScaleAndShift) {
  const Tensor x = random_tensor({4, 6}, 7, -2.0f, 2.0f);
  const Tensor gamma = random_tensor({6}, 8, 0.5f, 1.5f);
  const Tensor beta = random_tensor({6}, 9);
  const Tensor w = random_tensor({4, 6}, 10);
  const kernels::LayerNormResult r = kernels::layer_norm(x, gamma, beta);
  const Tensor dgamma = kernels::zeros_like(gamma);
  const Tensor dbeta = kernels::zeros_like(beta);
  const Tensor dx = kernels::layer_norm_backward(w, x, gamma, r.mean, r.rstd, dgamma, dbeta);
  const auto loss = [&] { return project(kernels::layer_norm(x, gamma, beta).y, w); };
  expect_matches_finite_differences(x, dx, loss, "x", 1e-3, 5e-3);
  expect_matches_finite_differences(gamma, dgamma, loss, "gamma");
  expect_matches_finite_differences(beta, dbeta, loss, "beta");
}

TEST(LayerNorm, RejectsMismatchedParameters) {
  const Tensor x = random_tensor({2, 3}, 1);
  EXPECT_EQ(error_code_of([&] { (void)kernels::layer_norm(x, random_tensor({4}, 2), random_tensor({3}, 3)); }),
            Errc::invalid_argument);
  EXPECT_EQ(error_code_of([&] { (void)kernels::layer_norm(x, random_tensor({3}, 2), random_tensor({3}, 3), 0.0f); }),
            Errc::invalid_argument);
}

// ---- attention ----

// Naive causal attention in double with the full softmax over each row.
std::vector<double> naive_attention(const std::vector<double>& qkv, const kernels::AttentionShape& s) {
  const std::int64_t C = s.channels();
  const std::int64_t T = s.seq_len;
  const std::int64_t D = s.head_dim;
  const double scale = 1.0 / std::sqrt(static_cast<double>(D));
  std::vector<double> out(static_cast<std::size_t>(s.batch * T * C), 0.0);
  std::vector<double> scores(static_cast<std::size_t>(T));
  for (std::int64_t b = 0; b < s.batch; ++b) {
    for (std::int64_t h = 0; h < s.heads; ++h) {
      for (std::int64_t i = 0; i < T; ++i) {
        double max = -std::numeric_limits<double>::infinity();
        for (std::int64_t j = 0; j <= i; ++j) {
          double dot = 0.0;
          for (std::int64_t d = 0; d < D; ++d) {
            dot += qkv[(b * T + i) * 3 * C + h * D + d] * qkv[(b * T + j) * 3 * C + C + h * D + d];
          }
          scores[j] = dot * scale;
          max = std::max(max, scores[j]);
        }
        double sum = 0.0;
        for (std::int64_t j = 0; j <= i; ++j) sum += std::exp(scores[j] - max);
        for (std::int64_t j = 0; j <= i; ++j) {
          const double p = std::exp(scores[j] - max) / sum;
          for (std::int64_t d = 0; d < D; ++d) {
            out[(b * T + i) * C + h * D + d] += p * qkv[(b * T + j) * 3 * C + 2 * C + h * D + d];
          }
        }
      }
    }
  }
  return out;
}

struct AttentionCase {
  std::int64_t batch, seq_len, heads, head_dim, block;
};

class Attention : public ::testing::TestWithParam<AttentionCase> {};

TEST_P(Attention, ForwardAndBackwardMatchTheNaiveFullSoftmax) {
  const AttentionCase c = GetParam();
  const kernels::AttentionShape s{c.batch, c.seq_len, c.heads, c.head_dim, c.block};
  const Tensor qkv = random_tensor({c.batch * c.seq_len, 3 * s.channels()}, 11, -2.0f, 2.0f);
  const kernels::AttentionResult r = kernels::causal_attention(qkv, s);
  ASSERT_EQ(r.lse.shape(), (Tensor::Shape{c.batch, c.heads, c.seq_len}));
  const std::vector<double> expected = naive_attention(doubles_of(qkv), s);
  const std::vector<float> got = values_of(r.out);
  for (std::size_t i = 0; i < got.size(); ++i) ASSERT_NEAR(got[i], expected[i], 2e-6) << "out " << i;

  // Backward: d/dqkv of sum(out * w), against central differences of the
  // double-precision naive forward (accurate to ~1e-10 with step 1e-5).
  const Tensor w = random_tensor(r.out.shape(), 12);
  const Tensor dqkv = kernels::causal_attention_backward(w, qkv, r.out, r.lse, s);
  const std::vector<double> wv = doubles_of(w);
  std::vector<double> x = doubles_of(qkv);
  const std::vector<float> analytic = values_of(dqkv);
  for (std::size_t k = 0; k < x.size(); ++k) {
    const double saved = x[k];
    const auto loss = [&] {
      const std::vector<double> o = naive_attention(x, s);
      double sum = 0.0;
      for (std::size_t i = 0; i < o.size(); ++i) sum += o[i] * wv[i];
      return sum;
    };
    x[k] = saved + 1e-5;
    const double up = loss();
    x[k] = saved - 1e-5;
    const double down = loss();
    x[k] = saved;
    ASSERT_NEAR(analytic[k], (up - down) / 2e-5, 2e-5) << "dqkv " << k;
  }
  // The block size changes only rounding.
  kernels::AttentionShape whole = s;
  whole.block = c.seq_len;
  const std::vector<float> unblocked = values_of(kernels::causal_attention(qkv, whole).out);
  for (std::size_t i = 0; i < got.size(); ++i) EXPECT_NEAR(got[i], unblocked[i], 2e-6);
}

INSTANTIATE_TEST_SUITE_P(Kernels, Attention,
                         ::testing::Values(AttentionCase{1, 1, 1, 1, 32}, AttentionCase{2, 7, 2, 4, 3},
                                           AttentionCase{1, 9, 3, 2, 4}, AttentionCase{2, 5, 1, 8, 1},
                                           AttentionCase{1, 12, 2, 3, 32}),
                         [](const ::testing::TestParamInfo<AttentionCase>& info) {
                           const AttentionCase& c = info.param;
                           return "B" + std::to_string(c.batch) + "T" + std::to_string(c.seq_len) + "H" +
                                  std::to_string(c.heads) + "D" + std::to_string(c.head_dim) + "block" +
                                  std::to_string(c.block);
                         });

TEST(AttentionStability, ScoresNear1e4GiveTheExactSoftmax) {
  // q and k of magnitude ~100 with D = 4: scores up to ~2e4. exp without the
  // running maximum would overflow to inf (and inf/inf = NaN).
  const kernels::AttentionShape s{1, 6, 1, 4, 2};
  const Tensor qkv = random_tensor({6, 12}, 13, -1.0f, 1.0f);
  float* p = qkv.data<float>();
  for (std::int64_t i = 0; i < 6; ++i) {
    for (std::int64_t d = 0; d < 8; ++d) p[i * 12 + d] *= 100.0f;  // q and k parts
  }
  const kernels::AttentionResult r = kernels::causal_attention(qkv, s);
  const std::vector<double> expected = naive_attention(doubles_of(qkv), s);
  const std::vector<float> got = values_of(r.out);
  double largest_lse = 0.0;
  for (std::size_t i = 0; i < got.size(); ++i) {
    ASSERT_TRUE(std::isfinite(got[i]));
    EXPECT_NEAR(got[i], expected[i], 1e-3);  // scores this large amplify f32 rounding of q.k
  }
  for (const float v : values_of(r.lse)) {
    ASSERT_TRUE(std::isfinite(v));
    largest_lse = std::max(largest_lse, std::fabs(static_cast<double>(v)));
  }
  EXPECT_GT(largest_lse, 1000.0);
  const Tensor dqkv = kernels::causal_attention_backward(random_tensor({6, 4}, 14), qkv, r.out, r.lse, s);
  for (const float v : values_of(dqkv)) ASSERT_TRUE(std::isfinite(v));
}

TEST(AttentionStability, VocabularyCrossEntropyWithLogitsOf1e4) {
  // 4 tokens over a vocabulary of 6; the loss is the mean over tokens.
  const Tensor logits = random_tensor({4, 6}, 15, -1.0f, 1.0f);
  kernels::scale_(logits, 1e4f);
  const Tensor labels = Tensor::from_vector(std::vector<std::int64_t>{0, 5, 2, 3}, {4});
  const kernels::CrossEntropyResult r = kernels::softmax_cross_entropy(logits, labels);
  ASSERT_TRUE(std::isfinite(r.loss));
  const std::vector<double> x = doubles_of(logits);
  double expected = 0.0;
  for (std::int64_t i = 0; i < 4; ++i) {
    double max = x[i * 6];
    for (std::int64_t j = 1; j < 6; ++j) max = std::max(max, x[i * 6 + j]);
    double sum = 0.0;
    for (std::int64_t j = 0; j < 6; ++j) sum += std::exp(x[i * 6 + j] - max);
    expected += (std::log(sum) + max - x[i * 6 + labels.data<std::int64_t>()[i]]) / 4.0;
  }
  EXPECT_NEAR(r.loss, expected, 1e-6 * std::fabs(expected) + 1e-3);
  for (const float v : values_of(r.dlogits)) ASSERT_TRUE(std::isfinite(v));
}

TEST(Attention, RejectsAMismatchedQkv) {
  const kernels::AttentionShape s{1, 4, 2, 3, 2};
  EXPECT_EQ(error_code_of([&] { (void)kernels::causal_attention(random_tensor({4, 17}, 1), s); }),
            Errc::invalid_argument);
  EXPECT_EQ(error_code_of([&] { (void)kernels::causal_attention(random_tensor({4, 18}, 1), {1, 4, 2, 3, 0}); }),
            Errc::invalid_argument);
}

// ---- a whole pre-norm block from the pieces, checked end to end ----

TEST(TransformerPieces, APreNormBlockBackwardMatchesFiniteDifferences) {
  // y = x + attn(ln1(x)) Wo;  z = y + gelu(ln2(y) W1) W2;  loss = sum(z * w).
  const std::int64_t B = 1, T = 4, H = 2, D = 2, C = 4, F = 8;
  const kernels::AttentionShape s{B, T, H, D, 3};
  const Tensor x = random_tensor({B * T, C}, 20);
  const Tensor g1 = random_tensor({C}, 21, 0.5f, 1.5f), b1 = random_tensor({C}, 22);
  const Tensor g2 = random_tensor({C}, 23, 0.5f, 1.5f), b2 = random_tensor({C}, 24);
  const Tensor wqkv = random_tensor({C, 3 * C}, 25), wo = random_tensor({C, C}, 26);
  const Tensor w1 = random_tensor({C, F}, 27), w2 = random_tensor({F, C}, 28);
  const Tensor w = random_tensor({B * T, C}, 29);
  struct Saved {
    kernels::LayerNormResult n1, n2;
    Tensor qkv, att, y, h, a;
    kernels::AttentionResult attn;
    Tensor z;
  };
  const auto forward = [&] {
    Saved f;
    f.n1 = kernels::layer_norm(x, g1, b1);
    f.qkv = kernels::matmul(f.n1.y, wqkv);
    f.attn = kernels::causal_attention(f.qkv, s);
    f.y = kernels::matmul(f.attn.out, wo);
    kernels::add_(f.y, x);
    f.n2 = kernels::layer_norm(f.y, g2, b2);
    f.h = kernels::matmul(f.n2.y, w1);
    f.a = kernels::gelu(f.h);
    f.z = kernels::matmul(f.a, w2);
    kernels::add_(f.z, f.y);
    return f;
  };
  const Saved f = forward();
  // Backward.
  const Tensor dw2 = kernels::matmul(f.a, w, {.transpose_a = true});
  const Tensor dh = kernels::gelu_backward(kernels::matmul(w, w2, {.transpose_b = true}), f.h);
  const Tensor dw1 = kernels::matmul(f.n2.y, dh, {.transpose_a = true});
  const Tensor dg2 = kernels::zeros_like(g2), db2 = kernels::zeros_like(b2);
  const Tensor dy = kernels::layer_norm_backward(kernels::matmul(dh, w1, {.transpose_b = true}), f.y, g2, f.n2.mean,
                                                 f.n2.rstd, dg2, db2);
  kernels::add_(dy, w);  // the residual
  const Tensor dwo = kernels::matmul(f.attn.out, dy, {.transpose_a = true});
  const Tensor dqkv = kernels::causal_attention_backward(kernels::matmul(dy, wo, {.transpose_b = true}), f.qkv,
                                                         f.attn.out, f.attn.lse, s);
  const Tensor dwqkv = kernels::matmul(f.n1.y, dqkv, {.transpose_a = true});
  const Tensor dg1 = kernels::zeros_like(g1), db1 = kernels::zeros_like(b1);
  const Tensor dx = kernels::layer_norm_backward(kernels::matmul(dqkv, wqkv, {.transpose_b = true}), x, g1,
                                                 f.n1.mean, f.n1.rstd, dg1, db1);
  kernels::add_(dx, dy);
  const auto loss = [&] { return project(forward().z, w); };
  expect_matches_finite_differences(x, dx, loss, "x", 1e-3, 1e-2);
  expect_matches_finite_differences(wqkv, dwqkv, loss, "wqkv", 1e-3, 1e-2);
  expect_matches_finite_differences(wo, dwo, loss, "wo", 1e-3, 1e-2);
  expect_matches_finite_differences(w1, dw1, loss, "w1", 1e-3, 1e-2);
  expect_matches_finite_differences(w2, dw2, loss, "w2", 1e-3, 1e-2);
  expect_matches_finite_differences(g1, dg1, loss, "g1", 1e-3, 1e-2);
  expect_matches_finite_differences(b2, db2, loss, "b2", 1e-3, 1e-2);
}

// ---- AdamW and clipping ----

TEST(AdamW, MatchesHandComputedSteps) {
  const Tensor param = host_tensor({0.5f, -1.0f}, {2});
  const Tensor m = kernels::zeros_like(param);
  const Tensor v = kernels::zeros_like(param);
  const kernels::AdamWOptions options{.lr = 0.1f, .beta1 = 0.9f, .beta2 = 0.999f, .eps = 1e-8f, .weight_decay = 0.1f};
  // Step 1, element 0: decay 0.5 * (1 - 0.01) = 0.495; m = 0.02, v = 4e-5;
  // m_hat = 0.2, sqrt(v_hat) = 0.2: update 0.1 * 0.2 / 0.2 = 0.1 -> 0.395.
  kernels::adamw_step(param, host_tensor({0.2f, 0.0f}, {2}), m, v, 1, options);
  EXPECT_NEAR(param.data<float>()[0], 0.395f, 1e-6);
  EXPECT_NEAR(param.data<float>()[1], -0.99f, 1e-6);  // zero gradient: only the decay
  // Step 2 in double by hand.
  double p = 0.395, m1 = 0.02, v1 = 4e-5;
  const double g = -0.3;
  p *= 1.0 - 0.1 * 0.1;
  m1 = 0.9 * m1 + 0.1 * g;
  v1 = 0.999 * v1 + 0.001 * g * g;
  p -= 0.1 / (1.0 - 0.81) * m1 / (std::sqrt(v1) / std::sqrt(1.0 - 0.999 * 0.999) + 1e-8);
  kernels::adamw_step(param, host_tensor({-0.3f, 0.0f}, {2}), m, v, 2, options);
  EXPECT_NEAR(param.data<float>()[0], p, 1e-6);
  EXPECT_NEAR(m.data<float>()[0], m1, 1e-7);
  EXPECT_NEAR(v.data<float>()[0], v1, 1e-4 * v1);  // 1 - 0.999f is not exactly 0.001
}

TEST(AdamW, BadArgumentsLeaveTheParameterUntouched) {
  const Tensor param = host_tensor({1.0f}, {1});
  const Tensor g = host_tensor({1.0f}, {1});
  const Tensor m = kernels::zeros_like(param), v = kernels::zeros_like(param);
  EXPECT_EQ(error_code_of([&] { kernels::adamw_step(param, g, m, v, 0, {}); }), Errc::invalid_argument);
  EXPECT_EQ(error_code_of([&] { kernels::adamw_step(param, g, m, v, 1, {.beta2 = 1.0f}); }), Errc::invalid_argument);
  EXPECT_EQ(error_code_of([&] { kernels::adamw_step(param, g, host_tensor({0, 0}, {2}), v, 1, {}); }),
            Errc::invalid_argument);
  EXPECT_EQ(param.data<float>()[0], 1.0f);
}

TEST(ClipGradNorm, ScalesEveryGradientByTheGlobalNorm) {
  const Tensor a = host_tensor({3.0f, 0.0f}, {2});
  const Tensor b = host_tensor({4.0f, 12.0f}, {1, 2});
  const std::vector<Tensor> grads = {a, b};
  EXPECT_DOUBLE_EQ(kernels::global_norm(grads), 13.0);
  EXPECT_DOUBLE_EQ(kernels::clip_grad_norm_(grads, 100.0), 13.0);  // under the limit: unchanged
  EXPECT_EQ(b.data<float>()[1], 12.0f);
  EXPECT_DOUBLE_EQ(kernels::clip_grad_norm_(grads, 6.5), 13.0);
  const double factor = 6.5 / (13.0 + 1e-6);
  EXPECT_NEAR(a.data<float>()[0], 3.0 * factor, 1e-6);
  EXPECT_NEAR(b.data<float>()[1], 12.0 * factor, 1e-6);
  EXPECT_NEAR(kernels::global_norm(grads), 6.5, 1e-5);
  EXPECT_EQ(error_code_of([&] { (void)kernels::clip_grad_norm_(grads, 0.0); }), Errc::invalid_argument);
}

}  // namespace
