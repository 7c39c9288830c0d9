// PipelineStage (the stage actor) and Pipeline (the driver that chains
// micro-batches through stage actors in a schedule's order); see pipeline.hpp.
#include "troupe/actors/pipeline.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <numeric>
#include <string>
#include <thread>
#include <tuple>
#include <utility>

#include "troupe/runtime/cuda.hpp"
#include "troupe/runtime/error.hpp"
#include "troupe/runtime/logging.hpp"
#include "troupe/runtime/runtime.hpp"

#include "pipeline_supervisor.hpp"

namespace troupe::actors {

namespace {

[[noreturn]] void fail(const std::string& where, const std::string& what) {
  throw_error(Errc::invalid_argument, where + ": " + what);
}

std::string shape_string(const Tensor& t) { return t.to_string(); }

std::int64_t bytes_of(const Tensor& t) { return t.defined() ? static_cast<std::int64_t>(t.nbytes()) : 0; }

void check_spec(const StageSpec& spec) {
  const std::string where = "PipelineStage";
  if (spec.sizes.size() < 2) fail(where, "a stage needs at least two sizes (one layer), got " + std::to_string(spec.sizes.size()));
  for (const std::int64_t size : spec.sizes) {
    if (size < 1) fail(where, "layer sizes must be >= 1, got " + std::to_string(size));
  }
  if (spec.simulated_forward_us < 0 || spec.simulated_backward_us < 0) fail(where, "simulated times must be >= 0");
  if (spec.host_math_threads < 0) fail(where, "host_math_threads must be >= 0");
  if (spec.activation != Activation::none && spec.activation != Activation::relu &&
      spec.activation != Activation::gelu) {
    fail(where, "unknown activation " + std::to_string(static_cast<int>(spec.activation)));
  }
}

// The device a stage of `spec` uses in this process, from the GPUs the
// runtime assigned to the actor being constructed (none outside an actor).
Device pick_device(const StageSpec& spec) {
  if (spec.device == StageDevice::cpu) return Device::cpu();
  const std::vector<int> gpus = get_gpu_ids();
  const int index = gpus.empty() ? 0 : gpus.front();
  const bool usable = cuda::available() && index < cuda::device_count();
  if (spec.device == StageDevice::prefer_cuda) {
    return !gpus.empty() && usable ? Device::cuda(index) : Device::cpu();
  }
  if (!cuda::available()) {
    throw_error(Errc::cuda, "PipelineStage: device cuda requested but there is no CUDA device: " +
                                cuda::unavailable_reason());
  }
  if (!usable) {
    throw_error(Errc::cuda, "PipelineStage: assigned GPU " + std::to_string(index) + " but this process sees " +
                                std::to_string(cuda::device_count()) + " CUDA devices");
  }
  return Device::cuda(index);
}

}  // namespace

// ---- names -------------------------------------------------------------------------

std::string_view to_string(Activation activation) noexcept {
  switch (activation) {
    case Activation::none: return "none";
    case Activation::relu: return "relu";
    case Activation::gelu: return "gelu";
  }
  return "?";
}

Activation parse_activation(std::string_view name) {
  for (const Activation a : {Activation::none, Activation::relu, Activation::gelu}) {
    if (name == to_string(a)) return a;
  }
  throw_error(Errc::invalid_argument, "unknown activation '" + std::string(name) + "' (none, relu or gelu)");
}

std::string_view to_string(StageDevice device) noexcept {
  switch (device) {
    case StageDevice::cpu: return "cpu";
    case StageDevice::cuda: return "cuda";
    case StageDevice::prefer_cuda: return "prefer_cuda";
  }
  return "?";
}

OptimizerSpec OptimizerSpec::make_sgd(float lr, float momentum, float weight_decay) {
  OptimizerSpec spec;
  spec.kind = Kind::sgd;
  spec.sgd = {.lr = lr, .momentum = momentum, .weight_decay = weight_decay};
  return spec;
}

OptimizerSpec OptimizerSpec::make_adam(float lr, float weight_decay) {
  OptimizerSpec spec;
  spec.kind = Kind::adam;
  spec.adam.lr = lr;
  spec.adam.weight_decay = weight_decay;
  return spec;
}

std::vector<StageSpec> split_mlp(const std::vector<std::int64_t>& sizes, int stages, const StageSpec& common) {
  const std::int64_t layers = sizes.empty() ? 0 : static_cast<std::int64_t>(sizes.size()) - 1;
  if (stages < 1 || stages > layers) {
    fail("split_mlp", "cannot split " + std::to_string(layers) + " layers into " + std::to_string(stages) +
                          " stages (want 1 <= stages <= layers)");
  }
  std::vector<StageSpec> out;
  std::int64_t first = 0;
  for (int k = 0; k < stages; ++k) {
    const std::int64_t count = layers / stages + (k < layers % stages ? 1 : 0);
    StageSpec spec = common;
    spec.sizes.assign(sizes.begin() + first, sizes.begin() + first + count + 1);
    spec.seed = common.seed + static_cast<std::uint32_t>(first);
    spec.is_first = k == 0;
    spec.is_last = k + 1 == stages;
    out.push_back(std::move(spec));
    first += count;
  }
  return out;
}

// ---- PipelineStage ---------------------------------------------------------------------

PipelineStage::PipelineStage(StageSpec spec)
    : spec_(std::move(spec)), checkpoints_(spec_.checkpoint, "PipelineStage") {
  check_spec(spec_);
  device_ = pick_device(spec_);
  if (spec_.host_math_threads > 0) set_host_math_threads(spec_.host_math_threads);
  init_state();
  if (checkpoints_.mark_started()) {
    // A restart (or a directory an earlier run used): the newest checkpoint
    // that reads back whole, else the initial state; then wait for the
    // driver to pick the step every stage has.
    std::optional<CheckpointData> newest = checkpoints_.load_newest(&checkpoint_note_);
    if (newest) apply_checkpoint(*newest);
    restored_from_ = steps_;
    awaiting_restore_ = true;
    TROUPE_LOG_INFO("PipelineStage: restarted over {}; restored step {}, awaiting the driver's restore",
                    spec_.checkpoint.directory, steps_);
  }
}

void PipelineStage::init_state() {
  layers_.clear();
  velocity_.clear();
  adam_m_.clear();
  adam_v_.clear();
  steps_ = 0;
  for (std::int64_t j = 0; j < spec_.layers(); ++j) {
    layers_.emplace_back(spec_.sizes[j], spec_.sizes[j + 1], spec_.seed + static_cast<std::uint32_t>(j), device_);
  }
  for (const kernels::Linear& layer : layers_) {
    for (const Tensor* p : {&layer.weight, &layer.bias}) {
      if (spec_.optimizer.kind == OptimizerSpec::Kind::adam) {
        adam_m_.push_back(kernels::zeros_like(*p));
        adam_v_.push_back(kernels::zeros_like(*p));
      } else if (spec_.optimizer.sgd.momentum != 0.0f) {
        velocity_.push_back(kernels::zeros_like(*p));
      }
    }
  }
}

std::vector<Tensor> PipelineStage::state_tensors() const {
  std::vector<Tensor> out;
  for (const kernels::Linear& layer : layers_) {
    out.push_back(layer.weight.to(Device::cpu()).clone());
    out.push_back(layer.bias.to(Device::cpu()).clone());
  }
  for (const auto* group : {&velocity_, &adam_m_, &adam_v_}) {
    for (const Tensor& t : *group) out.push_back(t.device().is_cpu() ? t.clone() : t.to(Device::cpu()));
  }
  return out;
}

void PipelineStage::apply_checkpoint(const CheckpointData& data) {
  // Check everything before changing anything: a file of another model (a
  // reused directory) leaves the stage as it was.
  std::vector<Tensor*> targets;
  for (kernels::Linear& layer : layers_) {
    targets.push_back(&layer.weight);
    targets.push_back(&layer.bias);
  }
  for (auto* group : {&velocity_, &adam_m_, &adam_v_}) {
    for (Tensor& t : *group) targets.push_back(&t);
  }
  const std::string file = checkpoint_path(spec_.checkpoint.directory, data.step).string();
  if (data.tensors.size() != targets.size()) {
    fail("PipelineStage", "checkpoint " + file + " holds " + std::to_string(data.tensors.size()) +
                              " tensors; this stage has " + std::to_string(targets.size()) +
                              " (another model or optimizer wrote it)");
  }
  for (std::size_t i = 0; i < targets.size(); ++i) {
    if (data.tensors[i].dtype() != DType::f32 || data.tensors[i].shape() != targets[i]->shape()) {
      fail("PipelineStage", "checkpoint " + file + ": tensor " + std::to_string(i) + " is " +
                                shape_string(data.tensors[i]) + ", the stage's is " + shape_string(*targets[i]) +
                                " (another model wrote it)");
    }
  }
  for (std::size_t i = 0; i < targets.size(); ++i) targets[i]->copy_from(data.tensors[i]);
  for (kernels::Linear& layer : layers_) layer.zero_grad();
  steps_ = data.step;
}

void PipelineStage::require_restored(const char* op) const {
  if (awaiting_restore_) {
    fail(std::string("PipelineStage::") + op,
         "the stage restarted and restored its checkpoint of step " + std::to_string(restored_from_) +
             "; it takes no training calls until the driver calls restore(step)");
  }
}

CheckpointInfo PipelineStage::checkpoint_info() const {
  CheckpointInfo info;
  info.step = steps_;
  info.awaiting_restore = awaiting_restore_;
  info.restored_from = restored_from_;
  info.available = checkpoints_.available();
  info.note = checkpoint_note_;
  info.kind = "PipelineStage";
  return info;
}

std::int64_t PipelineStage::restore(std::int64_t step) {
  if (step < 0) fail("PipelineStage::restore", "step " + std::to_string(step) + " < 0");
  if (step == 0) {
    init_state();
  } else {
    if (!checkpoints_.enabled()) fail("PipelineStage::restore", "the stage has no checkpoint directory");
    apply_checkpoint(checkpoints_.load(step));
  }
  drop_batch();
  checkpoints_.forget_after(step);
  awaiting_restore_ = false;
  return steps_;
}

bool PipelineStage::activated(std::size_t layer) const {
  return spec_.activation != Activation::none && !(spec_.is_last && layer + 1 == layers_.size());
}

Tensor PipelineStage::run_layers(Tensor x, Stash* stash) {
  if (!x.defined() || x.dim() != 2 || x.size(1) != spec_.sizes.front()) {
    fail("PipelineStage", "input is " + shape_string(x) + "; expected [rows, " + std::to_string(spec_.sizes.front()) +
                              "] f32");
  }
  Tensor h = x.to(device_);
  for (std::size_t j = 0; j < layers_.size(); ++j) {
    Tensor z = kernels::matmul(h, layers_[j].weight);
    kernels::add_bias(z, layers_[j].bias);
    if (stash != nullptr) stash->inputs.push_back(h);
    if (activated(j)) {
      if (stash != nullptr) stash->preacts.push_back(z);
      h = spec_.activation == Activation::relu ? kernels::relu(z) : kernels::gelu(z);
    } else {
      if (stash != nullptr) stash->preacts.emplace_back();
      h = std::move(z);
    }
  }
  if (stash != nullptr) {
    for (const Tensor& t : stash->inputs) stash->bytes += bytes_of(t);
    for (const Tensor& t : stash->preacts) stash->bytes += bytes_of(t);
  }
  return h;
}

Tensor PipelineStage::backward_from(Stash stash, Tensor dy) {
  Tensor g = dy.to(device_);
  for (std::size_t j = layers_.size(); j-- > 0;) {
    if (activated(j)) {
      g = spec_.activation == Activation::relu ? kernels::relu_backward(g, stash.preacts[j])
                                               : kernels::gelu_backward(g, stash.preacts[j]);
    }
    kernels::Linear& layer = layers_[j];
    kernels::matmul_into(stash.inputs[j], g, layer.weight_grad, {.transpose_a = true, .accumulate = true});
    kernels::bias_grad_into(g, layer.bias_grad, /*accumulate=*/true);
    if (j == 0 && spec_.is_first) return Tensor();
    g = kernels::matmul(g, layer.weight, {.transpose_b = true});
  }
  return to_output(g);
}

PipelineStage::Stash PipelineStage::take_stash(std::int64_t micro_batch, const char* op) {
  auto it = stash_.find(micro_batch);
  if (it == stash_.end()) {
    fail(std::string("PipelineStage::") + op,
         "no stashed forward for micro-batch " + std::to_string(micro_batch) +
             " (its forward failed or never ran, or it was already consumed)");
  }
  Stash stash = std::move(it->second);
  stash_.erase(it);
  stash_bytes_ -= stash.bytes;
  return stash;
}

void PipelineStage::keep_stash(std::int64_t micro_batch, Stash stash, const char* op) {
  stash_bytes_ += stash.bytes;
  if (!stash_.emplace(micro_batch, std::move(stash)).second) {
    fail(std::string("PipelineStage::") + op, "micro-batch " + std::to_string(micro_batch) + " is already in flight");
  }
  peak_stashed_ = std::max(peak_stashed_, static_cast<std::int64_t>(stash_.size()));
  peak_stash_bytes_ = std::max(peak_stash_bytes_, stash_bytes_);
  ++forwards_;
}

Tensor PipelineStage::to_output(const Tensor& t) const {
  // The result stays in the stage's memory; the runtime moves it (in a
  // cluster, the data plane publishes it straight from this storage, possibly
  // to another process), so the kernels that wrote it must have finished.
  if (t.defined() && t.device().is_cuda()) kernels::synchronize(t.device());
  return t;
}

void PipelineStage::pause_until(std::chrono::steady_clock::time_point start, std::int64_t micro_seconds) const {
  if (micro_seconds > 0) std::this_thread::sleep_until(start + std::chrono::microseconds(micro_seconds));
}

Tensor PipelineStage::forward(std::int64_t micro_batch, Tensor x) {
  const auto start = std::chrono::steady_clock::now();
  require_restored("forward");
  if (spec_.is_last) fail("PipelineStage::forward", "the last stage takes forward_loss");
  if (stash_.count(micro_batch) != 0) {
    fail("PipelineStage::forward", "micro-batch " + std::to_string(micro_batch) + " is already in flight");
  }
  Stash stash;
  Tensor y = run_layers(std::move(x), &stash);
  keep_stash(micro_batch, std::move(stash), "forward");
  Tensor out = to_output(y);
  pause_until(start, spec_.simulated_forward_us);
  return out;
}

Tensor PipelineStage::backward(std::int64_t micro_batch, Tensor dy) {
  const auto start = std::chrono::steady_clock::now();
  require_restored("backward");
  if (spec_.is_last) fail("PipelineStage::backward", "the last stage takes backward_loss");
  const std::int64_t rows = stash_.count(micro_batch) ? stash_.at(micro_batch).inputs.front().size(0) : -1;
  if (!dy.defined() || dy.dim() != 2 || dy.size(1) != spec_.sizes.back() || (rows >= 0 && dy.size(0) != rows)) {
    fail("PipelineStage::backward", "dy is " + shape_string(dy) + "; expected [" +
                                        (rows >= 0 ? std::to_string(rows) : std::string("rows")) + ", " +
                                        std::to_string(spec_.sizes.back()) + "] f32");
  }
  Stash stash = take_stash(micro_batch, "backward");
  Tensor dx = backward_from(std::move(stash), std::move(dy));
  ++backwards_;
  ++backwards_since_step_;
  pause_until(start, spec_.simulated_backward_us);
  return dx;
}

float PipelineStage::forward_loss(std::int64_t micro_batch, Tensor x, Tensor labels, std::int64_t batch_size) {
  const auto start = std::chrono::steady_clock::now();
  require_restored("forward_loss");
  if (!spec_.is_last) fail("PipelineStage::forward_loss", "only the last stage computes the loss");
  if (stash_.count(micro_batch) != 0) {
    fail("PipelineStage::forward_loss", "micro-batch " + std::to_string(micro_batch) + " is already in flight");
  }
  if (x.defined() && batch_size < x.size(0)) {
    fail("PipelineStage::forward_loss", "batch_size " + std::to_string(batch_size) + " is smaller than the " +
                                            std::to_string(x.size(0)) + " rows of the micro-batch");
  }
  Stash stash;
  Tensor logits = run_layers(std::move(x), &stash);
  kernels::CrossEntropyResult result =
      kernels::softmax_cross_entropy(logits, labels.to(device_), {.batch_size = batch_size});
  stash.dlogits = std::move(result.dlogits);
  stash.bytes += bytes_of(stash.dlogits);
  keep_stash(micro_batch, std::move(stash), "forward_loss");
  pause_until(start, spec_.simulated_forward_us);
  return result.loss;
}

Tensor PipelineStage::backward_loss(std::int64_t micro_batch) {
  const auto start = std::chrono::steady_clock::now();
  require_restored("backward_loss");
  if (!spec_.is_last) fail("PipelineStage::backward_loss", "only the last stage computes the loss");
  Stash stash = take_stash(micro_batch, "backward_loss");
  Tensor dlogits = stash.dlogits;
  Tensor dx = backward_from(std::move(stash), std::move(dlogits));
  ++backwards_;
  ++backwards_since_step_;
  pause_until(start, spec_.simulated_backward_us);
  return dx;
}

Tensor PipelineStage::backward_input_from(std::int64_t micro_batch, Stash stash, Tensor dy) {
  Tensor g = dy.to(device_);
  Tensor dx;
  stash.grads.assign(layers_.size(), Tensor());
  for (std::size_t j = layers_.size(); j-- > 0;) {
    if (activated(j)) {
      g = spec_.activation == Activation::relu ? kernels::relu_backward(g, stash.preacts[j])
                                               : kernels::gelu_backward(g, stash.preacts[j]);
    }
    stash.grads[j] = g;
    if (j == 0 && spec_.is_first) break;
    g = kernels::matmul(g, layers_[j].weight, {.transpose_b = true});
    if (j == 0) dx = to_output(g);
  }
  stash.preacts.clear();
  stash.dlogits = Tensor();
  stash.bytes = 0;
  for (const Tensor& t : stash.inputs) stash.bytes += bytes_of(t);
  for (const Tensor& t : stash.grads) stash.bytes += bytes_of(t);
  stash_bytes_ += stash.bytes;
  peak_stash_bytes_ = std::max(peak_stash_bytes_, stash_bytes_);
  deferred_.insert_or_assign(micro_batch, std::move(stash));
  return dx;
}

Tensor PipelineStage::backward_input(std::int64_t micro_batch, Tensor dy) {
  const auto start = std::chrono::steady_clock::now();
  require_restored("backward_input");
  if (spec_.is_last) fail("PipelineStage::backward_input", "the last stage takes backward_input_loss");
  const std::int64_t rows = stash_.count(micro_batch) ? stash_.at(micro_batch).inputs.front().size(0) : -1;
  if (!dy.defined() || dy.dim() != 2 || dy.size(1) != spec_.sizes.back() || (rows >= 0 && dy.size(0) != rows)) {
    fail("PipelineStage::backward_input", "dy is " + shape_string(dy) + "; expected [" +
                                              (rows >= 0 ? std::to_string(rows) : std::string("rows")) + ", " +
                                              std::to_string(spec_.sizes.back()) + "] f32");
  }
  Tensor dx = backward_input_from(micro_batch, take_stash(micro_batch, "backward_input"), std::move(dy));
  pause_until(start, spec_.simulated_backward_us / 2);
  return dx;
}

Tensor PipelineStage::backward_input_loss(std::int64_t micro_batch) {
  const auto start = std::chrono::steady_clock::now();
  require_restored("backward_input_loss");
  if (!spec_.is_last) fail("PipelineStage::backward_input_loss", "only the last stage computes the loss");
  Stash stash = take_stash(micro_batch, "backward_input_loss");
  Tensor dlogits = stash.dlogits;
  Tensor dx = backward_input_from(micro_batch, std::move(stash), std::move(dlogits));
  pause_until(start, spec_.simulated_backward_us / 2);
  return dx;
}

std::int64_t PipelineStage::backward_weight(std::int64_t micro_batch) {
  const auto start = std::chrono::steady_clock::now();
  require_restored("backward_weight");
  auto it = deferred_.find(micro_batch);
  if (it == deferred_.end()) {
    fail("PipelineStage::backward_weight", "no backward_input ran for micro-batch " + std::to_string(micro_batch) +
                                               " (it failed or never ran, or its weights were already done)");
  }
  Stash stash = std::move(it->second);
  deferred_.erase(it);
  stash_bytes_ -= stash.bytes;
  for (std::size_t j = 0; j < layers_.size(); ++j) {
    kernels::Linear& layer = layers_[j];
    kernels::matmul_into(stash.inputs[j], stash.grads[j], layer.weight_grad, {.transpose_a = true, .accumulate = true});
    kernels::bias_grad_into(stash.grads[j], layer.bias_grad, /*accumulate=*/true);
  }
  ++backwards_;
  ++backwards_since_step_;
  pause_until(start, spec_.simulated_backward_us - spec_.simulated_backward_us / 2);
  return backwards_;
}

Tensor PipelineStage::predict(Tensor x) {
  require_restored("predict");
  Tensor y = run_layers(std::move(x), nullptr);
  // The model's output is for the driver, which may have no GPU (and a small
  // CUDA tensor sent inline cannot be decoded in a process without one).
  if (spec_.is_last) return y.device().is_cpu() ? y : y.to(Device::cpu());
  return to_output(y);
}

void PipelineStage::drop_batch() {
  for (kernels::Linear& layer : layers_) layer.zero_grad();
  stash_.clear();
  deferred_.clear();
  stash_bytes_ = 0;
  backwards_since_step_ = 0;
}

void PipelineStage::check_batch_complete(std::int64_t micro_batches, const char* op) {
  if (backwards_since_step_ != micro_batches || !stash_.empty() || !deferred_.empty()) {
    const std::string why = "expected " + std::to_string(micro_batches) + " backward passes since the last step, saw " +
                            std::to_string(backwards_since_step_) + " with " + std::to_string(stash_.size()) +
                            " forwards still stashed and " + std::to_string(deferred_.size()) +
                            " weight gradients deferred; the batch's gradients were dropped";
    drop_batch();
    fail(std::string("PipelineStage::") + op, why);
  }
}

std::int64_t PipelineStage::step(std::int64_t micro_batches) {
  require_restored("step");
  check_batch_complete(micro_batches, "step");
  apply_step();
  return steps_;
}

void PipelineStage::apply_step() {
  const OptimizerSpec& optimizer = spec_.optimizer;
  std::size_t p = 0;
  ++steps_;
  for (kernels::Linear& layer : layers_) {
    for (auto [param, grad] : {std::pair{&layer.weight, &layer.weight_grad}, std::pair{&layer.bias, &layer.bias_grad}}) {
      if (optimizer.kind == OptimizerSpec::Kind::adam) {
        kernels::adam_step(*param, *grad, adam_m_[p], adam_v_[p], steps_, optimizer.adam);
      } else {
        kernels::sgd_step(*param, *grad, velocity_.empty() ? Tensor() : velocity_[p], optimizer.sgd);
      }
      ++p;
    }
    layer.zero_grad();
  }
  backwards_since_step_ = 0;
  if (checkpoints_.due(steps_)) {
    try {
      checkpoints_.save(steps_, state_tensors());
    } catch (const Error& e) {
      // The step stands; the driver rolls back to an older checkpoint if it
      // ever needs this one.
      checkpoint_note_ = "no checkpoint of step " + std::to_string(steps_) + ": " + e.message();
      TROUPE_LOG_WARN("PipelineStage: {}", checkpoint_note_);
    }
  }
}

std::int64_t PipelineStage::flat_gradient_size() const {
  std::int64_t n = 0;
  for (const kernels::Linear& layer : layers_) n += layer.weight_grad.numel() + layer.bias_grad.numel();
  return n;
}

Tensor PipelineStage::take_gradients(std::int64_t micro_batches) {
  require_restored("take_gradients");
  check_batch_complete(micro_batches, "take_gradients");
  Tensor flat = Tensor::empty({flat_gradient_size()}, DType::f32, device_);
  std::int64_t offset = 0;
  for (kernels::Linear& layer : layers_) {
    for (const Tensor* grad : {&layer.weight_grad, &layer.bias_grad}) {
      flat.slice(offset, offset + grad->numel()).copy_from(grad->reshape({grad->numel()}));
      offset += grad->numel();
    }
    layer.zero_grad();
  }
  backwards_since_step_ = 0;
  return to_output(flat);
}

Tensor PipelineStage::sum_gradients(Tensor a, Tensor b) {
  const std::int64_t n = flat_gradient_size();
  for (const Tensor* t : {&a, &b}) {
    if (!t->defined() || t->dim() != 1 || t->size(0) != n || t->dtype() != DType::f32) {
      fail("PipelineStage::sum_gradients", "got " + shape_string(*t) + "; expected f32 [" + std::to_string(n) + "]");
    }
  }
  // a may share storage with its producer (local mode): add into a copy.
  Tensor out = a.device() == device_ ? a.clone() : a.to(device_);
  kernels::add_(out, b.to(device_));
  return to_output(out);
}

std::int64_t PipelineStage::step_with_gradients(Tensor total) {
  require_restored("step_with_gradients");
  const std::int64_t n = flat_gradient_size();
  if (!total.defined() || total.dim() != 1 || total.size(0) != n || total.dtype() != DType::f32) {
    fail("PipelineStage::step_with_gradients",
         "got " + shape_string(total) + "; expected f32 [" + std::to_string(n) + "] (the flattened gradients)");
  }
  if (backwards_since_step_ != 0 || !stash_.empty() || !deferred_.empty()) {
    drop_batch();
    fail("PipelineStage::step_with_gradients", "backwards ran since take_gradients; the batch's gradients were dropped");
  }
  const Tensor flat = total.to(device_);
  std::int64_t offset = 0;
  for (kernels::Linear& layer : layers_) {
    for (Tensor* grad : {&layer.weight_grad, &layer.bias_grad}) {
      grad->copy_from(flat.slice(offset, offset + grad->numel()).reshape(grad->shape()));
      offset += grad->numel();
    }
  }
  apply_step();
  return steps_;
}

std::vector<Tensor> PipelineStage::get_parameters() const {
  require_restored("get_parameters");
  std::vector<Tensor> out;
  for (const kernels::Linear& layer : layers_) {
    out.push_back(layer.weight.to(Device::cpu()).clone());
    out.push_back(layer.bias.to(Device::cpu()).clone());
  }
  return out;
}

std::vector<Tensor> PipelineStage::get_gradients() const {
  std::vector<Tensor> out;
  for (const kernels::Linear& layer : layers_) {
    out.push_back(layer.weight_grad.to(Device::cpu()).clone());
    out.push_back(layer.bias_grad.to(Device::cpu()).clone());
  }
  return out;
}

void PipelineStage::set_parameters(std::vector<Tensor> parameters) {
  require_restored("set_parameters");
  if (parameters.size() != 2 * layers_.size()) {
    fail("PipelineStage::set_parameters", "got " + std::to_string(parameters.size()) + " tensors for " +
                                              std::to_string(layers_.size()) + " layers (want W0, b0, W1, b1, ...)");
  }
  // Check everything before changing anything.
  for (std::size_t i = 0; i < parameters.size(); ++i) {
    const Tensor& target = i % 2 == 0 ? layers_[i / 2].weight : layers_[i / 2].bias;
    if (!parameters[i].defined() || parameters[i].dtype() != DType::f32 || parameters[i].shape() != target.shape()) {
      fail("PipelineStage::set_parameters", "parameter " + std::to_string(i) + " is " + shape_string(parameters[i]) +
                                                "; expected the shape of " + shape_string(target));
    }
  }
  for (std::size_t i = 0; i < parameters.size(); ++i) {
    Tensor& target = i % 2 == 0 ? layers_[i / 2].weight : layers_[i / 2].bias;
    target.copy_from(parameters[i]);
  }
}

StageStats PipelineStage::stats() const {
  StageStats s;
  for (const kernels::Linear& layer : layers_) {
    s.parameters += layer.weight.numel() + layer.bias.numel();
    s.parameter_bytes += bytes_of(layer.weight) + bytes_of(layer.bias);
    s.gradient_bytes += bytes_of(layer.weight_grad) + bytes_of(layer.bias_grad);
  }
  for (const auto* group : {&velocity_, &adam_m_, &adam_v_}) {
    for (const Tensor& t : *group) s.optimizer_bytes += bytes_of(t);
  }
  s.stashed_micro_batches = static_cast<std::int64_t>(stash_.size());
  s.stash_bytes = stash_bytes_;
  s.peak_stashed_micro_batches = peak_stashed_;
  s.peak_stash_bytes = peak_stash_bytes_;
  s.forwards = forwards_;
  s.backwards = backwards_;
  s.steps = steps_;
  s.device = device_.to_string();
  return s;
}

// ---- Pipeline ---------------------------------------------------------------------------------

Pipeline::Pipeline(std::vector<StageSpec> specs, std::vector<ActorOptions> options, PipelineOptions pipeline_options)
    : specs_(std::move(specs)) {
  const std::string where = "Pipeline";
  if (specs_.empty()) fail(where, "no stages");
  if (!options.empty() && options.size() != specs_.size()) {
    fail(where, std::to_string(options.size()) + " actor options for " + std::to_string(specs_.size()) + " stages");
  }
  for (std::size_t k = 0; k < specs_.size(); ++k) {
    const StageSpec& spec = specs_[k];
    const std::string stage = "stage " + std::to_string(k);
    if (spec.sizes.size() < 2) fail(where, stage + " has no layer");
    if (spec.is_first != (k == 0)) fail(where, stage + (k == 0 ? " must" : " must not") + " have is_first set");
    if (spec.is_last != (k + 1 == specs_.size())) {
      fail(where, stage + (k + 1 == specs_.size() ? " must" : " must not") + " have is_last set");
    }
    if (k > 0 && specs_[k - 1].sizes.back() != spec.sizes.front()) {
      fail(where, stage + " takes " + std::to_string(spec.sizes.front()) + " features but stage " +
                      std::to_string(k - 1) + " gives " + std::to_string(specs_[k - 1].sizes.back()));
    }
    if (!options.empty() && options[k].max_concurrency != 1) {
      fail(where, stage + ": max_concurrency must be 1 (the schedule is the order of calls)");
    }
  }
  if (pipeline_options.fault_tolerant()) {
    if (pipeline_options.checkpoint_directory.empty()) fail(where, "checkpoints need a checkpoint_directory");
    if (pipeline_options.keep_checkpoints < 1) fail(where, "keep_checkpoints must be >= 1");
    for (std::size_t k = 0; k < specs_.size(); ++k) {
      specs_[k].checkpoint = {
          .directory = (std::filesystem::path(pipeline_options.checkpoint_directory) / ("stage-" + std::to_string(k)))
                           .string(),
          .every = pipeline_options.checkpoint_every,
          .keep = pipeline_options.keep_checkpoints};
    }
  } else if (pipeline_options.checkpoint_every < 0) {
    fail(where, "checkpoint_every must be >= 0");
  }
  try {
    for (std::size_t k = 0; k < specs_.size(); ++k) {
      stages_.push_back(troupe::actor<PipelineStage>(options.empty() ? ActorOptions{} : options[k], specs_[k]));
    }
    if (pipeline_options.fault_tolerant()) {
      supervisor_ = std::make_unique<detail::PipelineSupervisor>(stages_, std::move(pipeline_options));
    }
  } catch (...) {
    kill_stages();
    throw;
  }
}

Pipeline::~Pipeline() { kill_stages(); }

Pipeline::Pipeline(Pipeline&& other) noexcept
    : specs_(std::move(other.specs_)),
      stages_(std::exchange(other.stages_, {})),
      next_micro_batch_(other.next_micro_batch_),
      clock_(std::exchange(other.clock_, nullptr)),
      supervisor_(std::move(other.supervisor_)) {}

Pipeline& Pipeline::operator=(Pipeline&& other) noexcept {
  if (this != &other) {
    kill_stages();
    specs_ = std::move(other.specs_);
    stages_ = std::exchange(other.stages_, {});
    next_micro_batch_ = other.next_micro_batch_;
    clock_ = std::exchange(other.clock_, nullptr);
    supervisor_ = std::move(other.supervisor_);
  }
  return *this;
}

void Pipeline::kill_stages() noexcept {
  supervisor_.reset();  // stops its thread first: nothing submits to the stages after this
  for (const auto& stage : stages_) {
    try {
      if (is_initialized() && stage.valid()) troupe::kill(stage);
    } catch (...) {  // NOLINT(bugprone-empty-catch): a stage that is gone already is what we want
    }
  }
  stages_.clear();
}

namespace {

void check_batch(const std::vector<StageSpec>& specs, const Tensor& x, const Tensor& labels, int micro_batches) {
  const std::string where = "Pipeline::submit_batch";
  if (micro_batches < 1) fail(where, "micro_batches must be >= 1, got " + std::to_string(micro_batches));
  const std::int64_t in = specs.front().sizes.front();
  if (!x.defined() || x.dim() != 2 || x.size(1) != in || x.dtype() != DType::f32) {
    fail(where, "x is " + shape_string(x) + "; expected f32 [batch, " + std::to_string(in) + "]");
  }
  if (x.size(0) == 0) fail(where, "the batch is empty");
  if (!labels.defined() || labels.dim() != 1 || labels.size(0) != x.size(0) ||
      (labels.dtype() != DType::i32 && labels.dtype() != DType::i64)) {
    fail(where, "labels is " + shape_string(labels) + "; expected i32 or i64 [" + std::to_string(x.size(0)) + "]");
  }
}

}  // namespace

namespace detail {

BatchCalls submit_batch_calls(const std::vector<ActorHandle<PipelineStage>>& stages, const Tensor& x,
                              const Tensor& labels, int micro_batches, Schedule schedule,
                              std::int64_t& next_micro_batch, StageClock* clock) {
  if (schedule == Schedule::interleaved_1f1b) {
    fail("Pipeline::submit_batch", "PipelineStage holds one chunk; interleaved-1f1b needs a chunked stage class "
                                   "(stage.hpp, StagePipeline)");
  }
  const std::vector<Tensor> xs = x.chunk(micro_batches);  // views, no copy
  const std::vector<Tensor> ys = labels.chunk(micro_batches);
  const std::int64_t first_id = next_micro_batch;
  next_micro_batch += static_cast<std::int64_t>(xs.size());  // fewer than asked when batch < micro_batches
  return submit_stage_calls(stages, xs, ys, x.size(0), schedule, 1, first_id, clock);
}

}  // namespace detail

ObjectRef<float> Pipeline::submit_batch(const Tensor& x, const Tensor& labels, int micro_batches,
                                        Schedule schedule) {
  if (stages_.empty()) fail("Pipeline::submit_batch", "the pipeline has no stages (moved from?)");
  check_batch(specs_, x, labels, micro_batches);
  if (supervisor_) return supervisor_->submit_batch(x, labels, micro_batches, schedule);
  detail::BatchCalls calls =
      detail::submit_batch_calls(stages_, x, labels, micro_batches, schedule, next_micro_batch_, clock_);
  return when_all(when_all(calls.losses), when_all(calls.steps))
      .then([](std::tuple<std::vector<float>, std::vector<std::int64_t>> done) {
        double sum = 0;  // micro-batch order: the same sum every time
        for (const float loss : std::get<0>(done)) sum += loss;
        return static_cast<float>(sum);
      });
}

void Pipeline::set_stage_clock(StageClock* clock) {
  if (clock != nullptr && supervisor_) {
    fail("Pipeline::set_stage_clock", "fault tolerance is on: a recovery replays calls, which would be timed twice");
  }
  if (clock != nullptr && clock->num_stages() != stages_.size()) {
    fail("Pipeline::set_stage_clock", "a StageClock of " + std::to_string(clock->num_stages()) + " stages for " +
                                          std::to_string(stages_.size()));
  }
  clock_ = clock;
}

float Pipeline::train_batch(const Tensor& x, const Tensor& labels, int micro_batches, Schedule schedule) {
  return submit_batch(x, labels, micro_batches, schedule).get();
}

namespace detail {

ObjectRef<Tensor> submit_predict_calls(const std::vector<ActorHandle<PipelineStage>>& stages, const Tensor& x,
                                       std::vector<ObjectRefBase>* calls) {
  ObjectRef<Tensor> h = stages.front().call<&PipelineStage::predict>(x);
  if (calls != nullptr) calls->push_back(h);
  for (std::size_t k = 1; k < stages.size(); ++k) {
    h = stages[k].call<&PipelineStage::predict>(h);
    if (calls != nullptr) calls->push_back(h);
  }
  return h;  // the last stage's predict answers in host memory
}

}  // namespace detail

ObjectRef<Tensor> Pipeline::predict(const Tensor& x) {
  if (stages_.empty()) fail("Pipeline::predict", "the pipeline has no stages (moved from?)");
  if (supervisor_) return supervisor_->predict(x);
  return detail::submit_predict_calls(stages_, x, nullptr);
}

std::vector<std::vector<Tensor>> Pipeline::parameters() const {
  if (supervisor_) return supervisor_->parameters().get();
  std::vector<ObjectRef<std::vector<Tensor>>> refs;
  for (const auto& stage : stages_) refs.push_back(stage.call<&PipelineStage::get_parameters>());
  return when_all(refs).get();
}

std::vector<StageStats> Pipeline::stats() const {
  if (supervisor_) return supervisor_->stats().get();
  std::vector<ObjectRef<StageStats>> refs;
  for (const auto& stage : stages_) refs.push_back(stage.call<&PipelineStage::stats>());
  return when_all(refs).get();
}

std::int64_t Pipeline::resume_step() const { return supervisor_ ? supervisor_->resume_step() : 0; }

RecoveryStats Pipeline::recovery_stats() const { return supervisor_ ? supervisor_->stats_snapshot() : RecoveryStats{}; }

}  // namespace troupe::actors
