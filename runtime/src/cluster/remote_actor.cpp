#include "remote_actor.hpp"

#include <algorithm>

#include "troupe/runtime/error.hpp"

namespace troupe::detail {

RemoteActor::RemoteActor(CallSender& sender, ActorId id, const ClassInfo& cls, std::string name, bool owned)
    : sender_(sender), id_(id), cls_(cls), name_(std::move(name)), owned_(owned) {}

ActorState RemoteActor::state() const {
  std::lock_guard lock(mutex_);
  return state_;
}

std::string RemoteActor::status_message() const {
  std::lock_guard lock(mutex_);
  return status_;
}

int RemoteActor::restarts() const {
  std::lock_guard lock(mutex_);
  return restarts_;
}

void RemoteActor::submit(CallSpec call) {
  std::vector<StatePtr> refs;
  {
    std::unique_lock lock(mutex_);
    if (state_ == ActorState::dead || !sender_.running()) {
      std::string why = state_ == ActorState::dead ? status_ : "the runtime is shut down";
      lock.unlock();
      call.result->set_error(make_error(sender_.running() ? Errc::actor_died : Errc::cancelled,
                                        cls_.name + "#" + id_.short_hex() + " cannot take calls: " + why));
      return;
    }
    for (auto& slot : call.args)
      if (!slot.value && slot.ref && !slot.ref->is_ready() && slot.ref->location().empty()) refs.push_back(slot.ref);
    std::weak_ptr<RemoteActor> weak_self = weak_from_this();
    std::weak_ptr<ObjectState> weak_result = call.result;
    call.result->set_canceller([weak_self, weak_result] {
      auto self = weak_self.lock();
      auto result = weak_result.lock();
      return self && result && self->cancel(result);
    });
    outbox_.push_back(std::move(call));
  }
  // A ref produced in this process (a Promise, a then()) must be resolved
  // here before the call can be sent; refs produced by actors travel as
  // descriptors and resolve at the callee.
  auto self = shared_from_this();
  for (auto& ref : refs) ref->on_complete([self] { self->sender_.post([self] { self->pump(); }); });
  pump();
}

bool RemoteActor::cancel(const StatePtr& result) {
  std::string address;
  {
    std::lock_guard lock(mutex_);
    auto it = std::find_if(outbox_.begin(), outbox_.end(), [&](const CallSpec& spec) { return spec.result == result; });
    if (it == outbox_.end()) {
      address = address_;
    } else {
      const std::string method = it->method->qualified;
      outbox_.erase(it);
      return result->set_error(make_error(Errc::cancelled, method + " was cancelled before it was sent"));
    }
  }
  // Sent already: ask the host to withdraw it. Whether it had started is
  // known only when the reply comes (a CancelledError, or the result).
  sender_.cancel_sent(id_, address, result);
  return false;
}

bool RemoteActor::ready_to_send(const CallSpec& spec) const {
  for (const auto& slot : spec.args) {
    if (!slot.value && slot.ref && !slot.ref->is_ready() && slot.ref->location().empty()) return false;
  }
  return true;
}

void RemoteActor::pump() {
  std::unique_lock lock(mutex_);
  while (state_ == ActorState::alive && !outbox_.empty() && ready_to_send(outbox_.front())) {
    CallSpec spec = std::move(outbox_.front());
    outbox_.pop_front();
    if (spec.result->is_ready()) continue;  // cancelled
    // Calls are numbered per incarnation, counting only those sent: the
    // host checks that each caller's calls arrive gapless, in order.
    if (seq_incarnation_ != incarnation_) {
      seq_incarnation_ = incarnation_;
      next_seq_ = 0;
    }
    try {
      sender_.send_call(id_, address_, incarnation_, next_seq_, spec);
      ++next_seq_;
    } catch (...) {
      spec.result->set_error(std::current_exception());
    }
  }
}

void RemoteActor::fail_all_locked(std::vector<StatePtr>& failed) {
  for (auto& spec : outbox_) failed.push_back(spec.result);
  outbox_.clear();
}

std::vector<int> RemoteActor::gpu_ids() const {
  std::lock_guard lock(mutex_);
  return gpus_;
}

void RemoteActor::set_gpus(std::vector<int> gpus) {
  std::lock_guard lock(mutex_);
  gpus_ = std::move(gpus);
}

void RemoteActor::on_update(ActorState state, std::string address, std::uint32_t incarnation, std::string reason) {
  std::vector<StatePtr> failed;
  {
    std::lock_guard lock(mutex_);
    if (state_ == ActorState::dead) return;
    if (state == ActorState::restarting && state_ != ActorState::restarting) ++restarts_;
    state_ = state;
    if (!address.empty()) address_ = std::move(address);
    incarnation_ = incarnation;
    switch (state) {
      case ActorState::alive: status_ = "alive"; break;
      case ActorState::pending: status_ = reason.empty() ? "pending" : "pending: " + reason; break;
      case ActorState::restarting: status_ = "restarting: " + reason; break;
      case ActorState::dead:
        status_ = reason.empty() ? "dead" : reason;
        fail_all_locked(failed);
        break;
    }
  }
  if (state == ActorState::dead) {
    auto error = make_error(Errc::actor_died, cls_.name + "#" + id_.short_hex() + " died: " + reason);
    for (auto& result : failed) result->set_error(error);
  }
  if (state == ActorState::alive) pump();
}

void RemoteActor::kill(bool no_restart) { sender_.kill_actor(id_, no_restart); }

}  // namespace troupe::detail
