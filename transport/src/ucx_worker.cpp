// UcxWorker: the ucp_worker and the progress thread that owns it.
#include "troupe/transport/ucx.hpp"

#include <poll.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <deque>
#include <mutex>
#include <thread>
#include <utility>

#include <ucp/api/ucp.h>

#include <spdlog/spdlog.h>

#include "troupe/transport/error.hpp"
#include "ucx_tick.hpp"

namespace troupe::transport {

using Clock = std::chrono::steady_clock;

namespace {
void log_failure(const char* what, const char* why) noexcept {
  try {
    auto logger = spdlog::get("troupe");
    (logger ? logger : spdlog::default_logger())->error("UCX progress thread: {} threw: {}", what, why);
  } catch (...) {
  }
}
// exit_at_safe_points(): the wake fds of the running progress threads (fd
// + 1; 0 = free), whether an exit was asked for, and how many threads run
// and how many stopped for it. Plain atomics: a signal handler reads them.
constexpr int kMaxExitSlots = 256;
std::atomic<int> g_exit_wake_fds[kMaxExitSlots];
std::atomic<bool> g_exit_requested{false};
std::atomic<int> g_progress_threads{0};
std::atomic<int> g_parked_threads{0};

void kill_this_process() noexcept { ::kill(::getpid(), SIGKILL); }

// On a progress thread, outside UCX: stop here for good; the last thread
// to stop ends the process.
[[noreturn]] void park_for_exit() noexcept {
  if (g_parked_threads.fetch_add(1) + 1 >= g_progress_threads.load()) kill_this_process();
  for (;;) ::pause();
}

inline void exit_if_asked() noexcept {
  if (g_exit_requested.load(std::memory_order_relaxed)) [[unlikely]]
    park_for_exit();
}

// Registers a progress thread (before its first UCX call) and its wake fd;
// deregisters when it ends (after its last).
class ExitSlot {
 public:
  explicit ExitSlot(int wake_fd) {
    g_progress_threads.fetch_add(1);
    for (int i = 0; i < kMaxExitSlots; ++i) {
      int expected = 0;
      if (g_exit_wake_fds[i].compare_exchange_strong(expected, wake_fd + 1)) {
        slot_ = i;
        break;
      }
    }
    exit_if_asked();
  }
  ~ExitSlot() {
    if (slot_ >= 0) g_exit_wake_fds[slot_].store(0);
    g_progress_threads.fetch_sub(1);
    exit_if_asked();  // the others may all be parked, waiting for this one
  }
  ExitSlot(const ExitSlot&) = delete;
  ExitSlot& operator=(const ExitSlot&) = delete;

 private:
  int slot_ = -1;
};

extern "C" void exit_at_safe_points_handler(int) { UcxWorker::exit_at_safe_points(); }
}  // namespace

void UcxWorker::exit_at_safe_points() noexcept {
  const int saved_errno = errno;
  g_exit_requested.store(true);
  if (g_progress_threads.load() == 0) kill_this_process();
  for (auto& slot : g_exit_wake_fds) {
    // A thread past its last UCX call may close its fd meanwhile: at worst
    // this writes 8 bytes to a closed fd (EBADF), never reads one.
    if (const int fd = slot.load(); fd > 0) {
      const std::uint64_t one = 1;
      [[maybe_unused]] auto written = ::write(fd - 1, &one, sizeof one);
    }
  }
  // Every thread may have parked before the flag was seen by the last.
  if (g_parked_threads.load() >= g_progress_threads.load()) kill_this_process();
  errno = saved_errno;
}

void UcxWorker::exit_at_safe_points_on(int signal) {
  struct sigaction action {};
  action.sa_handler = &exit_at_safe_points_handler;
  sigemptyset(&action.sa_mask);
  action.sa_flags = SA_RESTART;
  if (::sigaction(signal, &action, nullptr) != 0)
    throw_error(Errc::transport, "sigaction failed: " + std::string(std::strerror(errno)));
}

// How long the loop keeps polling after UCX last made progress while
// operations are in flight (see UcxWorker::Tick).
constexpr auto kInFlightSpin = std::chrono::milliseconds(5);
// A yield that took longer than this ran another thread on this core: the
// machine has more runnable threads than cores. Spinning then costs the
// latency it is meant to save: a spinning thread is often waiting in the
// run queue (where no event can wake it) behind threads the scheduler
// favours over one that used its share, so a message that arrives waits a
// time slice or more (5 ms round trips measured on the loaded 2-core
// machine). Once a yield shows it, the loop stops polling for messages
// (kPollWhileIdle) for kContendedFor and sleeps on the event fd instead (a
// woken thread runs at once), then tries a poll again. Operations in
// flight are still polled for (no event says when they can move on).
constexpr auto kContendedYield = std::chrono::microseconds(50);
constexpr auto kContendedFor = std::chrono::milliseconds(200);
// The longest the thread sleeps on the event fd without looking.
constexpr auto kMaxSleep = std::chrono::milliseconds(100);

// State shared between posting threads and the progress thread.
struct UcxWorker::Loop {
  std::mutex mutex;
  std::deque<std::function<void()>> tasks;  // guarded by mutex
  int wake_fd = -1;                         // eventfd: tasks were posted
  int event_fd = -1;                        // the worker's, from ucp_worker_get_efd
  std::thread thread;
  std::thread::id thread_id;
  // The progress thread is (about to be) asleep in poll(): a post must
  // wake it. While it polls, a post only queues (no system call).
  std::atomic<bool> sleeping{false};
  bool stopping = false;  // progress thread only
  Tick tick;              // progress thread only

  void wake() const {
    const std::uint64_t one = 1;
    while (::write(wake_fd, &one, sizeof one) < 0 && errno == EINTR) {
    }
  }
  void drain_wake() const {
    std::uint64_t count = 0;
    while (::read(wake_fd, &count, sizeof count) < 0 && errno == EINTR) {
    }
  }
  // Runs the tasks posted so far; returns whether there were any.
  bool run_tasks() {
    std::deque<std::function<void()>> batch;
    {
      std::lock_guard lock(mutex);
      batch.swap(tasks);
    }
    for (auto& task : batch) {
      // A task that throws must not end the progress thread (every fetch
      // and push of the process depends on it): log and go on.
      try {
        task();
      } catch (const std::exception& e) {
        log_failure("a posted task", e.what());
      } catch (...) {
        log_failure("a posted task", "a non-standard exception");
      }
    }
    return !batch.empty();
  }
};

UcxWorker::UcxWorker(std::shared_ptr<UcxContext> context)
    : context_(std::move(context)), loop_(std::make_unique<Loop>()) {}

std::shared_ptr<UcxWorker> UcxWorker::create(std::shared_ptr<UcxContext> context) {
  if (!context) throw_error(Errc::invalid_argument, "UcxWorker::create: no context");
  std::shared_ptr<UcxWorker> self(new UcxWorker(std::move(context)));
  self->loop_->wake_fd = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (self->loop_->wake_fd < 0)
    throw_error(Errc::transport, "eventfd failed: " + std::string(std::strerror(errno)));
  std::promise<void> started;
  auto ready = started.get_future();
  UcxWorker* raw = self.get();
  self->loop_->thread = std::thread([raw, &started] { raw->run(started); });
  try {
    ready.get();
  } catch (...) {
    self->loop_->thread.join();
    throw;
  }
  return self;
}

UcxWorker::~UcxWorker() {
  if (loop_->thread.joinable()) {
    post([this] { loop_->stopping = true; });
    loop_->thread.join();
  }
  if (loop_->wake_fd >= 0) ::close(loop_->wake_fd);
}

void UcxWorker::post(std::function<void()> task) {
  bool was_empty;
  {
    std::lock_guard lock(loop_->mutex);
    was_empty = loop_->tasks.empty();
    loop_->tasks.push_back(std::move(task));
  }
  // The loop sets `sleeping` before it looks at the tasks one last time
  // (under the mutex), so a task queued after that look sees it set.
  if (was_empty && loop_->sleeping.load()) loop_->wake();
}

bool UcxWorker::on_progress_thread() const noexcept {
  return std::this_thread::get_id() == loop_->thread_id;
}

void UcxWorker::set_tick(Tick tick) { loop_->tick = std::move(tick); }

void UcxWorker::run(std::promise<void>& started) {
  Loop& loop = *loop_;
  loop.thread_id = std::this_thread::get_id();
  ExitSlot exit_slot(loop.wake_fd);
  ucp_worker_params_t params{};
  params.field_mask = UCP_WORKER_PARAM_FIELD_THREAD_MODE;
  params.thread_mode = UCS_THREAD_MODE_SINGLE;  // this thread is its only user
  ucp_worker_h worker = nullptr;
  if (ucs_status_t status = ucp_worker_create(context_->handle(), &params, &worker); status != UCS_OK) {
    started.set_exception(make_error_from_ucs(status, "ucp_worker_create"));
    return;
  }
  ucp_address_t* address = nullptr;
  std::size_t address_length = 0;
  ucs_status_t status = ucp_worker_get_address(worker, &address, &address_length);
  if (status == UCS_OK) {
    address_.assign(reinterpret_cast<const char*>(address), address_length);
    ucp_worker_release_address(worker, address);
    status = ucp_worker_get_efd(worker, &loop.event_fd);
  }
  if (status != UCS_OK) {
    ucp_worker_destroy(worker);
    started.set_exception(make_error_from_ucs(status, "setting up the UCX worker"));
    return;
  }
  worker_ = worker;
  started.set_value();

  const auto busy_poll = context_->options().busy_poll;
  auto last_activity = Clock::now();
  auto contended_until = Clock::time_point::min();  // no spinning before (kContendedYield)
  for (;;) {
    exit_if_asked();
    bool active = loop.run_tasks();
    while (ucp_worker_progress(worker) != 0) {
      active = true;
      exit_if_asked();
    }
    auto next = Clock::time_point::max();
    if (loop.tick) {
      try {
        next = loop.tick();
      } catch (const std::exception& e) {
        log_failure("the tick", e.what());
        next = Clock::now() + std::chrono::milliseconds(10);
      } catch (...) {
        log_failure("the tick", "a non-standard exception");
        next = Clock::now() + std::chrono::milliseconds(10);
      }
    }
    if (loop.stopping) {
      std::lock_guard lock(loop.mutex);
      if (loop.tasks.empty()) break;
      continue;
    }
    const auto now = Clock::now();
    if (active) last_activity = now;
    const bool in_flight = next == Clock::time_point::min();
    const bool recent = next == kPollWhileIdle;  // messages lately: poll if the core is free
    if ((in_flight || (recent && now >= contended_until)) && now - last_activity < kInFlightSpin) {
      if (!active) {
        std::this_thread::yield();  // let the peer (maybe on this core) run
        const auto after = Clock::now();
        if (after - now > kContendedYield) contended_until = after + kContendedFor;
      }
      continue;
    }
    if (!in_flight && !recent && busy_poll.count() > 0 && now - last_activity < busy_poll && next > now) continue;
    if (!in_flight && !recent && next <= now) continue;
    // Sleep only when UCX says nothing is pending (ucp_worker_arm == UCS_OK);
    // BUSY means events arrived since the last progress call.
    status = ucp_worker_arm(worker);
    if (status == UCS_ERR_BUSY) continue;
    // Never asleep for long: a wake-up that UCX's transports lose (a peer's
    // connection request arriving just as this thread armed) would
    // otherwise leave that peer's messages unread for good; looking every
    // kMaxSleep costs an idle process about ten wake-ups a second.
    int timeout_ms = static_cast<int>(kMaxSleep.count());
    if (in_flight || recent) {
      timeout_ms = 1;  // stalled in flight: look again soon
    } else if (next != Clock::time_point::max()) {
      const auto left = std::chrono::duration_cast<std::chrono::microseconds>(next - now).count();
      timeout_ms = static_cast<int>(std::min<long long>((left + 999) / 1000, kMaxSleep.count()));
    }
    if (status != UCS_OK) timeout_ms = 1;  // cannot arm: fall back to polling every ms
    loop.sleeping.store(true);
    {
      std::lock_guard lock(loop.mutex);
      if (!loop.tasks.empty()) {
        loop.sleeping.store(false);
        continue;
      }
    }
    pollfd fds[2] = {{loop.event_fd, POLLIN, 0}, {loop.wake_fd, POLLIN, 0}};
    const int ready = ::poll(fds, 2, timeout_ms);
    loop.sleeping.store(false);
    if (ready > 0 && (fds[1].revents & POLLIN) != 0) loop.drain_wake();
  }
  loop.tick = nullptr;
  worker_ = nullptr;
  ucp_worker_destroy(worker);
}

}  // namespace troupe::transport
