#include "troupe/actors/tensor_parallel.hpp"

#include <cstring>

#include "troupe/runtime/cuda.hpp"
#include "troupe/runtime/error.hpp"
#include "troupe/runtime/logging.hpp"
#include "troupe/runtime/runtime.hpp"

namespace troupe::actors {

namespace {

[[noreturn]] void fail(const std::string& where, const std::string& what) {
  throw_error(Errc::invalid_argument, where + ": " + what);
}

void check_matrix(const Tensor& x, const char* where, const char* name) {
  if (!x.defined()) fail(where, std::string(name) + " is undefined");
  if (x.dim() != 2) fail(where, std::string(name) + " is " + x.to_string() + "; expected a 2-D tensor");
}

// Rows of `rows` strided byte blocks: dst[r] = src[r] for r < rows, where a
// row is `width` bytes starting every `src_pitch` / `dst_pitch` bytes. Both
// tensors live on `device`.
void copy_2d(void* dst, std::size_t dst_pitch, const void* src, std::size_t src_pitch, std::size_t width,
             std::size_t rows, Device device) {
  if (width == 0 || rows == 0) return;
  if (device.is_cpu()) {
    auto* out = static_cast<std::byte*>(dst);
    const auto* in = static_cast<const std::byte*>(src);
    for (std::size_t r = 0; r < rows; ++r) std::memcpy(out + r * dst_pitch, in + r * src_pitch, width);
    return;
  }
#if TROUPE_HAVE_CUDA
  cuda::DeviceGuard guard(device.index);
  // On the legacy default stream, ordered with troupe's kernels and copies.
  cuda::check(cudaMemcpy2D(dst, dst_pitch, src, src_pitch, width, rows, cudaMemcpyDeviceToDevice),
              "cudaMemcpy2D(" + std::to_string(rows) + " rows of " + std::to_string(width) + " bytes on " +
                  device.to_string() + ")");
#else
  throw_error(Errc::cuda, "a CUDA tensor in a build without CUDA");
#endif
}

Device shard_device(bool use_gpu) {
  if (!use_gpu || !cuda::available()) return Device::cpu();
  const std::vector<int> gpus = get_gpu_ids();
  if (gpus.empty()) return Device::cpu();
  // Cluster hosts see their GPU as device 0 (CUDA_VISIBLE_DEVICES); local
  // mode may declare GPUs the machine does not have.
  return gpus.front() < cuda::device_count() ? Device::cuda(gpus.front()) : Device::cpu();
}

// The slice of kernels::Linear(in, out, seed) that `spec` names, on `device`.
kernels::Linear make_shard(const ShardSpec& spec, Device device) {
  if (spec.in_features < 1 || spec.out_features < 1) {
    fail("LinearShard", "in and out features must be >= 1, got " + std::to_string(spec.in_features) + " and " +
                            std::to_string(spec.out_features));
  }
  const auto [begin, end] = spec.range();
  // TODO(perf): draw only this shard's block (mt19937::discard is linear too,
  // so this would need a counter-based generator); the full layer is built
  // on the host and sliced.
  const kernels::Linear full(spec.in_features, spec.out_features, spec.seed, Device::cpu());
  Tensor weight, bias;
  if (spec.split == Split::columns) {
    weight = copy_columns(full.weight, begin, end);
    bias = full.bias.slice(begin, end).clone();
  } else {
    weight = full.weight.slice(begin, end).clone();
    if (spec.index == 0) bias = full.bias.clone();
  }
  return kernels::Linear(weight.to(device), bias.defined() ? bias.to(device) : Tensor());
}

// `value` on `device`, never sharing storage with the argument (which other
// calls may also hold), ready to be written.
Tensor owned_on(const Tensor& value, Device device) {
  return value.device() == device ? value.clone() : value.to(device);
}

Tensor host_copy(const Tensor& t) { return t.defined() ? (t.device().is_cpu() ? t.clone() : t.to(Device::cpu())) : t; }

bool power_of_two(std::size_t n) { return n != 0 && (n & (n - 1)) == 0; }

void check_counts(const ShardHandles& shards, std::size_t values, const char* where) {
  if (shards.empty()) fail(where, "no shards");
  if (values != shards.size()) {
    fail(where, std::to_string(values) + " values for " + std::to_string(shards.size()) + " shards");
  }
}

}  // namespace

std::string_view to_string(Split split) noexcept {
  switch (split) {
    case Split::columns: return "columns";
    case Split::rows: return "rows";
  }
  return "unknown";
}

std::pair<std::int64_t, std::int64_t> shard_range(std::int64_t features, int index, int count) {
  if (count < 1 || index < 0 || index >= count || features < count) {
    fail("shard_range", "shard " + std::to_string(index) + " of " + std::to_string(count) + " over " +
                            std::to_string(features) + " features (want 0 <= index < count <= features)");
  }
  const std::int64_t base = features / count;
  const std::int64_t larger = features % count;  // the first `larger` shards get one more
  const std::int64_t begin = index * base + std::min<std::int64_t>(index, larger);
  return {begin, begin + base + (index < larger ? 1 : 0)};
}

std::pair<std::int64_t, std::int64_t> ShardSpec::range() const {
  return shard_range(split == Split::columns ? out_features : in_features, index, count);
}

Tensor copy_columns(const Tensor& x, std::int64_t begin, std::int64_t end) {
  check_matrix(x, "copy_columns", "x");
  if (begin < 0 || begin > end || end > x.size(1)) {
    fail("copy_columns", "columns [" + std::to_string(begin) + ", " + std::to_string(end) + ") of " + x.to_string());
  }
  Tensor out = Tensor::empty({x.size(0), end - begin}, x.dtype(), x.device());
  const std::size_t element = element_size(x.dtype());
  copy_2d(out.raw_data(), static_cast<std::size_t>(end - begin) * element,
          static_cast<const std::byte*>(x.raw_data()) + static_cast<std::size_t>(begin) * element,
          static_cast<std::size_t>(x.size(1)) * element, static_cast<std::size_t>(end - begin) * element,
          static_cast<std::size_t>(x.size(0)), x.device());
  return out;
}

Tensor concat(const Tensor& a, const Tensor& b_in, int dim) {
  if (!a.defined() || !b_in.defined()) fail("concat", "an operand is undefined");
  if (a.dtype() != b_in.dtype()) fail("concat", a.to_string() + " and " + b_in.to_string() + " differ in dtype");
  const Tensor b = b_in.to(a.device());
  if (dim == 0 || (a.dim() == 1 && b.dim() == 1)) {
    if (a.dim() != b.dim() || a.dim() < 1) fail("concat", "cannot stack " + a.to_string() + " and " + b.to_string());
    Tensor::Shape shape = a.shape();
    for (std::int64_t d = 1; d < a.dim(); ++d) {
      if (a.size(d) != b.size(d)) fail("concat", a.to_string() + " and " + b.to_string() + " differ past dim 0");
    }
    shape[0] = a.size(0) + b.size(0);
    Tensor out = Tensor::empty(shape, a.dtype(), a.device());
    if (a.size(0) > 0) out.slice(0, a.size(0)).copy_from(a);
    if (b.size(0) > 0) out.slice(a.size(0), shape[0]).copy_from(b);
    return out;
  }
  if (dim != 1) fail("concat", "dim must be 0 or 1, got " + std::to_string(dim));
  check_matrix(a, "concat", "a");
  check_matrix(b, "concat", "b");
  if (a.size(0) != b.size(0)) fail("concat", a.to_string() + " and " + b.to_string() + " differ in rows");
  const std::int64_t columns = a.size(1) + b.size(1);
  Tensor out = Tensor::empty({a.size(0), columns}, a.dtype(), a.device());
  const std::size_t element = element_size(a.dtype());
  const std::size_t pitch = static_cast<std::size_t>(columns) * element;
  const auto rows = static_cast<std::size_t>(a.size(0));
  copy_2d(out.raw_data(), pitch, a.raw_data(), static_cast<std::size_t>(a.size(1)) * element,
          static_cast<std::size_t>(a.size(1)) * element, rows, a.device());
  copy_2d(static_cast<std::byte*>(out.raw_data()) + static_cast<std::size_t>(a.size(1)) * element, pitch,
          b.raw_data(), static_cast<std::size_t>(b.size(1)) * element, static_cast<std::size_t>(b.size(1)) * element,
          rows, a.device());
  return out;
}

// ---- LinearShard --------------------------------------------------------------------------

LinearShard::LinearShard(ShardSpec spec)
    : spec_(spec), linear_(make_shard(spec, shard_device(spec.use_gpu))), checkpoints_(spec.checkpoint, "LinearShard") {
  if (checkpoints_.mark_started()) {
    std::optional<CheckpointData> newest = checkpoints_.load_newest(&checkpoint_note_);
    if (newest) apply_checkpoint(*newest);
    restored_from_ = steps_;
    awaiting_restore_ = true;
  }
}

void LinearShard::require_restored(const char* op) const {
  if (awaiting_restore_) {
    fail(std::string("LinearShard::") + op, "the shard restarted and restored its checkpoint of step " +
                                                std::to_string(restored_from_) +
                                                "; it takes no training calls until restore(step)");
  }
}

void LinearShard::apply_checkpoint(const CheckpointData& data) {
  std::vector<Tensor*> targets{&linear_.weight};
  if (linear_.bias.defined()) targets.push_back(&linear_.bias);
  const std::string file = checkpoint_path(spec_.checkpoint.directory, data.step).string();
  if (data.tensors.size() != targets.size()) {
    fail("LinearShard", "checkpoint " + file + " holds " + std::to_string(data.tensors.size()) +
                            " tensors; this shard has " + std::to_string(targets.size()));
  }
  for (std::size_t i = 0; i < targets.size(); ++i) {
    if (data.tensors[i].dtype() != DType::f32 || data.tensors[i].shape() != targets[i]->shape()) {
      fail("LinearShard", "checkpoint " + file + ": tensor " + std::to_string(i) + " is " +
                              data.tensors[i].to_string() + ", the shard's is " + targets[i]->to_string());
    }
  }
  for (std::size_t i = 0; i < targets.size(); ++i) targets[i]->copy_from(data.tensors[i]);
  linear_.zero_grad();
  steps_ = data.step;
}

CheckpointInfo LinearShard::checkpoint_info() const {
  CheckpointInfo info;
  info.step = steps_;
  info.awaiting_restore = awaiting_restore_;
  info.restored_from = restored_from_;
  info.available = checkpoints_.available();
  info.note = checkpoint_note_;
  info.kind = "LinearShard";
  return info;
}

std::int64_t LinearShard::restore(std::int64_t step) {
  if (step < 0) fail("LinearShard::restore", "step " + std::to_string(step) + " < 0");
  if (step == 0) {
    linear_ = make_shard(spec_, linear_.device());
    steps_ = 0;
  } else {
    if (!checkpoints_.enabled()) fail("LinearShard::restore", "the shard has no checkpoint directory");
    apply_checkpoint(checkpoints_.load(step));
  }
  checkpoints_.forget_after(step);
  awaiting_restore_ = false;
  return steps_;
}

Tensor LinearShard::forward(const Tensor& x_in) {
  require_restored("forward");
  check_matrix(x_in, "LinearShard::forward", "x");
  Tensor x = x_in.to(linear_.device());
  if (spec_.split == Split::rows && x.size(1) == spec_.in_features && linear_.in_features() != spec_.in_features) {
    const auto [begin, end] = spec_.range();
    x = copy_columns(x, begin, end);
  }
  return linear_.forward(x);
}

Tensor LinearShard::backward(const Tensor& dy_in) {
  require_restored("backward");
  check_matrix(dy_in, "LinearShard::backward", "dy");
  Tensor dy = dy_in.to(linear_.device());
  if (spec_.split == Split::columns && dy.size(1) == spec_.out_features &&
      linear_.out_features() != spec_.out_features) {
    const auto [begin, end] = spec_.range();
    dy = copy_columns(dy, begin, end);
  }
  return linear_.backward(dy);
}

Tensor LinearShard::sum(const Tensor& a, const Tensor& b) {
  Tensor out = owned_on(a, linear_.device());
  kernels::add_(out, b.to(linear_.device()));
  return out;
}

Tensor LinearShard::concat(const Tensor& a, const Tensor& b, int dim) {
  return actors::concat(a.to(linear_.device()), b, dim);
}

Tensor LinearShard::hold(const Tensor& value) { return value.to(linear_.device()); }

Tensor LinearShard::weight() const {
  require_restored("weight");
  return host_copy(linear_.weight);
}
Tensor LinearShard::bias() const {
  require_restored("bias");
  return host_copy(linear_.bias);
}
Tensor LinearShard::weight_grad() const { return host_copy(linear_.weight_grad); }
Tensor LinearShard::bias_grad() const { return host_copy(linear_.bias_grad); }
void LinearShard::zero_grad() { linear_.zero_grad(); }
void LinearShard::sgd_step(float lr) {
  require_restored("sgd_step");
  linear_.sgd_step(lr);
  ++steps_;
  if (checkpoints_.due(steps_)) {
    std::vector<Tensor> tensors{host_copy(linear_.weight)};
    if (linear_.bias.defined()) tensors.push_back(host_copy(linear_.bias));
    try {
      checkpoints_.save(steps_, std::move(tensors));
    } catch (const Error& e) {
      checkpoint_note_ = "no checkpoint of step " + std::to_string(steps_) + ": " + e.message();
      TROUPE_LOG_WARN("LinearShard: {}", checkpoint_note_);
    }
  }
}

// ---- collectives --------------------------------------------------------------------------

std::vector<ObjectRef<Tensor>> all_reduce(const ShardHandles& shards, const std::vector<ObjectRef<Tensor>>& values) {
  check_counts(shards, values.size(), "all_reduce");
  const std::size_t n = shards.size();
  if (power_of_two(n)) {
    // Recursive doubling: after the round with distance d, each block of 2d
    // shards holds its block's sum.
    std::vector<ObjectRef<Tensor>> held = values;
    for (std::size_t distance = 1; distance < n; distance <<= 1) {
      std::vector<ObjectRef<Tensor>> next;
      next.reserve(n);
      for (std::size_t k = 0; k < n; ++k) next.push_back(shards[k].call<&LinearShard::sum>(held[k], held[k ^ distance]));
      held = std::move(next);
    }
    if (n == 1) held[0] = shards[0].call<&LinearShard::hold>(values[0]);
    return held;
  }
  // A chain 0 -> 1 -> ... -> n-1, then the last shard's sum to the others.
  ObjectRef<Tensor> total = values[0];
  for (std::size_t k = 1; k < n; ++k) total = shards[k].call<&LinearShard::sum>(total, values[k]);
  std::vector<ObjectRef<Tensor>> held;
  held.reserve(n);
  for (std::size_t k = 0; k + 1 < n; ++k) held.push_back(shards[k].call<&LinearShard::hold>(total));
  held.push_back(total);
  return held;
}

ObjectRef<Tensor> gather(const ShardHandles& shards, const std::vector<ObjectRef<Tensor>>& values, int dim) {
  check_counts(shards, values.size(), "gather");
  // Pairwise, in a tree: [0|1] on 0, [2|3] on 2, then [01|23] on 0, ...
  std::vector<ObjectRef<Tensor>> parts = values;
  std::vector<std::size_t> owner(values.size());
  for (std::size_t k = 0; k < owner.size(); ++k) owner[k] = k;
  while (parts.size() > 1) {
    std::vector<ObjectRef<Tensor>> joined;
    std::vector<std::size_t> joined_owner;
    for (std::size_t k = 0; k < parts.size(); k += 2) {
      if (k + 1 == parts.size()) {
        joined.push_back(parts[k]);
      } else {
        joined.push_back(shards[owner[k]].call<&LinearShard::concat>(parts[k], parts[k + 1], dim));
      }
      joined_owner.push_back(owner[k]);
    }
    parts = std::move(joined);
    owner = std::move(joined_owner);
  }
  return parts[0];
}

// ---- TensorParallelLinear -----------------------------------------------------------------

TensorParallelLinear::TensorParallelLinear(std::int64_t in_features, std::int64_t out_features, int shards,
                                           Split split, std::uint32_t seed, std::vector<ActorOptions> options)
    : in_features_(in_features), out_features_(out_features), split_(split) {
  const char* where = "TensorParallelLinear";
  if (in_features < 1 || out_features < 1) {
    fail(where, "in and out features must be >= 1, got " + std::to_string(in_features) + " and " +
                    std::to_string(out_features));
  }
  const std::int64_t features = split == Split::columns ? out_features : in_features;
  if (shards < 1 || shards > features) {
    fail(where, std::to_string(shards) + " shards for " + std::to_string(features) + " " +
                    (split == Split::columns ? "output" : "input") + " features (want 1 to " +
                    std::to_string(features) + ")");
  }
  if (options.size() > 1 && options.size() != static_cast<std::size_t>(shards)) {
    fail(where, std::to_string(options.size()) + " ActorOptions for " + std::to_string(shards) +
                    " shards (give none, one for all, or one per shard)");
  }
  shards_.reserve(static_cast<std::size_t>(shards));
  for (int k = 0; k < shards; ++k) {
    ActorOptions shard_options = options.empty() ? ActorOptions{} : options[options.size() == 1 ? 0 : k];
    if (options.size() == 1 && !shard_options.name.empty()) shard_options.name += "-" + std::to_string(k);
    ShardSpec spec{in_features, out_features, seed, split, k, shards};
    shards_.push_back(actor<LinearShard>(std::move(shard_options), spec));
  }
}

template <class X>
std::vector<ObjectRef<Tensor>> TensorParallelLinear::forward_impl(const X& x) const {
  std::vector<ObjectRef<Tensor>> outputs;
  outputs.reserve(shards_.size());
  for (const auto& shard : shards_) outputs.push_back(shard.template call<&LinearShard::forward>(x));
  if (split_ == Split::columns) return outputs;  // y_i, to be gathered
  return all_reduce(shards_, outputs);           // partials -> every shard holds y
}

std::vector<ObjectRef<Tensor>> TensorParallelLinear::forward_shards(const Tensor& x) const { return forward_impl(x); }
std::vector<ObjectRef<Tensor>> TensorParallelLinear::forward_shards(const ObjectRef<Tensor>& x) const {
  return forward_impl(x);
}

std::vector<ObjectRef<Tensor>> TensorParallelLinear::forward_blocks(const std::vector<ObjectRef<Tensor>>& blocks) const {
  if (split_ != Split::rows) fail("TensorParallelLinear::forward_blocks", "the layer is split by columns, not rows");
  check_counts(shards_, blocks.size(), "TensorParallelLinear::forward_blocks");
  std::vector<ObjectRef<Tensor>> partials;
  partials.reserve(shards_.size());
  for (std::size_t k = 0; k < shards_.size(); ++k) partials.push_back(shards_[k].call<&LinearShard::forward>(blocks[k]));
  return all_reduce(shards_, partials);
}

template <class Dy>
std::vector<ObjectRef<Tensor>> TensorParallelLinear::backward_impl(const Dy& dy) const {
  std::vector<ObjectRef<Tensor>> outputs;
  outputs.reserve(shards_.size());
  for (const auto& shard : shards_) outputs.push_back(shard.template call<&LinearShard::backward>(dy));
  if (split_ == Split::rows) return outputs;  // dx_i, to be gathered
  return all_reduce(shards_, outputs);        // partial dx -> every shard holds dx
}

std::vector<ObjectRef<Tensor>> TensorParallelLinear::backward_shards(const Tensor& dy) const {
  return backward_impl(dy);
}
std::vector<ObjectRef<Tensor>> TensorParallelLinear::backward_shards(const ObjectRef<Tensor>& dy) const {
  return backward_impl(dy);
}

ObjectRef<Tensor> TensorParallelLinear::pick_forward(const std::vector<ObjectRef<Tensor>>& outputs) const {
  return split_ == Split::columns ? gather(shards_, outputs, 1) : outputs.front();
}

ObjectRef<Tensor> TensorParallelLinear::pick_backward(const std::vector<ObjectRef<Tensor>>& outputs) const {
  return split_ == Split::rows ? gather(shards_, outputs, 1) : outputs.front();
}

ObjectRef<void> TensorParallelLinear::zero_grad() const {
  std::vector<ObjectRef<void>> done;
  for (const auto& shard : shards_) done.push_back(shard.call<&LinearShard::zero_grad>());
  return when_all(done);
}

ObjectRef<void> TensorParallelLinear::sgd_step(float lr) const {
  std::vector<ObjectRef<void>> done;
  for (const auto& shard : shards_) done.push_back(shard.call<&LinearShard::sgd_step>(lr));
  return when_all(done);
}

ObjectRef<void> TensorParallelLinear::restore(std::int64_t step) const {
  std::vector<ObjectRef<std::int64_t>> done;
  for (const auto& shard : shards_) done.push_back(shard.call<&LinearShard::restore>(step));
  return when_all(done).then([](const std::vector<std::int64_t>&) {});
}

template <auto Method>
ObjectRef<Tensor> TensorParallelLinear::reassemble(bool is_bias) const {
  // Row split: W_i are blocks of rows and the bias lives on shard 0 alone.
  if (split_ == Split::rows && is_bias) return shards_.front().call<Method>();
  std::vector<ObjectRef<Tensor>> blocks;
  blocks.reserve(shards_.size());
  for (const auto& shard : shards_) blocks.push_back(shard.template call<Method>());
  // Column blocks of W (dim 1); the bias blocks are 1-D and so are rows of
  // their own (dim 0), as are the row blocks of W.
  const int dim = split_ == Split::columns && !is_bias ? 1 : 0;
  return gather(shards_, blocks, dim);
}

ObjectRef<Tensor> TensorParallelLinear::weight() const { return reassemble<&LinearShard::weight>(false); }
ObjectRef<Tensor> TensorParallelLinear::bias() const { return reassemble<&LinearShard::bias>(true); }
ObjectRef<Tensor> TensorParallelLinear::weight_grad() const {
  return reassemble<&LinearShard::weight_grad>(false);
}
ObjectRef<Tensor> TensorParallelLinear::bias_grad() const { return reassemble<&LinearShard::bias_grad>(true); }

}  // namespace troupe::actors

TROUPE_ACTOR(troupe::actors::LinearShard, (troupe::actors::ShardSpec), forward, backward, sum, concat, hold, weight,
             bias, weight_grad, bias_grad, zero_grad, sgd_step, spec, device, checkpoint_info, restore);
