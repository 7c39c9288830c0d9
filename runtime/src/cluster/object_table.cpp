#include "object_table.hpp"

#include "troupe/runtime/object_ref.hpp"  // forward_state

namespace troupe::detail {

std::vector<StatePtr> ObjectTable::hold_locked(const ObjectId& id, const StatePtr& state) {
  table_[id] = state;
  std::vector<StatePtr> waiting;
  if (auto it = wanted_.find(id); it != wanted_.end()) {
    waiting = std::move(it->second);
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
  auto state = std::make_shared<ObjectState>(id);
  wanted_[id].push_back(state);
  return state;
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

void ObjectTable::release(const std::vector<ObjectId>& ids) {
  std::lock_guard lock(mutex_);
  for (const auto& id : ids) {
    table_.erase(id);
    wanted_.erase(id);
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
  std::lock_guard lock(mutex_);
  table_.clear();
  wanted_.clear();
}

}  // namespace troupe::detail
