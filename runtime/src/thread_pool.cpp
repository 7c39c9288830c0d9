#include "thread_pool.hpp"

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
  fn();
}

ThreadPool::ThreadPool(int threads) : guard_(boost::asio::make_work_guard(context_)) {
  threads_.reserve(static_cast<std::size_t>(threads));
  for (int i = 0; i < threads; ++i) threads_.emplace_back([this] { run_thread(); });
}

ThreadPool::~ThreadPool() { stop(); }

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
    // Reap temporaries that have already exited.
    for (auto it = temporaries_.begin(); it != temporaries_.end();) {
      if (it->finished->load()) {
        it->thread.join();
        it = temporaries_.erase(it);
      } else {
        ++it;
      }
    }
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
          finished->store(true);
        }),
        keep_running, finished});
  }
  return std::shared_ptr<void>(nullptr, [keep_running](void*) { keep_running->store(false); });
}

void ThreadPool::stop() {
  if (stopped_.exchange(true)) return;
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
