// pipeline_custom_stage: a pipeline of the user's own stage class.
//
// residual_stage.hpp defines ResidualStage, residual MLP blocks with layer
// norm (and the head with the loss on the model's last block) written
// against troupe::actors::kernels, not troupe's PipelineStage. It provides
// the stage concept's methods (<troupe/actors/stage.hpp>): forward,
// backward, forward_loss, backward_loss, step, the split backward_input /
// backward_input_loss / backward_weight that zero-bubble schedules need,
// and a chunk argument, so one actor can hold several blocks for
// interleaved 1F1B. StagePipeline<ResidualStage> drives the actors under
// any schedule; this program trains the same model the same batches under
// 1F1B, ZB-H1 and interleaved 1F1B and checks every loss against the model
// trained unpipelined, whole batches in one object.
//
//   ./pipeline_custom_stage [--steps N] [--troupe-threads=4]
//
// Exit status: 0 when every loss matches to 1e-5, 1 otherwise.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include <troupe/troupe.hpp>

#include "residual_stage.hpp"

int main(int argc, char** argv) {
  troupe::init(argc, argv);
  int steps = 6;
  for (int i = 1; i + 1 < argc; ++i) {
    if (std::string(argv[i]) == "--steps") steps = std::atoi(argv[i + 1]);
  }
  const residual::ModelSpec spec{.dim = 16, .hidden = 32, .classes = 4, .blocks = 4, .seed = 1, .lr = 0.2f};
  constexpr std::int64_t rows = 64;
  constexpr int micro_batches = 8;
  const std::vector<float> reference = residual::train_unpipelined(spec, steps, rows);
  struct Run {
    troupe::actors::Schedule schedule;
    int stages;  // 4 blocks on 2 stages = 2 chunks each: interleaved
  };
  using troupe::actors::Schedule;
  double worst = 0;
  std::printf("%-18s %6s %s\n", "schedule", "stages", "losses (unpipelined first)");
  std::printf("%-18s %6s", "unpipelined", "1");
  for (const float loss : reference) std::printf(" %.6f", loss);
  std::printf("\n");
  for (const Run run : {Run{Schedule::one_f_one_b, 4}, Run{Schedule::zero_bubble_h1, 4},
                        Run{Schedule::interleaved_1f1b, 2}}) {
    const std::vector<float> losses =
        residual::train_pipelined(spec, run.stages, run.schedule, steps, rows, micro_batches);
    std::printf("%-18s %6d", std::string(to_string(run.schedule)).c_str(), run.stages);
    for (std::size_t i = 0; i < losses.size(); ++i) {
      std::printf(" %.6f", losses[i]);
      worst = std::max(worst, static_cast<double>(std::abs(losses[i] - reference[i])));
    }
    std::printf("\n");
  }
  std::printf("largest difference from the unpipelined losses: %.2e (%s)\n", worst,
              worst <= 1e-5 ? "match" : "MISMATCH");
  troupe::shutdown();
  return worst <= 1e-5 ? 0 : 1;
}
