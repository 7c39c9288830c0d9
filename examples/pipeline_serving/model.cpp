// pipeline_serving: the model profile, its layers, the stage actor and its
// per-layer checkpoints.
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <utility>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <troupe/actors/checkpoint.hpp>
#include <troupe/runtime/cuda.hpp>
#include <troupe/scheduler/error.hpp>

#include "serving.hpp"

namespace serving {

namespace {

constexpr const char* kLayerKind = "ServingLayer";
constexpr int kKeepCheckpoints = 3;

std::filesystem::path layer_directory(const std::string& directory, int layer) {
  return std::filesystem::path(directory) / ("layer-" + std::to_string(layer));
}

// FNV-1a-64 over the tensors' bytes, in order: equal digests, equal state.
struct Digest {
  std::uint64_t value = 0xcbf29ce484222325ULL;
  void add(const Tensor& tensor) {
    const Tensor host = tensor.to(troupe::Device::cpu());
    const auto* bytes = static_cast<const unsigned char*>(host.raw_data());
    for (std::size_t i = 0; i < host.nbytes(); ++i) value = (value ^ bytes[i]) * 0x100000001b3ULL;
  }
};

}  // namespace

Model load_model(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw sched::SpecError(path + ": cannot open");
  nlohmann::json doc;
  try {
    doc = nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    throw sched::SpecError(path + ": " + e.what());
  }
  Model model;
  try {
    model.profile = sched::parse_model(doc);
  } catch (const sched::SpecError& e) {
    throw sched::SpecError(path + ": " + e.message());
  }
  if (!doc.contains("batch_size") || !doc["batch_size"].is_number_integer() || doc["batch_size"].get<long>() < 1) {
    throw sched::SpecError(path + ": \"batch_size\" must be a whole number >= 1");
  }
  model.batch_size = doc["batch_size"].get<std::int64_t>();
  const double b = static_cast<double>(model.batch_size);
  for (std::size_t l = 0; l < doc["layers"].size(); ++l) {
    const auto& layer = doc["layers"][l];
    const std::string where = fmt::format("{}: layers[{}]", path, l);
    if (!layer.contains("in_features") || !layer.contains("out_features") || !layer["in_features"].is_number_integer() ||
        !layer["out_features"].is_number_integer() || layer["in_features"].get<long>() < 1 ||
        layer["out_features"].get<long>() < 1) {
      throw sched::SpecError(where + ": needs whole \"in_features\" and \"out_features\" >= 1");
    }
    LayerSize size{layer["in_features"].get<std::int64_t>(), layer["out_features"].get<std::int64_t>()};
    if (l > 0 && size.in != model.layers.back().out) {
      throw sched::SpecError(fmt::format("{}: in_features {} but the layer before gives {}", where, size.in,
                                         model.layers.back().out));
    }
    const auto& p = model.profile.layers[l];
    const double in_f = static_cast<double>(size.in), out_f = static_cast<double>(size.out);
    if (p.flops != 2 * b * in_f * out_f || p.param_bytes != 4 * (in_f * out_f + out_f) ||
        p.activation_bytes != 4 * b * out_f) {
      throw sched::SpecError(where + ": flops, param_bytes or activation_bytes differ from what the layer sizes give");
    }
    model.layers.push_back(size);
  }
  return model;
}

// Layer `index`: Linear(in, out) seeded from the model seed; whoever builds
// it (a stage actor, the single-thread check) gets the same numbers.
kernels::Linear make_layer(const LayerSize& size, std::uint32_t seed, int index, troupe::Device device) {
  return kernels::Linear(size.in, size.out, seed + static_cast<std::uint32_t>(index) * 7919u, device);
}

std::uint64_t checkpoint_digest(const std::string& directory, int first, int last, std::int64_t step) {
  Digest digest;
  for (int l = first; l <= last; ++l) {
    const auto data = troupe::actors::read_checkpoint(
        troupe::actors::checkpoint_path(layer_directory(directory, l), step), kLayerKind);
    for (const Tensor& t : data.tensors) digest.add(t);
  }
  return digest.value;
}

Stage::Stage(StageSpec spec) : spec_(std::move(spec)), device_(pick_device()) {
  for (std::size_t i = 0; i + 1 < spec_.widths.size(); ++i) {
    const int l = spec_.first_layer + static_cast<int>(i);
    const std::int64_t out = spec_.widths[i + 1];
    if (spec_.restore_step < 0) {
      layers_.push_back(make_layer({spec_.widths[i], out}, spec_.seed, l, device_));
      sums_.push_back(Tensor::zeros({out}, troupe::DType::f32));
      rows_.push_back(Tensor::zeros({1}, troupe::DType::i64));
      continue;
    }
    const std::filesystem::path dir = layer_directory(spec_.restore_directory, l);
    auto data = troupe::actors::read_checkpoint(troupe::actors::checkpoint_path(dir, spec_.restore_step), kLayerKind);
    if (data.tensors.size() != 4 || data.tensors[0].shape() != Tensor::Shape{spec_.widths[i], out} ||
        data.tensors[2].shape() != Tensor::Shape{out}) {
      throw troupe::Error(troupe::Errc::serialization,
                          fmt::format("layer {}: the checkpoint of step {} does not fit a {}x{} layer", l,
                                      spec_.restore_step, spec_.widths[i], out));
    }
    layers_.emplace_back(data.tensors[0].to(device_), data.tensors[1].to(device_));
    sums_.push_back(data.tensors[2]);
    rows_.push_back(data.tensors[3]);
    // The files after this step belong to a timeline that was given up.
    for (const std::int64_t step : troupe::actors::list_checkpoints(dir)) {
      if (step > spec_.restore_step) std::filesystem::remove(troupe::actors::checkpoint_path(dir, step));
    }
  }
}

Tensor Stage::forward(const Tensor& x) {
  Tensor h = x.to(device_);
  for (std::size_t i = 0; i < layers_.size(); ++i) {
    h = layers_[i].forward(h);
    if (!(spec_.ends_model && i + 1 == layers_.size())) h = kernels::relu(h);
    count(i, h);
  }
  if (device_.is_cuda()) kernels::synchronize(device_);
  return h;
}

std::uint64_t Stage::save(std::string directory, std::int64_t step) {
  for (std::size_t i = 0; i < layers_.size(); ++i) {
    const std::filesystem::path dir = layer_directory(directory, spec_.first_layer + static_cast<int>(i));
    troupe::actors::write_checkpoint(
        dir, {kLayerKind, step,
              {layers_[i].weight.to(troupe::Device::cpu()), layers_[i].bias.to(troupe::Device::cpu()), sums_[i],
               rows_[i]}});
    std::vector<std::int64_t> steps = troupe::actors::list_checkpoints(dir);
    for (std::size_t k = 0; k + kKeepCheckpoints < steps.size(); ++k) {
      std::filesystem::remove(troupe::actors::checkpoint_path(dir, steps[k]));
    }
  }
  return digest();
}

std::uint64_t Stage::digest() const {
  Digest digest;
  for (std::size_t i = 0; i < layers_.size(); ++i) {
    digest.add(layers_[i].weight);
    digest.add(layers_[i].bias);
    digest.add(sums_[i]);
    digest.add(rows_[i]);
  }
  return digest.value;
}

Placement Stage::where() const {
  Placement placement;
  placement.device = device_.to_string();
  const char* node = std::getenv("TROUPE_NODE_ID");
  if (node == nullptr || *node == '\0') {  // local mode: one node, GPU ids are the node's
    placement.node = "local";
    placement.gpus = troupe::get_gpu_ids();
    return placement;
  }
  // An actor host: the node manager named the node's GPUs in CUDA_VISIBLE_DEVICES.
  placement.node = std::string(node).substr(0, 12);
  const char* visible = std::getenv("CUDA_VISIBLE_DEVICES");
  for (const char* p = visible; p != nullptr && *p != '\0';) {
    char* end = nullptr;
    placement.gpus.push_back(static_cast<int>(std::strtol(p, &end, 10)));
    if (end == p) break;
    p = *end == ',' ? end + 1 : end;
  }
  return placement;
}

troupe::Device Stage::pick_device() {
  const std::vector<int> gpus = troupe::get_gpu_ids();
  if (gpus.empty() || !troupe::cuda::available() || gpus.front() >= troupe::cuda::device_count()) {
    return troupe::Device::cpu();
  }
  return troupe::Device::cuda(gpus.front());
}

void Stage::count(std::size_t i, const Tensor& out) {
  const Tensor host = out.to(troupe::Device::cpu());
  const float* v = host.data<float>();
  float* sums = sums_[i].data<float>();
  const std::int64_t rows = host.size(0), features = host.size(1);
  for (std::int64_t r = 0; r < rows; ++r) {
    for (std::int64_t f = 0; f < features; ++f) sums[f] += v[r * features + f];
  }
  rows_[i].data<std::int64_t>()[0] += rows;
}

}  // namespace serving
