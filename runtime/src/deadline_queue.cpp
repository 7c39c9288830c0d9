#include "deadline_queue.hpp"

#include <algorithm>

namespace troupe::detail {

DeadlineQueue::DeadlineQueue(boost::asio::io_context& context) : timer_(context) {}

void DeadlineQueue::add(Clock::time_point when, const StatePtr& alive, std::function<void()> fn) {
  std::lock_guard lock(mutex_);
  if (stopped_) return;
  if (heap_.size() >= sweep_at_) sweep_locked();
  heap_.push_back(Entry{when, alive, std::move(fn)});
  std::push_heap(heap_.begin(), heap_.end(), Later{});
  arm_locked(heap_.front().when);
}

void DeadlineQueue::stop() {
  std::vector<Entry> dropped;  // destroyed outside the lock
  std::lock_guard lock(mutex_);
  stopped_ = true;
  timer_.cancel();
  dropped.swap(heap_);
}

std::size_t DeadlineQueue::size() const {
  std::lock_guard lock(mutex_);
  return heap_.size();
}

void DeadlineQueue::arm_locked(Clock::time_point when) {
  if (when >= armed_) return;  // a wait for an earlier time is outstanding
  armed_ = when;
  timer_.expires_at(when);  // aborts the outstanding wait, if any
  std::weak_ptr<DeadlineQueue> weak = weak_from_this();
  timer_.async_wait([weak](const boost::system::error_code& error) {
    if (error) return;  // re-armed or stopped
    if (auto self = weak.lock()) self->fire();
  });
}

void DeadlineQueue::fire() {
  std::vector<Entry> due;
  {
    std::lock_guard lock(mutex_);
    if (stopped_) return;
    armed_ = Clock::time_point::max();
    const auto now = Clock::now();
    while (!heap_.empty() && heap_.front().when <= now) {
      std::pop_heap(heap_.begin(), heap_.end(), Later{});
      due.push_back(std::move(heap_.back()));
      heap_.pop_back();
    }
    if (!heap_.empty()) arm_locked(heap_.front().when);
  }
  for (auto& entry : due) {
    auto alive = entry.alive.lock();
    if (!alive || alive->is_ready()) continue;
    try {
      entry.fn();
    } catch (...) {
      // A deadline's action only fails a call; nothing to report here.
    }
  }
}

void DeadlineQueue::sweep_locked() {
  std::erase_if(heap_, [](const Entry& entry) {
    auto alive = entry.alive.lock();
    return !alive || alive->is_ready();
  });
  std::make_heap(heap_.begin(), heap_.end(), Later{});
  sweep_at_ = std::max<std::size_t>(4096, 2 * heap_.size());
}

}  // namespace troupe::detail
