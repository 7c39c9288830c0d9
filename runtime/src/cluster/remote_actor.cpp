#include "remote_actor.hpp"

#include <algorithm>
#include <iterator>

#include "executor/local_runtime.hpp"
#include "troupe/runtime/error.hpp"

namespace troupe::detail {
namespace {

// Updates may be handled out of order (they are posted to the pool): a
// later one names a higher incarnation, or the same one in a later state.
int rank(ActorState state) {
  switch (state) {
    case ActorState::pending: return 0;
    case ActorState::restarting: return 0;
    case ActorState::alive: return 1;
    case ActorState::dead: return 2;
  }
  return 0;
}

}  // namespace

RemoteActor::RemoteActor(CallSender& sender, ActorId id, const ClassInfo& cls, std::string name, bool owned,
                         Policy policy)
    : sender_(sender), id_(id), cls_(cls), name_(std::move(name)), owned_(owned), policy_(policy) {}

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

std::size_t RemoteActor::pending() const {
  std::lock_guard lock(mutex_);
  return pending_;
}

std::uint32_t RemoteActor::incarnation() const {
  std::lock_guard lock(mutex_);
  return incarnation_;
}

std::string RemoteActor::label() const { return cls_.name + "#" + id_.short_hex(); }

std::exception_ptr RemoteActor::wait_for_room_locked(std::unique_lock<std::mutex>& lock,
                                                     std::chrono::steady_clock::time_point deadline) {
  // A pool thread that waits gets a stand-in (replies that make room are
  // handled on the pool), made outside the lock.
  std::optional<BlockingRegion> region;
  while (pending_ >= policy_.max_pending_calls) {
    if (state_ == ActorState::dead || closed_ || !sender_.running()) return nullptr;  // submit says why
    const auto now = std::chrono::steady_clock::now();
    if (now >= deadline) {
      return make_error(Errc::timeout, label() + " had " + std::to_string(pending_) +
                                           " calls pending (max_pending_calls) until the call's deadline passed");
    }
    if (!region) {
      lock.unlock();
      region.emplace();
      lock.lock();
      continue;
    }
    ++room_waiters_;
    room_.wait_until(lock, std::min(deadline, now + std::chrono::milliseconds(200)));
    --room_waiters_;
  }
  return nullptr;
}

void RemoteActor::submit(CallSpec call) {
  if (!call.retries) call.retries = policy_.max_task_retries;
  StatePtr result = call.result;
  const auto deadline = call.deadline;
  const MethodInfo* method = call.method;
  std::vector<StatePtr> refs;
  for (auto& slot : call.args)
    if (!slot.value && slot.ref && !slot.ref->is_ready() && (slot.ref->location().empty() || slot.resolve_here))
      refs.push_back(slot.ref);
  std::weak_ptr<RemoteActor> weak_self = weak_from_this();
  std::weak_ptr<ObjectState> weak_result = result;
  result->set_canceller([weak_self, weak_result] {
    auto self = weak_self.lock();
    auto target = weak_result.lock();
    return self && target && self->cancel(target);
  });
  std::exception_ptr refused;
  Aftermath after;  // calls swept from the outbox
  {
    std::unique_lock lock(mutex_);
    if (pending_ >= policy_.max_pending_calls && state_ != ActorState::dead && !closed_) {
      // An actor calling itself would wait for itself: it fails instead.
      if (policy_.backpressure == Backpressure::fail || current_actor() == id_) {
        refused = make_error(Errc::overloaded, label() + " has " + std::to_string(pending_) +
                                                   " calls pending from this process (max_pending_calls " +
                                                   std::to_string(policy_.max_pending_calls) + "); not sent");
      } else {
        refused = wait_for_room_locked(lock, deadline);
      }
    }
    if (!refused && (state_ == ActorState::dead || closed_ || !sender_.running())) {
      const bool shut_down = closed_ || !sender_.running();
      refused = make_error(shut_down ? Errc::cancelled : Errc::actor_died,
                           label() + " cannot take calls: " + (shut_down ? "the runtime is shut down" : status_));
    }
    if (!refused) {
      call.order = next_order_++;
      ++pending_;
      outbox_.push_back(std::move(call));
      // Calls cancelled or past their deadline wait in the outbox until
      // the pump skips them; sweep them once they are half of it.
      if (outbox_.size() > 2 * pending_ + 1024) {
        auto dead = std::stable_partition(outbox_.begin(), outbox_.end(),
                                          [](const CallSpec& spec) { return !spec.result->is_ready(); });
        std::move(dead, outbox_.end(), std::back_inserter(after.dropped));
        outbox_.erase(dead, outbox_.end());
      }
    }
  }
  if (refused) {
    result->set_error(refused);
    return;
  }
  result->on_complete([weak_self] {
    if (auto self = weak_self.lock()) self->call_done();
  });
  if (deadline != std::chrono::steady_clock::time_point::max()) {
    sender_.at_deadline(deadline, result, [weak_self, weak_result, method] {
      auto self = weak_self.lock();
      auto target = weak_result.lock();
      if (self && target) self->expire(target, method);
    });
  }
  // A ref produced in this process (a Promise, a then()) must be resolved
  // here before the call can be sent; refs produced by actors travel as
  // descriptors and resolve at the callee.
  if (!refs.empty()) {
    auto self = shared_from_this();
    for (auto& ref : refs) ref->on_complete([self] { self->sender_.post([self] { self->pump(); }); });
  }
  pump();
}

void RemoteActor::call_done() {
  std::lock_guard lock(mutex_);
  if (pending_ > 0) --pending_;
  if (room_waiters_ > 0) room_.notify_all();
}

void RemoteActor::expire(const StatePtr& result, const MethodInfo* method) {
  if (!result->set_error(make_error(Errc::timeout, method->qualified + " on " + label() +
                                                       " was not answered before its deadline; if it had not "
                                                       "started it never runs")))
    return;
  // Still in the outbox: the pump drops it. Sent: forget it, and ask the
  // host to withdraw it.
  std::string address;
  {
    std::lock_guard lock(mutex_);
    address = address_;
  }
  sender_.withdraw_sent(id_, address, result);
}

bool RemoteActor::cancel(const StatePtr& result) {
  std::string address;
  std::string method;
  {
    std::lock_guard lock(mutex_);
    auto it = std::find_if(outbox_.begin(), outbox_.end(), [&](const CallSpec& spec) { return spec.result == result; });
    if (it != outbox_.end()) {
      method = it->method->qualified;
    } else {
      for (auto& [order, spec] : resend_)
        if (spec.result == result) method = spec.method->qualified;
    }
    address = address_;
  }
  // Not sent (or taken back for a resend): the pump drops it once failed.
  if (!method.empty()) return result->set_error(make_error(Errc::cancelled, method + " was cancelled before it was sent"));
  // Sent already: the host withdraws it if it has not started, and says so.
  return sender_.cancel_sent(id_, address, result);
}

bool RemoteActor::ready_to_send(const CallSpec& spec) const {
  for (const auto& slot : spec.args) {
    if (!slot.value && slot.ref && !slot.ref->is_ready() && (slot.ref->location().empty() || slot.resolve_here))
      return false;
  }
  return true;
}

void RemoteActor::reclaim_locked(std::optional<std::uint32_t> below, const std::string& why, Aftermath& after) {
  auto taken = sender_.take_sent(id_, below);
  for (auto& sent : taken) {
    after.lent.insert(after.lent.end(), sent.lent.begin(), sent.lent.end());
    if (sent.result->is_ready()) continue;
    if (state_ != ActorState::dead && !closed_ && sent.spec && *sent.spec->retries != 0) {
      if (*sent.spec->retries > 0) --*sent.spec->retries;
      const std::uint64_t order = sent.spec->order;
      resend_.emplace(order, std::move(*sent.spec));
    } else {
      after.failures.emplace_back(sent.result, make_error(Errc::actor_died, why));
    }
  }
  std::move(taken.begin(), taken.end(), std::back_inserter(after.taken));
}

void RemoteActor::fail_unsent_locked(const std::exception_ptr& error, Aftermath& after) {
  for (auto& [order, spec] : resend_) {
    after.failures.emplace_back(spec.result, error);
    after.dropped.push_back(std::move(spec));
  }
  for (auto& spec : outbox_) {
    after.failures.emplace_back(spec.result, error);
    after.dropped.push_back(std::move(spec));
  }
  resend_.clear();
  outbox_.clear();
  if (room_waiters_ > 0) room_.notify_all();
}

void RemoteActor::finish(Aftermath& after) {
  if (!after.lent.empty()) sender_.end_loans(after.lent);
  for (auto& [result, error] : after.failures) result->set_error(error);
  after = Aftermath{};
}

void RemoteActor::pump() {
  Aftermath after;
  std::unique_lock lock(mutex_);
  if (pumping_) {
    repump_ = true;
    return;
  }
  pumping_ = true;
  do {
    repump_ = false;
    while (state_ == ActorState::alive && !closed_) {
      const bool from_resend = !resend_.empty();
      CallSpec* next = from_resend ? &resend_.begin()->second : outbox_.empty() ? nullptr : &outbox_.front();
      if (next == nullptr) break;
      const bool skip = next->result->is_ready();  // cancelled, or past its deadline
      if (!skip && !ready_to_send(*next)) break;
      CallSpec spec = std::move(*next);
      if (from_resend) resend_.erase(resend_.begin());
      else outbox_.pop_front();
      if (skip) {
        after.dropped.push_back(std::move(spec));
        continue;
      }
      // Calls are numbered per incarnation, counting only those sent: the
      // host checks that each caller's calls arrive gapless, in order.
      if (seq_incarnation_ != incarnation_) {
        seq_incarnation_ = incarnation_;
        next_seq_ = 0;
      }
      const std::uint32_t incarnation = incarnation_;
      const std::uint64_t seq = next_seq_;
      const std::string address = address_;
      const bool keep = *spec.retries != 0;
      StatePtr result = spec.result;
      lock.unlock();
      std::exception_ptr failed;
      try {
        sender_.send_call(id_, address, incarnation, seq, spec, keep);
      } catch (...) {
        failed = std::current_exception();
      }
      if (!keep || failed) after.dropped.push_back(std::move(spec));
      lock.lock();
      if (failed) {
        after.failures.emplace_back(result, failed);  // not sent: its seq goes to the next call
        continue;
      }
      ++next_seq_;
      // The actor restarted or died while this call was on its way: take
      // it back as the update did with the calls sent before it.
      if (state_ == ActorState::dead) {
        reclaim_locked(std::nullopt, label() + " died: " + status_, after);
      } else if (incarnation_ != incarnation) {
        reclaim_locked(incarnation_,
                       label() + " restarted (incarnation " + std::to_string(incarnation_) +
                           ") while the call was in flight: " + status_,
                       after);
      }
      // Bounded work per lock hold: hand the aftermath over now and then.
      if (after.dropped.size() >= 256 || !after.failures.empty()) {
        lock.unlock();
        finish(after);
        lock.lock();
      }
    }
  } while (repump_);
  pumping_ = false;
  lock.unlock();
  finish(after);
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
  Aftermath after;
  {
    std::lock_guard lock(mutex_);
    if (state_ == ActorState::dead) return;
    if (state != ActorState::dead &&
        (incarnation < incarnation_ || (incarnation == incarnation_ && rank(state) < rank(state_))))
      return;  // older than what is known
    const bool newer_incarnation = incarnation > incarnation_;
    state_ = state;
    if (!address.empty()) address_ = std::move(address);
    incarnation_ = std::max(incarnation_, incarnation);
    restarts_ = std::max<int>(restarts_, static_cast<int>(incarnation_));  // one incarnation per restart
    switch (state) {
      case ActorState::alive: status_ = "alive"; break;
      case ActorState::pending: status_ = reason.empty() ? "pending" : "pending: " + reason; break;
      case ActorState::restarting: status_ = "restarting: " + reason; break;
      case ActorState::dead: status_ = reason.empty() ? "dead" : reason; break;
    }
    if (state == ActorState::dead) {
      // Nothing will answer: what is in flight, queued or waiting for room.
      const std::string why = label() + " died: " + status_;
      reclaim_locked(std::nullopt, why, after);
      fail_unsent_locked(make_error(Errc::actor_died, why), after);
    } else if (newer_incarnation) {
      // Calls sent to an older incarnation are never answered by it.
      reclaim_locked(incarnation_,
                     label() + " restarted (incarnation " + std::to_string(incarnation_) +
                         ") while the call was in flight" + (reason.empty() ? "" : ": " + reason),
                     after);
    }
  }
  finish(after);
  if (state == ActorState::alive) pump();
}

void RemoteActor::close() {
  Aftermath after;
  {
    std::lock_guard lock(mutex_);
    if (closed_) return;
    closed_ = true;
    fail_unsent_locked(make_error(Errc::cancelled, "the runtime shut down"), after);
  }
  finish(after);
}

void RemoteActor::kill(bool no_restart) { sender_.kill_actor(id_, no_restart); }

}  // namespace troupe::detail
