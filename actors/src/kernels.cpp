// troupe::kernels: argument checks, the host (CPU) kernels, and dispatch of
// CUDA tensors to kernels_gpu.hpp. Host loops run in one fixed order so that
// results are bitwise reproducible (see kernels.hpp).
#include "troupe/actors/kernels.hpp"

#include <cblas.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstring>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "kernels_gpu.hpp"
#include "troupe/runtime/error.hpp"

namespace troupe::kernels {

namespace {

std::string shape_string(const Tensor::Shape& shape) {
  std::string out = "[";
  for (std::size_t i = 0; i < shape.size(); ++i) {
    if (i > 0) out += ", ";
    out += std::to_string(shape[i]);
  }
  return out + "]";
}

// Argument checks of one public function; every failure is
// Error(Errc::invalid_argument, "kernels::<op>: <what>").
class Checker {
 public:
  explicit Checker(std::string_view op) : op_(op) {}

  [[noreturn]] void fail(const std::string& what) const {
    throw_error(Errc::invalid_argument, "kernels::" + std::string(op_) + ": " + what);
  }

  const Checker& f32(const Tensor& t, std::string_view name) const {
    if (!t.defined()) fail(std::string(name) + " is undefined");
    if (t.dtype() != DType::f32) fail(std::string(name) + " is " + t.to_string() + "; expected f32");
    return *this;
  }
  const Checker& rank(const Tensor& t, std::string_view name, std::int64_t rank) const {
    if (t.dim() != rank) {
      fail(std::string(name) + " is " + t.to_string() + "; expected " + std::to_string(rank) + " dimensions");
    }
    return *this;
  }
  const Checker& shape(const Tensor& t, std::string_view name, const Tensor::Shape& shape) const {
    if (t.shape() != shape) fail(std::string(name) + " is " + t.to_string() + "; expected shape " + shape_string(shape));
    return *this;
  }
  const Checker& same_device(const Tensor& t, std::string_view name, const Tensor& ref, std::string_view ref_name) const {
    if (t.device() != ref.device()) {
      fail(std::string(name) + " is on " + t.device().to_string() + " but " + std::string(ref_name) + " is on " +
           ref.device().to_string() + "; all tensors of one call must be on one device");
    }
    return *this;
  }
  // f32, the same shape and device as `ref`.
  const Checker& like(const Tensor& t, std::string_view name, const Tensor& ref, std::string_view ref_name) const {
    f32(t, name);
    same_device(t, name, ref, ref_name);
    if (t.shape() != ref.shape()) {
      fail(std::string(name) + " is " + t.to_string() + " but " + std::string(ref_name) + " is " + ref.to_string() +
           "; expected the same shape");
    }
    return *this;
  }
  const Checker& labels(const Tensor& labels, const Tensor& logits) const {
    if (!labels.defined()) fail("labels is undefined");
    if (labels.dtype() != DType::i32 && labels.dtype() != DType::i64) {
      fail("labels is " + labels.to_string() + "; expected i32 or i64");
    }
    shape(labels, "labels", {logits.size(0)});
    same_device(labels, "labels", logits, "logits");
    return *this;
  }
  const Checker& option(bool ok, std::string_view what) const {
    if (!ok) fail("option " + std::string(what));
    return *this;
  }

 private:
  std::string_view op_;
};

float* floats(const Tensor& t) { return static_cast<float*>(t.raw_data()); }
bool on_cuda(const Tensor& t) { return t.device().is_cuda(); }
int cuda_index(const Tensor& t) { return t.device().index; }

bool overlaps(const Tensor& a, const Tensor& b) {
  if (!a.defined() || a.storage() != b.storage() || a.nbytes() == 0 || b.nbytes() == 0) return false;
  const std::size_t a_begin = a.storage_offset();
  const std::size_t b_begin = b.storage_offset();
  return a_begin < b_begin + b.nbytes() && b_begin < a_begin + a.nbytes();
}
bool same_view(const Tensor& a, const Tensor& b) {
  return a.storage() == b.storage() && a.storage_offset() == b.storage_offset() && a.nbytes() == b.nbytes();
}

Tensor empty_f32(Tensor::Shape shape, Device device) { return Tensor::empty(std::move(shape), DType::f32, device); }

struct GemmShape {
  std::int64_t m = 0;
  std::int64_t n = 0;
  std::int64_t k = 0;
};

GemmShape check_matmul_operands(const Checker& check, const Tensor& a, const Tensor& b, MatmulOptions options) {
  check.f32(a, "a").rank(a, "a", 2).f32(b, "b").rank(b, "b", 2).same_device(b, "b", a, "a");
  const std::int64_t m = options.transpose_a ? a.size(1) : a.size(0);
  const std::int64_t k = options.transpose_a ? a.size(0) : a.size(1);
  const std::int64_t kb = options.transpose_b ? b.size(1) : b.size(0);
  const std::int64_t n = options.transpose_b ? b.size(0) : b.size(1);
  if (k != kb) {
    check.fail(std::string("inner dimensions differ: ") + (options.transpose_a ? "a^T" : "a") + " is " +
               shape_string({m, k}) + " and " + (options.transpose_b ? "b^T" : "b") + " is " +
               shape_string({kb, n}));
  }
  for (const std::int64_t extent : {m, n, k}) {
    if (extent > INT_MAX) check.fail("dimension " + std::to_string(extent) + " exceeds INT_MAX (BLAS int)");
  }
  return {m, n, k};
}

template <class Label>
std::int64_t label_at(const Tensor& labels, std::int64_t row) {
  return static_cast<std::int64_t>(labels.data<Label>()[row]);
}
std::int64_t host_label(const Tensor& labels, std::int64_t row) {
  return labels.dtype() == DType::i64 ? label_at<std::int64_t>(labels, row) : label_at<std::int32_t>(labels, row);
}

// Index of the largest non-NaN element of row[0, cols); 0 when all are NaN.
// The CUDA kernel uses the same rule.
std::int64_t host_argmax(const float* row, std::int64_t cols) {
  std::int64_t best = -1;
  for (std::int64_t j = 0; j < cols; ++j) {
    if (std::isnan(row[j])) continue;
    if (best < 0 || row[j] > row[best]) best = j;
  }
  return best < 0 ? 0 : best;
}

constexpr float kGeluSqrt2OverPi = 0.7978845608028654f;
constexpr float kGeluCubic = 0.044715f;

}  // namespace

// ---- matmul ---------------------------------------------------------------------

void matmul_into(const Tensor& a, const Tensor& b, const Tensor& out, MatmulOptions options) {
  const Checker check("matmul");
  const GemmShape s = check_matmul_operands(check, a, b, options);
  check.f32(out, "out").same_device(out, "out", a, "a").shape(out, "out", {s.m, s.n});
  if (overlaps(out, a) || overlaps(out, b)) check.fail("out overlaps an input");
  if (s.m == 0 || s.n == 0) return;
  if (s.k == 0) {  // an empty sum; BLAS would reject lda == 0
    if (!options.accumulate) zero_(out);
    return;
  }
  const float beta = options.accumulate ? 1.0f : 0.0f;
  if (on_cuda(a)) {
    gpu::gemm(cuda_index(a), options.transpose_a, options.transpose_b, s.m, s.n, s.k, floats(a), a.size(1), floats(b),
              b.size(1), beta, floats(out));
    return;
  }
  // beta == 0 never reads out, so uninitialised memory (even NaN) is fine.
  cblas_sgemm(CblasRowMajor, options.transpose_a ? CblasTrans : CblasNoTrans,
              options.transpose_b ? CblasTrans : CblasNoTrans, static_cast<int>(s.m), static_cast<int>(s.n),
              static_cast<int>(s.k), 1.0f, floats(a), static_cast<int>(a.size(1)), floats(b),
              static_cast<int>(b.size(1)), beta, floats(out), static_cast<int>(s.n));
}

Tensor matmul(const Tensor& a, const Tensor& b, MatmulOptions options) {
  const Checker check("matmul");
  if (options.accumulate) check.fail("accumulate needs an output: use matmul_into");
  const GemmShape s = check_matmul_operands(check, a, b, options);
  Tensor out = empty_f32({s.m, s.n}, a.device());
  matmul_into(a, b, out, options);
  return out;
}

// ---- bias -------------------------------------------------------------------------

void add_bias(const Tensor& out, const Tensor& bias) {
  const Checker check("add_bias");
  check.f32(out, "out").rank(out, "out", 2).f32(bias, "bias").same_device(bias, "bias", out, "out");
  check.shape(bias, "bias", {out.size(1)});
  const std::int64_t rows = out.size(0);
  const std::int64_t cols = out.size(1);
  if (out.numel() == 0) return;
  if (on_cuda(out)) return gpu::add_bias(cuda_index(out), floats(out), floats(bias), rows, cols);
  float* y = floats(out);
  const float* b = floats(bias);
  for (std::int64_t i = 0; i < rows; ++i) {
    for (std::int64_t j = 0; j < cols; ++j) y[i * cols + j] += b[j];
  }
}

void bias_grad_into(const Tensor& dy, const Tensor& dbias, bool accumulate) {
  const Checker check("bias_grad");
  check.f32(dy, "dy").rank(dy, "dy", 2).f32(dbias, "dbias").same_device(dbias, "dbias", dy, "dy");
  check.shape(dbias, "dbias", {dy.size(1)});
  if (overlaps(dy, dbias)) check.fail("dbias overlaps dy");
  const std::int64_t rows = dy.size(0);
  const std::int64_t cols = dy.size(1);
  if (cols == 0) return;
  if (on_cuda(dy)) return gpu::bias_grad(cuda_index(dy), floats(dy), floats(dbias), rows, cols, accumulate);
  const float* g = floats(dy);
  float* db = floats(dbias);
  if (!accumulate) std::fill(db, db + cols, 0.0f);
  // Row by row: each column still sums rows 0..rows-1 in order, as on CUDA.
  for (std::int64_t i = 0; i < rows; ++i) {
    for (std::int64_t j = 0; j < cols; ++j) db[j] += g[i * cols + j];
  }
}

Tensor bias_grad(const Tensor& dy) {
  Checker("bias_grad").f32(dy, "dy").rank(dy, "dy", 2);
  Tensor out = empty_f32({dy.size(1)}, dy.device());
  bias_grad_into(dy, out, false);
  return out;
}

// ---- activations ----------------------------------------------------------------------

Tensor relu(const Tensor& x) {
  Checker("relu").f32(x, "x");
  Tensor y = empty_f32(x.shape(), x.device());
  const std::int64_t n = x.numel();
  if (n == 0) return y;
  if (on_cuda(x)) {
    gpu::relu(cuda_index(x), floats(x), floats(y), n);
    return y;
  }
  const float* in = floats(x);
  float* out = floats(y);
  for (std::int64_t i = 0; i < n; ++i) out[i] = in[i] > 0.0f ? in[i] : 0.0f;
  return y;
}

Tensor relu_backward(const Tensor& dy, const Tensor& x) {
  const Checker check("relu_backward");
  check.f32(x, "x").like(dy, "dy", x, "x");
  Tensor dx = empty_f32(x.shape(), x.device());
  const std::int64_t n = x.numel();
  if (n == 0) return dx;
  if (on_cuda(x)) {
    gpu::relu_backward(cuda_index(x), floats(dy), floats(x), floats(dx), n);
    return dx;
  }
  const float* g = floats(dy);
  const float* in = floats(x);
  float* out = floats(dx);
  for (std::int64_t i = 0; i < n; ++i) out[i] = in[i] > 0.0f ? g[i] : 0.0f;
  return dx;
}

Tensor gelu(const Tensor& x) {
  Checker("gelu").f32(x, "x");
  Tensor y = empty_f32(x.shape(), x.device());
  const std::int64_t n = x.numel();
  if (n == 0) return y;
  if (on_cuda(x)) {
    gpu::gelu(cuda_index(x), floats(x), floats(y), n);
    return y;
  }
  const float* in = floats(x);
  float* out = floats(y);
  for (std::int64_t i = 0; i < n; ++i) {
    const float v = in[i];
    const float t = std::tanh(kGeluSqrt2OverPi * (v + kGeluCubic * v * v * v));
    out[i] = 0.5f * v * (1.0f + t);
  }
  return y;
}

Tensor gelu_backward(const Tensor& dy, const Tensor& x) {
  const Checker check("gelu_backward");
  check.f32(x, "x").like(dy, "dy", x, "x");
  Tensor dx = empty_f32(x.shape(), x.device());
  const std::int64_t n = x.numel();
  if (n == 0) return dx;
  if (on_cuda(x)) {
    gpu::gelu_backward(cuda_index(x), floats(dy), floats(x), floats(dx), n);
    return dx;
  }
  const float* g = floats(dy);
  const float* in = floats(x);
  float* out = floats(dx);
  for (std::int64_t i = 0; i < n; ++i) {
    const float v = in[i];
    const float t = std::tanh(kGeluSqrt2OverPi * (v + kGeluCubic * v * v * v));
    const float derivative =
        0.5f * (1.0f + t) + 0.5f * v * (1.0f - t * t) * kGeluSqrt2OverPi * (1.0f + 3.0f * kGeluCubic * v * v);
    out[i] = g[i] * derivative;
  }
  return dx;
}

// ---- loss and metrics -------------------------------------------------------------------

CrossEntropyResult softmax_cross_entropy(const Tensor& logits, const Tensor& labels, CrossEntropyOptions options) {
  const Checker check("softmax_cross_entropy");
  check.f32(logits, "logits").rank(logits, "logits", 2).labels(labels, logits);
  const std::int64_t rows = logits.size(0);
  const std::int64_t cols = logits.size(1);
  if (cols < 1) check.fail("logits " + logits.to_string() + " has no classes");
  check.option(options.batch_size >= 0, "batch_size must be >= 0 (0: the rows of logits)");
  const std::int64_t batch_size = options.batch_size == 0 ? rows : options.batch_size;

  CrossEntropyResult result;
  result.dlogits = empty_f32(logits.shape(), logits.device());
  if (rows == 0) return result;
  const float divisor = static_cast<float>(batch_size);

  std::vector<float> row_losses(static_cast<std::size_t>(rows));
  if (on_cuda(logits)) {
    std::int64_t first_bad_row = -1;
    gpu::softmax_cross_entropy(cuda_index(logits), floats(logits), labels.raw_data(), labels.dtype() == DType::i64,
                               rows, cols, divisor, floats(result.dlogits), row_losses, first_bad_row);
    if (first_bad_row >= 0) {
      const Tensor host_labels = labels.slice(first_bad_row, first_bad_row + 1).to(Device::cpu());
      check.fail("labels[" + std::to_string(first_bad_row) + "] = " + std::to_string(host_label(host_labels, 0)) +
                 " is outside [0, " + std::to_string(cols) + ")");
    }
  } else {
    for (std::int64_t i = 0; i < rows; ++i) {
      const std::int64_t label = host_label(labels, i);
      if (label < 0 || label >= cols) {
        check.fail("labels[" + std::to_string(i) + "] = " + std::to_string(label) + " is outside [0, " +
                   std::to_string(cols) + ")");
      }
    }
    const float* x = floats(logits);
    float* d = floats(result.dlogits);
    for (std::int64_t i = 0; i < rows; ++i) {
      const float* row = x + i * cols;
      float* grad = d + i * cols;
      const std::int64_t label = host_label(labels, i);
      float row_max = row[0];
      for (std::int64_t j = 1; j < cols; ++j) row_max = std::max(row_max, row[j]);
      float sum = 0.0f;
      for (std::int64_t j = 0; j < cols; ++j) {
        grad[j] = std::exp(row[j] - row_max);
        sum += grad[j];
      }
      for (std::int64_t j = 0; j < cols; ++j) {
        grad[j] = (grad[j] / sum - (j == label ? 1.0f : 0.0f)) / divisor;
      }
      // -log softmax[label] = log(sum exp(x - max)) + max - x[label]
      row_losses[static_cast<std::size_t>(i)] = std::log(sum) + row_max - row[label];
    }
  }
  double total = 0.0;
  for (const float loss : row_losses) total += loss;
  result.loss = static_cast<float>(total / static_cast<double>(batch_size));
  return result;
}

Tensor argmax(const Tensor& logits) {
  const Checker check("argmax");
  check.f32(logits, "logits").rank(logits, "logits", 2);
  const std::int64_t rows = logits.size(0);
  const std::int64_t cols = logits.size(1);
  if (cols < 1) check.fail("logits " + logits.to_string() + " has no classes");
  Tensor out = Tensor::empty({rows}, DType::i64, logits.device());
  if (rows == 0) return out;
  if (on_cuda(logits)) {
    gpu::argmax(cuda_index(logits), floats(logits), rows, cols, static_cast<std::int64_t*>(out.raw_data()));
    return out;
  }
  const float* x = floats(logits);
  std::int64_t* index = out.data<std::int64_t>();
  for (std::int64_t i = 0; i < rows; ++i) index[i] = host_argmax(x + i * cols, cols);
  return out;
}

std::int64_t count_correct(const Tensor& logits, const Tensor& labels) {
  const Checker check("count_correct");
  check.f32(logits, "logits").rank(logits, "logits", 2).labels(labels, logits);
  // TODO(perf): compare on the device instead of copying both vectors back.
  const Tensor predicted = argmax(logits).to(Device::cpu());
  const Tensor host_labels = labels.to(Device::cpu());
  std::int64_t correct = 0;
  const std::int64_t* p = predicted.data<std::int64_t>();
  for (std::int64_t i = 0; i < predicted.numel(); ++i) {
    if (p[i] == host_label(host_labels, i)) ++correct;
  }
  return correct;
}

// ---- optimisers -----------------------------------------------------------------------------

void sgd_step(const Tensor& param, const Tensor& grad, const Tensor& velocity, const SgdOptions& options) {
  const Checker check("sgd_step");
  check.f32(param, "param").like(grad, "grad", param, "param");
  check.option(std::isfinite(options.lr) && options.lr >= 0.0f, "lr must be finite and >= 0");
  check.option(std::isfinite(options.momentum) && options.momentum >= 0.0f, "momentum must be finite and >= 0");
  check.option(std::isfinite(options.weight_decay) && options.weight_decay >= 0.0f,
               "weight_decay must be finite and >= 0");
  const bool momentum = options.momentum != 0.0f;
  if (momentum) {
    if (!velocity.defined()) check.fail("momentum " + std::to_string(options.momentum) + " needs a velocity tensor");
    check.like(velocity, "velocity", param, "param");
  }
  if (overlaps(param, grad)) check.fail("grad overlaps param");
  const std::int64_t n = param.numel();
  if (n == 0) return;
  if (on_cuda(param)) {
    return gpu::sgd(cuda_index(param), floats(param), floats(grad), momentum ? floats(velocity) : nullptr, n,
                    options.lr, options.momentum, options.weight_decay);
  }
  float* p = floats(param);
  const float* g = floats(grad);
  float* v = momentum ? floats(velocity) : nullptr;
  for (std::int64_t i = 0; i < n; ++i) {
    float step = g[i] + options.weight_decay * p[i];
    if (v != nullptr) {
      v[i] = options.momentum * v[i] + step;
      step = v[i];
    }
    p[i] -= options.lr * step;
  }
}

void adam_step(const Tensor& param, const Tensor& grad, const Tensor& m, const Tensor& v, std::int64_t step,
               const AdamOptions& options) {
  const Checker check("adam_step");
  check.f32(param, "param").like(grad, "grad", param, "param").like(m, "m", param, "param").like(v, "v", param, "param");
  check.option(step >= 1, "step must be >= 1 (the 1-based count including this step), got " + std::to_string(step));
  check.option(std::isfinite(options.lr) && options.lr >= 0.0f, "lr must be finite and >= 0");
  check.option(options.beta1 >= 0.0f && options.beta1 < 1.0f, "beta1 must be in [0, 1)");
  check.option(options.beta2 >= 0.0f && options.beta2 < 1.0f, "beta2 must be in [0, 1)");
  check.option(std::isfinite(options.eps) && options.eps > 0.0f, "eps must be finite and > 0");
  check.option(std::isfinite(options.weight_decay) && options.weight_decay >= 0.0f,
               "weight_decay must be finite and >= 0");
  if (overlaps(param, grad) || overlaps(param, m) || overlaps(param, v) || overlaps(m, v)) {
    check.fail("param, grad, m and v must not overlap");
  }
  const double bias_correction1 = 1.0 - std::pow(static_cast<double>(options.beta1), static_cast<double>(step));
  const double bias_correction2 = 1.0 - std::pow(static_cast<double>(options.beta2), static_cast<double>(step));
  const float step_size = static_cast<float>(static_cast<double>(options.lr) / bias_correction1);
  const float bias_correction2_sqrt = static_cast<float>(std::sqrt(bias_correction2));
  const std::int64_t n = param.numel();
  if (n == 0) return;
  if (on_cuda(param)) {
    return gpu::adam(cuda_index(param), floats(param), floats(grad), floats(m), floats(v), n, options.beta1,
                     options.beta2, options.eps, options.weight_decay, step_size, bias_correction2_sqrt);
  }
  float* p = floats(param);
  const float* g = floats(grad);
  float* m1 = floats(m);
  float* m2 = floats(v);
  const float beta1 = options.beta1;
  const float beta2 = options.beta2;
  for (std::int64_t i = 0; i < n; ++i) {
    const float gi = g[i] + options.weight_decay * p[i];
    m1[i] = beta1 * m1[i] + (1.0f - beta1) * gi;
    m2[i] = beta2 * m2[i] + (1.0f - beta2) * gi * gi;
    const float denom = std::sqrt(m2[i]) / bias_correction2_sqrt + options.eps;
    p[i] -= step_size * m1[i] / denom;
  }
}

// ---- helpers ------------------------------------------------------------------------------------

void fill_(const Tensor& t, float value) {
  Checker("fill_").f32(t, "t");
  const std::int64_t n = t.numel();
  if (n == 0) return;
  if (on_cuda(t)) return gpu::fill(cuda_index(t), floats(t), value, n);
  std::fill(floats(t), floats(t) + n, value);
}

void zero_(const Tensor& t) {
  Checker("zero_").f32(t, "t");
  fill_(t, 0.0f);
}

Tensor zeros_like(const Tensor& t) {
  Checker("zeros_like").f32(t, "t");
  Tensor out = empty_f32(t.shape(), t.device());
  fill_(out, 0.0f);
  return out;
}

void add_(const Tensor& dst, const Tensor& src, float alpha) {
  const Checker check("add_");
  check.f32(dst, "dst").like(src, "src", dst, "dst");
  if (overlaps(dst, src) && !same_view(dst, src)) check.fail("src partly overlaps dst");
  const std::int64_t n = dst.numel();
  if (n == 0) return;
  if (on_cuda(dst)) return gpu::axpy(cuda_index(dst), floats(dst), floats(src), alpha, n);
  float* d = floats(dst);
  const float* s = floats(src);
  for (std::int64_t i = 0; i < n; ++i) d[i] += alpha * s[i];
}

void scale_(const Tensor& t, float factor) {
  Checker("scale_").f32(t, "t");
  const std::int64_t n = t.numel();
  if (n == 0) return;
  if (on_cuda(t)) return gpu::scale(cuda_index(t), floats(t), factor, n);
  float* d = floats(t);
  for (std::int64_t i = 0; i < n; ++i) d[i] *= factor;
}

void uniform_(const Tensor& t, float bound, std::mt19937& generator) {
  const Checker check("uniform_");
  check.f32(t, "t").option(std::isfinite(bound) && bound >= 0.0f, "bound must be finite and >= 0");
  Tensor host = on_cuda(t) ? empty_f32(t.shape(), Device::cpu()) : t;
  float* out = floats(host);
  const double scale = static_cast<double>(bound);
  for (std::int64_t i = 0; i < t.numel(); ++i) {
    const std::uint32_t bits = static_cast<std::uint32_t>(generator()) >> 8;  // 24 bits
    // Exact in double: bits * 2^-23 - 1 is a multiple of 2^-23 in [-1, 1).
    out[i] = static_cast<float>((static_cast<double>(bits) * 0x1p-23 - 1.0) * scale);
  }
  if (on_cuda(t)) Tensor(t).copy_from(host);  // a view of t's bytes; cudaMemcpy waits
}

void uniform_(const Tensor& t, float bound, std::uint32_t seed) {
  std::mt19937 generator(seed);
  uniform_(t, bound, generator);
}

void synchronize(Device device) {
  if (device.is_cuda()) gpu::synchronize(device.index);
}

// ---- Linear -------------------------------------------------------------------------------------

Linear::Linear(std::int64_t in_features, std::int64_t out_features, std::uint32_t seed, Device device) {
  const Checker check("Linear");
  if (in_features < 1 || out_features < 1) {
    check.fail("in and out features must be >= 1, got " + std::to_string(in_features) + " and " +
               std::to_string(out_features));
  }
  const float bound = static_cast<float>(1.0 / std::sqrt(static_cast<double>(in_features)));
  std::mt19937 generator(seed);
  Tensor host_weight = empty_f32({in_features, out_features}, Device::cpu());
  Tensor host_bias = empty_f32({out_features}, Device::cpu());
  uniform_(host_weight, bound, generator);
  uniform_(host_bias, bound, generator);
  weight = host_weight.to(device);
  bias = host_bias.to(device);
  weight_grad = zeros_like(weight);
  bias_grad = zeros_like(bias);
}

Linear::Linear(Tensor weight_in, Tensor bias_in) : weight(std::move(weight_in)), bias(std::move(bias_in)) {
  const Checker check("Linear");
  check.f32(weight, "weight").rank(weight, "weight", 2);
  if (bias.defined()) check.f32(bias, "bias").same_device(bias, "bias", weight, "weight").shape(bias, "bias", {weight.size(1)});
  weight_grad = zeros_like(weight);
  if (bias.defined()) bias_grad = zeros_like(bias);
}

Tensor Linear::forward(const Tensor& x) {
  const Checker check("Linear::forward");
  check.f32(x, "x").rank(x, "x", 2).same_device(x, "x", weight, "weight");
  if (x.size(1) != in_features()) {
    check.fail("x is " + x.to_string() + "; expected " + std::to_string(in_features()) + " columns");
  }
  Tensor y = matmul(x, weight);
  if (bias.defined()) add_bias(y, bias);
  input_ = x;
  return y;
}

Tensor Linear::backward(const Tensor& dy) {
  if (!input_.defined()) Checker("Linear::backward").fail("no input: forward() was never called");
  return backward(input_, dy);
}

Tensor Linear::backward(const Tensor& x, const Tensor& dy) {
  const Checker check("Linear::backward");
  check.f32(x, "x").rank(x, "x", 2).same_device(x, "x", weight, "weight").shape(x, "x", {x.size(0), in_features()});
  check.f32(dy, "dy").same_device(dy, "dy", weight, "weight").shape(dy, "dy", {x.size(0), out_features()});
  matmul_into(x, dy, weight_grad, {.transpose_a = true, .accumulate = true});
  if (bias.defined()) bias_grad_into(dy, bias_grad, /*accumulate=*/true);
  return matmul(dy, weight, {.transpose_b = true});
}

void Linear::zero_grad() {
  zero_(weight_grad);
  if (bias.defined()) zero_(bias_grad);
}

void Linear::sgd_step(float lr) {
  kernels::sgd_step(weight, weight_grad, Tensor(), {.lr = lr});
  if (bias.defined()) kernels::sgd_step(bias, bias_grad, Tensor(), {.lr = lr});
}

int set_host_math_threads(int threads) {
  if (threads < 1) {
    throw_error(Errc::invalid_argument, "set_host_math_threads: threads must be >= 1, got " + std::to_string(threads));
  }
  const int previous = openblas_get_num_threads();
  openblas_set_num_threads(threads);
  return previous;
}

}  // namespace troupe::kernels
