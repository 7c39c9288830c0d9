// troupe::kernels for GPT-style decoders: token + position embedding, layer
// norm, causal multi-head self-attention (blocked online softmax), AdamW and
// global-norm gradient clipping. GELU, residual adds (add_), the vocabulary
// cross-entropy (softmax_cross_entropy over [tokens, vocab] logits) and the
// linear projections come from kernels.hpp.
//
// The conventions of kernels.hpp hold here too (f32, Error(Errc::invalid_argument)
// for bad arguments, `const Tensor& out` written through, dispatch on the
// tensors' memory type, CUDA work queued on the device's legacy default
// stream). Activations are 2-D [rows, channels] with rows = batch * seq_len in
// batch-major order (row b * T + t is position t of sequence b), so the
// projections are plain matmuls.
//
// Backward functions that produce parameter gradients *accumulate* them
// (+=), like Linear: micro-batches add up until the caller zeros them.
//
// Determinism: host kernels run in a fixed order (bitwise reproducible for
// one OpenBLAS thread count). On CUDA every kernel here reduces in a fixed
// order except embedding_backward's token-table scatter, which uses atomic
// adds (rows hit by several tokens sum in an unspecified order).
#pragma once

#include <cstdint>
#include <span>

#include "troupe/actors/kernels.hpp"
#include "troupe/runtime/tensor.hpp"

namespace troupe::kernels {

// ---- embedding ---------------------------------------------------------------------

// out [B*T, C] with out[b*T + t] = token_table[tokens[b, t]] + position_table[t],
// for tokens [B, T] (i32 or i64, values in [0, V)), token_table [V, C] and
// position_table [P, C] with P >= T. A token outside [0, V) throws
// Error(Errc::invalid_argument) naming it (on CUDA after the kernel ran: waits).
Tensor embedding(const Tensor& tokens, const Tensor& token_table, const Tensor& position_table);
// Scatters dout [B*T, C] into the tables' gradients (accumulating):
//   dtoken_table[tokens[b, t]] += dout[b*T + t],  dposition_table[t] += dout[b*T + t].
// Tokens outside [0, V) are skipped (embedding() already rejected them).
void embedding_backward(const Tensor& tokens, const Tensor& dout, const Tensor& dtoken_table,
                        const Tensor& dposition_table);

// ---- layer norm ---------------------------------------------------------------------

struct LayerNormResult {
  Tensor y;     // [N, C]
  Tensor mean;  // [N], kept for backward
  Tensor rstd;  // [N], 1 / sqrt(var + eps), kept for backward
};
// y = (x - mean) * rstd * gamma + beta over the last dimension of x [N, C],
// with the biased variance (as PyTorch's LayerNorm). Row statistics are
// accumulated in double. gamma, beta [C]; C >= 1; eps > 0.
LayerNormResult layer_norm(const Tensor& x, const Tensor& gamma, const Tensor& beta, float eps = 1e-5f);
// Returns dx [N, C]; dgamma += sum_i dy * xhat, dbeta += sum_i dy (rows in order).
Tensor layer_norm_backward(const Tensor& dy, const Tensor& x, const Tensor& gamma, const Tensor& mean,
                           const Tensor& rstd, const Tensor& dgamma, const Tensor& dbeta);

// ---- causal multi-head self-attention ------------------------------------------------------

struct AttentionShape {
  std::int64_t batch = 0;     // B
  std::int64_t seq_len = 0;   // T
  std::int64_t heads = 0;     // H
  std::int64_t head_dim = 0;  // D
  // Host only: the query and key rows per block of scores. The host never
  // holds more than block x block scores (per call, one head at a time).
  std::int64_t block = 64;
  std::int64_t channels() const { return heads * head_dim; }
};

struct AttentionResult {
  Tensor out;  // [B*T, H*D], head h in columns [h*D, (h+1)*D)
  Tensor lse;  // [B, H, T] f32: log sum_j exp(score_ij) of each query row, kept for backward
};

// Causal softmax(Q K^T / sqrt(D)) V for qkv [B*T, 3*H*D], laid out per row
// as [q (H*D) | k (H*D) | v (H*D)], head h in columns [h*D, (h+1)*D) of each
// part (what a column-parallel QKV projection of a head shard produces).
// Query t attends to keys 0..t of its own sequence.
//
// The softmax is computed online (flash-attention style): for each block of
// queries the key blocks are visited in order, keeping a running maximum and
// sum per row and rescaling the accumulated output, so it is stable for any
// finite scores and at most one block of scores exists per head at a time.
// On the host each block product is an sgemm on strided views of qkv.
AttentionResult causal_attention(const Tensor& qkv, const AttentionShape& shape);
// Returns dqkv [B*T, 3*H*D] (q, k, v parts as in qkv) for dout [B*T, H*D],
// given the forward's qkv, out and lse. Scores are recomputed block by
// block (never materialised whole), as in flash attention's backward.
Tensor causal_attention_backward(const Tensor& dout, const Tensor& qkv, const Tensor& out, const Tensor& lse,
                                 const AttentionShape& shape);

// ---- AdamW and gradient clipping -------------------------------------------------------------

struct AdamWOptions {
  float lr = 1e-3f;
  float beta1 = 0.9f;
  float beta2 = 0.999f;
  float eps = 1e-8f;
  float weight_decay = 0.01f;  // decoupled: param *= 1 - lr * weight_decay before the Adam update
};

// One AdamW step (PyTorch's AdamW): param *= 1 - lr * weight_decay, then
// adam_step with weight_decay 0 (see kernels.hpp for the formula, the
// 1-based `step` and the requirements). Parameters that should not decay
// (biases, norms, embeddings by choice) pass weight_decay = 0.
void adamw_step(const Tensor& param, const Tensor& grad, const Tensor& m, const Tensor& v, std::int64_t step,
                const AdamWOptions& options);

// sqrt of the sum of squares of every element of every tensor (f32, any
// shape, one device), accumulated in double in tensor order. Waits for CUDA.
double global_norm(std::span<const Tensor> tensors);
// Gradient clipping by global norm (torch.nn.utils.clip_grad_norm_): when the
// norm exceeds max_norm > 0, every gradient is scaled by max_norm / (norm + 1e-6).
// Returns the norm before clipping.
double clip_grad_norm_(std::span<const Tensor> grads, double max_norm);

}  // namespace troupe::kernels
