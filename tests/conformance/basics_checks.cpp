// Basic promises of the README's tour, in both modes: calls, chaining a
// future into the next call, typed errors, named actors.
#include <gtest/gtest.h>

#include <stdexcept>
#include <string>
#include <vector>

#include "conformance/conformance.hpp"

namespace conformance_basics {

class Accumulator {
 public:
  explicit Accumulator(long start) : total_(start) {}
  long add(long x) { return total_ += x; }
  long total() const { return total_; }
  long fail(const std::string& why) { throw std::invalid_argument(why); }

 private:
  long total_;
};

}  // namespace conformance_basics

TROUPE_ACTOR(conformance_basics::Accumulator, (long), add, total, fail);

namespace {

using conformance_basics::Accumulator;
using namespace troupe::conformance;

TEST(ConformanceBasics, CallsRunInOrderAndAFutureChainsIntoTheNextCall) {
  auto a = troupe::actor<Accumulator>(10L);
  auto b = troupe::actor<Accumulator>(0L);
  std::vector<troupe::ObjectRef<long>> refs;
  for (long i = 1; i <= 5; ++i) refs.push_back(a.call<&Accumulator::add>(i));
  EXPECT_EQ(refs.back().get(kWait), 25) << mode_name();
  auto chained = b.call<&Accumulator::add>(a.call<&Accumulator::total>());
  EXPECT_EQ(chained.get(kWait), 25) << mode_name();
}

TEST(ConformanceBasics, AMethodThatThrowsFailsItsFutureWithTaskErrorNamingTheException) {
  auto a = troupe::actor<Accumulator>(0L);
  auto ref = a.call<&Accumulator::fail>(std::string("no good"));
  try {
    ref.get(kWait);
    FAIL() << "expected TaskError (" << mode_name() << ")";
  } catch (const troupe::TaskError& e) {
    EXPECT_NE(std::string(e.what()).find("no good"), std::string::npos) << e.what();
  }
  // The actor survives its method's exception.
  EXPECT_EQ(a.call<&Accumulator::add>(3L).get(kWait), 3);
}

}  // namespace
