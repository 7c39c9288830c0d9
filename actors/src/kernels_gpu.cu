// The CUDA half of troupe::kernels (see kernels_gpu.hpp): cuBLAS for sgemm,
// small grid-stride kernels for the rest. Only built with CUDA.
//
// Stream: everything is queued on the legacy default stream (0) of the
// device made current here, the stream Tensor's copies and fills use.
// cuBLAS handles are per thread and per device (a handle must not be used by
// two threads at once), created on first use and destroyed at thread exit.
#include "kernels_gpu.hpp"

#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include <cmath>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "troupe/runtime/cuda.hpp"

namespace troupe::kernels::gpu {

namespace {

constexpr unsigned kThreads = 256;
constexpr std::uint64_t kMaxBlocks = 4096;
constexpr cudaStream_t kStream = 0;  // the legacy default stream

// A grid-stride loop's grid: enough blocks to fill the GPU, no more.
unsigned blocks_for(std::int64_t threads_wanted) {
  const std::uint64_t wanted = (static_cast<std::uint64_t>(threads_wanted) + kThreads - 1) / kThreads;
  return static_cast<unsigned>(wanted < kMaxBlocks ? (wanted == 0 ? 1 : wanted) : kMaxBlocks);
}

void check_launch(std::string_view kernel) { cuda::check(cudaGetLastError(), std::string(kernel) + " launch"); }

// The one conversion of a cuBLAS status into troupe's vocabulary.
Error to_error(cublasStatus_t status, std::string_view call) {
  return Error(Errc::cuda, std::string(call) + " failed: " + cublasGetStatusString(status) + " (" +
                               cublasGetStatusName(status) + ")");
}
void check(cublasStatus_t status, std::string_view call) {
  if (status != CUBLAS_STATUS_SUCCESS) throw to_error(status, call);
}

class HandleCache {
 public:
  HandleCache() = default;
  HandleCache(const HandleCache&) = delete;
  HandleCache& operator=(const HandleCache&) = delete;
  ~HandleCache() {
    for (cublasHandle_t handle : handles_) {
      if (handle != nullptr) (void)cublasDestroy(handle);
    }
  }

  // The calling thread's handle for `device`, which must be current.
  cublasHandle_t get(int device) {
    if (static_cast<std::size_t>(device) >= handles_.size()) handles_.resize(device + 1, nullptr);
    cublasHandle_t& handle = handles_[device];
    if (handle == nullptr) {
      cublasHandle_t created = nullptr;
      check(cublasCreate(&created), "cublasCreate on cuda:" + std::to_string(device));
      handle = created;
      check(cublasSetStream(handle, kStream), "cublasSetStream");
      // Full FP32 math: no TF32 tensor-core shortcuts, so GPU and CPU agree to f32 rounding.
      check(cublasSetMathMode(handle, CUBLAS_DEFAULT_MATH), "cublasSetMathMode");
    }
    return handle;
  }

 private:
  std::vector<cublasHandle_t> handles_;
};

cublasHandle_t handle_for(int device) {
  thread_local HandleCache cache;
  return cache.get(device);
}

struct DeviceFree {
  void operator()(void* p) const noexcept { (void)cudaFree(p); }
};
using DeviceBuffer = std::unique_ptr<void, DeviceFree>;

DeviceBuffer device_alloc(std::size_t nbytes, std::string_view what) {
  void* p = nullptr;
  cuda::check(cudaMalloc(&p, nbytes), "cudaMalloc (" + std::string(what) + ")");
  return DeviceBuffer(p);
}

// ---- kernels ----

__device__ inline std::int64_t global_index() {
  return static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
}
__device__ inline std::int64_t grid_stride() { return static_cast<std::int64_t>(gridDim.x) * blockDim.x; }

constexpr float kGeluSqrt2OverPi = 0.7978845608028654f;
constexpr float kGeluCubic = 0.044715f;

__global__ void add_bias_kernel(float* out, const float* bias, std::int64_t rows, std::int64_t cols) {
  const std::int64_t count = rows * cols;
  for (std::int64_t i = global_index(); i < count; i += grid_stride()) out[i] += bias[i % cols];
}

// One thread per column, rows summed in order (as on the host).
// TODO(perf): a two-level reduction for few columns and many rows.
__global__ void bias_grad_kernel(const float* dy, float* dbias, std::int64_t rows, std::int64_t cols,
                                 bool accumulate) {
  for (std::int64_t j = global_index(); j < cols; j += grid_stride()) {
    float sum = accumulate ? dbias[j] : 0.0f;
    for (std::int64_t i = 0; i < rows; ++i) sum += dy[i * cols + j];
    dbias[j] = sum;
  }
}

__global__ void relu_kernel(const float* x, float* y, std::int64_t count) {
  for (std::int64_t i = global_index(); i < count; i += grid_stride()) y[i] = x[i] > 0.0f ? x[i] : 0.0f;
}

__global__ void relu_backward_kernel(const float* dy, const float* x, float* dx, std::int64_t count) {
  for (std::int64_t i = global_index(); i < count; i += grid_stride()) dx[i] = x[i] > 0.0f ? dy[i] : 0.0f;
}

__global__ void gelu_kernel(const float* x, float* y, std::int64_t count) {
  for (std::int64_t i = global_index(); i < count; i += grid_stride()) {
    const float v = x[i];
    const float t = tanhf(kGeluSqrt2OverPi * (v + kGeluCubic * v * v * v));
    y[i] = 0.5f * v * (1.0f + t);
  }
}

__global__ void gelu_backward_kernel(const float* dy, const float* x, float* dx, std::int64_t count) {
  for (std::int64_t i = global_index(); i < count; i += grid_stride()) {
    const float v = x[i];
    const float t = tanhf(kGeluSqrt2OverPi * (v + kGeluCubic * v * v * v));
    const float derivative =
        0.5f * (1.0f + t) + 0.5f * v * (1.0f - t * t) * kGeluSqrt2OverPi * (1.0f + 3.0f * kGeluCubic * v * v);
    dx[i] = dy[i] * derivative;
  }
}

constexpr unsigned kWarp = 32;
constexpr unsigned kFullMask = 0xffffffffu;

// One warp per row: the row maximum and the sum of exp(x - max) by warp
// shuffles, then the gradient; lane 0 writes the row's loss. A row's lanes
// all take the same loop trips, so full-mask shuffles are safe.
template <class Label>
__global__ void softmax_cross_entropy_kernel(const float* logits, const Label* labels, std::int64_t rows,
                                             std::int64_t cols, float divisor, float* dlogits, float* row_losses,
                                             unsigned long long* first_bad_row) {
  const unsigned lane = threadIdx.x % kWarp;
  const std::int64_t warps = grid_stride() / kWarp;
  for (std::int64_t r = global_index() / kWarp; r < rows; r += warps) {
    const float* x = logits + r * cols;
    float* d = dlogits + r * cols;
    float row_max = -INFINITY;
    for (std::int64_t j = lane; j < cols; j += kWarp) row_max = fmaxf(row_max, x[j]);
    for (unsigned offset = kWarp / 2; offset > 0; offset /= 2) {
      row_max = fmaxf(row_max, __shfl_xor_sync(kFullMask, row_max, offset));
    }
    float sum = 0.0f;
    for (std::int64_t j = lane; j < cols; j += kWarp) sum += expf(x[j] - row_max);
    for (unsigned offset = kWarp / 2; offset > 0; offset /= 2) sum += __shfl_xor_sync(kFullMask, sum, offset);
    const std::int64_t label = static_cast<std::int64_t>(labels[r]);
    for (std::int64_t j = lane; j < cols; j += kWarp) {
      d[j] = (expf(x[j] - row_max) / sum - (j == label ? 1.0f : 0.0f)) / divisor;
    }
    if (lane == 0) {
      if (label < 0 || label >= cols) {
        row_losses[r] = NAN;
        atomicMin(first_bad_row, static_cast<unsigned long long>(r));
      } else {
        row_losses[r] = logf(sum) + row_max - x[label];
      }
    }
  }
}

// The host's rule: the largest non-NaN element, lowest index on ties; 0 when all are NaN.
__global__ void argmax_kernel(const float* logits, std::int64_t rows, std::int64_t cols, std::int64_t* out) {
  for (std::int64_t r = global_index(); r < rows; r += grid_stride()) {
    const float* x = logits + r * cols;
    std::int64_t best = -1;
    float best_value = 0.0f;
    for (std::int64_t j = 0; j < cols; ++j) {
      const float v = x[j];
      if (isnan(v)) continue;
      if (best < 0 || v > best_value) {
        best = j;
        best_value = v;
      }
    }
    out[r] = best < 0 ? 0 : best;
  }
}

__global__ void sgd_kernel(float* param, const float* grad, float* velocity, std::int64_t count, float lr,
                           float momentum, float weight_decay) {
  for (std::int64_t i = global_index(); i < count; i += grid_stride()) {
    float step = grad[i] + weight_decay * param[i];
    if (velocity != nullptr) {
      velocity[i] = momentum * velocity[i] + step;
      step = velocity[i];
    }
    param[i] -= lr * step;
  }
}

__global__ void adam_kernel(float* param, const float* grad, float* m, float* v, std::int64_t count, float beta1,
                            float beta2, float eps, float weight_decay, float step_size,
                            float bias_correction2_sqrt) {
  for (std::int64_t i = global_index(); i < count; i += grid_stride()) {
    const float g = grad[i] + weight_decay * param[i];
    m[i] = beta1 * m[i] + (1.0f - beta1) * g;
    v[i] = beta2 * v[i] + (1.0f - beta2) * g * g;
    const float denom = sqrtf(v[i]) / bias_correction2_sqrt + eps;
    param[i] -= step_size * m[i] / denom;
  }
}

__global__ void fill_kernel(float* t, float value, std::int64_t count) {
  for (std::int64_t i = global_index(); i < count; i += grid_stride()) t[i] = value;
}

__global__ void axpy_kernel(float* dst, const float* src, float alpha, std::int64_t count) {
  for (std::int64_t i = global_index(); i < count; i += grid_stride()) dst[i] += alpha * src[i];
}

__global__ void scale_kernel(float* t, float factor, std::int64_t count) {
  for (std::int64_t i = global_index(); i < count; i += grid_stride()) t[i] *= factor;
}

}  // namespace

void gemm(int device, bool transpose_a, bool transpose_b, std::int64_t m, std::int64_t n, std::int64_t k,
          const float* a, std::int64_t lda, const float* b, std::int64_t ldb, float beta, float* c) {
  cuda::DeviceGuard guard(device);
  cublasHandle_t handle = handle_for(device);
  const float alpha = 1.0f;
  // cuBLAS is column-major: a row-major [r, c] matrix is its column-major
  // transpose. Row-major C = op(A) op(B) is therefore column-major
  // C^T = op(B)^T op(A)^T, i.e. the same call with the operands swapped.
  check(cublasSgemm(handle, transpose_b ? CUBLAS_OP_T : CUBLAS_OP_N, transpose_a ? CUBLAS_OP_T : CUBLAS_OP_N,
                    static_cast<int>(n), static_cast<int>(m), static_cast<int>(k), &alpha, b, static_cast<int>(ldb),
                    a, static_cast<int>(lda), &beta, c, static_cast<int>(n)),
        "cublasSgemm(m=" + std::to_string(m) + ", n=" + std::to_string(n) + ", k=" + std::to_string(k) + ")");
}

void add_bias(int device, float* out, const float* bias, std::int64_t rows, std::int64_t cols) {
  cuda::DeviceGuard guard(device);
  add_bias_kernel<<<blocks_for(rows * cols), kThreads, 0, kStream>>>(out, bias, rows, cols);
  check_launch("add_bias_kernel");
}

void bias_grad(int device, const float* dy, float* dbias, std::int64_t rows, std::int64_t cols, bool accumulate) {
  cuda::DeviceGuard guard(device);
  bias_grad_kernel<<<blocks_for(cols), kThreads, 0, kStream>>>(dy, dbias, rows, cols, accumulate);
  check_launch("bias_grad_kernel");
}

void relu(int device, const float* x, float* y, std::int64_t count) {
  cuda::DeviceGuard guard(device);
  relu_kernel<<<blocks_for(count), kThreads, 0, kStream>>>(x, y, count);
  check_launch("relu_kernel");
}

void relu_backward(int device, const float* dy, const float* x, float* dx, std::int64_t count) {
  cuda::DeviceGuard guard(device);
  relu_backward_kernel<<<blocks_for(count), kThreads, 0, kStream>>>(dy, x, dx, count);
  check_launch("relu_backward_kernel");
}

void gelu(int device, const float* x, float* y, std::int64_t count) {
  cuda::DeviceGuard guard(device);
  gelu_kernel<<<blocks_for(count), kThreads, 0, kStream>>>(x, y, count);
  check_launch("gelu_kernel");
}

void gelu_backward(int device, const float* dy, const float* x, float* dx, std::int64_t count) {
  cuda::DeviceGuard guard(device);
  gelu_backward_kernel<<<blocks_for(count), kThreads, 0, kStream>>>(dy, x, dx, count);
  check_launch("gelu_backward_kernel");
}

void softmax_cross_entropy(int device, const float* logits, const void* labels, bool labels_i64, std::int64_t rows,
                           std::int64_t cols, float divisor, float* dlogits, std::vector<float>& row_losses,
                           std::int64_t& first_bad_row) {
  cuda::DeviceGuard guard(device);
  const std::size_t loss_bytes = static_cast<std::size_t>(rows) * sizeof(float);
  // One block: [first bad row (u64)][row losses].
  DeviceBuffer scratch = device_alloc(sizeof(unsigned long long) + loss_bytes, "softmax_cross_entropy scratch");
  auto* bad = static_cast<unsigned long long*>(scratch.get());
  auto* losses = reinterpret_cast<float*>(bad + 1);
  cuda::check(cudaMemsetAsync(bad, 0xff, sizeof(unsigned long long), kStream), "cudaMemsetAsync");
  const unsigned blocks = blocks_for(rows * static_cast<std::int64_t>(kWarp));
  if (labels_i64) {
    softmax_cross_entropy_kernel<<<blocks, kThreads, 0, kStream>>>(
        logits, static_cast<const std::int64_t*>(labels), rows, cols, divisor, dlogits, losses, bad);
  } else {
    softmax_cross_entropy_kernel<<<blocks, kThreads, 0, kStream>>>(
        logits, static_cast<const std::int32_t*>(labels), rows, cols, divisor, dlogits, losses, bad);
  }
  check_launch("softmax_cross_entropy_kernel");
  unsigned long long host_bad = 0;
  row_losses.resize(static_cast<std::size_t>(rows));
  // cudaMemcpy on the legacy stream waits for the kernel.
  cuda::check(cudaMemcpy(&host_bad, bad, sizeof(host_bad), cudaMemcpyDeviceToHost), "cudaMemcpy (bad label row)");
  cuda::check(cudaMemcpy(row_losses.data(), losses, loss_bytes, cudaMemcpyDeviceToHost), "cudaMemcpy (row losses)");
  first_bad_row = host_bad == ~0ull ? -1 : static_cast<std::int64_t>(host_bad);
}

void argmax(int device, const float* logits, std::int64_t rows, std::int64_t cols, std::int64_t* out) {
  cuda::DeviceGuard guard(device);
  argmax_kernel<<<blocks_for(rows), kThreads, 0, kStream>>>(logits, rows, cols, out);
  check_launch("argmax_kernel");
}

void sgd(int device, float* param, const float* grad, float* velocity, std::int64_t count, float lr, float momentum,
         float weight_decay) {
  cuda::DeviceGuard guard(device);
  sgd_kernel<<<blocks_for(count), kThreads, 0, kStream>>>(param, grad, velocity, count, lr, momentum, weight_decay);
  check_launch("sgd_kernel");
}

void adam(int device, float* param, const float* grad, float* m, float* v, std::int64_t count, float beta1,
          float beta2, float eps, float weight_decay, float step_size, float bias_correction2_sqrt) {
  cuda::DeviceGuard guard(device);
  adam_kernel<<<blocks_for(count), kThreads, 0, kStream>>>(param, grad, m, v, count, beta1, beta2, eps,
                                                           weight_decay, step_size, bias_correction2_sqrt);
  check_launch("adam_kernel");
}

void fill(int device, float* t, float value, std::int64_t count) {
  cuda::DeviceGuard guard(device);
  fill_kernel<<<blocks_for(count), kThreads, 0, kStream>>>(t, value, count);
  check_launch("fill_kernel");
}

void axpy(int device, float* dst, const float* src, float alpha, std::int64_t count) {
  cuda::DeviceGuard guard(device);
  axpy_kernel<<<blocks_for(count), kThreads, 0, kStream>>>(dst, src, alpha, count);
  check_launch("axpy_kernel");
}

void scale(int device, float* t, float factor, std::int64_t count) {
  cuda::DeviceGuard guard(device);
  scale_kernel<<<blocks_for(count), kThreads, 0, kStream>>>(t, factor, count);
  check_launch("scale_kernel");
}

void synchronize(int device) {
  cuda::DeviceGuard guard(device);
  cuda::check(cudaStreamSynchronize(kStream), "cudaStreamSynchronize (cuda:" + std::to_string(device) + ")");
}

}  // namespace troupe::kernels::gpu
