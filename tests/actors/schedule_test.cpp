// The pipeline schedules as pure functions: every op once, dependencies
// respected, no deadlock under per-stage FIFO for random op times, peak
// stash equal to each schedule's bound, and simulated batch times at each
// schedule's theoretical one.
#include "troupe/actors/schedule.hpp"

#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <algorithm>
#include <map>
#include <random>
#include <set>
#include <string>
#include <tuple>
#include <vector>

#include "troupe/runtime/error.hpp"

namespace {

using troupe::actors::PipelineOp;
using troupe::actors::Schedule;
using Kind = PipelineOp::Kind;

struct Shape {
  Schedule schedule;
  int stages;
  int micro_batches;
  int v;
};

std::string describe(const Shape& s) {
  return std::string(to_string(s.schedule)) + " S=" + std::to_string(s.stages) + " m=" +
         std::to_string(s.micro_batches) + " v=" + std::to_string(s.v);
}

// Every shape the tests sweep.
std::vector<Shape> shapes() {
  std::vector<Shape> out;
  for (int S : {1, 2, 3, 4, 7}) {
    for (int m : {1, 2, 3, 4, 5, 8, 12, 16}) {
      out.push_back({Schedule::gpipe, S, m, 1});
      out.push_back({Schedule::one_f_one_b, S, m, 1});
      out.push_back({Schedule::zero_bubble_h1, S, m, 1});
      if (m % S == 0) {
        for (int v : {1, 2, 3}) out.push_back({Schedule::interleaved_1f1b, S, m, v});
      }
    }
  }
  return out;
}

TEST(PipelineSchedules, EveryOpRunsExactlyOnceOnItsStage) {
  for (const Shape& s : shapes()) {
    SCOPED_TRACE(describe(s));
    const auto orders = troupe::actors::schedule_orders(s.schedule, s.stages, s.micro_batches, s.v);
    ASSERT_EQ(static_cast<int>(orders.size()), s.stages);
    const bool split = troupe::actors::splits_backward(s.schedule);
    for (int k = 0; k < s.stages; ++k) {
      EXPECT_EQ(orders[k], troupe::actors::schedule_order(s.schedule, k, s.stages, s.micro_batches, s.v));
      std::map<std::tuple<int, int, int>, int> seen;
      for (const PipelineOp& op : orders[k]) {
        ASSERT_LT(op.chunk, s.v);
        ASSERT_LT(op.micro_batch, s.micro_batches);
        if (split) {
          ASSERT_NE(op.kind, Kind::backward);
        } else {
          ASSERT_TRUE(op.kind == Kind::forward || op.kind == Kind::backward);
        }
        const std::tuple<int, int, int> key{static_cast<int>(op.kind), op.chunk, op.micro_batch};
        EXPECT_EQ(seen[key]++, 0);
      }
      const std::size_t kinds = split ? 3 : 2;
      EXPECT_EQ(seen.size(), kinds * s.micro_batches * s.v);
      EXPECT_EQ(orders[k].size(), kinds * s.micro_batches * s.v);
    }
  }
}

// Runs the orders under random op times and checks each op started after
// the ops it needs had finished, in its stage's order, with no deadlock.
TEST(PipelineSchedules, NoDeadlockAndDependenciesHoldUnderRandomStageTimes) {
  std::mt19937 random(20261203);
  for (const Shape& s : shapes()) {
    SCOPED_TRACE(describe(s));
    const auto orders = troupe::actors::schedule_orders(s.schedule, s.stages, s.micro_batches, s.v);
    for (int trial = 0; trial < 8; ++trial) {
      std::uniform_real_distribution<double> speed(0.2, 5.0);
      std::vector<double> stage_speed(s.stages);
      for (double& x : stage_speed) x = speed(random);
      std::map<std::tuple<int, int, int, int>, double> took;  // kind, stage, chunk, micro -> duration
      const auto run = troupe::actors::simulate_schedule(
          orders, s.micro_batches, s.v, [&](const PipelineOp& op, int stage) {
            std::uniform_real_distribution<double> jitter(0.5, 2.0);
            const double d = stage_speed[stage] * jitter(random);
            took[{static_cast<int>(op.kind), stage, op.chunk, op.micro_batch}] = d;
            return d;
          });
      ASSERT_FALSE(run.deadlocked);
      // Finish times by (kind, virtual stage, micro-batch), then every
      // dependency checked against start = finish - duration.
      std::map<std::tuple<int, int, int>, std::pair<double, double>> when;  // start, finish
      for (int k = 0; k < s.stages; ++k) {
        double previous = 0;
        for (std::size_t j = 0; j < orders[k].size(); ++j) {
          const PipelineOp& op = orders[k][j];
          const double finish = run.finish[k][j];
          const double start = finish - took[{static_cast<int>(op.kind), k, op.chunk, op.micro_batch}];
          EXPECT_GE(start, previous - 1e-9) << "stage " << k << " op " << j << " overlaps the one before";
          previous = finish;
          const int g = op.chunk * s.stages + k;
          const int kind = op.kind == Kind::backward_input ? static_cast<int>(Kind::backward) : static_cast<int>(op.kind);
          when[{kind, g, op.micro_batch}] = {start, finish};
        }
      }
      const int G = s.stages * s.v;
      const int B = static_cast<int>(Kind::backward), F = static_cast<int>(Kind::forward),
                W = static_cast<int>(Kind::backward_weight);
      for (int g = 0; g < G; ++g) {
        for (int i = 0; i < s.micro_batches; ++i) {
          const auto f = when.at({F, g, i});
          const auto b = when.at({B, g, i});
          if (g > 0) {
            EXPECT_GE(f.first, when.at({F, g - 1, i}).second - 1e-9);
          }
          EXPECT_GE(b.first, f.second - 1e-9);
          if (g + 1 < G) {
            EXPECT_GE(b.first, when.at({B, g + 1, i}).second - 1e-9);
          }
          if (troupe::actors::splits_backward(s.schedule)) {
            EXPECT_GE(when.at({W, g, i}).first, b.second - 1e-9);
          }
        }
      }
    }
  }
}

TEST(PipelineSchedules, PeakStashEqualsEachSchedulesBound) {
  for (const Shape& s : shapes()) {
    SCOPED_TRACE(describe(s));
    const auto orders = troupe::actors::schedule_orders(s.schedule, s.stages, s.micro_batches, s.v);
    for (int k = 0; k < s.stages; ++k) {
      EXPECT_EQ(troupe::actors::peak_stashed(orders[k]),
                troupe::actors::peak_stash_bound(s.schedule, k, s.stages, s.micro_batches, s.v))
          << "stage " << k;
      if (troupe::actors::splits_backward(s.schedule)) {
        EXPECT_LE(troupe::actors::peak_deferred_weights(orders[k]), std::min(s.stages, s.micro_batches));
      }
    }
  }
  // The bounds themselves: 1F1B and ZB-H1 hold S-k, GPipe all m.
  EXPECT_EQ(troupe::actors::peak_stash_bound(Schedule::one_f_one_b, 0, 4, 8), 4);
  EXPECT_EQ(troupe::actors::peak_stash_bound(Schedule::zero_bubble_h1, 1, 4, 8), 3);
  EXPECT_EQ(troupe::actors::peak_stash_bound(Schedule::gpipe, 3, 4, 8), 8);
  EXPECT_EQ(troupe::actors::peak_stash_bound(Schedule::interleaved_1f1b, 0, 4, 8, 2), 11);
}

// With equal op times the simulated batch takes each schedule's
// theoretical time: interleaving divides the bubble by v, ZB-H1 leaves about
// a third of 1F1B's.
TEST(PipelineSchedules, SimulatedTimesMatchTheTheoreticalOnes) {
  const bool verbose = std::getenv("PIPELINE_TEST_VERBOSE") != nullptr;
  for (int S : {2, 4, 8}) {
    for (int m : {8, 16, 32}) {
      for (const auto& [schedule, v] : std::vector<std::pair<Schedule, int>>{{Schedule::gpipe, 1},
                                                                             {Schedule::one_f_one_b, 1},
                                                                             {Schedule::interleaved_1f1b, 2},
                                                                             {Schedule::interleaved_1f1b, 4},
                                                                             {Schedule::zero_bubble_h1, 1}}) {
        if (m % S != 0 && schedule == Schedule::interleaved_1f1b) continue;
        SCOPED_TRACE(describe({schedule, S, m, v}));
        const bool split = troupe::actors::splits_backward(schedule);
        // Per stage: forward 1, backward 2 (BI 1 + W 1); a chunk takes 1/v.
        const auto run = troupe::actors::simulate_schedule(
            troupe::actors::schedule_orders(schedule, S, m, v), m, v, [&](const PipelineOp& op, int) {
              const double whole = op.kind == Kind::backward ? 2.0 : 1.0;
              return whole / v;
            });
        ASSERT_FALSE(run.deadlocked);
        const double theory = troupe::actors::theoretical_batch_time(schedule, S, m, v, 1.0, 1.0, 1.0);
        const double bubble = 1.0 - 3.0 * m / run.makespan;
        if (verbose) {
          std::printf("%-18s S=%d m=%2d v=%d simulated %6.2f theory %6.2f bubble %.3f\n",
                      std::string(to_string(schedule)).c_str(), S, m, v, run.makespan, theory, bubble);
        }
        EXPECT_NEAR(run.makespan, theory, 1e-9);
        if (split) {
          // A third of 1F1B's bubble.
          EXPECT_NEAR(run.makespan - 3.0 * m, (3.0 * (S - 1)) / 3.0, 1e-9);
        }
      }
    }
  }
}

// Replicated stages: replica r of stage k runs the subsequence of the
// stage's order for micro-batches i = r mod d_k. Under random replica
// counts and op times nothing deadlocks, each replica runs its ops one at a
// time in order, every dependency holds, and no replica stashes more than
// its stage's bound.
TEST(PipelineSchedules, ReplicatedStagesNeverDeadlockAndKeepEveryDependency) {
  std::mt19937 random(20261204);
  for (const Shape& s : shapes()) {
    SCOPED_TRACE(describe(s));
    const auto orders = troupe::actors::schedule_orders(s.schedule, s.stages, s.micro_batches, s.v);
    for (int trial = 0; trial < 4; ++trial) {
      std::uniform_int_distribution<int> count(1, 4);
      std::vector<int> replicas(s.stages);
      for (int& d : replicas) d = count(random);
      std::map<std::tuple<int, int, int, int>, double> took;  // kind, stage, chunk, micro -> duration
      std::map<std::tuple<int, int, int, int>, int> ran_on;   // ... -> replica
      const auto run = troupe::actors::simulate_replicated_schedule(
          orders, s.micro_batches, s.v, replicas, [&](const PipelineOp& op, int stage, int replica) {
            std::uniform_real_distribution<double> time(0.2, 5.0);
            const double d = time(random) * replicas[stage];
            took[{static_cast<int>(op.kind), stage, op.chunk, op.micro_batch}] = d;
            ran_on[{static_cast<int>(op.kind), stage, op.chunk, op.micro_batch}] = replica;
            return d;
          });
      ASSERT_FALSE(run.deadlocked);
      std::map<std::tuple<int, int, int>, std::pair<double, double>> when;  // kind, g, micro -> start, finish
      for (int k = 0; k < s.stages; ++k) {
        EXPECT_LE(run.peak_stashed[k], troupe::actors::peak_stash_bound(s.schedule, k, s.stages, s.micro_batches, s.v));
        std::vector<double> previous(replicas[k], 0.0);
        for (int r = 0; r < replicas[k]; ++r) {
          EXPECT_EQ(troupe::actors::replica_order(orders[k], replicas[k], r).size(),
                    static_cast<std::size_t>(std::count_if(orders[k].begin(), orders[k].end(), [&](const PipelineOp& op) {
                      return op.micro_batch % replicas[k] == r;
                    })));
        }
        for (std::size_t j = 0; j < orders[k].size(); ++j) {
          const PipelineOp& op = orders[k][j];
          const std::tuple<int, int, int, int> key{static_cast<int>(op.kind), k, op.chunk, op.micro_batch};
          const int r = ran_on.at(key);
          EXPECT_EQ(r, op.micro_batch % replicas[k]);
          const double finish = run.finish[k][j];
          const double start = finish - took.at(key);
          EXPECT_GE(start, previous[r] - 1e-9) << "stage " << k << " replica " << r << " op " << j;
          previous[r] = finish;
          const int kind = op.kind == Kind::backward_input ? static_cast<int>(Kind::backward) : static_cast<int>(op.kind);
          when[{kind, op.chunk * s.stages + k, op.micro_batch}] = {start, finish};
        }
      }
      const int G = s.stages * s.v;
      const int B = static_cast<int>(Kind::backward), F = static_cast<int>(Kind::forward),
                W = static_cast<int>(Kind::backward_weight);
      for (int g = 0; g < G; ++g) {
        for (int i = 0; i < s.micro_batches; ++i) {
          const auto f = when.at({F, g, i});
          const auto b = when.at({B, g, i});
          if (g > 0) EXPECT_GE(f.first, when.at({F, g - 1, i}).second - 1e-9);
          EXPECT_GE(b.first, f.second - 1e-9);
          if (g + 1 < G) EXPECT_GE(b.first, when.at({B, g + 1, i}).second - 1e-9);
          if (troupe::actors::splits_backward(s.schedule)) EXPECT_GE(when.at({W, g, i}).first, b.second - 1e-9);
        }
      }
    }
  }
}

// What replicating a slow stage buys: S = 4, stage 1 takes twice as long
// as the others per op. Unreplicated it sets the pace; on two replicas
// (each still twice as slow) the pipeline gets most of the way to the
// balanced one. PIPELINE_TEST_VERBOSE=1 prints the figures.
TEST(PipelineSchedules, ASlowStageOnTwoReplicasRunsNearTheBalancedPipelinesTime) {
  const bool verbose = std::getenv("PIPELINE_TEST_VERBOSE") != nullptr;
  constexpr int S = 4;
  for (const int m : {8, 16, 32}) {
    for (const Schedule schedule : {Schedule::gpipe, Schedule::one_f_one_b, Schedule::zero_bubble_h1}) {
      SCOPED_TRACE(describe({schedule, S, m, 1}));
      const auto orders = troupe::actors::schedule_orders(schedule, S, m);
      // Forward 1, backward 2 (BI 1 + W 1), times 2 on stage 1 when slow.
      const auto time = [&](bool slow) {
        return [slow](const PipelineOp& op, int stage, int) {
          const double base = op.kind == Kind::backward ? 2.0 : 1.0;
          return stage == 1 && slow ? 2 * base : base;
        };
      };
      const double balanced = troupe::actors::simulate_replicated_schedule(orders, m, 1, {1, 1, 1, 1}, time(false)).makespan;
      const double slow = troupe::actors::simulate_replicated_schedule(orders, m, 1, {1, 1, 1, 1}, time(true)).makespan;
      const auto replicated = troupe::actors::simulate_replicated_schedule(orders, m, 1, {1, 2, 1, 1}, time(true));
      ASSERT_FALSE(replicated.deadlocked);
      if (verbose) {
        std::printf("%-6s S=%d m=%2d balanced %6.1f slow stage %6.1f slow stage x2 replicas %6.1f (%.2f of balanced)\n",
                    std::string(to_string(schedule)).c_str(), S, m, balanced, slow, replicated.makespan,
                    balanced / replicated.makespan);
      }
      EXPECT_LT(replicated.makespan, slow);
      EXPECT_GE(replicated.makespan, balanced - 1e-9);
    }
  }
}

TEST(PipelineSchedules, NamesRoundTripAndBadShapesAreRejected) {
  for (const Schedule s : {Schedule::gpipe, Schedule::one_f_one_b, Schedule::interleaved_1f1b,
                           Schedule::zero_bubble_h1}) {
    EXPECT_EQ(troupe::actors::parse_schedule(to_string(s)), s);
  }
  EXPECT_EQ(troupe::actors::parse_schedule("zero_bubble_h1"), Schedule::zero_bubble_h1);
  EXPECT_THROW(troupe::actors::schedule_order(Schedule::interleaved_1f1b, 0, 4, 6, 2), troupe::Error);
  EXPECT_THROW(troupe::actors::schedule_order(Schedule::one_f_one_b, 0, 4, 8, 2), troupe::Error);
  EXPECT_THROW(troupe::actors::schedule_order(Schedule::zero_bubble_h1, 4, 4, 8), troupe::Error);
  const auto order = troupe::actors::schedule_order(Schedule::one_f_one_b, 0, 2, 4);
  EXPECT_THROW((void)troupe::actors::replica_order(order, 2, 2), troupe::Error);
  EXPECT_THROW((void)troupe::actors::simulate_replicated_schedule(
                   troupe::actors::schedule_orders(Schedule::gpipe, 2, 4), 4, 1, {1},
                   [](const PipelineOp&, int, int) { return 1.0; }),
               troupe::Error);
}

}  // namespace
