// pipeline_serving: serving with live re-planning (--replans N).
//
// The driver polls the cluster (ClusterWatcher) between requests. When it
// changes, or a request fails because a stage died, decide_replan says
// whether the plan must (a node or GPU it uses is gone, a stage died) or
// may (nodes joined and the new plan is min_gain faster) be replaced. To
// replace it: let the requests in flight end (a join: all complete, and
// every stage checkpoints now, so nothing is lost; a loss: the dead stages'
// requests fail and are sent again later), take the newest checkpoint every
// layer has, kill the old stages and remove their placement group, place the
// new plan, construct its stages from the checkpoint's layer files, check
// each new stage's state digest against the files, and go on serving.
#include <chrono>
#include <cstdio>
#include <deque>
#include <filesystem>
#include <fstream>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <fmt/format.h>

#include "serving.hpp"

namespace serving {

namespace {

class Replanning {
 public:
  using Clock = std::chrono::steady_clock;

  Replanning(const Flags& flags, const Model& model, Deployment deployment, std::string checkpoint_dir,
             const troupe::actors::LiveClusterOptions& live, Checked& checked)
      : flags_(flags),
        model_(model),
        deployment_(std::move(deployment)),
        dir_(std::move(checkpoint_dir)),
        checked_(checked),
        watcher_({.interval = std::chrono::milliseconds(flags.poll_ms), .cluster = live}),
        known_(deployment_.cluster),
        started_(Clock::now()) {
    policy_.min_gain = flags.min_gain;
    const auto view = watcher_.current();
    // A change between planning and now is acted on at the first look.
    seen_version_ = troupe::actors::cluster_change(known_, view.cluster).empty() ? view.version : ~view.version;
  }

  int run() {
    using namespace std::chrono_literals;
    // Step 0: the state every later checkpoint grows from.
    if (!checkpoint_now()) {
      std::printf("pipeline_serving: the first checkpoint failed: %s\n", failure_.c_str());
      return 1;
    }
    start_phase();
    std::printf("serving with live re-planning: until %d re-plan%s and %d requests after the last, up to %d in "
                "flight; checkpoints every %d requests in %s; polling the cluster every %d ms\n",
                flags_.replans, flags_.replans == 1 ? "" : "s", flags_.requests, flags_.inflight,
                flags_.checkpoint_every, dir_.c_str(), flags_.poll_ms);
    while (true) {
      harvest();
      finish_checkpoint(false);
      write_status();
      if (done_submitting() && inflight_.empty() && !stage_failed_) break;
      if (Clock::now() - started_ > std::chrono::seconds(flags_.max_seconds)) {
        std::printf("pipeline_serving: gave up after %d s with %d of %d re-plans (%s)\n", flags_.max_seconds,
                    replans_, flags_.replans, watcher_.last_error().empty() ? "no more cluster changes"
                                                                            : watcher_.last_error().c_str());
        return 1;
      }
      if (stage_failed_ || watcher_.current().version != seen_version_) {
        const int status = replan();
        if (status != 0) return status;
        continue;
      }
      if (!done_submitting() && inflight_.size() < static_cast<std::size_t>(flags_.inflight)) {
        submit_next();
        continue;
      }
      if (!inflight_.empty()) (void)inflight_.front().response.wait_for(20ms);
      else std::this_thread::sleep_for(20ms);
    }
    end_phase();
    std::printf("served %d requests over %d plan%s; %d re-plan%s\n", answered_, replans_ + 1, replans_ == 0 ? "" : "s",
                replans_, replans_ == 1 ? "" : "s");
    return 0;
  }

 private:
  struct InFlight {
    int request = 0;
    troupe::ObjectRef<Tensor> response;
    Clock::time_point submitted{};
  };
  struct PendingCheckpoint {
    std::int64_t step = 0;
    std::vector<troupe::ObjectRef<std::uint64_t>> saves;
  };

  bool done_submitting() const {
    return replans_ >= flags_.replans && submitted_in_phase_ >= flags_.requests && resend_.empty();
  }

  void submit_next() {
    int request;
    if (!resend_.empty()) {
      request = resend_.front();
      resend_.pop_front();
    } else {
      request = next_request_++;
    }
    inflight_.push_back({request, submit_request(flags_, model_, deployment_, request, clock_.get()), Clock::now()});
    ++submitted_in_phase_;
    ++state_step_;
    if (state_step_ % flags_.checkpoint_every == 0 && !pending_) {
      // Each stage runs this caller's calls in order: its save comes after
      // its part of every request submitted so far, and before any later.
      PendingCheckpoint pending{state_step_, {}};
      for (const auto& stage : deployment_.stages) pending.saves.push_back(stage.call<&Stage::save>(dir_, state_step_));
      pending_ = std::move(pending);
    }
  }

  // Takes the finished requests at the front (responses complete in order).
  void harvest() {
    while (!inflight_.empty() && inflight_.front().response.is_ready()) {
      take(inflight_.front());
      inflight_.pop_front();
    }
  }

  void take(const InFlight& f) {
    if (f.response.has_error()) {
      if (!stage_failed_) {
        try {
          (void)f.response.get();
        } catch (const std::exception& e) {
          failure_ = e.what();
        }
      }
      stage_failed_ = true;
      resend_.push_back(f.request);
      ++resent_;
      return;
    }
    ++answered_;
    ++phase_answered_;
    latency_ms_.push_back(std::chrono::duration<double, std::milli>(Clock::now() - f.submitted).count());
    if (phase_checked_ < flags_.check) {
      checked_.emplace_back(f.request, f.response);
      ++phase_checked_;
    }
  }

  // A checkpoint counts once every stage wrote it; wait: block for it.
  void finish_checkpoint(bool wait) {
    using namespace std::chrono_literals;
    if (!pending_) return;
    bool ok = true;
    for (const auto& save : pending_->saves) {
      if (wait) (void)save.wait_for(60s);
      if (!save.is_ready()) {
        if (!wait) return;
        (void)save.cancel();
        ok = false;
      } else if (save.has_error()) {
        ok = false;
      }
    }
    if (ok) last_checkpoint_ = pending_->step;
    pending_.reset();
  }

  bool checkpoint_now() {
    using namespace std::chrono_literals;
    finish_checkpoint(true);
    PendingCheckpoint pending{state_step_, {}};
    for (const auto& stage : deployment_.stages) pending.saves.push_back(stage.call<&Stage::save>(dir_, state_step_));
    for (const auto& save : pending.saves) {
      try {
        (void)save.get(60s);
      } catch (const std::exception& e) {
        failure_ = e.what();
        return false;
      }
    }
    last_checkpoint_ = state_step_;
    return true;
  }

  void start_phase() {
    phase_started_ = Clock::now();
    phase_answered_ = 0;
    phase_checked_ = 0;
    submitted_in_phase_ = 0;
    latency_ms_.clear();
    clock_ = std::make_unique<troupe::actors::StageClock>(deployment_.stages.size());
  }

  void end_phase() {
    const double seconds = std::chrono::duration<double>(Clock::now() - phase_started_).count();
    std::printf("plan %d: served %d requests in %.2f s: throughput %.1f requests/s; latency p50 %.2f ms, p99 %.2f ms\n",
                replans_, phase_answered_, seconds, seconds > 0 ? phase_answered_ / seconds : 0.0,
                latency_ms_.empty() ? 0.0 : percentile(latency_ms_, 0.5),
                latency_ms_.empty() ? 0.0 : percentile(latency_ms_, 0.99));
    std::printf("plan %d stage times per request, measured beside the plan's:\n%s", replans_,
                troupe::actors::format_stage_time_report(
                    troupe::actors::stage_time_report(deployment_.plan, clock_->measure()))
                    .c_str());
  }

  void write_status() {
    if (flags_.status_file.empty()) return;
    const std::string text = fmt::format("replans={} answered={} step={}\n", replans_, answered_, state_step_);
    if (text == last_status_) return;
    const std::string temp = flags_.status_file + ".tmp";
    {
      std::ofstream out(temp, std::ios::trunc);
      out << text;
    }
    std::error_code error;
    std::filesystem::rename(temp, flags_.status_file, error);
    last_status_ = text;
  }

  int replan() {
    using namespace std::chrono_literals;
    const auto began = Clock::now();
    troupe::actors::ClusterWatcher::View view;
    if (stage_failed_) {
      std::printf("a stage failed (%s); waiting up to %d s for the cluster to show the loss\n", failure_.c_str(),
                  flags_.loss_wait_s);
      view = watcher_.wait_for_change(seen_version_, std::chrono::seconds(flags_.loss_wait_s));
    } else {
      view = watcher_.current();
    }
    const auto decision = troupe::actors::decide_replan(model_.profile, deployment_.plan, known_, view.cluster,
                                                        stage_failed_, policy_);
    std::printf("cluster: %s\n", decision.change.describe(known_, view.cluster).c_str());
    if (!decision.adopt) {
      std::printf("re-plan: %s\n", decision.reason.c_str());
      if (decision.need == troupe::actors::ReplanNeed::forced) return 1;
      known_ = view.cluster;
      seen_version_ = view.version;
      return 0;
    }
    // Let every request in flight end: completed ones are answered, failed
    // ones sent again on the new plan.
    for (auto& f : inflight_) {
      if (!f.response.wait_for(60s)) (void)f.response.cancel();
    }
    while (!inflight_.empty()) {
      if (inflight_.front().response.is_ready()) take(inflight_.front());
      else resend_.push_back(inflight_.front().request);
      inflight_.pop_front();
    }
    finish_checkpoint(true);
    // A plan that still runs checkpoints now and loses nothing; after a loss
    // the newest checkpoint every layer has is the state to go on from.
    bool fresh = false;
    if (!stage_failed_ && decision.need != troupe::actors::ReplanNeed::forced) fresh = checkpoint_now();
    const double drained_s = std::chrono::duration<double>(Clock::now() - began).count();
    const std::int64_t restore = last_checkpoint_;
    const std::int64_t lost = state_step_ - restore;
    end_phase();

    std::printf("re-plan %d (%s): %s\n", replans_ + 1, troupe::actors::to_string(decision.need),
                decision.reason.c_str());
    std::printf("  old plan: %s (bottleneck %s us)\n", troupe::actors::plan_summary(deployment_.plan).c_str(),
                us(deployment_.plan.bottleneck_s).c_str());
    std::printf("  new plan: %s (bottleneck %s us)\n", troupe::actors::plan_summary(decision.candidate.plan).c_str(),
                us(decision.candidate.plan.bottleneck_s).c_str());
    print_stages(decision.candidate.plan);

    // The old stages go, with the reservation that holds their GPUs.
    const auto placing = Clock::now();
    for (const auto& stage : deployment_.stages) {
      try {
        troupe::kill(stage);
      } catch (const std::exception&) {  // already dead with its node
      }
    }
    try {
      troupe::remove_placement_group(deployment_.group);
    } catch (const std::exception& e) {
      std::printf("  (removing the old placement group: %s)\n", e.what());
    }
    std::optional<Deployment> next =
        deploy(flags_, model_, decision.candidate.plan, view.cluster, replans_ + 1, dir_, restore);
    if (!next) return 1;
    const auto checking = Clock::now();
    const double placed_s = std::chrono::duration<double>(checking - placing).count();
    for (std::size_t k = 0; k < next->stages.size(); ++k) {
      const auto& s = next->plan.stages[k];
      const std::uint64_t got = next->stages[k].call<&Stage::digest>().get(60s);
      const std::uint64_t want = checkpoint_digest(dir_, s.first_layer, s.last_layer, restore);
      if (got != want) {
        std::printf("result: STATE MISMATCH, stage %zu (layers %d-%d) restored %016llx, its checkpoint files hold "
                    "%016llx\n", k, s.first_layer, s.last_layer, static_cast<unsigned long long>(got),
                    static_cast<unsigned long long>(want));
        return 1;
      }
    }
    std::printf("  restored: every stage's state equals the checkpoint of step %lld (layers, rows served and "
                "feature sums)\n", static_cast<long long>(restore));
    std::printf("  re-plan %d took %.2f s: %.2f s to end the requests in flight%s, %.2f s to place and restore "
                "the %zu new stages, %.2f s to check their state; %s; %d failed request%s sent again\n",
                replans_ + 1, std::chrono::duration<double>(Clock::now() - began).count(), drained_s,
                fresh ? " and checkpoint" : (stage_failed_ ? " and wait for the loss to show" : ""), placed_s,
                next->stages.size(), std::chrono::duration<double>(Clock::now() - checking).count(),
                lost == 0 ? std::string("nothing lost").c_str()
                          : fmt::format("lost the state updates of the {} requests served since that checkpoint "
                                        "(their responses were delivered)", lost).c_str(),
                resent_, resent_ == 1 ? "" : "s");
    deployment_ = std::move(*next);
    known_ = view.cluster;
    seen_version_ = view.version;
    state_step_ = restore;
    stage_failed_ = false;
    failure_.clear();
    resent_ = 0;
    ++replans_;
    start_phase();
    write_status();
    return 0;
  }

  const Flags& flags_;
  const Model& model_;
  Deployment deployment_;
  std::string dir_;
  Checked& checked_;
  troupe::actors::ClusterWatcher watcher_;
  troupe::actors::ReplanPolicy policy_;
  sched::ClusterSpec known_;  // the cluster the decisions so far were made over
  std::uint64_t seen_version_ = 0;
  Clock::time_point started_;

  std::deque<InFlight> inflight_;
  std::deque<int> resend_;
  int next_request_ = 0;
  int answered_ = 0;
  int replans_ = 0;
  int resent_ = 0;
  bool stage_failed_ = false;
  std::string failure_;
  std::int64_t state_step_ = 0;  // requests the stages' state has taken
  std::int64_t last_checkpoint_ = -1;
  std::optional<PendingCheckpoint> pending_;
  std::string last_status_;

  Clock::time_point phase_started_{};
  int phase_answered_ = 0;
  int phase_checked_ = 0;
  int submitted_in_phase_ = 0;
  std::vector<double> latency_ms_;
  std::unique_ptr<troupe::actors::StageClock> clock_;
};

}  // namespace

int serve_with_replanning(const Flags& flags, const Model& model, Deployment deployment,
                          const std::string& checkpoint_dir, const troupe::actors::LiveClusterOptions& live,
                          Checked& checked) {
  Replanning replanning(flags, model, std::move(deployment), checkpoint_dir, live, checked);
  return replanning.run();
}

}  // namespace serving
