// DeadlineQueue: runs a function at a point in time, for call deadlines
// (CallOptions::timeout). One Asio timer on the runtime's pool serves every
// entry (a min-heap by time), so a million calls with deadlines cost one
// heap entry each, not a timer each.
//
// Contract: add() from any thread; each function runs once, on a thread of
// the pool, at or after its time, and never under this queue's lock (it may
// add entries). An entry whose `alive` state completed before its time is
// dropped unrun; the heap is swept of such entries when more than half of
// it is dead, so that calls which finish early do not pile up until their
// deadline. stop() drops every entry unrun (shutdown).
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <mutex>
#include <vector>

#include "asio.hpp"
#include "troupe/runtime/object_state.hpp"

namespace troupe::detail {

class DeadlineQueue : public std::enable_shared_from_this<DeadlineQueue> {
 public:
  using Clock = std::chrono::steady_clock;
  explicit DeadlineQueue(boost::asio::io_context& context);

  // Runs `fn` at `when` unless `alive` (the call's result) completed first.
  void add(Clock::time_point when, const StatePtr& alive, std::function<void()> fn);
  void stop();
  std::size_t size() const;

 private:
  struct Entry {
    Clock::time_point when;
    std::weak_ptr<ObjectState> alive;
    std::function<void()> fn;
  };
  struct Later {
    bool operator()(const Entry& a, const Entry& b) const { return a.when > b.when; }
  };
  void arm_locked(Clock::time_point when);
  void fire();
  void sweep_locked();

  mutable std::mutex mutex_;
  boost::asio::steady_timer timer_;
  std::vector<Entry> heap_;  // std::push_heap/pop_heap with Later: earliest first
  Clock::time_point armed_ = Clock::time_point::max();
  std::size_t sweep_at_ = 4096;
  bool stopped_ = false;
};

}  // namespace troupe::detail
