// Local-mode actor call cost: a no-op method called on one actor, beside a
// baseline of a plain std::function posted to an identical Asio pool (same
// number of threads) whose completion is signalled and awaited the way an
// ObjectRef's is. The ratio is what the actor layer (mailbox, ordering,
// ObjectState, type-erased invoke) adds over the bare thread hand-off.
//
//   latency:    call + get() round trip, one at a time, from the main thread
//   throughput: issue N calls, then wait for all of them
//   throughput with C callers: C threads, each with its own actor (1:1)
//
// Runtime and baseline repeats alternate, so drift on a noisy machine hits
// both; each figure is the median over repeats.
#include "bench_util.hpp"

// The baseline uses Asio directly, not troupe's private wrapper. Boost 1.74's
// awaitable.hpp needs <utility> first under C++20.
#include <utility>

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>

#include <atomic>
#include <condition_variable>
#include <cstdio>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "troupe/troupe.hpp"

namespace bench_actors {

class Noop {
 public:
  Noop() = default;
  void noop() {}
};

}  // namespace bench_actors

TROUPE_ACTOR(bench_actors::Noop, (), noop);

namespace {

using troupe::bench::Better;
using troupe::bench::Clock;
using troupe::bench::Samples;
using troupe::bench::measure_parallel;
using troupe::bench::median;
using Noop = bench_actors::Noop;

// The baseline's completion: a heap-allocated state per call, set by the
// pool thread and awaited by the caller the way ObjectState::wait() does it
// (poll with yield for a short while, then sleep on a condition variable).
// Keep kSpinFor equal to the runtime's so the comparison stays like for like.
class Completion {
 public:
  void set() {
    std::lock_guard lock(mutex_);
    done_.store(true, std::memory_order_release);
    if (waiters_ > 0) cv_.notify_all();
  }
  void wait() {
    if (ready()) return;
    const auto spin_until = Clock::now() + kSpinFor;
    while (Clock::now() < spin_until) {
      if (ready()) return;
      std::this_thread::yield();
    }
    std::unique_lock lock(mutex_);
    ++waiters_;
    cv_.wait(lock, [&] { return ready(); });
    --waiters_;
  }

 private:
  static constexpr auto kSpinFor = std::chrono::microseconds(30);
  bool ready() const { return done_.load(std::memory_order_acquire); }

  std::atomic<bool> done_{false};
  std::mutex mutex_;
  std::condition_variable cv_;
  int waiters_ = 0;
};

// The same shape as the runtime's pool: one io_context run by N threads.
class BaselinePool {
 public:
  explicit BaselinePool(int threads) : guard_(boost::asio::make_work_guard(context_)) {
    for (int i = 0; i < threads; ++i) threads_.emplace_back([this] { context_.run(); });
  }
  ~BaselinePool() {
    guard_.reset();
    context_.stop();
    for (auto& thread : threads_) thread.join();
  }
  BaselinePool(const BaselinePool&) = delete;
  BaselinePool& operator=(const BaselinePool&) = delete;

  // One "call": a type-erased no-op run on the pool, completing a fresh state.
  std::shared_ptr<Completion> call(std::function<void()> fn) {
    auto completion = std::make_shared<Completion>();
    boost::asio::post(context_, [fn = std::move(fn), completion] {
      fn();
      completion->set();
    });
    return completion;
  }

 private:
  boost::asio::io_context context_;
  boost::asio::executor_work_guard<boost::asio::io_context::executor_type> guard_;
  std::vector<std::thread> threads_;
};

void noop_function() {}

struct LatencyFigures {
  double p50 = 0, p99 = 0, mean = 0;
};

// One repeat of sequential round trips; microseconds per call.
template <class RoundTrip>
LatencyFigures measure_latency(int iterations, RoundTrip&& round_trip) {
  Samples samples;
  samples.reserve(static_cast<std::size_t>(iterations));
  for (int i = 0; i < iterations; ++i) {
    const auto start = Clock::now();
    round_trip();
    samples.add(troupe::bench::micros_since(start));
  }
  return {samples.p50(), samples.p99(), samples.mean()};
}

// One repeat of "issue n, then wait for all"; calls per second.
template <class Issue, class WaitAll>
double measure_throughput(Issue&& issue, WaitAll&& wait_all, int n) {
  const auto start = Clock::now();
  issue(n);
  wait_all();
  return n / troupe::bench::seconds_since(start);
}

// C caller threads, each issuing n/C calls and waiting for them; released
// together so the timed window covers only the calls. `per_caller(index, n)`
// does one caller's issue + wait.

}  // namespace

int main(int argc, char** argv) {
  int threads = 2;
  int callers = 2;
  troupe::bench::Cli cli("local_call_bench",
                         "Local-mode no-op actor call latency and throughput, beside a std::function\n"
                         "posted to an identical Asio thread pool (same thread count).");
  cli.add_int("--threads", &threads, "pool threads, for the runtime and the baseline alike");
  cli.add_int("--callers", &callers, "caller threads for the multi-caller throughput (1:1 with actors)");
  const auto options = cli.parse(argc, argv);

  // Many short repeats rather than a few long ones: on a shared machine the
  // median then drops the repeats that other processes disturbed.
  const int latency_iterations = options.iterations_or(5000, 1000);
  const int throughput_calls = options.iterations_or(50000, 10000);
  const int repeats = options.repeats_or(9, 3);
  const int warmup = options.quick ? 200 : 2000;

  troupe::InitOptions init_options;
  init_options.num_threads = threads;
  troupe::init(init_options);
  BaselinePool pool(threads);
  auto actor = troupe::actor<Noop>();
  std::vector<troupe::ActorHandle<Noop>> caller_actors;
  for (int c = 0; c < callers; ++c) caller_actors.push_back(troupe::actor<Noop>());

  auto troupe_round_trip = [&] { actor.call<&Noop::noop>().get(); };
  auto baseline_round_trip = [&] { pool.call(noop_function)->wait(); };

  // Warm both paths (actor construction, allocator, thread wake-ups).
  troupe::bench::warm_up(warmup, troupe_round_trip);
  troupe::bench::warm_up(warmup, baseline_round_trip);
  for (auto& a : caller_actors) a.call<&Noop::noop>().get();

  // ---- latency --------------------------------------------------------------
  std::vector<double> t_p50, t_p99, t_mean, b_p50, b_p99, b_mean;
  for (int r = 0; r < repeats; ++r) {
    auto run_troupe = [&] {
      auto f = measure_latency(latency_iterations, troupe_round_trip);
      t_p50.push_back(f.p50), t_p99.push_back(f.p99), t_mean.push_back(f.mean);
    };
    auto run_baseline = [&] {
      auto f = measure_latency(latency_iterations, baseline_round_trip);
      b_p50.push_back(f.p50), b_p99.push_back(f.p99), b_mean.push_back(f.mean);
    };
    // Alternate which goes first so neither always follows the other.
    if (r % 2 == 0) run_troupe(), run_baseline();
    else run_baseline(), run_troupe();
  }

  // ---- throughput, one caller -------------------------------------------------
  std::vector<troupe::ObjectRef<void>> refs;
  std::vector<std::shared_ptr<Completion>> completions;
  refs.reserve(static_cast<std::size_t>(throughput_calls));
  completions.reserve(static_cast<std::size_t>(throughput_calls));
  auto troupe_throughput = [&] {
    refs.clear();
    return measure_throughput(
        [&](int n) {
          for (int i = 0; i < n; ++i) refs.push_back(actor.call<&Noop::noop>());
        },
        [&] {
          for (auto& ref : refs) ref.get();
        },
        throughput_calls);
  };
  auto baseline_throughput = [&] {
    completions.clear();
    return measure_throughput(
        [&](int n) {
          for (int i = 0; i < n; ++i) completions.push_back(pool.call(noop_function));
        },
        [&] {
          for (auto& completion : completions) completion->wait();
        },
        throughput_calls);
  };
  std::vector<double> t_tput, b_tput;
  for (int r = 0; r < repeats; ++r) {
    if (r % 2 == 0) t_tput.push_back(troupe_throughput()), b_tput.push_back(baseline_throughput());
    else b_tput.push_back(baseline_throughput()), t_tput.push_back(troupe_throughput());
  }
  refs = {};
  completions = {};

  // ---- throughput, several callers (1:1 caller:actor) ---------------------------
  auto troupe_parallel = [&] {
    return measure_parallel(callers, throughput_calls, [&](int c, int n) {
      std::vector<troupe::ObjectRef<void>> mine;
      mine.reserve(static_cast<std::size_t>(n));
      for (int i = 0; i < n; ++i) mine.push_back(caller_actors[static_cast<std::size_t>(c)].call<&Noop::noop>());
      for (auto& ref : mine) ref.get();
    });
  };
  auto baseline_parallel = [&] {
    return measure_parallel(callers, throughput_calls, [&](int, int n) {
      std::vector<std::shared_ptr<Completion>> mine;
      mine.reserve(static_cast<std::size_t>(n));
      for (int i = 0; i < n; ++i) mine.push_back(pool.call(noop_function));
      for (auto& completion : mine) completion->wait();
    });
  };
  std::vector<double> t_par, b_par;
  for (int r = 0; r < repeats; ++r) {
    if (r % 2 == 0) t_par.push_back(troupe_parallel()), b_par.push_back(baseline_parallel());
    else b_par.push_back(baseline_parallel()), t_par.push_back(troupe_parallel());
  }

  caller_actors.clear();
  actor = {};
  troupe::shutdown();

  // ---- report ---------------------------------------------------------------
  troupe::bench::Reporter report("local_call", options);
  report.set_labels("troupe", "asio pool");
  report.add("latency_p50", median(t_p50), "us", Better::lower, median(b_p50));
  report.add("latency_p99", median(t_p99), "us", Better::lower, median(b_p99));
  report.add("latency_mean", median(t_mean), "us", Better::lower, median(b_mean));
  report.add("throughput", median(t_tput), "calls/s", Better::higher, median(b_tput));
  report.add("throughput_" + std::to_string(callers) + "_callers", median(t_par), "calls/s", Better::higher,
             median(b_par));
  char setup[256];
  std::snprintf(setup, sizeof setup,
                "%d pool threads each; latency: %d sequential call+get per repeat; throughput: %d calls "
                "issued then awaited; median of %d repeats.",
                threads, latency_iterations, throughput_calls, repeats);
  report.note(setup);
  report.note("baseline: std::function posted to an io_context run by the same number of threads,");
  report.note("completion awaited like ObjectRef::get (spin 30 us with yield, then condition variable).");
  report.print_table();
  return 0;
}
