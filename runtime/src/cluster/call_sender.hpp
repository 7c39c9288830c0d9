// CallSender: what a RemoteActor needs from the process it lives in, and
// nothing more: send a call, take back or withdraw calls sent, kill the
// actor, run work on the runtime's pool and at a deadline. ClusterRuntime
// implements it (over OutboundCalls); RemoteActor depends only on this (so
// the submitter never reaches into the runtime), and tests fake it.
//
// Lock contract: a RemoteActor calls take_sent() and running() while it
// holds its own mutex, so these two must never take a lock of the runtime
// (ClusterRuntime::mutex_) nor call back into a RemoteActor; the others
// are called without it.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "troupe/runtime/actor.hpp"

namespace troupe::detail {

// A call taken back from the calls in flight (its actor restarted or died).
struct SentCall {
  StatePtr result;
  std::optional<CallSpec> spec;  // kept when it was sent with keep_for_retry
  std::vector<ObjectId> lent;    // loans to end once the call is handled (end_loans)
  std::vector<StatePtr> borrowed;  // what the callee was fetching; dropped by the taker
};

class CallSender {
 public:
  virtual ~CallSender() = default;
  // False once the runtime shut down: calls fail with `cancelled` then.
  virtual bool running() const noexcept = 0;
  // Runs `fn` on a thread of the runtime's pool.
  virtual void post(std::function<void()> fn) = 0;
  // Runs `fn` on a pool thread at `when`, unless `result` completed first.
  virtual void at_deadline(std::chrono::steady_clock::time_point when, const StatePtr& result,
                           std::function<void()> fn) = 0;
  // Sends `spec` to incarnation `incarnation` of actor `actor_id` at
  // `address`, numbered `seq` among this caller's calls to that
  // incarnation; with keep_for_retry the spec moves into the record of the
  // call in flight, so take_sent() can give it back for a resend. Throws if
  // it could not be sent (the result is not set, the spec is intact).
  virtual void send_call(ActorId actor_id, const std::string& address, std::uint32_t incarnation,
                         std::uint64_t seq, CallSpec& spec, bool keep_for_retry) = 0;
  // Takes the unanswered calls sent to `actor_id` out of the calls in
  // flight: those sent to an incarnation below `below`, or all of them
  // (nullopt). Their replies, if any come, are ignored from then on.
  virtual std::vector<SentCall> take_sent(ActorId actor_id, std::optional<std::uint32_t> below) = 0;
  // Ends loans of objects lent to calls taken by take_sent().
  virtual void end_loans(const std::vector<ObjectId>& lent) = 0;
  // Asks the host to withdraw a call already sent and waits for its answer
  // (one round trip): true when the call was withdrawn before it started
  // (its result then holds CancelledError), false when it had started, was
  // answered already, or no answer came.
  virtual bool cancel_sent(ActorId actor_id, const std::string& address, const StatePtr& result) = 0;
  // A call whose result was failed here (its deadline passed): forgets it
  // (a late reply is ignored) and asks the host to withdraw it if it has
  // not started.
  virtual void withdraw_sent(ActorId actor_id, const std::string& address, const StatePtr& result) = 0;
  // Asks the head to kill the actor. Throws on failure.
  virtual void kill_actor(ActorId actor_id, bool no_restart) = 0;
};

}  // namespace troupe::detail
