// troupe::kernels: the f32 numeric kernels that model-partition actors train
// with: matmul, bias, activations, softmax cross-entropy, SGD and Adam steps,
// deterministic initialisation, and a Linear layer built from them.
//
// Conventions for every function here:
//
// * Element type. Float tensors must be DType::f32; labels are i32 or i64.
//   Anything else, an undefined tensor, a shape that does not fit, or tensors
//   on different devices (memory type or CUDA index) throws
//   Error(Errc::invalid_argument) naming the function and the tensor.
// * Outputs. A `const Tensor& out` parameter is written through (Tensor
//   constness is shallow, so slices and other views can be passed); it must
//   already have the documented shape and live on the inputs' device.
//   Functions that return a Tensor allocate it on the inputs' device.
//   Storage is always row-major and contiguous (see tensor.hpp), so every view
//   is a valid operand.
// * Where the work runs. Each call dispatches on its tensors' memory type.
//   Host tensors: the calling thread, with OpenBLAS cblas_sgemm for matmul and
//   plain loops in a fixed order for everything else. CUDA tensors: cuBLAS
//   (cublasSgemm, full FP32 math: no TF32) and troupe's own kernels, made
//   current on the tensors' device, all on that device's *legacy default
//   stream* - the stream Tensor::to, copy_from, clone and fill_ use - so
//   kernels, copies and fills are ordered with each other.
// * Completion on CUDA. Calls return once the work is queued, except those
//   that hand a value back to the host (softmax_cross_entropy's loss,
//   count_correct), which wait for it. Reading a result with
//   Tensor::to(Device::cpu()) is ordered after the kernels that produced it;
//   code that touches the bytes on another stream, or shares them with another
//   process, calls synchronize(device) first. Errors of an asynchronous kernel
//   may surface at a later call as Error(Errc::cuda).
// * Threads. Functions keep no shared state (cuBLAS handles are per thread),
//   so calls from distinct threads may run at once as long as no output is
//   another call's input or output. Linear is not thread-safe.
// * Without CUDA. A CUDA tensor cannot exist in a process without a device
//   (Tensor::empty throws Error(Errc::cuda)), so CUDA paths are never reached
//   there; in a build without CUDA they throw Error(Errc::cuda).
//
// Determinism: on the host every kernel gives the same bits for the same
// inputs, shapes and OpenBLAS thread count, run to run. sgemm's rounding
// depends on the shapes it is given, so a gradient summed over micro-batches
// (several matmuls of M/k rows) equals the full-batch gradient only to float
// rounding (about 1e-6 relative), not bit for bit. cuBLAS documents bitwise
// run-to-run reproducibility on one GPU architecture and toolkit version with
// one stream; troupe's own CUDA kernels reduce in a fixed order. GPU and CPU
// results agree to float tolerance, not bitwise.
#pragma once

#include <cstdint>
#include <random>

#include "troupe/runtime/tensor.hpp"

namespace troupe::kernels {

// ---- matmul ---------------------------------------------------------------------

struct MatmulOptions {
  bool transpose_a = false;  // use a^T: a is stored [K, M]
  bool transpose_b = false;  // use b^T: b is stored [N, K]
  bool accumulate = false;   // out += op(a) op(b) instead of out = op(a) op(b)
};

// out [M, N] = op(a) [M, K] * op(b) [K, N] (or +=, see MatmulOptions). All three
// are 2-D; out must not overlap a or b. K == 0 gives zeros (or leaves out
// unchanged when accumulating). Dimensions above INT_MAX are rejected.
void matmul_into(const Tensor& a, const Tensor& b, const Tensor& out, MatmulOptions options = {});
// A new [M, N] tensor; options.accumulate must be false.
Tensor matmul(const Tensor& a, const Tensor& b, MatmulOptions options = {});

// ---- bias -------------------------------------------------------------------------

// out[i, j] += bias[j] for out [M, N] and bias [N], in place.
void add_bias(const Tensor& out, const Tensor& bias);
// dbias[j] = sum over i of dy[i, j] (or += when accumulate), dy [M, N], dbias [N].
// Rows are summed in order 0..M-1 on both host and CUDA.
void bias_grad_into(const Tensor& dy, const Tensor& dbias, bool accumulate = false);
Tensor bias_grad(const Tensor& dy);

// ---- activations (elementwise, any shape) --------------------------------------------

// max(x, 0).
Tensor relu(const Tensor& x);
// dx = dy where x > 0, else 0 (the gradient at x == 0 is taken as 0). dy and x
// have the same shape.
Tensor relu_backward(const Tensor& dy, const Tensor& x);

// GELU, tanh approximation (as PyTorch's approximate="tanh"):
//   gelu(x) = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
Tensor gelu(const Tensor& x);
// dx = dy * gelu'(x), with t = tanh(sqrt(2/pi) (x + 0.044715 x^3)):
//   gelu'(x) = 0.5 (1 + t) + 0.5 x (1 - t^2) sqrt(2/pi) (1 + 3 * 0.044715 x^2)
Tensor gelu_backward(const Tensor& dy, const Tensor& x);

// ---- loss and metrics -------------------------------------------------------------------

struct CrossEntropyOptions {
  // The divisor of the loss and the gradient; 0 means logits.size(0). A
  // pipeline that splits a batch of B rows into micro-batches passes B here:
  // then the micro-batch losses and dlogits add up to the full batch's.
  std::int64_t batch_size = 0;
};

struct CrossEntropyResult {
  float loss = 0.0f;  // sum over rows of -log softmax(logits)[label], divided by batch_size
  Tensor dlogits;     // (softmax(logits) - onehot(labels)) / batch_size, logits' shape and device
};

// Softmax cross-entropy of logits [B, C] (f32) against labels [B] (i32 or
// i64, values in [0, C)), on one device. Each row is shifted by its maximum
// before exp, so large logits do not overflow. Per-row losses are computed in
// f32 and summed in row order in double. A label outside [0, C) throws
// Error(Errc::invalid_argument) naming the row (on CUDA, after the kernel ran;
// dlogits is then discarded). C must be >= 1.
CrossEntropyResult softmax_cross_entropy(const Tensor& logits, const Tensor& labels,
                                         CrossEntropyOptions options = {});

// Index of the largest element of each row of logits [B, C], C >= 1, as an
// i64 tensor [B] on logits' device. Ties go to the lowest index; NaNs never
// compare greater.
Tensor argmax(const Tensor& logits);
// Rows whose argmax equals the label (labels as for softmax_cross_entropy,
// out-of-range labels simply never match). Waits for CUDA work.
std::int64_t count_correct(const Tensor& logits, const Tensor& labels);

// ---- optimisers (in place) ----------------------------------------------------------------

struct SgdOptions {
  float lr = 0.01f;
  float momentum = 0.0f;      // 0: plain SGD, velocity unused
  float weight_decay = 0.0f;  // L2: added to the gradient as weight_decay * param
};

// For each element, with g = grad + weight_decay * param:
//   momentum == 0: param -= lr * g
//   momentum != 0: velocity = momentum * velocity + g;  param -= lr * velocity
// (PyTorch's SGD without dampening or Nesterov; start velocity at zero).
// param, grad and velocity have one shape; velocity may be undefined when
// momentum == 0. Requires lr >= 0, momentum >= 0, weight_decay >= 0.
void sgd_step(const Tensor& param, const Tensor& grad, const Tensor& velocity, const SgdOptions& options);

struct AdamOptions {
  float lr = 1e-3f;
  float beta1 = 0.9f;
  float beta2 = 0.999f;
  float eps = 1e-8f;
  float weight_decay = 0.0f;  // L2 (Adam, not AdamW): added to the gradient
};

// One Adam step; `step` is the 1-based count of steps taken including this
// one (t). For each element, with g = grad + weight_decay * param:
//   m = beta1 * m + (1 - beta1) * g
//   v = beta2 * v + (1 - beta2) * g * g
//   param -= (lr / (1 - beta1^t)) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
// (PyTorch's Adam formula; the two bias corrections are computed in double
// on the host and applied in f32). m and v start at zero and have param's
// shape. Requires step >= 1, lr >= 0, 0 <= beta1, beta2 < 1, eps > 0.
void adam_step(const Tensor& param, const Tensor& grad, const Tensor& m, const Tensor& v, std::int64_t step,
               const AdamOptions& options);

// ---- helpers (in place, any shape) ----------------------------------------------------------

// Sets every element to 0 / to value. Unlike Tensor::fill_, CUDA work is queued
// without waiting.
void zero_(const Tensor& t);
void fill_(const Tensor& t, float value);
// Zeros of t's shape on t's device (f32).
Tensor zeros_like(const Tensor& t);
// dst += alpha * src, same shapes: gradient accumulation across micro-batches
// and the sum of tensor-parallel partial results. src may be dst itself but
// must not otherwise overlap it.
void add_(const Tensor& dst, const Tensor& src, float alpha = 1.0f);
// t *= factor.
void scale_(const Tensor& t, float factor);

// Deterministic uniform initialisation, identical on every platform with IEEE
// doubles (it does not use std::uniform_real_distribution, whose algorithm
// the standard leaves open). For each element in row-major order:
//   u = generator() >> 8                        (24 random bits of one mt19937 draw)
//   t[k] = float((u * 2^-23 - 1.0) * bound)     (in double, rounded once to f32)
// which lies in [-bound, bound). Exactly numel() draws are taken, so several
// tensors filled from one generator in a fixed order are reproducible. CUDA
// tensors are generated on the host and copied (this waits).
void uniform_(const Tensor& t, float bound, std::mt19937& generator);
// The same with a fresh std::mt19937(seed).
void uniform_(const Tensor& t, float bound, std::uint32_t seed);

// Waits until all work queued on `device`'s legacy default stream is done.
// No-op for the host.
void synchronize(Device device);

// ---- a linear layer ---------------------------------------------------------------------------

// y = x W + b for x [B, in], W [in, out], b [out], with gradient buffers.
// Gradients accumulate across backward calls (micro-batches) until zero_grad().
// Not thread-safe; one owner at a time (an actor).
struct Linear {
  // W and b uniform in [-1/sqrt(in), 1/sqrt(in)] from one std::mt19937(seed):
  // W's in*out draws in row-major order, then b's out draws (see uniform_).
  // Gradients start at zero. in, out >= 1.
  Linear(std::int64_t in_features, std::int64_t out_features, std::uint32_t seed,
         Device device = Device::cpu());
  // Adopts existing parameters (a shard, a checkpoint): weight [in, out] f32,
  // bias [out] or undefined for a layer without bias; zero gradients are
  // allocated beside them.
  Linear(Tensor weight, Tensor bias);

  std::int64_t in_features() const { return weight.size(0); }
  std::int64_t out_features() const { return weight.size(1); }
  Device device() const { return weight.device(); }

  // y = x W + b; keeps x (shared, not copied) for backward(dy).
  Tensor forward(const Tensor& x);
  // Backward for the input of the latest forward(): weight_grad += x^T dy,
  // bias_grad += column sums of dy, returns dx = dy W^T. Throws
  // Error(Errc::invalid_argument) when forward() was never called.
  Tensor backward(const Tensor& dy);
  // The same for an input the caller kept (schedules that hold several
  // micro-batches in flight).
  Tensor backward(const Tensor& x, const Tensor& dy);
  void zero_grad();

  // Adjusts weight and bias from their gradients (SGD velocity / Adam moments
  // are the caller's: pass them per parameter to sgd_step/adam_step instead
  // when momentum or Adam is wanted).
  void sgd_step(float lr);

  Tensor weight;
  Tensor bias;  // undefined: no bias
  Tensor weight_grad;
  Tensor bias_grad;

 private:
  Tensor input_;
};

// Threads one host (OpenBLAS) matmul may use, for the whole process;
// returns the previous count. Several CPU stages in one process each run on
// their own pool thread, and OpenBLAS's threaded sgemm called from several
// threads at once is many times slower than single-threaded calls (on 2
// cores, 4 stages ran 7x slower), so such pipelines want 1. Results depend
// on the count only through sgemm's rounding (see above).
int set_host_math_threads(int threads);

}  // namespace troupe::kernels
