#include "outbound_calls.hpp"

#include <capnp/message.h>

#include "troupe/runtime/error.hpp"
#include "troupe/runtime/logging.hpp"

namespace troupe::detail {

void send_on(transport::CallPlane& plane, const std::string& address, capnp::MallocMessageBuilder& message) {
  plane.send(address, message);
}

OutboundCalls::OutboundCalls(WorkerId worker_id, std::shared_ptr<transport::CallPlane> calls,
                             std::shared_ptr<ObjectTable> table, std::shared_ptr<ObjectTransfer> transfer)
    : worker_id_(worker_id), calls_(std::move(calls)), table_(std::move(table)), transfer_(std::move(transfer)) {}

std::unordered_map<std::uint64_t, OutboundCalls::Inflight>::iterator OutboundCalls::erase_locked(
    std::unordered_map<std::uint64_t, Inflight>::iterator it) {
  if (it->second.actor_id.nil()) {
    if (fetches_in_flight_ > 0) --fetches_in_flight_;
  } else if (it->second.result) {
    by_result_.erase(it->second.result->id());
  }
  return inflight_.erase(it);
}

void OutboundCalls::send_call(ActorId actor_id, const std::string& address, std::uint32_t incarnation,
                              std::uint64_t seq, CallSpec& spec, bool keep_for_retry) {
  std::uint64_t timeout_ms = 0;
  if (spec.deadline != std::chrono::steady_clock::time_point::max()) {
    const auto left = spec.deadline - std::chrono::steady_clock::now();
    if (left <= std::chrono::steady_clock::duration::zero())
      throw_error(Errc::timeout, spec.method->qualified + " reached its deadline before it was sent");
    // Rounded up: the host never gives up before the caller does.
    timeout_ms = static_cast<std::uint64_t>(std::chrono::ceil<std::chrono::milliseconds>(left).count());
  }
  capnp::MallocMessageBuilder message(kFirstSegmentWords);
  auto request = message.initRoot<wire::CallMessage>().initRequest();
  const std::uint64_t call_id = next_call_.fetch_add(1);
  request.setCallId(call_id);
  troupe::to_wire(request.initActorId(), actor_id);
  request.setActorIncarnation(incarnation);
  troupe::to_wire(request.initCallerId(), worker_id_);
  request.setSeq(seq);
  request.setMethod(spec.method->name);
  request.setReturnTo(calls_->address());
  const auto& result_id = spec.result->id();
  troupe::to_wire(request.initResultId(), result_id);
  request.setTimeoutMs(timeout_ms);
  auto args = request.initArgs(static_cast<unsigned>(spec.args.size()));
  std::vector<StatePtr> borrowed;
  std::vector<ObjectId> lent;
  std::vector<std::pair<ObjectId, std::string>> to_push;  // arguments another process produces
  try {
    // ObjectRefs inside the values (and inside inline ObjectRef
    // parameters) go alongside them, in `refs`.
    NestedRefEncoder nested;
    for (unsigned i = 0; i < spec.args.size(); ++i) {
      auto& slot = spec.args[i];
      const StatePtr& ref = slot.ref;
      if (slot.pass_ref) {
        transfer_->describe_passed_ref(args[i].initPassRef(), ref, borrowed, lent);
        continue;
      }
      if (ref && ref->has_error()) std::rethrow_exception(ref->error());
      if (ObjectTransfer::held_elsewhere(ref)) {
        transfer_->describe_elsewhere(args[i].initRef(), ref->id(), ref->location());
        borrowed.push_back(ref);
        to_push.emplace_back(ref->id(), ref->location());
      } else {
        const ValuePtr& value = slot.value ? slot.value : ref->value();
        std::string bytes = value ? value->encode() : std::string();
        args[i].setValue(as_data(bytes));
      }
    }
    transfer_->describe_nested(
        nested, [&](unsigned n) { return request.initRefs(n); }, borrowed, lent);
  } catch (...) {
    table_->end_loans(lent);
    throw;
  }
  spec.result->set_location(address);  // the result lives at the callee
  {
    std::lock_guard lock(mutex_);
    Inflight flight{spec.result, std::move(borrowed), lent, actor_id, std::chrono::steady_clock::time_point::max(),
                    incarnation, std::nullopt};
    if (keep_for_retry) flight.spec = std::move(spec);
    by_result_[result_id] = call_id;
    inflight_[call_id] = std::move(flight);
  }
  // Activations pushed: each argument's producer sends it to the callee's
  // host the moment it exists, so the call finds its input waiting (the
  // callee's fetch takes it from its inbox, or waits for it in flight);
  // without data-plane addresses for both, the callee pulls as before.
  // Asked before the call leaves, so that the push (two hops) is ahead of
  // the callee's own request (three); should the send fail, the pushed
  // copy is dropped at the callee after the fetch timeout.
  for (const auto& [id, holder] : to_push) transfer_->request_push(id, holder, address);
  try {
    send_on(*calls_, address, message);
  } catch (...) {
    {
      std::lock_guard lock(mutex_);
      auto it = inflight_.find(call_id);
      if (it != inflight_.end()) {
        if (it->second.spec) spec = std::move(*it->second.spec);  // back to the caller, intact
        erase_locked(it);
      }
    }
    table_->end_loans(lent);
    throw;
  }
}

bool OutboundCalls::cancel_sent(ActorId actor_id, const std::string& address, const StatePtr& result) {
  if (address.empty()) return false;  // its actor is gone
  std::uint64_t call_id = 0;
  auto wait = std::make_shared<CancelWait>();
  {
    std::lock_guard lock(mutex_);
    auto it = by_result_.find(result->id());
    if (it == by_result_.end()) return false;  // answered already
    call_id = it->second;
    auto [slot, fresh] = cancels_.emplace(call_id, wait);
    if (!fresh) wait = slot->second;  // a second cancel of the same call waits for the same answer
  }
  capnp::MallocMessageBuilder message;
  auto cancel = message.initRoot<wire::CallMessage>().initCancel();
  cancel.setCallId(call_id);
  troupe::to_wire(cancel.initActorId(), actor_id);
  troupe::to_wire(cancel.initCallerId(), worker_id_);
  troupe::to_wire(cancel.initResultId(), result->id());
  cancel.setReturnTo(calls_->address());
  try {
    calls_->send(address, message);
  } catch (const std::exception& e) {
    TROUPE_LOG_WARN("could not send a cancel to {}: {}", address, e.what());
    wait->answer(false);
  }
  bool withdrawn = false;
  {
    BlockingRegion region;  // on a pool thread: the answer is read by the pool
    std::unique_lock lock(wait->mutex);
    wait->answered.wait_for(lock, kCancelAnswerWait, [&] { return wait->withdrawn.has_value(); });
    withdrawn = wait->withdrawn.value_or(false);
  }
  {
    std::lock_guard lock(mutex_);
    auto it = cancels_.find(call_id);
    if (it != cancels_.end() && it->second == wait) cancels_.erase(it);
  }
  // The host's reply (CancelledError) comes first on the same connection;
  // should it be held back, the result is failed here (whichever is first wins).
  if (withdrawn) result->set_error(make_error(Errc::cancelled, "the call was cancelled before it started"));
  return withdrawn;
}

void OutboundCalls::on_cancel_answer(wire::CancelAnswer::Reader answer) {
  const ActorId from = troupe::from_wire<ActorId>(answer.getActorId());
  std::shared_ptr<CancelWait> wait;
  {
    std::lock_guard lock(mutex_);
    auto it = cancels_.find(answer.getCallId());
    if (it == cancels_.end()) return;  // no one waits (gave up, or a deadline's withdraw)
    auto flight = inflight_.find(answer.getCallId());
    if (flight != inflight_.end() && from != flight->second.actor_id)
      throw Error(Errc::protocol, "a cancel answer for call " + std::to_string(answer.getCallId()) + " names actor " +
                                      from.short_hex() + ", not the one called");
    wait = it->second;
  }
  wait->answer(answer.getWithdrawn());
}

void OutboundCalls::withdraw(ActorId actor_id, const std::string& address, const StatePtr& result) {
  std::vector<ObjectId> lent;
  std::vector<StatePtr> borrowed;  // released outside the lock
  std::uint64_t call_id = 0;
  {
    std::lock_guard lock(mutex_);
    auto index = by_result_.find(result->id());
    if (index == by_result_.end()) return;  // answered, taken back, or never sent
    call_id = index->second;
    auto it = inflight_.find(call_id);
    if (it == inflight_.end() || it->second.result != result) return;
    lent = std::move(it->second.lent);
    borrowed = std::move(it->second.borrowed);
    erase_locked(it);
  }
  table_->end_loans(lent);
  if (address.empty()) return;
  // The call id is gone from here, so the host's answer to this cancel (a
  // CancelledError, or the result) is ignored.
  capnp::MallocMessageBuilder message;
  auto cancel = message.initRoot<wire::CallMessage>().initCancel();
  cancel.setCallId(call_id);
  troupe::to_wire(cancel.initActorId(), actor_id);
  troupe::to_wire(cancel.initCallerId(), worker_id_);
  troupe::to_wire(cancel.initResultId(), result->id());
  try {
    calls_->send(address, message);
  } catch (const std::exception& e) {
    TROUPE_LOG_DEBUG("could not send a cancel to {}: {}", address, e.what());
  }
}

std::vector<SentCall> OutboundCalls::take_sent(ActorId actor_id, std::optional<std::uint32_t> below) {
  std::vector<SentCall> taken;
  std::lock_guard lock(mutex_);
  for (auto it = inflight_.begin(); it != inflight_.end();) {
    auto& flight = it->second;
    if (flight.actor_id != actor_id || (below && flight.incarnation >= *below)) {
      ++it;
      continue;
    }
    taken.push_back(SentCall{flight.result, std::move(flight.spec), std::move(flight.lent), std::move(flight.borrowed)});
    // A cancel() waiting for this call's host gets no answer now.
    if (auto wait = cancels_.find(it->first); wait != cancels_.end()) wait->second->answer(false);
    it = erase_locked(it);
  }
  return taken;
}

void OutboundCalls::end_loans(const std::vector<ObjectId>& lent) { table_->end_loans(lent); }

std::size_t OutboundCalls::calls_in_flight() {
  std::lock_guard lock(mutex_);
  return inflight_.size() - fetches_in_flight_;
}

StatePtr OutboundCalls::fetch_by_call(const ObjectId& id, const std::string& location) {
  auto state = std::make_shared<ObjectState>();
  capnp::MallocMessageBuilder message;
  auto request = message.initRoot<wire::CallMessage>().initRequest();
  const std::uint64_t call_id = next_call_.fetch_add(1);
  request.setCallId(call_id);
  troupe::to_wire(request.initCallerId(), worker_id_);
  request.setMethod(kFetchMethod);
  request.setReturnTo(calls_->address());
  auto descriptor = request.initArgs(1)[0].initRef();
  troupe::to_wire(descriptor.initId(), id);
  descriptor.setOwnerAddress(location);
  descriptor.setRemote();
  {
    std::lock_guard lock(mutex_);
    inflight_[call_id] = Inflight{state, {}, {}, ActorId{}, std::chrono::steady_clock::now() + transfer_->fetch_timeout()};
    ++fetches_in_flight_;
  }
  send_on(*calls_, location, message);
  return state;
}

void OutboundCalls::on_reply(wire::CallReply::Reader reply) {
  // Read and check the whole reply before its call leaves the table, so
  // that a malformed (or forged) one leaves the call to its real reply.
  ValuePtr value;
  std::exception_ptr error;
  const auto nested_refs = reply.getRefs();
  for (unsigned i = 0; i < nested_refs.size(); ++i)
    if (auto why = ObjectTransfer::check_descriptor(nested_refs[i]); !why.empty())
      throw Error(Errc::protocol, "a reply's ref " + std::to_string(i) + ": " + why);
  std::shared_ptr<const std::vector<StatePtr>> nested;
  switch (reply.which()) {
    case wire::CallReply::VALUE: {
      auto data = reply.getValue();
      if (data.size() != 0) value = std::make_shared<EncodedValue>(from_data(data));
      break;
    }
    case wire::CallReply::REF: {
      auto descriptor = reply.getRef();
      if (!descriptor.isRemote()) throw Error(Errc::protocol, "a reply's result descriptor is not a remote one");
      if (auto why = ObjectTransfer::check_descriptor(descriptor); !why.empty())
        throw Error(Errc::protocol, "a reply's result descriptor: " + why);
      value = transfer_->remote_value(troupe::from_wire<ObjectId>(descriptor.getId()),
                                      std::string(descriptor.getOwnerAddress()));
      break;
    }
    case wire::CallReply::ERROR: error = to_exception(reply.getError()); break;
    default:
      throw Error(Errc::protocol, "a reply of unknown kind " + std::to_string(static_cast<int>(reply.which())));
  }
  const ActorId from = troupe::from_wire<ActorId>(reply.getActorId());
  StatePtr result;
  std::vector<StatePtr> borrowed;  // released when this returns
  std::vector<ObjectId> lent;
  {
    std::lock_guard lock(mutex_);
    auto it = inflight_.find(reply.getCallId());
    if (it == inflight_.end()) return;  // timed out or the actor was declared dead
    // A host answers a call it ran in its actor's name (refusals name none).
    if (!from.nil() && from != it->second.actor_id)
      throw Error(Errc::protocol, "a reply for call " + std::to_string(reply.getCallId()) + " names actor " +
                                      from.short_hex() + ", not the one called");
    result = it->second.result;
    borrowed = std::move(it->second.borrowed);
    lent = std::move(it->second.lent);
    erase_locked(it);
  }
  const std::uint64_t call_id = reply.getCallId();
  if (reply.getLoansKept() && (!borrowed.empty() || !lent.empty())) {
    // The callee still fetches some of them; it says when it has them.
    table_->keep_loans(worker_id_, call_id, from, std::move(borrowed), std::move(lent),
                       std::chrono::steady_clock::now() + kept_loans_limit());
  } else {
    table_->end_loans(lent);
  }
  if (nested_refs.size() > 0 && !error) {
    // The result's nested refs are fetched now; the host lends them until
    // this process says it has them.
    nested = transfer_->resolve_nested(nested_refs);
    if (value && reply.isValue())
      value = std::make_shared<EncodedValue>(std::move(static_cast<EncodedValue&>(*value).data), nested);
    return_loans_when_done(*nested, result->location(), call_id, ActorId{});
  }
  if (error) result->set_error(std::move(error));
  else result->set_value(std::move(value));
}

std::chrono::steady_clock::duration OutboundCalls::kept_loans_limit() const {
  // A borrower fetches at once, and a fetch ends within the fetch timeout;
  // past twice that, the borrower is gone or its message was lost.
  return 2 * transfer_->fetch_timeout() + std::chrono::seconds(1);
}

void OutboundCalls::on_return_loans(wire::ReturnLoans::Reader message) {
  const ActorId borrower = troupe::from_wire<ActorId>(message.getActorId());
  // Loans of a call this process made are kept under its own id; loans of
  // a reply it sent, under the id of the caller it answered.
  const WorkerId key = borrower.nil() ? troupe::from_wire<WorkerId>(message.getCallerId()) : worker_id_;
  table_->return_loans(key, message.getCallId(), borrower);
}

void OutboundCalls::send_return_loans(const std::string& address, std::uint64_t call_id, const ActorId& borrower) {
  if (address.empty() || !calls_) return;
  capnp::MallocMessageBuilder message;
  auto loans = message.initRoot<wire::CallMessage>().initReturnLoans();
  loans.setCallId(call_id);
  troupe::to_wire(loans.initActorId(), borrower);
  troupe::to_wire(loans.initCallerId(), worker_id_);
  try {
    calls_->send(address, message);
  } catch (const std::exception& e) {
    TROUPE_LOG_DEBUG("could not return loans to {}: {}", address, e.what());  // they expire there
  }
}

void OutboundCalls::return_loans_when_done(const std::vector<StatePtr>& states, std::string address,
                                           std::uint64_t call_id, ActorId borrower) {
  auto left = std::make_shared<std::atomic<std::size_t>>(states.size() + 1);
  std::weak_ptr<OutboundCalls> weak = weak_from_this();
  auto done = [weak, left, address = std::move(address), call_id, borrower] {
    if (left->fetch_sub(1, std::memory_order_acq_rel) != 1) return;
    if (auto self = weak.lock()) self->send_return_loans(address, call_id, borrower);
  };
  for (const auto& state : states) state->on_complete(done);
  done();
}

void OutboundCalls::expire_fetches() {
  std::vector<StatePtr> expired;
  {
    std::lock_guard lock(mutex_);
    const auto now = std::chrono::steady_clock::now();
    for (auto it = inflight_.begin(); fetches_in_flight_ > 0 && it != inflight_.end();) {
      if (it->second.deadline <= now) {
        expired.push_back(it->second.result);
        it = erase_locked(it);
      } else {
        ++it;
      }
    }
  }
  for (auto& state : expired)
    state->set_error(make_error(Errc::object_lost, "the process holding the object did not answer within " +
                                                       std::to_string(transfer_->fetch_timeout().count()) + " ms"));
}

std::vector<StatePtr> OutboundCalls::take_all() {
  std::vector<StatePtr> pending;
  std::lock_guard lock(mutex_);
  for (auto& [id, flight] : inflight_) pending.push_back(flight.result);
  for (auto& [id, wait] : cancels_) wait->answer(false);
  inflight_.clear();
  by_result_.clear();
  fetches_in_flight_ = 0;
  return pending;
}

}  // namespace troupe::detail
