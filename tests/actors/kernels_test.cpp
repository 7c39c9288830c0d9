// troupe::kernels on host tensors: each op against a naive double-precision
// reference, gradients against finite differences, losses and optimiser steps
// against hand-computed values, and the errors for bad input.
// TROUPE_TEST_LABELS: fast
#include "troupe/actors/kernels.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "actors/kernel_testing.hpp"

namespace {

namespace kernels = troupe::kernels;
using namespace kernel_testing;

// ---- matmul --------------------------------------------------------------------------

// Every combination of transposes over shapes that include 1x1x1, vectors
// and non-square, odd sizes: (transpose_a, transpose_b).
class MatmulTransposes : public ::testing::TestWithParam<std::tuple<bool, bool>> {};

Tensor operand(std::int64_t rows, std::int64_t cols, bool transposed, std::uint32_t seed) {
  return transposed ? random_tensor({cols, rows}, seed) : random_tensor({rows, cols}, seed);
}

const std::int64_t kMatmulExtents[] = {1, 3, 17, 64};

TEST_P(MatmulTransposes, MatchesANaiveDoubleProduct) {
  const auto [ta, tb] = GetParam();
  for (const std::int64_t m : kMatmulExtents) {
    for (const std::int64_t k : kMatmulExtents) {
      for (const std::int64_t n : kMatmulExtents) {
        SCOPED_TRACE("M=" + std::to_string(m) + " K=" + std::to_string(k) + " N=" + std::to_string(n));
        const Tensor a = operand(m, k, ta, 1);
        const Tensor b = operand(k, n, tb, 2);
        const Tensor c = kernels::matmul(a, b, {.transpose_a = ta, .transpose_b = tb});
        ASSERT_EQ(c.shape(), (Tensor::Shape{m, n}));
        const Product ref = naive_matmul(a, b, ta, tb);
        const std::vector<float> got = values_of(c);
        for (std::size_t i = 0; i < got.size(); ++i) {
          ASSERT_NEAR(got[i], ref.value[i], 4e-6 * ref.magnitude[i] + 1e-7) << "element " << i;
        }
      }
    }
  }
}

TEST_P(MatmulTransposes, AccumulatesIntoTheOutput) {
  const auto [ta, tb] = GetParam();
  for (const std::int64_t m : kMatmulExtents) {
    for (const std::int64_t k : kMatmulExtents) {
      for (const std::int64_t n : kMatmulExtents) {
        SCOPED_TRACE("M=" + std::to_string(m) + " K=" + std::to_string(k) + " N=" + std::to_string(n));
        const Tensor a = operand(m, k, ta, 3);
        const Tensor b = operand(k, n, tb, 4);
        const Tensor c = random_tensor({m, n}, 5);
        const std::vector<float> before = values_of(c);
        kernels::matmul_into(a, b, c, {.transpose_a = ta, .transpose_b = tb, .accumulate = true});
        const Product ref = naive_matmul(a, b, ta, tb);
        const std::vector<float> got = values_of(c);
        for (std::size_t i = 0; i < got.size(); ++i) {
          ASSERT_NEAR(got[i], before[i] + ref.value[i], 4e-6 * (ref.magnitude[i] + std::fabs(before[i])) + 1e-7)
              << "element " << i;
        }
      }
    }
  }
}

std::string transposes_name(const ::testing::TestParamInfo<std::tuple<bool, bool>>& info) {
  return std::string(std::get<0>(info.param) ? "AT" : "A") + "x" + (std::get<1>(info.param) ? "BT" : "B");
}

INSTANTIATE_TEST_SUITE_P(Kernels, MatmulTransposes, ::testing::Combine(::testing::Bool(), ::testing::Bool()),
                         transposes_name);

TEST(Matmul, OverwritesGarbageWhenNotAccumulating) {
  const Tensor a = random_tensor({2, 3}, 6);
  const Tensor b = random_tensor({3, 4}, 7);
  const Tensor c = Tensor::empty({2, 4}, DType::f32);
  kernels::fill_(c, std::numeric_limits<float>::quiet_NaN());
  kernels::matmul_into(a, b, c);
  EXPECT_EQ(values_of(c), values_of(kernels::matmul(a, b)));
}

TEST(Matmul, WritesIntoARowSliceOfALargerTensor) {
  const Tensor a = random_tensor({2, 3}, 8);
  const Tensor b = random_tensor({3, 4}, 9);
  const Tensor big = Tensor::zeros({5, 4}, DType::f32);
  kernels::matmul_into(a, b, big.slice(2, 4));
  const std::vector<float> all = values_of(big);
  const std::vector<float> product = values_of(kernels::matmul(a, b));
  for (int i = 0; i < 8; ++i) EXPECT_EQ(all[i], 0.0f);
  for (int i = 0; i < 8; ++i) EXPECT_EQ(all[8 + i], product[i]);
  for (int i = 16; i < 20; ++i) EXPECT_EQ(all[i], 0.0f);
}

TEST(Matmul, AnEmptyInnerDimensionGivesZerosOrLeavesTheSum) {
  const Tensor a = Tensor::empty({3, 0}, DType::f32);
  const Tensor b = Tensor::empty({0, 2}, DType::f32);
  const Tensor c = kernels::matmul(a, b);
  EXPECT_EQ(values_of(c), std::vector<float>(6, 0.0f));
  const Tensor d = random_tensor({3, 2}, 10);
  const std::vector<float> before = values_of(d);
  kernels::matmul_into(a, b, d, {.accumulate = true});
  EXPECT_EQ(values_of(d), before);
}

TEST(Matmul, EmptyRowsGiveAnEmptyResult) {
  const Tensor c = kernels::matmul(Tensor::empty({0, 3}, DType::f32), random_tensor({3, 2}, 11));
  EXPECT_EQ(c.shape(), (Tensor::Shape{0, 2}));
}

TEST(Matmul, IsBitwiseRepeatable) {
  const Tensor a = random_tensor({64, 48}, 12);
  const Tensor b = random_tensor({48, 40}, 13);
  EXPECT_TRUE(troupe::equal(kernels::matmul(a, b), kernels::matmul(a, b)));
}

TEST(Matmul, RejectsBadOperands) {
  const Tensor a = random_tensor({2, 3}, 14);
  const Tensor b = random_tensor({3, 4}, 15);
  EXPECT_EQ(error_code_of([&] { (void)kernels::matmul(a, a); }), Errc::invalid_argument);
  EXPECT_NE(error_message_of([&] { (void)kernels::matmul(a, a); }).find("inner dimensions differ"), std::string::npos);
  EXPECT_EQ(error_code_of([&] { (void)kernels::matmul(a, b, {.transpose_b = true}); }), Errc::invalid_argument);
  EXPECT_EQ(error_code_of([&] { (void)kernels::matmul(a.reshape({6}), b); }), Errc::invalid_argument);
  EXPECT_EQ(error_code_of([&] { (void)kernels::matmul(Tensor(), b); }), Errc::invalid_argument);
  EXPECT_EQ(error_code_of([&] { (void)kernels::matmul(Tensor::zeros({2, 3}, DType::f16), b); }),
            Errc::invalid_argument);
  EXPECT_NE(error_message_of([&] { (void)kernels::matmul(Tensor::zeros({2, 3}, DType::i32), b); }).find("expected f32"),
            std::string::npos);
  EXPECT_EQ(error_code_of([&] { kernels::matmul_into(a, b, Tensor::zeros({2, 5}, DType::f32)); }),
            Errc::invalid_argument);
  EXPECT_EQ(error_code_of([&] { (void)kernels::matmul(a, b, {.accumulate = true}); }), Errc::invalid_argument);
}

TEST(Matmul, RejectsAnOutputOverlappingAnInput) {
  const Tensor storage = random_tensor({4, 2}, 16);
  const Tensor a = storage.slice(0, 2);  // [2, 2]
  const Tensor b = random_tensor({2, 2}, 17);
  EXPECT_EQ(error_code_of([&] { kernels::matmul_into(a, b, a); }), Errc::invalid_argument);
  EXPECT_EQ(error_code_of([&] { kernels::matmul_into(a, b, storage.slice(1, 3)); }), Errc::invalid_argument);
  EXPECT_NO_THROW(kernels::matmul_into(a, b, storage.slice(2, 4)));  // disjoint rows of one storage
}

// ---- bias -----------------------------------------------------------------------------

TEST(Bias, AddBiasAddsToEveryRow) {
  const Tensor y = host_tensor({1, 2, 3, 4, 5, 6}, {2, 3});
  kernels::add_bias(y, host_tensor({10, 20, 30}, {3}));
  EXPECT_EQ(values_of(y), (std::vector<float>{11, 22, 33, 14, 25, 36}));
}

TEST(Bias, GradIsTheColumnSumAndCanAccumulate) {
  const Tensor dy = host_tensor({1, 2, 3, 4, 5, 6}, {2, 3});
  const Tensor db = kernels::bias_grad(dy);
  EXPECT_EQ(values_of(db), (std::vector<float>{5, 7, 9}));
  kernels::bias_grad_into(dy, db, /*accumulate=*/true);
  EXPECT_EQ(values_of(db), (std::vector<float>{10, 14, 18}));
  kernels::bias_grad_into(dy.slice(0, 1), db);
  EXPECT_EQ(values_of(db), (std::vector<float>{1, 2, 3}));
  EXPECT_EQ(values_of(kernels::bias_grad(Tensor::empty({0, 2}, DType::f32))), (std::vector<float>{0, 0}));
}

TEST(Bias, RejectsAMismatchedBias) {
  const Tensor y = Tensor::zeros({2, 3}, DType::f32);
  EXPECT_EQ(error_code_of([&] { kernels::add_bias(y, Tensor::zeros({2}, DType::f32)); }), Errc::invalid_argument);
  EXPECT_EQ(error_code_of([&] { kernels::add_bias(y, Tensor::zeros({1, 3}, DType::f32)); }), Errc::invalid_argument);
  EXPECT_EQ(error_code_of([&] { kernels::bias_grad_into(y, Tensor::zeros({2}, DType::f32)); }),
            Errc::invalid_argument);
}

// ---- activations --------------------------------------------------------------------------

double gelu_reference(double x) {
  const double k = std::sqrt(2.0 / M_PI);
  return 0.5 * x * (1.0 + std::tanh(k * (x + 0.044715 * x * x * x)));
}

TEST(Activations, ReluAndItsGradient) {
  const Tensor x = host_tensor({-2.0f, -0.0f, 0.0f, 0.5f, 3.0f}, {5});
  EXPECT_EQ(values_of(kernels::relu(x)), (std::vector<float>{0, 0, 0, 0.5f, 3}));
  const Tensor dy = host_tensor({1, 2, 3, 4, 5}, {5});
  // The gradient at x == 0 is 0.
  EXPECT_EQ(values_of(kernels::relu_backward(dy, x)), (std::vector<float>{0, 0, 0, 4, 5}));
}

TEST(Activations, GeluIsTheTanhApproximation) {
  const Tensor x = random_tensor({7, 9}, 20, -6.0f, 6.0f);
  const std::vector<float> xs = values_of(x);
  const std::vector<float> y = values_of(kernels::gelu(x));
  for (std::size_t i = 0; i < xs.size(); ++i) {
    const double ref = gelu_reference(xs[i]);
    EXPECT_NEAR(y[i], ref, 1e-6 * std::max(1.0, std::fabs(ref))) << "x = " << xs[i];
  }
  EXPECT_NEAR(values_of(kernels::gelu(host_tensor({1.0f}, {1})))[0], 0.8411920f, 1e-6);  // PyTorch, approximate="tanh"
}

TEST(Activations, GeluGradientMatchesFiniteDifferences) {
  const Tensor x = random_tensor({50}, 21, -5.0f, 5.0f);
  const Tensor dy = random_tensor({50}, 22);
  const std::vector<float> xs = values_of(x);
  const std::vector<float> g = values_of(dy);
  const std::vector<float> dx = values_of(kernels::gelu_backward(dy, x));
  const double h = 1e-6;
  for (std::size_t i = 0; i < xs.size(); ++i) {
    const double numeric = g[i] * (gelu_reference(xs[i] + h) - gelu_reference(xs[i] - h)) / (2 * h);
    EXPECT_NEAR(dx[i], numeric, 1e-5) << "x = " << xs[i];
  }
}

TEST(Activations, KeepAnyShapeAndRejectMismatches) {
  const Tensor x = random_tensor({2, 3, 4}, 23);
  EXPECT_EQ(kernels::relu(x).shape(), x.shape());
  EXPECT_EQ(kernels::gelu(x).shape(), x.shape());
  EXPECT_EQ(kernels::relu(Tensor::empty({0}, DType::f32)).numel(), 0);
  EXPECT_EQ(error_code_of([&] { (void)kernels::relu_backward(random_tensor({2, 3}, 24), x); }),
            Errc::invalid_argument);
  EXPECT_EQ(error_code_of([&] { (void)kernels::gelu_backward(x.reshape({6, 4}), x); }), Errc::invalid_argument);
  EXPECT_EQ(error_code_of([&] { (void)kernels::gelu(Tensor::zeros({3}, DType::bf16)); }), Errc::invalid_argument);
}

// ---- softmax cross-entropy ----------------------------------------------------------------

TEST(CrossEntropy, MatchesKnownValues) {
  {
    const auto r = kernels::softmax_cross_entropy(host_tensor({0, 0}, {1, 2}), Tensor::from_vector<std::int64_t>({0}));
    EXPECT_NEAR(r.loss, std::log(2.0), 1e-7);
    EXPECT_EQ(values_of(r.dlogits), (std::vector<float>{-0.5f, 0.5f}));
  }
  {
    const auto r =
        kernels::softmax_cross_entropy(host_tensor({1, 2, 3}, {1, 3}), Tensor::from_vector<std::int32_t>({2}));
    EXPECT_NEAR(r.loss, 0.40760596444438013, 1e-6);
    const double z = std::exp(1.0) + std::exp(2.0) + std::exp(3.0);
    expect_near_all(values_of(r.dlogits),
                    {static_cast<float>(std::exp(1.0) / z), static_cast<float>(std::exp(2.0) / z),
                     static_cast<float>(std::exp(3.0) / z - 1.0)},
                    1e-6, "dlogits");
  }
}

TEST(CrossEntropy, AveragesOverTheBatch) {
  // Two rows: loss log 2 each; gradients halved.
  const auto r = kernels::softmax_cross_entropy(host_tensor({0, 0, 5, 5}, {2, 2}),
                                                Tensor::from_vector<std::int64_t>({1, 0}));
  EXPECT_NEAR(r.loss, std::log(2.0), 1e-7);
  EXPECT_EQ(values_of(r.dlogits), (std::vector<float>{0.25f, -0.25f, -0.25f, 0.25f}));
}

TEST(CrossEntropy, IsStableForHugeLogits) {
  const auto r = kernels::softmax_cross_entropy(host_tensor({1000.0f, 0.0f, -1000.0f, 1e30f}, {2, 2}),
                                                Tensor::from_vector<std::int64_t>({1, 0}));
  EXPECT_TRUE(std::isfinite(r.loss));
  EXPECT_NEAR(r.loss, (1000.0 + 1e30) / 2, 1e24);
  for (const float d : values_of(r.dlogits)) EXPECT_TRUE(std::isfinite(d));
  expect_near_all(values_of(r.dlogits), {0.5f, -0.5f, -0.5f, 0.5f}, 1e-7, "dlogits");
}

TEST(CrossEntropy, BatchSizeOptionMakesMicroBatchesAddUp) {
  const Tensor logits = random_tensor({6, 5}, 30, -3, 3);
  const Tensor labels = Tensor::from_vector<std::int64_t>({0, 4, 2, 2, 1, 3});
  const auto full = kernels::softmax_cross_entropy(logits, labels);
  const auto first = kernels::softmax_cross_entropy(logits.slice(0, 4), labels.slice(0, 4), {.batch_size = 6});
  const auto second = kernels::softmax_cross_entropy(logits.slice(4, 6), labels.slice(4, 6), {.batch_size = 6});
  EXPECT_NEAR(first.loss + second.loss, full.loss, 1e-6);
  std::vector<float> joined = values_of(first.dlogits);
  for (const float d : values_of(second.dlogits)) joined.push_back(d);
  EXPECT_EQ(joined, values_of(full.dlogits));
}

TEST(CrossEntropy, GradientMatchesFiniteDifferences) {
  const std::int64_t rows = 3;
  const std::int64_t cols = 4;
  const Tensor logits = random_tensor({rows, cols}, 31, -2, 2);
  const std::vector<std::int32_t> label_values{3, 0, 1};
  const auto r = kernels::softmax_cross_entropy(logits, Tensor::from_vector(label_values));
  const std::vector<double> x = doubles_of(logits);
  auto loss = [&](std::vector<double> v) {
    double total = 0;
    for (std::int64_t i = 0; i < rows; ++i) {
      double z = 0;
      for (std::int64_t j = 0; j < cols; ++j) z += std::exp(v[i * cols + j]);
      total += std::log(z) - v[i * cols + label_values[i]];
    }
    return total / rows;
  };
  EXPECT_NEAR(r.loss, loss(x), 1e-6);
  const std::vector<float> d = values_of(r.dlogits);
  for (std::size_t i = 0; i < x.size(); ++i) {
    std::vector<double> plus = x, minus = x;
    plus[i] += 1e-6;
    minus[i] -= 1e-6;
    EXPECT_NEAR(d[i], (loss(plus) - loss(minus)) / 2e-6, 1e-6) << "element " << i;
  }
}

TEST(CrossEntropy, RejectsLabelsOutsideTheClasses) {
  const Tensor logits = Tensor::zeros({2, 3}, DType::f32);
  for (const std::int64_t bad : {-1, 3}) {
    const Tensor labels = Tensor::from_vector<std::int64_t>({0, bad});
    EXPECT_EQ(error_code_of([&] { (void)kernels::softmax_cross_entropy(logits, labels); }), Errc::invalid_argument);
    EXPECT_NE(error_message_of([&] { (void)kernels::softmax_cross_entropy(logits, labels); }).find("labels[1]"),
              std::string::npos);
  }
}

TEST(CrossEntropy, RejectsBadShapesAndTypes) {
  const Tensor logits = Tensor::zeros({2, 3}, DType::f32);
  EXPECT_EQ(error_code_of([&] { (void)kernels::softmax_cross_entropy(logits, host_tensor({0, 1}, {2})); }),
            Errc::invalid_argument);
  EXPECT_EQ(error_code_of([&] { (void)kernels::softmax_cross_entropy(logits, Tensor::from_vector<std::int64_t>({0})); }),
            Errc::invalid_argument);
  EXPECT_EQ(error_code_of([&] {
              (void)kernels::softmax_cross_entropy(Tensor::zeros({2, 0}, DType::f32),
                                                   Tensor::from_vector<std::int64_t>({0, 0}));
            }),
            Errc::invalid_argument);
  EXPECT_EQ(error_code_of([&] {
              (void)kernels::softmax_cross_entropy(logits, Tensor::from_vector<std::int64_t>({0, 0}), {.batch_size = -1});
            }),
            Errc::invalid_argument);
}

TEST(Accuracy, ArgmaxTakesTheFirstMaximumSkipsNaNAndCountsCorrectRows) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const Tensor logits = host_tensor({1, 3, 3, nan, -1, -2, nan, nan, nan, 0, 0, 0}, {4, 3});
  const Tensor index = kernels::argmax(logits);
  ASSERT_EQ(index.dtype(), DType::i64);
  const std::int64_t* p = index.data<std::int64_t>();
  EXPECT_EQ((std::vector<std::int64_t>(p, p + 4)), (std::vector<std::int64_t>{1, 1, 0, 0}));
  EXPECT_EQ(kernels::count_correct(logits, Tensor::from_vector<std::int32_t>({1, 1, 2, 0})), 3);
  EXPECT_EQ(kernels::count_correct(logits, Tensor::from_vector<std::int64_t>({0, 7, -1, 2})), 0);
}

// ---- optimisers --------------------------------------------------------------------------------

TEST(Sgd, PlainStepIsParamMinusLrTimesGrad) {
  const Tensor p = host_tensor({1.0f, -2.0f}, {2});
  kernels::sgd_step(p, host_tensor({0.5f, 0.25f}, {2}), Tensor(), {.lr = 0.1f});
  expect_near_all(values_of(p), {0.95f, -2.025f}, 1e-7, "param");
}

TEST(Sgd, MomentumAndWeightDecayMatchHandComputedSteps) {
  const Tensor p = host_tensor({1.0f, -2.0f}, {2});
  const Tensor g = host_tensor({0.5f, 0.25f}, {2});
  const Tensor velocity = Tensor::zeros({2}, DType::f32);
  const kernels::SgdOptions options{.lr = 0.1f, .momentum = 0.9f, .weight_decay = 0.01f};
  // g' = g + 0.01 p = [0.51, 0.23]; v = g'; p -= 0.1 v
  kernels::sgd_step(p, g, velocity, options);
  expect_near_all(values_of(velocity), {0.51f, 0.23f}, 1e-7, "velocity");
  expect_near_all(values_of(p), {0.949f, -2.023f}, 1e-6, "param");
  // g' = [0.50949, 0.22977]; v = 0.9 [0.51, 0.23] + g' = [0.96849, 0.43677]
  kernels::sgd_step(p, g, velocity, options);
  expect_near_all(values_of(velocity), {0.96849f, 0.43677f}, 1e-6, "velocity");
  expect_near_all(values_of(p), {0.852151f, -2.066677f}, 1e-6, "param");
}

TEST(Sgd, RejectsMissingVelocityAndBadOptions) {
  const Tensor p = Tensor::zeros({2}, DType::f32);
  const Tensor g = Tensor::zeros({2}, DType::f32);
  EXPECT_EQ(error_code_of([&] { kernels::sgd_step(p, g, Tensor(), {.momentum = 0.9f}); }), Errc::invalid_argument);
  EXPECT_EQ(error_code_of([&] { kernels::sgd_step(p, g, Tensor(), {.lr = -1.0f}); }), Errc::invalid_argument);
  EXPECT_EQ(error_code_of([&] { kernels::sgd_step(p, Tensor::zeros({3}, DType::f32), Tensor(), {}); }),
            Errc::invalid_argument);
  EXPECT_EQ(error_code_of([&] { kernels::sgd_step(p, p, Tensor(), {}); }), Errc::invalid_argument);
}

TEST(Adam, MatchesHandComputedSteps) {
  const Tensor p = host_tensor({1.0f}, {1});
  const Tensor m = Tensor::zeros({1}, DType::f32);
  const Tensor v = Tensor::zeros({1}, DType::f32);
  const kernels::AdamOptions options{.lr = 0.1f};
  // Step 1: m = 0.05, v = 0.00025, both bias-corrected to 0.5 and 0.25: p -= 0.1 * 0.5 / 0.5.
  kernels::adam_step(p, host_tensor({0.5f}, {1}), m, v, 1, options);
  // beta2 = 0.999f makes 1 - beta2 = 0.00099998713 in f32: v is exact only to ~1e-5 relative.
  EXPECT_NEAR(values_of(m)[0], 0.05, 0.05 * 1e-6);
  EXPECT_NEAR(values_of(v)[0], 0.00025, 0.00025 * 2e-5);
  EXPECT_NEAR(values_of(p)[0], 0.9, 1e-6);
  // Step 2, g = -0.25: m = 0.02, v = 0.00031225, corrections 0.19 and 0.001999.
  kernels::adam_step(p, host_tensor({-0.25f}, {1}), m, v, 2, options);
  EXPECT_NEAR(values_of(m)[0], 0.02, 0.02 * 1e-6);
  EXPECT_NEAR(values_of(v)[0], 0.00031225, 0.00031225 * 2e-5);
  EXPECT_NEAR(values_of(p)[0], 0.8733662987, 1e-6);
}

TEST(Adam, WeightDecayIsAddedToTheGradient) {
  const Tensor p1 = host_tensor({2.0f, -1.0f}, {2});
  const Tensor p2 = p1.clone();
  const Tensor grad = host_tensor({0.1f, 0.3f}, {2});
  // With weight_decay w, stepping on g equals stepping without decay on g + w p.
  const Tensor decayed_grad = host_tensor({0.1f + 0.5f * 2.0f, 0.3f + 0.5f * -1.0f}, {2});
  const Tensor m1 = Tensor::zeros({2}, DType::f32), v1 = Tensor::zeros({2}, DType::f32);
  const Tensor m2 = Tensor::zeros({2}, DType::f32), v2 = Tensor::zeros({2}, DType::f32);
  kernels::adam_step(p1, grad, m1, v1, 1, {.lr = 0.01f, .weight_decay = 0.5f});
  kernels::adam_step(p2, decayed_grad, m2, v2, 1, {.lr = 0.01f});
  expect_near_all(values_of(p1), values_of(p2), 1e-7, "param");
}

TEST(Adam, RejectsBadStepAndOptions) {
  const Tensor p = Tensor::zeros({2}, DType::f32);
  const Tensor g = Tensor::zeros({2}, DType::f32);
  const Tensor m = Tensor::zeros({2}, DType::f32);
  const Tensor v = Tensor::zeros({2}, DType::f32);
  EXPECT_EQ(error_code_of([&] { kernels::adam_step(p, g, m, v, 0, {}); }), Errc::invalid_argument);
  EXPECT_EQ(error_code_of([&] { kernels::adam_step(p, g, m, v, 1, {.beta1 = 1.0f}); }), Errc::invalid_argument);
  EXPECT_EQ(error_code_of([&] { kernels::adam_step(p, g, m, v, 1, {.eps = 0.0f}); }), Errc::invalid_argument);
  EXPECT_EQ(error_code_of([&] { kernels::adam_step(p, g, m, m, 1, {}); }), Errc::invalid_argument);
  EXPECT_EQ(error_code_of([&] { kernels::adam_step(p, g, m, Tensor::zeros({3}, DType::f32), 1, {}); }),
            Errc::invalid_argument);
}

// ---- helpers -------------------------------------------------------------------------------------

TEST(Helpers, ZeroFillAddScale) {
  const Tensor t = random_tensor({3, 2}, 40);
  kernels::zero_(t);
  EXPECT_EQ(values_of(t), std::vector<float>(6, 0.0f));
  kernels::fill_(t, 1.5f);
  EXPECT_EQ(values_of(t), std::vector<float>(6, 1.5f));
  kernels::add_(t, host_tensor({1, 2, 3, 4, 5, 6}, {3, 2}), 2.0f);
  EXPECT_EQ(values_of(t), (std::vector<float>{3.5f, 5.5f, 7.5f, 9.5f, 11.5f, 13.5f}));
  kernels::add_(t, t);  // the same view doubles it
  kernels::scale_(t, 0.5f);
  EXPECT_EQ(values_of(t), (std::vector<float>{3.5f, 5.5f, 7.5f, 9.5f, 11.5f, 13.5f}));
  const Tensor z = kernels::zeros_like(t);
  EXPECT_EQ(z.shape(), t.shape());
  EXPECT_EQ(values_of(z), std::vector<float>(6, 0.0f));
}

TEST(Helpers, AddRejectsPartialOverlapAndMismatches) {
  const Tensor t = random_tensor({4, 2}, 41);
  EXPECT_EQ(error_code_of([&] { kernels::add_(t.slice(0, 2), t.slice(1, 3)); }), Errc::invalid_argument);
  EXPECT_NO_THROW(kernels::add_(t.slice(0, 2), t.slice(2, 4)));
  EXPECT_EQ(error_code_of([&] { kernels::add_(t, t.reshape({8})); }), Errc::invalid_argument);
  EXPECT_EQ(error_code_of([&] { kernels::scale_(Tensor::zeros({2}, DType::i64), 2.0f); }), Errc::invalid_argument);
}

TEST(Init, UniformFollowsTheDocumentedAlgorithm) {
  const Tensor t = Tensor::empty({2, 3}, DType::f32);
  kernels::uniform_(t, 0.25f, std::uint32_t{5489});  // mt19937's default seed
  // The first output of std::mt19937 with the default seed is 3499211612.
  const double first = (static_cast<double>(3499211612u >> 8) * 0x1p-23 - 1.0) * 0.25;
  EXPECT_EQ(values_of(t)[0], static_cast<float>(first));
  std::mt19937 generator(5489);
  for (const float value : values_of(t)) {
    const double expected = (static_cast<double>(generator() >> 8) * 0x1p-23 - 1.0) * 0.25;
    EXPECT_EQ(value, static_cast<float>(expected));
  }
}

TEST(Init, UniformStaysInBoundsAndContinuesAGenerator) {
  const Tensor big = Tensor::empty({1000}, DType::f32);
  kernels::uniform_(big, 0.1f, std::uint32_t{7});
  for (const float v : values_of(big)) {
    EXPECT_GE(v, -0.1f);
    EXPECT_LT(v, 0.1f);
  }
  // Two tensors from one generator are the two halves of one tensor from the seed.
  std::mt19937 generator(7);
  const Tensor first = Tensor::empty({600}, DType::f32);
  const Tensor second = Tensor::empty({400}, DType::f32);
  kernels::uniform_(first, 0.1f, generator);
  kernels::uniform_(second, 0.1f, generator);
  EXPECT_TRUE(troupe::equal(first, big.slice(0, 600)));
  EXPECT_TRUE(troupe::equal(second, big.slice(600, 1000)));
}

// ---- Linear ---------------------------------------------------------------------------------------

TEST(Linear, InitialisesWeightThenBiasFromOneSeed) {
  const kernels::Linear layer(4, 3, 99);
  EXPECT_EQ(layer.weight.shape(), (Tensor::Shape{4, 3}));
  EXPECT_EQ(layer.bias.shape(), (Tensor::Shape{3}));
  const Tensor all = Tensor::empty({15}, DType::f32);
  kernels::uniform_(all, static_cast<float>(1.0 / std::sqrt(4.0)), std::uint32_t{99});
  EXPECT_TRUE(troupe::equal(layer.weight.reshape({12}), all.slice(0, 12)));
  EXPECT_TRUE(troupe::equal(layer.bias, all.slice(12, 15)));
  EXPECT_EQ(values_of(layer.weight_grad), std::vector<float>(12, 0.0f));
  EXPECT_EQ(values_of(layer.bias_grad), std::vector<float>(3, 0.0f));
}

TEST(Linear, ForwardIsXWPlusB) {
  kernels::Linear layer(host_tensor({1, 2, 3, 4, 5, 6}, {3, 2}), host_tensor({10, 20}, {2}));
  const Tensor y = layer.forward(host_tensor({1, 0, 1, 0, 1, 0}, {2, 3}));
  EXPECT_EQ(values_of(y), (std::vector<float>{16, 28, 13, 24}));
  kernels::Linear no_bias(host_tensor({1, 2, 3, 4, 5, 6}, {3, 2}), Tensor());
  EXPECT_EQ(values_of(no_bias.forward(host_tensor({1, 1, 1}, {1, 3}))), (std::vector<float>{9, 12}));
  EXPECT_NO_THROW(no_bias.backward(host_tensor({1, 1}, {1, 2})));
}

// A two-layer MLP (Linear, GELU or ReLU, Linear, softmax cross-entropy) in
// double, for finite differences of the loss with respect to every input.
struct MlpReference {
  std::int64_t batch, in, hidden, out;
  bool use_gelu;
  std::vector<std::int64_t> labels;

  double loss(const std::vector<double>& x, const std::vector<double>& w1, const std::vector<double>& b1,
              const std::vector<double>& w2, const std::vector<double>& b2) const {
    double total = 0;
    for (std::int64_t r = 0; r < batch; ++r) {
      std::vector<double> h(hidden);
      for (std::int64_t j = 0; j < hidden; ++j) {
        double s = b1[j];
        for (std::int64_t i = 0; i < in; ++i) s += x[r * in + i] * w1[i * hidden + j];
        h[j] = use_gelu ? gelu_reference(s) : std::max(s, 0.0);
      }
      std::vector<double> logits(out);
      double z = 0;
      for (std::int64_t k = 0; k < out; ++k) {
        double s = b2[k];
        for (std::int64_t j = 0; j < hidden; ++j) s += h[j] * w2[j * out + k];
        logits[k] = s;
        z += std::exp(s);
      }
      total += std::log(z) - logits[labels[r]];
    }
    return total / batch;
  }
};

class LinearMlp : public ::testing::TestWithParam<bool> {};

TEST_P(LinearMlp, GradientsMatchFiniteDifferencesInDouble) {
  const bool use_gelu = GetParam();
  const MlpReference ref{.batch = 4, .in = 5, .hidden = 6, .out = 3, .use_gelu = use_gelu, .labels = {2, 0, 1, 2}};
  kernels::Linear l1(ref.in, ref.hidden, 1);
  kernels::Linear l2(ref.hidden, ref.out, 2);
  const Tensor x = random_tensor({ref.batch, ref.in}, 50);
  const Tensor labels = Tensor::from_vector(ref.labels);

  const Tensor h = l1.forward(x);
  const Tensor a = use_gelu ? kernels::gelu(h) : kernels::relu(h);
  const auto ce = kernels::softmax_cross_entropy(l2.forward(a), labels);
  const Tensor da = l2.backward(ce.dlogits);
  const Tensor dh = use_gelu ? kernels::gelu_backward(da, h) : kernels::relu_backward(da, h);
  const Tensor dx = l1.backward(dh);

  std::vector<std::vector<double>> params{doubles_of(x), doubles_of(l1.weight), doubles_of(l1.bias),
                                          doubles_of(l2.weight), doubles_of(l2.bias)};
  const std::vector<Tensor> grads{dx, l1.weight_grad, l1.bias_grad, l2.weight_grad, l2.bias_grad};
  const char* names[] = {"dx", "dW1", "db1", "dW2", "db2"};
  auto loss = [&] { return ref.loss(params[0], params[1], params[2], params[3], params[4]); };
  EXPECT_NEAR(ce.loss, loss(), 1e-6);
  const double step = 1e-6;
  for (std::size_t p = 0; p < params.size(); ++p) {
    const std::vector<float> analytic = values_of(grads[p]);
    ASSERT_EQ(analytic.size(), params[p].size()) << names[p];
    for (std::size_t i = 0; i < analytic.size(); ++i) {
      const double saved = params[p][i];
      params[p][i] = saved + step;
      const double plus = loss();
      params[p][i] = saved - step;
      const double minus = loss();
      params[p][i] = saved;
      const double numeric = (plus - minus) / (2 * step);
      EXPECT_NEAR(analytic[i], numeric, 1e-5 + 1e-4 * std::fabs(numeric)) << names[p] << "[" << i << "]";
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Kernels, LinearMlp, ::testing::Bool(),
                         [](const ::testing::TestParamInfo<bool>& info) { return info.param ? "Gelu" : "Relu"; });

TEST(Linear, MicroBatchGradientsAddUpToTheFullBatch) {
  kernels::Linear full(8, 5, 3);
  kernels::Linear micro(8, 5, 3);
  const Tensor x = random_tensor({12, 8}, 60);
  const Tensor labels = Tensor::from_vector<std::int64_t>({0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 0, 1});

  const auto whole = kernels::softmax_cross_entropy(full.forward(x), labels);
  (void)full.backward(whole.dlogits);

  float loss = 0;
  for (std::int64_t begin = 0; begin < 12; begin += 4) {
    const Tensor xs = x.slice(begin, begin + 4);
    const auto part = kernels::softmax_cross_entropy(micro.forward(xs), labels.slice(begin, begin + 4),
                                                     {.batch_size = 12});
    loss += part.loss;
    (void)micro.backward(part.dlogits);
  }
  EXPECT_NEAR(loss, whole.loss, 1e-5 * std::fabs(whole.loss));
  // Different sgemm shapes round differently: equal to float rounding, not bitwise.
  EXPECT_LT(relative_error(values_of(micro.weight_grad), values_of(full.weight_grad)), 1e-5);
  EXPECT_LT(relative_error(values_of(micro.bias_grad), values_of(full.bias_grad)), 1e-5);
}

TEST(Linear, BackwardWithAKeptInputEqualsBackwardAfterForward) {
  kernels::Linear a(3, 2, 4);
  kernels::Linear b(3, 2, 4);
  const Tensor x1 = random_tensor({5, 3}, 61);
  const Tensor x2 = random_tensor({5, 3}, 62);
  const Tensor dy = random_tensor({5, 2}, 63);
  (void)a.forward(x1);
  const Tensor dx_a = a.backward(dy);
  (void)b.forward(x1);
  (void)b.forward(x2);  // a later micro-batch's forward
  const Tensor dx_b = b.backward(x1, dy);
  EXPECT_TRUE(troupe::equal(dx_a, dx_b));
  EXPECT_TRUE(troupe::equal(a.weight_grad, b.weight_grad));
  EXPECT_TRUE(troupe::equal(a.bias_grad, b.bias_grad));
}

TEST(Linear, SgdStepZeroGradAndErrors) {
  kernels::Linear layer(host_tensor({1, 2}, {2, 1}), host_tensor({0.5f}, {1}));
  EXPECT_EQ(error_code_of([&] { (void)layer.backward(host_tensor({1}, {1, 1})); }), Errc::invalid_argument);
  (void)layer.forward(host_tensor({1, 1}, {1, 2}));
  (void)layer.backward(host_tensor({2}, {1, 1}));
  EXPECT_EQ(values_of(layer.weight_grad), (std::vector<float>{2, 2}));
  EXPECT_EQ(values_of(layer.bias_grad), (std::vector<float>{2}));
  layer.sgd_step(0.25f);
  EXPECT_EQ(values_of(layer.weight), (std::vector<float>{0.5f, 1.5f}));
  EXPECT_EQ(values_of(layer.bias), (std::vector<float>{0.0f}));
  layer.zero_grad();
  EXPECT_EQ(values_of(layer.weight_grad), (std::vector<float>{0, 0}));
  EXPECT_EQ(error_code_of([&] { (void)layer.forward(host_tensor({1, 2, 3}, {1, 3})); }), Errc::invalid_argument);
  EXPECT_EQ(error_code_of([&] { (void)layer.backward(host_tensor({1, 1}, {1, 2}), host_tensor({1, 1}, {1, 2})); }),
            Errc::invalid_argument);
  EXPECT_EQ(error_code_of([] { kernels::Linear bad(0, 3, 1); }), Errc::invalid_argument);
  EXPECT_EQ(error_code_of([] { kernels::Linear bad(host_tensor({1, 2}, {2, 1}), host_tensor({1, 2}, {2})); }),
            Errc::invalid_argument);
}

TEST(Linear, TrainingIsBitwiseReproducible) {
  auto train = [] {
    kernels::Linear l1(6, 8, 10);
    kernels::Linear l2(8, 3, 11);
    const Tensor x = random_tensor({16, 6}, 70);
    const Tensor labels = Tensor::from_vector<std::int32_t>({0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 2, 0});
    float loss = 0;
    for (int step = 0; step < 5; ++step) {
      const Tensor h = l1.forward(x);
      const auto ce = kernels::softmax_cross_entropy(l2.forward(kernels::relu(h)), labels);
      loss = ce.loss;
      (void)l1.backward(kernels::relu_backward(l2.backward(ce.dlogits), h));
      l1.sgd_step(0.5f);
      l2.sgd_step(0.5f);
      l1.zero_grad();
      l2.zero_grad();
    }
    return std::make_tuple(loss, l1.weight.clone(), l2.weight.clone());
  };
  const auto [loss_a, w1_a, w2_a] = train();
  const auto [loss_b, w1_b, w2_b] = train();
  EXPECT_EQ(loss_a, loss_b);
  EXPECT_TRUE(troupe::equal(w1_a, w1_b));
  EXPECT_TRUE(troupe::equal(w2_a, w2_b));
  EXPECT_LT(loss_a, std::log(3.0)) << "five SGD steps should reduce the loss below chance";
}

TEST(Kernels, CudaTensorsAreUnreachableWithoutADevice) {
  if (troupe::cuda::available()) GTEST_SKIP() << "this machine has a CUDA device (see kernels_cuda_test)";
  EXPECT_EQ(error_code_of([] { (void)Tensor::empty({2, 2}, DType::f32, Device::cuda(0)); }), Errc::cuda);
  EXPECT_NO_THROW(kernels::synchronize(Device::cpu()));
}

}  // namespace
