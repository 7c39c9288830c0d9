// The CUDA half of transformer_kernels.hpp (see transformer_kernels_gpu.hpp).
// Only built with CUDA. Straightforward kernels, one thread per row (or per
// column for parameter gradients), reducing in a fixed order; attention runs
// one thread per (sequence, head, query) with the online softmax, so no
// scores are ever stored. TODO(perf): tiled shared-memory attention and
// warp-per-row layer norm when GPU throughput matters.
#include "transformer_kernels_gpu.hpp"

#include <cuda_runtime_api.h>

#include <cmath>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "troupe/runtime/cuda.hpp"

namespace troupe::kernels::gpu {

namespace {

constexpr unsigned kThreads = 256;
constexpr std::uint64_t kMaxBlocks = 4096;
constexpr cudaStream_t kStream = 0;  // the legacy default stream, as kernels_gpu.cu

unsigned blocks_for(std::int64_t threads_wanted) {
  const std::uint64_t wanted = (static_cast<std::uint64_t>(threads_wanted) + kThreads - 1) / kThreads;
  return static_cast<unsigned>(wanted < kMaxBlocks ? (wanted == 0 ? 1 : wanted) : kMaxBlocks);
}

void check_launch(std::string_view kernel) { cuda::check(cudaGetLastError(), std::string(kernel) + " launch"); }

struct DeviceFree {
  void operator()(void* p) const noexcept { (void)cudaFree(p); }
};
using DeviceBuffer = std::unique_ptr<void, DeviceFree>;
struct StreamFree {
  void operator()(void* p) const noexcept { (void)cudaFreeAsync(p, kStream); }
};

DeviceBuffer device_alloc(std::size_t nbytes, std::string_view what) {
  void* p = nullptr;
  cuda::check(cudaMalloc(&p, nbytes), "cudaMalloc (" + std::string(what) + ")");
  return DeviceBuffer(p);
}

__device__ inline std::int64_t global_index() {
  return static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
}
__device__ inline std::int64_t grid_stride() { return static_cast<std::int64_t>(gridDim.x) * blockDim.x; }

template <class Token>
__global__ void embedding_kernel(const Token* tokens, const float* tok, const float* pos, float* out,
                                 std::int64_t rows, std::int64_t seq_len, std::int64_t vocab, std::int64_t channels,
                                 unsigned long long* bad) {
  const std::int64_t count = rows * channels;
  for (std::int64_t k = global_index(); k < count; k += grid_stride()) {
    const std::int64_t i = k / channels;
    const std::int64_t c = k % channels;
    const std::int64_t id = static_cast<std::int64_t>(tokens[i]);
    float value = pos[(i % seq_len) * channels + c];
    if (id < 0 || id >= vocab) {
      atomicMin(bad, static_cast<unsigned long long>(i));
    } else {
      value += tok[id * channels + c];
    }
    out[k] = value;
  }
}

template <class Token>
__global__ void embedding_token_grad_kernel(const Token* tokens, const float* dout, float* dtok, std::int64_t rows,
                                            std::int64_t vocab, std::int64_t channels) {
  const std::int64_t count = rows * channels;
  for (std::int64_t k = global_index(); k < count; k += grid_stride()) {
    const std::int64_t id = static_cast<std::int64_t>(tokens[k / channels]);
    if (id >= 0 && id < vocab) atomicAdd(&dtok[id * channels + k % channels], dout[k]);
  }
}

// One thread per (position, channel), sequences summed in order.
__global__ void embedding_position_grad_kernel(const float* dout, float* dpos, std::int64_t batch,
                                               std::int64_t seq_len, std::int64_t channels) {
  const std::int64_t count = seq_len * channels;
  for (std::int64_t k = global_index(); k < count; k += grid_stride()) {
    float sum = dpos[k];
    for (std::int64_t b = 0; b < batch; ++b) sum += dout[b * count + k];
    dpos[k] = sum;
  }
}

__global__ void layer_norm_kernel(const float* x, const float* gamma, const float* beta, float* y, float* mean_out,
                                  float* rstd_out, std::int64_t rows, std::int64_t cols, float eps) {
  for (std::int64_t i = global_index(); i < rows; i += grid_stride()) {
    const float* row = x + i * cols;
    double sum = 0.0;
    for (std::int64_t c = 0; c < cols; ++c) sum += row[c];
    const double mean = sum / static_cast<double>(cols);
    double var = 0.0;
    for (std::int64_t c = 0; c < cols; ++c) var += (row[c] - mean) * (row[c] - mean);
    var /= static_cast<double>(cols);
    const float m = static_cast<float>(mean);
    const float rstd = static_cast<float>(1.0 / sqrt(var + static_cast<double>(eps)));
    mean_out[i] = m;
    rstd_out[i] = rstd;
    for (std::int64_t c = 0; c < cols; ++c) y[i * cols + c] = (row[c] - m) * rstd * gamma[c] + beta[c];
  }
}

__global__ void layer_norm_dx_kernel(const float* dy, const float* x, const float* gamma, const float* mean,
                                     const float* rstd, float* dx, std::int64_t rows, std::int64_t cols) {
  for (std::int64_t i = global_index(); i < rows; i += grid_stride()) {
    const float* xr = x + i * cols;
    const float* dyr = dy + i * cols;
    const float m = mean[i];
    const float rs = rstd[i];
    double sum_dxhat = 0.0;
    double sum_dxhat_xhat = 0.0;
    for (std::int64_t c = 0; c < cols; ++c) {
      const float xhat = (xr[c] - m) * rs;
      const float dxhat = dyr[c] * gamma[c];
      sum_dxhat += dxhat;
      sum_dxhat_xhat += static_cast<double>(dxhat) * xhat;
    }
    const float mean_dxhat = static_cast<float>(sum_dxhat / static_cast<double>(cols));
    const float mean_dxhat_xhat = static_cast<float>(sum_dxhat_xhat / static_cast<double>(cols));
    for (std::int64_t c = 0; c < cols; ++c) {
      const float xhat = (xr[c] - m) * rs;
      dx[i * cols + c] = rs * (dyr[c] * gamma[c] - mean_dxhat - xhat * mean_dxhat_xhat);
    }
  }
}

__global__ void layer_norm_param_grad_kernel(const float* dy, const float* x, const float* mean, const float* rstd,
                                             float* dgamma, float* dbeta, std::int64_t rows, std::int64_t cols) {
  for (std::int64_t c = global_index(); c < cols; c += grid_stride()) {
    float dg = dgamma[c];
    float db = dbeta[c];
    for (std::int64_t i = 0; i < rows; ++i) {
      const float g = dy[i * cols + c];
      dg += g * ((x[i * cols + c] - mean[i]) * rstd[i]);
      db += g;
    }
    dgamma[c] = dg;
    dbeta[c] = db;
  }
}

struct AttentionDims {
  std::int64_t batch, seq_len, heads, head_dim;
  __device__ std::int64_t channels() const { return heads * head_dim; }
};

__device__ inline float dot(const float* a, const float* b, std::int64_t n) {
  float sum = 0.0f;
  for (std::int64_t d = 0; d < n; ++d) sum += a[d] * b[d];
  return sum;
}

// One thread per (b, h, query i): online softmax over keys 0..i.
__global__ void attention_forward_kernel(const float* qkv, float* out, float* lse, AttentionDims s, float scale) {
  const std::int64_t C = s.channels();
  const std::int64_t D = s.head_dim;
  const std::int64_t count = s.batch * s.heads * s.seq_len;
  for (std::int64_t k = global_index(); k < count; k += grid_stride()) {
    const std::int64_t i = k % s.seq_len;
    const std::int64_t h = (k / s.seq_len) % s.heads;
    const std::int64_t b = k / (s.seq_len * s.heads);
    const float* base = qkv + b * s.seq_len * 3 * C + h * D;
    const float* q = base + i * 3 * C;
    float* o = out + (b * s.seq_len + i) * C + h * D;
    for (std::int64_t d = 0; d < D; ++d) o[d] = 0.0f;
    float row_max = -INFINITY;
    float row_sum = 0.0f;
    for (std::int64_t j = 0; j <= i; ++j) {
      const float score = dot(q, base + j * 3 * C + C, D) * scale;
      const float new_max = fmaxf(row_max, score);
      const float correction = expf(row_max - new_max);
      const float p = expf(score - new_max);
      row_sum = row_sum * correction + p;
      const float* v = base + j * 3 * C + 2 * C;
      for (std::int64_t d = 0; d < D; ++d) o[d] = o[d] * correction + p * v[d];
      row_max = new_max;
    }
    const float inv = 1.0f / row_sum;
    for (std::int64_t d = 0; d < D; ++d) o[d] *= inv;
    lse[k] = row_max + logf(row_sum);  // lse is [B, H, T]: index k
  }
}

__global__ void attention_delta_kernel(const float* dout, const float* out, float* delta, AttentionDims s) {
  const std::int64_t C = s.channels();
  const std::int64_t count = s.batch * s.heads * s.seq_len;
  for (std::int64_t k = global_index(); k < count; k += grid_stride()) {
    const std::int64_t i = k % s.seq_len;
    const std::int64_t h = (k / s.seq_len) % s.heads;
    const std::int64_t b = k / (s.seq_len * s.heads);
    const std::int64_t at = (b * s.seq_len + i) * C + h * s.head_dim;
    delta[k] = dot(dout + at, out + at, s.head_dim);
  }
}

// One thread per (b, h, query i): dq_i = scale * sum_{j <= i} dS_ij k_j.
__global__ void attention_dq_kernel(const float* dout, const float* qkv, const float* lse, const float* delta,
                                    float* dqkv, AttentionDims s, float scale) {
  const std::int64_t C = s.channels();
  const std::int64_t D = s.head_dim;
  const std::int64_t count = s.batch * s.heads * s.seq_len;
  for (std::int64_t k = global_index(); k < count; k += grid_stride()) {
    const std::int64_t i = k % s.seq_len;
    const std::int64_t h = (k / s.seq_len) % s.heads;
    const std::int64_t b = k / (s.seq_len * s.heads);
    const float* base = qkv + b * s.seq_len * 3 * C + h * D;
    const float* q = base + i * 3 * C;
    const float* dO = dout + (b * s.seq_len + i) * C + h * D;
    float* dq = dqkv + (b * s.seq_len + i) * 3 * C + h * D;
    for (std::int64_t d = 0; d < D; ++d) dq[d] = 0.0f;
    for (std::int64_t j = 0; j <= i; ++j) {
      const float* kj = base + j * 3 * C + C;
      const float p = expf(dot(q, kj, D) * scale - lse[k]);
      const float ds = p * (dot(dO, base + j * 3 * C + 2 * C, D) - delta[k]);
      for (std::int64_t d = 0; d < D; ++d) dq[d] += scale * ds * kj[d];
    }
  }
}

// One thread per (b, h, key j): dv_j = sum_{i >= j} P_ij dO_i, dk_j = scale * sum_{i >= j} dS_ij q_i.
__global__ void attention_dkdv_kernel(const float* dout, const float* qkv, const float* lse, const float* delta,
                                      float* dqkv, AttentionDims s, float scale) {
  const std::int64_t C = s.channels();
  const std::int64_t D = s.head_dim;
  const std::int64_t count = s.batch * s.heads * s.seq_len;
  for (std::int64_t k = global_index(); k < count; k += grid_stride()) {
    const std::int64_t j = k % s.seq_len;
    const std::int64_t h = (k / s.seq_len) % s.heads;
    const std::int64_t b = k / (s.seq_len * s.heads);
    const std::int64_t row0 = k - j;  // index of (b, h, 0) in lse and delta
    const float* base = qkv + b * s.seq_len * 3 * C + h * D;
    const float* kj = base + j * 3 * C + C;
    const float* vj = base + j * 3 * C + 2 * C;
    float* dk = dqkv + (b * s.seq_len + j) * 3 * C + C + h * D;
    float* dv = dk + C;
    for (std::int64_t d = 0; d < D; ++d) dk[d] = dv[d] = 0.0f;
    for (std::int64_t i = j; i < s.seq_len; ++i) {
      const float* q = base + i * 3 * C;
      const float* dO = dout + (b * s.seq_len + i) * C + h * D;
      const float p = expf(dot(q, kj, D) * scale - lse[row0 + i]);
      const float ds = p * (dot(dO, vj, D) - delta[row0 + i]);
      for (std::int64_t d = 0; d < D; ++d) {
        dv[d] += p * dO[d];
        dk[d] += scale * ds * q[d];
      }
    }
  }
}

// One block: per-thread strided sums, then a fixed-order tree.
__global__ void sum_of_squares_kernel(const float* t, std::int64_t count, double* result) {
  __shared__ double partial[kThreads];
  double sum = 0.0;
  for (std::int64_t k = threadIdx.x; k < count; k += blockDim.x) sum += static_cast<double>(t[k]) * t[k];
  partial[threadIdx.x] = sum;
  __syncthreads();
  for (unsigned half = blockDim.x / 2; half > 0; half /= 2) {
    if (threadIdx.x < half) partial[threadIdx.x] += partial[threadIdx.x + half];
    __syncthreads();
  }
  if (threadIdx.x == 0) *result = partial[0];
}

}  // namespace

std::int64_t embedding(int device, const void* tokens, bool tokens_i64, const float* token_table,
                       const float* position_table, float* out, std::int64_t batch, std::int64_t seq_len,
                       std::int64_t vocab, std::int64_t channels) {
  cuda::DeviceGuard guard(device);
  DeviceBuffer scratch = device_alloc(sizeof(unsigned long long), "embedding bad token");
  auto* bad = static_cast<unsigned long long*>(scratch.get());
  cuda::check(cudaMemsetAsync(bad, 0xff, sizeof(unsigned long long), kStream), "cudaMemsetAsync");
  const std::int64_t rows = batch * seq_len;
  const unsigned blocks = blocks_for(rows * channels);
  if (tokens_i64) {
    embedding_kernel<<<blocks, kThreads, 0, kStream>>>(static_cast<const std::int64_t*>(tokens), token_table,
                                                       position_table, out, rows, seq_len, vocab, channels, bad);
  } else {
    embedding_kernel<<<blocks, kThreads, 0, kStream>>>(static_cast<const std::int32_t*>(tokens), token_table,
                                                       position_table, out, rows, seq_len, vocab, channels, bad);
  }
  check_launch("embedding_kernel");
  unsigned long long host_bad = 0;
  cuda::check(cudaMemcpy(&host_bad, bad, sizeof(host_bad), cudaMemcpyDeviceToHost), "cudaMemcpy (bad token)");
  return host_bad == ~0ull ? -1 : static_cast<std::int64_t>(host_bad);
}

void embedding_backward(int device, const void* tokens, bool tokens_i64, const float* dout, float* dtoken_table,
                        float* dposition_table, std::int64_t batch, std::int64_t seq_len, std::int64_t vocab,
                        std::int64_t channels) {
  cuda::DeviceGuard guard(device);
  const std::int64_t rows = batch * seq_len;
  const unsigned blocks = blocks_for(rows * channels);
  if (tokens_i64) {
    embedding_token_grad_kernel<<<blocks, kThreads, 0, kStream>>>(static_cast<const std::int64_t*>(tokens), dout,
                                                                  dtoken_table, rows, vocab, channels);
  } else {
    embedding_token_grad_kernel<<<blocks, kThreads, 0, kStream>>>(static_cast<const std::int32_t*>(tokens), dout,
                                                                  dtoken_table, rows, vocab, channels);
  }
  check_launch("embedding_token_grad_kernel");
  embedding_position_grad_kernel<<<blocks_for(seq_len * channels), kThreads, 0, kStream>>>(dout, dposition_table,
                                                                                           batch, seq_len, channels);
  check_launch("embedding_position_grad_kernel");
}

void layer_norm(int device, const float* x, const float* gamma, const float* beta, float* y, float* mean,
                float* rstd, std::int64_t rows, std::int64_t cols, float eps) {
  cuda::DeviceGuard guard(device);
  layer_norm_kernel<<<blocks_for(rows), kThreads, 0, kStream>>>(x, gamma, beta, y, mean, rstd, rows, cols, eps);
  check_launch("layer_norm_kernel");
}

void layer_norm_backward(int device, const float* dy, const float* x, const float* gamma, const float* mean,
                         const float* rstd, float* dx, float* dgamma, float* dbeta, std::int64_t rows,
                         std::int64_t cols) {
  cuda::DeviceGuard guard(device);
  layer_norm_dx_kernel<<<blocks_for(rows), kThreads, 0, kStream>>>(dy, x, gamma, mean, rstd, dx, rows, cols);
  check_launch("layer_norm_dx_kernel");
  layer_norm_param_grad_kernel<<<blocks_for(cols), kThreads, 0, kStream>>>(dy, x, mean, rstd, dgamma, dbeta, rows,
                                                                           cols);
  check_launch("layer_norm_param_grad_kernel");
}

void causal_attention(int device, const float* qkv, float* out, float* lse, std::int64_t batch, std::int64_t seq_len,
                      std::int64_t heads, std::int64_t head_dim) {
  cuda::DeviceGuard guard(device);
  const AttentionDims s{batch, seq_len, heads, head_dim};
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(head_dim)));
  attention_forward_kernel<<<blocks_for(batch * heads * seq_len), kThreads, 0, kStream>>>(qkv, out, lse, s, scale);
  check_launch("attention_forward_kernel");
}

void causal_attention_backward(int device, const float* dout, const float* qkv, const float* out, const float* lse,
                               float* dqkv, std::int64_t batch, std::int64_t seq_len, std::int64_t heads,
                               std::int64_t head_dim) {
  cuda::DeviceGuard guard(device);
  const AttentionDims s{batch, seq_len, heads, head_dim};
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(head_dim)));
  const std::int64_t rows = batch * heads * seq_len;
  // Allocated and freed in stream order (cudaMallocAsync / cudaFreeAsync on
  // the legacy stream), so the free follows the kernels that read it and
  // nothing here waits.
  void* delta_memory = nullptr;
  cuda::check(cudaMallocAsync(&delta_memory, static_cast<std::size_t>(rows) * sizeof(float), kStream),
              "cudaMallocAsync (attention delta)");
  const std::unique_ptr<void, StreamFree> delta_buffer(delta_memory);
  auto* delta = static_cast<float*>(delta_memory);
  attention_delta_kernel<<<blocks_for(rows), kThreads, 0, kStream>>>(dout, out, delta, s);
  check_launch("attention_delta_kernel");
  attention_dq_kernel<<<blocks_for(rows), kThreads, 0, kStream>>>(dout, qkv, lse, delta, dqkv, s, scale);
  check_launch("attention_dq_kernel");
  attention_dkdv_kernel<<<blocks_for(rows), kThreads, 0, kStream>>>(dout, qkv, lse, delta, dqkv, s, scale);
  check_launch("attention_dkdv_kernel");
}

double sum_of_squares(int device, const float* t, std::int64_t count) {
  cuda::DeviceGuard guard(device);
  DeviceBuffer result_buffer = device_alloc(sizeof(double), "sum_of_squares");
  auto* result = static_cast<double*>(result_buffer.get());
  sum_of_squares_kernel<<<1, kThreads, 0, kStream>>>(t, count, result);
  check_launch("sum_of_squares_kernel");
  double host = 0.0;
  cuda::check(cudaMemcpy(&host, result, sizeof(host), cudaMemcpyDeviceToHost), "cudaMemcpy (sum of squares)");
  return host;
}

}  // namespace troupe::kernels::gpu
