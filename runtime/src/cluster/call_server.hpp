// CallServer: what this process does with each message on its call plane.
//   - request: a call to the hosted actor (actor hosts; any other process
//     answers "hosts no actor"), or a `__fetch` of an object it holds;
//   - reply: handed to OutboundCalls, which completes the call's result;
//   - cancel: withdraws a call of the hosted actor not started yet, and
//     answers whether it did (a CancelAnswer, when the cancel asks for one);
//   - cancel answer: handed to OutboundCalls, for the cancel() waiting on it;
//   - release: the owner no longer needs objects this process holds.
// A call's result is held in the ObjectTable under the id its caller chose
// (so later calls and fetches can name it before it exists), published on
// the data plane when done, and answered to the caller inline or by
// descriptor (ObjectTransfer's rule) once it and the call's ObjectRef
// parameters are all in hand.
//
// The wire contract it enforces for a call (transport/schema/call.capnp):
// the request must name the hosted actor's id and incarnation (else the
// call fails with actor_died, unrun), and each caller's `seq` must be the
// next one for this incarnation, 0, 1, 2, ... (else it fails with
// `protocol`, unrun, so no call runs twice). A caller with max_pending_calls
// (the actor's option) calls queued here gets `overloaded` for the next,
// unrun (it takes its seq); a call with a deadline (`timeoutMs`) that has
// not started by then is withdrawn and answered `timeout`.
//
// Every message is a peer's and is checked before use (hostile input is
// answered, never fatal): ids that must name something are not nil, union
// kinds are known, addresses are tcp://host:port of bounded length,
// descriptors are consistent, texts are well formed (the schema is read
// lazily, so a malformed field raises kj::Exception on access: caught per
// message). A bad request with a usable reply address is answered with a
// `protocol` error (and takes no seq); anything else bad is dropped with a
// rate-limited warning. Nothing a peer sends escapes on_call_message.
//
// Contract: on_call_message() runs on one thread at a time (the call
// plane's receive contract) and never blocks: a call is handed to the
// actor's mailbox, a fetch parked until its object exists. Replies go out
// from whichever thread completes the result.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>

#include <functional>

#include "actor_host.hpp"
#include "object_table.hpp"
#include "object_transfer.hpp"
#include "outbound_calls.hpp"
#include "rate_limited_log.hpp"
#include "troupe/transport/internal/channels.hpp"

namespace troupe::detail {

class CallServer final : public std::enable_shared_from_this<CallServer> {
 public:
  // Sends a reply to the call plane at `address`; throws on failure (the
  // server logs it). The runtime's sends on its CallPlane; tests capture.
  using ReplySender = std::function<void(const std::string& address, capnp::MallocMessageBuilder& message)>;

  CallServer(ReplySender send, std::shared_ptr<ObjectTable> table, std::shared_ptr<ObjectTransfer> transfer,
             std::shared_ptr<OutboundCalls> outbound);
  // Actor hosts: the host whose actor serves the calls (null elsewhere).
  // Set before the call plane starts (its threads then see it).
  void set_host(std::shared_ptr<const ActorHost> host) { host_ = std::move(host); }

  // The call plane's handler. Never throws: a malformed message is
  // answered with an error where it says where to, else dropped (counted,
  // and logged at most a few times per interval).
  void on_call_message(transport::ReceivedMessage& message) noexcept;
  // Messages dropped unanswered so far (tests).
  std::uint64_t dropped() const { return dropped_.count(); }

 private:
  void dispatch(wire::CallMessage::Reader message);
  // Empty when the request may be used; else why not (a protocol error).
  std::string check_request(wire::CallRequest::Reader request);
  void answer_error(const std::string& address, std::uint64_t call_id, Errc code, std::string message);
  void answer_cancel(const std::string& address, std::uint64_t call_id, bool withdrawn);
  void on_request(wire::CallRequest::Reader request);
  void serve_fetch(wire::CallRequest::Reader request);
  // Empty when `seq` is the one expected next from `caller`; else why not.
  std::string check_seq(const WorkerId& caller, std::uint64_t seq);
  // Answers call `call_id` with `result` (finished). allow_ref: a large
  // result may stay here and be answered by descriptor.
  // Tells the caller at `address` that the call `call_id` to `actor_id`
  // has every object it lent (ReturnLoans).
  void return_loans(const std::string& address, std::uint64_t call_id, const ActorId& actor_id);
  // loans_kept: this process still fetches objects the call lent it (it
  // sends ReturnLoans once it has them). `caller`: who the result's nested
  // refs are lent to.
  void reply_to(const std::string& address, std::uint64_t call_id, ActorId actor_id, const StatePtr& result,
                bool allow_ref, bool loans_kept = false, const WorkerId& caller = WorkerId{});

  const ReplySender send_;
  const std::shared_ptr<ObjectTable> table_;
  const std::shared_ptr<ObjectTransfer> transfer_;
  const std::shared_ptr<OutboundCalls> outbound_;
  std::shared_ptr<const ActorHost> host_;
  std::mutex seq_mutex_;
  // Per caller, for this host's one incarnation.
  // TODO(security): one entry per distinct caller id, never evicted; bound
  // it once callers are authenticated members (an eviction would break the
  // seq contract of a live caller).
  std::map<WorkerId, std::uint64_t> next_seq_;
  RateLimitedWarning dropped_{"dropping a call-plane message"};
};

}  // namespace troupe::detail
