// OutboundCalls: the calls (and `__fetch` fetches) this process has sent
// and not yet seen answered, by call id. It builds each call's request
// (arguments inline or by descriptor, through ObjectTransfer; the time left
// to its deadline), keeps what the callee borrows alive until the reply
// (`borrowed`, and the loans of ObjectRef parameters, ended in the
// ObjectTable then), and completes the call's result from the reply. Each
// call remembers the incarnation it was sent to and, when its submitter
// may resend it, its CallSpec.
//
// Contract: any thread (one mutex, never held while a result is completed
// or a message sent; take_sent() completes nothing and sends nothing, so a
// RemoteActor may call it under its own lock). Each call is answered at
// most once: by its reply, by take_sent() when its actor restarted or died
// (the RemoteActor resends or fails it), by withdraw() past its deadline,
// by expire_fetches() past a fetch's deadline, or by take_all() at
// shutdown; whichever comes first removes it.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "call_sender.hpp"
#include "object_table.hpp"
#include "object_transfer.hpp"
#include "troupe/runtime/actor.hpp"
#include "troupe/transport/internal/channels.hpp"
#include "wire_util.hpp"

namespace troupe::detail {

// Sends a call-plane message; a transport failure is thrown as the
// troupe::Error with its code.
void send_on(transport::CallPlane& plane, const std::string& address, capnp::MallocMessageBuilder& message);

class OutboundCalls : public std::enable_shared_from_this<OutboundCalls> {
 public:
  OutboundCalls(WorkerId worker_id, std::shared_ptr<transport::CallPlane> calls, std::shared_ptr<ObjectTable> table,
                std::shared_ptr<ObjectTransfer> transfer);

  // Sends `spec` to incarnation `incarnation` of actor `actor_id` at
  // `address`, as call number `seq` of this caller to that incarnation.
  // Throws (an argument that failed, a send that failed); then nothing of
  // the call remains here.
  // With keep_for_retry the spec moves into the call's record (for
  // take_sent), else it stays with the caller.
  void send_call(ActorId actor_id, const std::string& address, std::uint32_t incarnation, std::uint64_t seq,
                 CallSpec& spec, bool keep_for_retry = false);
  // Sends a cancel for a call already sent and waits (at most
  // kCancelAnswerWait) for the host's CancelAnswer: true when the host
  // withdrew the call unstarted (the result then holds CancelledError, from
  // the reply or set here). False at once once it was answered.
  bool cancel_sent(ActorId actor_id, const std::string& address, const StatePtr& result);
  // Forgets a call already failed here (its deadline passed) and sends a
  // cancel for it, so the host withdraws it if it has not started.
  void withdraw(ActorId actor_id, const std::string& address, const StatePtr& result);
  // Removes and returns the unanswered calls sent to `actor_id`: those sent
  // to an incarnation below `below`, or all (nullopt). Their loans are not
  // ended here (the caller ends them with end_loans once it is unlocked).
  std::vector<SentCall> take_sent(ActorId actor_id, std::optional<std::uint32_t> below);
  void end_loans(const std::vector<ObjectId>& lent);
  std::size_t calls_in_flight();
  // Fetches object `id` from `location` as a `__fetch` call, failing with
  // object_lost if no answer comes within the fetch timeout.
  StatePtr fetch_by_call(const ObjectId& id, const std::string& location);

  // Completes the call `reply` answers (ignored if it was answered already).
  void on_reply(wire::CallReply::Reader reply);
  // Hands a host's answer to the cancel_sent() waiting for it (ignored if
  // none waits).
  void on_cancel_answer(wire::CancelAnswer::Reader answer);

  // How long cancel_sent() waits for the host's answer (an answer is one
  // round trip away; none comes from a host that is gone or stopped).
  static constexpr std::chrono::seconds kCancelAnswerWait{10};

  // A borrower has the objects a call (or a reply) lent it: ends those loans.
  void on_return_loans(wire::ReturnLoans::Reader message);
  // Tells the lender at `address` that this process (`borrower`: the actor
  // it hosts, for a call's loans; nil for a reply's) has every object
  // (fetched or failed) lent for call `call_id`.
  void send_return_loans(const std::string& address, std::uint64_t call_id, const ActorId& borrower);
  // send_return_loans once every state completed (value or error).
  void return_loans_when_done(const std::vector<StatePtr>& states, std::string address, std::uint64_t call_id,
                              ActorId borrower);
  // How long loans kept past a reply wait for their ReturnLoans.
  std::chrono::steady_clock::duration kept_loans_limit() const;
  // Fails the fetches past their deadline with object_lost.
  void expire_fetches();
  // Removes every call in flight and returns their results (shutdown).
  std::vector<StatePtr> take_all();

 private:
  struct Inflight {
    StatePtr result;
    // Objects passed by descriptor: kept (not released) until the callee
    // has answered, since it fetches them before it runs.
    std::vector<StatePtr> borrowed;
    // Objects of this process lent to the callee (ObjectRef parameters):
    // served from the table until the callee has answered.
    std::vector<ObjectId> lent;
    ActorId actor_id;  // 0 for fetches
    std::chrono::steady_clock::time_point deadline = std::chrono::steady_clock::time_point::max();  // fetches
    std::uint32_t incarnation = 0;
    std::optional<CallSpec> spec;  // kept for a resend
  };
  // A cancel_sent() waiting for its answer.
  struct CancelWait {
    std::mutex mutex;
    std::condition_variable answered;
    std::optional<bool> withdrawn;
    void answer(bool value) {
      {
        std::lock_guard lock(mutex);
        if (!withdrawn) withdrawn = value;
      }
      answered.notify_all();
    }
  };
  // Removes the entry (its by_result_ index too); lock held.
  std::unordered_map<std::uint64_t, Inflight>::iterator erase_locked(std::unordered_map<std::uint64_t, Inflight>::iterator it);

  const WorkerId worker_id_;
  const std::shared_ptr<transport::CallPlane> calls_;
  const std::shared_ptr<ObjectTable> table_;
  const std::shared_ptr<ObjectTransfer> transfer_;
  std::atomic<std::uint64_t> next_call_{1};
  std::mutex mutex_;
  std::unordered_map<std::uint64_t, Inflight> inflight_;
  std::unordered_map<ObjectId, std::uint64_t> by_result_;  // a call's result id -> its call id (not fetches)
  std::size_t fetches_in_flight_ = 0;  // entries of inflight_ with a deadline
  std::unordered_map<std::uint64_t, std::shared_ptr<CancelWait>> cancels_;  // by call id
};

}  // namespace troupe::detail
