// The CUDA half of transformer_kernels.hpp (private), as kernels_gpu.hpp is
// for kernels.hpp: transformer_kernels.cpp validates and calls these with raw
// device pointers; transformer_kernels_gpu.cu defines them with CUDA,
// transformer_kernels_gpu_stub.cpp (throwing Error(Errc::cuda)) without.
// Every function makes `device` current and queues on its legacy default
// stream; those returning host values wait.
#pragma once

#include <cstdint>

namespace troupe::kernels::gpu {

// Returns (waiting) the index of the first token outside [0, vocab), or -1.
std::int64_t embedding(int device, const void* tokens, bool tokens_i64, const float* token_table,
                       const float* position_table, float* out, std::int64_t batch, std::int64_t seq_len,
                       std::int64_t vocab, std::int64_t channels);
void embedding_backward(int device, const void* tokens, bool tokens_i64, const float* dout, float* dtoken_table,
                        float* dposition_table, std::int64_t batch, std::int64_t seq_len, std::int64_t vocab,
                        std::int64_t channels);

void layer_norm(int device, const float* x, const float* gamma, const float* beta, float* y, float* mean,
                float* rstd, std::int64_t rows, std::int64_t cols, float eps);
void layer_norm_backward(int device, const float* dy, const float* x, const float* gamma, const float* mean,
                         const float* rstd, float* dx, float* dgamma, float* dbeta, std::int64_t rows,
                         std::int64_t cols);

void causal_attention(int device, const float* qkv, float* out, float* lse, std::int64_t batch, std::int64_t seq_len,
                      std::int64_t heads, std::int64_t head_dim);
// dqkv need not be initialised.
void causal_attention_backward(int device, const float* dout, const float* qkv, const float* out, const float* lse,
                               float* dqkv, std::int64_t batch, std::int64_t seq_len, std::int64_t heads,
                               std::int64_t head_dim);

// Sum of squares of t[0, count) in double (waits).
double sum_of_squares(int device, const float* t, std::int64_t count);

}  // namespace troupe::kernels::gpu
