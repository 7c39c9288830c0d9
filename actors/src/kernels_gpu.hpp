// The CUDA half of troupe::kernels (private). kernels.cpp validates tensors
// and calls these with raw device pointers; kernels_gpu.cu defines them in a
// build with CUDA, kernels_gpu_stub.cpp (throwing Error(Errc::cuda)) without.
//
// Every function makes `device` current for its duration and queues its work
// on that device's legacy default stream; only those that return host values
// wait. Counts are element counts; matrices are row-major. A count of 0 queues
// nothing.
#pragma once

#include <cstdint>
#include <vector>

namespace troupe::kernels::gpu {

// C [m, n] = op(A) op(B) + beta * C, row-major, with lda/ldb the stored row
// lengths of A and B. m, n, k > 0 and all fit in int.
void gemm(int device, bool transpose_a, bool transpose_b, std::int64_t m, std::int64_t n, std::int64_t k,
          const float* a, std::int64_t lda, const float* b, std::int64_t ldb, float beta, float* c);

void add_bias(int device, float* out, const float* bias, std::int64_t rows, std::int64_t cols);
void bias_grad(int device, const float* dy, float* dbias, std::int64_t rows, std::int64_t cols, bool accumulate);

void relu(int device, const float* x, float* y, std::int64_t count);
void relu_backward(int device, const float* dy, const float* x, float* dx, std::int64_t count);
void gelu(int device, const float* x, float* y, std::int64_t count);
void gelu_backward(int device, const float* dy, const float* x, float* dx, std::int64_t count);

// Writes dlogits and returns (waiting) the per-row losses; `first_bad_row` is
// the lowest row whose label is outside [0, cols), or -1.
void softmax_cross_entropy(int device, const float* logits, const void* labels, bool labels_i64,
                           std::int64_t rows, std::int64_t cols, float batch_size, float* dlogits,
                           std::vector<float>& row_losses, std::int64_t& first_bad_row);
void argmax(int device, const float* logits, std::int64_t rows, std::int64_t cols, std::int64_t* out);

void sgd(int device, float* param, const float* grad, float* velocity, std::int64_t count, float lr,
         float momentum, float weight_decay);
// step_size = lr / (1 - beta1^t), bias_correction2_sqrt = sqrt(1 - beta2^t).
void adam(int device, float* param, const float* grad, float* m, float* v, std::int64_t count, float beta1,
          float beta2, float eps, float weight_decay, float step_size, float bias_correction2_sqrt);

void fill(int device, float* t, float value, std::int64_t count);
void axpy(int device, float* dst, const float* src, float alpha, std::int64_t count);
void scale(int device, float* t, float factor, std::int64_t count);

void synchronize(int device);

}  // namespace troupe::kernels::gpu
