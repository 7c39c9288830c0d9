// pipeline_mnist: an MLP trained on Fashion-MNIST as pipeline-stage actors.
//
// The model 784-512-256-128-10 (ReLU) is split one layer per stage into
// --stages actors (troupe::actors::PipelineStage); each owns its layer's
// weights, gradients and Adam (or SGD) state. For every batch the driver
// (troupe::actors::Pipeline) cuts the batch into micro-batches (views, no
// copy) and submits each stage's forwards and backwards in the order of the
// schedule, GPipe or 1F1B, chaining futures: a stage's output ref goes
// straight into the next stage's call and the gradients flow back the same
// way, so activations never pass through the driver. Then every stage takes
// its optimizer step. The driver keeps one batch queued ahead of the one it
// waits for.
//
//   ./pipeline_mnist                                    # 4 stages, 1F1B, local mode
//   ./pipeline_mnist --schedule gpipe --micro-batches 8
//   ./pipeline_mnist --limit 2000 --epochs 1 --check-against-single
//   troupe submit -- ./build/examples/pipeline_mnist     # on a cluster
//   ./pipeline_mnist --checkpoint-every 50               # survives the loss of a stage
//
// --checkpoint-every N turns on the Pipeline's fault tolerance: every stage
// writes its parameters, Adam moments and step to --checkpoint-dir (one
// directory per stage) every N steps, the stages may restart
// (--max-restarts), and when one dies the driver waits for it, rolls every
// stage back to the newest checkpoint they all have and replays the batches
// from there, printing "stage 2 died, restored step 40, replaying 7
// batches". The replay computes exactly what the lost run would have, so
// the losses equal a run without faults (--losses-file writes them all, for
// scripts/chaos.sh to compare). Given a --checkpoint-dir of an earlier run,
// training resumes from its newest common checkpoint.
//
// --single-process trains the same model, from the same seed, in this process
// without actors: one PipelineStage object holding every layer, fed the same
// micro-batches one after the other. A stage's arithmetic does not depend on
// how the layers are split over stages nor on the order stages interleave,
// so its per-step losses are the pipeline's (the library's tests show the
// micro-batched model equals full-batch training to 1e-5).
// --check-against-single runs both and compares every step's loss.
//
// Exit status: 0 on success, 1 when the check fails or on a runtime error,
// 2 for a bad flag.
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <filesystem>
#include <iostream>
#include <random>
#include <string>
#include <string_view>
#include <vector>

#include <troupe/actors/kernels.hpp>
#include <troupe/actors/pipeline.hpp>
#include <troupe/troupe.hpp>

#include "fashion_mnist.hpp"

namespace {

using troupe::Tensor;
using troupe::actors::Pipeline;
using troupe::actors::PipelineStage;
using troupe::actors::Schedule;
using troupe::actors::StageSpec;
using Clock = std::chrono::steady_clock;

const std::vector<std::int64_t> kSizes = {fashion_mnist::kPixels, 512, 256, 128, fashion_mnist::kClasses};

struct Flags {
  int epochs = 10;
  int batch_size = 128;
  int micro_batches = 4;
  int stages = 4;
  Schedule schedule = Schedule::one_f_one_b;
  std::string optimizer = "adam";
  double lr = 1e-3;
  double momentum = 0.9;
  std::uint32_t seed = 1;
  std::int64_t limit = 0;
  int log_every = 100;
  bool single_process = false;
  bool check_against_single = false;
  bool gpu_stages = false;
  std::string data = fashion_mnist::kDefaultDir;
  std::int64_t checkpoint_every = 0;
  std::string checkpoint_dir;  // "" = a new directory under the temp dir, removed after a good run
  int max_restarts = -2;       // -2: 5 with checkpoints, else 0
  int restart_timeout_s = 120;
  std::string losses_file;
  double stage_cpus = 0;
};

constexpr const char* kUsage =
    "usage: pipeline_mnist [flags] [--troupe-threads=N] [--troupe-log-level=L]\n"
    "  --epochs N             passes over the training set (default 10)\n"
    "  --batch-size N         rows per optimizer step (default 128)\n"
    "  --micro-batches N      micro-batches per batch (default 4)\n"
    "  --stages N             pipeline stages, 1..4 (default 4: one layer each)\n"
    "  --schedule S           gpipe or 1f1b (default 1f1b)\n"
    "  --optimizer O          adam or sgd (default adam)\n"
    "  --lr F                 learning rate (default 0.001)\n"
    "  --momentum F           SGD momentum (default 0.9)\n"
    "  --seed N               seed of the weights and the shuffling (default 1)\n"
    "  --limit N              train on the first N images only (default: all 60000)\n"
    "  --log-every N          print the loss every N steps (default 100)\n"
    "  --single-process       train without actors, in this process\n"
    "  --check-against-single train with the pipeline, then without actors, and compare every step's loss\n"
    "  --gpu-stages           each stage asks the scheduler for one GPU and uses it when this process can\n"
    "  --data DIR             Fashion-MNIST IDX files (default /usr/share/datasets/fashion-mnist)\n"
    "  --checkpoint-every N   checkpoint every stage every N steps and recover from a stage's death (default 0: off)\n"
    "  --checkpoint-dir DIR   where the stages checkpoint, one folder each; a directory of an earlier run resumes it\n"
    "                         (default: a new folder under $TROUPE_TEMP_DIR or /tmp, removed after a good run)\n"
    "  --max-restarts N       restarts each stage may take (default 5 with checkpoints, else 0; -1 unlimited)\n"
    "  --restart-timeout S    seconds to wait for a restarting stage before giving up (default 120)\n"
    "  --losses-file PATH     write every step's loss and every epoch's mean loss and accuracy there\n"
    "  --stage-cpus F         CPUs each stage asks the scheduler for (default 0: none)\n";

bool parse_flags(int argc, char** argv, Flags& flags, bool& help) {
  auto bad = [](const std::string& why) {
    std::cerr << "pipeline_mnist: " << why << '\n' << kUsage;
    return false;
  };
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "-h" || arg == "--help") {
      help = true;
      return true;
    }
    if (arg == "--single-process") {
      flags.single_process = true;
      continue;
    }
    if (arg == "--check-against-single") {
      flags.check_against_single = true;
      continue;
    }
    if (arg == "--gpu-stages") {
      flags.gpu_stages = true;
      continue;
    }
    std::string value;
    const auto eq = arg.find('=');
    if (eq != std::string::npos) {
      value = arg.substr(eq + 1);
      arg = arg.substr(0, eq);
    } else if (arg.starts_with("--") && i + 1 < argc) {
      value = argv[++i];
    } else {
      return bad(arg.starts_with("--") ? arg + " needs a value" : "unexpected argument '" + arg + "'");
    }
    auto integer = [&](long long min, long long max, auto& out) {
      char* end = nullptr;
      const long long parsed = std::strtoll(value.c_str(), &end, 10);
      if (value.empty() || *end != '\0' || parsed < min || parsed > max) {
        return bad(arg + " wants a whole number from " + std::to_string(min) + " to " + std::to_string(max) +
                   ", got '" + value + "'");
      }
      out = static_cast<std::remove_reference_t<decltype(out)>>(parsed);
      return true;
    };
    auto real = [&](double min, double max, double& out) {
      char* end = nullptr;
      const double parsed = std::strtod(value.c_str(), &end);
      if (value.empty() || *end != '\0' || !(parsed >= min && parsed <= max)) {
        return bad(arg + " wants a number from " + std::to_string(min) + " to " + std::to_string(max) + ", got '" +
                   value + "'");
      }
      out = parsed;
      return true;
    };
    bool ok = true;
    if (arg == "--epochs") ok = integer(1, 1000, flags.epochs);
    else if (arg == "--batch-size") ok = integer(1, 60000, flags.batch_size);
    else if (arg == "--micro-batches") ok = integer(1, 60000, flags.micro_batches);
    else if (arg == "--stages") ok = integer(1, static_cast<long long>(kSizes.size()) - 1, flags.stages);
    else if (arg == "--seed") ok = integer(0, 0xffffffffLL, flags.seed);
    else if (arg == "--limit") ok = integer(0, 1LL << 40, flags.limit);
    else if (arg == "--log-every") ok = integer(0, 1 << 30, flags.log_every);
    else if (arg == "--lr") ok = real(0, 10, flags.lr);
    else if (arg == "--momentum") ok = real(0, 1, flags.momentum);
    else if (arg == "--data") flags.data = value;
    else if (arg == "--checkpoint-every") ok = integer(0, 1 << 30, flags.checkpoint_every);
    else if (arg == "--checkpoint-dir") flags.checkpoint_dir = value;
    else if (arg == "--max-restarts") ok = integer(-1, 1 << 20, flags.max_restarts);
    else if (arg == "--restart-timeout") ok = integer(1, 86400, flags.restart_timeout_s);
    else if (arg == "--losses-file") flags.losses_file = value;
    else if (arg == "--stage-cpus") ok = real(0, 1024, flags.stage_cpus);
    else if (arg == "--optimizer") {
      if (value != "adam" && value != "sgd") return bad("--optimizer wants adam or sgd, got '" + value + "'");
      flags.optimizer = value;
    } else if (arg == "--schedule") {
      try {
        flags.schedule = troupe::actors::parse_schedule(value);
        // PipelineStage holds one chunk: interleaving needs a chunked stage class.
        if (flags.schedule == troupe::actors::Schedule::interleaved_1f1b) throw troupe::Error(troupe::Errc::invalid_argument, value);
      } catch (const troupe::Error&) {
        return bad("--schedule wants gpipe or 1f1b, got '" + value + "'");
      }
    } else {
      return bad("unknown flag '" + arg + "'");
    }
    if (!ok) return false;
  }
  if (flags.single_process && flags.check_against_single) {
    return bad("--single-process and --check-against-single exclude each other");
  }
  if (flags.checkpoint_every > 0 && flags.single_process) {
    return bad("--checkpoint-every is for the pipeline of actors, not --single-process");
  }
  if (flags.max_restarts == -2) flags.max_restarts = flags.checkpoint_every > 0 ? 5 : 0;
  return true;
}

// A permutation of 0..n-1 from std::mt19937 draws, the same on every platform
// (std::shuffle's algorithm is left to the library).
std::vector<std::int64_t> shuffled(std::int64_t n, std::uint32_t seed) {
  std::vector<std::int64_t> order(static_cast<std::size_t>(n));
  for (std::int64_t i = 0; i < n; ++i) order[i] = i;
  std::mt19937 generator(seed);
  for (std::int64_t i = n - 1; i > 0; --i) std::swap(order[i], order[generator() % static_cast<std::uint32_t>(i + 1)]);
  return order;
}

// Rows `order[begin, end)` of the training set, copied into one batch.
void gather(const fashion_mnist::Split& split, const std::vector<std::int64_t>& order, std::int64_t begin,
            std::int64_t end, Tensor& x, Tensor& y) {
  const std::int64_t rows = end - begin;
  x = Tensor::empty({rows, fashion_mnist::kPixels}, troupe::DType::f32);
  y = Tensor::empty({rows}, troupe::DType::i64);
  const float* images = split.images.data<float>();
  const std::int64_t* labels = split.labels.data<std::int64_t>();
  float* xs = x.data<float>();
  std::int64_t* ys = y.data<std::int64_t>();
  for (std::int64_t r = 0; r < rows; ++r) {
    const std::int64_t row = order[begin + r];
    std::copy_n(images + row * fashion_mnist::kPixels, fashion_mnist::kPixels, xs + r * fashion_mnist::kPixels);
    ys[r] = labels[row];
  }
}

// One way to train: the pipeline of actors, or the same model in this process.
class Trainer {
 public:
  virtual ~Trainer() = default;
  // Queues a batch; the loss comes from the matching finish() call, in order.
  virtual void submit(const Tensor& x, const Tensor& y) = 0;
  virtual float finish() = 0;
  virtual std::size_t queued() const = 0;
  virtual std::vector<troupe::ObjectRef<Tensor>> predict(const std::vector<Tensor>& chunks) = 0;
};

class PipelineTrainer final : public Trainer {
 public:
  PipelineTrainer(const std::vector<StageSpec>& specs, const Flags& flags, std::vector<troupe::ActorOptions> options,
                  troupe::actors::PipelineOptions pipeline_options)
      : pipeline_(specs, std::move(options), std::move(pipeline_options)), flags_(flags) {}
  void submit(const Tensor& x, const Tensor& y) override {
    pending_.push_back(pipeline_.submit_batch(x, y, flags_.micro_batches, flags_.schedule));
  }
  float finish() override {
    const float loss = pending_.front().get();
    pending_.pop_front();
    return loss;
  }
  std::size_t queued() const override { return pending_.size(); }
  std::vector<troupe::ObjectRef<Tensor>> predict(const std::vector<Tensor>& chunks) override {
    std::vector<troupe::ObjectRef<Tensor>> out;
    for (const Tensor& chunk : chunks) out.push_back(pipeline_.predict(chunk));
    return out;
  }
  const Pipeline& pipeline() const { return pipeline_; }
  Pipeline& pipeline() { return pipeline_; }

 private:
  Pipeline pipeline_;
  const Flags& flags_;
  std::deque<troupe::ObjectRef<float>> pending_;
};

// The whole model as one PipelineStage object, called directly.
class SingleProcessTrainer final : public Trainer {
 public:
  SingleProcessTrainer(const StageSpec& spec, const Flags& flags) : model_(spec), flags_(flags) {}
  void submit(const Tensor& x, const Tensor& y) override {
    const std::vector<Tensor> xs = x.chunk(flags_.micro_batches);
    const std::vector<Tensor> ys = y.chunk(flags_.micro_batches);
    double loss = 0;
    for (std::size_t i = 0; i < xs.size(); ++i) {
      loss += model_.forward_loss(next_id_, xs[i], ys[i], x.size(0));
      (void)model_.backward_loss(next_id_++);
    }
    (void)model_.step(static_cast<std::int64_t>(xs.size()));
    losses_.push_back(static_cast<float>(loss));
  }
  float finish() override {
    const float loss = losses_.front();
    losses_.pop_front();
    return loss;
  }
  std::size_t queued() const override { return losses_.size(); }
  std::vector<troupe::ObjectRef<Tensor>> predict(const std::vector<Tensor>& chunks) override {
    std::vector<troupe::ObjectRef<Tensor>> out;
    for (const Tensor& chunk : chunks) out.push_back(troupe::make_ready(model_.predict(chunk)));
    return out;
  }

 private:
  PipelineStage model_;
  const Flags& flags_;
  std::int64_t next_id_ = 0;
  std::deque<float> losses_;
};

double seconds_since(Clock::time_point start) { return std::chrono::duration<double>(Clock::now() - start).count(); }

double accuracy(Trainer& trainer, const fashion_mnist::Split& test) {
  const std::vector<Tensor> xs = test.images.chunk((test.size() + 999) / 1000);
  const std::vector<Tensor> ys = test.labels.chunk((test.size() + 999) / 1000);
  const auto logits = troupe::when_all(trainer.predict(xs)).get();
  std::int64_t correct = 0;
  for (std::size_t i = 0; i < logits.size(); ++i) correct += troupe::kernels::count_correct(logits[i], ys[i]);
  return 100.0 * static_cast<double>(correct) / static_cast<double>(test.size());
}

struct RunResult {
  std::vector<float> losses;  // one per step
  double accuracy = 0;
  double seconds = 0;  // training only
};

// Trains `trainer` for flags.epochs epochs, printing progress under `label`;
// the first `skip` steps (a resumed run's) are left out. With `losses` open,
// every step's loss and every epoch's mean loss and accuracy go there too.
RunResult train(Trainer& trainer, const fashion_mnist::Dataset& data, const Flags& flags, const char* label,
                std::int64_t skip = 0, std::FILE* losses = nullptr) {
  RunResult result;
  const std::int64_t n = data.train.size();
  const std::int64_t steps_per_epoch = (n + flags.batch_size - 1) / flags.batch_size;
  for (int epoch = 0; epoch < flags.epochs; ++epoch) {
    const std::int64_t first = std::clamp<std::int64_t>(skip - epoch * steps_per_epoch, 0, steps_per_epoch);
    if (first == steps_per_epoch) continue;  // resumed past this epoch
    const std::vector<std::int64_t> order = shuffled(n, flags.seed * 1000003u + static_cast<std::uint32_t>(epoch));
    const auto start = Clock::now();
    double epoch_loss = 0;
    std::int64_t finished = first;
    auto collect = [&] {
      const float loss = trainer.finish();
      result.losses.push_back(loss);
      epoch_loss += loss;
      ++finished;
      if (losses != nullptr) {
        std::fprintf(losses, "step %lld %.9g\n", static_cast<long long>(epoch * steps_per_epoch + finished), loss);
        std::fflush(losses);  // scripts/chaos.sh follows the progress here
      }
      if (flags.log_every > 0 && (finished == 1 || finished % flags.log_every == 0 || finished == steps_per_epoch)) {
        std::printf("  [%s] epoch %d step %4lld/%lld  loss %.4f\n", label, epoch + 1, static_cast<long long>(finished),
                    static_cast<long long>(steps_per_epoch), loss);
        std::fflush(stdout);
      }
    };
    for (std::int64_t s = first; s < steps_per_epoch; ++s) {
      Tensor x, y;
      gather(data.train, order, s * flags.batch_size, std::min(n, (s + 1) * flags.batch_size), x, y);
      trainer.submit(x, y);
      // One batch stays queued behind the one we wait for, so the first
      // stages start on it while the last ones finish the previous batch.
      if (trainer.queued() > 1) collect();
    }
    while (trainer.queued() > 0) collect();
    const double seconds = seconds_since(start);
    result.seconds += seconds;
    result.accuracy = accuracy(trainer, data.test);
    const double mean = epoch_loss / static_cast<double>(steps_per_epoch - first);
    std::printf("[%s] epoch %d/%d: loss %.4f  %.0f samples/s  %.1f s  test accuracy %.2f%%\n", label, epoch + 1,
                flags.epochs, mean, static_cast<double>((steps_per_epoch - first) * flags.batch_size) / seconds,
                seconds, result.accuracy);
    std::fflush(stdout);
    if (losses != nullptr) {
      std::fprintf(losses, "epoch %d %.9g accuracy %.4f\n", epoch + 1, mean, result.accuracy);
      std::fflush(losses);
    }
  }
  return result;
}

// The checkpoint directory: the flag's, or a new one under the temp dir.
std::string checkpoint_directory(const Flags& flags, bool& made_up) {
  made_up = flags.checkpoint_dir.empty();
  if (!made_up) return flags.checkpoint_dir;
  const char* temp = std::getenv("TROUPE_TEMP_DIR");
  const std::filesystem::path base =
      temp != nullptr && *temp != '\0' ? std::filesystem::path(temp) : std::filesystem::temp_directory_path();
  const auto stamp = std::chrono::duration_cast<std::chrono::milliseconds>(
                         std::chrono::system_clock::now().time_since_epoch())
                         .count();
  return (base / ("pipeline_mnist-checkpoints-" + std::to_string(::getpid()) + "-" + std::to_string(stamp))).string();
}

std::string stage_list(const std::vector<int>& stages) {
  if (stages.empty()) return "no stage died (a batch failed)";
  std::string out = stages.size() == 1 ? "stage " : "stages ";
  for (std::size_t i = 0; i < stages.size(); ++i) out += (i > 0 ? ", " : "") + std::to_string(stages[i]);
  return out + " died";
}

int run(const Flags& flags) {
  std::setvbuf(stdout, nullptr, _IOLBF, 0);  // progress shows up line by line through `troupe submit` too
  const auto load_start = Clock::now();
  const fashion_mnist::Dataset data = fashion_mnist::load(flags.data, flags.limit);
  StageSpec common;
  common.activation = troupe::actors::Activation::relu;
  common.seed = flags.seed;
  common.optimizer = flags.optimizer == "adam"
                         ? troupe::actors::OptimizerSpec::make_adam(static_cast<float>(flags.lr))
                         : troupe::actors::OptimizerSpec::make_sgd(static_cast<float>(flags.lr),
                                                                   static_cast<float>(flags.momentum));
  if (flags.gpu_stages) common.device = troupe::actors::StageDevice::prefer_cuda;
  // One OpenBLAS thread per stage: the stages are the parallelism, and
  // OpenBLAS's threaded sgemm called from several stage threads at once is
  // several times slower (see set_host_math_threads).
  common.host_math_threads = 1;
  const std::vector<StageSpec> specs = troupe::actors::split_mlp(kSizes, flags.stages, common);

  std::int64_t parameters = 0;
  for (std::size_t j = 0; j + 1 < kSizes.size(); ++j) parameters += kSizes[j] * kSizes[j + 1] + kSizes[j + 1];
  const std::int64_t rows = (flags.batch_size + flags.micro_batches - 1) / flags.micro_batches;
  std::printf("pipeline_mnist: MLP 784-512-256-128-10 (%.2fM parameters), %s lr %g\n",
              static_cast<double>(parameters) / 1e6, flags.optimizer.c_str(), flags.lr);
  std::printf("  data: %lld training / %lld test images from %s (%.1f s to load)\n",
              static_cast<long long>(data.train.size()), static_cast<long long>(data.test.size()), flags.data.c_str(),
              seconds_since(load_start));
  std::printf("  batch %d in micro-batches of <= %lld rows, %d epochs, seed %u\n", flags.batch_size,
              static_cast<long long>(rows), flags.epochs, flags.seed);

  RunResult pipelined, single;
  std::FILE* losses = nullptr;
  if (!flags.losses_file.empty()) {
    losses = std::fopen(flags.losses_file.c_str(), "w");
    if (losses == nullptr) {
      std::fprintf(stderr, "pipeline_mnist: cannot write %s\n", flags.losses_file.c_str());
      return 1;
    }
  }
  if (!flags.single_process) {
    std::vector<troupe::ActorOptions> options(specs.size());
    for (auto& option : options) {
      if (flags.gpu_stages) option.resources["GPU"] = 1;
      if (flags.stage_cpus > 0) option.resources["CPU"] = flags.stage_cpus;
      option.max_restarts = flags.max_restarts;
    }
    std::printf("  %d pipeline stages (%s schedule), %s mode\n", flags.stages,
                std::string(to_string(flags.schedule)).c_str(),
                troupe::mode() == troupe::Mode::cluster ? "cluster" : "local");
    troupe::actors::PipelineOptions fault_tolerance;
    bool made_up_dir = false;
    if (flags.checkpoint_every > 0) {
      fault_tolerance.checkpoint_directory = checkpoint_directory(flags, made_up_dir);
      fault_tolerance.checkpoint_every = flags.checkpoint_every;
      fault_tolerance.restart_timeout = std::chrono::seconds(flags.restart_timeout_s);
      fault_tolerance.on_recovery = [](const troupe::actors::RecoveryEvent& event) {
        std::printf("  [pipeline] %s, restored step %lld, replaying %lld batches (%s)\n",
                    stage_list(event.stages).c_str(), static_cast<long long>(event.restored_step),
                    static_cast<long long>(event.replayed_batches), event.reason.c_str());
        std::fflush(stdout);
      };
      std::printf("  checkpoints every %lld steps in %s, %d restarts per stage\n",
                  static_cast<long long>(flags.checkpoint_every), fault_tolerance.checkpoint_directory.c_str(),
                  flags.max_restarts);
    }
    std::printf("\n");
    const std::string checkpoint_dir = fault_tolerance.checkpoint_directory;
    PipelineTrainer trainer(specs, flags, options, std::move(fault_tolerance));
    const std::int64_t resume = trainer.pipeline().resume_step();
    if (resume > 0) std::printf("  resuming from step %lld (checkpoints of an earlier run)\n", static_cast<long long>(resume));
    pipelined = train(trainer, data, flags, "pipeline", resume, losses);
    const auto all_stats = trainer.pipeline().stats();
    for (std::size_t k = 0; k < specs.size(); ++k) {
      const auto& stats = all_stats[k];
      std::printf("  stage %zu on %s: %lld parameters, peak %lld micro-batches stashed (%.2f MB)\n", k,
                  stats.device.c_str(), static_cast<long long>(stats.parameters),
                  static_cast<long long>(stats.peak_stashed_micro_batches),
                  static_cast<double>(stats.peak_stash_bytes) / 1e6);
    }
    if (trainer.pipeline().fault_tolerant()) {
      const auto recovery = trainer.pipeline().recovery_stats();
      std::printf("  recovery: %lld recoveries, %lld finished batches replayed, %s\n",
                  static_cast<long long>(recovery.recoveries), static_cast<long long>(recovery.replayed_batches),
                  recovery.replay_mismatches == 0 ? "every replayed loss equal to the first run's"
                                                  : "SOME REPLAYED LOSSES DIFFER from the first run's");
      if (made_up_dir) {
        std::error_code error;
        std::filesystem::remove_all(checkpoint_dir, error);
      }
    }
  }
  if (losses != nullptr) std::fclose(losses);
  if (flags.single_process || flags.check_against_single) {
    std::printf("\n  single process: the same model without actors\n\n");
    SingleProcessTrainer trainer(troupe::actors::split_mlp(kSizes, 1, common).front(), flags);
    single = train(trainer, data, flags, "single");
  }
  const RunResult& main_run = flags.single_process ? single : pipelined;
  const double total = static_cast<double>(data.train.size()) * flags.epochs;
  std::printf("\nresult: test accuracy %.2f%% after %d epochs, %.1f s training, %.0f samples/s\n", main_run.accuracy,
              flags.epochs, main_run.seconds, total / main_run.seconds);
  if (!flags.check_against_single) return 0;

  constexpr double kTolerance = 1e-5;
  double max_diff = 0;
  for (std::size_t s = 0; s < pipelined.losses.size(); ++s) {
    const double want = single.losses[s];
    max_diff = std::max(max_diff, std::abs(pipelined.losses[s] - want) / std::max(std::abs(want), 1e-12));
  }
  const bool ok = pipelined.losses.size() == single.losses.size() && max_diff <= kTolerance;
  std::printf("check: %zu steps, max relative loss difference %.3g (tolerance %.0e), pipeline %.1f s vs single "
              "process %.1f s: %s\n",
              pipelined.losses.size(), max_diff, kTolerance, pipelined.seconds, single.seconds, ok ? "OK" : "MISMATCH");
  return ok ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    troupe::init(argc, argv);  // actor hosts of a cluster never return from here
  } catch (const troupe::Error& e) {
    std::cerr << "pipeline_mnist: " << e.message() << '\n';
    return 2;
  }
  Flags flags;
  bool help = false;
  if (!parse_flags(argc, argv, flags, help)) {
    troupe::shutdown();
    return 2;
  }
  if (help) {
    std::cout << kUsage;
    troupe::shutdown();
    return 0;
  }
  int status = 1;
  try {
    status = run(flags);
  } catch (const std::exception& e) {
    std::cerr << "pipeline_mnist: " << e.what() << '\n';
  }
  troupe::shutdown();
  return status;
}
