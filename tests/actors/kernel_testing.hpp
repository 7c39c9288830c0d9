// Helpers shared by the kernels tests: seeded random tensors, host copies,
// double-precision references and error capture.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "troupe/actors/kernels.hpp"
#include "troupe/runtime/cuda.hpp"
#include "troupe/runtime/error.hpp"
#include "troupe/runtime/tensor.hpp"

namespace kernel_testing {

using troupe::Device;
using troupe::DType;
using troupe::Errc;
using troupe::Tensor;

#define SKIP_WITHOUT_GPU() \
  if (!troupe::cuda::available()) GTEST_SKIP() << "no CUDA device: " << troupe::cuda::unavailable_reason()

template <class F>
Errc error_code_of(F&& f) {
  try {
    f();
  } catch (const troupe::Error& e) {
    return e.code();
  }
  return Errc::ok;
}

template <class F>
std::string error_message_of(F&& f) {
  try {
    f();
  } catch (const troupe::Error& e) {
    return e.message();
  }
  return {};
}

// A host f32 tensor with values uniform in [lo, hi) from mt19937(seed).
inline Tensor random_tensor(Tensor::Shape shape, std::uint32_t seed, float lo = -1.0f, float hi = 1.0f) {
  std::mt19937 generator(seed);
  Tensor t = Tensor::empty(std::move(shape), DType::f32);
  float* p = t.data<float>();
  for (std::int64_t i = 0; i < t.numel(); ++i) {
    p[i] = lo + (hi - lo) * static_cast<float>(generator() >> 8) * 0x1p-24f;
  }
  return t;
}

inline Tensor host_tensor(const std::vector<float>& values, Tensor::Shape shape) {
  return Tensor::from_vector(values, std::move(shape));
}

// The values of any f32 tensor (copied from the device when needed).
inline std::vector<float> values_of(const Tensor& t) {
  const Tensor host = t.device().is_cpu() ? t : t.to(Device::cpu());
  const float* p = host.data<float>();
  return std::vector<float>(p, p + host.numel());
}

inline std::vector<double> doubles_of(const Tensor& t) {
  const std::vector<float> v = values_of(t);
  return std::vector<double>(v.begin(), v.end());
}

// Element i of a row-major [rows, cols] matrix stored as op(m) when transposed.
inline double at(const std::vector<double>& m, std::int64_t cols, std::int64_t r, std::int64_t c) {
  return m[static_cast<std::size_t>(r * cols + c)];
}

// op(a) op(b) in double, and sum |op(a)| |op(b)| as the error scale of an f32 result.
struct Product {
  std::vector<double> value;
  std::vector<double> magnitude;
};
inline Product naive_matmul(const Tensor& a, const Tensor& b, bool transpose_a, bool transpose_b) {
  const std::vector<double> av = doubles_of(a);
  const std::vector<double> bv = doubles_of(b);
  const std::int64_t m = transpose_a ? a.size(1) : a.size(0);
  const std::int64_t k = transpose_a ? a.size(0) : a.size(1);
  const std::int64_t n = transpose_b ? b.size(0) : b.size(1);
  Product out{std::vector<double>(static_cast<std::size_t>(m * n)), std::vector<double>(static_cast<std::size_t>(m * n))};
  for (std::int64_t i = 0; i < m; ++i) {
    for (std::int64_t j = 0; j < n; ++j) {
      double sum = 0.0;
      double mag = 0.0;
      for (std::int64_t p = 0; p < k; ++p) {
        const double x = transpose_a ? at(av, a.size(1), p, i) : at(av, a.size(1), i, p);
        const double y = transpose_b ? at(bv, b.size(1), j, p) : at(bv, b.size(1), p, j);
        sum += x * y;
        mag += std::fabs(x * y);
      }
      out.value[static_cast<std::size_t>(i * n + j)] = sum;
      out.magnitude[static_cast<std::size_t>(i * n + j)] = mag;
    }
  }
  return out;
}

// Largest |a - b| over max(1e-30, largest |b|): the relative error of a whole tensor.
inline double relative_error(const std::vector<float>& a, const std::vector<float>& b) {
  EXPECT_EQ(a.size(), b.size());
  double diff = 0.0;
  double scale = 1e-30;
  for (std::size_t i = 0; i < a.size() && i < b.size(); ++i) {
    diff = std::max(diff, std::fabs(static_cast<double>(a[i]) - b[i]));
    scale = std::max(scale, std::fabs(static_cast<double>(b[i])));
  }
  return diff / scale;
}

inline void expect_near_all(const std::vector<float>& actual, const std::vector<float>& expected, double tolerance,
                            const std::string& what) {
  ASSERT_EQ(actual.size(), expected.size()) << what;
  for (std::size_t i = 0; i < actual.size(); ++i) {
    EXPECT_NEAR(actual[i], expected[i], tolerance) << what << " at " << i;
  }
}

}  // namespace kernel_testing
