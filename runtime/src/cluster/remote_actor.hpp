// RemoteActor: a handle's view of an actor hosted by another process (the
// per-actor submitter). It keeps the calls not sent yet in its outbox, in
// submission order, and sends them through a CallSender while the actor
// is alive, numbering them per incarnation (seq 0, 1, 2, ... from each
// incarnation's first call). The head's updates (on_update) say where the
// actor lives and whether it is alive, restarting or dead.
//
// Contract: any thread (one mutex; held while a call is handed to the
// CallSender, so that calls leave in submission order and take their seq
// in that order, and while a call that could not be sent is failed). A call waits in the outbox while the actor is pending
// or restarting, or while an argument produced in this process is not
// ready; it fails with actor_died once the actor is dead, and with
// `cancelled` once the runtime shut down.
#pragma once

#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "call_sender.hpp"
#include "troupe/runtime/actor.hpp"
#include "troupe/runtime/registry.hpp"

namespace troupe::detail {

class RemoteActor final : public ActorCore, public std::enable_shared_from_this<RemoteActor> {
 public:
  // `sender` must outlive this actor (the runtime owns both).
  RemoteActor(CallSender& sender, ActorId id, const ClassInfo& cls, std::string name, bool owned);
  ActorId id() const noexcept override { return id_; }
  const std::string& name() const noexcept override { return name_; }
  const ClassInfo& cls() const noexcept override { return cls_; }
  ActorState state() const override;
  std::string status_message() const override;
  int restarts() const override;
  std::vector<int> gpu_ids() const override;
  void submit(CallSpec call) override;
  void kill(bool no_restart) override;

  // From the head (control thread).
  void on_update(ActorState state, std::string address, std::uint32_t incarnation, std::string reason);
  bool owned() const noexcept { return owned_; }
  void set_gpus(std::vector<int> gpus);
  // The canceller of a call's result: withdraws it from the outbox (true),
  // or asks the host to withdraw it (false: the reply says how it ended).
  bool cancel(const StatePtr& result);

 private:
  void pump();
  bool ready_to_send(const CallSpec& spec) const;
  void fail_all_locked(std::vector<StatePtr>& failed);

  CallSender& sender_;
  const ActorId id_;
  const ClassInfo& cls_;
  const std::string name_;
  const bool owned_;
  mutable std::mutex mutex_;
  ActorState state_ = ActorState::pending;
  std::string status_ = "pending";
  std::string address_;
  std::uint32_t incarnation_ = 0;
  int restarts_ = 0;
  std::vector<int> gpus_;  // indices on its node, as CUDA_VISIBLE_DEVICES there
  std::deque<CallSpec> outbox_;
  // The seq of the next call sent to incarnation `seq_incarnation_`.
  std::uint32_t seq_incarnation_ = 0;
  std::uint64_t next_seq_ = 0;
};

}  // namespace troupe::detail
