// The runtime's thread pool: Asio io_context run by a fixed set of threads,
// plus temporary threads while a pool thread blocks in a wait (see
// BlockingRegion), so actors that wait on each other cannot starve it,
// plus spare threads while every thread is stuck in a long handler (an
// actor method that sleeps or blocks in a syscall): a monitor that sees the
// pool's handlers make no progress for kStarvationTick with every thread
// busy adds a spare thread, which leaves after kSpareIdle without work. So
// max_concurrency is honoured however small the pool (as Go's sysmon hands
// a processor on when a thread sits in a syscall).
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
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
  // How long the pool's posted handlers may make no progress, with every
  // thread busy in one, before a spare thread is added; and how long a
  // spare thread waits for work before it leaves.
  static constexpr std::chrono::milliseconds kStarvationTick{20};
  static constexpr std::chrono::milliseconds kSpareIdle{1000};
  static constexpr int kMaxSpareThreads = 1024;

  enum class Growth {
    on_starvation,  // spare threads while every thread is stuck (the runtime's pools)
    fixed,          // never more than `threads` plus BlockingRegion stand-ins
  };

  explicit ThreadPool(int threads, Growth growth = Growth::on_starvation);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  // Runs `fn` on a pool thread. Handlers posted here (and deferred ones)
  // count as busy while they run, for the starvation monitor; handlers
  // Asio runs on its own (sockets, timers) are expected to be short.
  template <class F>
  void post(F&& fn) {
    boost::asio::post(context_, [this, fn = std::forward<F>(fn)]() mutable {
      BusyScope busy(*this);
      fn();
    });
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
  // Threads now serving the pool: fixed, temporary and spare.
  int live_threads() const noexcept { return live_.load(std::memory_order_relaxed); }

  // Marks this thread busy in a handler of `pool` while alive (post() and
  // deferred functions use it).
  class BusyScope {
   public:
    explicit BusyScope(ThreadPool& pool) noexcept;
    ~BusyScope();
    BusyScope(const BusyScope&) = delete;
    BusyScope& operator=(const BusyScope&) = delete;

   private:
    ThreadPool& pool_;
  };

 private:
  struct Temporary {
    std::thread thread;
    std::shared_ptr<std::atomic<bool>> keep_running;
    std::shared_ptr<std::atomic<bool>> finished;
  };
  void run_thread();
  void reap_locked();
  void monitor();
  void add_spare_thread();

  boost::asio::io_context context_;
  boost::asio::executor_work_guard<boost::asio::io_context::executor_type> guard_;
  std::vector<std::thread> threads_;
  std::mutex temporaries_mutex_;
  std::list<Temporary> temporaries_;  // BlockingRegion stand-ins and spares
  std::atomic<bool> stopped_{false};

  // Starvation monitor (Growth::on_starvation only).
  std::atomic<int> live_{0};              // threads running handlers of context_
  std::atomic<int> busy_{0};              // of them, inside a posted handler
  std::atomic<int> spares_{0};
  std::atomic<std::uint64_t> progress_{0};  // posted handlers begun or ended
  std::atomic<bool> monitor_asleep_{false};
  std::mutex monitor_mutex_;
  std::condition_variable monitor_wake_;
  std::thread monitor_;
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
