// PipelineSupervisor: ordered operations, in-order results, and the
// roll-back-and-replay recovery of a Pipeline whose stage restarted.
#include "pipeline_supervisor.hpp"

#include <algorithm>
#include <set>
#include <utility>

#include "troupe/runtime/error.hpp"
#include "troupe/runtime/logging.hpp"
#include "troupe/runtime/object_state.hpp"

namespace troupe::actors::detail {

namespace {

using Clock = std::chrono::steady_clock;
// How long the supervisor waits on a result before it looks at the stages'
// health again.
constexpr auto kPoll = std::chrono::milliseconds(100);

std::string describe_error(const std::exception_ptr& error) {
  try {
    std::rethrow_exception(error);
  } catch (const Error& e) {
    return e.message();
  } catch (const std::exception& e) {
    return e.what();
  } catch (...) {
    return "unknown error";
  }
}

}  // namespace

PipelineSupervisor::PipelineSupervisor(std::vector<ActorHandle<PipelineStage>> stages, PipelineOptions options)
    : stages_(std::move(stages)), options_(std::move(options)) {
  baseline_restarts_.assign(stages_.size(), 0);
  for (std::size_t k = 0; k < stages_.size(); ++k) baseline_restarts_[k] = stages_[k].restarts();
  commons_.push_back(0);
  thread_ = std::thread([this] { run(); });
}

PipelineSupervisor::~PipelineSupervisor() {
  {
    std::lock_guard lock(mutex_);
    stop_ = true;
  }
  changed_.notify_all();
  if (thread_.joinable()) thread_.join();
}

// ---- operations -----------------------------------------------------------------------

void PipelineSupervisor::submit_locked(Op& op) {
  op.finished = false;
  op.submitted = false;
  op.attempt = op.submit();
  op.submitted = true;
}

void PipelineSupervisor::enqueue(const OpPtr& op) {
  std::exception_ptr broken;
  {
    std::lock_guard lock(mutex_);
    if (broken_) {
      broken = broken_;
    } else {
      if (op->trains) op->step = ++next_step_;
      ops_.push_back(op);
      if (!recovering_) submit_locked(*op);
    }
  }
  if (broken) {
    op->fail(broken);
    return;
  }
  changed_.notify_all();
}

ObjectRef<float> PipelineSupervisor::submit_batch(const Tensor& x, const Tensor& labels, int micro_batches,
                                                  Schedule schedule) {
  auto promise = std::make_shared<Promise<float>>();
  auto op = std::make_shared<Op>();
  op->trains = true;
  op->submit = [this, x, labels, micro_batches, schedule, promise]() {
    BatchCalls calls = submit_batch_calls(stages_, x, labels, micro_batches, schedule, next_micro_batch_);
    auto done = when_all(when_all(calls.losses), when_all(calls.steps));
    Attempt attempt;
    attempt.done = done;
    attempt.calls = std::move(calls.calls);
    attempt.finish = [this, done, promise](Op& self, std::function<void()>& deliver) -> std::string {
      const auto [losses, steps] = done.get();
      for (std::size_t k = 0; k < steps.size(); ++k) {
        if (steps[k] != self.step) {
          return "stage " + std::to_string(k) + " reports step " + std::to_string(steps[k]) +
                 " after the batch of step " + std::to_string(self.step);
        }
      }
      double sum = 0;  // micro-batch order: the same sum every time
      for (const float loss : losses) sum += loss;
      const auto loss = static_cast<float>(sum);
      if (self.delivered) {
        ++stats_.replayed_batches;
        if (loss != self.loss) {
          ++stats_.replay_mismatches;
          TROUPE_LOG_WARN("Pipeline: the replay of step {} gave loss {}, the first run {}", self.step, loss,
                          self.loss);
        }
      } else {
        self.delivered = true;
        self.loss = loss;
        deliver = [promise, loss] { promise->set_value(loss); };
      }
      return std::string();
    };
    return attempt;
  };
  op->fail = [promise](std::exception_ptr error) { promise->set_error(std::move(error)); };
  ObjectRef<float> out = promise->ref();
  enqueue(op);
  return out;
}

template <class T>
ObjectRef<T> PipelineSupervisor::enqueue_query(std::function<ObjectRef<T>(std::vector<ObjectRefBase>&)> make) {
  auto promise = std::make_shared<Promise<T>>();
  auto op = std::make_shared<Op>();
  op->submit = [make = std::move(make), promise]() {
    Attempt attempt;
    ObjectRef<T> done = make(attempt.calls);
    attempt.done = done;
    attempt.finish = [done, promise](Op& self, std::function<void()>& deliver) {
      self.delivered = true;
      deliver = [done, promise] { promise->set_value(done.get()); };
      return std::string();
    };
    return attempt;
  };
  op->fail = [promise](std::exception_ptr error) { promise->set_error(std::move(error)); };
  ObjectRef<T> out = promise->ref();
  enqueue(op);
  return out;
}

ObjectRef<Tensor> PipelineSupervisor::predict(const Tensor& x) {
  return enqueue_query<Tensor>(
      [this, x](std::vector<ObjectRefBase>& calls) { return submit_predict_calls(stages_, x, &calls); });
}

ObjectRef<std::vector<std::vector<Tensor>>> PipelineSupervisor::parameters() {
  return enqueue_query<std::vector<std::vector<Tensor>>>([this](std::vector<ObjectRefBase>& calls) {
    std::vector<ObjectRef<std::vector<Tensor>>> refs;
    for (const auto& stage : stages_) {
      refs.push_back(stage.call<&PipelineStage::get_parameters>());
      calls.push_back(refs.back());
    }
    return when_all(refs);
  });
}

ObjectRef<std::vector<StageStats>> PipelineSupervisor::stats() {
  return enqueue_query<std::vector<StageStats>>([this](std::vector<ObjectRefBase>& calls) {
    std::vector<ObjectRef<StageStats>> refs;
    for (const auto& stage : stages_) {
      refs.push_back(stage.call<&PipelineStage::stats>());
      calls.push_back(refs.back());
    }
    return when_all(refs);
  });
}

std::int64_t PipelineSupervisor::resume_step() {
  std::unique_lock lock(mutex_);
  changed_.wait(lock, [&] { return started_ || broken_ || stop_; });
  if (!started_ && broken_) std::rethrow_exception(broken_);
  return resume_step_;
}

RecoveryStats PipelineSupervisor::stats_snapshot() const {
  std::lock_guard lock(mutex_);
  RecoveryStats out = stats_;
  out.committed_steps = committed_;
  return out;
}

// ---- the supervisor thread -------------------------------------------------------------

void PipelineSupervisor::check_stop() const {
  std::lock_guard lock(mutex_);
  if (stop_) throw Stopping{};
}

void PipelineSupervisor::run() {
  try {
    recover("start-up", nullptr, nullptr, /*startup=*/true);
    std::unique_lock lock(mutex_);
    while (!stop_) {
      if (broken_) {
        changed_.wait(lock, [&] { return stop_; });
        break;
      }
      if (!handle_oldest(lock)) {
        // Nothing in flight: look at the stages now and then (a stage that
        // restarted while idle must be rolled back before the next batch).
        changed_.wait_for(lock, kPoll);
        if (stop_) break;
        lock.unlock();
        const std::string why = health_check();
        if (!why.empty()) recover(why, nullptr, nullptr, false);
        lock.lock();
      }
    }
  } catch (const Stopping&) {
  } catch (...) {
    fatal(std::current_exception());
  }
}

// Waits a while for the oldest operation in flight and deals with its
// outcome. False when there was none. Called and returns with the lock held.
bool PipelineSupervisor::handle_oldest(std::unique_lock<std::mutex>& lock) {
  OpPtr op;
  for (const OpPtr& candidate : ops_) {
    if (candidate->submitted && !candidate->finished) {
      op = candidate;
      break;
    }
  }
  if (!op) return false;
  const ObjectRefBase done = op->attempt.done;
  lock.unlock();
  const bool ready = done.wait_for(kPoll);
  if (!ready) {
    const std::string why = health_check();
    if (!why.empty()) recover(why, nullptr, nullptr, false);
    lock.lock();
    return true;
  }
  if (done.has_error()) {
    std::exception_ptr error = done.state()->error();
    const std::string why = describe_error(error);
    if (!op->trains && health_check().empty()) {
      // A query or predict that failed while every stage is as it was: its
      // own error (nothing changed state), handed back as it is.
      lock.lock();
      ops_.erase(std::remove(ops_.begin(), ops_.end(), op), ops_.end());
      lock.unlock();
      op->fail(error);
    } else {
      recover(why, op, error, false);
    }
    lock.lock();
    return true;
  }
  std::function<void()> deliver;
  lock.lock();
  if (!op->submitted || op->attempt.done.state() != done.state()) return true;  // resubmitted meanwhile
  const std::string why = op->attempt.finish(*op, deliver);
  if (why.empty()) {
    op->finished = true;
    if (op->trains) {
      committed_ = op->step;
      recoveries_in_a_row_ = 0;
      if (op->step % options_.checkpoint_every == 0) {
        commons_.push_back(op->step);
        while (static_cast<int>(commons_.size()) > options_.keep_checkpoints) commons_.pop_front();
      }
      // Batches at or before the oldest common checkpoint are never replayed.
      while (!ops_.empty() && ops_.front()->finished && ops_.front()->trains && ops_.front()->step <= commons_.front()) {
        ops_.pop_front();
      }
    } else {
      ops_.erase(std::remove(ops_.begin(), ops_.end(), op), ops_.end());
    }
    lock.unlock();
    if (deliver) deliver();
    lock.lock();
    return true;
  }
  lock.unlock();
  recover(why, nullptr, nullptr, false);
  lock.lock();
  return true;
}

std::string PipelineSupervisor::health_check() const {
  std::vector<int> baseline;
  {
    std::lock_guard lock(mutex_);
    baseline = baseline_restarts_;
  }
  for (std::size_t k = 0; k < stages_.size(); ++k) {
    const ActorState state = stages_[k].state();
    const int restarts = stages_[k].restarts();
    if (restarts != baseline[k] || state == ActorState::restarting || state == ActorState::dead) {
      return "stage " + std::to_string(k) + " died (" + std::string(to_string(state)) + ": " +
             stages_[k].status_message() + ")";
    }
  }
  return std::string();
}

bool PipelineSupervisor::wait_ready(const ObjectRefBase& ref, Clock::time_point deadline) {
  while (!ref.wait_for(kPoll)) {
    check_stop();
    if (Clock::now() >= deadline) return false;
  }
  return true;
}

void PipelineSupervisor::wait_alive(Clock::time_point deadline) {
  for (std::size_t k = 0; k < stages_.size(); ++k) {
    for (;;) {
      const ActorState state = stages_[k].state();
      if (state == ActorState::alive) break;
      if (state == ActorState::dead) {
        throw_error(Errc::actor_died, "Pipeline: stage " + std::to_string(k) + " is dead and will not restart (" +
                                          stages_[k].status_message() + "); training stopped");
      }
      check_stop();
      if (Clock::now() >= deadline) {
        throw_error(Errc::actor_died,
                    "Pipeline: stage " + std::to_string(k) + " did not come back within " +
                        std::to_string(options_.restart_timeout.count()) + " ms (" + std::string(to_string(state)) +
                        ": " + stages_[k].status_message() + "); training stopped");
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  }
}

void PipelineSupervisor::recover(const std::string& why, const OpPtr& failed, std::exception_ptr error,
                                 bool startup) {
  // 1. Stop the world: nothing new is submitted, the calls out are withdrawn.
  std::vector<ObjectRefBase> stale;
  {
    std::lock_guard lock(mutex_);
    recovering_ = true;
    for (const OpPtr& op : ops_) {
      if (op->submitted && !op->finished) {
        stale.insert(stale.end(), op->attempt.calls.begin(), op->attempt.calls.end());
      }
      op->submitted = false;
    }
  }
  for (const ObjectRefBase& call : stale) {
    try {
      (void)call.cancel();
    } catch (...) {  // NOLINT(bugprone-empty-catch): a call that cannot be withdrawn just finishes
    }
  }
  if (!startup) TROUPE_LOG_WARN("Pipeline: {}; recovering", why);

  // 2. Every stage alive and answering, none restarting under our feet.
  const Clock::time_point deadline = Clock::now() + options_.restart_timeout;
  std::vector<CheckpointInfo> infos(stages_.size());
  std::vector<int> restarts(stages_.size());
  for (;;) {
    wait_alive(deadline);
    for (std::size_t k = 0; k < stages_.size(); ++k) restarts[k] = stages_[k].restarts();
    std::vector<ObjectRef<CheckpointInfo>> probes;
    for (const auto& stage : stages_) probes.push_back(stage.call<&PipelineStage::checkpoint_info>());
    bool answered = true;
    for (std::size_t k = 0; k < stages_.size() && answered; ++k) {
      if (!wait_ready(probes[k], deadline)) {
        throw_error(Errc::actor_died, "Pipeline: stage " + std::to_string(k) + " did not answer within " +
                                          std::to_string(options_.restart_timeout.count()) +
                                          " ms after it came back; training stopped");
      }
      if (probes[k].has_error()) {
        answered = false;  // died again: wait for it once more
        TROUPE_LOG_WARN("Pipeline: stage {} failed its check: {}", k, describe_error(probes[k].state()->error()));
      } else {
        infos[k] = probes[k].get();
      }
    }
    bool unchanged = answered;
    for (std::size_t k = 0; k < stages_.size() && unchanged; ++k) unchanged = stages_[k].restarts() == restarts[k];
    if (unchanged) break;
    if (Clock::now() >= deadline) {
      throw_error(Errc::actor_died, "Pipeline: the stages kept failing for " +
                                        std::to_string(options_.restart_timeout.count()) + " ms; training stopped");
    }
  }
  std::vector<int> restarted;
  std::vector<int> baseline;
  {
    std::lock_guard lock(mutex_);
    baseline = baseline_restarts_;
  }
  for (std::size_t k = 0; k < stages_.size(); ++k) {
    if (infos[k].awaiting_restore || restarts[k] != baseline[k]) restarted.push_back(static_cast<int>(k));
  }
  if (startup && restarted.empty()) {
    // A fresh start over fresh directories: nothing to roll back.
    std::lock_guard lock(mutex_);
    for (const OpPtr& op : ops_) submit_locked(*op);
    recovering_ = false;
    started_ = true;
    changed_.notify_all();
    return;
  }

  // 3. A batch that failed while no stage restarted failed by itself: it
  // is handed back with its error and left out of the replay.
  OpPtr excluded;
  if (failed && error && restarted.empty()) excluded = failed;

  // 4. The newest step every stage has a checkpoint of (and the driver
  // still has the batches after it, unless this is the start).
  std::set<std::int64_t> candidates;
  {
    std::lock_guard lock(mutex_);
    if (startup) {
      candidates.insert(0);
      for (const std::int64_t s : infos.front().available) candidates.insert(s);
    } else {
      candidates.insert(commons_.begin(), commons_.end());
    }
  }
  for (const CheckpointInfo& info : infos) {
    std::set<std::int64_t> have(info.available.begin(), info.available.end());
    have.insert(0);
    std::erase_if(candidates, [&](std::int64_t s) { return have.count(s) == 0; });
  }
  std::int64_t restored = -1;
  std::string refused;
  for (auto it = candidates.rbegin(); it != candidates.rend() && restored < 0; ++it) {
    const std::int64_t step = *it;
    std::vector<ObjectRef<std::int64_t>> done;
    for (const auto& stage : stages_) done.push_back(stage.call<&PipelineStage::restore>(step));
    bool ok = true;
    for (std::size_t k = 0; k < stages_.size(); ++k) {
      if (!wait_ready(done[k], deadline)) {
        throw_error(Errc::actor_died, "Pipeline: stage " + std::to_string(k) + " did not restore step " +
                                          std::to_string(step) + " within " +
                                          std::to_string(options_.restart_timeout.count()) + " ms; training stopped");
      }
      if (done[k].has_error()) {
        ok = false;
        const std::string reason = describe_error(done[k].state()->error());
        refused += (refused.empty() ? "" : "; ") + ("stage " + std::to_string(k) + ": " + reason);
        TROUPE_LOG_WARN("Pipeline: stage {} cannot restore step {}: {}", k, step, reason);
        if (stages_[k].state() != ActorState::alive || stages_[k].restarts() != restarts[k]) {
          // It died again: start this recovery over (the same deadline).
          recover(why, excluded ? nullptr : failed, excluded ? nullptr : error, startup);
          return;
        }
      }
    }
    if (ok) restored = step;
  }
  if (restored < 0) {
    throw_error(Errc::actor_died, "Pipeline: no checkpoint step every stage can restore (" +
                                      (refused.empty() ? std::string("none in common") : refused) +
                                      "); training stopped");
  }

  // 5. Replay from there, in the original order.
  RecoveryEvent event;
  event.stages = restarted;
  event.reason = why;
  if (!restarted.empty() && why.find("stage ") != 0) {
    // The error of a call names the actor, not its place in the pipeline.
    std::string which;
    for (const int k : restarted) which += (which.empty() ? "stage " : ", ") + std::to_string(k);
    event.reason = which + " restarted: " + why;
  }
  event.restored_step = restored;
  std::vector<OpPtr> failed_ops;
  {
    std::lock_guard lock(mutex_);
    if (!startup && ++recoveries_in_a_row_ > options_.max_recoveries) {
      throw_error(Errc::actor_died, "Pipeline: " + std::to_string(recoveries_in_a_row_ - 1) +
                                        " recoveries in a row without a batch finishing (last: " + why +
                                        "); training stopped");
    }
    if (excluded) {
      ops_.erase(std::remove(ops_.begin(), ops_.end(), excluded), ops_.end());
      failed_ops.push_back(excluded);
    }
    committed_ = restored;
    next_step_ = restored;
    std::erase_if(commons_, [&](std::int64_t s) { return s > restored; });
    if (commons_.empty() || commons_.back() != restored) commons_.push_back(restored);
    for (const OpPtr& op : ops_) {
      if (op->trains && op->finished && op->step <= restored) continue;
      if (op->trains) {
        op->step = ++next_step_;
        ++event.replayed_batches;
      }
      submit_locked(*op);
    }
    baseline_restarts_ = restarts;
    recovering_ = false;
    if (startup) {
      resume_step_ = restored;
      started_ = true;
    } else {
      ++stats_.recoveries;
    }
  }
  changed_.notify_all();
  for (const OpPtr& op : failed_ops) op->fail(error);
  if (startup) {
    // Not a failure: the directories held an earlier run's checkpoints.
    TROUPE_LOG_INFO("Pipeline: resuming from step {}, the newest checkpoint every stage has", restored);
    return;
  }
  TROUPE_LOG_WARN("Pipeline: {}: restored step {}, replaying {} batches", event.reason, restored,
                  event.replayed_batches);
  if (options_.on_recovery) {
    try {
      options_.on_recovery(event);
    } catch (const std::exception& e) {
      TROUPE_LOG_WARN("Pipeline: on_recovery threw: {}", e.what());
    }
  }
}

void PipelineSupervisor::fatal(std::exception_ptr error) {
  std::vector<OpPtr> failed;
  {
    std::lock_guard lock(mutex_);
    broken_ = error;
    for (const OpPtr& op : ops_) {
      if (!op->delivered) failed.push_back(op);
    }
    ops_.clear();
    recovering_ = false;
  }
  changed_.notify_all();
  TROUPE_LOG_WARN("{}", describe_error(error));
  for (const OpPtr& op : failed) op->fail(error);
}

}  // namespace troupe::actors::detail
