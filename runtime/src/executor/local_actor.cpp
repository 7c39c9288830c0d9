// LocalActor: one actor of the actor executor (local mode, or the actor an
// actor host runs): its mailbox, its calls, its restarts.
#include "local_runtime.hpp"

#include <algorithm>
#include <optional>
#include <thread>

#include "troupe/runtime/logging.hpp"

namespace troupe::detail {
namespace {

// How many calls one pool thread runs for an actor before it yields the
// thread to other actors' work.
constexpr int kBatch = 64;

std::string actor_label(const ClassInfo& cls, const std::string& name, const ActorId& id) {
  std::string label = cls.name + "#" + id.short_hex();
  if (!name.empty()) label += " '" + name + "'";
  return label;
}

struct ContextScope {
  ContextScope(ActorId actor_id, const std::vector<int>* gpus, int incarnation, bool in_method)
      : context{actor_id, gpus, incarnation, in_method} {
    previous = current_context();
    current_context() = &context;
  }
  ~ContextScope() { current_context() = previous; }
  ActorContext context;
  ActorContext* previous;
};

}  // namespace

ActorContext*& current_context() noexcept {
  thread_local ActorContext* context = nullptr;
  return context;
}

HostedActorInfo& hosted_actor_info() noexcept {
  static HostedActorInfo info;
  return info;
}

ActorId current_actor() noexcept {
  auto* context = current_context();
  return context ? context->actor_id : ActorId{};
}

LocalActor::LocalActor(std::shared_ptr<LocalRuntime> runtime, ActorId id, const ClassInfo& cls,
                       std::vector<ArgSlot> ctor_args, ActorOptions options)
    : runtime_(std::move(runtime)),
      id_(id),
      cls_(cls),
      options_(std::move(options)),
      max_concurrency_(options_.max_concurrency),
      ctor_args_(std::move(ctor_args)),
      max_pending_(options_.max_pending_calls > 0 ? options_.max_pending_calls
                                                  : ActorOptions::kDefaultMaxPendingCalls) {
  if (options_.detached) own_threads_ = std::make_shared<ThreadPool>(max_concurrency_, ThreadPool::Growth::fixed);
}

void LocalActor::post_work(std::function<void()> fn) {
  if (own_threads_) own_threads_->post(std::move(fn));
  else runtime_->pool().post(std::move(fn));
}

LocalActor::~LocalActor() {
  // The last handle is gone: nothing can call this actor any more. Whatever
  // is still queued cannot be waited on by anyone but its own refs.
  std::vector<TaskPtr> failed;
  std::optional<Allocation> freed;
  {
    std::lock_guard lock(mutex_);
    if (state_ != ActorState::dead) die_locked("all handles to the actor were dropped", failed, freed);
  }
  for (auto& task : failed)
    task->spec.result->set_error(make_error(Errc::actor_died, status_));
  if (freed && runtime_) runtime_->release(*freed);
  if (own_threads_ && own_threads_->on_pool_thread()) {
    // The last reference went on one of the actor's own threads, which
    // cannot join itself: another thread stops them once this handler ends.
    std::thread([threads = std::move(own_threads_)] { threads->stop(); }).detach();
  }
}

ActorState LocalActor::state() const {
  std::lock_guard lock(mutex_);
  return state_;
}

std::string LocalActor::status_message() const {
  std::lock_guard lock(mutex_);
  return status_;
}

int LocalActor::restarts() const {
  std::lock_guard lock(mutex_);
  return restarts_;
}

std::vector<int> LocalActor::gpu_ids() const {
  std::lock_guard lock(mutex_);
  return gpus_;
}

void LocalActor::set_pending_reason(std::string reason) {
  std::lock_guard lock(mutex_);
  if (state_ == ActorState::pending) status_ = std::move(reason);
}

void LocalActor::placed(Allocation allocation) {
  {
    std::unique_lock lock(mutex_);
    if (state_ == ActorState::dead) {
      lock.unlock();
      runtime_->release(allocation);  // killed while waiting: give it straight back
      return;
    }
    gpus_ = allocation.decision.gpus;
    allocation_ = std::move(allocation);
    status_ = "constructing";
  }
  start_construction();
}

void LocalActor::start_construction() {
  // Constructor arguments that are refs must resolve first.
  auto self = shared_from_this();
  auto unresolved = std::make_shared<std::atomic<int>>(1);
  for (auto& slot : ctor_args_) {
    if (!slot.value && slot.ref && !slot.ref->is_ready()) {
      unresolved->fetch_add(1);
      slot.ref->on_complete([self, unresolved] {
        if (unresolved->fetch_sub(1) == 1) self->post_work([self] { self->construct(); });
      });
    }
  }
  if (unresolved->fetch_sub(1) == 1) post_work([self] { self->construct(); });
}

void LocalActor::construct() {
  std::vector<int> gpus;
  int incarnation = 0;
  {
    std::lock_guard lock(mutex_);
    if (state_ == ActorState::dead || constructing_) return;
    constructing_ = true;
    gpus = gpus_;
    incarnation = restarts_;
  }
  std::string failure;
  std::shared_ptr<void> instance;
  ArgValues values;
  values.reserve(ctor_args_.size());
  for (auto& slot : ctor_args_) {
    if (slot.value) {
      values.push_back(slot.value);  // shared with ctor_args_: copied, kept for restarts
    } else if (slot.ref->has_error()) {
      auto info = describe(slot.ref->error());
      failure = "a constructor argument failed: " + info.type + ": " + info.message;
      break;
    } else {
      values.push_back(slot.ref->value());
    }
  }
  if (failure.empty()) {
    ContextScope scope(id_, &gpus, incarnation, /*in_method=*/false);
    try {
      instance = std::shared_ptr<void>(cls_.construct(values), cls_.destroy);
    } catch (...) {
      auto info = describe(std::current_exception());
      failure = "constructor of " + cls_.name + " threw " + info.type + ": " + info.message;
    }
  }
  std::vector<TaskPtr> failed;
  std::optional<Allocation> freed;
  {
    std::lock_guard lock(mutex_);
    constructing_ = false;
    if (state_ == ActorState::dead) {
      instance.reset();
    } else if (!failure.empty()) {
      die_locked(failure, failed, freed);
    } else {
      instance_ = std::move(instance);
      state_ = ActorState::alive;
      status_ = "alive";
    }
  }
  if (!failure.empty()) {
    TROUPE_LOG_WARN("actor {} died: {}", actor_label(cls_, options_.name, id_), failure);
    finish_death(Errc::actor_died, failure, failed, freed);
    return;
  }
  schedule();
}

void LocalActor::submit(CallSpec call) {
  enqueue(std::move(call), caller_id(current_actor()), Admission::local);
}

void LocalActor::submit_from(CallSpec call, CallerId caller) {
  enqueue(std::move(call), caller, Admission::remote);
}

std::exception_ptr LocalActor::wait_for_room_locked(std::unique_lock<std::mutex>& lock,
                                                    std::chrono::steady_clock::time_point deadline) {
  // A pool thread that waits gets a stand-in (the calls that make room
  // may need a thread), made outside the lock.
  std::optional<BlockingRegion> region;
  while (pending_ >= max_pending_) {
    if (state_ == ActorState::dead || !runtime_->running()) return nullptr;  // enqueue says why
    const auto now = std::chrono::steady_clock::now();
    if (now >= deadline) {
      return make_error(Errc::timeout, actor_label(cls_, options_.name, id_) + " had " +
                                           std::to_string(pending_) +
                                           " calls pending (max_pending_calls) until the call's deadline passed");
    }
    if (!region) {
      lock.unlock();
      region.emplace();
      lock.lock();
      continue;
    }
    ++room_waiters_;
    room_.wait_until(lock, std::min(deadline, now + std::chrono::milliseconds(200)));
    --room_waiters_;
  }
  return nullptr;
}

void LocalActor::enqueue(CallSpec call, CallerId caller, Admission admission) {
  auto task = std::make_shared<Task>();
  task->spec = std::move(call);
  task->caller = caller;
  if (!task->spec.retries) task->spec.retries = options_.max_task_retries;
  const auto deadline = task->spec.deadline;
  // The arguments still pending now; exactly these get a callback below
  // (one that completes in between runs its callback at registration).
  std::vector<StatePtr> pending;
  for (const auto& slot : task->spec.args) {
    if (!slot.value && slot.ref && !slot.ref->is_ready()) pending.push_back(slot.ref);
  }
  task->unresolved.store(static_cast<int>(pending.size()) + 1, std::memory_order_relaxed);  // +1: guard
  {
    std::unique_lock lock(mutex_);
    std::exception_ptr refused;
    if (admission == Admission::remote) {
      auto queue = queues_.find(caller);
      if (queue != queues_.end() && queue->second.size() >= max_pending_) {
        refused = make_error(Errc::overloaded, actor_label(cls_, options_.name, id_) + " has " +
                                                   std::to_string(queue->second.size()) +
                                                   " calls queued from this caller (max_pending_calls " +
                                                   std::to_string(max_pending_) + "); not queued");
      }
    } else if (pending_ >= max_pending_ && state_ != ActorState::dead) {
      // An actor calling itself would wait for itself: it fails instead.
      if (options_.backpressure == Backpressure::fail || current_actor() == id_) {
        refused = make_error(Errc::overloaded, actor_label(cls_, options_.name, id_) + " has " +
                                                   std::to_string(pending_) + " calls pending (max_pending_calls " +
                                                   std::to_string(max_pending_) + "); not queued");
      } else {
        refused = wait_for_room_locked(lock, deadline);
      }
    }
    if (!refused && (state_ == ActorState::dead || !runtime_->running())) {
      std::string why = state_ == ActorState::dead ? status_ : "the runtime is shut down";
      refused = make_error(runtime_->running() ? Errc::actor_died : Errc::cancelled,
                           actor_label(cls_, options_.name, id_) + " cannot take calls: " + why);
    }
    if (refused) {
      lock.unlock();
      task->spec.result->set_error(refused);
      return;
    }
    task->seq = next_seq_++;
    task->where = Where::queued;
    ++pending_;
    queues_[task->caller].push_back(task);
    if (withdrawn_queued_ > 1024 && withdrawn_queued_ > pending_) sweep_withdrawn_locked();
  }
  std::weak_ptr<LocalActor> weak_self = weak_from_this();
  std::weak_ptr<Task> weak_task = task;
  task->spec.result->set_canceller([weak_self, weak_task] {
    auto self = weak_self.lock();
    auto t = weak_task.lock();
    return self && t &&
           self->withdraw(t, make_error(Errc::cancelled, t->spec.method->qualified + " was cancelled before it started"));
  });
  if (deadline != std::chrono::steady_clock::time_point::max()) {
    runtime_->deadlines().add(deadline, task->spec.result, [weak_self, weak_task] {
      auto self = weak_self.lock();
      auto t = weak_task.lock();
      if (self && t) self->expire(t);
    });
  }
  if (!pending.empty()) {
    auto self = shared_from_this();
    for (const auto& ref : pending) {
      ref->on_complete([self, task] {
        if (task->unresolved.fetch_sub(1, std::memory_order_acq_rel) == 1) self->schedule();
      });
    }
  }
  if (task->unresolved.fetch_sub(1, std::memory_order_acq_rel) == 1) schedule();
}

LocalActor::TaskPtr LocalActor::pick_ready_locked() {
  TaskPtr best;
  std::deque<TaskPtr>* best_queue = nullptr;
  for (auto it = queues_.begin(); it != queues_.end();) {
    auto& queue = it->second;
    while (!queue.empty() && queue.front()->where == Where::withdrawn) {
      queue.pop_front();
      --withdrawn_queued_;
    }
    if (queue.empty()) {
      it = queues_.erase(it);
      continue;
    }
    const auto& head = queue.front();
    if (head->unresolved.load(std::memory_order_acquire) == 0 && (!best || head->seq < best->seq)) {
      best = head;
      best_queue = &queue;
    }
    ++it;
  }
  if (best) {
    best_queue->pop_front();
    best->where = Where::running;
  }
  return best;
}

void LocalActor::schedule() {
  std::vector<TaskPtr> to_start;
  {
    std::lock_guard lock(mutex_);
    if (state_ != ActorState::alive) return;
    while (static_cast<int>(running_.size()) < max_concurrency_) {
      auto task = pick_ready_locked();
      if (!task) break;
      running_.push_back(task);
      to_start.push_back(std::move(task));
    }
  }
  if (to_start.empty()) return;
  auto self = shared_from_this();
  if (own_threads_) {
    for (auto& task : to_start)
      own_threads_->post([self, task = std::move(task)]() mutable { self->run_loop(std::move(task)); });
    return;
  }
  // post_or_defer: a call that arrived on the call plane may run on the
  // thread that received it (see CallPlane), saving a wake-up.
  auto& pool = runtime_->pool();
  for (auto& task : to_start)
    pool.post_or_defer([self, task = std::move(task)]() mutable { self->run_loop(std::move(task)); });
}

void LocalActor::run_loop(TaskPtr task) {
  // Keep running this actor's ready calls on this thread: each call handed
  // to another thread would cost a wake-up.
  for (int i = 0; task; ++i) {
    run(task);
    std::lock_guard lock(mutex_);
    running_.erase(std::find(running_.begin(), running_.end(), task));
    leave_locked(*task, Where::done);
    task.reset();
    if (state_ != ActorState::alive) break;
    if (i + 1 >= kBatch) break;
    task = pick_ready_locked();
    if (task) running_.push_back(task);
  }
  schedule();
}

void LocalActor::run(const TaskPtr& task) {
  auto& spec = task->spec;
  std::shared_ptr<void> instance;
  std::vector<int> gpus;
  int incarnation = 0;
  {
    // From here on the call has started: a cancel or a deadline no longer
    // withdraws it.
    std::lock_guard lock(mutex_);
    if (task->where == Where::withdrawn) return;
    task->started = true;
    instance = instance_;
    gpus = gpus_;
    incarnation = restarts_;
  }
  if (spec.result->is_ready()) return;  // killed meanwhile
  ArgValues values;
  values.reserve(spec.args.size());
  for (auto& slot : spec.args) {
    if (slot.value) {
      values.push_back(std::move(slot.value));
    } else if (slot.ref->has_error()) {
      spec.result->set_error(slot.ref->error());  // a failed input fails the call, unchanged
      spec.args.clear();
      return;
    } else {
      values.push_back(slot.ref->value());
    }
  }
  spec.args.clear();  // values now hold the only references a call owns
  if (!instance) {
    spec.result->set_error(make_error(Errc::actor_died, "actor instance is gone"));
    return;
  }
  InvokeResult result;
  bool exit_requested = false;
  try {
    ContextScope scope(id_, &gpus, incarnation, /*in_method=*/true);
    // Read when the method is left, by return or by exception.
    struct ExitFlag {
      const ActorContext& context;
      bool& out;
      ~ExitFlag() { out = context.exit_requested; }
    } exit_flag{scope.context, exit_requested};
    result = spec.method->invoke(instance.get(), values);
  } catch (const ArgumentDecodeError& e) {
    spec.result->set_error(make_error(Errc::serialization, spec.method->qualified +
                                                               ": an argument could not be decoded: " + e.message()));
    if (exit_requested) exit_self(spec.method->qualified);
    return;
  } catch (...) {
    auto info = describe(std::current_exception());
    spec.result->set_error(make_error(Errc::task_failed,
                                      spec.method->qualified + " threw " + info.type + ": " + info.message,
                                      info.type));
    if (exit_requested) exit_self(spec.method->qualified);
    return;
  }
  values.clear();
  if (result.pending) {
    forward_state(result.pending, spec.result);
  } else {
    spec.result->set_value(std::move(result.value));
  }
  // The exiting call's result is out first; then the actor ends.
  if (exit_requested) exit_self(spec.method->qualified);
}

void LocalActor::set_exit_hook(std::function<void(const std::string& reason)> hook) {
  std::lock_guard lock(mutex_);
  exit_hook_ = std::move(hook);
}

void LocalActor::exit_self(const std::string& method) {
  std::vector<TaskPtr> failed;
  std::optional<Allocation> freed;
  std::function<void(const std::string&)> hook;
  const std::string reason = "it exited: " + method + " called troupe::exit_actor()";
  {
    std::lock_guard lock(mutex_);
    if (state_ == ActorState::dead) return;
    die_locked(reason, failed, freed);  // for good: exit_actor() never restarts it
    hook = exit_hook_;
  }
  TROUPE_LOG_INFO("actor {} {}", actor_label(cls_, options_.name, id_), reason);
  finish_death(Errc::actor_died, reason, failed, freed);
  if (hook) hook(reason);
}

void LocalActor::leave_locked(Task& task, Where to) {
  if (task.where == Where::queued || task.where == Where::running) {
    --pending_;
    if (room_waiters_ > 0) room_.notify_all();
  }
  task.where = to;
}

bool LocalActor::withdraw(const TaskPtr& task, const std::exception_ptr& error) {
  {
    std::lock_guard lock(mutex_);
    if (task->where == Where::queued) {
      leave_locked(*task, Where::withdrawn);
      ++withdrawn_queued_;
    } else if (task->where == Where::running && !task->started) {
      leave_locked(*task, Where::withdrawn);  // picked, not started: run() skips it
    } else {
      return false;
    }
  }
  bool withdrawn = task->spec.result->set_error(error);
  schedule();  // the withdrawn call may have been blocking its caller's queue
  return withdrawn;
}

void LocalActor::expire(const TaskPtr& task) {
  const std::string& method = task->spec.method->qualified;
  if (withdraw(task, make_error(Errc::timeout, method + " did not start before its deadline; withdrawn, never run")))
    return;
  // Started already: the caller stops waiting, the method runs on.
  task->spec.result->set_error(make_error(
      Errc::timeout, method + " did not finish before its deadline; it runs on, its result is dropped"));
}

void LocalActor::sweep_withdrawn_locked() {
  for (auto it = queues_.begin(); it != queues_.end();) {
    std::erase_if(it->second, [](const TaskPtr& task) { return task->where == Where::withdrawn; });
    it = it->second.empty() ? queues_.erase(it) : std::next(it);
  }
  withdrawn_queued_ = 0;
}

void LocalActor::fail_queued_locked(std::vector<TaskPtr>& out) {
  for (auto& [caller, queue] : queues_) {
    for (auto& task : queue) {
      if (task->where == Where::withdrawn) continue;
      leave_locked(*task, Where::done);
      out.push_back(task);
    }
  }
  queues_.clear();
  withdrawn_queued_ = 0;
  for (auto& task : running_) out.push_back(task);  // they finish, but their results are void
  if (room_waiters_ > 0) room_.notify_all();
}

void LocalActor::keep_retried_locked(std::vector<TaskPtr>& out) {
  for (auto it = queues_.begin(); it != queues_.end();) {
    auto& queue = it->second;
    std::erase_if(queue, [&](const TaskPtr& task) {
      if (task->where == Where::withdrawn) return true;
      int& retries = *task->spec.retries;
      if (retries == 0) {
        leave_locked(*task, Where::done);
        out.push_back(task);
        return true;
      }
      if (retries > 0) --retries;
      return false;  // stays queued for the new instance
    });
    it = queue.empty() ? queues_.erase(it) : std::next(it);
  }
  withdrawn_queued_ = 0;
  // A running call ends on the old instance; with retries left its result
  // stands (it ran once), without it fails as the instance is gone.
  for (auto& task : running_)
    if (*task->spec.retries == 0) out.push_back(task);
}

void LocalActor::release_resources_locked(std::optional<Allocation>& out) {
  if (allocation_) {
    out = std::move(allocation_);
    allocation_.reset();
  }
}

void LocalActor::die_locked(std::string reason, std::vector<TaskPtr>& failed,
                            std::optional<Allocation>& freed) {
  state_ = ActorState::dead;
  status_ = std::move(reason);
  instance_.reset();
  fail_queued_locked(failed);
  release_resources_locked(freed);
}

void LocalActor::finish_death(Errc code, const std::string& reason, std::vector<TaskPtr>& failed,
                              std::optional<Allocation>& freed) {
  const std::string message = actor_label(cls_, options_.name, id_) + " died: " + reason;
  for (auto& task : failed) task->spec.result->set_error(make_error(code, message));
  if (freed) runtime_->release(*freed);
  runtime_->forget(*this);
}

void LocalActor::kill(bool no_restart) {
  std::vector<TaskPtr> failed;
  std::optional<Allocation> freed;
  bool restart = false;
  {
    std::lock_guard lock(mutex_);
    if (state_ == ActorState::dead) return;
    const bool can_restart = options_.max_restarts < 0 || restarts_ < options_.max_restarts;
    if (!no_restart && can_restart && state_ != ActorState::pending) {
      // Ray semantics: calls in flight when the actor dies fail, unless
      // they have retries left (max_task_retries): then the queued ones wait
      // for the rebuilt actor (from the same constructor arguments), which
      // serves them, in order, before later calls.
      state_ = ActorState::restarting;
      status_ = "restarting after kill";
      ++restarts_;
      instance_.reset();
      keep_retried_locked(failed);
      restart = true;
    } else {
      die_locked(no_restart ? "killed" : "killed, no restarts left", failed, freed);
    }
  }
  const std::string message = actor_label(cls_, options_.name, id_) +
                              (restart ? " was killed and restarted (the call had no retries left)" : " was killed");
  for (auto& task : failed) task->spec.result->set_error(make_error(Errc::actor_died, message));
  if (restart) {
    auto self = shared_from_this();
    post_work([self] { self->construct(); });
  } else {
    if (freed) runtime_->release(*freed);
    runtime_->forget(*this);
  }
}

void LocalActor::terminate(Errc code, const std::string& why) {
  std::vector<TaskPtr> failed;
  std::optional<Allocation> freed;
  {
    std::lock_guard lock(mutex_);
    if (state_ == ActorState::dead) return;
    die_locked(why, failed, freed);
  }
  const std::string message = actor_label(cls_, options_.name, id_) + ": " + why;
  for (auto& task : failed) task->spec.result->set_error(make_error(code, message));
  if (freed && runtime_->running()) runtime_->release(*freed);
}

}  // namespace troupe::detail
