// pipeline_serving: printing a plan, placing it (one stage actor per
// bundle, each checked to run where the plan put it) and serving on it.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <memory>
#include <semaphore>
#include <string>
#include <vector>

#include <fmt/format.h>

#include <troupe/actors/plan_placement.hpp>

#include "serving.hpp"

namespace serving {

// ---- output ---------------------------------------------------------------------------------------

std::string us(double seconds) { return fmt::format("{:.2f}", seconds * 1e6); }

void print_stages(const sched::Plan& plan) {
  std::printf("plan: %zu stage%s, bottleneck %s us per request (stage %d), %.0f requests/s on those GPUs\n",
              plan.stages.size(), plan.stages.size() == 1 ? "" : "s", us(plan.bottleneck_s).c_str(),
              plan.bottleneck_stage, plan.throughput());
  std::printf("  STAGE  NODE          GPU              LAYERS   COMPUTE us  COMM us\n");
  for (std::size_t k = 0; k < plan.stages.size(); ++k) {
    const auto& s = plan.stages[k];
    std::printf("  %-5zu  %-12s  %-15s  %-7s  %10s  %7s\n", k, s.node.c_str(),
                fmt::format("{} {}", s.gpu, s.gpu_type).c_str(),
                fmt::format("{}-{}", s.first_layer, s.last_layer).c_str(), us(s.compute_s).c_str(),
                us(s.comm_s).c_str());
  }
}

void print_plan(const Model& model, const sched::ClusterSpec& cluster, const sched::Plan& plan,
                const sched::PlanEvaluation& uniform, const Flags& flags) {
  double params = 0;
  for (const auto& layer : model.profile.layers) params += layer.param_bytes;
  std::printf("pipeline_serving: model %s, %zu layers, %.1f MB of parameters (profile for %lld rows)\n",
              model.profile.name.c_str(), model.profile.layers.size(), params / 1e6,
              static_cast<long long>(model.batch_size));
  std::printf("cluster: %s, %zu GPUs on %zu node%s; links assumed %g GB/s in a node, %g GB/s between nodes\n",
              cluster.name.c_str(), cluster.gpu_count(), cluster.nodes.size(), cluster.nodes.size() == 1 ? "" : "s",
              flags.cluster.empty() ? flags.intra_gbps : cluster.nodes.front().intra_node_gbps,
              cluster.inter_node_gbps);
  print_stages(plan);
  if (uniform.valid && plan.bottleneck_s > 0) {
    std::printf("uniform split over %zu GPUs: bottleneck %s us; the plan is %.2fx as fast\n",
                uniform.plan.stages.size(), us(uniform.plan.bottleneck_s).c_str(),
                uniform.plan.bottleneck_s / plan.bottleneck_s);
  } else if (!uniform.valid) {
    std::printf("uniform split: infeasible (%s)\n", uniform.reason.c_str());
  }
}

Tensor request_input(std::int64_t rows, std::int64_t features, std::uint64_t seed) {
  Tensor out = Tensor::empty({rows, features}, troupe::DType::f32);
  float* data = out.data<float>();
  std::uint64_t state = seed;
  for (std::int64_t i = 0; i < out.numel(); ++i) {
    std::uint64_t z = (state += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    z ^= z >> 31;
    data[i] = static_cast<float>(z >> 40) / static_cast<float>(1ULL << 23) - 1.0f;
  }
  return out;
}

double max_relative_error(const Tensor& got_any, const Tensor& want) {
  const Tensor got = got_any.to(troupe::Device::cpu());
  if (got.shape() != want.shape()) return INFINITY;
  const float* g = got.data<float>();
  const float* w = want.data<float>();
  double diff = 0, scale = 1e-30;
  for (std::int64_t i = 0; i < got.numel(); ++i) {
    diff = std::max(diff, std::abs(static_cast<double>(g[i]) - w[i]));
    scale = std::max(scale, std::abs(static_cast<double>(w[i])));
  }
  return diff / scale;
}

double percentile(std::vector<double> values, double p) {
  std::sort(values.begin(), values.end());
  const std::size_t index = static_cast<std::size_t>(std::ceil(p * static_cast<double>(values.size()))) - 1;
  return values[std::min(index, values.size() - 1)];
}

// ---- placing a plan ---------------------------------------------------------------------------

std::optional<Deployment> deploy(const Flags& flags, const Model& model, const sched::Plan& plan,
                                 const sched::ClusterSpec& cluster, int generation, const std::string& checkpoint_dir,
                                 std::int64_t restore_step) {
  using namespace std::chrono_literals;
  troupe::actors::PlacePlanOptions placing;
  placing.pin_nodes = flags.cluster.empty();  // a cluster file's nodes are not this runtime's
  placing.group_name = generation == 0 ? "pipeline-serving" : fmt::format("pipeline-serving-{}", generation);
  const troupe::actors::PlacedPlan placed = troupe::actors::place_plan(plan, cluster, placing);
  if (!placed.group.ready().wait_for(120s)) {
    std::printf("pipeline_serving: the plan's GPUs are not free: %s\n", placed.group.pending_reason().c_str());
    return std::nullopt;
  }
  Deployment out{plan, cluster, placed.group, {}};
  for (std::size_t k = 0; k < plan.stages.size(); ++k) {
    const auto& s = plan.stages[k];
    StageSpec spec{s.first_layer, {model.layers[static_cast<std::size_t>(s.first_layer)].in}, k + 1 == plan.stages.size(),
                   flags.seed};
    for (int l = s.first_layer; l <= s.last_layer; ++l) spec.widths.push_back(model.layers[static_cast<std::size_t>(l)].out);
    spec.restore_directory = checkpoint_dir;
    spec.restore_step = restore_step;
    troupe::ActorOptions options = placed.stages[k];
    options.name = generation == 0 ? "serving-stage-" + std::to_string(k)
                                   : fmt::format("serving-stage-{}-plan-{}", k, generation);
    out.stages.push_back(troupe::actor<Stage>(options, spec));
  }
  const std::vector<troupe::NodeDescription> nodes = troupe::nodes();
  int misplaced = 0;
  for (std::size_t k = 0; k < out.stages.size(); ++k) {
    const Placement at = out.stages[k].call<&Stage::where>().get(120s);
    std::string gpu_model = "?";
    for (const auto& node : nodes) {
      if (node.name != at.node) continue;
      for (const auto& gpu : node.gpus) {
        if (!at.gpus.empty() && gpu.index == at.gpus.front()) gpu_model = gpu.model;
      }
    }
    const bool as_planned =
        gpu_model == plan.stages[k].gpu_type && (!placing.pin_nodes || at.node == plan.stages[k].node);
    if (!as_planned) ++misplaced;
    std::printf("stage %zu: layers %d-%d on node %s GPU %d %s, math on %s%s\n", k, plan.stages[k].first_layer,
                plan.stages[k].last_layer, at.node.c_str(), at.gpus.empty() ? -1 : at.gpus.front(), gpu_model.c_str(),
                at.device.c_str(), as_planned ? "" : fmt::format("  MISPLACED: planned {} {}", plan.stages[k].node,
                                                                   plan.stages[k].gpu_type).c_str());
  }
  if (misplaced > 0) {
    std::printf("result: MISPLACED, %d stage%s not where the plan put them\n", misplaced, misplaced == 1 ? "" : "s");
    return std::nullopt;
  }
  std::printf("placement: every stage is on its planned %s\n", placing.pin_nodes ? "node and GPU type" : "GPU type");
  return out;
}

troupe::ObjectRef<Tensor> submit_request(const Flags& flags, const Model& model, const Deployment& deployment,
                                         int request, troupe::actors::StageClock* clock) {
  const std::int64_t rows = flags.batch > 0 ? flags.batch : model.batch_size;
  const std::int64_t features = model.layers.front().in;
  const auto& stages = deployment.stages;
  troupe::ObjectRef<Tensor> activation =
      stages[0].call<&Stage::forward>(request_input(rows, features, flags.seed * 1000003ULL + request));
  auto op = clock != nullptr ? clock->record(0, activation) : troupe::actors::StageClock::kNoInput;
  for (std::size_t k = 1; k < stages.size(); ++k) {
    activation = stages[k].call<&Stage::forward>(activation);
    if (clock != nullptr) op = clock->record(k, activation, op);
  }
  return activation;
}

// ---- serving on one plan ----------------------------------------------------------------------

int serve(const Flags& flags, const Model& model, const Deployment& deployment, Checked& checked) {
  using Clock = std::chrono::steady_clock;
  using namespace std::chrono_literals;
  const std::int64_t rows = flags.batch > 0 ? flags.batch : model.batch_size;
  // Every served request's calls are timed per stage (not the warm-up's).
  troupe::actors::StageClock clock(deployment.stages.size());
  (void)submit_request(flags, model, deployment, -1, nullptr).get(120s);  // warm-up: every stage has run once

  // Closed loop: at most `inflight` requests outstanding; each completion
  // (a continuation on the runtime's pool) records its latency and lets the
  // next request in.
  std::printf("serving %d requests of %lld rows, up to %d in flight\n", flags.requests, static_cast<long long>(rows),
              flags.inflight);
  struct Books {
    explicit Books(int inflight, int requests) : slots(inflight), latency_ms(static_cast<std::size_t>(requests)) {}
    std::counting_semaphore<> slots;
    std::vector<double> latency_ms;
  };
  auto books = std::make_shared<Books>(flags.inflight, flags.requests);  // outlives late continuations
  std::vector<troupe::ObjectRef<int>> done;
  const auto start = Clock::now();
  for (int r = 0; r < flags.requests; ++r) {
    // A failed request skips its continuation and frees no slot: look for
    // one while waiting, and let its error out.
    while (!books->slots.try_acquire_for(100ms)) {
      for (const auto& d : done) {
        if (d.is_ready() && d.has_error()) (void)d.get();
      }
    }
    const auto submitted = Clock::now();
    troupe::ObjectRef<Tensor> response = submit_request(flags, model, deployment, r, &clock);
    done.push_back(response.then([books, r, submitted](const Tensor&) {
      books->latency_ms[static_cast<std::size_t>(r)] =
          std::chrono::duration<double, std::milli>(Clock::now() - submitted).count();
      books->slots.release();
      return r;
    }));
    if (r < flags.check) checked.emplace_back(r, response);
  }
  (void)troupe::when_all(done).get(600s);
  const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
  const std::vector<double>& latency_ms = books->latency_ms;

  std::printf("latency p50 %.2f ms, p99 %.2f ms; throughput %.1f requests/s (%.0f rows/s)\n",
              percentile(latency_ms, 0.50), percentile(latency_ms, 0.99), flags.requests / seconds,
              static_cast<double>(flags.requests * rows) / seconds);
  // What each stage took per request (its own time, not its queue) beside
  // what the plan predicted for its GPU; on declared GPUs the math runs on
  // the CPU, so expect ratios well above 1 there.
  std::printf("stage times per request, measured beside the plan's:\n%s",
              troupe::actors::format_stage_time_report(
                  troupe::actors::stage_time_report(deployment.plan, clock.measure()))
                  .c_str());
  return 0;
}

}  // namespace serving
