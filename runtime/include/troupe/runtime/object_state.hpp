// The shared state behind ObjectRef: a write-once slot holding a value or an
// error, with completion callbacks. Internal to troupe; users see ObjectRef.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "troupe/runtime/ids.hpp"
#include "troupe/runtime/value.hpp"

namespace troupe {

// Number of objects (ObjectRef states) alive in this process. Every ref that
// is dropped and every call that completes lets it fall back; tests use it to
// prove that nothing leaks.
int64_t live_objects() noexcept;

namespace detail {

class ObjectState {
 public:
  ObjectState();
  // An object whose id was chosen elsewhere (a caller in another process).
  explicit ObjectState(ObjectId id);
  ~ObjectState();
  ObjectState(const ObjectState&) = delete;
  ObjectState& operator=(const ObjectState&) = delete;

  const ObjectId& id() const noexcept { return id_; }
  bool is_ready() const noexcept { return status_.load(std::memory_order_acquire) != kPending; }
  bool has_error() const noexcept { return status_.load(std::memory_order_acquire) == kFailed; }

  // Write-once: the first of set_value/set_error wins and returns true; later
  // ones are ignored (a killed actor's late result, a second cancel).
  // Completion callbacks run on the completing thread, after the state is
  // visible; they must be short and never block (they post real work).
  bool set_value(ValuePtr value);
  bool set_error(std::exception_ptr error);

  // Runs `callback` once the object completes: now, on this thread, if it
  // already has; else on the completing thread.
  void on_complete(std::function<void()> callback);

  // Blocks until complete. A wait on one of the runtime's pool threads lets
  // the pool grow by one thread for its duration, so actors that block on
  // each other's results cannot starve the pool.
  void wait();
  // Returns false if the deadline passed first.
  bool wait_until(std::chrono::steady_clock::time_point deadline);

  // Only valid once is_ready().
  const ValuePtr& value() const noexcept { return value_; }
  const std::exception_ptr& error() const noexcept { return error_; }
  // Rethrows the error, if any.
  void rethrow_if_error() const;

  // The backend that will produce this object installs a canceller; cancel()
  // calls it. It returns true if the work was withdrawn before it started.
  void set_canceller(std::function<bool()> canceller);
  bool cancel();

  // Cluster mode: the call-plane address of the process that produces and
  // holds this object ("" = this process). Set before the ref is shared.
  void set_location(std::string address) { location_ = std::move(address); }
  const std::string& location() const noexcept { return location_; }

 private:
  enum : int { kPending = 0, kReady = 1, kFailed = 2 };
  bool complete(int status, ValuePtr value, std::exception_ptr error);

  ObjectId id_;
  std::atomic<int> status_{kPending};
  ValuePtr value_;
  std::exception_ptr error_;
  mutable std::mutex mutex_;
  std::condition_variable cv_;
  int waiters_ = 0;
  std::vector<std::function<void()>> callbacks_;
  std::function<bool()> canceller_;
  std::string location_;
};

// Called when an object with a location is destroyed, so the runtime can
// tell the holder to free it (Ray's ownership: the ref's creator owns it).
using ReleaseHook = void (*)(const ObjectId& id, const std::string& location);
void set_release_hook(ReleaseHook hook) noexcept;

using StatePtr = std::shared_ptr<ObjectState>;

// Runs `fn` on the runtime's thread pool; inline if the runtime is not
// running (e.g. refs used after shutdown).
void post_task(std::function<void()> fn);

}  // namespace detail
}  // namespace troupe
