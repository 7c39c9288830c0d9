// pipeline_custom_stage: a pipeline of the user's own stage class.
//
// residual_stage.hpp defines ResidualStage, residual MLP blocks with layer
// norm (and the head with the loss on the model's last block) written
// against troupe::actors::kernels, not troupe's PipelineStage. It provides
// the stage concept's methods (<troupe/actors/stage.hpp>): forward,
// backward, forward_loss, backward_loss, step, the split backward_input /
// backward_input_loss / backward_weight that zero-bubble schedules need,
// and a chunk argument, so one actor can hold several blocks for
// interleaved 1F1B, and the gradient sync (take_gradients / sum_gradients /
// step_with_gradients) that lets a stage run as several data-parallel
// replicas. StagePipeline<ResidualStage> drives the actors under any
// schedule; this program trains the same model the same batches under
// 1F1B, ZB-H1 and interleaved 1F1B, then with replicated stages (each
// stage k of the 4-stage pipeline as d_k actors, from --replicas; the
// interleaved run's second stage on 2), and checks every loss against the
// model trained unpipelined, whole batches in one object, and that the
// replicas of a stage end bit-identical.
//
//   ./pipeline_custom_stage [--steps N] [--replicas 1,2,1,1] [--troupe-threads=4]
//
// Exit status: 0 when every loss matches to 1e-5 and replicas agree, 1
// otherwise, 2 for a bad flag.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <sstream>
#include <string>
#include <vector>

#include <troupe/troupe.hpp>

#include "residual_stage.hpp"

namespace {

// "1,2,1,1" -> {1, 2, 1, 1}; empty when it is not 4 counts >= 1.
std::vector<int> parse_replicas(const std::string& text) {
  std::vector<int> out;
  std::stringstream in(text);
  std::string item;
  while (std::getline(in, item, ',')) {
    char* end = nullptr;
    const long d = std::strtol(item.c_str(), &end, 10);
    if (item.empty() || *end != '\0' || d < 1 || d > 64) return {};
    out.push_back(static_cast<int>(d));
  }
  return out.size() == 4 ? out : std::vector<int>{};
}

std::string join(const std::vector<int>& counts) {
  std::string out;
  for (const int d : counts) out += (out.empty() ? "" : ",") + std::to_string(d);
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  troupe::init(argc, argv);
  int steps = 6;
  std::vector<int> replicas{1, 2, 1, 1};
  for (int i = 1; i + 1 < argc; ++i) {
    if (std::string(argv[i]) == "--steps") steps = std::atoi(argv[i + 1]);
    if (std::string(argv[i]) == "--replicas") {
      replicas = parse_replicas(argv[i + 1]);
      if (replicas.empty()) {
        std::fprintf(stderr, "--replicas wants 4 counts >= 1 (one per stage), e.g. 1,2,1,1; got '%s'\n", argv[i + 1]);
        troupe::shutdown();
        return 2;
      }
    }
  }
  const residual::ModelSpec spec{.dim = 16, .hidden = 32, .classes = 4, .blocks = 4, .seed = 1, .lr = 0.2f};
  constexpr std::int64_t rows = 64;
  constexpr int micro_batches = 8;
  const std::vector<float> reference = residual::train_unpipelined(spec, steps, rows);
  struct Run {
    troupe::actors::Schedule schedule;
    int stages;  // 4 blocks on 2 stages = 2 chunks each: interleaved
    std::vector<int> replicas;
  };
  using troupe::actors::Schedule;
  double worst = 0;
  double spread = 0;
  std::printf("%-18s %6s %-9s %s\n", "schedule", "stages", "replicas", "losses (unpipelined first)");
  std::printf("%-18s %6s %-9s", "unpipelined", "1", "1");
  for (const float loss : reference) std::printf(" %.6f", loss);
  std::printf("\n");
  for (const Run& run : {Run{Schedule::one_f_one_b, 4, {1, 1, 1, 1}}, Run{Schedule::zero_bubble_h1, 4, {1, 1, 1, 1}},
                         Run{Schedule::interleaved_1f1b, 2, {1, 1}}, Run{Schedule::one_f_one_b, 4, replicas},
                         Run{Schedule::zero_bubble_h1, 4, replicas}, Run{Schedule::gpipe, 4, replicas},
                         Run{Schedule::interleaved_1f1b, 2, {1, 2}}}) {
    const residual::PipelinedRun result =
        residual::train_replicated(spec, run.stages, run.schedule, steps, rows, micro_batches, run.replicas);
    std::printf("%-18s %6d %-9s", std::string(to_string(run.schedule)).c_str(), run.stages, join(run.replicas).c_str());
    for (std::size_t i = 0; i < result.losses.size(); ++i) {
      std::printf(" %.6f", result.losses[i]);
      worst = std::max(worst, static_cast<double>(std::abs(result.losses[i] - reference[i])));
    }
    std::printf("\n");
    spread = std::max(spread, result.replica_spread);
  }
  std::printf("largest difference from the unpipelined losses: %.2e (%s)\n", worst,
              worst <= 1e-5 ? "match" : "MISMATCH");
  std::printf("largest difference between a stage's replicas' parameters: %.2e (%s)\n", spread,
              spread == 0 ? "bit-identical" : "DIVERGED");
  troupe::shutdown();
  return worst <= 1e-5 && spread == 0 ? 0 : 1;
}
