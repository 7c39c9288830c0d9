// pipeline_local: a model split into pipeline-stage actors, in local mode.
//
// An MLP of --stages layers (each Linear(hidden -> hidden), f32, ReLU on all
// but the last) is split one layer per stage, and each stage is an actor that
// owns its weights. For every batch the driver
//   1. splits the batch into micro-batches with Tensor::chunk (views of the
//      batch: no bytes are copied),
//   2. chains each micro-batch through the stages: stage k's result ref goes
//      straight into stage k+1's call, so the driver never waits between
//      stages and never touches an activation, and the stages work on
//      different micro-batches at the same time (GPipe's forward pass),
//   3. waits for the last stage's refs with when_all,
// then checks the outputs against the same model run in one thread.
//
//   ./pipeline_local --stages 4 --microbatches 8 --batch 256 --steps 8 --troupe-threads=4
//
// Exit status: 0 when every step matches, 1 on a mismatch or a runtime error,
// 2 for a bad flag.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <string>
#include <string_view>
#include <vector>

#include <troupe/troupe.hpp>

namespace pipeline {

using troupe::Tensor;

// splitmix64 mapped to [-1, 1): the same numbers on every platform and
// compiler, unlike <random>'s distributions.
class Rng {
 public:
  explicit Rng(std::uint64_t seed) : state_(seed) {}
  float uniform() {
    std::uint64_t z = (state_ += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    z ^= z >> 31;
    return static_cast<float>(z >> 40) / static_cast<float>(1ULL << 23) - 1.0f;
  }

 private:
  std::uint64_t state_;
};

Tensor random_tensor(Tensor::Shape shape, std::uint64_t seed, float scale) {
  Tensor out = Tensor::empty(std::move(shape), troupe::DType::f32);
  Rng rng(seed);
  float* data = out.data<float>();
  for (std::int64_t i = 0; i < out.numel(); ++i) data[i] = scale * rng.uniform();
  return out;
}

struct Layer {
  Tensor weight;  // [in, out]
  Tensor bias;    // [out]
};

// Layer `index` of the model seeded by `seed`: whoever builds it (a stage
// actor or the single-thread reference) gets the same numbers. Uniform in
// +-sqrt(6 / in) (He) so activations stay of order one through the stack.
Layer make_layer(int index, std::int64_t features, std::uint64_t seed) {
  const float scale = std::sqrt(6.0f / static_cast<float>(features));
  const std::uint64_t layer_seed = seed * 1000003ULL + static_cast<std::uint64_t>(index) * 2ULL;
  return Layer{random_tensor({features, features}, layer_seed, scale),
               random_tensor({features}, layer_seed + 1, 0.1f)};
}

// y = x W + b, then ReLU unless `last`. Plain loops in i-k-j order, so the
// innermost loop runs along contiguous rows and vectorises.
// TODO(perf): use the BLAS / cuBLAS kernels of troupe's actors library.
Tensor linear(const Tensor& x, const Layer& layer, bool last) {
  const std::int64_t rows = x.size(0);
  const std::int64_t in = layer.weight.size(0);
  const std::int64_t out = layer.weight.size(1);
  if (x.dim() != 2 || x.size(1) != in) {
    throw std::invalid_argument("linear: input " + x.to_string() + " does not fit weight " + layer.weight.to_string());
  }
  Tensor y = Tensor::empty({rows, out}, troupe::DType::f32);
  const float* __restrict xs = x.data<float>();
  const float* __restrict w = layer.weight.data<float>();
  const float* __restrict b = layer.bias.data<float>();
  float* __restrict ys = y.data<float>();
  for (std::int64_t i = 0; i < rows; ++i) {
    float* __restrict row = ys + i * out;
    for (std::int64_t j = 0; j < out; ++j) row[j] = b[j];
    for (std::int64_t k = 0; k < in; ++k) {
      const float a = xs[i * in + k];
      const float* __restrict w_row = w + k * out;
      for (std::int64_t j = 0; j < out; ++j) row[j] += a * w_row[j];
    }
    if (!last) {
      for (std::int64_t j = 0; j < out; ++j) row[j] = std::max(row[j], 0.0f);
    }
  }
  return y;
}

// One pipeline stage: one layer's weights, and its forward pass.
class Stage {
 public:
  Stage(int index, std::int64_t features, std::uint64_t seed, bool last)
      : layer_(make_layer(index, features, seed)), last_(last) {}

  Tensor forward(Tensor x) { return linear(x, layer_, last_); }
  std::int64_t parameter_count() const { return layer_.weight.numel() + layer_.bias.numel(); }

 private:
  Layer layer_;
  bool last_;
};

// The whole model in this thread: what the pipeline must reproduce.
Tensor reference_forward(const Tensor& batch, const std::vector<Layer>& layers) {
  Tensor x = batch;
  for (std::size_t k = 0; k < layers.size(); ++k) x = linear(x, layers[k], k + 1 == layers.size());
  return x;
}

// max |got - want| / max |want| over the rows [offset, offset + got.size(0)).
// 0 means bitwise-equal values (up to the sign of zero).
double max_relative_error(const Tensor& got, const Tensor& want, std::int64_t offset) {
  const Tensor expected = want.slice(offset, offset + got.size(0));
  const float* g = got.data<float>();
  const float* e = expected.data<float>();
  double max_diff = 0, max_abs = 0;
  for (std::int64_t i = 0; i < got.numel(); ++i) {
    max_diff = std::max(max_diff, std::abs(static_cast<double>(g[i]) - e[i]));
    max_abs = std::max(max_abs, std::abs(static_cast<double>(e[i])));
  }
  return max_abs > 0 ? max_diff / max_abs : max_diff;
}

struct Flags {
  int stages = 4;
  int microbatches = 8;
  int batch = 256;
  int hidden = 512;
  int steps = 8;
  std::uint64_t seed = 42;
};

constexpr const char* kUsage =
    "usage: pipeline_local [--stages N] [--microbatches N] [--batch N] [--hidden N]\n"
    "                      [--steps N] [--seed N] [--troupe-threads=N] [--troupe-log-level=L]\n"
    "  --stages        pipeline stages, one actor and one layer each (default 4)\n"
    "  --microbatches  micro-batches per batch (default 8)\n"
    "  --batch         rows per batch (default 256)\n"
    "  --hidden        features of every layer (default 512)\n"
    "  --steps         batches to run (default 8)\n"
    "  --seed          seed of weights and inputs (default 42)\n";

// Accepts "--name N" and "--name=N". Returns false (after saying why) on a
// bad flag; sets `help` for -h/--help.
bool parse_flags(int argc, char** argv, Flags& flags, bool& help) {
  struct Spec {
    std::string_view name;
    long long min;
    long long max;
    long long* out;
  };
  long long stages = flags.stages, microbatches = flags.microbatches, batch = flags.batch, hidden = flags.hidden,
            steps = flags.steps, seed = static_cast<long long>(flags.seed);
  const Spec specs[] = {{"--stages", 1, 64, &stages},      {"--microbatches", 1, 4096, &microbatches},
                        {"--batch", 1, 1 << 20, &batch},   {"--hidden", 1, 16384, &hidden},
                        {"--steps", 1, 1000000, &steps},   {"--seed", 0, (1LL << 62), &seed}};
  for (int i = 1; i < argc; ++i) {
    std::string_view arg = argv[i];
    if (arg == "-h" || arg == "--help") {
      help = true;
      return true;
    }
    std::string_view value;
    const auto eq = arg.find('=');
    std::string_view name = arg.substr(0, eq);
    const Spec* spec = nullptr;
    for (const Spec& s : specs) {
      if (s.name == name) spec = &s;
    }
    if (spec == nullptr) {
      std::cerr << "pipeline_local: unknown flag '" << arg << "'\n" << kUsage;
      return false;
    }
    if (eq != std::string_view::npos) {
      value = arg.substr(eq + 1);
    } else if (i + 1 < argc) {
      value = argv[++i];
    } else {
      std::cerr << "pipeline_local: " << name << " needs a value\n" << kUsage;
      return false;
    }
    const std::string text(value);
    char* end = nullptr;
    const long long parsed = std::strtoll(text.c_str(), &end, 10);
    if (text.empty() || *end != '\0' || parsed < spec->min || parsed > spec->max) {
      std::cerr << "pipeline_local: " << name << " wants a whole number from " << spec->min << " to " << spec->max
                << ", got '" << text << "'\n";
      return false;
    }
    *spec->out = parsed;
  }
  flags = Flags{static_cast<int>(stages), static_cast<int>(microbatches), static_cast<int>(batch),
                static_cast<int>(hidden),  static_cast<int>(steps),        static_cast<std::uint64_t>(seed)};
  return true;
}

double ms_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
}

int run(const Flags& flags) {
  using Clock = std::chrono::steady_clock;

  // The pipeline: one actor per stage, each building its own layer.
  std::vector<troupe::ActorHandle<Stage>> stages;
  for (int k = 0; k < flags.stages; ++k) {
    troupe::ActorOptions options;
    options.name = "stage-" + std::to_string(k);
    stages.push_back(troupe::actor<Stage>(options, k, std::int64_t{flags.hidden}, flags.seed, k + 1 == flags.stages));
  }
  std::vector<troupe::ObjectRef<std::int64_t>> counts;
  for (const auto& stage : stages) counts.push_back(stage.call<&Stage::parameter_count>());
  std::int64_t parameters = 0;
  for (std::int64_t n : troupe::when_all(counts).get()) parameters += n;  // also: every stage is built

  // The same model in this thread, for checking.
  std::vector<Layer> layers;
  for (int k = 0; k < flags.stages; ++k) layers.push_back(make_layer(k, flags.hidden, flags.seed));

  const auto resources = troupe::cluster_resources();
  const std::int64_t rows_per_microbatch = (flags.batch + flags.microbatches - 1) / flags.microbatches;
  const std::int64_t microbatches = (flags.batch + rows_per_microbatch - 1) / rows_per_microbatch;
  const double flop_per_step = 2.0 * flags.batch * flags.hidden * flags.hidden * flags.stages;
  std::printf("pipeline_local: %d stages x Linear(%d -> %d), f32, %.2fM parameters\n", flags.stages, flags.hidden,
              flags.hidden, static_cast<double>(parameters) / 1e6);
  std::printf("  batch %d = %lld micro-batches of <= %lld rows, %d steps, seed %llu\n", flags.batch,
              static_cast<long long>(microbatches), static_cast<long long>(rows_per_microbatch), flags.steps,
              static_cast<unsigned long long>(flags.seed));
  std::printf("  %s mode: CPU=%g, GPU=%g; stage math runs on the CPU\n\n",
              troupe::mode() == troupe::Mode::cluster ? "cluster" : "local",
              resources.count("CPU") ? resources.at("CPU") : 0.0, resources.count("GPU") ? resources.at("GPU") : 0.0);
  std::printf("  step   pipeline   samples/s   GFLOP/s    1-thread    max rel err\n");

  constexpr double kTolerance = 1e-5;
  std::vector<double> pipeline_ms, reference_ms;
  int mismatches = 0;
  bool all_exact = true;
  for (int step = 0; step < flags.steps; ++step) {
    const Tensor batch = random_tensor({flags.batch, flags.hidden}, flags.seed * 7919ULL + step + 1, 1.0f);

    const auto start = Clock::now();
    std::vector<troupe::ObjectRef<Tensor>> outputs;
    for (const Tensor& microbatch : batch.chunk(flags.microbatches)) {  // views: no copy
      troupe::ObjectRef<Tensor> activation = stages[0].call<&Stage::forward>(microbatch);
      for (std::size_t k = 1; k < stages.size(); ++k) activation = stages[k].call<&Stage::forward>(activation);
      outputs.push_back(activation);
    }
    const std::vector<Tensor> results = troupe::when_all(outputs).get();
    pipeline_ms.push_back(ms_since(start));

    const auto reference_start = Clock::now();
    const Tensor expected = reference_forward(batch, layers);
    reference_ms.push_back(ms_since(reference_start));

    double error = 0;
    std::int64_t offset = 0;
    for (const Tensor& result : results) {
      error = std::max(error, max_relative_error(result, expected, offset));
      all_exact = all_exact && troupe::equal(result, expected.slice(offset, offset + result.size(0)));
      offset += result.size(0);
    }
    const bool ok = offset == flags.batch && error <= kTolerance;
    if (!ok) ++mismatches;
    const double seconds = pipeline_ms.back() / 1e3;
    std::printf("  %4d   %7.1f ms   %9.0f   %7.2f   %7.1f ms   %.1e%s\n", step + 1, pipeline_ms.back(),
                flags.batch / seconds, flop_per_step / seconds / 1e9, reference_ms.back(), error,
                ok ? "" : "  MISMATCH");
  }

  auto median = [](std::vector<double> values) {
    std::sort(values.begin(), values.end());
    return values[values.size() / 2];
  };
  const double step_ms = median(pipeline_ms);
  const double single_ms = median(reference_ms);
  std::printf("\nmedian step %.1f ms: %.0f samples/s, %.2f GFLOP/s; one thread takes %.1f ms (pipeline %.2fx)\n",
              step_ms, flags.batch / (step_ms / 1e3), flop_per_step / (step_ms / 1e3) / 1e9, single_ms,
              single_ms / step_ms);
  if (mismatches > 0) {
    std::printf("result: MISMATCH in %d of %d steps (tolerance %.0e relative)\n", mismatches, flags.steps,
                kTolerance);
    return 1;
  }
  std::printf("result: OK, all %d steps match the single-thread model %s\n", flags.steps,
              all_exact ? "exactly" : "within 1e-5 relative");
  return 0;
}

}  // namespace pipeline

TROUPE_ACTOR(pipeline::Stage, (int, std::int64_t, std::uint64_t, bool), forward, parameter_count);

int main(int argc, char** argv) {
  try {
    troupe::init(argc, argv);  // takes the --troupe-* flags out of argv
  } catch (const troupe::Error& e) {
    std::cerr << "pipeline_local: " << e.message() << '\n';
    return 2;
  }
  pipeline::Flags flags;
  bool help = false;
  if (!pipeline::parse_flags(argc, argv, flags, help)) {
    troupe::shutdown();
    return 2;
  }
  if (help) {
    std::cout << pipeline::kUsage;
    troupe::shutdown();
    return 0;
  }
  int status = 1;
  try {
    status = pipeline::run(flags);
  } catch (const troupe::Error& e) {
    std::cerr << "pipeline_local: " << e.what() << '\n';
  }
  troupe::shutdown();
  return status;
}
