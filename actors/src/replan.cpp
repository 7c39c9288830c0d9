#include "troupe/actors/replan.hpp"

#include <algorithm>
#include <map>

#include <fmt/format.h>

#include "troupe/runtime/error.hpp"
#include "troupe/runtime/nodes.hpp"
#include "troupe/scheduler/error.hpp"

namespace troupe::actors {
namespace {

const scheduler::ClusterNode* find_node(const scheduler::ClusterSpec& cluster, const std::string& name) {
  for (const auto& node : cluster.nodes) {
    if (node.name == name) return &node;
  }
  return nullptr;
}

bool same_gpus(const scheduler::ClusterNode& a, const scheduler::ClusterNode& b) {
  if (a.gpus.size() != b.gpus.size()) return false;
  for (std::size_t i = 0; i < a.gpus.size(); ++i) {
    if (a.gpus[i].type != b.gpus[i].type) return false;
  }
  return true;
}

std::string gpu_list(const scheduler::ClusterNode* node) {
  if (node == nullptr) return "?";
  std::string out = fmt::format("{} GPU{}:", node->gpus.size(), node->gpus.size() == 1 ? "" : "s");
  for (std::size_t i = 0; i < node->gpus.size(); ++i) out += (i == 0 ? " " : ", ") + node->gpus[i].type;
  return out;
}

}  // namespace

ClusterChange cluster_change(const scheduler::ClusterSpec& before, const scheduler::ClusterSpec& after) {
  ClusterChange change;
  for (const auto& node : after.nodes) {
    const scheduler::ClusterNode* old = find_node(before, node.name);
    if (old == nullptr) change.joined.push_back(node.name);
    else if (!same_gpus(*old, node)) change.changed.push_back(node.name);
  }
  for (const auto& node : before.nodes) {
    if (find_node(after, node.name) == nullptr) change.lost.push_back(node.name);
  }
  return change;
}

std::string ClusterChange::describe(const scheduler::ClusterSpec& before, const scheduler::ClusterSpec& after) const {
  std::vector<std::string> parts;
  for (const auto& name : joined) parts.push_back(fmt::format("node {} joined ({})", name, gpu_list(find_node(after, name))));
  for (const auto& name : lost) parts.push_back(fmt::format("node {} lost ({})", name, gpu_list(find_node(before, name))));
  for (const auto& name : changed) {
    parts.push_back(fmt::format("node {} changed ({} -> {})", name, gpu_list(find_node(before, name)),
                                gpu_list(find_node(after, name))));
  }
  if (parts.empty()) return "no change";
  std::string out;
  for (std::size_t i = 0; i < parts.size(); ++i) out += (i == 0 ? "" : "; ") + parts[i];
  return out;
}

const char* to_string(ReplanNeed need) noexcept {
  switch (need) {
    case ReplanNeed::none: return "none";
    case ReplanNeed::better: return "better";
    case ReplanNeed::forced: return "forced";
  }
  return "?";
}

ReplanNeed replan_need(const scheduler::ModelProfile& model, const scheduler::Plan& current,
                       const scheduler::ClusterSpec& now, const ClusterChange& change, bool stage_lost,
                       const ReplanPolicy& policy, std::string* why) {
  auto say = [&](ReplanNeed need, std::string text) {
    if (why != nullptr) *why = std::move(text);
    return need;
  };
  if (stage_lost) return say(ReplanNeed::forced, "a stage of the pipeline died");
  if (now.nodes.empty()) return say(ReplanNeed::forced, "no alive node has a GPU");
  // The plan as placed must still exist: every node and GPU index it names,
  // with the GPU type it was planned for, and the plan valid there.
  for (std::size_t k = 0; k < current.stages.size(); ++k) {
    const auto& stage = current.stages[k];
    const scheduler::ClusterNode* node = find_node(now, stage.node);
    if (node == nullptr) return say(ReplanNeed::forced, fmt::format("node {} of stage {} is lost", stage.node, k));
    if (stage.gpu < 0 || static_cast<std::size_t>(stage.gpu) >= node->gpus.size() ||
        (!stage.gpu_type.empty() && node->gpus[static_cast<std::size_t>(stage.gpu)].type != stage.gpu_type)) {
      return say(ReplanNeed::forced, fmt::format("GPU {} of node {} (stage {}) is gone", stage.gpu, stage.node, k));
    }
  }
  try {
    const scheduler::PlanEvaluation fits = scheduler::evaluate(model, now, current);
    if (!fits.valid) return say(ReplanNeed::forced, "the plan is no longer valid: " + fits.reason);
  } catch (const scheduler::SpecError& e) {
    return say(ReplanNeed::forced, "the cluster cannot be planned on: " + e.message());
  }
  if (!change.joined.empty() || !change.changed.empty()) {
    if (!policy.on_join) return say(ReplanNeed::none, "nodes joined, re-planning on joins is off");
    return say(ReplanNeed::better, "nodes joined or changed; the plan still fits");
  }
  if (!change.lost.empty()) {
    // The plan was optimal over a superset of what is left and still fits,
    // so no plan over the rest can beat it.
    return say(ReplanNeed::none, "only nodes the plan does not use were lost");
  }
  return say(ReplanNeed::none, "no change");
}

ReplanDecision decide_replan(const scheduler::ModelProfile& model, const scheduler::Plan& current,
                             const scheduler::ClusterSpec& before, const scheduler::ClusterSpec& now,
                             bool stage_lost, const ReplanPolicy& policy) {
  ReplanDecision decision;
  decision.change = cluster_change(before, now);
  std::string why;
  decision.need = replan_need(model, current, now, decision.change, stage_lost, policy, &why);
  if (decision.need == ReplanNeed::none) {
    decision.reason = "keeping the plan: " + why;
    return decision;
  }
  if (now.nodes.empty()) {
    decision.candidate.status = scheduler::PlanStatus::infeasible;
    decision.candidate.reason = "no alive node has a GPU";
  } else {
    try {
      decision.candidate = scheduler::plan_pipeline(model, now, policy.planner);
    } catch (const scheduler::SpecError& e) {
      decision.candidate.status = scheduler::PlanStatus::infeasible;
      decision.candidate.reason = e.message();
    }
  }
  if (!decision.candidate.feasible()) {
    decision.reason = fmt::format("{}; no plan over the cluster now: {}", why, decision.candidate.reason);
    return decision;
  }
  const double old_s = current.bottleneck_s, new_s = decision.candidate.plan.bottleneck_s;
  if (decision.need == ReplanNeed::forced) {
    decision.adopt = true;
    decision.reason = fmt::format("{}; new plan's bottleneck {:.3g} us (was {:.3g} us)", why, new_s * 1e6, old_s * 1e6);
    return decision;
  }
  decision.adopt = new_s <= old_s * (1.0 - policy.min_gain);
  decision.reason = fmt::format("{}; the new plan's bottleneck is {:.3g} us against {:.3g} us ({:.2f}x){}", why,
                                new_s * 1e6, old_s * 1e6, new_s > 0 ? old_s / new_s : 0.0,
                                decision.adopt ? "" : fmt::format(", under the {:.0f}% gain worth moving for",
                                                                  policy.min_gain * 100));
  return decision;
}

std::string plan_summary(const scheduler::Plan& plan) {
  std::string out;
  for (std::size_t k = 0; k < plan.stages.size(); ++k) {
    const auto& s = plan.stages[k];
    out += fmt::format("{}{}-{} on {} GPU {}{}", k == 0 ? "" : " | ", s.first_layer, s.last_layer, s.node, s.gpu,
                       s.gpu_type.empty() ? "" : " " + s.gpu_type);
  }
  return out;
}

// ---- ClusterWatcher ---------------------------------------------------------------------

scheduler::ClusterSpec ClusterWatcher::read(const LiveClusterOptions& options) {
  std::vector<NodeDescription> nodes = troupe::nodes();
  const bool any_gpu = std::any_of(nodes.begin(), nodes.end(), [](const auto& n) { return !n.gpus.empty(); });
  if (!any_gpu) {
    scheduler::ClusterSpec empty;
    empty.name = "running cluster";
    empty.inter_node_gbps = options.inter_node_gbps;
    return empty;
  }
  return cluster_spec(nodes, options);
}

ClusterWatcher::ClusterWatcher(ClusterWatchOptions options) : options_(std::move(options)) {
  if (options_.interval < std::chrono::milliseconds(10)) {
    throw_error(Errc::invalid_argument, "ClusterWatcher: the poll interval must be at least 10 ms");
  }
  view_.cluster = read(options_.cluster);
  view_.seen_at = std::chrono::steady_clock::now();
  polls_ = 1;
  thread_ = std::thread([this] { run(); });
}

ClusterWatcher::~ClusterWatcher() {
  {
    std::lock_guard lock(mutex_);
    stop_ = true;
  }
  stop_cv_.notify_all();
  thread_.join();
}

void ClusterWatcher::run() {
  std::unique_lock lock(mutex_);
  while (true) {
    if (stop_cv_.wait_for(lock, options_.interval, [&] { return stop_; })) return;
    lock.unlock();
    scheduler::ClusterSpec now;
    std::string error;
    try {
      now = read(options_.cluster);
    } catch (const std::exception& e) {
      error = e.what();
    }
    lock.lock();
    ++polls_;
    if (!error.empty()) {
      last_error_ = std::move(error);
      continue;
    }
    last_error_.clear();
    if (cluster_change(view_.cluster, now).empty()) continue;
    view_.cluster = std::move(now);
    ++view_.version;
    view_.seen_at = std::chrono::steady_clock::now();
    changed_.notify_all();
  }
}

ClusterWatcher::View ClusterWatcher::current() const {
  std::lock_guard lock(mutex_);
  return view_;
}

ClusterWatcher::View ClusterWatcher::wait_for_change(std::uint64_t version, std::chrono::milliseconds timeout) const {
  std::unique_lock lock(mutex_);
  changed_.wait_for(lock, timeout, [&] { return view_.version != version; });
  return view_;
}

std::string ClusterWatcher::last_error() const {
  std::lock_guard lock(mutex_);
  return last_error_;
}

std::uint64_t ClusterWatcher::polls() const {
  std::lock_guard lock(mutex_);
  return polls_;
}

}  // namespace troupe::actors
