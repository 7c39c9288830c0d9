// A tensor-parallel pre-norm transformer block (Megatron-LM's layout) as
// actors:
//
//   y = x + attention(layer_norm1(x)) W_o + b_o
//   z = y + gelu(layer_norm2(y) W_1 + b_1) W_2 + b_2
//
// with causal multi-head attention on qkv = layer_norm1(x) W_qkv + b_qkv.
// Shard i of t holds the heads shard_range(heads, i, t) (the q, k and v
// columns of W_qkv and b_qkv for them: column-parallel) and the matching
// rows of W_o (row-parallel), and the hidden units shard_range(hidden, i, t)
// (columns of W_1 and b_1, rows of W_2). b_o and b_2 live on shard 0 only;
// the layer norms are replicated and computed redundantly on every shard.
// The two row-parallel partial sums per pass (forward: attention and MLP
// outputs; backward: the gradients reaching each layer norm's output) are
// all-reduced actor to actor, as TensorParallelLinear does; the driver
// never holds a value.
//
// The unsplit block is shard 0 of 1: the same class used directly (no
// actors), where each all-reduce is the identity. A block on t shards equals
// it to float rounding of the split sums, forward and backward.
#pragma once

#include <cstdint>
#include <map>
#include <vector>

#include "troupe/actors/transformer_kernels.hpp"
#include "troupe/runtime/actor.hpp"
#include "troupe/runtime/object_ref.hpp"
#include "troupe/runtime/tensor.hpp"

namespace troupe::actors {

struct BlockSpec {
  std::int64_t channels = 0;  // C = heads * head_dim
  std::int64_t heads = 0;
  std::int64_t hidden = 0;    // MLP width F
  std::int64_t seq_len = 0;   // T: inputs are [B*T, C], rows batch-major
  std::uint32_t seed = 0;     // of the whole block (see block_parameters)
  int index = 0;
  int count = 1;
  bool use_gpu = true;  // compute on the actor's GPU when the process has it

  std::int64_t head_dim() const { return heads > 0 ? channels / heads : 0; }

  template <class Archive>
  void serialize(Archive& archive) {
    archive(channels, heads, hidden, seq_len, seed, index, count, use_gpu);
  }
};

// The block's parameters in a fixed order (parameters(), gradients()).
struct BlockParameters {
  Tensor ln1_gamma, ln1_beta;  // [C]
  Tensor w_qkv, b_qkv;         // [C, 3C'], [3C'] with C' the shard's heads * head_dim: [q | k | v]
  Tensor w_o, b_o;             // [C', C], [C] (undefined on shards other than 0)
  Tensor ln2_gamma, ln2_beta;  // [C]
  Tensor w_1, b_1;             // [C, F'], [F']
  Tensor w_2, b_2;             // [F', C], [C] (undefined on shards other than 0)

  std::vector<Tensor> list() const;  // the order above, undefined ones included
  static BlockParameters from_list(const std::vector<Tensor>& tensors);  // the inverse (12 tensors)
};

// The whole (unsplit) block of `spec.seed`, on the host: the layer norms at
// gamma 1, beta 0; W_qkv, b_qkv as kernels::Linear(C, 3C, seed), W_o, b_o as
// Linear(C, C, seed + 1), W_1, b_1 as Linear(C, F, seed + 2), W_2, b_2 as
// Linear(F, C, seed + 3). spec.index and count are ignored.
BlockParameters block_parameters(const BlockSpec& spec);
// Shard spec.index of spec.count of `full` (host copies).
BlockParameters shard_parameters(const BlockParameters& full, const BlockSpec& spec);

// One shard, as an actor (TROUPE_ACTOR) or, with count 1, the unsplit block.
// Passes come in phases, each ending where an all-reduce joins the shards;
// every shard must receive the same reduced values (all_reduce guarantees
// it). Only the latest forward's activations are kept, and gradients
// accumulate until zero_grad(). Not thread-safe (max_concurrency 1).
class TransformerBlockShard {
 public:
  explicit TransformerBlockShard(BlockSpec spec);

  // Forward. x [B*T, C] -> this shard's partial attention output (with b_o
  // on shard 0); then the all-reduced sum -> the partial MLP output; then
  // its sum -> z [B*T, C].
  Tensor attention_partial(const Tensor& x);
  Tensor mlp_partial(const Tensor& attention_sum);
  Tensor output(const Tensor& mlp_sum);

  // Backward for the latest forward. dz -> the partial gradient at
  // layer_norm2's output; its sum -> the partial gradient at layer_norm1's
  // output; its sum -> dx. Accumulates every parameter gradient.
  Tensor backward_mlp(const Tensor& dz);
  Tensor backward_attention(const Tensor& ln2_grad_sum);
  Tensor backward_output(const Tensor& ln1_grad_sum);

  // Steps of the all-reduce, on this shard's device.
  Tensor sum(const Tensor& a, const Tensor& b);
  Tensor hold(const Tensor& value);

  // Pipelines keep several micro-batches in flight (gpt_stage.hpp): stash
  // moves the latest forward's activations aside under `key` (the shard then
  // has none), restore brings them back, and forgets them, before that
  // micro-batch's backward. restore of an unknown key throws
  // Error(invalid_argument). Both return the number of stashed keys left.
  std::int64_t stash(std::int64_t key);
  std::int64_t restore(std::int64_t key);

  // Host copies, in BlockParameters order (undefined b_o, b_2 off shard 0).
  std::vector<Tensor> parameters() const;
  std::vector<Tensor> gradients() const;
  void zero_grad();
  void sgd_step(float lr);
  // AdamW on every parameter (moments kept here); `step` is 1-based. Weight
  // decay applies to the matrices only, not to biases and layer norms.
  void adamw_step(std::int64_t step, float lr, float weight_decay);

  // For global-norm clipping across shards (and stages): the sum of squares
  // of this shard's gradients, counting the replicated layer norms on shard 0
  // only, so the shards' sums add up to the unsplit block's. The caller adds
  // the sums, takes the root and, when clipping, has every shard scale_grads.
  double grad_sum_of_squares() const;
  void scale_grads(float factor);
  // The parameters this shard holds, the replicated layer norms counted on
  // shard 0 only (as grad_sum_of_squares): the shards' counts add up to the
  // unsplit block's 4C^2 + 2CF + 9C + F.
  std::int64_t parameter_count() const;

  BlockSpec spec() const { return spec_; }

 private:
  std::vector<Tensor*> params();
  std::vector<Tensor*> grads();

  BlockSpec spec_;
  Device device_;
  kernels::AttentionShape attention_shape_;
  BlockParameters p_;
  BlockParameters g_;
  std::vector<Tensor> adam_m_, adam_v_;
  // The latest forward's activations, and those stashed by key.
  struct Activations {
    Tensor x, qkv, y, h, a;
    kernels::LayerNormResult n1, n2;
    kernels::AttentionResult attention;
  };
  Tensor x_, qkv_, y_, h_, a_;
  kernels::LayerNormResult n1_, n2_;
  kernels::AttentionResult attention_;
  Tensor dz_, dy_;
  std::map<std::int64_t, Activations> stashed_;
};

using BlockShardHandles = std::vector<ActorHandle<TransformerBlockShard>>;

// all_reduce of tensor_parallel.hpp for block shards: element k held by
// shards[k], all equal (recursive doubling for powers of two, else a chain).
std::vector<ObjectRef<Tensor>> all_reduce(const BlockShardHandles& shards, const std::vector<ObjectRef<Tensor>>& values);

// The driver side: creates the shards and wires each pass. Nothing waits.
class TensorParallelBlock {
 public:
  // `spec` without index/count; `options` as for TensorParallelLinear.
  // Requires 1 <= shards <= heads and shards <= hidden.
  TensorParallelBlock(BlockSpec spec, int shards, std::vector<ActorOptions> options = {});

  // z for x [B*T, C]: every shard's copy (equal bits), or shard 0's.
  std::vector<ObjectRef<Tensor>> forward_shards(const ObjectRef<Tensor>& x) const;
  ObjectRef<Tensor> forward(const ObjectRef<Tensor>& x) const { return forward_shards(x).front(); }
  // dx for dz, after forward: every shard's copy, or shard 0's.
  std::vector<ObjectRef<Tensor>> backward_shards(const ObjectRef<Tensor>& dz) const;
  ObjectRef<Tensor> backward(const ObjectRef<Tensor>& dz) const { return backward_shards(dz).front(); }

  ObjectRef<void> zero_grad() const;
  ObjectRef<void> sgd_step(float lr) const;
  ObjectRef<void> adamw_step(std::int64_t step, float lr, float weight_decay) const;
  // Every shard's grad_sum_of_squares (add them for the block's).
  std::vector<ObjectRef<double>> grad_sums_of_squares() const;
  ObjectRef<void> scale_grads(float factor) const;

  const BlockShardHandles& shards() const noexcept { return shards_; }

 private:
  BlockShardHandles shards_;
};

}  // namespace troupe::actors
