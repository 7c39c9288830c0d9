// CallSender: what a RemoteActor needs from the process it lives in, and
// nothing more: send a call, withdraw one, kill the actor, and run work on
// the runtime's pool. ClusterRuntime implements it; RemoteActor depends
// only on this (so the submitter never reaches into the runtime).
#pragma once

#include <cstdint>
#include <functional>
#include <string>

#include "troupe/runtime/actor.hpp"

namespace troupe::detail {

class CallSender {
 public:
  virtual ~CallSender() = default;
  // False once the runtime shut down: calls fail with `cancelled` then.
  virtual bool running() const noexcept = 0;
  // Runs `fn` on a thread of the runtime's pool.
  virtual void post(std::function<void()> fn) = 0;
  // Sends `spec` to incarnation `incarnation` of actor `actor_id` at
  // `address`, numbered `seq` among this caller's calls to that
  // incarnation. Throws if it could not be sent (the result is not set).
  virtual void send_call(ActorId actor_id, const std::string& address, std::uint32_t incarnation,
                         std::uint64_t seq, CallSpec& spec) = 0;
  // Asks the host to withdraw a call already sent; the reply says how it
  // ended (no-op once it was answered).
  virtual void cancel_sent(ActorId actor_id, const std::string& address, const StatePtr& result) = 0;
  // Asks the head to kill the actor. Throws on failure.
  virtual void kill_actor(ActorId actor_id, bool no_restart) = 0;
};

}  // namespace troupe::detail
