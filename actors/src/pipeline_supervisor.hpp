// The fault-tolerant side of Pipeline (PipelineOptions::checkpoint_every >
// 0): every operation on the stages (a batch, a predict, a query) goes
// through one ordered list; a supervisor thread hands results back in order
// and, when a stage restarts, rolls every stage back to a common checkpoint
// and submits the operations from there again. See pipeline.hpp.
//
// Threads. The user's thread appends operations (submit_batch, predict,
// ...) and submits their calls at once unless a recovery is under way; the
// supervisor thread waits for the oldest operation, checks the stages'
// health between waits and runs recoveries. One mutex guards the list and
// the counters; calls are submitted under it (submission never blocks), and
// promises are fulfilled and the on_recovery callback run outside it.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "troupe/actors/pipeline.hpp"

namespace troupe::actors::detail {

ObjectRef<Tensor> submit_predict_calls(const std::vector<ActorHandle<PipelineStage>>& stages, const Tensor& x,
                                       std::vector<ObjectRefBase>* calls);

class PipelineSupervisor {
 public:
  PipelineSupervisor(std::vector<ActorHandle<PipelineStage>> stages, PipelineOptions options);
  ~PipelineSupervisor();
  PipelineSupervisor(const PipelineSupervisor&) = delete;
  PipelineSupervisor& operator=(const PipelineSupervisor&) = delete;

  ObjectRef<float> submit_batch(const Tensor& x, const Tensor& labels, int micro_batches, Schedule schedule);
  ObjectRef<Tensor> predict(const Tensor& x);
  ObjectRef<std::vector<std::vector<Tensor>>> parameters();
  ObjectRef<std::vector<StageStats>> stats();
  std::int64_t resume_step();
  RecoveryStats stats_snapshot() const;

 private:
  struct Op;
  // One submission of an operation's calls.
  struct Attempt {
    ObjectRefBase done;                 // completes once every call of the attempt has
    std::vector<ObjectRefBase> calls;   // every call, to cancel after a failure
    // After `done` completed without an error (under the lock): "" and,
    // in `deliver`, what to run outside the lock; or why the stages
    // disagree (a recovery follows).
    std::function<std::string(Op&, std::function<void()>& deliver)> finish;
  };
  struct Op {
    bool trains = false;
    std::int64_t step = 0;   // trains: every stage's step count after it
    bool submitted = false;  // the current attempt's calls are out
    bool finished = false;   // the current attempt completed and was checked
    bool delivered = false;  // the promise has its value
    float loss = 0;          // trains, once delivered
    Attempt attempt;
    std::function<Attempt()> submit;               // under the lock; never blocks
    std::function<void(std::exception_ptr)> fail;  // outside the lock
  };
  using OpPtr = std::shared_ptr<Op>;
  struct Stopping {};

  template <class T>
  ObjectRef<T> enqueue_query(std::function<ObjectRef<T>(std::vector<ObjectRefBase>&)> make);
  void enqueue(const OpPtr& op);
  void submit_locked(Op& op);

  void run();
  bool handle_oldest(std::unique_lock<std::mutex>& lock);
  // "" when every stage is as the last recovery left it, else what changed.
  std::string health_check() const;
  void recover(const std::string& why, const OpPtr& failed, std::exception_ptr error, bool startup);
  void wait_alive(std::chrono::steady_clock::time_point deadline);
  bool wait_ready(const ObjectRefBase& ref, std::chrono::steady_clock::time_point deadline);
  void fatal(std::exception_ptr error);
  void check_stop() const;

  const std::vector<ActorHandle<PipelineStage>> stages_;
  const PipelineOptions options_;

  mutable std::mutex mutex_;
  std::condition_variable changed_;
  bool stop_ = false;
  bool recovering_ = true;  // until the start-up check is done
  bool started_ = false;
  std::exception_ptr broken_;
  std::deque<OpPtr> ops_;
  std::int64_t next_step_ = 0;       // the step number the next train op gets, minus one
  std::int64_t committed_ = 0;       // the last step handed back
  std::int64_t resume_step_ = 0;
  std::deque<std::int64_t> commons_;  // common checkpoints the driver can still replay from, ascending
  std::int64_t next_micro_batch_ = 0;
  std::vector<int> baseline_restarts_;
  int recoveries_in_a_row_ = 0;
  RecoveryStats stats_;

  std::thread thread_;
};

}  // namespace troupe::actors::detail
