// gpt_kjv: a character-level GPT trained on the King James Bible as pipeline
// stages, tensor-parallel within a stage, cut and placed by the planner.
//
// 1. Text. `bible -f 'Genesis 1:1 - Revelation 22:21'` (Debian's bible-kjv)
//    prints one verse a line, "Ge1:1 In the beginning ..."; the labels are
//    dropped and the verses joined by newlines. The books from --val-from
//    (default 1Pet: 1-2 Peter, 1-3 John, Jude, Revelation, about 3% of the
//    text) are held out for validation. The vocabulary is every character.
// 2. Profile. Each layer of the model (block l; the embeddings ride with
//    block 0, the final norm, head and loss with the last block) is run
//    forward and backward on one micro-batch on this machine, the layers
//    taking turns; its time (the fastest of 6 runs: the machine may be shared)
//    becomes the planner's "flops" as the work that takes that long on a
//    --profile-gpu (default T4-16GB: the measured times stand for that GPU),
//    its parameters, gradients and AdamW moments its "param_bytes", its
//    output its "activation_bytes" and its two forward and two backward
//    all-reduces "tp_bytes". The planner's model JSON goes to --model-json.
// 3. Plan. troupe::scheduler::plan_pipeline_v2 over the cluster's GPUs (in
//    local mode the declared --troupe-gpus, default T4-16GB:8), at most
//    --stages stages of tensor-parallel degree at most --tp, no replicas.
// 4. Place. troupe::actors::place_plan reserves each stage's t GPUs as one
//    bundle on its planned node; a stage with t = 1 is one GptStage actor on
//    its GPU, one with t >= 2 has t GptShard actors on its GPUs (shard i of
//    each block: its heads and hidden units, all-reduces shard to shard) and
//    a GptStage actor in the same bundle that holds the embeddings or head.
// 5. Train under --schedule (1f1b or gpipe) with AdamW (linear warmup, then a
//    cosine to the end of the run; gradients clipped to a global norm over
//    every stage and shard: gpt_pipeline_step), printing the loss curve
//    (training loss, validation loss every --eval-every steps, learning rate,
//    gradient norm before clipping), the
//    plan's predicted stage times beside the measured ones, and a sample
//    generated from the first validation verse.
//
//   ./gpt_kjv                                     # local mode, 4 stages, tp 2, 15 minutes
//   ./gpt_kjv --steps 200 --tp 1
//   ./gpt_kjv --steps 5 --check-against-single 5  # losses equal the unsplit model's to 1e-4
//   troupe submit -- ./build/examples/gpt_kjv      # on a cluster
//
// Exit status: 0 on success, 1 when the check fails or on a runtime error,
// 2 for a bad flag or missing text.
#include <algorithm>
#include <cctype>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <map>
#include <optional>
#include <array>
#include <stdexcept>
#include <random>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include <troupe/actors/gpt_stage.hpp>
#include <troupe/actors/kernels.hpp>
#include <troupe/actors/plan_placement.hpp>
#include <troupe/actors/stage_times.hpp>
#include <troupe/scheduler/error.hpp>
#include <troupe/scheduler/planner_v2.hpp>
#include <troupe/troupe.hpp>

namespace {

namespace sched = troupe::scheduler;
using troupe::ActorHandle;
using troupe::Tensor;
using troupe::actors::GptShard;
using troupe::actors::GptSpec;
using troupe::actors::GptStage;
using troupe::actors::GptStageSpec;
using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

constexpr const char* kDefaultGpus = "T4-16GB:8";
constexpr const char* kBibleRange = "Genesis 1:1 - Revelation 22:21";
constexpr auto kWait = 600s;

struct Flags {
  std::string text;  // a file with bible -f's output; empty: run bible
  std::string val_from = "1Pet";
  std::string model_json = "gpt_kjv.model.json";
  std::string profile_gpu = "T4-16GB";
  std::string schedule = "1f1b";
  int stages = 4;
  int tp = 2;
  int layers = 4;
  int channels = 64;
  int heads = 4;
  int hidden = 256;
  int seq_len = 64;
  int batch = 32;
  int micro_batches = 4;
  int steps = 0;         // 0: until --minutes
  double minutes = 15;   // training time limit
  double lr = 3e-3;
  double lr_min = -1;     // the cosine's floor; < 0: lr / 10
  int warmup = 100;       // steps of linear warmup
  double clip_norm = 1.0; // largest global gradient norm; 0: no clipping
  double weight_decay = 0.01;
  int eval_every = 100;
  int eval_batches = 4;
  int log_every = 20;
  int sample = 300;
  int check = 0;  // steps compared against the unsplit model
  std::uint32_t seed = 1;
};

constexpr const char* kUsage =
    "usage: gpt_kjv [--stages S] [--tp T] [--layers L] [--channels C] [--heads H] [--hidden F]\n"
    "               [--seq-len T] [--batch B] [--micro-batches M] [--steps N] [--minutes X] [--lr R]\n"
    "               [--lr-min R] [--warmup N] [--clip-norm X] [--weight-decay W] [--schedule 1f1b|gpipe]\n"
    "               [--eval-every N] [--eval-batches N]\n"
    "               [--log-every N] [--sample CHARS] [--check-against-single N] [--seed N]\n"
    "               [--text FILE] [--val-from BOOK] [--model-json FILE] [--profile-gpu TYPE]\n"
    "  --stages/--tp     at most S pipeline stages, each tensor-parallel over at most T GPUs (4, 2)\n"
    "  --layers ...      the model: L blocks (4) of C channels (64), H heads (4), MLP width F (256),\n"
    "                    T characters of context (64)\n"
    "  --batch/--micro-batches  sequences per step (32) and micro-batches per step (4)\n"
    "  --steps/--minutes training length: N steps, else X minutes (15)\n"
    "  --lr/--lr-min/--warmup  AdamW's learning rate: linear warmup to R (3e-3) over N steps (100),\n"
    "                    then a cosine down to --lr-min (R/10) at the end of the run (of --steps,\n"
    "                    else of --minutes of training time)\n"
    "  --clip-norm X     clip the gradients to global norm X over all stages and shards (1; 0: off)\n"
    "  --check-against-single N  also train the unsplit model in this process for N steps and\n"
    "                    require equal losses (1e-4)\n"
    "  --text FILE       bible -f output to read instead of running bible\n"
    "  --val-from BOOK   first held-out book, as bible labels it (1Pet)\n"
    "  --model-json FILE where the measured model profile goes (gpt_kjv.model.json)\n"
    "  --profile-gpu TYPE the GPU type the measured times stand for (T4-16GB)\n"
    "Local mode declares TROUPE_GPUS or --troupe-gpus, else T4-16GB:8.\n";

bool parse_flags(int argc, char** argv, Flags& f, bool& help) {
  for (int i = 1; i < argc; ++i) {
    const std::string_view arg = argv[i];
    if (arg == "-h" || arg == "--help") {
      help = true;
      return true;
    }
    if (arg.rfind("--troupe-", 0) == 0) continue;
    if (i + 1 >= argc) {
      std::cerr << "gpt_kjv: " << arg << " needs a value\n" << kUsage;
      return false;
    }
    const std::string value = argv[++i];
    auto whole = [&](int min, int max, int& out) {
      char* end = nullptr;
      const long v = std::strtol(value.c_str(), &end, 10);
      if (value.empty() || *end != '\0' || v < min || v > max) {
        std::cerr << "gpt_kjv: " << arg << " wants a whole number from " << min << " to " << max << ", got '"
                  << value << "'\n";
        return false;
      }
      out = static_cast<int>(v);
      return true;
    };
    auto number = [&](double min, double& out) {
      char* end = nullptr;
      const double v = std::strtod(value.c_str(), &end);
      if (value.empty() || *end != '\0' || !(v >= min) || !std::isfinite(v)) {
        std::cerr << "gpt_kjv: " << arg << " wants a number >= " << min << ", got '" << value << "'\n";
        return false;
      }
      out = v;
      return true;
    };
    int seed = 0;
    bool ok = true;
    if (arg == "--stages") ok = whole(1, 64, f.stages);
    else if (arg == "--tp") ok = whole(1, 8, f.tp);
    else if (arg == "--layers") ok = whole(1, 256, f.layers);
    else if (arg == "--channels") ok = whole(1, 8192, f.channels);
    else if (arg == "--heads") ok = whole(1, 256, f.heads);
    else if (arg == "--hidden") ok = whole(1, 65536, f.hidden);
    else if (arg == "--seq-len") ok = whole(2, 4096, f.seq_len);
    else if (arg == "--batch") ok = whole(1, 1 << 16, f.batch);
    else if (arg == "--micro-batches") ok = whole(1, 1 << 16, f.micro_batches);
    else if (arg == "--steps") ok = whole(0, 1 << 30, f.steps);
    else if (arg == "--minutes") ok = number(0, f.minutes);
    else if (arg == "--lr") ok = number(0, f.lr);
    else if (arg == "--lr-min") ok = number(0, f.lr_min);
    else if (arg == "--warmup") ok = whole(0, 1 << 30, f.warmup);
    else if (arg == "--clip-norm") ok = number(0, f.clip_norm);
    else if (arg == "--weight-decay") ok = number(0, f.weight_decay);
    else if (arg == "--eval-every") ok = whole(1, 1 << 30, f.eval_every);
    else if (arg == "--eval-batches") ok = whole(1, 1 << 16, f.eval_batches);
    else if (arg == "--log-every") ok = whole(1, 1 << 30, f.log_every);
    else if (arg == "--sample") ok = whole(0, 1 << 20, f.sample);
    else if (arg == "--check-against-single") ok = whole(0, 1 << 20, f.check);
    else if (arg == "--seed") ok = whole(0, 1 << 30, seed), f.seed = static_cast<std::uint32_t>(seed);
    else if (arg == "--schedule") f.schedule = value;
    else if (arg == "--text") f.text = value;
    else if (arg == "--val-from") f.val_from = value;
    else if (arg == "--model-json") f.model_json = value;
    else if (arg == "--profile-gpu") f.profile_gpu = value;
    else {
      std::cerr << "gpt_kjv: unknown flag '" << arg << "'\n" << kUsage;
      return false;
    }
    if (!ok) return false;
  }
  if (f.channels % f.heads != 0) {
    std::cerr << "gpt_kjv: --channels " << f.channels << " is not a multiple of --heads " << f.heads << '\n';
    return false;
  }
  if (f.batch % f.micro_batches != 0) {
    std::cerr << "gpt_kjv: --batch " << f.batch << " is not a multiple of --micro-batches " << f.micro_batches << '\n';
    return false;
  }
  if (f.schedule != "1f1b" && f.schedule != "gpipe") {
    std::cerr << "gpt_kjv: --schedule must be 1f1b or gpipe (the stage has no split backward for zb-h1 and one "
                 "chunk per stage), not '"
              << f.schedule << "'\n";
    return false;
  }
  return true;
}

// ---- the text ------------------------------------------------------------------------------------

// The text cannot be read: exit status 2.
struct TextError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct Corpus {
  std::string train, val;
  std::string chars;                // the vocabulary, sorted
  std::array<int, 256> index{};     // char -> token (-1: not in the vocabulary)
  std::vector<std::int64_t> train_tokens, val_tokens;
  std::size_t val_verses = 0, verses = 0;
};

// "Ge1:1 In the beginning" -> {"Ge", "In the beginning"}; false for a line
// without a label.
bool split_verse(const std::string& line, std::string& book, std::string& text) {
  std::size_t i = 0;
  if (i < line.size() && std::isdigit(static_cast<unsigned char>(line[i]))) ++i;
  const std::size_t name = i;
  while (i < line.size() && std::isalpha(static_cast<unsigned char>(line[i]))) ++i;
  if (i == name) return false;
  book = line.substr(0, i);
  const std::size_t digits = i;
  while (i < line.size() && (std::isdigit(static_cast<unsigned char>(line[i])) || line[i] == ':')) ++i;
  if (i == digits || i >= line.size() || line[i] != ' ') return false;
  text = line.substr(i + 1);
  return true;
}

Corpus load_corpus(const Flags& flags) {
  std::string raw;
  if (!flags.text.empty()) {
    std::ifstream in(flags.text);
    if (!in) throw TextError(flags.text + ": cannot open");
    raw.assign(std::istreambuf_iterator<char>(in), {});
  } else {
    const std::string command = std::string("bible -f '") + kBibleRange + "' 2>/dev/null";
    FILE* pipe = ::popen(command.c_str(), "r");
    if (pipe == nullptr) throw TextError("cannot run bible");
    char buffer[1 << 16];
    std::size_t n = 0;
    while ((n = std::fread(buffer, 1, sizeof buffer, pipe)) > 0) raw.append(buffer, n);
    const int status = ::pclose(pipe);
    if (status != 0 || raw.empty()) {
      throw TextError("`bible -f '" + std::string(kBibleRange) +
                               "'` failed: install Debian's bible-kjv (scripts/install-deps.sh) or pass --text");
    }
  }
  Corpus c;
  bool in_val = false;
  std::size_t start = 0;
  while (start < raw.size()) {
    std::size_t end = raw.find('\n', start);
    if (end == std::string::npos) end = raw.size();
    const std::string line = raw.substr(start, end - start);
    start = end + 1;
    std::string book, text;
    if (!split_verse(line, book, text)) continue;
    if (book == flags.val_from) in_val = true;
    ++c.verses;
    if (in_val) ++c.val_verses;
    (in_val ? c.val : c.train) += text + '\n';
  }
  if (c.train.empty() || c.val.empty()) {
    throw TextError("no verses before or from book '" + flags.val_from + "' (" + std::to_string(c.verses) +
                             " verses read)");
  }
  std::set<unsigned char> seen(c.train.begin(), c.train.end());
  seen.insert(c.val.begin(), c.val.end());
  c.index.fill(-1);
  for (const unsigned char ch : seen) {
    c.index[ch] = static_cast<int>(c.chars.size());
    c.chars.push_back(static_cast<char>(ch));
  }
  for (const unsigned char ch : c.train) c.train_tokens.push_back(c.index[ch]);
  for (const unsigned char ch : c.val) c.val_tokens.push_back(c.index[ch]);
  return c;
}

struct Batch {
  Tensor tokens;   // [rows, T] i64
  Tensor targets;  // [rows*T] i64: the next character of every position
};

Batch make_batch(const std::vector<std::int64_t>& stream, const std::vector<std::size_t>& offsets, std::int64_t T) {
  const auto rows = static_cast<std::int64_t>(offsets.size());
  Batch b{Tensor::empty({rows, T}, troupe::DType::i64), Tensor::empty({rows * T}, troupe::DType::i64)};
  for (std::int64_t r = 0; r < rows; ++r) {
    for (std::int64_t t = 0; t < T; ++t) {
      b.tokens.data<std::int64_t>()[r * T + t] = stream[offsets[r] + t];
      b.targets.data<std::int64_t>()[r * T + t] = stream[offsets[r] + t + 1];
    }
  }
  return b;
}

// Training batch `step`: random windows, the same for a seed everywhere.
Batch train_batch(const Corpus& c, const Flags& f, int step) {
  std::mt19937_64 rng(f.seed * 1000003ULL + static_cast<std::uint64_t>(step));
  std::vector<std::size_t> offsets;
  const std::size_t span = c.train_tokens.size() - static_cast<std::size_t>(f.seq_len) - 1;
  for (int r = 0; r < f.batch; ++r) offsets.push_back(static_cast<std::size_t>(rng() % span));
  return make_batch(c.train_tokens, offsets, f.seq_len);
}

// Validation batch i of n: windows spread evenly over the held-out books.
Batch val_batch(const Corpus& c, const Flags& f, int i, int n) {
  const std::size_t windows = static_cast<std::size_t>(f.batch) * static_cast<std::size_t>(n);
  const std::size_t span = c.val_tokens.size() - static_cast<std::size_t>(f.seq_len) - 1;
  std::vector<std::size_t> offsets;
  for (int r = 0; r < f.batch; ++r) {
    offsets.push_back(span * (static_cast<std::size_t>(i) * f.batch + r) / windows);
  }
  return make_batch(c.val_tokens, offsets, f.seq_len);
}

// ---- profile ------------------------------------------------------------------------------------

struct LayerProfile {
  double seconds = 0;  // forward + backward of one micro-batch: the fastest of 6 runs (others share the machine)
  double param_bytes = 0, activation_bytes = 0, tp_bytes = 0;
};

// Layer l = stage l of L with one block: block l, the embeddings on 0, the
// head and loss on L-1; run on a micro-batch here, in this process. The
// layers take turns (rounds of one run each) and each keeps its fastest
// run, so load from others on a shared machine skews no layer against
// the rest (the planner would merge layers that merely looked cheap).
std::vector<LayerProfile> profile_layers(const GptSpec& spec, const Batch& micro) {
  constexpr int kRounds = 7;  // the first is a warm-up
  const int L = spec.layers;
  const double C = static_cast<double>(spec.channels), F = static_cast<double>(spec.hidden);
  const double V = static_cast<double>(spec.vocab), T = static_cast<double>(spec.seq_len);
  const double rows = static_cast<double>(micro.targets.numel());
  Tensor h = Tensor::empty({micro.targets.numel(), spec.channels}, troupe::DType::f32);
  troupe::kernels::uniform_(h, 1.0f, 3u);
  std::vector<GptStage> layers;
  for (int l = 0; l < L; ++l) layers.emplace_back(GptStageSpec{spec, l, L, l, l}, troupe::actors::GptShardHandles{});
  std::vector<double> fastest(static_cast<std::size_t>(L), INFINITY);
  for (int round = 0; round < kRounds; ++round) {
    for (int l = 0; l < L; ++l) {
      GptStage& layer = layers[static_cast<std::size_t>(l)];
      const auto start = Clock::now();
      if (l == L - 1) {
        (void)layer.forward_loss(round, l == 0 ? micro.tokens : h, micro.targets, micro.targets.numel());
        (void)layer.backward_loss(round);
      } else {
        const Tensor y = layer.forward(round, l == 0 ? micro.tokens : h);
        (void)layer.backward(round, y);
      }
      const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
      if (round > 0) fastest[static_cast<std::size_t>(l)] = std::min(fastest[static_cast<std::size_t>(l)], seconds);
    }
  }
  std::vector<LayerProfile> out;
  for (int l = 0; l < L; ++l) {
    LayerProfile p;
    p.seconds = fastest[static_cast<std::size_t>(l)];
    double params = 4 * C * C + 4 * C + 2 * C * F + F + C + 4 * C;  // a block (see BlockParameters)
    if (l == 0) params += V * C + T * C;
    if (l == L - 1) params += 2 * C + C * V + V;
    p.param_bytes = 4 * 4 * params;  // weights, gradients, two AdamW moments
    p.activation_bytes = 4 * rows * C;
    p.tp_bytes = 4 * 4 * rows * C;  // two all-reduces forward, two backward
    out.push_back(p);
  }
  return out;
}

nlohmann::json model_json(const GptSpec& spec, const std::vector<LayerProfile>& layers, double reference_flops,
                          const Flags& f) {
  nlohmann::json doc;
  doc["name"] = "gpt-kjv-L" + std::to_string(spec.layers) + "-C" + std::to_string(spec.channels);
  doc["source"] = "measured by gpt_kjv: forward+backward seconds of one micro-batch on this machine, times " +
                  f.profile_gpu + "'s FLOP/s";
  doc["batch_size"] = f.batch / f.micro_batches;
  nlohmann::json list = nlohmann::json::array();
  for (std::size_t l = 0; l < layers.size(); ++l) {
    std::string name = "block" + std::to_string(l);
    if (l == 0) name = "embed+" + name;
    if (l + 1 == layers.size()) name += "+head";
    list.push_back({{"name", name},
                    {"flops", layers[l].seconds * reference_flops},
                    {"param_bytes", layers[l].param_bytes},
                    {"activation_bytes", layers[l].activation_bytes},
                    {"tp_bytes", layers[l].tp_bytes},
                    {"measured_ms", layers[l].seconds * 1e3}});
  }
  doc["layers"] = list;
  return doc;
}

// ---- plan ------------------------------------------------------------------------------------------

void print_plan(const sched::PlanResultV2& result, int micro_batches) {
  const sched::PlanV2& plan = result.plan;
  std::printf("plan: %zu stages, bottleneck %.3f ms per micro-batch (stage %d), M = %d\n", plan.stages.size(),
              plan.bottleneck_s * 1e3, plan.bottleneck_stage, micro_batches);
  std::printf("  STAGE  NODE          GPUS        TYPE        T  LAYERS  COMPUTE ms  TP ms   SEND ms  TIME ms\n");
  for (std::size_t k = 0; k < plan.stages.size(); ++k) {
    const auto& s = plan.stages[k];
    std::string gpus;
    for (const int g : s.gpus) gpus += (gpus.empty() ? "" : ",") + std::to_string(g);
    std::printf("  %-5zu  %-12s  %-10s  %-10s  %d  %d-%-4d  %10.3f  %6.3f  %7.3f  %7.3f\n", k,
                s.node.substr(0, 12).c_str(), gpus.c_str(), s.gpu_type.c_str(), s.tp, s.first_layer, s.last_layer,
                s.compute_s * 1e3, s.tp_s * 1e3, s.comm_s * 1e3, s.time_s * 1e3);
  }
  if (result.v1_status == sched::PlanStatus::optimal) {
    std::printf("  best plan without tensor parallelism: bottleneck %.3f ms (%zu stages); this plan is %.2fx as fast\n",
                result.v1_plan.bottleneck_s * 1e3, result.v1_plan.stages.size(), result.speedup_over_v1());
  }
}

// The report of stage_times.hpp takes a version-1 plan: each stage's first
// GPU, its predicted time (compute + TP + send).
sched::Plan as_report_plan(const sched::PlanV2& v2) {
  sched::Plan plan;
  for (const auto& s : v2.stages) {
    sched::PlanStage stage;
    stage.node = s.node;
    stage.gpu = s.gpus.empty() ? 0 : s.gpus.front();
    stage.first_layer = s.first_layer;
    stage.last_layer = s.last_layer;
    stage.gpu_type = s.gpu_type + (s.tp > 1 ? " x" + std::to_string(s.tp) : "");
    stage.compute_s = s.compute_s + s.tp_s;
    stage.comm_s = s.comm_s;
    stage.time_s = s.time_s;
    plan.stages.push_back(stage);
  }
  plan.bottleneck_s = v2.bottleneck_s;
  plan.bottleneck_stage = v2.bottleneck_stage;
  return plan;
}

// ---- the run ------------------------------------------------------------------------------------

// The learning rate of step `step` (0-based): linear warmup over --warmup
// steps, then a cosine from --lr to --lr-min as `progress` goes from 0 to 1
// (the fraction of --steps, or of --minutes of training time, done).
double learning_rate(const Flags& f, int step, double progress) {
  if (step < f.warmup) return f.lr * (step + 1) / f.warmup;
  const double floor = f.lr_min < 0 ? f.lr / 10 : f.lr_min;
  const double p = std::clamp(progress, 0.0, 1.0);
  return floor + 0.5 * (f.lr - floor) * (1 + std::cos(M_PI * p));
}

struct Pipeline {
  std::vector<ActorHandle<GptStage>> stages;
  std::vector<ActorHandle<GptShard>> shards;
};

// The validation loss through the stages (no gradients): the mean over
// --eval-batches fixed batches.
double validation_loss(const Pipeline& p, const Corpus& c, const Flags& f) {
  std::vector<troupe::ObjectRef<float>> losses;
  for (int i = 0; i < f.eval_batches; ++i) {
    const Batch b = val_batch(c, f, i, f.eval_batches);
    const std::size_t S = p.stages.size();
    if (S == 1) {
      losses.push_back(p.stages[0].call<&GptStage::eval_loss>(b.tokens, b.targets, b.targets.numel()));
      continue;
    }
    troupe::ObjectRef<Tensor> h = p.stages[0].call<&GptStage::infer>(b.tokens);
    for (std::size_t k = 1; k + 1 < S; ++k) h = p.stages[k].call<&GptStage::infer>(h);
    losses.push_back(p.stages[S - 1].call<&GptStage::eval_loss>(h, b.targets, b.targets.numel()));
  }
  double sum = 0;
  for (const auto& loss : losses) sum += loss.get(kWait);
  return sum / static_cast<double>(losses.size());
}

// --sample characters after the first seq_len characters of the held-out
// text, at temperature 0.8.
std::string generate(const Pipeline& p, const Corpus& c, const Flags& f, std::string& prompt) {
  std::vector<std::int64_t> window(c.val_tokens.begin(), c.val_tokens.begin() + f.seq_len);
  for (const std::int64_t t : window) prompt.push_back(c.chars[static_cast<std::size_t>(t)]);
  std::mt19937 rng(f.seed + 17);
  std::string out;
  const std::size_t S = p.stages.size();
  for (int i = 0; i < f.sample; ++i) {
    const Tensor tokens = Tensor::from_vector(window, {1, f.seq_len});
    Tensor logits;
    if (S == 1) {
      logits = p.stages[0].call<&GptStage::logits>(tokens).get(kWait);
    } else {
      troupe::ObjectRef<Tensor> h = p.stages[0].call<&GptStage::infer>(tokens);
      for (std::size_t k = 1; k + 1 < S; ++k) h = p.stages[k].call<&GptStage::infer>(h);
      logits = p.stages[S - 1].call<&GptStage::logits>(h).get(kWait);
    }
    const std::int64_t V = logits.size(1);
    const float* row = logits.data<float>() + (f.seq_len - 1) * V;
    std::vector<double> weights(static_cast<std::size_t>(V));
    const float top = *std::max_element(row, row + V);
    for (std::int64_t v = 0; v < V; ++v) weights[static_cast<std::size_t>(v)] = std::exp((row[v] - top) / 0.8);
    std::discrete_distribution<std::int64_t> pick(weights.begin(), weights.end());
    const std::int64_t next = pick(rng);
    out.push_back(c.chars[static_cast<std::size_t>(next)]);
    window.erase(window.begin());
    window.push_back(next);
  }
  return out;
}

int run(const Flags& f) {
  const bool cluster_mode = [] {
    const char* address = std::getenv("TROUPE_ADDRESS");
    return address != nullptr && *address != '\0';
  }();
  // The stages are the parallelism: one OpenBLAS thread each (see
  // set_host_math_threads); actor hosts get the same through their environment.
  troupe::kernels::set_host_math_threads(1);

  const auto load_start = Clock::now();
  const Corpus corpus = load_corpus(f);
  GptSpec spec{.vocab = static_cast<std::int64_t>(corpus.chars.size()),
               .seq_len = f.seq_len,
               .channels = f.channels,
               .heads = f.heads,
               .hidden = f.hidden,
               .layers = f.layers,
               .seed = f.seed,
               .lr = static_cast<float>(f.lr),
               .weight_decay = static_cast<float>(f.weight_decay),
               .use_gpu = true};
  spec.validate();
  const std::int64_t params = troupe::actors::gpt_parameter_count(spec);
  std::printf("gpt_kjv: %d blocks, %d channels, %d heads, MLP %d, context %d, vocabulary %lld: %lld parameters\n",
              f.layers, f.channels, f.heads, f.hidden, f.seq_len, static_cast<long long>(spec.vocab),
              static_cast<long long>(params));
  std::printf("  text: %zu verses, %zu training / %zu validation characters (books from %s held out, %zu verses), "
              "%.1f s to load\n",
              corpus.verses, corpus.train.size(), corpus.val.size(), f.val_from.c_str(), corpus.val_verses,
              std::chrono::duration<double>(Clock::now() - load_start).count());
  std::printf("  batch %d x %d characters in %d micro-batches, AdamW lr %g (warmup %d steps, cosine to %g) weight "
              "decay %g, clip norm %g%s, %s, %s mode\n",
              f.batch, f.seq_len, f.micro_batches, f.lr, f.warmup, f.lr_min < 0 ? f.lr / 10 : f.lr_min,
              f.weight_decay, f.clip_norm, f.clip_norm > 0 ? "" : " (off)", f.schedule.c_str(),
              cluster_mode ? "cluster" : "local");

  // Profile, plan.
  const Batch first = train_batch(corpus, f, 0);
  const Batch micro{first.tokens.chunk(f.micro_batches).front().clone(),
                    first.targets.chunk(f.micro_batches).front().clone()};
  const std::vector<LayerProfile> layers = profile_layers(spec, micro);
  const std::optional<sched::GpuTypeSpec> reference = sched::find_gpu_type(f.profile_gpu);
  if (!reference) throw std::runtime_error("--profile-gpu " + f.profile_gpu + ": unknown GPU type");
  const nlohmann::json doc = model_json(spec, layers, reference->tflops * 1e12, f);
  std::printf("profile (one micro-batch of %lld characters, forward + backward, on this machine):\n",
              static_cast<long long>(micro.targets.numel()));
  for (std::size_t l = 0; l < layers.size(); ++l) {
    std::printf("  layer %zu %-18s %8.2f ms  %8.1f kB state  %8.1f kB out\n", l,
                doc["layers"][l]["name"].get<std::string>().c_str(), layers[l].seconds * 1e3,
                layers[l].param_bytes / 1e3, layers[l].activation_bytes / 1e3);
  }
  if (!f.model_json.empty()) {
    std::ofstream out(f.model_json);
    out << doc.dump(1) << '\n';
    std::printf("  model profile written to %s (times as %s work)\n", f.model_json.c_str(), f.profile_gpu.c_str());
  }
  const sched::ModelProfile profile = sched::parse_model(doc);
  const sched::ClusterSpec cluster = troupe::actors::live_cluster_spec();
  std::printf("cluster: %zu GPUs on %zu node%s\n", cluster.gpu_count(), cluster.nodes.size(),
              cluster.nodes.size() == 1 ? "" : "s");
  sched::PlannerOptionsV2 options;
  options.micro_batches = f.micro_batches;
  options.max_stages = f.stages;
  options.max_tp = f.tp;
  options.max_dp = 1;
  const sched::PlanResultV2 result = sched::plan_pipeline_v2(profile, cluster, options);
  if (!result.feasible()) {
    std::printf("gpt_kjv: no plan: %s\n", result.reason.c_str());
    return 1;
  }
  print_plan(result, f.micro_batches);
  const sched::PlanV2& plan = result.plan;

  // Place: one bundle of t GPUs per stage.
  troupe::actors::PlacePlanOptions placing;
  placing.group_name = "gpt-kjv";
  const troupe::actors::PlacedPlanV2 placed = troupe::actors::place_plan(plan, cluster, placing);
  if (!placed.group.ready().wait_for(120s)) {
    std::printf("gpt_kjv: the plan's GPUs are not free: %s\n", placed.group.pending_reason().c_str());
    return 1;
  }
  Pipeline pipe;
  const int S = static_cast<int>(plan.stages.size());
  int max_tp = 1;
  for (int k = 0; k < S; ++k) {
    const auto& s = plan.stages[static_cast<std::size_t>(k)];
    max_tp = std::max(max_tp, s.tp);
    const GptStageSpec stage{spec, k, S, s.first_layer, s.last_layer};
    troupe::actors::GptShardHandles shards;
    auto with_env = [](troupe::ActorOptions o) {
      o.env["OPENBLAS_NUM_THREADS"] = "1";
      return o;
    };
    for (int i = 0; s.tp > 1 && i < s.tp; ++i) {
      troupe::ActorOptions o = with_env(placed.stages[static_cast<std::size_t>(k)].shard(0, i));
      o.name = "gpt-stage-" + std::to_string(k) + "-shard-" + std::to_string(i);
      shards.push_back(troupe::actor<GptShard>(o, stage, i, s.tp));
    }
    troupe::ActorOptions o = with_env(placed.stages[static_cast<std::size_t>(k)].shard(0, 0));
    if (s.tp > 1) {  // the stage actor holds no block: it asks for no GPU, in the stage's bundle
      o.resources.clear();
      o.gpu_type.clear();
    }
    o.name = "gpt-stage-" + std::to_string(k);
    o.detached = true;  // it waits for its shards
    pipe.stages.push_back(troupe::actor<GptStage>(o, stage, shards));
    pipe.shards.insert(pipe.shards.end(), shards.begin(), shards.end());
  }
  std::printf("placement:\n");
  for (const auto& stage : pipe.stages) {
    for (const std::string& line : stage.call<&GptStage::where>().get(kWait)) std::printf("  %s\n", line.c_str());
  }
  std::printf("%d pipeline stages (%s schedule), tensor-parallel %d, %s mode\n", S, f.schedule.c_str(), max_tp,
              cluster_mode ? "cluster" : "local");

  // The unsplit model, for --check-against-single: it takes the first
  // steps beside the pipeline, with the same learning rates and clipping.
  std::vector<float> single;
  std::optional<GptStage> whole;
  if (f.check > 0) {
    GptSpec whole_spec = spec;
    whole_spec.use_gpu = false;
    whole.emplace(GptStageSpec{whole_spec, 0, 1, 0, f.layers - 1}, troupe::actors::GptShardHandles{});
  }

  troupe::actors::StagePipeline<GptStage> pipeline(pipe.stages);
  troupe::actors::StageClock clock(pipe.stages.size());
  pipeline.set_stage_clock(&clock);
  const troupe::actors::Schedule schedule = troupe::actors::parse_schedule(f.schedule);
  struct Point {
    int step;
    double seconds, train, val;
  };
  std::vector<Point> curve;
  std::vector<float> losses;
  const int total = f.steps > 0 ? f.steps : (1 << 30);
  const double limit_s = f.steps > 0 ? INFINITY : f.minutes * 60;
  double trained_s = 0;  // training time, evaluations left out
  double recent = 0;
  int recent_n = 0;
  if (f.steps > 0) {
    std::printf("training: %d steps\n", f.steps);
  } else {
    std::printf("training: %g minutes\n", f.minutes);
  }
  std::printf("  %6s  %8s  %10s  %10s  %9s  %9s\n", "STEP", "TIME s", "TRAIN", "VALIDATION", "LR", "GRAD NORM");
  int step = 0;
  double recent_norm = 0;
  int clipped = 0;
  for (; step < total && trained_s < limit_s; ++step) {
    const Batch b = train_batch(corpus, f, step);
    const double progress = f.steps > 0 ? static_cast<double>(step - f.warmup) / std::max(1, f.steps - f.warmup)
                                        : trained_s / limit_s;
    const troupe::actors::GptStepOptions options{.lr = static_cast<float>(learning_rate(f, step, progress)),
                                                 .clip_norm = static_cast<float>(f.clip_norm)};
    const auto start = Clock::now();
    const troupe::actors::GptStepResult result =
        troupe::actors::gpt_pipeline_step(pipeline, b.tokens.chunk(f.micro_batches),
                                          b.targets.chunk(f.micro_batches), b.targets.numel(), schedule, options, kWait);
    trained_s += std::chrono::duration<double>(Clock::now() - start).count();
    if (whole && step < f.check) {
      single.push_back(troupe::actors::gpt_train_step(*whole, b.tokens, b.targets, options).loss);
    }
    const float loss = result.loss;
    losses.push_back(loss);
    recent += loss;
    recent_norm += result.grad_norm;
    if (result.grad_scale < 1.0f) ++clipped;
    ++recent_n;
    const bool last = step + 1 == total || trained_s >= limit_s;
    const bool eval = (step + 1) % f.eval_every == 0 || last;
    if ((step + 1) % f.log_every == 0 || eval || step == 0) {
      const double val = eval ? validation_loss(pipe, corpus, f) : NAN;
      curve.push_back({step + 1, trained_s, recent / recent_n, val});
      char norm[32] = "-";  // the mean global gradient norm before clipping
      if (f.clip_norm > 0) std::snprintf(norm, sizeof norm, "%.3f", recent_norm / recent_n);
      if (eval) {
        std::printf("  %6d  %8.1f  %10.4f  %10.4f  %9.2e  %9s\n", step + 1, trained_s, recent / recent_n, val,
                    static_cast<double>(options.lr), norm);
      } else {
        std::printf("  %6d  %8.1f  %10.4f  %10s  %9.2e  %9s\n", step + 1, trained_s, recent / recent_n, "",
                    static_cast<double>(options.lr), norm);
      }
      std::fflush(stdout);
      recent = 0;
      recent_norm = 0;
      recent_n = 0;
    }
  }
  const double final_val = curve.empty() ? NAN : curve.back().val;
  std::printf("steps: %d in %.1f s of training, %.2f steps/s, %.0f characters/s", step, trained_s,
              step / trained_s, step * static_cast<double>(f.batch) * f.seq_len / trained_s);
  if (f.clip_norm > 0) std::printf("; %d of %d steps clipped to norm %g", clipped, step, f.clip_norm);
  std::printf("\n");
  std::printf("stage times per micro-batch (forward + backward), measured beside the plan's:\n%s",
              troupe::actors::format_stage_time_report(
                  troupe::actors::stage_time_report(as_report_plan(plan), clock.measure()))
                  .c_str());
  if (f.sample > 0) {
    std::string prompt;
    const std::string text = generate(pipe, corpus, f, prompt);
    std::printf("sample (prompt: the first %d characters of the held-out text):\n%s[%s]\n", f.seq_len, prompt.c_str(),
                text.c_str());
  }
  std::printf("result: validation loss %.4f nats/char after %d steps, %.1f s of training (target 1.8: %s)\n",
              final_val, step, trained_s, final_val <= 1.8 ? "reached" : "not reached");
  int status = 0;
  if (!single.empty()) {
    double worst = 0;
    const std::size_t n = std::min(single.size(), losses.size());
    for (std::size_t i = 0; i < n; ++i) worst = std::max(worst, std::abs(static_cast<double>(losses[i]) - single[i]));
    const bool ok = n == single.size() && worst <= 1e-4;
    std::printf("check: %zu steps against the unsplit model in one process, largest loss difference %.2e "
                "(tolerance 1e-4): %s\n",
                n, worst, ok ? "OK" : "MISMATCH");
    if (!ok) status = 1;
  }
  for (const auto& h : pipe.stages) troupe::kill(h);
  for (const auto& h : pipe.shards) troupe::kill(h);
  return status;
}

// Local mode with no GPUs declared: declare kDefaultGpus, so the planner has
// GPUs to plan over.
void declare_local_gpus(int argc, char** argv) {
  const char* address = std::getenv("TROUPE_ADDRESS");
  const char* declared = std::getenv("TROUPE_GPUS");
  if ((address && *address) || (declared && *declared)) return;
  for (int i = 1; i < argc; ++i) {
    if (std::strncmp(argv[i], "--troupe-address=", 17) == 0 || std::strncmp(argv[i], "--troupe-gpus=", 14) == 0) return;
  }
  ::setenv("TROUPE_GPUS", kDefaultGpus, 1);
}

}  // namespace

int main(int argc, char** argv) {
  declare_local_gpus(argc, argv);
  try {
    troupe::init(argc, argv);  // actor hosts of a cluster never return from here
  } catch (const troupe::Error& e) {
    std::cerr << "gpt_kjv: " << e.message() << '\n';
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
  } catch (const TextError& e) {
    std::cerr << "gpt_kjv: " << e.what() << '\n';
    status = 2;
  } catch (const std::exception& e) {
    std::cerr << "gpt_kjv: " << e.what() << '\n';
  }
  troupe::shutdown();
  return status;
}
