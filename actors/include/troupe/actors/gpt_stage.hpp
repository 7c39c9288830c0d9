// A GPT-style decoder as pipeline stages (the stage concept of stage.hpp),
// each stage's blocks optionally tensor-parallel over t shard actors
// (tensor_parallel_block.hpp's Megatron layout).
//
//   tokens [B, T] -> token + position embedding -> blocks 0..L-1 (pre-norm,
//   causal attention + GELU MLP) -> final layer norm -> head [C, V] ->
//   cross-entropy against the next tokens [B*T]
//
// Stage k of S holds a contiguous run of blocks; stage 0 also holds the
// embeddings and stage S-1 the final layer norm, the head and the loss (one
// stage may be both). With t = 1 the stage actor computes its blocks
// itself; with t > 1 it holds t GptShard actors (shard i holds shard i of
// each of the stage's blocks: its heads and hidden units) and drives them
// pass by pass, the row-parallel partial sums all-reduced shard to shard
// (never through the stage actor); the stage actor itself keeps the
// embeddings or head and hands the shards their input.
//
//   std::vector<ActorHandle<GptStage>> stages = ...;   // GptStage(GptStageSpec{model, k, S, first, last}, shards)
//   StagePipeline<GptStage> pipeline(stages);
//   float loss = pipeline.train_batch(token_chunks, target_chunks, B * T, Schedule::one_f_one_b);
//
// Between stages travels one Tensor: the tokens [b, T] (i64) into stage 0,
// the residual stream [b*T, C] (f32) after it; the last stage's target is
// the next token of every position, [b*T] (i64). forward_loss's batch_size
// is the batch's token count, so the micro-batch losses add up to the
// batch's mean loss per token (nats per character for a character model).
//
// Every parameter is a function of the model spec and the block's index
// (gpt_block_spec), never of the cut, so any split of the model into stages
// and shards computes the same model: the unsplit one is GptStage(spec, 0, 1,
// 0, L-1) with no shards, used as a plain object (gpt_train_step).
//
// Optimizer: AdamW after each batch, weight decay on matrices only
// (embedding tables, head weight, the blocks' projections). step(n) uses the
// spec's lr and no clipping; gradient clipping by global norm needs every
// stage's gradients before any stage steps, so the driver runs it
// (gpt_pipeline_step): after the batch's backwards it asks each stage for
// its sum of squared gradients (grad_sum_of_squares; a tensor-parallel stage
// asks its shards, which count the replicated layer norms once), adds them,
// takes the root and passes every stage the same factor
// min(1, clip_norm / (norm + 1e-6)) with the step (adamw_step), as
// torch.nn.utils.clip_grad_norm_ does in one process. Not thread-safe: an
// actor (max_concurrency 1) or one thread.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "troupe/actors/stage.hpp"
#include "troupe/actors/tensor_parallel_block.hpp"
#include "troupe/actors/transformer_kernels.hpp"
#include "troupe/runtime/actor.hpp"
#include "troupe/runtime/tensor.hpp"

namespace troupe::actors {

struct GptSpec {
  std::int64_t vocab = 0;     // V
  std::int64_t seq_len = 0;   // T: every sequence has exactly T tokens
  std::int64_t channels = 0;  // C = heads * head_dim
  std::int64_t heads = 0;
  std::int64_t hidden = 0;    // MLP width, usually 4C
  int layers = 0;             // L blocks
  std::uint32_t seed = 1;
  float lr = 1e-3f;           // AdamW
  float weight_decay = 0.0f;
  bool use_gpu = true;        // compute on the actor's GPU when its process has one

  // Throws Error(invalid_argument) naming what is wrong.
  void validate() const;

  template <class Archive>
  void serialize(Archive& archive) {
    archive(vocab, seq_len, channels, heads, hidden, layers, seed, lr, weight_decay, use_gpu);
  }
};

// Block `block`'s spec (shard `index` of `count`): its seed depends on the
// model seed and the block index only.
BlockSpec gpt_block_spec(const GptSpec& spec, int block, int index = 0, int count = 1);

// Stage `stage` of `stages` holds blocks first_block..last_block (inclusive;
// last_block = first_block - 1 for none), the embeddings when stage == 0 and
// the final norm, head and loss when stage == stages - 1.
struct GptStageSpec {
  GptSpec model;
  int stage = 0;
  int stages = 1;
  int first_block = 0;
  int last_block = -1;

  bool embeds() const { return stage == 0; }
  bool has_head() const { return stage == stages - 1; }
  int blocks() const { return last_block - first_block + 1; }
  // Throws Error(invalid_argument).
  void validate() const;

  template <class Archive>
  void serialize(Archive& archive) {
    archive(model, stage, stages, first_block, last_block);
  }
};

// Shard `index` of `count` of every block of a stage, as an actor. The stage
// actor calls the phases of tensor_parallel_block.hpp block by block
// (`block` counts from the stage's first block), then stash(id) after a
// micro-batch's forward and restore(id) before its backward.
class GptShard {
 public:
  GptShard(GptStageSpec spec, int index, int count);

  Tensor attention_partial(int block, Tensor x);
  Tensor mlp_partial(int block, Tensor attention_sum);
  Tensor output(int block, Tensor mlp_sum);
  Tensor backward_mlp(int block, Tensor dz);
  Tensor backward_attention(int block, Tensor ln2_grad_sum);
  Tensor backward_output(int block, Tensor ln1_grad_sum);
  Tensor sum(Tensor a, Tensor b);
  Tensor hold(Tensor value);
  std::int64_t stash(std::int64_t id);
  std::int64_t restore(std::int64_t id);
  // The sum of squares of every block's gradients, the replicated layer
  // norms counted on shard 0 only, so the t shards' sums add up to the
  // unsplit blocks'.
  double grad_sum_of_squares();
  // Gradients times grad_scale, AdamW at `lr` on every block's shard, then
  // zero_grad; `step` 1-based.
  std::int64_t adamw_step(std::int64_t step, float lr, float grad_scale);
  // Parameters this shard holds, the replicated layer norms counted on
  // shard 0 only (the t shards' counts add up to the unsplit blocks').
  std::int64_t parameter_count() const;
  // Drops stashed activations and gradients (a batch that failed half-way).
  std::int64_t reset();
  // "node <id> gpus [..] math on <device>".
  std::string where() const;

 private:
  TransformerBlockShard& block(int b);
  GptStageSpec spec_;
  int index_ = 0;
  Device device_;
  std::vector<std::unique_ptr<TransformerBlockShard>> blocks_;
  std::set<std::int64_t> stashed_;  // micro-batches whose activations the blocks hold
};

using GptShardHandles = std::vector<ActorHandle<GptShard>>;

// A stage of the GPT pipeline: the stage concept's methods (forward,
// backward, forward_loss, backward_loss, step), plus evaluation (no
// gradients, nothing stashed) for the validation loss and sampling.
class GptStage {
 public:
  // `shards` empty: the stage's blocks live in this object (t = 1); else
  // the stage's t >= 2 GptShard actors, shard i of t holding index i.
  GptStage(GptStageSpec spec, GptShardHandles shards);

  Tensor forward(std::int64_t micro_batch, Tensor x);
  Tensor backward(std::int64_t micro_batch, Tensor dy);  // first stage: an undefined Tensor
  float forward_loss(std::int64_t micro_batch, Tensor x, Tensor targets, std::int64_t batch_size);
  Tensor backward_loss(std::int64_t micro_batch);
  // adamw_step(micro_batches, spec.model.lr, 1): no clipping.
  std::int64_t step(std::int64_t micro_batches);

  // For clipping by global norm: the sum of squares of every gradient the
  // stage and its shards accumulated since the last step (each parameter
  // once). Call after the batch's last backward.
  double grad_sum_of_squares();
  // The step with the driver's learning rate and gradient factor (the clip
  // factor, 1 for none): gradients *= grad_scale, then AdamW at `lr` on the
  // stage and its shards. Refuses (throws, gradients dropped, parameters
  // untouched) as step does when micro_batches is not the number of
  // backwards the stage saw. Returns the steps taken.
  std::int64_t adamw_step(std::int64_t micro_batches, float lr, float grad_scale);
  // The parameters the stage and its shards hold (each once).
  std::int64_t parameter_count() const;

  // Evaluation passes: the stage's output for x (not the last stage), and
  // on the last stage the mean loss of x against targets (sum / batch_size
  // as forward_loss) or the logits [b*T, V].
  Tensor infer(Tensor x);
  float eval_loss(Tensor x, Tensor targets, std::int64_t batch_size);
  Tensor logits(Tensor x);

  // Where the stage and its shards run, one line each.
  std::vector<std::string> where() const;
  // Steps taken.
  std::int64_t steps() const { return steps_; }

 private:
  struct Saved {
    Tensor tokens;  // stage 0
    Tensor x;       // input of the final norm (last stage)
    kernels::LayerNormResult norm;
    Tensor dlogits;
  };
  Tensor embed(const Tensor& tokens);
  Tensor run_blocks(const Tensor& h, std::int64_t stash_id, bool stash);
  Tensor backward_blocks(const Tensor& dz, std::int64_t id);
  Tensor head_forward(const Tensor& x, Saved* saved, kernels::LayerNormResult* norm);
  void fail_batch(const std::string& what);

  GptStageSpec spec_;
  GptShardHandles shards_;
  Device device_;
  std::vector<std::unique_ptr<TransformerBlockShard>> blocks_;  // t = 1
  // Embeddings (stage 0), final norm and head (last stage), their gradients
  // and AdamW moments, in one list: tok, pos | lnf_gamma, lnf_beta, head_w, head_b.
  std::vector<Tensor> params_, grads_, adam_m_, adam_v_;
  std::map<std::int64_t, Saved> saved_;
  std::set<std::int64_t> stashed_;  // t = 1: micro-batches whose activations the blocks hold
  std::int64_t backwards_ = 0;
  std::int64_t steps_ = 0;
};

static_assert(PipelineStageClass<GptStage>);

// One optimizer step's settings, the same on every stage.
struct GptStepOptions {
  float lr = 1e-3f;
  float clip_norm = 0.0f;  // the largest global gradient norm (torch's max_norm); 0: no clipping
};

struct GptStepResult {
  float loss = 0;        // the batch's mean loss per token
  double grad_norm = 0;  // the global norm of the gradients before clipping (0 when not clipping)
  float grad_scale = 1;  // the factor the gradients were scaled by (1: not clipped)
};

// torch.nn.utils.clip_grad_norm_'s factor: min(1, clip_norm / (norm + 1e-6)),
// 1 when clip_norm is 0 (off).
float gpt_clip_scale(double norm, double clip_norm);

// The parameters of the model `spec` describes (embeddings, blocks, final
// norm, head), counted from the tensors' shapes: L (4C^2 + 2CF + 9C + F) +
// 2VC + TC + 2C + V.
std::int64_t gpt_parameter_count(const GptSpec& spec);

// One AdamW step of the unsplit model (a GptStage of stage 0 of 1 holding
// every block) on the whole batch: tokens [B, T], targets [B*T]. Returns the
// batch's mean loss per token. The reference the pipelined runs equal.
float gpt_train_step(GptStage& model, const Tensor& tokens, const Tensor& targets);
// The same with the options' learning rate and global-norm clipping.
GptStepResult gpt_train_step(GptStage& model, const Tensor& tokens, const Tensor& targets,
                             const GptStepOptions& options);

// One training step of a GPT pipeline with global-norm clipping: the
// batch's passes (StagePipeline::submit_passes), then, when clipping, every
// stage's grad_sum_of_squares (the driver waits for them: the norm spans all
// stages), then every stage's adamw_step with the options' lr and the clip
// factor. Waits at most `wait` for each phase; throws what a stage threw.
GptStepResult gpt_pipeline_step(StagePipeline<GptStage>& pipeline, const std::vector<Tensor>& inputs,
                                const std::vector<Tensor>& targets, std::int64_t batch_size, Schedule schedule,
                                const GptStepOptions& options,
                                std::chrono::milliseconds wait = std::chrono::minutes(10));

// The stages' blocks cut as evenly as possible: stage k of S gets blocks
// first..last with the first L mod S stages one longer.
std::vector<GptStageSpec> gpt_even_stages(const GptSpec& spec, int stages);

}  // namespace troupe::actors

// Registered here (like PipelineStage), so a program that includes this
// header creates the actors, in local and cluster mode alike.
TROUPE_ACTOR(troupe::actors::GptShard, (troupe::actors::GptStageSpec, int, int), attention_partial, mlp_partial,
             output, backward_mlp, backward_attention, backward_output, sum, hold, stash, restore, grad_sum_of_squares,
             adamw_step, parameter_count, reset, where);
TROUPE_ACTOR(troupe::actors::GptStage, (troupe::actors::GptStageSpec, troupe::actors::GptShardHandles), forward,
             backward, forward_loss, backward_loss, step, grad_sum_of_squares, adamw_step, parameter_count, infer, eval_loss,
             logits, where, steps);
