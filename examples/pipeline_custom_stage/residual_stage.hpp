// A user's own pipeline stage: residual MLP blocks with layer norm,
//   out = h + W2 relu(W1 LayerNorm(h) + b1) + b2,
// a linear head and softmax cross-entropy on the model's last block. It is
// not troupe's PipelineStage: it implements the stage concept of
// <troupe/actors/stage.hpp> itself (chunked, so it also runs interleaved,
// and with the backward split into input and weight gradients, so it runs
// under zero-bubble schedules). Header-only so the example's test can use it.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "troupe/actors/kernels.hpp"
#include "troupe/actors/stage.hpp"
#include "troupe/runtime/actor.hpp"
#include "troupe/runtime/error.hpp"
#include "troupe/runtime/tensor.hpp"

namespace residual {

using troupe::Tensor;
namespace kernels = troupe::kernels;

// ---- layer norm over the last dimension, host f32 -----------------------------------------

struct LayerNormResult {
  Tensor y;     // gamma * xhat + beta
  Tensor xhat;  // (x - mean) * rstd
  Tensor rstd;  // [rows]: 1 / sqrt(var + eps)
};

inline LayerNormResult layer_norm(const Tensor& x, const Tensor& gamma, const Tensor& beta, float eps = 1e-5f) {
  const std::int64_t rows = x.size(0), d = x.size(1);
  LayerNormResult r{Tensor::empty(x.shape(), troupe::DType::f32), Tensor::empty(x.shape(), troupe::DType::f32),
                    Tensor::empty({rows}, troupe::DType::f32)};
  const float* in = x.data<float>();
  for (std::int64_t i = 0; i < rows; ++i) {
    double mean = 0, var = 0;
    for (std::int64_t j = 0; j < d; ++j) mean += in[i * d + j];
    mean /= static_cast<double>(d);
    for (std::int64_t j = 0; j < d; ++j) var += (in[i * d + j] - mean) * (in[i * d + j] - mean);
    var /= static_cast<double>(d);
    const float rstd = static_cast<float>(1.0 / std::sqrt(var + eps));
    r.rstd.data<float>()[i] = rstd;
    for (std::int64_t j = 0; j < d; ++j) {
      const float xhat = static_cast<float>(in[i * d + j] - mean) * rstd;
      r.xhat.data<float>()[i * d + j] = xhat;
      r.y.data<float>()[i * d + j] = gamma.data<float>()[j] * xhat + beta.data<float>()[j];
    }
  }
  return r;
}

// dx from dy: rstd * (g - mean(g) - xhat * mean(g * xhat)), g = dy * gamma.
inline Tensor layer_norm_backward_input(const Tensor& dy, const LayerNormResult& r, const Tensor& gamma) {
  const std::int64_t rows = dy.size(0), d = dy.size(1);
  Tensor dx = Tensor::empty(dy.shape(), troupe::DType::f32);
  for (std::int64_t i = 0; i < rows; ++i) {
    double mean_g = 0, mean_gx = 0;
    for (std::int64_t j = 0; j < d; ++j) {
      const double g = dy.data<float>()[i * d + j] * gamma.data<float>()[j];
      mean_g += g;
      mean_gx += g * r.xhat.data<float>()[i * d + j];
    }
    mean_g /= static_cast<double>(d);
    mean_gx /= static_cast<double>(d);
    for (std::int64_t j = 0; j < d; ++j) {
      const double g = dy.data<float>()[i * d + j] * gamma.data<float>()[j];
      dx.data<float>()[i * d + j] =
          static_cast<float>(r.rstd.data<float>()[i] * (g - mean_g - r.xhat.data<float>()[i * d + j] * mean_gx));
    }
  }
  return dx;
}

// dgamma += sum over rows of dy * xhat; dbeta += sum over rows of dy.
inline void layer_norm_backward_weight(const Tensor& dy, const Tensor& xhat, const Tensor& dgamma,
                                       const Tensor& dbeta) {
  const std::int64_t rows = dy.size(0), d = dy.size(1);
  for (std::int64_t i = 0; i < rows; ++i) {
    for (std::int64_t j = 0; j < d; ++j) {
      dgamma.data<float>()[j] += dy.data<float>()[i * d + j] * xhat.data<float>()[i * d + j];
      dbeta.data<float>()[j] += dy.data<float>()[i * d + j];
    }
  }
}

// ---- one residual block ------------------------------------------------------------------------

struct Block {
  Block(std::int64_t dim, std::int64_t hidden, std::uint32_t seed)
      : gamma(Tensor::empty({dim}, troupe::DType::f32)),
        beta(Tensor::zeros({dim}, troupe::DType::f32)),
        dgamma(Tensor::zeros({dim}, troupe::DType::f32)),
        dbeta(Tensor::zeros({dim}, troupe::DType::f32)),
        up(dim, hidden, seed),
        down(hidden, dim, seed + 1000) {
    kernels::fill_(gamma, 1.0f);
  }

  // What the backward halves need of one micro-batch.
  struct Saved {
    Tensor h;              // block input (forward)
    LayerNormResult norm;  // forward
    Tensor z;              // pre-activation of up (forward)
    Tensor a;              // relu(z) (forward)
    Tensor du, dz, dn;     // gradients (backward_input), for backward_weight
  };

  Tensor forward(const Tensor& h, Saved& s) {
    s.h = h;
    s.norm = layer_norm(h, gamma, beta);
    s.z = kernels::matmul(s.norm.y, up.weight);
    kernels::add_bias(s.z, up.bias);
    s.a = kernels::relu(s.z);
    Tensor out = kernels::matmul(s.a, down.weight);
    kernels::add_bias(out, down.bias);
    kernels::add_(out, h);
    return out;
  }
  // dh from dout; keeps du, dz, dn for backward_weight.
  Tensor backward_input(const Tensor& dout, Saved& s) {
    s.du = dout;
    s.dz = kernels::relu_backward(kernels::matmul(dout, down.weight, {.transpose_b = true}), s.z);
    s.dn = kernels::matmul(s.dz, up.weight, {.transpose_b = true});
    Tensor dh = layer_norm_backward_input(s.dn, s.norm, gamma);
    kernels::add_(dh, dout);
    return dh;
  }
  void backward_weight(const Saved& s) {
    kernels::matmul_into(s.a, s.du, down.weight_grad, {.transpose_a = true, .accumulate = true});
    kernels::bias_grad_into(s.du, down.bias_grad, true);
    kernels::matmul_into(s.norm.y, s.dz, up.weight_grad, {.transpose_a = true, .accumulate = true});
    kernels::bias_grad_into(s.dz, up.bias_grad, true);
    layer_norm_backward_weight(s.dn, s.norm.xhat, dgamma, dbeta);
  }
  void sgd_step(float lr) {
    up.sgd_step(lr);
    down.sgd_step(lr);
    up.zero_grad();
    down.zero_grad();
    kernels::add_(gamma, dgamma, -lr);
    kernels::add_(beta, dbeta, -lr);
    kernels::zero_(dgamma);
    kernels::zero_(dbeta);
  }

  Tensor gamma, beta, dgamma, dbeta;
  kernels::Linear up, down;
};

// ---- the model's description ---------------------------------------------------------------------

struct ModelSpec {
  std::int64_t dim = 16;
  std::int64_t hidden = 32;
  std::int64_t classes = 4;
  int blocks = 4;  // = stages * chunks per stage
  std::uint32_t seed = 1;
  float lr = 0.05f;

  template <class Archive>
  void serialize(Archive& ar) {
    ar(dim, hidden, classes, blocks, seed, lr);
  }
};

// Block g of the model (its seeds depend on g only), and the head.
inline Block make_block(const ModelSpec& spec, int g) {
  return Block(spec.dim, spec.hidden, spec.seed + 10 * static_cast<std::uint32_t>(g));
}
inline kernels::Linear make_head(const ModelSpec& spec) { return kernels::Linear(spec.dim, spec.classes, spec.seed + 7777); }

// ---- the stage actor -------------------------------------------------------------------------------

// Stage `stage` of `stages` holds blocks chunk * stages + stage for chunk
// 0 .. chunks-1; the stage holding the model's last block also holds the
// head. Every method takes the chunk first (the concept's chunked form).
class ResidualStage {
 public:
  ResidualStage(ModelSpec spec, int stage, int stages, int chunks)
      : spec_(spec), stage_(stage), stages_(stages), head_(make_head(spec)) {
    for (int c = 0; c < chunks; ++c) blocks_.push_back(make_block(spec, c * stages + stage));
    has_head_ = (chunks - 1) * stages + stage == spec.blocks - 1;
  }

  Tensor forward(int chunk, std::int64_t id, Tensor h) {
    return blocks_.at(chunk).forward(h, saved_[{chunk, id}]);
  }
  float forward_loss(int chunk, std::int64_t id, Tensor h, Tensor labels, std::int64_t batch_size) {
    if (!has_head_) throw troupe::Error(troupe::Errc::invalid_argument, "ResidualStage: no head on this stage");
    Block::Saved& s = saved_[{chunk, id}];
    Tensor out = blocks_.at(chunk).forward(h, s);
    Tensor logits = kernels::matmul(out, head_.weight);
    kernels::add_bias(logits, head_.bias);
    kernels::CrossEntropyResult ce = kernels::softmax_cross_entropy(logits, labels, {.batch_size = batch_size});
    head_saved_[id] = {out, ce.dlogits};
    return ce.loss;
  }
  Tensor backward(int chunk, std::int64_t id, Tensor dy) {
    Tensor dx = backward_input(chunk, id, std::move(dy));
    backward_weight(chunk, id);
    return dx;
  }
  Tensor backward_loss(int chunk, std::int64_t id) {
    Tensor dx = backward_input_loss(chunk, id);
    backward_weight(chunk, id);
    return dx;
  }
  Tensor backward_input(int chunk, std::int64_t id, Tensor dy) {
    return blocks_.at(chunk).backward_input(dy, saved_.at({chunk, id}));
  }
  Tensor backward_input_loss(int chunk, std::int64_t id) {
    const auto& [out, dlogits] = head_saved_.at(id);
    return backward_input(chunk, id, kernels::matmul(dlogits, head_.weight, {.transpose_b = true}));
  }
  std::int64_t backward_weight(int chunk, std::int64_t id) {
    auto it = saved_.find({chunk, id});
    if (it == saved_.end()) throw troupe::Error(troupe::Errc::invalid_argument, "ResidualStage: nothing saved");
    blocks_.at(chunk).backward_weight(it->second);
    saved_.erase(it);
    if (auto head = head_saved_.find(id); head != head_saved_.end() && has_head_ &&
                                          chunk == static_cast<int>(blocks_.size()) - 1) {
      kernels::matmul_into(head->second.first, head->second.second, head_.weight_grad,
                           {.transpose_a = true, .accumulate = true});
      kernels::bias_grad_into(head->second.second, head_.bias_grad, true);
      head_saved_.erase(head);
    }
    return ++backwards_;
  }
  std::int64_t step(std::int64_t micro_batches) {
    check_batch_complete(micro_batches, "step");
    return apply_step();
  }

  // Data-parallel replicas (the stage concept's gradient sync): every
  // gradient of the stage flattened into one f32 vector, in a fixed order
  // (per block up W, b, down W, b, gamma, beta; then the head's W, b).
  Tensor take_gradients(std::int64_t micro_batches) {
    check_batch_complete(micro_batches, "take_gradients");
    const std::vector<Tensor> grads = gradient_tensors();
    Tensor flat = Tensor::empty({flat_size()}, troupe::DType::f32);
    std::int64_t offset = 0;
    for (const Tensor& g : grads) {
      flat.slice(offset, offset + g.numel()).copy_from(g.reshape({g.numel()}));
      kernels::zero_(g);
      offset += g.numel();
    }
    backwards_ = 0;
    return flat;
  }
  // Every parameter, flattened in the order of take_gradients (to compare replicas).
  Tensor parameters() const {
    std::vector<Tensor> all;
    for (const Block& block : blocks_) {
      for (const Tensor& p : {block.up.weight, block.up.bias, block.down.weight, block.down.bias, block.gamma,
                              block.beta}) {
        all.push_back(p);
      }
    }
    if (has_head_) {
      all.push_back(head_.weight);
      all.push_back(head_.bias);
    }
    std::int64_t n = 0;
    for (const Tensor& p : all) n += p.numel();
    Tensor flat = Tensor::empty({n}, troupe::DType::f32);
    std::int64_t offset = 0;
    for (const Tensor& p : all) {
      flat.slice(offset, offset + p.numel()).copy_from(p.reshape({p.numel()}));
      offset += p.numel();
    }
    return flat;
  }
  Tensor sum_gradients(Tensor a, Tensor b) {
    check_flat(a, "sum_gradients");
    check_flat(b, "sum_gradients");
    Tensor out = a.clone();  // a may be its producer's storage (local mode)
    kernels::add_(out, b);
    return out;
  }
  std::int64_t step_with_gradients(Tensor total) {
    check_flat(total, "step_with_gradients");
    if (backwards_ != 0 || !saved_.empty()) {
      check_batch_complete(-1, "step_with_gradients");  // drops the batch and throws
    }
    std::int64_t offset = 0;
    for (const Tensor& g : gradient_tensors()) {
      Tensor target = g;
      target.copy_from(total.slice(offset, offset + g.numel()).reshape(g.shape()));
      offset += g.numel();
    }
    return apply_step();
  }

 private:
  void check_batch_complete(std::int64_t micro_batches, const char* op) {
    if (micro_batches != backwards_ || !saved_.empty()) {
      saved_.clear();
      head_saved_.clear();
      backwards_ = 0;
      for (const Tensor& g : gradient_tensors()) kernels::zero_(g);
      throw troupe::Error(troupe::Errc::invalid_argument,
                          std::string("ResidualStage::") + op + ": the batch did not complete");
    }
  }
  std::vector<Tensor> gradient_tensors() const {
    std::vector<Tensor> out;
    for (const Block& block : blocks_) {
      for (const Tensor& g : {block.up.weight_grad, block.up.bias_grad, block.down.weight_grad,
                              block.down.bias_grad, block.dgamma, block.dbeta}) {
        out.push_back(g);
      }
    }
    if (has_head_) {
      out.push_back(head_.weight_grad);
      out.push_back(head_.bias_grad);
    }
    return out;
  }
  std::int64_t flat_size() const {
    std::int64_t n = 0;
    for (const Tensor& g : gradient_tensors()) n += g.numel();
    return n;
  }
  void check_flat(const Tensor& t, const char* op) const {
    if (!t.defined() || t.dim() != 1 || t.size(0) != flat_size() || t.dtype() != troupe::DType::f32) {
      throw troupe::Error(troupe::Errc::invalid_argument, std::string("ResidualStage::") + op + ": got " +
                                                              t.to_string() + ", want f32 [" +
                                                              std::to_string(flat_size()) + "]");
    }
  }
  std::int64_t apply_step() {
    for (Block& block : blocks_) block.sgd_step(spec_.lr);
    if (has_head_) {
      head_.sgd_step(spec_.lr);
      head_.zero_grad();
    }
    backwards_ = 0;
    return ++steps_;
  }

  ModelSpec spec_;
  int stage_ = 0;
  int stages_ = 1;
  std::vector<Block> blocks_;
  kernels::Linear head_;
  bool has_head_ = false;
  std::map<std::pair<int, std::int64_t>, Block::Saved> saved_;
  std::map<std::int64_t, std::pair<Tensor, Tensor>> head_saved_;  // block output, dlogits
  std::int64_t backwards_ = 0;
  std::int64_t steps_ = 0;
};

static_assert(troupe::actors::PipelineStageClass<ResidualStage>);
static_assert(troupe::actors::stage_traits<ResidualStage>::syncs_gradients);

// ---- the same model, unpipelined -------------------------------------------------------------------

// Every block and the head in one object, the whole batch at once.
class Model {
 public:
  explicit Model(ModelSpec spec) : spec_(spec), head_(make_head(spec)) {
    for (int g = 0; g < spec.blocks; ++g) blocks_.push_back(make_block(spec, g));
  }
  // One SGD step on the batch; returns its mean loss.
  float train_batch(const Tensor& x, const Tensor& labels) {
    std::vector<Block::Saved> saved(blocks_.size());
    Tensor h = x;
    for (std::size_t g = 0; g < blocks_.size(); ++g) h = blocks_[g].forward(h, saved[g]);
    Tensor logits = kernels::matmul(h, head_.weight);
    kernels::add_bias(logits, head_.bias);
    kernels::CrossEntropyResult ce = kernels::softmax_cross_entropy(logits, labels);
    Tensor dy = head_.backward(h, ce.dlogits);
    for (std::size_t g = blocks_.size(); g-- > 0;) {
      dy = blocks_[g].backward_input(dy, saved[g]);
      blocks_[g].backward_weight(saved[g]);
    }
    for (Block& block : blocks_) block.sgd_step(spec_.lr);
    head_.sgd_step(spec_.lr);
    head_.zero_grad();
    return ce.loss;
  }

 private:
  ModelSpec spec_;
  std::vector<Block> blocks_;
  kernels::Linear head_;
};

// ---- data and the two ways of training -----------------------------------------------------------

// A batch of `rows` random inputs [rows, dim] in [-1, 1) and labels from a
// fixed rule (which of the first `classes` features is largest), the same
// for a seed on every platform.
inline std::pair<Tensor, Tensor> make_batch(const ModelSpec& spec, std::int64_t rows, std::uint64_t seed) {
  Tensor x = Tensor::empty({rows, spec.dim}, troupe::DType::f32);
  Tensor labels = Tensor::empty({rows}, troupe::DType::i64);
  std::uint64_t state = seed * 0x9E3779B97F4A7C15ull + 1;
  for (std::int64_t i = 0; i < rows; ++i) {
    std::int64_t best = 0;
    for (std::int64_t j = 0; j < spec.dim; ++j) {
      state = state * 6364136223846793005ull + 1442695040888963407ull;
      const float value = static_cast<float>((state >> 40) & 0xFFFFFF) / static_cast<float>(1 << 23) - 1.0f;
      x.data<float>()[i * spec.dim + j] = value;
      if (j < spec.classes && value > x.data<float>()[i * spec.dim + best]) best = j;
    }
    labels.data<std::int64_t>()[i] = best;
  }
  return {x, labels};
}

// What train_replicated returns: the batch losses, and the largest
// difference between a replicated stage's replicas' parameters at the end
// (0: bit-identical).
struct PipelinedRun {
  std::vector<float> losses;
  double replica_spread = 0;
};

// Trains `steps` batches of `rows` rows (two batches, alternating:
// make_batch seeds 0 and 1), `micro_batches` each, on stage actors
// (`stages` of them, spec.blocks / stages chunks each; stage k as
// replicas[k] replica actors, 1 each when `replicas` is empty) under
// `schedule`. The actors are killed at the end.
inline PipelinedRun train_replicated(const ModelSpec& spec, int stages, troupe::actors::Schedule schedule, int steps,
                                     std::int64_t rows, int micro_batches, const std::vector<int>& replicas) {
  const int chunks = spec.blocks / stages;
  if (chunks * stages != spec.blocks) {
    throw troupe::Error(troupe::Errc::invalid_argument, "blocks must be a multiple of stages");
  }
  if (!replicas.empty() && replicas.size() != static_cast<std::size_t>(stages)) {
    throw troupe::Error(troupe::Errc::invalid_argument, std::to_string(replicas.size()) + " replica counts for " +
                                                            std::to_string(stages) + " stages");
  }
  troupe::actors::StageReplicas<ResidualStage> handles(static_cast<std::size_t>(stages));
  for (int k = 0; k < stages; ++k) {
    const int d = replicas.empty() ? 1 : replicas[static_cast<std::size_t>(k)];
    for (int r = 0; r < d; ++r) handles[k].push_back(troupe::actor<ResidualStage>(spec, k, stages, chunks));
  }
  const auto kill_all = [&] {
    for (const auto& stage : handles) {
      for (const auto& handle : stage) troupe::kill(handle);
    }
  };
  PipelinedRun run;
  try {
    troupe::actors::StagePipeline<ResidualStage> pipeline(handles, chunks);
    for (int step = 0; step < steps; ++step) {
      const auto [x, labels] = make_batch(spec, rows, static_cast<std::uint64_t>(step % 2));
      run.losses.push_back(pipeline.train_batch(x.chunk(micro_batches), labels.chunk(micro_batches), rows, schedule));
    }
    for (const auto& stage : handles) {
      const Tensor first = stage.front().call<&ResidualStage::parameters>().get();
      for (std::size_t r = 1; r < stage.size(); ++r) {
        const Tensor other = stage[r].call<&ResidualStage::parameters>().get();
        for (std::int64_t j = 0; j < first.numel(); ++j) {
          run.replica_spread = std::max(
              run.replica_spread, static_cast<double>(std::abs(first.data<float>()[j] - other.data<float>()[j])));
        }
      }
    }
  } catch (...) {
    kill_all();
    throw;
  }
  kill_all();
  return run;
}

// train_replicated with one actor per stage; the batch losses.
inline std::vector<float> train_pipelined(const ModelSpec& spec, int stages, troupe::actors::Schedule schedule,
                                          int steps, std::int64_t rows, int micro_batches) {
  return train_replicated(spec, stages, schedule, steps, rows, micro_batches, {}).losses;
}

// The same batches through the unpipelined Model.
inline std::vector<float> train_unpipelined(const ModelSpec& spec, int steps, std::int64_t rows) {
  Model model(spec);
  std::vector<float> losses;
  for (int step = 0; step < steps; ++step) {
    const auto [x, labels] = make_batch(spec, rows, static_cast<std::uint64_t>(step % 2));
    losses.push_back(model.train_batch(x, labels));
  }
  return losses;
}

}  // namespace residual

TROUPE_ACTOR(residual::ResidualStage, (residual::ModelSpec, int, int, int), forward, forward_loss, backward,
             backward_loss, backward_input, backward_input_loss, backward_weight, step, take_gradients, sum_gradients,
             step_with_gradients, parameters);
