// troupe::kernels on CUDA tensors: every op on the GPU against the same op on
// the host (float tolerance, not bitwise), mixed-device errors, and the
// legacy-default-stream ordering with Tensor copies. Each test skips, naming
// the reason, where there is no CUDA device.
// TROUPE_TEST_LABELS: fast
#include "troupe/actors/kernels.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "actors/kernel_testing.hpp"

namespace {

namespace kernels = troupe::kernels;
using namespace kernel_testing;

Tensor gpu(const Tensor& t) { return t.to(Device::cuda(0)); }

std::vector<std::int64_t> int64s_of(const Tensor& t) {
  const Tensor host = t.to(Device::cpu());
  const std::int64_t* p = host.data<std::int64_t>();
  return std::vector<std::int64_t>(p, p + host.numel());
}

// (transpose_a, transpose_b), each over shapes from 1x1x1 to a few hundred.
class CudaMatmul : public ::testing::TestWithParam<std::tuple<bool, bool>> {};

TEST_P(CudaMatmul, MatchesTheNaiveProductAndAccumulates) {
  SKIP_WITHOUT_GPU();
  const auto [ta, tb] = GetParam();
  const std::int64_t extents[] = {1, 17, 130, 257};
  for (const std::int64_t m : extents) {
    for (const std::int64_t k : extents) {
      for (const std::int64_t n : extents) {
        SCOPED_TRACE("M=" + std::to_string(m) + " K=" + std::to_string(k) + " N=" + std::to_string(n));
        const Tensor a = ta ? random_tensor({k, m}, 1) : random_tensor({m, k}, 1);
        const Tensor b = tb ? random_tensor({n, k}, 2) : random_tensor({k, n}, 2);
        const Tensor c = kernels::matmul(gpu(a), gpu(b), {.transpose_a = ta, .transpose_b = tb});
        ASSERT_TRUE(c.device().is_cuda());
        ASSERT_EQ(c.shape(), (Tensor::Shape{m, n}));
        const Product ref = naive_matmul(a, b, ta, tb);
        const std::vector<float> got = values_of(c);
        for (std::size_t i = 0; i < got.size(); ++i) {
          ASSERT_NEAR(got[i], ref.value[i], 4e-6 * ref.magnitude[i] + 1e-7) << "element " << i;
        }
        // Accumulating adds the product to what is there.
        const Tensor start = random_tensor({m, n}, 3);
        const Tensor acc = gpu(start);
        kernels::matmul_into(gpu(a), gpu(b), acc, {.transpose_a = ta, .transpose_b = tb, .accumulate = true});
        const std::vector<float> before = values_of(start);
        const std::vector<float> after = values_of(acc);
        for (std::size_t i = 0; i < after.size(); ++i) {
          ASSERT_NEAR(after[i], before[i] + ref.value[i], 4e-6 * (ref.magnitude[i] + std::fabs(before[i])) + 1e-7)
              << "element " << i;
        }
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Kernels, CudaMatmul, ::testing::Combine(::testing::Bool(), ::testing::Bool()),
                         [](const ::testing::TestParamInfo<std::tuple<bool, bool>>& info) {
                           return std::string(std::get<0>(info.param) ? "AT" : "A") + "x" +
                                  (std::get<1>(info.param) ? "BT" : "B");
                         });

TEST(CudaKernels, MatmulEdgeShapes) {
  SKIP_WITHOUT_GPU();
  const Tensor c = kernels::matmul(gpu(Tensor::empty({3, 0}, DType::f32)), gpu(Tensor::empty({0, 2}, DType::f32)));
  EXPECT_EQ(values_of(c), std::vector<float>(6, 0.0f));
  EXPECT_EQ(kernels::matmul(gpu(Tensor::empty({0, 3}, DType::f32)), gpu(random_tensor({3, 2}, 4))).shape(),
            (Tensor::Shape{0, 2}));
  // A row slice of a larger CUDA tensor as the output.
  const Tensor a = random_tensor({2, 3}, 5);
  const Tensor b = random_tensor({3, 4}, 6);
  const Tensor big = Tensor::zeros({4, 4}, DType::f32, Device::cuda(0));
  kernels::matmul_into(gpu(a), gpu(b), big.slice(1, 3));
  const std::vector<float> all = values_of(big);
  const std::vector<float> host = values_of(kernels::matmul(a, b));
  for (int i = 0; i < 8; ++i) EXPECT_NEAR(all[4 + i], host[i], 1e-6);
  EXPECT_EQ(all[0], 0.0f);
  EXPECT_EQ(all[12], 0.0f);
}

TEST(CudaKernels, MixedDevicesAreRejected) {
  SKIP_WITHOUT_GPU();
  const Tensor a = random_tensor({2, 3}, 7);
  const Tensor b = random_tensor({3, 4}, 8);
  EXPECT_EQ(error_code_of([&] { (void)kernels::matmul(a, gpu(b)); }), Errc::invalid_argument);
  EXPECT_NE(error_message_of([&] { (void)kernels::matmul(a, gpu(b)); }).find("cuda:0"), std::string::npos);
  EXPECT_EQ(error_code_of([&] { kernels::matmul_into(gpu(a), gpu(b), Tensor::zeros({2, 4}, DType::f32)); }),
            Errc::invalid_argument);
  EXPECT_EQ(error_code_of([&] { kernels::add_(gpu(a), a); }), Errc::invalid_argument);
  EXPECT_EQ(error_code_of([&] {
              (void)kernels::softmax_cross_entropy(gpu(a), Tensor::from_vector<std::int64_t>({0, 1}));
            }),
            Errc::invalid_argument);
  kernels::Linear layer(3, 4, 1, Device::cuda(0));
  EXPECT_EQ(error_code_of([&] { (void)layer.forward(a); }), Errc::invalid_argument);
}

TEST(CudaKernels, BiasMatchesTheHost) {
  SKIP_WITHOUT_GPU();
  const Tensor y = random_tensor({300, 7}, 9);
  const Tensor bias = random_tensor({7}, 10);
  const Tensor y_gpu = gpu(y);
  kernels::add_bias(y_gpu, gpu(bias));
  kernels::add_bias(y, bias);
  EXPECT_EQ(values_of(y_gpu), values_of(y));
  // Rows are summed in the same order on both, so column sums agree exactly.
  EXPECT_EQ(values_of(kernels::bias_grad(y_gpu)), values_of(kernels::bias_grad(y)));
  const Tensor db = gpu(bias);
  kernels::bias_grad_into(y_gpu, db, /*accumulate=*/true);
  const Tensor db_host = bias.clone();
  kernels::bias_grad_into(y, db_host, true);
  EXPECT_EQ(values_of(db), values_of(db_host));
}

TEST(CudaKernels, ActivationsMatchTheHost) {
  SKIP_WITHOUT_GPU();
  const Tensor x = random_tensor({33, 65}, 11, -6.0f, 6.0f);
  const Tensor dy = random_tensor({33, 65}, 12);
  EXPECT_EQ(values_of(kernels::relu(gpu(x))), values_of(kernels::relu(x)));
  EXPECT_EQ(values_of(kernels::relu_backward(gpu(dy), gpu(x))), values_of(kernels::relu_backward(dy, x)));
  expect_near_all(values_of(kernels::gelu(gpu(x))), values_of(kernels::gelu(x)), 2e-6, "gelu");
  expect_near_all(values_of(kernels::gelu_backward(gpu(dy), gpu(x))), values_of(kernels::gelu_backward(dy, x)), 2e-6,
                  "gelu_backward");
}

TEST(CudaKernels, CrossEntropyMatchesTheHost) {
  SKIP_WITHOUT_GPU();
  for (const std::int64_t rows : {1, 37, 1000}) {
    for (const std::int64_t cols : {1, 10, 33, 1000}) {
      for (const bool i64 : {false, true}) {
        SCOPED_TRACE("rows=" + std::to_string(rows) + " cols=" + std::to_string(cols) + (i64 ? " i64" : " i32"));
        const Tensor logits = random_tensor({rows, cols}, 13, -8.0f, 8.0f);
        std::vector<std::int64_t> label_values(static_cast<std::size_t>(rows));
        for (std::int64_t i = 0; i < rows; ++i) label_values[i] = (i * 7 + 3) % cols;
        Tensor labels = Tensor::from_vector(label_values);
        if (!i64) labels = Tensor::from_vector(std::vector<std::int32_t>(label_values.begin(), label_values.end()));
        const auto host = kernels::softmax_cross_entropy(logits, labels, {.batch_size = rows * 2});
        const auto device = kernels::softmax_cross_entropy(gpu(logits), gpu(labels), {.batch_size = rows * 2});
        ASSERT_TRUE(device.dlogits.device().is_cuda());
        EXPECT_NEAR(device.loss, host.loss, 1e-5 * std::fabs(host.loss) + 1e-7);
        expect_near_all(values_of(device.dlogits), values_of(host.dlogits), 1e-6, "dlogits");
      }
    }
  }
}

TEST(CudaKernels, CrossEntropyRejectsBadLabelsNamingTheRow) {
  SKIP_WITHOUT_GPU();
  const Tensor logits = gpu(Tensor::zeros({4, 3}, DType::f32));
  const Tensor labels = gpu(Tensor::from_vector<std::int32_t>({0, 2, 3, -1}));
  EXPECT_EQ(error_code_of([&] { (void)kernels::softmax_cross_entropy(logits, labels); }), Errc::invalid_argument);
  EXPECT_NE(error_message_of([&] { (void)kernels::softmax_cross_entropy(logits, labels); }).find("labels[2] = 3"),
            std::string::npos);
}

TEST(CudaKernels, ArgmaxAndCountCorrectMatchTheHost) {
  SKIP_WITHOUT_GPU();
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const Tensor special = host_tensor({1, 3, 3, nan, -1, -2, nan, nan, nan, 0, 0, 0}, {4, 3});
  EXPECT_EQ(int64s_of(kernels::argmax(gpu(special))), (std::vector<std::int64_t>{1, 1, 0, 0}));
  const Tensor logits = random_tensor({257, 19}, 14);
  EXPECT_EQ(int64s_of(kernels::argmax(gpu(logits))), int64s_of(kernels::argmax(logits)));
  std::vector<std::int64_t> labels(257);
  for (std::size_t i = 0; i < labels.size(); ++i) labels[i] = static_cast<std::int64_t>(i % 19);
  const Tensor label_tensor = Tensor::from_vector(labels);
  EXPECT_EQ(kernels::count_correct(gpu(logits), gpu(label_tensor)), kernels::count_correct(logits, label_tensor));
}

TEST(CudaKernels, OptimiserStepsMatchTheHost) {
  SKIP_WITHOUT_GPU();
  const Tensor param = random_tensor({1000}, 15);
  const Tensor grad = random_tensor({1000}, 16);
  {
    const Tensor p_host = param.clone();
    const Tensor v_host = Tensor::zeros({1000}, DType::f32);
    const Tensor p_gpu = gpu(param);
    const Tensor v_gpu = gpu(v_host);
    const kernels::SgdOptions options{.lr = 0.05f, .momentum = 0.9f, .weight_decay = 1e-3f};
    for (int step = 0; step < 3; ++step) {
      kernels::sgd_step(p_host, grad, v_host, options);
      kernels::sgd_step(p_gpu, gpu(grad), v_gpu, options);
    }
    expect_near_all(values_of(p_gpu), values_of(p_host), 1e-6, "sgd param");
    expect_near_all(values_of(v_gpu), values_of(v_host), 1e-6, "sgd velocity");
  }
  {
    const Tensor p_host = param.clone();
    const Tensor m_host = Tensor::zeros({1000}, DType::f32);
    const Tensor v_host = Tensor::zeros({1000}, DType::f32);
    const Tensor p_gpu = gpu(param);
    const Tensor m_gpu = gpu(m_host);
    const Tensor v_gpu = gpu(v_host);
    const kernels::AdamOptions options{.lr = 0.01f, .weight_decay = 1e-2f};
    for (std::int64_t step = 1; step <= 3; ++step) {
      kernels::adam_step(p_host, grad, m_host, v_host, step, options);
      kernels::adam_step(p_gpu, gpu(grad), m_gpu, v_gpu, step, options);
    }
    expect_near_all(values_of(p_gpu), values_of(p_host), 1e-6, "adam param");
    expect_near_all(values_of(m_gpu), values_of(m_host), 1e-6, "adam m");
    expect_near_all(values_of(v_gpu), values_of(v_host), 1e-8, "adam v");
  }
}

TEST(CudaKernels, HelpersMatchTheHost) {
  SKIP_WITHOUT_GPU();
  const Tensor t = gpu(random_tensor({100, 3}, 17));
  kernels::zero_(t);
  EXPECT_EQ(values_of(t), std::vector<float>(300, 0.0f));
  kernels::fill_(t, 2.5f);
  EXPECT_EQ(values_of(t), std::vector<float>(300, 2.5f));
  const Tensor src = random_tensor({100, 3}, 18);
  kernels::add_(t, gpu(src), -0.5f);
  kernels::scale_(t, 3.0f);
  const Tensor host = Tensor::empty({100, 3}, DType::f32);
  kernels::fill_(host, 2.5f);
  kernels::add_(host, src, -0.5f);
  kernels::scale_(host, 3.0f);
  expect_near_all(values_of(t), values_of(host), 1e-6, "add_ and scale_");
  const Tensor z = kernels::zeros_like(t);
  EXPECT_TRUE(z.device().is_cuda());
  EXPECT_EQ(values_of(z), std::vector<float>(300, 0.0f));
  EXPECT_NO_THROW(kernels::synchronize(Device::cuda(0)));
}

TEST(CudaKernels, UniformInitGivesTheHostsBits) {
  SKIP_WITHOUT_GPU();
  const Tensor host = Tensor::empty({64, 32}, DType::f32);
  const Tensor device = Tensor::empty({64, 32}, DType::f32, Device::cuda(0));
  kernels::uniform_(host, 0.125f, std::uint32_t{2024});
  kernels::uniform_(device, 0.125f, std::uint32_t{2024});
  EXPECT_TRUE(troupe::equal(host, device));
}

TEST(CudaKernels, LinearTrainsLikeTheHost) {
  SKIP_WITHOUT_GPU();
  kernels::Linear host(12, 7, 42);
  kernels::Linear device(12, 7, 42, Device::cuda(0));
  EXPECT_TRUE(troupe::equal(host.weight, device.weight)) << "same seed, same initial bits";
  EXPECT_TRUE(troupe::equal(host.bias, device.bias));
  const Tensor x = random_tensor({20, 12}, 19);
  const Tensor labels = Tensor::from_vector<std::int64_t>(
      {0, 1, 2, 3, 4, 5, 6, 0, 1, 2, 3, 4, 5, 6, 0, 1, 2, 3, 4, 5});
  for (int step = 0; step < 3; ++step) {
    const auto ce_host = kernels::softmax_cross_entropy(host.forward(x), labels);
    const auto ce_device = kernels::softmax_cross_entropy(device.forward(gpu(x)), gpu(labels));
    EXPECT_NEAR(ce_device.loss, ce_host.loss, 1e-5 * std::fabs(ce_host.loss));
    const Tensor dx_host = host.backward(ce_host.dlogits);
    const Tensor dx_device = device.backward(ce_device.dlogits);
    EXPECT_LT(relative_error(values_of(dx_device), values_of(dx_host)), 1e-5);
    EXPECT_LT(relative_error(values_of(device.weight_grad), values_of(host.weight_grad)), 1e-5);
    EXPECT_LT(relative_error(values_of(device.bias_grad), values_of(host.bias_grad)), 1e-5);
    host.sgd_step(0.1f);
    device.sgd_step(0.1f);
    host.zero_grad();
    device.zero_grad();
  }
  EXPECT_LT(relative_error(values_of(device.weight), values_of(host.weight)), 1e-5);
}

TEST(CudaKernels, ThreadsUseTheirOwnCublasHandles) {
  SKIP_WITHOUT_GPU();
  const Tensor a = gpu(random_tensor({64, 64}, 20));
  const Tensor b = gpu(random_tensor({64, 64}, 21));
  const std::vector<float> expected = values_of(kernels::matmul(a, b));
  std::vector<std::vector<float>> results(4);
  std::vector<std::thread> threads;
  for (std::size_t i = 0; i < results.size(); ++i) {
    threads.emplace_back([&, i] {
      for (int repeat = 0; repeat < 10; ++repeat) results[i] = values_of(kernels::matmul(a, b));
    });
  }
  for (auto& thread : threads) thread.join();
  for (const auto& result : results) EXPECT_LT(relative_error(result, expected), 1e-6);
}

}  // namespace
