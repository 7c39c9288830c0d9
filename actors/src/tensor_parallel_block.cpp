// The tensor-parallel transformer block (tensor_parallel_block.hpp): parameter
// slicing, the shard actor's forward/backward phases and the driver's wiring.
#include "troupe/actors/tensor_parallel_block.hpp"

#include <string>
#include <utility>

#include "troupe/actors/tensor_parallel.hpp"
#include "troupe/runtime/cuda.hpp"
#include "troupe/runtime/error.hpp"
#include "troupe/runtime/runtime.hpp"

namespace troupe::actors {

namespace {

[[noreturn]] void fail(const std::string& where, const std::string& what) {
  throw_error(Errc::invalid_argument, where + ": " + what);
}

// As LinearShard: the actor's GPU when the process has it, else the host.
Device block_device(bool use_gpu) {
  if (!use_gpu || !cuda::available()) return Device::cpu();
  const std::vector<int> gpus = get_gpu_ids();
  if (gpus.empty()) return Device::cpu();
  return gpus.front() < cuda::device_count() ? Device::cuda(gpus.front()) : Device::cpu();
}

void check_spec(const BlockSpec& spec, const char* where) {
  if (spec.channels < 1 || spec.heads < 1 || spec.hidden < 1 || spec.seq_len < 1) {
    fail(where, "channels, heads, hidden and seq_len must be >= 1");
  }
  if (spec.channels % spec.heads != 0) {
    fail(where, "channels " + std::to_string(spec.channels) + " is not a multiple of heads " +
                    std::to_string(spec.heads));
  }
  if (spec.count < 1 || spec.index < 0 || spec.index >= spec.count || spec.count > spec.heads ||
      spec.count > spec.hidden) {
    fail(where, "shard " + std::to_string(spec.index) + " of " + std::to_string(spec.count) + " (want " +
                    "0 <= index < count <= heads, hidden)");
  }
}

Tensor ones(std::int64_t n) {
  Tensor t = Tensor::empty({n}, DType::f32);
  kernels::fill_(t, 1.0f);
  return t;
}

Tensor host_copy(const Tensor& t) { return t.defined() ? (t.device().is_cpu() ? t.clone() : t.to(Device::cpu())) : t; }
Tensor on(const Tensor& t, Device device) { return t.defined() ? t.to(device) : t; }

}  // namespace

std::vector<Tensor> BlockParameters::list() const {
  return {ln1_gamma, ln1_beta, w_qkv, b_qkv, w_o, b_o, ln2_gamma, ln2_beta, w_1, b_1, w_2, b_2};
}

BlockParameters BlockParameters::from_list(const std::vector<Tensor>& t) {
  if (t.size() != 12) fail("BlockParameters::from_list", std::to_string(t.size()) + " tensors, want 12");
  return {t[0], t[1], t[2], t[3], t[4], t[5], t[6], t[7], t[8], t[9], t[10], t[11]};
}

BlockParameters block_parameters(const BlockSpec& spec_in) {
  BlockSpec spec = spec_in;
  spec.index = 0;
  spec.count = 1;
  check_spec(spec, "block_parameters");
  const std::int64_t C = spec.channels;
  const kernels::Linear qkv(C, 3 * C, spec.seed);
  const kernels::Linear o(C, C, spec.seed + 1);
  const kernels::Linear up(C, spec.hidden, spec.seed + 2);
  const kernels::Linear down(spec.hidden, C, spec.seed + 3);
  return {ones(C),    kernels::zeros_like(ones(C)), qkv.weight, qkv.bias, o.weight,    o.bias,
          ones(C),    kernels::zeros_like(ones(C)), up.weight,  up.bias,  down.weight, down.bias};
}

BlockParameters shard_parameters(const BlockParameters& full, const BlockSpec& spec) {
  check_spec(spec, "shard_parameters");
  const std::int64_t C = spec.channels;
  const std::int64_t D = spec.head_dim();
  const auto [h0, h1] = shard_range(spec.heads, spec.index, spec.count);
  const auto [f0, f1] = shard_range(spec.hidden, spec.index, spec.count);
  const std::int64_t c0 = h0 * D;
  const std::int64_t c1 = h1 * D;
  const Tensor w_qkv = full.w_qkv.to(Device::cpu());
  const Tensor b_qkv = full.b_qkv.to(Device::cpu());
  BlockParameters s;
  s.ln1_gamma = host_copy(full.ln1_gamma);
  s.ln1_beta = host_copy(full.ln1_beta);
  s.w_qkv = concat(concat(copy_columns(w_qkv, c0, c1), copy_columns(w_qkv, C + c0, C + c1), 1),
                   copy_columns(w_qkv, 2 * C + c0, 2 * C + c1), 1);
  s.b_qkv = concat(concat(b_qkv.slice(c0, c1), b_qkv.slice(C + c0, C + c1), 0), b_qkv.slice(2 * C + c0, 2 * C + c1), 0);
  s.w_o = full.w_o.to(Device::cpu()).slice(c0, c1).clone();
  if (spec.index == 0) s.b_o = host_copy(full.b_o);
  s.ln2_gamma = host_copy(full.ln2_gamma);
  s.ln2_beta = host_copy(full.ln2_beta);
  s.w_1 = copy_columns(full.w_1.to(Device::cpu()), f0, f1);
  s.b_1 = full.b_1.to(Device::cpu()).slice(f0, f1).clone();
  s.w_2 = full.w_2.to(Device::cpu()).slice(f0, f1).clone();
  if (spec.index == 0) s.b_2 = host_copy(full.b_2);
  return s;
}

// ---- TransformerBlockShard ------------------------------------------------------------

TransformerBlockShard::TransformerBlockShard(BlockSpec spec) : spec_(spec), device_(block_device(spec.use_gpu)) {
  check_spec(spec_, "TransformerBlockShard");
  const BlockParameters host = shard_parameters(block_parameters(spec_), spec_);
  std::vector<Tensor> values = host.list();
  for (Tensor& t : values) t = on(t, device_);
  p_ = BlockParameters::from_list(values);
  for (Tensor& t : values) {
    if (t.defined()) t = kernels::zeros_like(t);
  }
  g_ = BlockParameters::from_list(values);
  const auto [h0, h1] = shard_range(spec_.heads, spec_.index, spec_.count);
  attention_shape_ = {.batch = 0, .seq_len = spec_.seq_len, .heads = h1 - h0, .head_dim = spec_.head_dim()};
}

std::vector<Tensor*> TransformerBlockShard::params() {
  return {&p_.ln1_gamma, &p_.ln1_beta, &p_.w_qkv, &p_.b_qkv, &p_.w_o, &p_.b_o,
          &p_.ln2_gamma, &p_.ln2_beta, &p_.w_1,   &p_.b_1,   &p_.w_2, &p_.b_2};
}
std::vector<Tensor*> TransformerBlockShard::grads() {
  return {&g_.ln1_gamma, &g_.ln1_beta, &g_.w_qkv, &g_.b_qkv, &g_.w_o, &g_.b_o,
          &g_.ln2_gamma, &g_.ln2_beta, &g_.w_1,   &g_.b_1,   &g_.w_2, &g_.b_2};
}

Tensor TransformerBlockShard::attention_partial(const Tensor& x) {
  const char* where = "TransformerBlockShard::attention_partial";
  if (!x.defined() || x.dim() != 2 || x.size(1) != spec_.channels || x.size(0) % spec_.seq_len != 0) {
    fail(where, "x is " + (x.defined() ? x.to_string() : std::string("undefined")) + "; expected [B*" +
                    std::to_string(spec_.seq_len) + ", " + std::to_string(spec_.channels) + "]");
  }
  x_ = x.to(device_);
  attention_shape_.batch = x_.size(0) / spec_.seq_len;
  n1_ = kernels::layer_norm(x_, p_.ln1_gamma, p_.ln1_beta);
  qkv_ = kernels::matmul(n1_.y, p_.w_qkv);
  kernels::add_bias(qkv_, p_.b_qkv);
  attention_ = kernels::causal_attention(qkv_, attention_shape_);
  Tensor partial = kernels::matmul(attention_.out, p_.w_o);
  if (p_.b_o.defined()) kernels::add_bias(partial, p_.b_o);
  return partial;
}

Tensor TransformerBlockShard::mlp_partial(const Tensor& attention_sum) {
  if (!x_.defined()) fail("TransformerBlockShard::mlp_partial", "no attention_partial before");
  y_ = x_.clone();
  kernels::add_(y_, attention_sum.to(device_));
  n2_ = kernels::layer_norm(y_, p_.ln2_gamma, p_.ln2_beta);
  h_ = kernels::matmul(n2_.y, p_.w_1);
  kernels::add_bias(h_, p_.b_1);
  a_ = kernels::gelu(h_);
  Tensor partial = kernels::matmul(a_, p_.w_2);
  if (p_.b_2.defined()) kernels::add_bias(partial, p_.b_2);
  return partial;
}

Tensor TransformerBlockShard::output(const Tensor& mlp_sum) {
  if (!y_.defined()) fail("TransformerBlockShard::output", "no mlp_partial before");
  Tensor z = y_.clone();
  kernels::add_(z, mlp_sum.to(device_));
  return z;
}

Tensor TransformerBlockShard::backward_mlp(const Tensor& dz) {
  if (!a_.defined()) fail("TransformerBlockShard::backward_mlp", "no forward before");
  dz_ = dz.to(device_);
  kernels::matmul_into(a_, dz_, g_.w_2, {.transpose_a = true, .accumulate = true});
  if (g_.b_2.defined()) kernels::bias_grad_into(dz_, g_.b_2, true);
  const Tensor dh = kernels::gelu_backward(kernels::matmul(dz_, p_.w_2, {.transpose_b = true}), h_);
  kernels::matmul_into(n2_.y, dh, g_.w_1, {.transpose_a = true, .accumulate = true});
  kernels::bias_grad_into(dh, g_.b_1, true);
  return kernels::matmul(dh, p_.w_1, {.transpose_b = true});
}

Tensor TransformerBlockShard::backward_attention(const Tensor& ln2_grad_sum) {
  if (!dz_.defined()) fail("TransformerBlockShard::backward_attention", "no backward_mlp before");
  dy_ = kernels::layer_norm_backward(ln2_grad_sum.to(device_), y_, p_.ln2_gamma, n2_.mean, n2_.rstd, g_.ln2_gamma,
                                     g_.ln2_beta);
  kernels::add_(dy_, dz_);  // the residual
  kernels::matmul_into(attention_.out, dy_, g_.w_o, {.transpose_a = true, .accumulate = true});
  if (g_.b_o.defined()) kernels::bias_grad_into(dy_, g_.b_o, true);
  const Tensor dqkv = kernels::causal_attention_backward(kernels::matmul(dy_, p_.w_o, {.transpose_b = true}), qkv_,
                                                         attention_.out, attention_.lse, attention_shape_);
  kernels::matmul_into(n1_.y, dqkv, g_.w_qkv, {.transpose_a = true, .accumulate = true});
  kernels::bias_grad_into(dqkv, g_.b_qkv, true);
  return kernels::matmul(dqkv, p_.w_qkv, {.transpose_b = true});
}

Tensor TransformerBlockShard::backward_output(const Tensor& ln1_grad_sum) {
  if (!dy_.defined()) fail("TransformerBlockShard::backward_output", "no backward_attention before");
  Tensor dx = kernels::layer_norm_backward(ln1_grad_sum.to(device_), x_, p_.ln1_gamma, n1_.mean, n1_.rstd,
                                           g_.ln1_gamma, g_.ln1_beta);
  kernels::add_(dx, dy_);
  return dx;
}

Tensor TransformerBlockShard::sum(const Tensor& a, const Tensor& b) {
  Tensor out = a.device() == device_ ? a.clone() : a.to(device_);
  kernels::add_(out, b.to(device_));
  return out;
}

Tensor TransformerBlockShard::hold(const Tensor& value) { return value.to(device_); }

std::int64_t TransformerBlockShard::stash(std::int64_t key) {
  if (!a_.defined()) fail("TransformerBlockShard::stash", "no forward to stash");
  stashed_[key] = Activations{std::move(x_), std::move(qkv_), std::move(y_), std::move(h_),
                              std::move(a_), std::move(n1_), std::move(n2_), std::move(attention_)};
  x_ = qkv_ = y_ = h_ = a_ = Tensor();
  n1_ = n2_ = kernels::LayerNormResult{};
  attention_ = kernels::AttentionResult{};
  return static_cast<std::int64_t>(stashed_.size());
}

std::int64_t TransformerBlockShard::restore(std::int64_t key) {
  auto it = stashed_.find(key);
  if (it == stashed_.end()) fail("TransformerBlockShard::restore", "nothing stashed under " + std::to_string(key));
  Activations& a = it->second;
  x_ = std::move(a.x);
  qkv_ = std::move(a.qkv);
  y_ = std::move(a.y);
  h_ = std::move(a.h);
  a_ = std::move(a.a);
  n1_ = std::move(a.n1);
  n2_ = std::move(a.n2);
  attention_ = std::move(a.attention);
  stashed_.erase(it);
  return static_cast<std::int64_t>(stashed_.size());
}

std::vector<Tensor> TransformerBlockShard::parameters() const {
  std::vector<Tensor> out = p_.list();
  for (Tensor& t : out) t = host_copy(t);
  return out;
}
std::vector<Tensor> TransformerBlockShard::gradients() const {
  std::vector<Tensor> out = g_.list();
  for (Tensor& t : out) t = host_copy(t);
  return out;
}

void TransformerBlockShard::zero_grad() {
  for (Tensor* g : grads()) {
    if (g->defined()) kernels::zero_(*g);
  }
}

void TransformerBlockShard::sgd_step(float lr) {
  const std::vector<Tensor*> ps = params();
  const std::vector<Tensor*> gs = grads();
  for (std::size_t i = 0; i < ps.size(); ++i) {
    if (ps[i]->defined()) kernels::add_(*ps[i], *gs[i], -lr);
  }
}

void TransformerBlockShard::adamw_step(std::int64_t step, float lr, float weight_decay) {
  const std::vector<Tensor*> ps = params();
  const std::vector<Tensor*> gs = grads();
  if (adam_m_.empty()) {
    for (Tensor* p : ps) {
      adam_m_.push_back(p->defined() ? kernels::zeros_like(*p) : Tensor());
      adam_v_.push_back(p->defined() ? kernels::zeros_like(*p) : Tensor());
    }
  }
  for (std::size_t i = 0; i < ps.size(); ++i) {
    if (!ps[i]->defined()) continue;
    // Weight decay on matrices only (GPT-2's choice): not on biases and norms.
    const bool decays = ps[i]->dim() == 2;
    kernels::adamw_step(*ps[i], *gs[i], adam_m_[i], adam_v_[i], step,
                        {.lr = lr, .weight_decay = decays ? weight_decay : 0.0f});
  }
}

double TransformerBlockShard::grad_sum_of_squares() const {
  std::vector<Tensor> counted;
  const std::vector<Tensor> all = g_.list();
  for (std::size_t i = 0; i < all.size(); ++i) {
    const bool replicated = i == 0 || i == 1 || i == 6 || i == 7;  // the layer norms
    if (all[i].defined() && (!replicated || spec_.index == 0)) counted.push_back(all[i]);
  }
  const double norm = kernels::global_norm(counted);
  return norm * norm;
}

std::int64_t TransformerBlockShard::parameter_count() const {
  std::int64_t n = 0;
  const std::vector<Tensor> all = p_.list();
  for (std::size_t i = 0; i < all.size(); ++i) {
    const bool replicated = i == 0 || i == 1 || i == 6 || i == 7;  // the layer norms
    if (all[i].defined() && (!replicated || spec_.index == 0)) n += all[i].numel();
  }
  return n;
}

void TransformerBlockShard::scale_grads(float factor) {
  for (Tensor* g : grads()) {
    if (g->defined()) kernels::scale_(*g, factor);
  }
}

// ---- collectives and the driver ---------------------------------------------------------

std::vector<ObjectRef<Tensor>> all_reduce(const BlockShardHandles& shards,
                                          const std::vector<ObjectRef<Tensor>>& values) {
  if (shards.empty() || values.size() != shards.size()) {
    fail("all_reduce", std::to_string(values.size()) + " values for " + std::to_string(shards.size()) + " shards");
  }
  const std::size_t n = shards.size();
  if (n == 1) return {shards[0].call<&TransformerBlockShard::hold>(values[0])};
  if ((n & (n - 1)) == 0) {
    // Recursive doubling; a + b and b + a are the same bits, so every shard
    // ends with the same sum.
    std::vector<ObjectRef<Tensor>> held = values;
    for (std::size_t distance = 1; distance < n; distance <<= 1) {
      std::vector<ObjectRef<Tensor>> next;
      next.reserve(n);
      for (std::size_t k = 0; k < n; ++k) {
        next.push_back(shards[k].call<&TransformerBlockShard::sum>(held[k], held[k ^ distance]));
      }
      held = std::move(next);
    }
    return held;
  }
  ObjectRef<Tensor> total = values[0];
  for (std::size_t k = 1; k < n; ++k) total = shards[k].call<&TransformerBlockShard::sum>(total, values[k]);
  std::vector<ObjectRef<Tensor>> held;
  held.reserve(n);
  for (std::size_t k = 0; k + 1 < n; ++k) held.push_back(shards[k].call<&TransformerBlockShard::hold>(total));
  held.push_back(total);
  return held;
}

TensorParallelBlock::TensorParallelBlock(BlockSpec spec, int shards, std::vector<ActorOptions> options) {
  spec.index = 0;
  spec.count = shards;
  check_spec(spec, "TensorParallelBlock");
  if (options.size() > 1 && options.size() != static_cast<std::size_t>(shards)) {
    fail("TensorParallelBlock", std::to_string(options.size()) + " ActorOptions for " + std::to_string(shards) +
                                    " shards (give none, one for all, or one per shard)");
  }
  for (int k = 0; k < shards; ++k) {
    ActorOptions shard_options = options.empty() ? ActorOptions{} : options[options.size() == 1 ? 0 : k];
    if (options.size() == 1 && !shard_options.name.empty()) shard_options.name += "-" + std::to_string(k);
    BlockSpec shard_spec = spec;
    shard_spec.index = k;
    shards_.push_back(actor<TransformerBlockShard>(std::move(shard_options), shard_spec));
  }
}

namespace {
template <auto Method>
std::vector<ObjectRef<Tensor>> on_each(const BlockShardHandles& shards, const std::vector<ObjectRef<Tensor>>& in) {
  std::vector<ObjectRef<Tensor>> out;
  out.reserve(shards.size());
  for (std::size_t k = 0; k < shards.size(); ++k) out.push_back(shards[k].call<Method>(in[k]));
  return out;
}
}  // namespace

std::vector<ObjectRef<Tensor>> TensorParallelBlock::forward_shards(const ObjectRef<Tensor>& x) const {
  const std::vector<ObjectRef<Tensor>> xs(shards_.size(), x);
  const auto attention = all_reduce(shards_, on_each<&TransformerBlockShard::attention_partial>(shards_, xs));
  const auto mlp = all_reduce(shards_, on_each<&TransformerBlockShard::mlp_partial>(shards_, attention));
  return on_each<&TransformerBlockShard::output>(shards_, mlp);
}

std::vector<ObjectRef<Tensor>> TensorParallelBlock::backward_shards(const ObjectRef<Tensor>& dz) const {
  const std::vector<ObjectRef<Tensor>> dzs(shards_.size(), dz);
  const auto ln2 = all_reduce(shards_, on_each<&TransformerBlockShard::backward_mlp>(shards_, dzs));
  const auto ln1 = all_reduce(shards_, on_each<&TransformerBlockShard::backward_attention>(shards_, ln2));
  return on_each<&TransformerBlockShard::backward_output>(shards_, ln1);
}

ObjectRef<void> TensorParallelBlock::zero_grad() const {
  std::vector<ObjectRef<void>> done;
  for (const auto& shard : shards_) done.push_back(shard.call<&TransformerBlockShard::zero_grad>());
  return when_all(done);
}

ObjectRef<void> TensorParallelBlock::sgd_step(float lr) const {
  std::vector<ObjectRef<void>> done;
  for (const auto& shard : shards_) done.push_back(shard.call<&TransformerBlockShard::sgd_step>(lr));
  return when_all(done);
}

ObjectRef<void> TensorParallelBlock::adamw_step(std::int64_t step, float lr, float weight_decay) const {
  std::vector<ObjectRef<void>> done;
  for (const auto& shard : shards_) {
    done.push_back(shard.call<&TransformerBlockShard::adamw_step>(step, lr, weight_decay));
  }
  return when_all(done);
}

std::vector<ObjectRef<double>> TensorParallelBlock::grad_sums_of_squares() const {
  std::vector<ObjectRef<double>> sums;
  for (const auto& shard : shards_) sums.push_back(shard.call<&TransformerBlockShard::grad_sum_of_squares>());
  return sums;
}

ObjectRef<void> TensorParallelBlock::scale_grads(float factor) const {
  std::vector<ObjectRef<void>> done;
  for (const auto& shard : shards_) done.push_back(shard.call<&TransformerBlockShard::scale_grads>(factor));
  return when_all(done);
}

}  // namespace troupe::actors

TROUPE_ACTOR(troupe::actors::TransformerBlockShard, (troupe::actors::BlockSpec), attention_partial, mlp_partial,
             output, backward_mlp, backward_attention, backward_output, sum, hold, stash, restore, parameters, gradients, zero_grad,
             sgd_step, adamw_step, grad_sum_of_squares, scale_grads, spec);
