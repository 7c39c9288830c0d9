// The actor executor: runs actors as objects in this process. It is the
// whole of local mode (no TROUPE_ADDRESS: every actor lives in the driver),
// and inside an actor host (cluster mode) it runs the one hosted actor,
// whose calls arrive over the call plane (cluster/call_server.hpp).
// Each actor has a mailbox served by the runtime's thread pool, at most
// max_concurrency calls at a time, started in the order each caller made
// them (the pool adds spare threads while all of its threads are stuck in
// long calls, so max_concurrency holds whatever its size). A detached actor
// (ActorOptions::detached) has max_concurrency threads of its own instead:
// its constructor and methods run only there, never on the shared pool. Placement uses the same scheduler code as the head, over one node
// (this machine, with its detected or declared GPUs).
#pragma once

#include <condition_variable>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "backend.hpp"
#include "deadline_queue.hpp"
#include "thread_pool.hpp"
#include "troupe/runtime/actor.hpp"
#include "troupe/runtime/runtime.hpp"
#include "troupe/scheduler/placement.hpp"
#include "troupe/scheduler/placement_group.hpp"
#include "troupe/scheduler/resources.hpp"

namespace troupe::detail {

class LocalRuntime;

// Thread-local "who is running here": set while an actor's constructor or
// method runs, so nested calls know their caller and get_gpu_ids() works.
struct ActorContext {
  ActorId actor_id;
  const std::vector<int>* gpus = nullptr;
  int incarnation = 0;          // restarts of the actor in this executor
  bool in_method = false;       // false while the constructor runs
  bool exit_requested = false;  // troupe::exit_actor() was called by this method
};
ActorContext*& current_context() noexcept;

// In an actor host (cluster mode), what the head said about the one actor
// this process runs: its incarnation and its GPUs' indices on the node (the
// executor sees them renumbered from 0, as CUDA_VISIBLE_DEVICES does).
// Set once by the ActorHost, before the actor is constructed.
struct HostedActorInfo {
  bool hosted = false;
  int incarnation = 0;
  std::vector<int> node_gpus;
};
HostedActorInfo& hosted_actor_info() noexcept;
// The actor running on this thread; nil outside actors.
ActorId current_actor() noexcept;

// Whose calls an actor keeps in one FIFO (docs/architecture.md: calls from one
// caller run in the order they were made). In this process the caller is the
// actor running on the submitting thread (nil for the driver's own threads);
// a call from another process is keyed by that process's worker id, which is
// unique per process, so a driver's threads share one FIFO as they do here.
using CallerId = BasicId<struct CallerTag>;
inline CallerId caller_id(const ActorId& actor) noexcept { return CallerId{actor.hi(), actor.lo()}; }
inline CallerId caller_id(const WorkerId& worker) noexcept { return CallerId{worker.hi(), worker.lo()}; }

// Where an actor's resources came from, so they can be given back.
struct Allocation {
  scheduler::PlacementDecision decision;  // node index 0, or the bundle's node
  std::shared_ptr<GroupCore> group;       // set when taken from a bundle
  int bundle = -1;
};

class GroupCore {
 public:
  GroupCore(PlacementGroupId id, std::string name, std::vector<scheduler::Bundle> bundles,
            scheduler::Strategy strategy);
  PlacementGroupId id;
  std::string name;
  std::vector<scheduler::Bundle> bundles;
  scheduler::Strategy strategy;
  Promise<void> ready_promise;
  ObjectRef<void> ready_ref;

  // Guarded by LocalRuntime::mutex_.
  bool placed = false;
  bool removed = false;
  std::string reason;
  scheduler::GroupPlacement placement;
  std::vector<scheduler::NodeState> bundle_nodes;  // one per bundle, once placed
};

class LocalActor final : public ActorCore, public std::enable_shared_from_this<LocalActor> {
 public:
  LocalActor(std::shared_ptr<LocalRuntime> runtime, ActorId id, const ClassInfo& cls,
             std::vector<ArgSlot> ctor_args, ActorOptions options);
  ~LocalActor() override;

  ActorId id() const noexcept override { return id_; }
  const std::string& name() const noexcept override { return options_.name; }
  const ClassInfo& cls() const noexcept override { return cls_; }
  ActorState state() const override;
  std::string status_message() const override;
  int restarts() const override;
  std::vector<int> gpu_ids() const override;
  // A call from this process: past max_pending_calls pending calls (queued
  // or running, all callers) it waits for room or fails with `overloaded`,
  // as options().backpressure says (an actor calling itself never waits).
  void submit(CallSpec call) override;
  // A call that arrived from `caller` over the wire (an actor host's call
  // server): never waits; past max_pending_calls calls queued from that
  // caller it fails at once with `overloaded`.
  void submit_from(CallSpec call, CallerId caller);
  void kill(bool no_restart) override;

  const ActorOptions& options() const noexcept { return options_; }
  // Called by the runtime once resources are held (or with a reason while not).
  void placed(Allocation allocation);
  void set_pending_reason(std::string reason);
  // Fails everything and drops the instance; used by shutdown and group removal.
  void terminate(Errc code, const std::string& why);
  // Called (on the thread of the call that exited) once the actor ended
  // itself with troupe::exit_actor(); an actor host reports it to the head.
  void set_exit_hook(std::function<void(const std::string& reason)> hook);

 private:
  // Where a task is; guarded by mutex_. `pending_` counts the queued and
  // running ones; a withdrawn task (cancelled, or past its deadline, before
  // it started) stays in its queue (or running_, when picked but not
  // started) until popped, swept or skipped.
  enum class Where { queued, running, done, withdrawn };
  struct Task {
    CallSpec spec;
    std::uint64_t seq = 0;
    CallerId caller;
    std::atomic<int> unresolved{0};
    Where where = Where::queued;
    bool started = false;  // run() began it (a withdraw comes too late); guarded by mutex_
  };
  using TaskPtr = std::shared_ptr<Task>;
  enum class Admission { local, remote };

  void start_construction();
  void construct();
  // Runs `fn` where this actor's work runs: its own threads when detached,
  // else the runtime's pool.
  void post_work(std::function<void()> fn);
  void schedule();
  TaskPtr pick_ready_locked();
  void run_loop(TaskPtr task);
  void run(const TaskPtr& task);
  void enqueue(CallSpec call, CallerId caller, Admission admission);
  // Waits (lock held on entry and exit) until fewer than max_pending_
  // calls are pending; returns why not (dead, shut down, deadline) or null.
  std::exception_ptr wait_for_room_locked(std::unique_lock<std::mutex>& lock,
                                          std::chrono::steady_clock::time_point deadline);
  // Takes a queued task out with `error` (true); false once it started.
  bool withdraw(const TaskPtr& task, const std::exception_ptr& error);
  void expire(const TaskPtr& task);
  void leave_locked(Task& task, Where to);  // a queued or running task is done
  void sweep_withdrawn_locked();
  void fail_queued_locked(std::vector<TaskPtr>& out);
  // Restart: the queued tasks with retries left stay queued (one retry
  // used), the others and the running ones without retries go to `out`.
  void keep_retried_locked(std::vector<TaskPtr>& out);
  void release_resources_locked(std::optional<Allocation>& out);
  void die_locked(std::string reason, std::vector<TaskPtr>& failed, std::optional<Allocation>& freed);
  void finish_death(Errc code, const std::string& reason, std::vector<TaskPtr>& failed,
                    std::optional<Allocation>& freed);
  // troupe::exit_actor() was called by `method`, which has returned.
  void exit_self(const std::string& method);

  std::shared_ptr<LocalRuntime> runtime_;
  const ActorId id_;
  const ClassInfo& cls_;
  const ActorOptions options_;
  const int max_concurrency_;
  std::vector<ArgSlot> ctor_args_;
  // A detached actor's own threads (max_concurrency of them); null otherwise.
  std::shared_ptr<ThreadPool> own_threads_;

  mutable std::mutex mutex_;
  ActorState state_ = ActorState::pending;
  std::string status_ = "waiting for placement";
  bool constructing_ = false;
  std::shared_ptr<void> instance_;
  std::optional<Allocation> allocation_;
  std::vector<int> gpus_;
  std::map<CallerId, std::deque<TaskPtr>> queues_;  // per caller, in call order
  std::vector<TaskPtr> running_;
  std::uint64_t next_seq_ = 0;
  int restarts_ = 0;
  const std::size_t max_pending_;
  std::size_t pending_ = 0;           // tasks queued or running
  std::size_t withdrawn_queued_ = 0;  // withdrawn tasks still in queues_
  std::condition_variable room_;      // pending_ fell, or the actor died
  int room_waiters_ = 0;
  std::function<void(const std::string&)> exit_hook_;
};

class LocalRuntime final : public Backend, public std::enable_shared_from_this<LocalRuntime> {
 public:
  explicit LocalRuntime(const InitOptions& options);
  ~LocalRuntime();

  ThreadPool& pool() noexcept override { return pool_; }
  bool running() const noexcept override { return running_.load(std::memory_order_acquire); }

  std::shared_ptr<ActorCore> create_actor(const ClassInfo& cls, std::vector<ArgSlot> ctor_args,
                                          ActorOptions options) override;
  // As create_actor, under an id chosen elsewhere: an actor host runs the
  // actor its driver named, so current_actor_id() there is the handle's id.
  std::shared_ptr<LocalActor> create_actor_as(ActorId id, const ClassInfo& cls, std::vector<ArgSlot> ctor_args,
                                              ActorOptions options);
  std::shared_ptr<ActorCore> find(std::string_view name, std::string_view name_space) override;
  std::shared_ptr<ActorCore> find(const ActorId& id) override;
  void forget(const LocalActor& actor);  // on death: drop name and index
  void release(const Allocation& allocation);
  // Call deadlines (CallOptions::timeout), served on this runtime's pool.
  DeadlineQueue& deadlines() noexcept { return *deadlines_; }

  PlacementGroup create_group(std::vector<ResourceSpec> bundles, PlacementStrategy strategy,
                              std::string name) override;
  void remove_group(const std::shared_ptr<GroupCore>& group) override;
  std::string group_reason(const GroupCore& group) override;
  std::vector<PlacementGroup> list_groups(std::string_view name) override;

  std::map<std::string, double> total_resources() override;
  std::vector<NodeDescription> nodes() override;
  std::map<std::string, double> free_resources() override;
  std::size_t live_actor_count() override;
  void shutdown() override;
  // Cluster mode's actor host runs its one actor on a local runtime and
  // feeds it calls from the wire, with the remote caller's id.

 private:
  // Tries to place `actor`; returns false (with reason set) when it must wait.
  bool try_place_locked(LocalActor& actor, Allocation& out, std::string& reason);
  void retry_waiting();
  void retry_groups_locked();

  ThreadPool pool_;
  std::shared_ptr<DeadlineQueue> deadlines_;  // after pool_: its timer goes first
  std::atomic<bool> running_{true};
  std::mutex mutex_;
  std::vector<scheduler::NodeState> nodes_;  // exactly one: this machine
  std::unordered_map<ActorId, std::weak_ptr<LocalActor>> by_id_;
  // Keyed by named_key(namespace, name).
  std::map<std::string, std::shared_ptr<LocalActor>, std::less<>> named_;
  std::vector<std::weak_ptr<LocalActor>> waiting_;  // unplaced, in creation order
  std::vector<std::shared_ptr<GroupCore>> groups_;
};


scheduler::ResourceRequest to_request(const ResourceSpec& spec);
// Throws Error(invalid_argument) for options no backend can honour.
void validate_actor_options(const ActorOptions& options);

}  // namespace troupe::detail
