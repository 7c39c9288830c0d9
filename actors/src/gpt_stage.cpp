// The GPT pipeline stage and its tensor-parallel shard actors (gpt_stage.hpp).
#include "troupe/actors/gpt_stage.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <exception>
#include <set>
#include <string>
#include <utility>

#include "troupe/runtime/cuda.hpp"
#include "troupe/runtime/error.hpp"
#include "troupe/runtime/runtime.hpp"

namespace troupe::actors {

namespace {

using namespace std::chrono_literals;
// A stage waits this long for its shards' results: a pass of a large stage
// on a loaded machine, with room.
constexpr auto kShardWait = 600s;

[[noreturn]] void fail(const std::string& where, const std::string& what) {
  throw_error(Errc::invalid_argument, where + ": " + what);
}

Device pick_device(bool use_gpu) {
  if (!use_gpu || !cuda::available()) return Device::cpu();
  const std::vector<int> gpus = get_gpu_ids();
  if (gpus.empty()) return Device::cpu();
  return gpus.front() < cuda::device_count() ? Device::cuda(gpus.front()) : Device::cpu();
}

// "node <id> gpus [a,b] math on <device>" for this process.
std::string describe_place(Device device) {
  std::string node = "local";
  if (const char* id = std::getenv("TROUPE_NODE_ID"); id != nullptr && *id != '\0') {
    node = std::string(id).substr(0, 12);
  }
  std::string gpus;
  for (const int g : node_gpu_ids()) gpus += (gpus.empty() ? "" : ",") + std::to_string(g);  // as the node lists them
  return "node " + node + " gpus [" + gpus + "] math on " + device.to_string();
}

// The all-reduce of tensor_parallel_block.cpp over GptShard actors:
// recursive doubling for powers of two (a + b and b + a are the same bits,
// so every shard ends with the same sum), else a chain and a broadcast.
std::vector<ObjectRef<Tensor>> all_reduce(const GptShardHandles& shards, const std::vector<ObjectRef<Tensor>>& values) {
  const std::size_t n = shards.size();
  if ((n & (n - 1)) == 0) {
    std::vector<ObjectRef<Tensor>> held = values;
    for (std::size_t distance = 1; distance < n; distance <<= 1) {
      std::vector<ObjectRef<Tensor>> next;
      next.reserve(n);
      for (std::size_t k = 0; k < n; ++k) next.push_back(shards[k].call<&GptShard::sum>(held[k], held[k ^ distance]));
      held = std::move(next);
    }
    return held;
  }
  ObjectRef<Tensor> total = values[0];
  for (std::size_t k = 1; k < n; ++k) total = shards[k].call<&GptShard::sum>(total, values[k]);
  std::vector<ObjectRef<Tensor>> held;
  for (std::size_t k = 0; k + 1 < n; ++k) held.push_back(shards[k].call<&GptShard::hold>(total));
  held.push_back(total);
  return held;
}

template <auto Method>
std::vector<ObjectRef<Tensor>> on_each(const GptShardHandles& shards, int block,
                                       const std::vector<ObjectRef<Tensor>>& in) {
  std::vector<ObjectRef<Tensor>> out;
  out.reserve(shards.size());
  for (std::size_t k = 0; k < shards.size(); ++k) out.push_back(shards[k].call<Method>(block, in[k]));
  return out;
}

Tensor ones(std::int64_t n, Device device) {
  Tensor t = Tensor::empty({n}, DType::f32);
  kernels::fill_(t, 1.0f);
  return t.to(device);
}

}  // namespace

void GptSpec::validate() const {
  if (vocab < 1 || seq_len < 1 || channels < 1 || heads < 1 || hidden < 1 || layers < 1) {
    fail("GptSpec", "vocab, seq_len, channels, heads, hidden and layers must be >= 1");
  }
  if (channels % heads != 0) {
    fail("GptSpec", "channels " + std::to_string(channels) + " is not a multiple of heads " + std::to_string(heads));
  }
  if (!(lr >= 0) || !(weight_decay >= 0)) fail("GptSpec", "lr and weight_decay must be >= 0");
}

BlockSpec gpt_block_spec(const GptSpec& spec, int block, int index, int count) {
  return BlockSpec{.channels = spec.channels,
                   .heads = spec.heads,
                   .hidden = spec.hidden,
                   .seq_len = spec.seq_len,
                   .seed = spec.seed * 1000003u + 7919u * static_cast<std::uint32_t>(block + 1),
                   .index = index,
                   .count = count,
                   .use_gpu = spec.use_gpu};
}

void GptStageSpec::validate() const {
  model.validate();
  if (stages < 1 || stage < 0 || stage >= stages) {
    fail("GptStageSpec", "stage " + std::to_string(stage) + " of " + std::to_string(stages));
  }
  if (first_block < 0 || last_block < first_block - 1 || last_block >= model.layers) {
    fail("GptStageSpec", "blocks " + std::to_string(first_block) + ".." + std::to_string(last_block) + " of a " +
                             std::to_string(model.layers) + "-block model");
  }
}

std::vector<GptStageSpec> gpt_even_stages(const GptSpec& spec, int stages) {
  if (stages < 1 || stages > spec.layers) {
    fail("gpt_even_stages", std::to_string(stages) + " stages for " + std::to_string(spec.layers) +
                                " blocks (want 1 <= stages <= blocks)");
  }
  std::vector<GptStageSpec> out;
  int first = 0;
  for (int k = 0; k < stages; ++k) {
    const int count = spec.layers / stages + (k < spec.layers % stages ? 1 : 0);
    out.push_back({spec, k, stages, first, first + count - 1});
    first += count;
  }
  return out;
}

// ---- GptShard ------------------------------------------------------------------------

GptShard::GptShard(GptStageSpec spec, int index, int count)
    : spec_(std::move(spec)), index_(index), device_(pick_device(spec_.model.use_gpu)) {
  spec_.validate();
  for (int b = spec_.first_block; b <= spec_.last_block; ++b) {
    blocks_.push_back(std::make_unique<TransformerBlockShard>(gpt_block_spec(spec_.model, b, index, count)));
  }
}

TransformerBlockShard& GptShard::block(int b) {
  if (b < 0 || b >= static_cast<int>(blocks_.size())) {
    fail("GptShard", "block " + std::to_string(b) + " of " + std::to_string(blocks_.size()));
  }
  return *blocks_[static_cast<std::size_t>(b)];
}

Tensor GptShard::attention_partial(int b, Tensor x) { return block(b).attention_partial(x); }
Tensor GptShard::mlp_partial(int b, Tensor s) { return block(b).mlp_partial(s); }
Tensor GptShard::output(int b, Tensor s) { return block(b).output(s); }
Tensor GptShard::backward_mlp(int b, Tensor dz) { return block(b).backward_mlp(dz); }
Tensor GptShard::backward_attention(int b, Tensor s) { return block(b).backward_attention(s); }
Tensor GptShard::backward_output(int b, Tensor s) { return block(b).backward_output(s); }
Tensor GptShard::sum(Tensor a, Tensor b) { return blocks_.empty() ? a : blocks_.front()->sum(a, b); }
Tensor GptShard::hold(Tensor value) { return blocks_.empty() ? value : blocks_.front()->hold(value); }

std::int64_t GptShard::stash(std::int64_t id) {
  for (auto& b : blocks_) b->stash(id);
  stashed_.insert(id);
  return static_cast<std::int64_t>(stashed_.size());
}

std::int64_t GptShard::restore(std::int64_t id) {
  for (auto& b : blocks_) b->restore(id);
  stashed_.erase(id);
  return static_cast<std::int64_t>(stashed_.size());
}

double GptShard::grad_sum_of_squares() {
  double sum = 0;
  for (const auto& b : blocks_) sum += b->grad_sum_of_squares();
  return sum;
}

std::int64_t GptShard::adamw_step(std::int64_t step, float lr, float grad_scale) {
  for (auto& b : blocks_) {
    if (grad_scale != 1.0f) b->scale_grads(grad_scale);
    b->adamw_step(step, lr, spec_.model.weight_decay);
    b->zero_grad();
  }
  return step;
}

std::int64_t GptShard::parameter_count() const {
  std::int64_t n = 0;
  for (const auto& b : blocks_) n += b->parameter_count();
  return n;
}

std::int64_t GptShard::reset() {
  for (const std::int64_t id : stashed_) {
    for (auto& b : blocks_) (void)b->restore(id);
  }
  stashed_.clear();
  for (auto& b : blocks_) b->zero_grad();
  return 0;
}

std::string GptShard::where() const { return describe_place(device_); }

// ---- GptStage ------------------------------------------------------------------------

GptStage::GptStage(GptStageSpec spec, GptShardHandles shards)
    : spec_(std::move(spec)), shards_(std::move(shards)), device_(pick_device(spec_.model.use_gpu)) {
  spec_.validate();
  if (shards_.size() == 1) fail("GptStage", "one shard: pass none (t = 1) or t >= 2");
  if (shards_.empty()) {
    for (int b = spec_.first_block; b <= spec_.last_block; ++b) {
      blocks_.push_back(std::make_unique<TransformerBlockShard>(gpt_block_spec(spec_.model, b)));
    }
  }
  const GptSpec& m = spec_.model;
  if (spec_.embeds()) {
    Tensor tok = Tensor::empty({m.vocab, m.channels}, DType::f32);
    Tensor pos = Tensor::empty({m.seq_len, m.channels}, DType::f32);
    kernels::uniform_(tok, 0.1f, m.seed * 31u + 1u);
    kernels::uniform_(pos, 0.1f, m.seed * 31u + 2u);
    params_.push_back(tok.to(device_));
    params_.push_back(pos.to(device_));
  }
  if (spec_.has_head()) {
    const kernels::Linear head(m.channels, m.vocab, m.seed * 31u + 3u);
    params_.push_back(ones(m.channels, device_));
    params_.push_back(kernels::zeros_like(ones(m.channels, device_)));
    params_.push_back(head.weight.to(device_));
    params_.push_back(head.bias.to(device_));
  }
  for (const Tensor& p : params_) {
    grads_.push_back(kernels::zeros_like(p));
    adam_m_.push_back(kernels::zeros_like(p));
    adam_v_.push_back(kernels::zeros_like(p));
  }
}

Tensor GptStage::embed(const Tensor& tokens) {
  if (!tokens.defined() || tokens.dim() != 2 || tokens.size(1) != spec_.model.seq_len ||
      (tokens.dtype() != DType::i64 && tokens.dtype() != DType::i32)) {
    fail("GptStage", "stage 0 takes tokens [b, " + std::to_string(spec_.model.seq_len) + "] (i64), got " +
                         (tokens.defined() ? tokens.to_string() : std::string("undefined")));
  }
  return kernels::embedding(tokens.to(device_), params_[0], params_[1]);
}

Tensor GptStage::run_blocks(const Tensor& h_in, std::int64_t id, bool stash) {
  if (shards_.empty()) {
    Tensor h = h_in.to(device_);
    for (auto& b : blocks_) {
      h = b->output(b->mlp_partial(b->attention_partial(h)));
      if (stash) b->stash(id);
    }
    if (stash) stashed_.insert(id);
    return h;
  }
  if (spec_.blocks() == 0) return h_in;
  std::vector<ObjectRef<Tensor>> hs;
  for (const auto& shard : shards_) hs.push_back(shard.call<&GptShard::hold>(h_in));
  for (int b = 0; b < spec_.blocks(); ++b) {
    const auto attention = all_reduce(shards_, on_each<&GptShard::attention_partial>(shards_, b, hs));
    const auto mlp = all_reduce(shards_, on_each<&GptShard::mlp_partial>(shards_, b, attention));
    hs = on_each<&GptShard::output>(shards_, b, mlp);
  }
  std::vector<ObjectRef<std::int64_t>> stashed;
  if (stash) {
    for (const auto& shard : shards_) stashed.push_back(shard.call<&GptShard::stash>(id));
  }
  Tensor out = hs.front().get(kShardWait);
  for (const auto& ref : stashed) (void)ref.get(kShardWait);
  return out.to(device_);
}

Tensor GptStage::backward_blocks(const Tensor& dz_in, std::int64_t id) {
  if (shards_.empty()) {
    Tensor dz = dz_in.to(device_);
    for (auto it = blocks_.rbegin(); it != blocks_.rend(); ++it) {
      (*it)->restore(id);
      dz = (*it)->backward_output((*it)->backward_attention((*it)->backward_mlp(dz)));
    }
    stashed_.erase(id);
    return dz;
  }
  if (spec_.blocks() == 0) return dz_in;
  std::vector<ObjectRef<std::int64_t>> restored;
  for (const auto& shard : shards_) restored.push_back(shard.call<&GptShard::restore>(id));
  std::vector<ObjectRef<Tensor>> ds;
  for (const auto& shard : shards_) ds.push_back(shard.call<&GptShard::hold>(dz_in));
  for (int b = spec_.blocks() - 1; b >= 0; --b) {
    const auto ln2 = all_reduce(shards_, on_each<&GptShard::backward_mlp>(shards_, b, ds));
    const auto ln1 = all_reduce(shards_, on_each<&GptShard::backward_attention>(shards_, b, ln2));
    ds = on_each<&GptShard::backward_output>(shards_, b, ln1);
  }
  for (const auto& ref : restored) (void)ref.get(kShardWait);
  return ds.front().get(kShardWait).to(device_);
}

Tensor GptStage::head_forward(const Tensor& x, Saved* saved, kernels::LayerNormResult* norm) {
  const std::size_t o = spec_.embeds() ? 2 : 0;
  kernels::LayerNormResult n = kernels::layer_norm(x, params_[o], params_[o + 1]);
  Tensor logits = kernels::matmul(n.y, params_[o + 2]);
  kernels::add_bias(logits, params_[o + 3]);
  if (saved != nullptr) saved->x = x;
  if (norm != nullptr) *norm = std::move(n);
  return logits;
}

Tensor GptStage::forward(std::int64_t id, Tensor x) {
  if (spec_.has_head()) fail("GptStage::forward", "the last stage computes the loss: call forward_loss");
  Saved s;
  Tensor h = x;
  if (spec_.embeds()) {
    s.tokens = x.to(device_);
    h = embed(x);
  }
  h = run_blocks(h, id, true);
  if (spec_.embeds()) saved_[id] = std::move(s);
  if (device_.is_cuda()) kernels::synchronize(device_);
  return h;
}

float GptStage::forward_loss(std::int64_t id, Tensor x, Tensor targets, std::int64_t batch_size) {
  if (!spec_.has_head()) fail("GptStage::forward_loss", "stage " + std::to_string(spec_.stage) + " has no head");
  Saved s;
  Tensor h = x;
  if (spec_.embeds()) {
    s.tokens = x.to(device_);
    h = embed(x);
  }
  h = run_blocks(h, id, true);
  const Tensor logits = head_forward(h, &s, &s.norm);
  kernels::CrossEntropyResult ce =
      kernels::softmax_cross_entropy(logits, targets.to(device_), {.batch_size = batch_size});
  s.dlogits = std::move(ce.dlogits);
  saved_[id] = std::move(s);
  return ce.loss;
}

Tensor GptStage::backward(std::int64_t id, Tensor dy) {
  if (spec_.has_head()) fail("GptStage::backward", "the last stage's backward is backward_loss");
  Tensor dx = backward_blocks(dy, id);
  ++backwards_;
  if (spec_.embeds()) {
    auto it = saved_.find(id);
    if (it == saved_.end()) fail("GptStage::backward", "no forward of micro-batch " + std::to_string(id));
    kernels::embedding_backward(it->second.tokens, dx, grads_[0], grads_[1]);
    saved_.erase(it);
    return Tensor::zeros({1}, DType::f32);
  }
  if (device_.is_cuda()) kernels::synchronize(device_);
  return dx;
}

Tensor GptStage::backward_loss(std::int64_t id) {
  auto it = saved_.find(id);
  if (it == saved_.end()) fail("GptStage::backward_loss", "no forward_loss of micro-batch " + std::to_string(id));
  Saved s = std::move(it->second);
  saved_.erase(it);
  const std::size_t o = spec_.embeds() ? 2 : 0;
  kernels::matmul_into(s.norm.y, s.dlogits, grads_[o + 2], {.transpose_a = true, .accumulate = true});
  kernels::bias_grad_into(s.dlogits, grads_[o + 3], true);
  const Tensor dy = kernels::matmul(s.dlogits, params_[o + 2], {.transpose_b = true});
  Tensor dx = kernels::layer_norm_backward(dy, s.x, params_[o], s.norm.mean, s.norm.rstd, grads_[o], grads_[o + 1]);
  dx = backward_blocks(dx, id);
  ++backwards_;
  if (spec_.embeds()) {
    kernels::embedding_backward(s.tokens, dx, grads_[0], grads_[1]);
    return Tensor::zeros({1}, DType::f32);
  }
  if (device_.is_cuda()) kernels::synchronize(device_);
  return dx;
}

void GptStage::fail_batch(const std::string& what) {
  // Forget the half-done batch: stashes, gradients; parameters stay.
  for (const std::int64_t id : stashed_) {
    for (auto& b : blocks_) (void)b->restore(id);
  }
  stashed_.clear();
  std::vector<ObjectRef<std::int64_t>> reset;
  for (const auto& shard : shards_) reset.push_back(shard.call<&GptShard::reset>());
  for (const auto& ref : reset) (void)ref.wait_for(kShardWait);
  saved_.clear();
  for (auto& b : blocks_) b->zero_grad();
  for (const Tensor& g : grads_) kernels::zero_(g);
  backwards_ = 0;
  throw_error(Errc::invalid_argument, "GptStage::step: " + what);
}

std::int64_t GptStage::step(std::int64_t micro_batches) { return adamw_step(micro_batches, spec_.model.lr, 1.0f); }

double GptStage::grad_sum_of_squares() {
  std::vector<ObjectRef<double>> shard_sums;
  for (const auto& shard : shards_) shard_sums.push_back(shard.call<&GptShard::grad_sum_of_squares>());
  double sum = 0;
  for (const auto& b : blocks_) sum += b->grad_sum_of_squares();
  if (!grads_.empty()) {
    const double norm = kernels::global_norm(grads_);
    sum += norm * norm;
  }
  for (const auto& ref : shard_sums) sum += ref.get(kShardWait);
  return sum;
}

std::int64_t GptStage::parameter_count() const {
  std::int64_t n = 0;
  for (const Tensor& p : params_) n += p.numel();
  for (const auto& b : blocks_) n += b->parameter_count();
  for (const auto& shard : shards_) n += shard.call<&GptShard::parameter_count>().get(kShardWait);
  return n;
}

std::int64_t GptStage::adamw_step(std::int64_t micro_batches, float lr, float grad_scale) {
  if (micro_batches != backwards_ || !saved_.empty()) {
    fail_batch("the batch did not complete (" + std::to_string(backwards_) + " backwards of " +
               std::to_string(micro_batches) + ")");
  }
  if (!(lr >= 0) || !std::isfinite(lr) || !(grad_scale > 0) || !std::isfinite(grad_scale)) {
    fail_batch("lr " + std::to_string(lr) + " and grad_scale " + std::to_string(grad_scale) +
               " (want lr >= 0 and grad_scale > 0, finite)");
  }
  ++steps_;
  const GptSpec& m = spec_.model;
  std::vector<ObjectRef<std::int64_t>> shard_steps;
  for (const auto& shard : shards_) shard_steps.push_back(shard.call<&GptShard::adamw_step>(steps_, lr, grad_scale));
  for (auto& b : blocks_) {
    if (grad_scale != 1.0f) b->scale_grads(grad_scale);
    b->adamw_step(steps_, lr, m.weight_decay);
    b->zero_grad();
  }
  for (std::size_t i = 0; i < params_.size(); ++i) {
    if (grad_scale != 1.0f) kernels::scale_(grads_[i], grad_scale);
    kernels::adamw_step(params_[i], grads_[i], adam_m_[i], adam_v_[i], steps_,
                        {.lr = lr, .weight_decay = params_[i].dim() == 2 ? m.weight_decay : 0.0f});
    kernels::zero_(grads_[i]);
  }
  for (const auto& ref : shard_steps) (void)ref.get(kShardWait);
  backwards_ = 0;
  if (device_.is_cuda()) kernels::synchronize(device_);
  return steps_;
}

Tensor GptStage::infer(Tensor x) {
  if (spec_.has_head()) fail("GptStage::infer", "the last stage: call eval_loss or logits");
  Tensor h = spec_.embeds() ? embed(x) : x;
  h = run_blocks(h, -1, false);
  if (device_.is_cuda()) kernels::synchronize(device_);
  return h;
}

Tensor GptStage::logits(Tensor x) {
  if (!spec_.has_head()) fail("GptStage::logits", "stage " + std::to_string(spec_.stage) + " has no head");
  Tensor h = spec_.embeds() ? embed(x) : x;
  h = run_blocks(h, -1, false);
  return head_forward(h, nullptr, nullptr).to(Device::cpu());
}

float GptStage::eval_loss(Tensor x, Tensor targets, std::int64_t batch_size) {
  if (!spec_.has_head()) fail("GptStage::eval_loss", "stage " + std::to_string(spec_.stage) + " has no head");
  Tensor h = spec_.embeds() ? embed(x) : x;
  h = run_blocks(h, -1, false);
  const Tensor logits = head_forward(h, nullptr, nullptr);
  return kernels::softmax_cross_entropy(logits, targets.to(device_), {.batch_size = batch_size}).loss;
}

std::vector<std::string> GptStage::where() const {
  std::vector<std::string> out{"stage " + std::to_string(spec_.stage) + ": " + describe_place(device_)};
  for (std::size_t k = 0; k < shards_.size(); ++k) {
    out.push_back("  shard " + std::to_string(k) + ": " + shards_[k].call<&GptShard::where>().get(kShardWait));
  }
  return out;
}

float gpt_clip_scale(double norm, double clip_norm) {
  if (!(clip_norm > 0)) return 1.0f;
  return static_cast<float>(std::min(1.0, clip_norm / (norm + 1e-6)));
}

std::int64_t gpt_parameter_count(const GptSpec& spec) {
  spec.validate();
  const std::int64_t C = spec.channels, F = spec.hidden, V = spec.vocab, T = spec.seq_len;
  const std::int64_t block = 4 * C * C + 2 * C * F + 9 * C + F;  // BlockParameters: 2C + 3C^2+3C + C^2+C + 2C + CF+F + FC+C
  return spec.layers * block + V * C + T * C + 2 * C + C * V + V;
}

float gpt_train_step(GptStage& model, const Tensor& tokens, const Tensor& targets) {
  const float loss = model.forward_loss(0, tokens, targets, targets.numel());
  (void)model.backward_loss(0);
  (void)model.step(1);
  return loss;
}

GptStepResult gpt_train_step(GptStage& model, const Tensor& tokens, const Tensor& targets,
                             const GptStepOptions& options) {
  GptStepResult result;
  result.loss = model.forward_loss(0, tokens, targets, targets.numel());
  (void)model.backward_loss(0);
  if (options.clip_norm > 0) {
    result.grad_norm = std::sqrt(model.grad_sum_of_squares());
    result.grad_scale = gpt_clip_scale(result.grad_norm, options.clip_norm);
  }
  (void)model.adamw_step(1, options.lr, result.grad_scale);
  return result;
}

GptStepResult gpt_pipeline_step(StagePipeline<GptStage>& pipeline, const std::vector<Tensor>& inputs,
                                const std::vector<Tensor>& targets, std::int64_t batch_size, Schedule schedule,
                                const GptStepOptions& options, std::chrono::milliseconds wait) {
  if (!(options.clip_norm >= 0) || !std::isfinite(options.clip_norm)) {
    fail("gpt_pipeline_step", "clip_norm must be >= 0 (0: off), got " + std::to_string(options.clip_norm));
  }
  const ObjectRef<float> loss = pipeline.submit_passes(inputs, targets, batch_size, schedule);
  std::int64_t micro_batches = static_cast<std::int64_t>(inputs.size()) * pipeline.virtual_stages();
  GptStepResult result;
  std::exception_ptr failed;
  if (options.clip_norm > 0) {
    // Each stage's sum runs after its last backward (the actor's call order).
    std::vector<ObjectRef<double>> sums;
    for (const auto& stage : pipeline.stages()) sums.push_back(stage.call<&GptStage::grad_sum_of_squares>());
    double total = 0;
    for (const auto& ref : sums) {
      try {
        total += ref.get(wait);
      } catch (...) {
        if (!failed) failed = std::current_exception();
      }
    }
    result.grad_norm = std::sqrt(total);
    result.grad_scale = gpt_clip_scale(result.grad_norm, options.clip_norm);
    // Without the global norm no stage may step: a count no stage saw makes
    // every one refuse (gradients dropped, parameters untouched).
    if (failed) micro_batches = -1;
  }
  std::vector<ObjectRef<std::int64_t>> steps;
  for (const auto& stage : pipeline.stages()) {
    steps.push_back(stage.call<&GptStage::adamw_step>(micro_batches, options.lr, result.grad_scale));
  }
  for (const auto& ref : steps) {
    if (!ref.wait_for(wait) && !failed) {
      failed = std::make_exception_ptr(Error(Errc::timeout, "gpt_pipeline_step: a stage's step did not finish"));
    }
  }
  if (failed) std::rethrow_exception(failed);
  result.loss = loss.get(wait);
  for (const auto& ref : steps) (void)ref.get(wait);
  return result;
}

}  // namespace troupe::actors
