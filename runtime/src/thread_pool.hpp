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

#include "troupe/runtime/asio.hpp"

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

}  // namespace troupe::detail
