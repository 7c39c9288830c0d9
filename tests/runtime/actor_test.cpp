// The actor API in local mode: creation, calls, ordering, concurrency,
// errors, lifetime. Each test starts and stops its own runtime.
#include <atomic>
#include <chrono>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#include <gtest/gtest.h>

#include "troupe/troupe.hpp"

using namespace std::chrono_literals;

namespace demo {

struct Point {
  double x = 0, y = 0;
  template <class Archive>
  void serialize(Archive& ar) { ar(x, y); }
  friend bool operator==(const Point&, const Point&) = default;
};

class Counter {
 public:
  explicit Counter(int start) : value_(start) {}
  int add(int delta) { return value_ += delta; }
  int get() const { return value_; }
  void reset() { value_ = 0; }
  std::vector<int> log_call(int seq) {
    seen_.push_back(seq);
    return seen_;
  }
  int fail(const std::string& why) { throw std::invalid_argument(why); }
  int slow_add(int delta, int sleep_ms) {
    std::this_thread::sleep_for(std::chrono::milliseconds(sleep_ms));
    return value_ += delta;
  }
  // Three arguments in which any may be a ref.
  int sum3(int a, const int& b, int c) { return a + b + c; }
  Point shift(Point p, double dx) { return Point{p.x + dx, p.y}; }
  // Receives the ref itself, unresolved.
  int peek(troupe::ObjectRef<int> ref) { return ref.is_ready() ? 1 : 0; }
  // An async method: returns a future that another actor completes.
  troupe::ObjectRef<int> add_later(int delta) {
    return troupe::make_ready(delta).then([this](int d) { return value_ + d; });
  }
  std::vector<int> gpus() const { return troupe::get_gpu_ids(); }
  std::string whoami() const { return troupe::current_actor_id().hex(); }
  troupe::Tensor first_half(troupe::Tensor t) { return t.slice(0, t.size(0) / 2); }

 private:
  int value_;
  std::vector<int> seen_;
};

class Gate {
 public:
  Gate() = default;
  // Records peak concurrency while it sleeps.
  int hold(int ms) {
    int now = ++inside_;
    int peak = peak_.load();
    while (now > peak && !peak_.compare_exchange_weak(peak, now)) {}
    std::this_thread::sleep_for(std::chrono::milliseconds(ms));
    --inside_;
    return peak_.load();
  }
  int peak() const { return peak_.load(); }

 private:
  std::atomic<int> inside_{0};
  std::atomic<int> peak_{0};
};

class Fragile {
 public:
  explicit Fragile(bool explode) {
    if (explode) throw std::runtime_error("constructor exploded");
  }
  int ping() { return 1; }
};

// Calls another actor from inside a method, blocking on the result.
class Relay {
 public:
  explicit Relay(troupe::ActorHandle<Counter> target) : target_(std::move(target)) {}
  int forward(int delta) { return target_.call<&Counter::add>(delta).get(); }

 private:
  troupe::ActorHandle<Counter> target_;
};

}  // namespace demo

TROUPE_ACTOR(demo::Counter, (int), add, get, reset, log_call, fail, slow_add, sum3, shift, peek,
             add_later, gpus, first_half, whoami);
TROUPE_ACTOR(demo::Gate, (), hold, peak);
TROUPE_ACTOR(demo::Fragile, (bool), ping);
TROUPE_ACTOR(demo::Relay, (troupe::ActorHandle<demo::Counter>), forward);

namespace {

using demo::Counter;

class LocalMode : public ::testing::Test {
 protected:
  void SetUp() override {
    troupe::InitOptions options;
    options.num_threads = 4;
    options.gpus = "H100-80GB:2,T4-16GB:1";  // declared: scheduled like real ones
    troupe::init(options);
  }
  void TearDown() override {
    troupe::shutdown();
  }
};

TEST_F(LocalMode, CallReturnsRefThatResolvesToTheMethodResult) {
  auto counter = troupe::actor<Counter>(10);
  troupe::ObjectRef<int> ref = counter.call<&Counter::add>(5);
  EXPECT_EQ(ref.get(), 15);
  EXPECT_EQ(counter.call<&Counter::get>().get(), 15);
  EXPECT_EQ(counter.state(), troupe::ActorState::alive);
}

TEST_F(LocalMode, VoidMethodsGiveAVoidRef) {
  auto counter = troupe::actor<Counter>(3);
  troupe::ObjectRef<void> done = counter.call<&Counter::reset>();
  done.get();
  EXPECT_EQ(counter.call<&Counter::get>().get(), 0);
}

TEST_F(LocalMode, CallsFromOneCallerRunInTheOrderSent) {
  auto counter = troupe::actor<Counter>(0);
  std::vector<troupe::ObjectRef<std::vector<int>>> refs;
  for (int i = 0; i < 2000; ++i) refs.push_back(counter.call<&Counter::log_call>(i));
  auto seen = refs.back().get();
  ASSERT_EQ(seen.size(), 2000u);
  for (int i = 0; i < 2000; ++i) ASSERT_EQ(seen[static_cast<std::size_t>(i)], i);
}

TEST_F(LocalMode, OrderHoldsEvenWhenAnEarlierCallWaitsForItsArgument) {
  auto counter = troupe::actor<Counter>(0);
  troupe::Promise<int> late;
  auto first = counter.call<&Counter::log_call>(late.ref());  // blocked on its argument
  auto second = counter.call<&Counter::log_call>(2);          // ready at once, must wait
  std::this_thread::sleep_for(20ms);
  EXPECT_FALSE(second.is_ready());
  late.set_value(1);
  EXPECT_EQ(second.get(), (std::vector<int>{1, 2}));
  EXPECT_EQ(first.get(), (std::vector<int>{1}));
}

TEST_F(LocalMode, DefaultActorsRunOneCallAtATime) {
  auto gate = troupe::actor<demo::Gate>();
  std::vector<troupe::ObjectRef<int>> refs;
  for (int i = 0; i < 6; ++i) refs.push_back(gate.call<&demo::Gate::hold>(5));
  for (auto& r : refs) r.get();
  EXPECT_EQ(gate.call<&demo::Gate::peak>().get(), 1);
}

TEST_F(LocalMode, MaxConcurrencyBoundsParallelCalls) {
  troupe::ActorOptions options;
  options.max_concurrency = 3;
  auto gate = troupe::actor<demo::Gate>(options);
  std::vector<troupe::ObjectRef<int>> refs;
  for (int i = 0; i < 12; ++i) refs.push_back(gate.call<&demo::Gate::hold>(30));
  for (auto& r : refs) r.get();
  int peak = gate.call<&demo::Gate::peak>().get();
  EXPECT_GE(peak, 2);
  EXPECT_LE(peak, 3);
}

TEST_F(LocalMode, ExceptionInMethodReachesCallerAsTaskErrorWithRemoteTypeAndMessage) {
  auto counter = troupe::actor<Counter>(0);
  auto ref = counter.call<&Counter::fail>(std::string("bad input 42"));
  try {
    (void)ref.get();
    FAIL() << "expected TaskError";
  } catch (const troupe::TaskError& e) {
    EXPECT_EQ(e.code(), troupe::Errc::task_failed);
    EXPECT_EQ(e.remote_type(), "std::invalid_argument");
    EXPECT_NE(e.message().find("bad input 42"), std::string::npos);
    EXPECT_NE(e.message().find("Counter.fail"), std::string::npos);
  }
  // The actor survives a failed call.
  EXPECT_EQ(counter.call<&Counter::add>(1).get(), 1);
}

TEST_F(LocalMode, AFailedArgumentFailsTheDependentCallWithTheSameError) {
  auto counter = troupe::actor<Counter>(0);
  auto bad = counter.call<&Counter::fail>(std::string("upstream"));
  auto dependent = counter.call<&Counter::add>(bad);
  EXPECT_THROW((void)dependent.get(), troupe::TaskError);
  try {
    (void)dependent.get();
  } catch (const troupe::TaskError& e) {
    EXPECT_NE(e.message().find("upstream"), std::string::npos);
  }
}

TEST_F(LocalMode, RefsAreAcceptedInAnyArgumentPosition) {
  auto a = troupe::actor<Counter>(1);
  auto b = troupe::actor<Counter>(100);
  auto one = a.call<&Counter::get>();
  auto hundred = b.call<&Counter::get>();
  EXPECT_EQ(a.call<&Counter::sum3>(one, 10, hundred).get(), 111);
  EXPECT_EQ(a.call<&Counter::sum3>(5, hundred, one).get(), 106);
  EXPECT_EQ(a.call<&Counter::sum3>(one, one, one).get(), 3);
}

TEST_F(LocalMode, AnObjectRefParameterReceivesTheRefUnresolved) {
  auto counter = troupe::actor<Counter>(0);
  troupe::Promise<int> never_yet;
  EXPECT_EQ(counter.call<&Counter::peek>(never_yet.ref()).get(), 0);
  never_yet.set_value(3);
}

TEST_F(LocalMode, AsyncMethodReturningARefIsFlattened) {
  auto counter = troupe::actor<Counter>(40);
  troupe::ObjectRef<int> ref = counter.call<&Counter::add_later>(2);
  EXPECT_EQ(ref.get(), 42);
}

TEST_F(LocalMode, UserTypesTravelThroughTheirSerializeMember) {
  auto counter = troupe::actor<Counter>(0);
  auto moved = counter.call<&Counter::shift>(demo::Point{1, 2}, 0.5);
  EXPECT_EQ(moved.get(), (demo::Point{1.5, 2}));
  // And the same value chained into a second call.
  EXPECT_EQ(counter.call<&Counter::shift>(moved, 1.0).get(), (demo::Point{2.5, 2}));
}

TEST_F(LocalMode, ChainOfAThousandCallsResolves) {
  auto a = troupe::actor<Counter>(0);
  auto b = troupe::actor<Counter>(0);
  troupe::ObjectRef<int> ref = a.call<&Counter::get>();
  for (int i = 0; i < 1000; ++i) {
    auto& target = (i % 2 == 0) ? b : a;
    ref = target.call<&Counter::sum3>(ref, 1, 0);
  }
  EXPECT_EQ(ref.get(10s), 1000);
}

TEST_F(LocalMode, HundredThousandRefsCreatedAndDroppedLeaveNoLiveObjects) {
  const auto before = troupe::live_objects();
  auto counter = troupe::actor<Counter>(0);
  for (int round = 0; round < 10; ++round) {
    std::vector<troupe::ObjectRef<int>> refs;
    refs.reserve(10000);
    for (int i = 0; i < 10000; ++i) refs.push_back(counter.call<&Counter::add>(1));
    if (round % 2 == 0) (void)refs.back().get();  // half the rounds drop refs still pending
  }
  EXPECT_EQ(counter.call<&Counter::get>().get(30s), 100000);
  // Every call has finished; every ref is gone.
  for (int i = 0; i < 200 && troupe::live_objects() != before; ++i) std::this_thread::sleep_for(5ms);
  EXPECT_EQ(troupe::live_objects(), before);
}

TEST_F(LocalMode, GetWithTimeoutThrowsTimeoutErrorAndTheCallGoesOn) {
  auto counter = troupe::actor<Counter>(0);
  auto slow = counter.call<&Counter::slow_add>(1, 200);
  auto start = std::chrono::steady_clock::now();
  EXPECT_THROW((void)slow.get(20ms), troupe::TimeoutError);
  auto waited = std::chrono::steady_clock::now() - start;
  EXPECT_GE(waited, 20ms);
  EXPECT_LT(waited, 190ms);
  EXPECT_EQ(slow.get(5s), 1);
}

TEST_F(LocalMode, ThenContinuesWithTheValueAndPropagatesErrors) {
  auto counter = troupe::actor<Counter>(1);
  auto doubled = counter.call<&Counter::get>().then([](int v) { return v * 2; });
  EXPECT_EQ(doubled.get(), 2);
  auto text = doubled.then([](int v) { return std::to_string(v) + "!"; });
  EXPECT_EQ(text.get(), "2!");
  bool ran = false;
  auto skipped = counter.call<&Counter::fail>(std::string("nope")).then([&](int) {
    ran = true;
    return 0;
  });
  EXPECT_THROW((void)skipped.get(), troupe::TaskError);
  EXPECT_FALSE(ran);
  // A continuation that returns a ref is flattened.
  auto chained = counter.call<&Counter::get>().then([counter](int v) { return counter.call<&Counter::add>(v); });
  EXPECT_EQ(chained.get(), 2);
}

TEST_F(LocalMode, WhenAllCollectsValuesInOrder) {
  std::vector<troupe::ActorHandle<Counter>> counters;
  std::vector<troupe::ObjectRef<int>> refs;
  for (int i = 0; i < 8; ++i) {
    counters.push_back(troupe::actor<Counter>(i));
    refs.push_back(counters.back().call<&Counter::get>());
  }
  EXPECT_EQ(troupe::when_all(refs).get(), (std::vector<int>{0, 1, 2, 3, 4, 5, 6, 7}));
  auto pair = troupe::when_all(refs[2], counters[0].call<&Counter::shift>(demo::Point{}, 1.0)).get();
  EXPECT_EQ(std::get<0>(pair), 2);
  EXPECT_EQ(std::get<1>(pair).x, 1.0);
  std::vector<troupe::ObjectRef<void>> voids{counters[0].call<&Counter::reset>(), counters[1].call<&Counter::reset>()};
  troupe::when_all(voids).get();
  EXPECT_EQ(counters[1].call<&Counter::get>().get(), 0);
}

TEST_F(LocalMode, WhenAnyGivesTheFirstToComplete) {
  auto slow = troupe::actor<Counter>(0);
  auto fast = troupe::actor<Counter>(0);
  std::vector<troupe::ObjectRef<int>> refs{slow.call<&Counter::slow_add>(1, 300),
                                           fast.call<&Counter::slow_add>(1, 1)};
  EXPECT_EQ(troupe::when_any(refs).get(5s), 1u);
}

TEST_F(LocalMode, WaitSplitsReadyFromNotReadyWithinTheTimeout) {
  auto slow = troupe::actor<Counter>(0);
  auto fast = troupe::actor<Counter>(0);
  std::vector<troupe::ObjectRef<int>> refs{fast.call<&Counter::add>(1), slow.call<&Counter::slow_add>(1, 500),
                                           fast.call<&Counter::add>(1)};
  auto result = troupe::wait(refs, 3, 100ms);
  EXPECT_EQ(result.ready.size(), 2u);
  EXPECT_EQ(result.not_ready.size(), 1u);
  auto two = troupe::wait(refs, 1, 5s);
  EXPECT_GE(two.ready.size(), 1u);
}

TEST_F(LocalMode, EveryActorHasItsOwnTypedIdWhichItsMethodsSee) {
  auto a = troupe::actor<Counter>(troupe::ActorOptions{}, 0);
  auto b = troupe::actor<Counter>(troupe::ActorOptions{}, 0);
  static_assert(std::is_same_v<decltype(a.id()), troupe::ActorId>);
  EXPECT_FALSE(a.id().nil());
  EXPECT_NE(a.id(), b.id());
  EXPECT_EQ(a.call<&Counter::whoami>().get(5s), a.id().hex());
  EXPECT_EQ(b.call<&Counter::whoami>().get(5s), b.id().hex());
  EXPECT_TRUE(troupe::current_actor_id().nil());  // the driver is no actor
}

TEST_F(LocalMode, NamedActorsCanBeLookedUpAndNamesAreUnique) {
  troupe::ActorOptions options;
  options.name = "ledger";
  auto counter = troupe::actor<Counter>(options, 7);
  auto found = troupe::get_actor<Counter>("ledger");
  EXPECT_EQ(found.id(), counter.id());
  EXPECT_EQ(found.call<&Counter::get>().get(), 7);
  EXPECT_THROW(troupe::actor<Counter>(options, 1), troupe::Error);
  EXPECT_THROW(troupe::get_actor<Counter>("nobody"), troupe::Error);
  EXPECT_THROW(troupe::get_actor<demo::Gate>("ledger"), troupe::Error);
}

TEST_F(LocalMode, KilledActorFailsPendingAndLaterCallsWithActorDied) {
  auto counter = troupe::actor<Counter>(0);
  auto running = counter.call<&Counter::slow_add>(1, 100);
  auto queued = counter.call<&Counter::add>(1);
  std::this_thread::sleep_for(20ms);
  troupe::kill(counter);
  EXPECT_THROW((void)running.get(1s), troupe::ActorDiedError);
  EXPECT_THROW((void)queued.get(1s), troupe::ActorDiedError);
  EXPECT_THROW((void)counter.call<&Counter::add>(1).get(1s), troupe::ActorDiedError);
  EXPECT_EQ(counter.state(), troupe::ActorState::dead);
}

TEST_F(LocalMode, KilledActorWithRestartsLeftIsRebuiltFromItsConstructorArguments) {
  troupe::ActorOptions options;
  options.max_restarts = 1;
  auto counter = troupe::actor<Counter>(options, 5);
  EXPECT_EQ(counter.call<&Counter::add>(1).get(), 6);
  troupe::kill(counter, /*no_restart=*/false);
  EXPECT_EQ(counter.call<&Counter::add>(1).get(2s), 6);  // fresh state from Counter(5)
  EXPECT_EQ(counter.restarts(), 1);
  troupe::kill(counter, /*no_restart=*/false);  // no restarts left
  EXPECT_THROW((void)counter.call<&Counter::get>().get(1s), troupe::ActorDiedError);
}

TEST_F(LocalMode, ADetachedActorIsRebuiltOnItsOwnThreadsAndEndsCleanlyWhenDroppedMidCall) {
  troupe::ActorOptions options;
  options.max_restarts = 1;
  options.detached = true;
  auto counter = troupe::actor<Counter>(options, 5);
  EXPECT_EQ(counter.call<&Counter::add>(1).get(2s), 6);
  troupe::kill(counter, /*no_restart=*/false);
  EXPECT_EQ(counter.call<&Counter::add>(1).get(2s), 6);  // rebuilt, served by its own threads again
  // The last reference to the actor ends on its own thread (the running
  // call holds it): another thread must stop its threads.
  troupe::ObjectRef<int> last;
  {
    auto dropped = troupe::actor<Counter>(options, 1);
    last = dropped.call<&Counter::slow_add>(1, 100);
  }
  EXPECT_EQ(last.get(2s), 2);
  std::this_thread::sleep_for(50ms);  // the stopping thread runs meanwhile
}

TEST_F(LocalMode, ConstructorThatThrowsLeavesADeadActorWithTheReason) {
  auto bad = troupe::actor<demo::Fragile>(true);
  try {
    (void)bad.call<&demo::Fragile::ping>().get(2s);
    FAIL() << "expected ActorDiedError";
  } catch (const troupe::ActorDiedError& e) {
    EXPECT_NE(std::string(e.what()).find("constructor exploded"), std::string::npos);
  }
  EXPECT_EQ(bad.state(), troupe::ActorState::dead);
  auto good = troupe::actor<demo::Fragile>(false);
  EXPECT_EQ(good.call<&demo::Fragile::ping>().get(), 1);
}

TEST_F(LocalMode, CancelWithdrawsACallThatHasNotStarted) {
  auto counter = troupe::actor<Counter>(0);
  auto blocker = counter.call<&Counter::slow_add>(1, 100);
  auto victim = counter.call<&Counter::add>(10);
  auto after = counter.call<&Counter::add>(100);
  EXPECT_TRUE(victim.cancel());
  EXPECT_THROW((void)victim.get(), troupe::CancelledError);
  EXPECT_EQ(after.get(2s), 101);  // the cancelled call never ran
  EXPECT_FALSE(blocker.cancel());  // already done
}

TEST_F(LocalMode, ActorHandlesCanBePassedToOtherActorsThatBlockOnResults) {
  auto counter = troupe::actor<Counter>(0);
  // More relays than pool threads, each blocking inside a method.
  std::vector<troupe::ActorHandle<demo::Relay>> relays;
  for (int i = 0; i < 8; ++i) relays.push_back(troupe::actor<demo::Relay>(counter));
  std::vector<troupe::ObjectRef<int>> refs;
  for (auto& relay : relays) refs.push_back(relay.call<&demo::Relay::forward>(1));
  for (auto& r : refs) (void)r.get(10s);
  EXPECT_EQ(counter.call<&Counter::get>().get(), 8);
}

TEST_F(LocalMode, GpuRequestsAreAssignedDistinctDeclaredGpus) {
  troupe::ActorOptions options;
  options.resources = {{"GPU", 1}};
  options.gpu_type = "H100";
  auto first = troupe::actor<Counter>(options, 0);
  auto second = troupe::actor<Counter>(options, 0);
  auto a = first.call<&Counter::gpus>().get(2s);
  auto b = second.call<&Counter::gpus>().get(2s);
  ASSERT_EQ(a.size(), 1u);
  ASSERT_EQ(b.size(), 1u);
  EXPECT_NE(a[0], b[0]);
  EXPECT_EQ(troupe::available_resources()["GPU"], 1.0);
}

TEST_F(LocalMode, ActorThatCannotBePlacedStaysPendingWithTheReasonUntilResourcesFree) {
  troupe::ActorOptions options;
  options.gpu_type = "T4";
  auto holder = troupe::actor<Counter>(options, 0);
  EXPECT_EQ(holder.call<&Counter::get>().get(2s), 0);
  auto waiter = troupe::actor<Counter>(options, 1);
  auto ref = waiter.call<&Counter::get>();
  EXPECT_THROW((void)ref.get(50ms), troupe::TimeoutError);
  EXPECT_EQ(waiter.state(), troupe::ActorState::pending);
  EXPECT_NE(waiter.status_message().find("T4"), std::string::npos) << waiter.status_message();
  troupe::kill(holder);
  EXPECT_EQ(ref.get(2s), 1);

  troupe::ActorOptions impossible;
  impossible.gpu_type = "A100";
  auto never = troupe::actor<Counter>(impossible, 0);
  std::this_thread::sleep_for(10ms);
  EXPECT_EQ(never.state(), troupe::ActorState::pending);
  EXPECT_NE(never.status_message().find("A100"), std::string::npos) << never.status_message();
}

TEST_F(LocalMode, PlacementGroupReservesBundlesAndActorsUseThem) {
  auto group = troupe::placement_group({{{{"GPU", 1}}, "H100"}, {{{"GPU", 1}}, "H100"}},
                                       troupe::PlacementStrategy::strict_pack);
  group.ready().get(2s);
  EXPECT_EQ(troupe::available_resources()["GPU"], 1.0);  // the T4 is left
  troupe::ActorOptions options;
  options.resources = {{"GPU", 1}};
  options.placement_group = group;
  options.bundle_index = 1;
  auto stage = troupe::actor<Counter>(options, 0);
  EXPECT_EQ(stage.call<&Counter::gpus>().get(2s).size(), 1u);
  troupe::remove_placement_group(group);
  EXPECT_THROW((void)stage.call<&Counter::get>().get(2s), troupe::ActorDiedError);
  EXPECT_EQ(troupe::available_resources()["GPU"], 3.0);
}

TEST_F(LocalMode, StrictSpreadGroupOnOneNodeStaysPendingWithAReason) {
  auto group = troupe::placement_group({{{{"CPU", 1}}}, {{{"CPU", 1}}}}, troupe::PlacementStrategy::strict_spread);
  EXPECT_FALSE(group.ready().wait_for(50ms));
  EXPECT_FALSE(group.pending_reason().empty());
}

TEST_F(LocalMode, TensorsPassBetweenActorsWithoutCopyingStorage) {
  auto counter = troupe::actor<Counter>(0);
  auto tensor = troupe::Tensor::from_vector<float>({1, 2, 3, 4, 5, 6}, {3, 2});
  auto half = counter.call<&Counter::first_half>(tensor).get();
  EXPECT_EQ(half.size(0), 1);
  EXPECT_EQ(half.raw_data(), tensor.raw_data());  // a view of the same storage
}

TEST_F(LocalMode, BadOptionsAreRejectedAtTheCall) {
  troupe::ActorOptions options;
  options.max_concurrency = 0;
  EXPECT_THROW(troupe::actor<Counter>(options, 0), troupe::Error);
  troupe::ActorOptions negative;
  negative.resources = {{"GPU", -1}};
  EXPECT_THROW(troupe::actor<Counter>(negative, 0), troupe::Error);
}

TEST(LocalModeLifecycle, ShutdownCancelsPendingCallsAndInitCanRunAgain) {
  troupe::init();
  auto counter = troupe::actor<Counter>(0);
  auto slow = counter.call<&Counter::slow_add>(1, 50);
  auto queued = counter.call<&Counter::add>(1);
  troupe::shutdown();
  EXPECT_THROW((void)queued.get(1s), troupe::Error);
  EXPECT_THROW((void)counter.call<&Counter::add>(1).get(1s), troupe::CancelledError);
  EXPECT_FALSE(troupe::is_initialized());
  troupe::init();
  EXPECT_EQ(troupe::actor<Counter>(1).call<&Counter::get>().get(), 1);
  troupe::shutdown();
  troupe::shutdown();  // twice is fine
}

TEST(ClusterModeLifecycle, UnreachableHeadGivesATimeoutErrorNotAHang) {
  ::setenv("TROUPE_REQUEST_TIMEOUT_MS", "300", 1);
  troupe::InitOptions options;
  options.address = "127.0.0.1:9";  // nothing listens on the discard port
  auto start = std::chrono::steady_clock::now();
  try {
    troupe::init(options);
    FAIL() << "init() should fail without a head";
  } catch (const troupe::Error& e) {
    EXPECT_EQ(e.code(), troupe::Errc::timeout) << e.what();
  }
  EXPECT_LT(std::chrono::steady_clock::now() - start, 5s);
  EXPECT_FALSE(troupe::is_initialized());
  ::unsetenv("TROUPE_REQUEST_TIMEOUT_MS");
  troupe::init();  // local mode still works afterwards
  troupe::shutdown();
}

}  // namespace
