// TROUPE_TEST_LABELS: slow
// Version 2 of the pipeline planner beyond the shared cases' envelope (up to
// 16 GPUs in up to 3 classes, up to 50 layers): 5 to 16 GPU classes with the
// 50-layer gpt-30b and the 177-layer resnet50. Seconds each (about 15 s in
// all at -O2), hence "slow"; the times are printed for docs/planner.md.
#include "troupe/scheduler/planner_v2.hpp"

#include <gtest/gtest.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

namespace troupe::scheduler {
namespace {

namespace fs = std::filesystem;

const fs::path kData = fs::path(TROUPE_SOURCE_DIR) / "tests" / "scheduler" / "data" / "planner";

// Beyond the cases' envelope: more GPU classes. The search either answers
// exactly or says the tables are too large; it never returns a worse plan.
TEST(PlannerV2Speed, MoreGpuClassesAnswerExactlyOrSayTheSearchIsTooLarge) {
  struct Shape {
    const char* label;
    std::vector<std::vector<int>> nodes;  // per node: GPU counts per type (H100, A100-40GB, V100, T4, L4, RTX4090)
  };
  const ClusterGpu types[] = {{"H100-80GB", 700, 80}, {"A100-40GB", 300, 40}, {"V100-32GB", 110, 32},
                              {"T4-16GB", 60, 16},    {"L4-24GB", 120, 24},   {"RTX4090-24GB", 160, 24}};
  const std::vector<Shape> shapes{
      {"16 GPUs, 5 classes on 3 nodes", {{4, 4}, {4, 0, 0, 2}, {0, 0, 0, 0, 2}}},
      {"16 GPUs, 6 classes on 6 nodes", {{3}, {0, 3}, {0, 0, 3}, {0, 0, 0, 3}, {0, 0, 0, 0, 2}, {0, 0, 0, 0, 0, 2}}},
      {"16 GPUs, 8 classes on 4 nodes", {{2, 2}, {0, 0, 2, 2}, {0, 0, 0, 0, 2, 2}, {2, 2}}},
      {"16 GPUs, 16 classes on 4 nodes", {}},
  };
  for (const char* model_name : {"gpt-30b", "resnet50"}) {
    const ModelProfile model = load_model(kData / "models-v2" / (std::string(model_name) + ".json"));
    for (const Shape& shape : shapes) {
      SCOPED_TRACE(std::string(model_name) + " on " + shape.label);
      ClusterSpec cluster{shape.label, 12.5, {}};
      for (std::size_t n = 0; n < shape.nodes.size(); ++n) {
        ClusterNode node{"n" + std::to_string(n), 300.0, {}};
        for (std::size_t t = 0; t < shape.nodes[n].size(); ++t) {
          for (int g = 0; g < shape.nodes[n][t]; ++g) node.gpus.push_back(types[t]);
        }
        cluster.nodes.push_back(node);
      }
      if (shape.nodes.empty()) {  // every GPU its own class: tflops differ slightly
        for (int n = 0; n < 4; ++n) {
          ClusterNode node{"n" + std::to_string(n), 300.0, {}};
          for (int g = 0; g < 4; ++g) node.gpus.push_back({"X", 100.0 + 10 * (4 * n + g), 80});
          cluster.nodes.push_back(node);
        }
      }
      const auto start = std::chrono::steady_clock::now();
      const PlanResultV2 result = plan_pipeline_v2(model, cluster);
      const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      std::printf("  %-9s on %-32s %2zu classes %9.1f ms %9.2f MB  %s %.3f ms, %.2fx version 1\n", model_name,
                  shape.label, result.gpu_classes, seconds * 1e3, static_cast<double>(result.table_bytes) / 1e6,
                  result.feasible() ? "bottleneck" : result.reason.c_str(), result.plan.bottleneck_s * 1e3,
                  result.speedup_over_v1());
      if (result.feasible()) {
        EXPECT_TRUE(evaluate_v2(model, cluster, result.plan, 32).valid);
      } else {
        EXPECT_FALSE(result.reason.empty());
      }
    }
  }
}

}  // namespace
}  // namespace troupe::scheduler
