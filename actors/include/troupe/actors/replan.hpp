// Live re-planning: a running pipeline job notices that the cluster changed
// (a node joined, a node was lost), asks the planner for a plan over the
// cluster as it is now, and decides whether to move its stages to it.
//
//   troupe::actors::ClusterWatcher watcher({.interval = 1s});   // polls troupe::nodes()
//   auto seen = watcher.current();
//   ...between requests or batches:
//   if (watcher.current().version != seen.version || a_stage_died) {
//     auto now = watcher.current();
//     auto decision = troupe::actors::decide_replan(model, plan, seen.cluster, now.cluster, a_stage_died);
//     if (decision.adopt) {
//       // drain or fail what is in flight, checkpoint (or take the last one),
//       // kill the old stages, remove their placement group,
//       // place_plan(decision.candidate.plan, now.cluster), restore, resume
//     }
//     seen = now;
//   }
//
// What triggers a re-plan (decide_replan):
// - forced: the current plan no longer fits the cluster (a node it uses is
//   lost, or lost GPUs: scheduler::evaluate says the plan is invalid there),
//   or a stage died (the caller says so). The new plan is adopted whatever
//   it costs; no plan at all is an error the caller reports.
// - better: nodes joined (or changed GPUs) and the current plan still fits;
//   the candidate over the new cluster is adopted only if its bottleneck is
//   at least ReplanPolicy::min_gain lower, since moving costs a drain, a
//   checkpoint and new actors.
// - none: nodes the plan does not use were lost (an optimum over fewer
//   GPUs cannot beat the current plan), or nothing changed.
//
// How a driver learns of membership changes: the runtime does not push node
// events to drivers, so ClusterWatcher polls troupe::nodes() (one control
// request to the head, itself bounded by a 10 s timeout) on its own thread.
// A node is listed until the head declares it DEAD (a SUSPECTED node is still
// a member), so a lost node shows after the head's detection time
// (docs/fault-tolerance.md); a driver whose stage died can wait for that
// with wait_for_change.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "troupe/actors/plan_placement.hpp"
#include "troupe/scheduler/planner.hpp"

namespace troupe::actors {

// What differs between two views of the cluster, by node name.
struct ClusterChange {
  std::vector<std::string> joined;   // nodes only in `after`
  std::vector<std::string> lost;     // nodes only in `before`
  std::vector<std::string> changed;  // nodes in both whose GPU list (types, order) differs

  bool empty() const noexcept { return joined.empty() && lost.empty() && changed.empty(); }
  // "node 3f2a9c1b0d4e joined (2 GPUs: A100-40GB, A100-40GB); node 9a... lost", or "no change".
  std::string describe(const scheduler::ClusterSpec& before, const scheduler::ClusterSpec& after) const;
};

// Pure: compares the nodes of two cluster views by name.
ClusterChange cluster_change(const scheduler::ClusterSpec& before, const scheduler::ClusterSpec& after);

struct ReplanPolicy {
  // Plan again when nodes join, to use them if that pays off.
  bool on_join = true;
  // A re-plan that is not forced is adopted only when the candidate's
  // bottleneck is at most (1 - min_gain) times the current plan's.
  double min_gain = 0.05;
  scheduler::PlannerOptions planner{};
};

enum class ReplanNeed {
  none,    // keep the plan, do not plan again
  better,  // the plan still fits; a plan over the new cluster may be better
  forced,  // the plan cannot run as placed (a node or GPU it uses is gone, a stage died)
};

const char* to_string(ReplanNeed need) noexcept;

// Pure: whether `current` (a plan of `model`) must or may be replaced now
// that the cluster is `now` (changed from the plan's cluster by `change`).
// `stage_lost`: a stage of the running pipeline died (forced, whatever the
// membership says). *why, when given, gets the reason in words.
ReplanNeed replan_need(const scheduler::ModelProfile& model, const scheduler::Plan& current,
                       const scheduler::ClusterSpec& now, const ClusterChange& change, bool stage_lost,
                       const ReplanPolicy& policy = {}, std::string* why = nullptr);

struct ReplanDecision {
  ReplanNeed need = ReplanNeed::none;
  ClusterChange change;
  bool adopt = false;                 // move to candidate.plan
  scheduler::PlanResult candidate{};  // the plan over `now` (when need != none)
  std::string reason;                 // why it adopts or keeps, in words
};

// Pure (the planner is deterministic): replan_need, then, unless none, the
// optimal plan over `now` and whether to adopt it. A forced need with no
// feasible plan gives adopt = false and candidate.status saying why; the
// caller cannot go on with its pipeline then.
ReplanDecision decide_replan(const scheduler::ModelProfile& model, const scheduler::Plan& current,
                             const scheduler::ClusterSpec& before, const scheduler::ClusterSpec& now,
                             bool stage_lost, const ReplanPolicy& policy = {});

// Per stage of `plan`: "node/GPU type" and its layer range, as one line
// ("0-5 on 3f2a9c1b0d4e A100-40GB | 6-11 on 3f2a9c1b0d4e A100-40GB").
std::string plan_summary(const scheduler::Plan& plan);

// ---- watching the cluster -----------------------------------------------------------

struct ClusterWatchOptions {
  std::chrono::milliseconds interval{1000};  // between two polls of troupe::nodes()
  LiveClusterOptions cluster{};               // how nodes become a ClusterSpec
};

// Polls the running cluster (troupe::nodes(), or in local mode the declared
// local node) on its own thread and keeps the newest view as the planner
// sees it: the nodes that have GPUs. The version goes up each time the view
// differs from the one before (cluster_change not empty).
//
// A poll that fails (the head does not answer within troupe::nodes()' 10 s,
// a GPU of unknown type) keeps the previous view and sets last_error().
// Threads: every method may be called from any thread; the destructor stops
// the poller and joins it (at most one poll, so at most about 10 s).
class ClusterWatcher {
 public:
  struct View {
    std::uint64_t version = 0;
    scheduler::ClusterSpec cluster;  // no nodes: no alive node has a GPU
    std::chrono::steady_clock::time_point seen_at{};  // when this version was first seen
  };

  // Reads the cluster once before returning (throws what troupe::nodes() and
  // cluster_spec throw: Error(timeout), Error(invalid_argument) for a GPU of
  // unknown type or before init()), then polls. Error(invalid_argument) for
  // an interval under 10 ms.
  explicit ClusterWatcher(ClusterWatchOptions options = {});
  ~ClusterWatcher();
  ClusterWatcher(const ClusterWatcher&) = delete;
  ClusterWatcher& operator=(const ClusterWatcher&) = delete;

  View current() const;
  // Waits until the view's version differs from `version` or `timeout`
  // passes; returns the view then (check its version to tell which).
  View wait_for_change(std::uint64_t version, std::chrono::milliseconds timeout) const;
  std::string last_error() const;
  std::uint64_t polls() const;

 private:
  static scheduler::ClusterSpec read(const LiveClusterOptions& options);
  void run();

  ClusterWatchOptions options_;
  mutable std::mutex mutex_;
  mutable std::condition_variable changed_;
  std::condition_variable stop_cv_;
  bool stop_ = false;
  View view_;
  std::string last_error_;
  std::uint64_t polls_ = 0;
  std::thread thread_;  // last: started when everything above is ready
};

}  // namespace troupe::actors
