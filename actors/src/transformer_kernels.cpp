// troupe::kernels for transformers (transformer_kernels.hpp): argument
// checks, the host kernels and dispatch of CUDA tensors to
// transformer_kernels_gpu.hpp. Host loops run in a fixed order.
#include "troupe/actors/transformer_kernels.hpp"

#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <string_view>
#include <vector>

#include "transformer_kernels_gpu.hpp"
#include "troupe/runtime/error.hpp"

namespace troupe::kernels {

namespace {

// Argument checks of one public function: Error(Errc::invalid_argument,
// "kernels::<op>: <what>"), as in kernels.cpp.
class Check {
 public:
  explicit Check(std::string_view op) : op_(op) {}

  [[noreturn]] void fail(const std::string& what) const {
    throw_error(Errc::invalid_argument, "kernels::" + std::string(op_) + ": " + what);
  }
  void that(bool ok, const std::string& what) const {
    if (!ok) fail(what);
  }
  // f32, defined, with `shape`, on `device`.
  void f32(const Tensor& t, std::string_view name, const Tensor::Shape& shape, Device device) const {
    if (!t.defined()) fail(std::string(name) + " is undefined");
    if (t.dtype() != DType::f32) fail(std::string(name) + " is " + t.to_string() + "; expected f32");
    if (t.shape() != shape) fail(std::string(name) + " is " + t.to_string() + "; expected shape " + shape_string(shape));
    if (t.device() != device) {
      fail(std::string(name) + " is on " + t.device().to_string() + ", expected " + device.to_string() +
           "; all tensors of one call must be on one device");
    }
  }
  void f32_2d(const Tensor& t, std::string_view name) const {
    if (!t.defined()) fail(std::string(name) + " is undefined");
    if (t.dtype() != DType::f32 || t.dim() != 2) fail(std::string(name) + " is " + t.to_string() + "; expected 2-D f32");
  }
  void tokens(const Tensor& t, Device device) const {
    if (!t.defined()) fail("tokens is undefined");
    if ((t.dtype() != DType::i32 && t.dtype() != DType::i64) || t.dim() != 2) {
      fail("tokens is " + t.to_string() + "; expected [batch, seq_len] i32 or i64");
    }
    if (t.device() != device) fail("tokens is on " + t.device().to_string() + ", expected " + device.to_string());
  }

  static std::string shape_string(const Tensor::Shape& shape) {
    std::string out = "[";
    for (std::size_t i = 0; i < shape.size(); ++i) out += (i > 0 ? ", " : "") + std::to_string(shape[i]);
    return out + "]";
  }

 private:
  std::string_view op_;
};

float* floats(const Tensor& t) { return static_cast<float*>(t.raw_data()); }
bool on_cuda(const Tensor& t) { return t.device().is_cuda(); }
Tensor empty_f32(Tensor::Shape shape, Device device) { return Tensor::empty(std::move(shape), DType::f32, device); }

std::int64_t token_at(const Tensor& tokens, std::int64_t i) {
  return tokens.dtype() == DType::i64 ? tokens.data<std::int64_t>()[i]
                                      : static_cast<std::int64_t>(tokens.data<std::int32_t>()[i]);
}

void check_attention_shape(const Check& check, const AttentionShape& s) {
  check.that(s.batch >= 0 && s.seq_len >= 0, "batch and seq_len must be >= 0");
  check.that(s.heads >= 1 && s.head_dim >= 1, "heads and head_dim must be >= 1");
  check.that(s.block >= 1, "block must be >= 1");
  check.that(3 * s.channels() <= std::numeric_limits<int>::max() && s.seq_len <= std::numeric_limits<int>::max(),
             "dimensions exceed INT_MAX (BLAS int)");
}

// Strided sgemm on row-major operands: C = alpha op(A) op(B) + beta C.
void sgemm(bool ta, bool tb, std::int64_t m, std::int64_t n, std::int64_t k, float alpha, const float* a,
           std::int64_t lda, const float* b, std::int64_t ldb, float beta, float* c, std::int64_t ldc) {
  cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, static_cast<int>(m),
              static_cast<int>(n), static_cast<int>(k), alpha, a, static_cast<int>(lda), b, static_cast<int>(ldb), beta,
              c, static_cast<int>(ldc));
}

}  // namespace

// ---- embedding ---------------------------------------------------------------------

Tensor embedding(const Tensor& tokens, const Tensor& token_table, const Tensor& position_table) {
  const Check check("embedding");
  check.f32_2d(token_table, "token_table");
  const Device device = token_table.device();
  check.tokens(tokens, device);
  check.f32_2d(position_table, "position_table");
  const std::int64_t batch = tokens.size(0);
  const std::int64_t seq_len = tokens.size(1);
  const std::int64_t vocab = token_table.size(0);
  const std::int64_t channels = token_table.size(1);
  check.f32(position_table, "position_table", {position_table.size(0), channels}, device);
  check.that(position_table.size(0) >= seq_len, "position_table " + position_table.to_string() + " has fewer than " +
                                                    std::to_string(seq_len) + " positions");
  Tensor out = empty_f32({batch * seq_len, channels}, device);
  if (out.numel() == 0) return out;
  if (on_cuda(out)) {
    const std::int64_t bad = gpu::embedding(device.index, tokens.raw_data(), tokens.dtype() == DType::i64,
                                            floats(token_table), floats(position_table), floats(out), batch, seq_len,
                                            vocab, channels);
    if (bad >= 0) {
      const Tensor row = tokens.reshape({batch * seq_len}).slice(bad, bad + 1).to(Device::cpu());
      check.fail("token " + std::to_string(bad) + " = " + std::to_string(token_at(row, 0)) + " is outside [0, " +
                 std::to_string(vocab) + ")");
    }
    return out;
  }
  const float* tok = floats(token_table);
  const float* pos = floats(position_table);
  float* y = floats(out);
  for (std::int64_t i = 0; i < batch * seq_len; ++i) {
    const std::int64_t id = token_at(tokens, i);
    if (id < 0 || id >= vocab) {
      check.fail("token " + std::to_string(i) + " = " + std::to_string(id) + " is outside [0, " +
                 std::to_string(vocab) + ")");
    }
    const float* a = tok + id * channels;
    const float* p = pos + (i % seq_len) * channels;
    for (std::int64_t c = 0; c < channels; ++c) y[i * channels + c] = a[c] + p[c];
  }
  return out;
}

void embedding_backward(const Tensor& tokens, const Tensor& dout, const Tensor& dtoken_table,
                        const Tensor& dposition_table) {
  const Check check("embedding_backward");
  check.f32_2d(dtoken_table, "dtoken_table");
  const Device device = dtoken_table.device();
  check.tokens(tokens, device);
  check.f32_2d(dposition_table, "dposition_table");
  const std::int64_t batch = tokens.size(0);
  const std::int64_t seq_len = tokens.size(1);
  const std::int64_t vocab = dtoken_table.size(0);
  const std::int64_t channels = dtoken_table.size(1);
  check.f32(dposition_table, "dposition_table", {dposition_table.size(0), channels}, device);
  check.that(dposition_table.size(0) >= seq_len, "dposition_table has fewer than seq_len positions");
  check.f32(dout, "dout", {batch * seq_len, channels}, device);
  if (dout.numel() == 0) return;
  if (on_cuda(dout)) {
    return gpu::embedding_backward(device.index, tokens.raw_data(), tokens.dtype() == DType::i64, floats(dout),
                                   floats(dtoken_table), floats(dposition_table), batch, seq_len, vocab, channels);
  }
  const float* g = floats(dout);
  float* dtok = floats(dtoken_table);
  float* dpos = floats(dposition_table);
  for (std::int64_t i = 0; i < batch * seq_len; ++i) {
    const std::int64_t id = token_at(tokens, i);
    const float* row = g + i * channels;
    float* p = dpos + (i % seq_len) * channels;
    for (std::int64_t c = 0; c < channels; ++c) p[c] += row[c];
    if (id < 0 || id >= vocab) continue;
    float* t = dtok + id * channels;
    for (std::int64_t c = 0; c < channels; ++c) t[c] += row[c];
  }
}

// ---- layer norm ---------------------------------------------------------------------

LayerNormResult layer_norm(const Tensor& x, const Tensor& gamma, const Tensor& beta, float eps) {
  const Check check("layer_norm");
  check.f32_2d(x, "x");
  const Device device = x.device();
  const std::int64_t rows = x.size(0);
  const std::int64_t cols = x.size(1);
  check.that(cols >= 1, "x " + x.to_string() + " has no columns");
  check.f32(gamma, "gamma", {cols}, device);
  check.f32(beta, "beta", {cols}, device);
  check.that(std::isfinite(eps) && eps > 0.0f, "eps must be finite and > 0");
  LayerNormResult r{empty_f32({rows, cols}, device), empty_f32({rows}, device), empty_f32({rows}, device)};
  if (rows == 0) return r;
  if (on_cuda(x)) {
    gpu::layer_norm(device.index, floats(x), floats(gamma), floats(beta), floats(r.y), floats(r.mean), floats(r.rstd),
                    rows, cols, eps);
    return r;
  }
  const float* in = floats(x);
  const float* g = floats(gamma);
  const float* b = floats(beta);
  float* y = floats(r.y);
  for (std::int64_t i = 0; i < rows; ++i) {
    const float* row = in + i * cols;
    double sum = 0.0;
    for (std::int64_t c = 0; c < cols; ++c) sum += row[c];
    const double mean = sum / static_cast<double>(cols);
    double var = 0.0;
    for (std::int64_t c = 0; c < cols; ++c) var += (row[c] - mean) * (row[c] - mean);
    var /= static_cast<double>(cols);
    const float m = static_cast<float>(mean);
    const float rstd = static_cast<float>(1.0 / std::sqrt(var + static_cast<double>(eps)));
    floats(r.mean)[i] = m;
    floats(r.rstd)[i] = rstd;
    for (std::int64_t c = 0; c < cols; ++c) y[i * cols + c] = (row[c] - m) * rstd * g[c] + b[c];
  }
  return r;
}

Tensor layer_norm_backward(const Tensor& dy, const Tensor& x, const Tensor& gamma, const Tensor& mean,
                           const Tensor& rstd, const Tensor& dgamma, const Tensor& dbeta) {
  const Check check("layer_norm_backward");
  check.f32_2d(x, "x");
  const Device device = x.device();
  const std::int64_t rows = x.size(0);
  const std::int64_t cols = x.size(1);
  check.f32(dy, "dy", {rows, cols}, device);
  check.f32(gamma, "gamma", {cols}, device);
  check.f32(mean, "mean", {rows}, device);
  check.f32(rstd, "rstd", {rows}, device);
  check.f32(dgamma, "dgamma", {cols}, device);
  check.f32(dbeta, "dbeta", {cols}, device);
  Tensor dx = empty_f32({rows, cols}, device);
  if (rows == 0 || cols == 0) return dx;
  if (on_cuda(x)) {
    gpu::layer_norm_backward(device.index, floats(dy), floats(x), floats(gamma), floats(mean), floats(rstd),
                             floats(dx), floats(dgamma), floats(dbeta), rows, cols);
    return dx;
  }
  const float* g = floats(gamma);
  float* dg = floats(dgamma);
  float* db = floats(dbeta);
  for (std::int64_t i = 0; i < rows; ++i) {
    const float* xr = floats(x) + i * cols;
    const float* dyr = floats(dy) + i * cols;
    float* dxr = floats(dx) + i * cols;
    const float m = floats(mean)[i];
    const float rs = floats(rstd)[i];
    // dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)), dxhat = dy * gamma.
    double sum_dxhat = 0.0;
    double sum_dxhat_xhat = 0.0;
    for (std::int64_t c = 0; c < cols; ++c) {
      const float xhat = (xr[c] - m) * rs;
      const float dxhat = dyr[c] * g[c];
      sum_dxhat += dxhat;
      sum_dxhat_xhat += static_cast<double>(dxhat) * xhat;
      dg[c] += dyr[c] * xhat;
      db[c] += dyr[c];
    }
    const float mean_dxhat = static_cast<float>(sum_dxhat / static_cast<double>(cols));
    const float mean_dxhat_xhat = static_cast<float>(sum_dxhat_xhat / static_cast<double>(cols));
    for (std::int64_t c = 0; c < cols; ++c) {
      const float xhat = (xr[c] - m) * rs;
      dxr[c] = rs * (dyr[c] * g[c] - mean_dxhat - xhat * mean_dxhat_xhat);
    }
  }
  return dx;
}

// ---- causal attention ---------------------------------------------------------------

AttentionResult causal_attention(const Tensor& qkv, const AttentionShape& s) {
  const Check check("causal_attention");
  check_attention_shape(check, s);
  const Device device = qkv.device();
  const std::int64_t C = s.channels();
  const std::int64_t T = s.seq_len;
  const std::int64_t D = s.head_dim;
  check.f32(qkv, "qkv", {s.batch * T, 3 * C}, device);
  AttentionResult r{empty_f32({s.batch * T, C}, device), empty_f32({s.batch, s.heads, T}, device)};
  if (s.batch * T == 0) return r;
  if (on_cuda(qkv)) {
    gpu::causal_attention(device.index, floats(qkv), floats(r.out), floats(r.lse), s.batch, T, s.heads, D);
    return r;
  }
  const std::int64_t ld = 3 * C;
  const std::int64_t block = std::min(s.block, T);
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(D)));
  std::vector<float> scores(static_cast<std::size_t>(block * block));
  std::vector<float> row_max(static_cast<std::size_t>(block));
  std::vector<float> row_sum(static_cast<std::size_t>(block));
  for (std::int64_t b = 0; b < s.batch; ++b) {
    for (std::int64_t h = 0; h < s.heads; ++h) {
      const float* q = floats(qkv) + b * T * ld + h * D;
      const float* k = q + C;
      const float* v = q + 2 * C;
      float* o = floats(r.out) + b * T * C + h * D;
      float* lse = floats(r.lse) + (b * s.heads + h) * T;
      for (std::int64_t i0 = 0; i0 < T; i0 += block) {
        const std::int64_t nq = std::min(block, T - i0);
        std::fill(row_max.begin(), row_max.end(), -std::numeric_limits<float>::infinity());
        std::fill(row_sum.begin(), row_sum.end(), 0.0f);
        for (std::int64_t r0 = 0; r0 < nq; ++r0) std::fill(o + (i0 + r0) * C, o + (i0 + r0) * C + D, 0.0f);
        for (std::int64_t j0 = 0; j0 < i0 + nq; j0 += block) {
          const std::int64_t nk = std::min(block, i0 + nq - j0);
          sgemm(false, true, nq, nk, D, scale, q + i0 * ld, ld, k + j0 * ld, ld, 0.0f, scores.data(), nk);
          for (std::int64_t r0 = 0; r0 < nq; ++r0) {
            const std::int64_t i = i0 + r0;
            const std::int64_t valid = std::min(nk, i - j0 + 1);  // keys j0..i of this block; >= 1 since j0 <= i0
            float* srow = scores.data() + r0 * nk;
            float block_max = srow[0];
            for (std::int64_t c = 1; c < valid; ++c) block_max = std::max(block_max, srow[c]);
            const float new_max = std::max(row_max[r0], block_max);
            const float correction = std::exp(row_max[r0] - new_max);  // exp(-inf) = 0 on the first block
            float sum = 0.0f;
            for (std::int64_t c = 0; c < nk; ++c) {
              srow[c] = c < valid ? std::exp(srow[c] - new_max) : 0.0f;
              sum += srow[c];
            }
            row_sum[r0] = row_sum[r0] * correction + sum;
            row_max[r0] = new_max;
            if (correction != 1.0f) {
              for (std::int64_t d = 0; d < D; ++d) o[i * C + d] *= correction;
            }
          }
          sgemm(false, false, nq, D, nk, 1.0f, scores.data(), nk, v + j0 * ld, ld, 1.0f, o + i0 * C, C);
        }
        for (std::int64_t r0 = 0; r0 < nq; ++r0) {
          const std::int64_t i = i0 + r0;
          const float inv = 1.0f / row_sum[r0];
          for (std::int64_t d = 0; d < D; ++d) o[i * C + d] *= inv;
          lse[i] = row_max[r0] + std::log(row_sum[r0]);
        }
      }
    }
  }
  return r;
}

Tensor causal_attention_backward(const Tensor& dout, const Tensor& qkv, const Tensor& out, const Tensor& lse,
                                 const AttentionShape& s) {
  const Check check("causal_attention_backward");
  check_attention_shape(check, s);
  const Device device = qkv.device();
  const std::int64_t C = s.channels();
  const std::int64_t T = s.seq_len;
  const std::int64_t D = s.head_dim;
  check.f32(qkv, "qkv", {s.batch * T, 3 * C}, device);
  check.f32(dout, "dout", {s.batch * T, C}, device);
  check.f32(out, "out", {s.batch * T, C}, device);
  check.f32(lse, "lse", {s.batch, s.heads, T}, device);
  Tensor dqkv = empty_f32({s.batch * T, 3 * C}, device);
  if (s.batch * T == 0) return dqkv;
  if (on_cuda(qkv)) {
    gpu::causal_attention_backward(device.index, floats(dout), floats(qkv), floats(out), floats(lse), floats(dqkv),
                                   s.batch, T, s.heads, D);
    return dqkv;
  }
  std::fill(floats(dqkv), floats(dqkv) + dqkv.numel(), 0.0f);
  const std::int64_t ld = 3 * C;
  const std::int64_t block = std::min(s.block, T);
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(D)));
  std::vector<float> p(static_cast<std::size_t>(block * block));
  std::vector<float> dp(static_cast<std::size_t>(block * block));
  std::vector<float> delta(static_cast<std::size_t>(T));
  for (std::int64_t b = 0; b < s.batch; ++b) {
    for (std::int64_t h = 0; h < s.heads; ++h) {
      const float* q = floats(qkv) + b * T * ld + h * D;
      const float* k = q + C;
      const float* v = q + 2 * C;
      float* dq = floats(dqkv) + b * T * ld + h * D;
      float* dk = dq + C;
      float* dv = dq + 2 * C;
      const float* o = floats(out) + b * T * C + h * D;
      const float* dO = floats(dout) + b * T * C + h * D;
      const float* row_lse = floats(lse) + (b * s.heads + h) * T;
      // delta_i = sum_d dO_i o_i = sum_j P_ij dP_ij: the softmax backward's row term.
      for (std::int64_t i = 0; i < T; ++i) {
        float sum = 0.0f;
        for (std::int64_t d = 0; d < D; ++d) sum += dO[i * C + d] * o[i * C + d];
        delta[static_cast<std::size_t>(i)] = sum;
      }
      for (std::int64_t i0 = 0; i0 < T; i0 += block) {
        const std::int64_t nq = std::min(block, T - i0);
        for (std::int64_t j0 = 0; j0 < i0 + nq; j0 += block) {
          const std::int64_t nk = std::min(block, i0 + nq - j0);
          sgemm(false, true, nq, nk, D, scale, q + i0 * ld, ld, k + j0 * ld, ld, 0.0f, p.data(), nk);
          sgemm(false, true, nq, nk, D, 1.0f, dO + i0 * C, C, v + j0 * ld, ld, 0.0f, dp.data(), nk);
          for (std::int64_t r0 = 0; r0 < nq; ++r0) {
            const std::int64_t i = i0 + r0;
            const std::int64_t valid = std::min(nk, i - j0 + 1);
            for (std::int64_t c = 0; c < nk; ++c) {
              const std::size_t at = static_cast<std::size_t>(r0 * nk + c);
              p[at] = c < valid ? std::exp(p[at] - row_lse[i]) : 0.0f;
              dp[at] = p[at] * (dp[at] - delta[static_cast<std::size_t>(i)]);  // dS
            }
          }
          sgemm(true, false, nk, D, nq, 1.0f, p.data(), nk, dO + i0 * C, C, 1.0f, dv + j0 * ld, ld);
          sgemm(false, false, nq, D, nk, scale, dp.data(), nk, k + j0 * ld, ld, 1.0f, dq + i0 * ld, ld);
          sgemm(true, false, nk, D, nq, scale, dp.data(), nk, q + i0 * ld, ld, 1.0f, dk + j0 * ld, ld);
        }
      }
    }
  }
  return dqkv;
}

// ---- AdamW and clipping ---------------------------------------------------------------

void adamw_step(const Tensor& param, const Tensor& grad, const Tensor& m, const Tensor& v, std::int64_t step,
                const AdamWOptions& options) {
  const Check check("adamw_step");
  // Everything adam_step would reject is rejected here first, so a bad call
  // leaves param undecayed.
  check.that(std::isfinite(options.weight_decay) && options.weight_decay >= 0.0f,
             "option weight_decay must be finite and >= 0");
  check.that(std::isfinite(options.lr) && options.lr >= 0.0f, "option lr must be finite and >= 0");
  check.that(options.beta1 >= 0.0f && options.beta1 < 1.0f && options.beta2 >= 0.0f && options.beta2 < 1.0f,
             "options beta1 and beta2 must be in [0, 1)");
  check.that(std::isfinite(options.eps) && options.eps > 0.0f, "option eps must be finite and > 0");
  check.that(step >= 1, "step must be >= 1 (the 1-based count including this step)");
  check.that(param.defined() && param.dtype() == DType::f32, "param must be a defined f32 tensor");
  check.f32(grad, "grad", param.shape(), param.device());
  check.f32(m, "m", param.shape(), param.device());
  check.f32(v, "v", param.shape(), param.device());
  const AdamOptions adam{.lr = options.lr, .beta1 = options.beta1, .beta2 = options.beta2, .eps = options.eps,
                         .weight_decay = 0.0f};
  if (options.weight_decay != 0.0f && options.lr != 0.0f) scale_(param, 1.0f - options.lr * options.weight_decay);
  adam_step(param, grad, m, v, step, adam);
}

double global_norm(std::span<const Tensor> tensors) {
  const Check check("global_norm");
  double sum = 0.0;
  for (std::size_t i = 0; i < tensors.size(); ++i) {
    const Tensor& t = tensors[i];
    if (!t.defined() || t.dtype() != DType::f32) check.fail("tensor " + std::to_string(i) + " is not a defined f32 tensor");
    if (i > 0 && t.device() != tensors[0].device()) check.fail("tensors must be on one device");
    if (t.numel() == 0) continue;
    if (on_cuda(t)) {
      sum += gpu::sum_of_squares(t.device().index, floats(t), t.numel());
      continue;
    }
    const float* p = floats(t);
    for (std::int64_t k = 0; k < t.numel(); ++k) sum += static_cast<double>(p[k]) * p[k];
  }
  return std::sqrt(sum);
}

double clip_grad_norm_(std::span<const Tensor> grads, double max_norm) {
  Check("clip_grad_norm_").that(std::isfinite(max_norm) && max_norm > 0.0, "max_norm must be finite and > 0");
  const double norm = global_norm(grads);
  if (norm > max_norm) {
    const float factor = static_cast<float>(max_norm / (norm + 1e-6));
    for (const Tensor& g : grads) scale_(g, factor);
  }
  return norm;
}

}  // namespace troupe::kernels
