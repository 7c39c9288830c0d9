// A million calls to one slow actor in local mode, with the default bounds
// (max_pending_calls 100,000, backpressure `block`): every call completes
// and the process's resident memory grows by less than a stated bound
// (docs/fault-tolerance.md gives the figures measured). The cluster-mode
// twin is tests/cluster/call_flood_test.cpp.
// TROUPE_TEST_LABELS: slow
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <deque>
#include <thread>

#include <gtest/gtest.h>

#include "troupe/troupe.hpp"

using namespace std::chrono_literals;

namespace flood {

class Slow {
 public:
  long nap(long ms) {
    std::this_thread::sleep_for(std::chrono::milliseconds(ms));
    return ms;
  }
  long work(long x) {
    volatile long sink = 0;
    for (long i = 0; i < 2000; ++i) sink = sink + (i ^ x);
    ++count_;
    return x;
  }
  long count() const { return count_; }

 private:
  long count_ = 0;
};

}  // namespace flood

TROUPE_ACTOR(flood::Slow, (), nap, work, count);

namespace {

long rss_kib() {
  long pages = 0, resident = 0;
  if (FILE* f = std::fopen("/proc/self/statm", "r")) {
    if (std::fscanf(f, "%ld %ld", &pages, &resident) != 2) resident = 0;
    std::fclose(f);
  }
  return resident * (::sysconf(_SC_PAGESIZE) / 1024);
}

// 100,000 pending calls at well under 1 KiB each, with room to spare.
constexpr long kGrowthBoundMiB = 256;

TEST(LocalCallFlood, AMillionCallsToASlowActorCompleteWithBoundedMemory) {
  troupe::InitOptions options;
  options.num_threads = 2;
  options.gpus = "";
  troupe::init(options);
  {
    const long calls = std::getenv("TROUPE_FLOOD_CALLS") ? std::atol(std::getenv("TROUPE_FLOOD_CALLS")) : 1000000;
    auto actor = troupe::actor<flood::Slow>();
    (void)actor.call<&flood::Slow::count>().get(30s);
    const long before = rss_kib();
    long peak = before;
    auto gate = actor.call<&flood::Slow::nap>(1000L);  // the queue fills up to the bound behind it
    std::deque<troupe::ObjectRef<long>> window;
    long values = 0, failed = 0;
    std::size_t peak_pending = 0;
    const auto start = std::chrono::steady_clock::now();
    auto settle = [&] {
      while (!window.empty() && window.front().is_ready()) {
        if (window.front().has_error()) ++failed;
        else ++values;
        window.pop_front();
      }
    };
    for (long i = 0; i < calls; ++i) {
      window.push_back(actor.call<&flood::Slow::work>(i));
      if (i % 4096 == 0) {
        settle();
        peak_pending = std::max(peak_pending, window.size());
        peak = std::max(peak, rss_kib());
      }
    }
    while (!window.empty()) {
      ASSERT_TRUE(window.front().wait_for(120s)) << "a call hung";
      settle();
    }
    (void)gate.get(30s);
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    EXPECT_EQ(values, calls);
    EXPECT_EQ(failed, 0);
    EXPECT_EQ(actor.call<&flood::Slow::count>().get(60s), calls);
    EXPECT_LE(peak_pending, troupe::ActorOptions::kDefaultMaxPendingCalls + 4096);
    std::printf("LOCAL FLOOD %ld calls in %.1f s; at most %zu pending; RSS %ld -> peak %ld KiB\n", calls, seconds,
                peak_pending, before, peak);
    EXPECT_LT((peak - before) / 1024, kGrowthBoundMiB);
  }
  troupe::shutdown();
}

}  // namespace
