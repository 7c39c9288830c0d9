// Pipeline schedules and their simulator; see schedule.hpp.
#include "troupe/actors/schedule.hpp"

#include <algorithm>
#include <deque>
#include <limits>
#include <string>

#include "troupe/runtime/error.hpp"

namespace troupe::actors {

namespace {

[[noreturn]] void fail(const std::string& where, const std::string& what) {
  throw_error(Errc::invalid_argument, where + ": " + what);
}

void check_shape(const char* where, Schedule schedule, int stage, int stages, int micro_batches, int v) {
  if (stages < 1 || micro_batches < 1 || stage < 0 || stage >= stages || v < 1) {
    fail(where, "want stages >= 1, micro_batches >= 1, virtual_stages >= 1 and 0 <= stage < stages; got stage " +
                    std::to_string(stage) + " of " + std::to_string(stages) + ", " + std::to_string(micro_batches) +
                    " micro-batches, " + std::to_string(v) + " virtual stages");
  }
  if (schedule != Schedule::interleaved_1f1b && v != 1) {
    fail(where, std::string(to_string(schedule)) + " runs one chunk per stage; got " + std::to_string(v) +
                    " virtual stages (use interleaved-1f1b)");
  }
  if (schedule == Schedule::interleaved_1f1b && micro_batches % stages != 0) {
    fail(where, "interleaved-1f1b needs the micro-batches (" + std::to_string(micro_batches) +
                    ") to be a multiple of the stages (" + std::to_string(stages) + ")");
  }
}

int interleaved_warmup(int stage, int stages, int micro_batches, int v) {
  const int total = micro_batches * v;
  if (micro_batches == stages) return total;  // Megatron: all forwards first when m == S
  return std::min((stages - stage - 1) * 2 + (v - 1) * stages, total);
}

// ZB-H1 by list scheduling with unit op times: each stage, when free, runs
// the oldest deferred W if S of them wait, else the oldest ready BI, else
// the next forward while fewer than min(S-k, m) micro-batches wait for
// their BI (1F1B's activation memory), else the oldest deferred W. With
// equal times this reaches the ZB-H1 bound, 3m + S - 1 units, for every
// shape the tests sweep.
// The ops' order on each stage is the schedule; it respects every
// dependency (each op ran after them in this run), so it runs under any op
// times without deadlock.
std::vector<std::vector<PipelineOp>> zero_bubble_h1_orders(int stages, int m) {
  using Kind = PipelineOp::Kind;
  constexpr int kNever = std::numeric_limits<int>::max();
  const int S = stages;
  std::vector<std::vector<int>> f_done(S, std::vector<int>(m, kNever));
  std::vector<std::vector<int>> bi_done(S, std::vector<int>(m, kNever));
  std::vector<int> next_f(S, 0), next_bi(S, 0), stashed(S, 0), free_at(S, 0);
  std::vector<std::deque<int>> pending_w(S);
  std::vector<std::vector<PipelineOp>> orders(S);
  std::size_t left = static_cast<std::size_t>(3) * S * m;
  for (int t = 0; left > 0; ++t) {
    for (int k = 0; k < S; ++k) {
      if (free_at[k] > t) continue;
      const int cap = std::min(S - k, m);  // stashed from F until BI
      const int b = next_bi[k];
      const int f = next_f[k];
      const bool w_due = static_cast<int>(pending_w[k].size()) >= S;  // at most S W's deferred
      if (w_due) {
        orders[k].push_back({Kind::backward_weight, pending_w[k].front()});
        pending_w[k].pop_front();
      } else if (b < f && f_done[k][b] <= t && (k == S - 1 || bi_done[k + 1][b] <= t)) {
        orders[k].push_back({Kind::backward_input, b});
        bi_done[k][b] = t + 1;
        pending_w[k].push_back(b);
        ++next_bi[k];
        --stashed[k];
      } else if (f < m && stashed[k] < cap && (k == 0 || f_done[k - 1][f] <= t)) {
        orders[k].push_back({Kind::forward, f});
        f_done[k][f] = t + 1;
        ++stashed[k];
        ++next_f[k];
      } else if (!pending_w[k].empty()) {
        orders[k].push_back({Kind::backward_weight, pending_w[k].front()});
        pending_w[k].pop_front();
      } else {
        continue;
      }
      free_at[k] = t + 1;
      --left;
    }
  }
  return orders;
}

}  // namespace

std::string_view to_string(Schedule schedule) noexcept {
  switch (schedule) {
    case Schedule::gpipe: return "gpipe";
    case Schedule::one_f_one_b: return "1f1b";
    case Schedule::interleaved_1f1b: return "interleaved-1f1b";
    case Schedule::zero_bubble_h1: return "zb-h1";
  }
  return "?";
}

Schedule parse_schedule(std::string_view name) {
  if (name == "gpipe") return Schedule::gpipe;
  if (name == "1f1b" || name == "one_f_one_b") return Schedule::one_f_one_b;
  if (name == "interleaved-1f1b" || name == "interleaved_1f1b") return Schedule::interleaved_1f1b;
  if (name == "zb-h1" || name == "zero_bubble_h1" || name == "zbh1") return Schedule::zero_bubble_h1;
  throw_error(Errc::invalid_argument,
              "unknown schedule '" + std::string(name) + "' (gpipe, 1f1b, interleaved-1f1b or zb-h1)");
}

bool splits_backward(Schedule schedule) noexcept { return schedule == Schedule::zero_bubble_h1; }

std::vector<PipelineOp> schedule_order(Schedule schedule, int stage, int stages, int micro_batches,
                                       int virtual_stages) {
  check_shape("schedule_order", schedule, stage, stages, micro_batches, virtual_stages);
  using Kind = PipelineOp::Kind;
  const int m = micro_batches;
  std::vector<PipelineOp> ops;
  switch (schedule) {
    case Schedule::gpipe:
      for (int i = 0; i < m; ++i) ops.push_back({Kind::forward, i});
      for (int i = 0; i < m; ++i) ops.push_back({Kind::backward, i});
      return ops;
    case Schedule::one_f_one_b: {
      const int warmup = std::min(stages - stage - 1, m);
      for (int i = 0; i < warmup; ++i) ops.push_back({Kind::forward, i});
      for (int i = 0; i + warmup < m; ++i) {
        ops.push_back({Kind::forward, i + warmup});
        ops.push_back({Kind::backward, i});
      }
      for (int i = m - warmup; i < m; ++i) ops.push_back({Kind::backward, i});
      return ops;
    }
    case Schedule::interleaved_1f1b: {
      const int S = stages, v = virtual_stages, total = m * v;
      // The j-th forward (backward) of the stage: groups of S micro-batches
      // per chunk, chunks ascending for forwards and descending for backwards.
      const auto micro = [&](int j) { return (j / (S * v)) * S + j % S; };
      const auto forward = [&](int j) { return PipelineOp{Kind::forward, micro(j), (j / S) % v}; };
      const auto backward = [&](int j) { return PipelineOp{Kind::backward, micro(j), v - 1 - (j / S) % v}; };
      const int warmup = interleaved_warmup(stage, S, m, v);
      for (int j = 0; j < warmup; ++j) ops.push_back(forward(j));
      for (int j = 0; j + warmup < total; ++j) {
        ops.push_back(forward(j + warmup));
        ops.push_back(backward(j));
      }
      for (int j = total - warmup; j < total; ++j) ops.push_back(backward(j));
      return ops;
    }
    case Schedule::zero_bubble_h1:
      return zero_bubble_h1_orders(stages, m)[static_cast<std::size_t>(stage)];
  }
  fail("schedule_order", "unknown schedule " + std::to_string(static_cast<int>(schedule)));
}

std::vector<std::vector<PipelineOp>> schedule_orders(Schedule schedule, int stages, int micro_batches,
                                                     int virtual_stages) {
  check_shape("schedule_orders", schedule, 0, stages, micro_batches, virtual_stages);
  if (schedule == Schedule::zero_bubble_h1) return zero_bubble_h1_orders(stages, micro_batches);
  std::vector<std::vector<PipelineOp>> orders;
  for (int k = 0; k < stages; ++k) orders.push_back(schedule_order(schedule, k, stages, micro_batches, virtual_stages));
  return orders;
}

int peak_stash_bound(Schedule schedule, int stage, int stages, int micro_batches, int virtual_stages) {
  check_shape("peak_stash_bound", schedule, stage, stages, micro_batches, virtual_stages);
  switch (schedule) {
    case Schedule::gpipe: return micro_batches;
    case Schedule::one_f_one_b:
    case Schedule::zero_bubble_h1: return std::min(stages - stage, micro_batches);
    case Schedule::interleaved_1f1b: {
      const int total = micro_batches * virtual_stages;
      return std::min(interleaved_warmup(stage, stages, micro_batches, virtual_stages) + 1, total);
    }
  }
  return micro_batches;
}

int peak_stashed(const std::vector<PipelineOp>& order) {
  using Kind = PipelineOp::Kind;
  int now = 0, peak = 0;
  for (const PipelineOp& op : order) {
    if (op.kind == Kind::forward) peak = std::max(peak, ++now);
    if (op.kind == Kind::backward || op.kind == Kind::backward_input) --now;
  }
  return peak;
}

int peak_deferred_weights(const std::vector<PipelineOp>& order) {
  using Kind = PipelineOp::Kind;
  int now = 0, peak = 0;
  for (const PipelineOp& op : order) {
    if (op.kind == Kind::backward_input) peak = std::max(peak, ++now);
    if (op.kind == Kind::backward_weight) --now;
  }
  return peak;
}

std::vector<PipelineOp> replica_order(const std::vector<PipelineOp>& order, int replicas, int replica) {
  if (replicas < 1 || replica < 0 || replica >= replicas) {
    fail("replica_order", "replica " + std::to_string(replica) + " of " + std::to_string(replicas));
  }
  std::vector<PipelineOp> out;
  for (const PipelineOp& op : order) {
    if (op.micro_batch % replicas == replica) out.push_back(op);
  }
  return out;
}

SimulatedRun simulate_schedule(const std::vector<std::vector<PipelineOp>>& orders, int micro_batches,
                               int virtual_stages, const std::function<double(const PipelineOp&, int)>& duration) {
  return simulate_replicated_schedule(orders, micro_batches, virtual_stages, std::vector<int>(orders.size(), 1),
                                      [&](const PipelineOp& op, int stage, int) { return duration(op, stage); });
}

SimulatedRun simulate_replicated_schedule(const std::vector<std::vector<PipelineOp>>& orders, int micro_batches,
                                          int virtual_stages, const std::vector<int>& replicas,
                                          const std::function<double(const PipelineOp&, int, int)>& duration) {
  using Kind = PipelineOp::Kind;
  const int S = static_cast<int>(orders.size());
  const int v = virtual_stages;
  const int G = S * v;
  const int m = micro_batches;
  if (S < 1 || m < 1 || v < 1) fail("simulate_schedule", "want stages, micro_batches and virtual_stages >= 1");
  if (replicas.size() != orders.size()) {
    fail("simulate_schedule", std::to_string(replicas.size()) + " replica counts for " + std::to_string(S) + " stages");
  }
  constexpr double kUnknown = -1;
  // Finish times per virtual stage and micro-batch: forward, gradient (B or
  // BI: what the previous virtual stage waits for), weight (W).
  std::vector<std::vector<double>> f_done(G, std::vector<double>(m, kUnknown));
  std::vector<std::vector<double>> g_done(G, std::vector<double>(m, kUnknown));
  std::vector<std::vector<double>> w_done(G, std::vector<double>(m, kUnknown));
  SimulatedRun run;
  run.busy.assign(S, 0.0);
  run.peak_stashed.assign(S, 0);
  run.finish.resize(S);
  // One lane per actor (stage k, replica r): the indexes of its ops in orders[k].
  struct Lane {
    int stage = 0;
    int replica = 0;
    std::vector<std::size_t> ops;
    std::size_t next = 0;
    double free_at = 0;
  };
  std::vector<Lane> lanes;
  for (int k = 0; k < S; ++k) {
    if (replicas[k] < 1) fail("simulate_schedule", "stage " + std::to_string(k) + " has no replica");
    run.finish[k].assign(orders[k].size(), kUnknown);
    for (const PipelineOp& op : orders[k]) {
      if (op.micro_batch < 0 || op.micro_batch >= m || op.chunk < 0 || op.chunk >= v) {
        fail("simulate_schedule", "stage " + std::to_string(k) + " names micro-batch " +
                                      std::to_string(op.micro_batch) + " chunk " + std::to_string(op.chunk));
      }
    }
    for (int r = 0; r < replicas[k]; ++r) {
      Lane lane{k, r, {}, 0, 0};
      for (std::size_t j = 0; j < orders[k].size(); ++j) {
        if (orders[k][j].micro_batch % replicas[k] == r) lane.ops.push_back(j);
      }
      run.peak_stashed[k] = std::max(run.peak_stashed[k], peak_stashed(replica_order(orders[k], replicas[k], r)));
      lanes.push_back(std::move(lane));
    }
  }
  for (bool progressed = true; progressed;) {
    progressed = false;
    for (Lane& lane : lanes) {
      const int k = lane.stage;
      while (lane.next < lane.ops.size()) {
        const std::size_t j = lane.ops[lane.next];
        const PipelineOp& op = orders[k][j];
        const int g = op.chunk * S + k;
        const int i = op.micro_batch;
        double ready = lane.free_at;
        const auto need = [&](double done) {
          if (done == kUnknown) return false;
          ready = std::max(ready, done);
          return true;
        };
        bool ok = true;
        double* mark = nullptr;
        switch (op.kind) {
          case Kind::forward:
            ok = g == 0 || need(f_done[g - 1][i]);
            mark = &f_done[g][i];
            break;
          case Kind::backward:
          case Kind::backward_input:
            ok = need(f_done[g][i]) && (g == G - 1 || need(g_done[g + 1][i]));
            mark = &g_done[g][i];
            break;
          case Kind::backward_weight:
            ok = need(g_done[g][i]);
            mark = &w_done[g][i];
            break;
        }
        if (!ok) break;
        if (*mark != kUnknown) fail("simulate_schedule", "stage " + std::to_string(k) + " runs an op twice");
        const double d = duration(op, k, lane.replica);
        *mark = ready + d;
        lane.free_at = ready + d;
        run.busy[k] += d;
        run.finish[k][j] = ready + d;
        run.makespan = std::max(run.makespan, ready + d);
        ++lane.next;
        progressed = true;
      }
    }
  }
  for (const Lane& lane : lanes) run.deadlocked = run.deadlocked || lane.next < lane.ops.size();
  return run;
}

double theoretical_batch_time(Schedule schedule, int stages, int micro_batches, int virtual_stages,
                              double t_forward, double t_backward_input, double t_backward_weight) {
  const double per = t_forward + t_backward_input + t_backward_weight;
  const double m = micro_batches, bubble_slots = stages - 1;
  switch (schedule) {
    case Schedule::gpipe:
    case Schedule::one_f_one_b: return (m + bubble_slots) * per;
    case Schedule::interleaved_1f1b: return m * per + bubble_slots * per / virtual_stages;
    case Schedule::zero_bubble_h1:
      return m * per + bubble_slots * std::max(0.0, t_forward + t_backward_input - t_backward_weight);
  }
  return 0;
}

}  // namespace troupe::actors
