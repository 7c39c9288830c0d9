// The runtime's thread pool: Asio io_context run by a fixed set of threads,
// plus temporary threads while a pool thread blocks in a wait (see
// BlockingRegion), so actors that wait on each other cannot starve it.
#pragma once

#include <atomic>
#include <functional>
#include <list>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "asio.hpp"

namespace troupe::detail {

class ThreadPool {
 public:
  explicit ThreadPool(int threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  template <class F>
  void post(F&& fn) {
    boost::asio::post(context_, std::forward<F>(fn));
  }
  // Like post(), except inside a DeferScope on this thread (opened for any
  // pool) whose slot is free: then `fn` runs on this thread when the scope
  // ends, saving the wake-up of another thread (the call plane uses this to
  // run a call on the thread that received it). At most one function is
  // deferred per scope, so work that may run concurrently still spreads.
  void post_or_defer(std::function<void()> fn);
  boost::asio::io_context& context() noexcept { return context_; }
  // The pool whose thread (fixed or temporary) calls this, or nullptr.
  static ThreadPool* current() noexcept;
  // Stops taking work, drops what is queued and joins every thread.
  void stop();
  bool on_pool_thread() const noexcept;
  std::size_t size() const noexcept { return threads_.size(); }

  // Adds a thread that runs handlers until the returned token is destroyed.
  std::shared_ptr<void> add_temporary_thread();

 private:
  struct Temporary {
    std::thread thread;
    std::shared_ptr<std::atomic<bool>> keep_running;
    std::shared_ptr<std::atomic<bool>> finished;
  };
  void run_thread();

  boost::asio::io_context context_;
  boost::asio::executor_work_guard<boost::asio::io_context::executor_type> guard_;
  std::vector<std::thread> threads_;
  std::mutex temporaries_mutex_;
  std::list<Temporary> temporaries_;
  std::atomic<bool> stopped_{false};
};

// Collects the one function post_or_defer() defers on this thread and runs
// it in run() (or, if run() is never reached, posts it from the destructor
// so that nothing is lost). Scopes do not nest: an inner scope is inert.
class DeferScope {
 public:
  explicit DeferScope(ThreadPool& pool);
  ~DeferScope();
  DeferScope(const DeferScope&) = delete;
  DeferScope& operator=(const DeferScope&) = delete;
  // Closes the scope and runs the deferred function, if any, here.
  void run();

 private:
  friend class ThreadPool;
  ThreadPool& pool_;
  bool active_ = false;
  std::function<void()> deferred_;
};

}  // namespace troupe::detail
