#include "object_table.hpp"

#include "troupe/runtime/error.hpp"
#include "troupe/runtime/object_ref.hpp"  // forward_state

namespace troupe::detail {

std::vector<StatePtr> ObjectTable::hold_locked(const ObjectId& id, const StatePtr& state) {
  table_[id] = state;
  std::vector<StatePtr> waiting;
  if (auto it = wanted_.find(id); it != wanted_.end()) {
    waiting = std::move(it->second.states);
    parked_ -= waiting.size();
    wanted_.erase(it);
  }
  return waiting;
}

void ObjectTable::hold(const ObjectId& id, const StatePtr& state) {
  std::vector<StatePtr> waiting;
  {
    std::lock_guard lock(mutex_);
    waiting = hold_locked(id, state);
  }
  for (auto& parked : waiting) forward_state(state, parked);
}

StatePtr ObjectTable::find_or_wait(const ObjectId& id) {
  std::lock_guard lock(mutex_);
  auto it = table_.find(id);
  if (it != table_.end()) return it->second;
  if (parked_ >= kMaxParked) {
    throw Error(Errc::not_found, "object " + id.hex() + " is not held here, and " + std::to_string(parked_) +
                                     " requests already wait for objects not produced yet");
  }
  auto state = std::make_shared<ObjectState>(id);
  auto [entry, fresh] = wanted_.try_emplace(id);
  if (fresh) entry->second.since = std::chrono::steady_clock::now();
  entry->second.states.push_back(state);
  ++parked_;
  return state;
}

void ObjectTable::expire_waits(std::chrono::steady_clock::duration max_wait) {
  std::vector<StatePtr> expired;
  {
    std::lock_guard lock(mutex_);
    if (wanted_.empty()) return;
    const auto now = std::chrono::steady_clock::now();
    for (auto it = wanted_.begin(); it != wanted_.end();) {
      if (now - it->second.since >= max_wait) {
        parked_ -= it->second.states.size();
        for (auto& state : it->second.states) expired.push_back(std::move(state));
        it = wanted_.erase(it);
      } else {
        ++it;
      }
    }
  }
  const auto seconds = std::chrono::duration_cast<std::chrono::seconds>(max_wait).count();
  for (auto& state : expired)
    state->set_error(make_error(Errc::object_lost, "object " + state->id().hex() + " was not produced here within " +
                                                       std::to_string(seconds) + " s"));
}

std::size_t ObjectTable::parked() const {
  std::lock_guard lock(mutex_);
  return parked_;
}

StatePtr ObjectTable::find(const ObjectId& id) {
  std::lock_guard lock(mutex_);
  auto it = table_.find(id);
  return it == table_.end() ? nullptr : it->second;
}

bool ObjectTable::lend(const ObjectId& id, const StatePtr& ref) {
  bool first = false;
  std::vector<StatePtr> waiting;
  {
    std::lock_guard lock(mutex_);
    first = loans_[id]++ == 0;
    if (first) waiting = hold_locked(id, ref);
  }
  for (auto& parked : waiting) forward_state(ref, parked);
  return first;
}

bool ObjectTable::is_lent(const ObjectId& id) {
  std::lock_guard lock(mutex_);
  return loans_.count(id) > 0;
}

void ObjectTable::drop_unless_lent(const ObjectId& id) {
  std::lock_guard lock(mutex_);
  if (!loans_.count(id)) on_drop_(id);
}

void ObjectTable::end_loans(const std::vector<ObjectId>& lent) {
  if (lent.empty()) return;
  std::lock_guard lock(mutex_);
  for (const auto& id : lent) {
    auto it = loans_.find(id);
    if (it == loans_.end() || --it->second > 0) continue;
    loans_.erase(it);
    table_.erase(id);
    on_drop_(id);
  }
}

void ObjectTable::keep_loans(const WorkerId& key, std::uint64_t call_id, const ActorId& borrower,
                             std::vector<StatePtr> borrowed, std::vector<ObjectId> lent,
                             std::chrono::steady_clock::time_point deadline) {
  KeptLoans replaced;  // dropped outside the lock (a drop may queue a release)
  {
    std::lock_guard lock(mutex_);
    auto& entry = kept_[{key, call_id}];
    replaced = std::move(entry);
    entry = KeptLoans{borrower, std::move(borrowed), std::move(lent), deadline};
  }
  end_loans(replaced.lent);
}

bool ObjectTable::return_loans(const WorkerId& key, std::uint64_t call_id, const ActorId& borrower) {
  KeptLoans returned;
  {
    std::lock_guard lock(mutex_);
    auto it = kept_.find({key, call_id});
    if (it == kept_.end() || it->second.borrower != borrower) return false;
    returned = std::move(it->second);
    kept_.erase(it);
  }
  end_loans(returned.lent);
  return true;
}

void ObjectTable::expire_loans(std::chrono::steady_clock::time_point now) {
  std::vector<KeptLoans> expired;
  {
    std::lock_guard lock(mutex_);
    for (auto it = kept_.begin(); it != kept_.end();) {
      if (it->second.deadline <= now) {
        expired.push_back(std::move(it->second));
        it = kept_.erase(it);
      } else {
        ++it;
      }
    }
  }
  for (auto& loans : expired) end_loans(loans.lent);
}

std::size_t ObjectTable::kept_loans() const {
  std::lock_guard lock(mutex_);
  return kept_.size();
}

void ObjectTable::release(const std::vector<ObjectId>& ids) {
  std::lock_guard lock(mutex_);
  for (const auto& id : ids) {
    table_.erase(id);
    if (auto it = wanted_.find(id); it != wanted_.end()) {
      parked_ -= it->second.states.size();
      wanted_.erase(it);
    }
    on_drop_(id);
  }
}

void ObjectTable::queue_release(const ObjectId& id, const std::string& location) {
  std::lock_guard lock(mutex_);
  releases_[location].push_back(id);
}

std::map<std::string, std::vector<ObjectId>> ObjectTable::take_releases() {
  std::lock_guard lock(mutex_);
  std::map<std::string, std::vector<ObjectId>> out;
  out.swap(releases_);
  return out;
}

void ObjectTable::clear() {
  std::map<std::pair<WorkerId, std::uint64_t>, KeptLoans> kept;  // dropped outside the lock
  std::lock_guard lock(mutex_);
  kept.swap(kept_);
  table_.clear();
  wanted_.clear();
  parked_ = 0;
}

}  // namespace troupe::detail
