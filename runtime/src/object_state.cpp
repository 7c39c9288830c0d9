#include "troupe/runtime/object_state.hpp"

#include <random>
#include <thread>

#include "troupe/runtime/object_ref.hpp"

namespace troupe {
namespace {

std::atomic<int64_t> g_live_objects{0};
std::atomic<uint64_t> g_next_index{1};
std::atomic<detail::ReleaseHook> g_release_hook{nullptr};

uint64_t process_owner_id() {
  static const uint64_t id = [] {
    std::random_device device;
    return (static_cast<uint64_t>(device()) << 32) ^ device() ^
           static_cast<uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count());
  }();
  return id;
}

// How long wait() polls before it sleeps: a wake-up through the kernel costs
// ~90 us on these machines, a result often arrives sooner than that.
constexpr auto kSpinFor = std::chrono::microseconds(30);

}  // namespace

int64_t live_objects() noexcept { return g_live_objects.load(std::memory_order_relaxed); }

namespace detail {

ObjectState::ObjectState() : id_{process_owner_id(), g_next_index.fetch_add(1, std::memory_order_relaxed)} {
  g_live_objects.fetch_add(1, std::memory_order_relaxed);
}

ObjectState::ObjectState(ObjectId id) : id_(id) { g_live_objects.fetch_add(1, std::memory_order_relaxed); }

ObjectState::~ObjectState() {
  g_live_objects.fetch_sub(1, std::memory_order_relaxed);
  if (!location_.empty()) {
    if (auto hook = g_release_hook.load(std::memory_order_acquire)) hook(id_, location_);
  }
}

void set_release_hook(ReleaseHook hook) noexcept { g_release_hook.store(hook, std::memory_order_release); }

bool ObjectState::set_value(ValuePtr value) { return complete(kReady, std::move(value), nullptr); }

bool ObjectState::set_error(std::exception_ptr error) { return complete(kFailed, nullptr, std::move(error)); }

bool ObjectState::complete(int status, ValuePtr value, std::exception_ptr error) {
  std::vector<std::function<void()>> callbacks;
  std::function<bool()> canceller;
  {
    std::lock_guard lock(mutex_);
    if (status_.load(std::memory_order_relaxed) != kPending) return false;
    value_ = std::move(value);
    error_ = std::move(error);
    status_.store(status, std::memory_order_release);
    callbacks.swap(callbacks_);
    canceller.swap(canceller_);  // destroyed outside the lock
    if (waiters_ > 0) cv_.notify_all();
  }
  for (auto& callback : callbacks) callback();
  return true;
}

void ObjectState::on_complete(std::function<void()> callback) {
  {
    std::lock_guard lock(mutex_);
    if (status_.load(std::memory_order_relaxed) == kPending) {
      callbacks_.push_back(std::move(callback));
      return;
    }
  }
  callback();
}

void ObjectState::wait() {
  if (is_ready()) return;
  const auto spin_until = std::chrono::steady_clock::now() + kSpinFor;
  while (std::chrono::steady_clock::now() < spin_until) {
    if (is_ready()) return;
    std::this_thread::yield();
  }
  std::unique_lock lock(mutex_);
  if (is_ready()) return;
  BlockingRegion region;
  ++waiters_;
  cv_.wait(lock, [&] { return is_ready(); });
  --waiters_;
}

bool ObjectState::wait_until(std::chrono::steady_clock::time_point deadline) {
  if (is_ready()) return true;
  std::unique_lock lock(mutex_);
  if (is_ready()) return true;
  BlockingRegion region;
  ++waiters_;
  bool done = cv_.wait_until(lock, deadline, [&] { return is_ready(); });
  --waiters_;
  return done;
}

void ObjectState::rethrow_if_error() const {
  if (has_error()) std::rethrow_exception(error_);
}

void ObjectState::set_canceller(std::function<bool()> canceller) {
  std::lock_guard lock(mutex_);
  if (status_.load(std::memory_order_relaxed) == kPending) canceller_ = std::move(canceller);
}

bool ObjectState::cancel() {
  std::function<bool()> canceller;
  {
    std::lock_guard lock(mutex_);
    if (status_.load(std::memory_order_relaxed) != kPending) return false;
    canceller = canceller_;
  }
  if (!canceller) return false;
  return canceller();
}

void forward_state(const StatePtr& from, StatePtr to) {
  std::weak_ptr<ObjectState> weak_from = from;
  from->on_complete([weak_from, to = std::move(to)] {
    auto source = weak_from.lock();
    if (!source) return;
    if (source->has_error()) to->set_error(source->error());
    else to->set_value(source->value());
  });
}

std::exception_ptr continuation_error(const std::exception_ptr& thrown) {
  auto info = describe(thrown);
  return make_error(Errc::task_failed, "a then() continuation threw " + info.type + ": " + info.message, info.type);
}

}  // namespace detail

}  // namespace troupe
