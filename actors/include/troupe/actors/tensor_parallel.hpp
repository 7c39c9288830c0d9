// Tensor parallelism for a linear layer (Megatron-LM's column- and
// row-parallel Linear): one Linear(in, out) split across several
// `LinearShard` actors, and the collectives that join their results actor
// to actor.
//
// Split::columns: shard i holds W[:, c_i] and b[c_i] (a block of output
// columns). Forward: y_i = x W_i + b_i on every shard, gathered into
// y = [y_0 | y_1 | ...]. Backward: dx = sum_i dy_i W_i^T, all-reduced.
//
// Split::rows: shard i holds W[r_i, :] (a block of input rows); shard 0 also
// holds b. Forward: each shard computes the partial x_i W_i from its columns
// x_i = x[:, r_i] (shard 0 adds b, so the sum has it once), and the partials
// are all-reduced, so every shard ends with y. Backward: dx_i = dy W_i^T is
// shard i's block of columns of dx, gathered into dx.
//
// Every shard is initialised from the full layer kernels::Linear(in, out,
// seed) would build (the same draws, then sliced), so the shards together are
// that layer, to float rounding of the split sums.
//
// The collectives never pass data through the caller: an all-reduce or a
// gather is a graph of calls on the shard actors whose arguments are the refs
// the previous calls returned; the runtime moves each value from the actor
// that holds it to the one that needs it. Nothing here waits: every function
// returns refs at once (it cannot call get(), it never holds a value).
//
// Devices: a shard computes on the CUDA device of the GPU it was given
// (ActorOptions resources {"GPU": ...}) when the process has that device,
// else on the host. Results stay on the device that made them; inputs from
// elsewhere are copied in. With max_concurrency 1 (the default) calls run in
// the order the caller made them, so forward(x1), backward(dy1), forward(x2)
// ... pair up; forward() keeps only the latest input for backward().
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "troupe/actors/checkpoint.hpp"
#include "troupe/actors/kernels.hpp"
#include "troupe/runtime/actor.hpp"
#include "troupe/runtime/object_ref.hpp"
#include "troupe/runtime/tensor.hpp"

namespace troupe::actors {

enum class Split : std::int32_t {
  columns,  // shards hold blocks of output features; outputs are gathered
  rows,     // shards hold blocks of input features; partial outputs are all-reduced
};

std::string_view to_string(Split split) noexcept;

// The [begin, end) block of `features` that shard `index` of `count` holds:
// blocks differ in size by at most one, the larger ones first. Requires
// 0 <= index < count <= features (Error(invalid_argument) otherwise).
std::pair<std::int64_t, std::int64_t> shard_range(std::int64_t features, int index, int count);

// What one shard holds: the layer, the split and its place in it. The
// constructor argument of LinearShard, so it travels to actor hosts.
struct ShardSpec {
  std::int64_t in_features = 0;
  std::int64_t out_features = 0;
  std::uint32_t seed = 0;  // of the whole layer, as kernels::Linear(in, out, seed)
  Split split = Split::columns;
  int index = 0;
  int count = 1;
  bool use_gpu = true;  // compute on the actor's GPU when the process has it
  // Checkpoints of the shard's weight, bias and step every `every`
  // sgd_steps, one directory per shard; see LinearShard.
  CheckpointSpec checkpoint{};

  // The block of the split dimension (out_features for columns,
  // in_features for rows) this shard holds.
  std::pair<std::int64_t, std::int64_t> range() const;

  template <class Archive>
  void serialize(Archive& archive) {
    auto split_code = static_cast<std::int32_t>(split);
    archive(in_features, out_features, seed, split_code, index, count, use_gpu, checkpoint);
    split = static_cast<Split>(split_code);
  }
};

// Columns [begin, end) of a 2-D tensor, as a new contiguous tensor on its
// device. 0 <= begin <= end <= x.size(1).
Tensor copy_columns(const Tensor& x, std::int64_t begin, std::int64_t end);
// [a | b] along `dim` (0: rows, 1: columns), a new tensor on a's device (b is
// copied there). 1-D tensors concatenate along dim 0. Shapes must agree in the
// other dimension; same dtype.
Tensor concat(const Tensor& a, const Tensor& b, int dim);

// One shard of a tensor-parallel Linear, as an actor (registered with
// TROUPE_ACTOR, so it runs in local and cluster mode alike).
//
// Checkpoints (spec.checkpoint enabled), as PipelineStage's: after every
// `every`-th sgd_step the shard writes its weight, bias and step count; a
// constructor that finds its directory used before (a restart) restores the
// newest whole checkpoint and refuses forward, backward, sgd_step and the
// parameter reads with Error(invalid_argument) until restore(step).
class LinearShard {
 public:
  explicit LinearShard(ShardSpec spec);

  // Columns: x [B, in] -> x W_i + b_i [B, out_i], this shard's output columns.
  // Rows: x [B, in] (the shard takes its columns) or [B, in_i] (already its
  // block) -> the partial x_i W_i [B, out] (+ b on shard 0), to be all-reduced.
  // The input is kept for backward().
  Tensor forward(const Tensor& x);
  // For the latest forward's input; accumulates weight_grad and bias_grad.
  // Columns: dy [B, out] (the shard takes its columns) or [B, out_i] -> the
  // partial dx = dy_i W_i^T [B, in], to be all-reduced.
  // Rows: dy [B, out] -> dy W_i^T [B, in_i], this shard's columns of dx.
  Tensor backward(const Tensor& dy);

  // Steps of the collectives, on this shard's device.
  Tensor sum(const Tensor& a, const Tensor& b);                  // a + b
  Tensor concat(const Tensor& a, const Tensor& b, int dim);     // [a | b] along dim
  Tensor hold(const Tensor& value);                              // value, on this shard's device

  // This shard's parameters and gradients (host copies). bias is undefined
  // on row shards other than 0.
  Tensor weight() const;
  Tensor bias() const;
  Tensor weight_grad() const;
  Tensor bias_grad() const;
  void zero_grad();
  void sgd_step(float lr);

  ShardSpec spec() const { return spec_; }
  // "cpu" or "cuda:<index>".
  std::string device() const { return linear_.device().to_string(); }

  // sgd_steps taken, restore state and the checkpoints on disk.
  CheckpointInfo checkpoint_info() const;
  // Back to the state after `step` sgd_steps (0: the initial slice of the
  // seed's layer), gradients zeroed, later checkpoints deleted; see
  // PipelineStage::restore for the errors. Returns `step`.
  std::int64_t restore(std::int64_t step);

 private:
  void require_restored(const char* op) const;
  void apply_checkpoint(const CheckpointData& data);

  ShardSpec spec_;
  kernels::Linear linear_;
  std::int64_t steps_ = 0;
  CheckpointStore checkpoints_;
  bool awaiting_restore_ = false;
  std::int64_t restored_from_ = -1;
  std::string checkpoint_note_;
};

using ShardHandles = std::vector<ActorHandle<LinearShard>>;

// Every shard ends with the sum of `values`, where values[k] is held by (or
// at least consumed on) shards[k]; element k of the result is held by
// shards[k]. Power-of-two counts use recursive doubling (log2 n rounds of
// pairwise exchange; partners add in either order, so all shards hold the
// same bits); other counts reduce along the chain 0, 1, ..., n-1 and hand
// the sum to the others. Returns at once.
std::vector<ObjectRef<Tensor>> all_reduce(const ShardHandles& shards, const std::vector<ObjectRef<Tensor>>& values);
// [values[0] | values[1] | ...] along `dim`, joined pairwise in a tree on the
// shards (values[k] on shards[k]); the result is held by shards[0].
ObjectRef<Tensor> gather(const ShardHandles& shards, const std::vector<ObjectRef<Tensor>>& values, int dim);

// The driver side: creates the shard actors and wires each pass.
class TensorParallelLinear {
 public:
  // `options`: empty (default options for every shard), one entry (for every
  // shard; a name in it gets "-<shard>" appended), or one per shard (e.g.
  // each with its own GPU or placement-group bundle). Throws
  // Error(invalid_argument) for shards < 1, more shards than the split
  // dimension has features, or an options count that fits none of those.
  TensorParallelLinear(std::int64_t in_features, std::int64_t out_features, int shards, Split split,
                       std::uint32_t seed, std::vector<ActorOptions> options = {});

  // y = x W + b [B, out]. Columns: gathered on shard 0; rows: shard 0's copy
  // of the all-reduced sum.
  ObjectRef<Tensor> forward(const Tensor& x) const { return pick_forward(forward_shards(x)); }
  ObjectRef<Tensor> forward(const ObjectRef<Tensor>& x) const { return pick_forward(forward_shards(x)); }
  // Per shard, unjoined. Columns: y_i [B, out_i] (what a row-split layer
  // after this one takes, see forward_blocks). Rows: every shard's copy of y.
  std::vector<ObjectRef<Tensor>> forward_shards(const Tensor& x) const;
  std::vector<ObjectRef<Tensor>> forward_shards(const ObjectRef<Tensor>& x) const;
  // Rows only: the input already split by columns, blocks[k] for shard k
  // (the output of a column-split layer's forward_shards). Returns every
  // shard's copy of y.
  std::vector<ObjectRef<Tensor>> forward_blocks(const std::vector<ObjectRef<Tensor>>& blocks) const;

  // dx [B, in] for dy [B, out]; accumulates gradients on every shard.
  // Columns: shard 0's copy of the all-reduced dx; rows: gathered on shard 0.
  ObjectRef<Tensor> backward(const Tensor& dy) const { return pick_backward(backward_shards(dy)); }
  ObjectRef<Tensor> backward(const ObjectRef<Tensor>& dy) const { return pick_backward(backward_shards(dy)); }
  // Columns: every shard's copy of dx. Rows: dx_i [B, in_i] per shard.
  std::vector<ObjectRef<Tensor>> backward_shards(const Tensor& dy) const;
  std::vector<ObjectRef<Tensor>> backward_shards(const ObjectRef<Tensor>& dy) const;

  ObjectRef<void> zero_grad() const;
  ObjectRef<void> sgd_step(float lr) const;
  // Every shard's restore(step) (see LinearShard): completes once all have.
  ObjectRef<void> restore(std::int64_t step) const;

  // The whole layer's parameters and gradients, reassembled from the shards
  // (gathered actor to actor, on shard 0): W [in, out], b [out].
  ObjectRef<Tensor> weight() const;
  ObjectRef<Tensor> bias() const;
  ObjectRef<Tensor> weight_grad() const;
  ObjectRef<Tensor> bias_grad() const;

  std::int64_t in_features() const noexcept { return in_features_; }
  std::int64_t out_features() const noexcept { return out_features_; }
  Split split() const noexcept { return split_; }
  int shard_count() const noexcept { return static_cast<int>(shards_.size()); }
  const ShardHandles& shards() const noexcept { return shards_; }

 private:
  template <class X>
  std::vector<ObjectRef<Tensor>> forward_impl(const X& x) const;
  template <class Dy>
  std::vector<ObjectRef<Tensor>> backward_impl(const Dy& dy) const;
  ObjectRef<Tensor> pick_forward(const std::vector<ObjectRef<Tensor>>& outputs) const;
  ObjectRef<Tensor> pick_backward(const std::vector<ObjectRef<Tensor>>& outputs) const;
  template <auto Method>
  ObjectRef<Tensor> reassemble(bool is_bias) const;

  std::int64_t in_features_;
  std::int64_t out_features_;
  Split split_;
  ShardHandles shards_;
};

}  // namespace troupe::actors
