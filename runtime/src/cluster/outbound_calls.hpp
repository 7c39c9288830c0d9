// OutboundCalls: the calls (and `__fetch` fetches) this process has sent
// and not yet seen answered, by call id. It builds each call's request
// (arguments inline or by descriptor, through ObjectTransfer), keeps what
// the callee borrows alive until the reply (`borrowed`, and the loans of
// ObjectRef parameters, ended in the ObjectTable then), and completes the
// call's result from the reply.
//
// Contract: any thread (one mutex, never held while a result is completed
// or a message sent). Each call is answered at most once: by its reply, by
// fail_calls_to() when its actor died, by expire_fetches() past a fetch's
// deadline (calls have none: they may run as long as they like), or by
// take_all() at shutdown; whichever comes first removes it.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <exception>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "object_table.hpp"
#include "object_transfer.hpp"
#include "troupe/runtime/actor.hpp"
#include "troupe/transport/internal/channels.hpp"
#include "wire_util.hpp"

namespace troupe::detail {

// Sends a call-plane message; a transport failure is thrown as the
// troupe::Error with its code.
void send_on(transport::CallPlane& plane, const std::string& address, capnp::MallocMessageBuilder& message);

class OutboundCalls {
 public:
  OutboundCalls(WorkerId worker_id, std::shared_ptr<transport::CallPlane> calls, std::shared_ptr<ObjectTable> table,
                std::shared_ptr<ObjectTransfer> transfer);

  // Sends `spec` to incarnation `incarnation` of actor `actor_id` at
  // `address`, as call number `seq` of this caller to that incarnation.
  // Throws (an argument that failed, a send that failed); then nothing of
  // the call remains here.
  void send_call(ActorId actor_id, const std::string& address, std::uint32_t incarnation, std::uint64_t seq,
                 CallSpec& spec);
  // Sends a cancel for a call already sent (no-op once it was answered).
  void cancel_sent(ActorId actor_id, const std::string& address, const StatePtr& result);
  // Fetches object `id` from `location` as a `__fetch` call, failing with
  // object_lost if no answer comes within the fetch timeout.
  StatePtr fetch_by_call(const ObjectId& id, const std::string& location);

  // Completes the call `reply` answers (ignored if it was answered already).
  void on_reply(wire::CallReply::Reader reply);
  // Fails every call sent to `actor_id` with `error` (it died: they will
  // never be answered).
  void fail_calls_to(ActorId actor_id, const std::exception_ptr& error);
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
    std::chrono::steady_clock::time_point deadline = std::chrono::steady_clock::time_point::max();
  };

  const WorkerId worker_id_;
  const std::shared_ptr<transport::CallPlane> calls_;
  const std::shared_ptr<ObjectTable> table_;
  const std::shared_ptr<ObjectTransfer> transfer_;
  std::atomic<std::uint64_t> next_call_{1};
  std::mutex mutex_;
  std::unordered_map<std::uint64_t, Inflight> inflight_;
  std::size_t fetches_in_flight_ = 0;  // entries of inflight_ with a deadline
};

}  // namespace troupe::detail
