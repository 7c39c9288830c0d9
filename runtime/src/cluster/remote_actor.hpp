// RemoteActor: a handle's view of an actor hosted by another process (the
// per-actor submitter). It keeps the calls not sent yet in its outbox, in
// submission order, and sends them through a CallSender while the actor
// is alive, numbering them per incarnation (seq 0, 1, 2, ... from each
// incarnation's first call). The head's updates (on_update) say where the
// actor lives and whether it is alive, restarting or dead.
//
// Delivery: every call sent is tied to the incarnation it was sent to.
// When an update names a newer incarnation (RESTARTING or ALIVE), the calls
// still unanswered by an older one are taken back from the calls in flight:
// with retries left (ActorOptions::max_task_retries, or the call's own)
// they are resent to the new incarnation before any newer call, in their
// original order, with fresh seqs; without, they fail with ActorDiedError
// saying the actor restarted. A DEAD update fails every call queued or in
// flight. A call waits in the outbox while the actor is pending or
// restarting, or while an argument produced in this process (or one whose
// value holds ObjectRefs: ArgSlot::resolve_here) is not ready.
//
// Bounds: at most max_pending_calls calls are pending (submitted and not
// answered) at once; past it a submit waits for room or fails with
// `overloaded`, as the policy says. A call's deadline (CallSpec::deadline)
// fails it with TimeoutError wherever it is, and asks the host to withdraw
// it if it was sent.
//
// Contract: any thread. One mutex guards the state; it is never held
// while a call is sent, a result completed, or anything of the runtime is
// called (only CallSender::take_sent/running, which take no runtime lock).
// One thread at a time sends (the pumper), so calls leave in order and
// take their seqs in that order; a change of incarnation seen by the
// pumper after a send takes that call back as the update would have.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <exception>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "call_sender.hpp"
#include "troupe/runtime/actor.hpp"
#include "troupe/runtime/registry.hpp"

namespace troupe::detail {

// What this process's calls to one actor may do (from its ActorOptions).
struct RemoteCallPolicy {
  int max_task_retries = 0;
  std::size_t max_pending_calls = ActorOptions::kDefaultMaxPendingCalls;
  Backpressure backpressure = Backpressure::block;
};

class RemoteActor final : public ActorCore, public std::enable_shared_from_this<RemoteActor> {
 public:
  using Policy = RemoteCallPolicy;
  // `sender` must outlive this actor (the runtime owns both).
  RemoteActor(CallSender& sender, ActorId id, const ClassInfo& cls, std::string name, bool owned,
              Policy policy = Policy{});
  ActorId id() const noexcept override { return id_; }
  const std::string& name() const noexcept override { return name_; }
  const ClassInfo& cls() const noexcept override { return cls_; }
  ActorState state() const override;
  std::string status_message() const override;
  int restarts() const override;
  std::vector<int> gpu_ids() const override;
  void submit(CallSpec call) override;
  void kill(bool no_restart) override;

  // From the head (any thread; updates may arrive out of order: one about
  // an older incarnation, or an earlier state of the same one, is ignored).
  void on_update(ActorState state, std::string address, std::uint32_t incarnation, std::string reason);
  // The runtime shut down: what waits here fails with `cancelled`.
  void close();
  bool owned() const noexcept { return owned_; }
  void set_gpus(std::vector<int> gpus);
  // The canceller of a call's result: withdraws it from the outbox (true),
  // or asks the host to withdraw it and returns the host's answer (true:
  // withdrawn before it started; false: started, answered, or no answer).
  bool cancel(const StatePtr& result);
  // Calls submitted and not answered yet (the count max_pending_calls bounds).
  std::size_t pending() const;
  std::uint32_t incarnation() const;

 private:
  // What is done once the mutex is released: results failed, loans
  // ended, and calls dropped (their arguments may hold the last reference
  // to objects whose release reaches the runtime).
  struct Aftermath {
    std::vector<std::pair<StatePtr, std::exception_ptr>> failures;
    std::vector<ObjectId> lent;
    std::vector<SentCall> taken;
    std::vector<CallSpec> dropped;
  };
  void pump();
  bool ready_to_send(const CallSpec& spec) const;
  // Takes back the calls in flight to incarnations below `below` (all with
  // nullopt): resent later if they have retries left and the actor lives,
  // else failed with `why`.
  void reclaim_locked(std::optional<std::uint32_t> below, const std::string& why, Aftermath& after);
  // Fails every call not sent yet with `error`.
  void fail_unsent_locked(const std::exception_ptr& error, Aftermath& after);
  std::exception_ptr wait_for_room_locked(std::unique_lock<std::mutex>& lock,
                                          std::chrono::steady_clock::time_point deadline);
  void call_done();
  void expire(const StatePtr& result, const MethodInfo* method);
  void finish(Aftermath& after);
  std::string label() const;

  CallSender& sender_;
  const ActorId id_;
  const ClassInfo& cls_;
  const std::string name_;
  const bool owned_;
  const Policy policy_;
  mutable std::mutex mutex_;
  ActorState state_ = ActorState::pending;
  std::string status_ = "pending";
  std::string address_;
  std::uint32_t incarnation_ = 0;
  int restarts_ = 0;
  bool closed_ = false;
  std::vector<int> gpus_;  // indices on its node, as CUDA_VISIBLE_DEVICES there
  std::deque<CallSpec> outbox_;              // never sent, in submission order
  std::map<std::uint64_t, CallSpec> resend_;  // taken back for a resend, by order; before outbox_
  std::uint64_t next_order_ = 0;
  // The seq of the next call sent to incarnation `seq_incarnation_`.
  std::uint32_t seq_incarnation_ = 0;
  std::uint64_t next_seq_ = 0;
  bool pumping_ = false;  // a thread is sending
  bool repump_ = false;   // and should look again before it stops
  std::size_t pending_ = 0;
  std::condition_variable room_;
  int room_waiters_ = 0;
};

}  // namespace troupe::detail
