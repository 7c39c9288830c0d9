// ObjectRefs that travel, in both modes: refs nested in parameters and
// results (containers of refs, a ref to a ref), an answer that does not
// wait for an ObjectRef parameter the method never got, and an actor
// created from a constructor argument still pending (issue 13).
#include <gtest/gtest.h>

#include <chrono>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "conformance/conformance.hpp"

namespace conformance_refs {

using troupe::ObjectRef;

class Producer {
 public:
  long square(long x) { return x * x; }
  // Refs it made itself (held in this actor's process) and one it got
  // from another call of its own kind (a ready local value).
  std::vector<ObjectRef<long>> make_refs(long n) {
    std::vector<ObjectRef<long>> out;
    for (long i = 1; i <= n; ++i) out.push_back(troupe::make_ready(i * 10));
    return out;
  }
  std::map<std::string, ObjectRef<long>> make_map() {
    return {{"a", troupe::make_ready(1L)}, {"b", troupe::make_ready(2L)}};
  }
};

class Consumer {
 public:
  long sum_all(std::vector<ObjectRef<long>> refs) {
    long total = 0;
    for (const auto& ref : refs) total += ref.get(troupe::conformance::kWait);
    return total;
  }
  long unwrap(ObjectRef<ObjectRef<long>> outer) {
    return outer.get(troupe::conformance::kWait).get(troupe::conformance::kWait);
  }
  long sum_map(std::map<std::string, ObjectRef<long>> refs) {
    long total = 0;
    for (const auto& [key, ref] : refs) total += ref.get(troupe::conformance::kWait);
    return total;
  }
  long value_or(std::optional<ObjectRef<long>> ref, long fallback) {
    return ref ? ref->get(troupe::conformance::kWait) : fallback;
  }
  // Waits a while for a parameter that never comes, then answers.
  long give_up_after(ObjectRef<long> never, long wait_ms) {
    try {
      (void)never.get(std::chrono::milliseconds(wait_ms));
      return -1;
    } catch (const troupe::TimeoutError&) {
      return 7;
    }
  }
  // Keeps a borrowed ref past the call, to read it in a later one.
  bool keep(ObjectRef<long> ref) {
    kept_.push_back(std::move(ref));
    return true;
  }
  std::vector<ObjectRef<long>> hand_back() { return kept_; }
  long read_kept() {
    long total = 0;
    for (const auto& ref : kept_) total += ref.get(troupe::conformance::kWait);
    return total;
  }

 private:
  std::vector<ObjectRef<long>> kept_;
};

class Gated {
 public:
  explicit Gated(long start) : start_(start) {}
  long start() const { return start_; }

 private:
  long start_;
};

}  // namespace conformance_refs

TROUPE_ACTOR(conformance_refs::Producer, (), square, make_refs, make_map);
TROUPE_ACTOR(conformance_refs::Consumer, (), sum_all, unwrap, sum_map, value_or, give_up_after, keep, hand_back,
             read_kept);
TROUPE_ACTOR(conformance_refs::Gated, (long), start);

namespace {

using conformance_refs::Consumer;
using conformance_refs::Gated;
using conformance_refs::Producer;
using troupe::ObjectRef;
using namespace troupe::conformance;
using Clock = std::chrono::steady_clock;

TEST(ConformanceRefs, AVectorOfRefsParameterCrossesToTheCalleeAndEachRefResolves) {
  auto producer = troupe::actor<Producer>();
  auto consumer = troupe::actor<Consumer>();
  std::vector<ObjectRef<long>> refs;
  for (long i = 1; i <= 3; ++i) refs.push_back(producer.call<&Producer::square>(i));  // held by the producer
  refs.push_back(troupe::make_ready(100L));                                           // held here
  troupe::Promise<long> later;
  refs.push_back(later.ref());  // not ready when sent
  auto sum = consumer.call<&Consumer::sum_all>(refs);
  later.set_value(1000L);
  EXPECT_EQ(sum.get(kWait), 1 + 4 + 9 + 100 + 1000) << mode_name();
}

TEST(ConformanceRefs, ARefToARefParameterCrossesAndBothLevelsResolve) {
  auto producer = troupe::actor<Producer>();
  auto consumer = troupe::actor<Consumer>();
  auto inner = producer.call<&Producer::square>(6L);
  auto got = consumer.call<&Consumer::unwrap>(troupe::make_ready(inner));
  EXPECT_EQ(got.get(kWait), 36) << mode_name();
  auto local_inner = troupe::make_ready(5L);
  EXPECT_EQ(consumer.call<&Consumer::unwrap>(troupe::make_ready(local_inner)).get(kWait), 5) << mode_name();
}

TEST(ConformanceRefs, MapAndOptionalParametersHoldingRefsCross) {
  auto producer = troupe::actor<Producer>();
  auto consumer = troupe::actor<Consumer>();
  std::map<std::string, ObjectRef<long>> named{{"x", producer.call<&Producer::square>(3L)},
                                               {"y", troupe::make_ready(2L)}};
  EXPECT_EQ(consumer.call<&Consumer::sum_map>(named).get(kWait), 11) << mode_name();
  std::optional<ObjectRef<long>> some = producer.call<&Producer::square>(4L);
  EXPECT_EQ(consumer.call<&Consumer::value_or>(some, -1L).get(kWait), 16) << mode_name();
  EXPECT_EQ(consumer.call<&Consumer::value_or>(std::optional<ObjectRef<long>>{}, -1L).get(kWait), -1);
}

TEST(ConformanceRefs, RefsReturnedInsideAResultStayReadableAfterTheCallFinished) {
  auto producer = troupe::actor<Producer>();
  auto refs = producer.call<&Producer::make_refs>(3L).get(kWait);
  ASSERT_EQ(refs.size(), 3u);
  // The producing call is over (and more calls ran since): its refs still read.
  EXPECT_EQ(producer.call<&Producer::square>(2L).get(kWait), 4);
  EXPECT_EQ(refs[0].get(kWait) + refs[1].get(kWait) + refs[2].get(kWait), 60) << mode_name();
  auto map = producer.call<&Producer::make_map>().get(kWait);
  EXPECT_EQ(map.at("a").get(kWait) + map.at("b").get(kWait), 3) << mode_name();
  // And they can be passed on to another actor.
  auto consumer = troupe::actor<Consumer>();
  EXPECT_EQ(consumer.call<&Consumer::sum_all>(refs).get(kWait), 60) << mode_name();
}

TEST(ConformanceRefs, AResultHoldingRefsPassedOnBeforeItIsReadyReachesTheNextActor) {
  auto producer = troupe::actor<Producer>();
  auto consumer = troupe::actor<Consumer>();
  // Neither result is read here: each goes straight into the next call.
  auto sum = consumer.call<&Consumer::sum_all>(producer.call<&Producer::make_refs>(4L));
  auto sum_map = consumer.call<&Consumer::sum_map>(producer.call<&Producer::make_map>());
  EXPECT_EQ(sum.get(kWait), 100) << mode_name();
  EXPECT_EQ(sum_map.get(kWait), 3) << mode_name();
}

TEST(ConformanceRefs, ABorrowedRefKeptByTheCalleeResolvesWhenItsValueArrivesLater) {
  auto consumer = troupe::actor<Consumer>();
  troupe::Promise<long> later;
  EXPECT_TRUE(consumer.call<&Consumer::keep>(later.ref()).get(kWait));  // answered before the value exists
  later.set_value(42L);
  EXPECT_EQ(consumer.call<&Consumer::read_kept>().get(kWait), 42) << mode_name();
  // The callee hands its borrowed ref back inside a result.
  auto back = consumer.call<&Consumer::hand_back>().get(kWait);
  ASSERT_EQ(back.size(), 1u);
  EXPECT_EQ(back[0].get(kWait), 42) << mode_name();
}

TEST(ConformanceRefs, AnAnswerIsNotWithheldUntilAnUnresolvedRefParameterArrives) {
  auto consumer = troupe::actor<Consumer>();
  ASSERT_TRUE(consumer.call<&Consumer::keep>(troupe::make_ready(0L)).get(kWait));  // the actor is up
  troupe::Promise<long> never;  // kept past the check: its ref never resolves while it runs
  const auto start = Clock::now();
  auto answer = consumer.call<&Consumer::give_up_after>(never.ref(), 1000L);
  EXPECT_EQ(answer.get(kWait), 7) << mode_name();
  const auto took = Clock::now() - start;
  // The method waits 1 s; the answer comes right after it returns.
  EXPECT_LT(took, std::chrono::milliseconds(2500)) << mode_name() << ": answered after "
                                                  << std::chrono::duration<double>(took).count() << " s";
  never.set_value(1L);
}

TEST(ConformanceRefs, CreatingAnActorDoesNotWaitForAPendingConstructorArgument) {
  troupe::Promise<long> start_value;
  const auto start = Clock::now();
  auto gated = troupe::actor<Gated>(start_value.ref());
  EXPECT_LT(Clock::now() - start, std::chrono::milliseconds(1000)) << mode_name() << ": actor() blocked";
  auto first = gated.call<&Gated::start>();  // queues until the actor is up
  EXPECT_FALSE(first.wait_for(std::chrono::milliseconds(300))) << mode_name();
  start_value.set_value(5L);
  EXPECT_EQ(first.get(kWait), 5) << mode_name();
  EXPECT_EQ(gated.call<&Gated::start>().get(kWait), 5);
}

TEST(ConformanceRefs, AFailedConstructorArgumentKillsTheActorAndFailsItsCalls) {
  troupe::Promise<long> start_value;
  auto gated = troupe::actor<Gated>(start_value.ref());
  auto call = gated.call<&Gated::start>();
  start_value.set_error(std::make_exception_ptr(std::runtime_error("no start value")));
  EXPECT_THROW(call.get(kWait), troupe::ActorDiedError) << mode_name();
}

}  // namespace
