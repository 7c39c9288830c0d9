#include "thread_pool.hpp"

#include <optional>

#include "troupe/runtime/logging.hpp"

namespace troupe::detail {
namespace {
thread_local ThreadPool* t_pool = nullptr;
thread_local DeferScope* t_defer = nullptr;
}

ThreadPool* ThreadPool::current() noexcept { return t_pool; }

void ThreadPool::post_or_defer(std::function<void()> fn) {
  DeferScope* scope = t_defer;
  if (scope && !scope->deferred_) {  // the scope's thread runs it, whichever pool posts
    scope->deferred_ = std::move(fn);
    return;
  }
  post(std::move(fn));
}

DeferScope::DeferScope(ThreadPool& pool) : pool_(pool) {
  if (t_defer == nullptr) {
    t_defer = this;
    active_ = true;
  }
}

DeferScope::~DeferScope() {
  if (active_) t_defer = nullptr;
  if (deferred_) pool_.post(std::move(deferred_));
}

void DeferScope::run() {
  if (active_) {
    t_defer = nullptr;
    active_ = false;
  }
  if (!deferred_) return;
  auto fn = std::move(deferred_);
  deferred_ = nullptr;
  // Run here in place of a posted handler: busy as one.
  std::optional<ThreadPool::BusyScope> busy;
  if (ThreadPool* pool = ThreadPool::current()) busy.emplace(*pool);
  fn();
}

ThreadPool::BusyScope::BusyScope(ThreadPool& pool) noexcept : pool_(pool) {
  pool_.progress_.fetch_add(1, std::memory_order_relaxed);
  const int busy = pool_.busy_.fetch_add(1, std::memory_order_seq_cst) + 1;
  // Every thread busy: wake the monitor to watch for progress.
  if (busy >= pool_.live_.load(std::memory_order_seq_cst) && pool_.monitor_asleep_.load(std::memory_order_seq_cst)) {
    std::lock_guard lock(pool_.monitor_mutex_);
    pool_.monitor_wake_.notify_one();
  }
}

ThreadPool::BusyScope::~BusyScope() {
  pool_.busy_.fetch_sub(1, std::memory_order_relaxed);
  pool_.progress_.fetch_add(1, std::memory_order_relaxed);
}

ThreadPool::ThreadPool(int threads, Growth growth) : guard_(boost::asio::make_work_guard(context_)) {
  live_.store(threads);
  threads_.reserve(static_cast<std::size_t>(threads));
  for (int i = 0; i < threads; ++i) threads_.emplace_back([this] { run_thread(); });
  if (growth == Growth::on_starvation) monitor_ = std::thread([this] { monitor(); });
}

ThreadPool::~ThreadPool() { stop(); }

void ThreadPool::monitor() {
  std::unique_lock lock(monitor_mutex_);
  while (!stopped_.load()) {
    // Asleep while some thread is free (a posted handler finds it at once).
    monitor_asleep_.store(true, std::memory_order_seq_cst);
    if (busy_.load(std::memory_order_seq_cst) < live_.load(std::memory_order_seq_cst)) {
      monitor_wake_.wait_for(lock, std::chrono::seconds(1));
      monitor_asleep_.store(false);
      continue;
    }
    monitor_asleep_.store(false);
    const auto before = progress_.load(std::memory_order_relaxed);
    monitor_wake_.wait_for(lock, kStarvationTick);
    if (stopped_.load()) break;
    if (busy_.load() >= live_.load() && progress_.load(std::memory_order_relaxed) == before &&
        spares_.load() < kMaxSpareThreads) {
      lock.unlock();
      add_spare_thread();
      lock.lock();
    }
  }
}

void ThreadPool::reap_locked() {
  for (auto it = temporaries_.begin(); it != temporaries_.end();) {
    if (it->finished->load()) {
      it->thread.join();
      it = temporaries_.erase(it);
    } else {
      ++it;
    }
  }
}

void ThreadPool::add_spare_thread() {
  std::lock_guard lock(temporaries_mutex_);
  if (stopped_.load()) return;
  reap_locked();
  auto keep_running = std::make_shared<std::atomic<bool>>(true);
  auto finished = std::make_shared<std::atomic<bool>>(false);
  spares_.fetch_add(1);
  live_.fetch_add(1);
  temporaries_.push_back(Temporary{
      std::thread([this, keep_running, finished] {
        t_pool = this;
        auto idle_since = std::chrono::steady_clock::now();
        while (keep_running->load() && !context_.stopped()) {
          std::size_t ran = 0;
          try {
            ran = context_.run_one_for(std::chrono::milliseconds(100));
          } catch (const std::exception& e) {
            TROUPE_LOG_ERROR("uncaught exception on a pool thread: {}", e.what());
          }
          const auto now = std::chrono::steady_clock::now();
          if (ran > 0) idle_since = now;
          else if (now - idle_since >= kSpareIdle) break;
        }
        live_.fetch_sub(1);
        spares_.fetch_sub(1);
        finished->store(true);
      }),
      keep_running, finished});
}

void ThreadPool::run_thread() {
  t_pool = this;
  for (;;) {
    try {
      context_.run();
      return;
    } catch (const std::exception& e) {
      // A handler let an exception escape: a troupe bug. Keep the thread.
      TROUPE_LOG_ERROR("uncaught exception on a pool thread: {}", e.what());
    }
  }
}

bool ThreadPool::on_pool_thread() const noexcept { return t_pool == this; }

std::shared_ptr<void> ThreadPool::add_temporary_thread() {
  if (stopped_.load()) return nullptr;
  auto keep_running = std::make_shared<std::atomic<bool>>(true);
  auto finished = std::make_shared<std::atomic<bool>>(false);
  {
    std::lock_guard lock(temporaries_mutex_);
    reap_locked();
    live_.fetch_add(1);
    temporaries_.push_back(Temporary{
        std::thread([this, keep_running, finished] {
          t_pool = this;
          while (keep_running->load() && !context_.stopped()) {
            try {
              context_.run_one_for(std::chrono::milliseconds(20));
            } catch (const std::exception& e) {
              TROUPE_LOG_ERROR("uncaught exception on a pool thread: {}", e.what());
            }
          }
          live_.fetch_sub(1);
          finished->store(true);
        }),
        keep_running, finished});
  }
  return std::shared_ptr<void>(nullptr, [keep_running](void*) { keep_running->store(false); });
}

void ThreadPool::stop() {
  if (stopped_.exchange(true)) return;
  {
    std::lock_guard lock(monitor_mutex_);
    monitor_wake_.notify_all();
  }
  if (monitor_.joinable()) monitor_.join();
  guard_.reset();
  context_.stop();
  for (auto& thread : threads_) {
    if (thread.joinable()) thread.join();
  }
  std::list<Temporary> temporaries;
  {
    std::lock_guard lock(temporaries_mutex_);
    temporaries.swap(temporaries_);
  }
  for (auto& temporary : temporaries) {
    temporary.keep_running->store(false);
    if (temporary.thread.joinable()) temporary.thread.join();
  }
}

}  // namespace troupe::detail
