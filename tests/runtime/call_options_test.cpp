// Call deadlines, bounds and retries in local mode (the same API as in
// cluster mode, where tests/runtime/remote_actor_test.cpp and
// tests/cluster/calls_test.cpp cover them): a call past its deadline fails
// with TimeoutError and, if it had not started, never runs; past
// max_pending_calls a call waits for room or fails with OverloadedError;
// calls queued when an actor restarts fail, or with max_task_retries run
// on the new instance in their order.
#include <atomic>
#include <chrono>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "troupe/troupe.hpp"

using namespace std::chrono_literals;

namespace calls {

class Sleeper {
 public:
  int nap(int ms) {
    std::this_thread::sleep_for(std::chrono::milliseconds(ms));
    return ms;
  }
  int mark(int x) {
    ran_.push_back(x);
    return x;
  }
  std::vector<int> ran() const { return ran_; }
  // Queues calls to itself while it runs: past the bound they must fail.
  int self_flood(int n) {
    auto me = troupe::get_actor<Sleeper>("self");
    std::vector<troupe::ObjectRef<int>> refs;
    int overloaded = 0;
    for (int i = 0; i < n; ++i) {
      refs.push_back(me.call<&Sleeper::mark>(i));
      if (refs.back().is_ready() && refs.back().has_error()) ++overloaded;
    }
    return overloaded;
  }

 private:
  std::vector<int> ran_;
};

}  // namespace calls

TROUPE_ACTOR(calls::Sleeper, (), nap, mark, ran, self_flood);

namespace {

using calls::Sleeper;

class LocalCalls : public ::testing::Test {
 protected:
  void SetUp() override {
    troupe::InitOptions options;
    options.num_threads = 4;
    options.gpus = "";
    troupe::init(options);
  }
  void TearDown() override { troupe::shutdown(); }
};

TEST_F(LocalCalls, AQueuedCallPastItsDeadlineFailsWithTimeoutAndNeverRuns) {
  auto actor = troupe::actor<Sleeper>();
  auto busy = actor.call<&Sleeper::nap>(1500);
  const auto start = std::chrono::steady_clock::now();
  auto late = actor.with_options({.timeout = 200ms}).call<&Sleeper::mark>(7);
  EXPECT_THROW((void)late.get(30s), troupe::TimeoutError);
  EXPECT_LT(std::chrono::steady_clock::now() - start, 1400ms) << "the deadline did not wait for the busy call";
  EXPECT_EQ(busy.get(30s), 1500);
  EXPECT_EQ(actor.call<&Sleeper::mark>(8).get(30s), 8);
  EXPECT_EQ(actor.call<&Sleeper::ran>().get(30s), std::vector<int>{8}) << "the withdrawn call ran";
}

TEST_F(LocalCalls, ARunningCallPastItsDeadlineFailsWithTimeoutAndRunsOn) {
  auto actor = troupe::actor<Sleeper>();
  auto running = actor.with_options({.timeout = 100ms}).call<&Sleeper::nap>(800);
  try {
    (void)running.get(30s);
    FAIL() << "no timeout";
  } catch (const troupe::TimeoutError& e) {
    EXPECT_NE(std::string(e.message()).find("runs on"), std::string::npos) << e.message();
  }
  EXPECT_EQ(actor.call<&Sleeper::nap>(1).get(30s), 1);  // after the nap ended
}

TEST_F(LocalCalls, ACallWithinItsDeadlineReturnsItsValue) {
  auto actor = troupe::actor<Sleeper>();
  auto handle = actor.with_options({.timeout = 30s});
  for (int i = 0; i < 100; ++i) EXPECT_EQ(handle.call<&Sleeper::mark>(i).get(30s), i);
  EXPECT_EQ(actor.call_options().timeout, 0ms) << "with_options changed the original handle";
}

TEST_F(LocalCalls, PastMaxPendingCallsTheFailPolicyFailsWithOverloaded) {
  auto actor = troupe::actor<Sleeper>(
      troupe::ActorOptions{.max_pending_calls = 3, .backpressure = troupe::Backpressure::fail});
  auto busy = actor.call<&Sleeper::nap>(1000);  // running: 1 pending
  std::vector<troupe::ObjectRef<int>> queued;
  for (int i = 0; i < 2; ++i) queued.push_back(actor.call<&Sleeper::mark>(i));
  auto refused = actor.call<&Sleeper::mark>(99);
  ASSERT_TRUE(refused.is_ready());
  EXPECT_THROW((void)refused.get(), troupe::OverloadedError);
  EXPECT_EQ(busy.get(30s), 1000);
  for (int i = 0; i < 2; ++i) EXPECT_EQ(queued[static_cast<std::size_t>(i)].get(30s), i);
  EXPECT_EQ(actor.call<&Sleeper::mark>(5).get(30s), 5) << "room again once the calls ended";
}

TEST_F(LocalCalls, PastMaxPendingCallsTheBlockPolicyWaitsForRoom) {
  auto actor = troupe::actor<Sleeper>(troupe::ActorOptions{.max_pending_calls = 2});
  auto busy = actor.call<&Sleeper::nap>(600);
  auto queued = actor.call<&Sleeper::mark>(1);
  const auto start = std::chrono::steady_clock::now();
  auto third = actor.call<&Sleeper::mark>(2);  // waits until the nap ended
  EXPECT_GE(std::chrono::steady_clock::now() - start, 300ms);
  EXPECT_EQ(third.get(30s), 2);
  EXPECT_EQ(queued.get(30s), 1);
  EXPECT_EQ(busy.get(30s), 600);
}

TEST_F(LocalCalls, ACallWaitingForRoomEndsAtItsDeadline) {
  auto actor = troupe::actor<Sleeper>(troupe::ActorOptions{.max_pending_calls = 1});
  auto busy = actor.call<&Sleeper::nap>(2000);
  const auto start = std::chrono::steady_clock::now();
  auto waiting = actor.with_options({.timeout = 200ms}).call<&Sleeper::mark>(1);
  EXPECT_LT(std::chrono::steady_clock::now() - start, 1500ms);
  EXPECT_THROW((void)waiting.get(1s), troupe::TimeoutError);
  EXPECT_EQ(busy.get(30s), 2000);
}

TEST_F(LocalCalls, AnActorCallingItselfPastTheBoundFailsInsteadOfWaitingForItself) {
  auto actor = troupe::actor<Sleeper>(troupe::ActorOptions{.name = "self", .max_pending_calls = 4});
  // Inside self_flood one call runs (self_flood) and its own calls queue
  // behind it: past the bound they fail at once rather than wait forever.
  EXPECT_GT(actor.call<&Sleeper::self_flood>(10).get(30s), 0);
}

TEST_F(LocalCalls, ARestartFailsQueuedCallsWithoutRetries) {
  auto actor = troupe::actor<Sleeper>(troupe::ActorOptions{.max_restarts = 1});
  auto busy = actor.call<&Sleeper::nap>(500);
  auto queued = actor.call<&Sleeper::mark>(1);
  std::this_thread::sleep_for(100ms);
  troupe::kill(actor, /*no_restart=*/false);
  EXPECT_THROW((void)queued.get(30s), troupe::ActorDiedError);
  EXPECT_THROW((void)busy.get(30s), troupe::ActorDiedError);
  EXPECT_EQ(actor.call<&Sleeper::mark>(2).get(30s), 2);
}

TEST_F(LocalCalls, WithRetriesQueuedCallsRunOnTheRestartedInstanceInOrder) {
  auto actor = troupe::actor<Sleeper>(troupe::ActorOptions{.max_restarts = 1, .max_task_retries = 1});
  auto busy = actor.call<&Sleeper::nap>(500);
  std::vector<troupe::ObjectRef<int>> queued;
  for (int i = 0; i < 20; ++i) queued.push_back(actor.call<&Sleeper::mark>(i));
  std::this_thread::sleep_for(100ms);
  troupe::kill(actor, /*no_restart=*/false);
  auto later = actor.call<&Sleeper::mark>(100);
  for (int i = 0; i < 20; ++i) EXPECT_EQ(queued[static_cast<std::size_t>(i)].get(30s), i);
  EXPECT_EQ(later.get(30s), 100);
  EXPECT_EQ(busy.get(30s), 500) << "a running call with retries keeps its result";
  std::vector<int> expected;
  for (int i = 0; i < 20; ++i) expected.push_back(i);
  expected.push_back(100);
  EXPECT_EQ(actor.call<&Sleeper::ran>().get(30s), expected);
  EXPECT_EQ(actor.restarts(), 1);
}

TEST_F(LocalCalls, PerCallRetriesOverrideTheActors) {
  auto actor = troupe::actor<Sleeper>(troupe::ActorOptions{.max_restarts = 1});
  auto busy = actor.call<&Sleeper::nap>(500);
  auto kept = actor.with_options({.max_task_retries = -1}).call<&Sleeper::mark>(1);
  auto failed = actor.call<&Sleeper::mark>(2);
  std::this_thread::sleep_for(100ms);
  troupe::kill(actor, /*no_restart=*/false);
  EXPECT_EQ(kept.get(30s), 1);
  EXPECT_THROW((void)failed.get(30s), troupe::ActorDiedError);
}

TEST_F(LocalCalls, BadBoundsAreRefused) {
  EXPECT_THROW((void)troupe::actor<Sleeper>(troupe::ActorOptions{.max_task_retries = -2}), troupe::Error);
  EXPECT_THROW((void)troupe::actor<Sleeper>(troupe::ActorOptions{.max_pending_calls = 0}), troupe::Error);
}

}  // namespace
