// API conveniences that used to be compile errors (issue 13) and now work,
// the same in both modes: braced lists for wait/when_all/when_any, an
// ObjectRef<int> passed for a `long` parameter, an actor with 64 methods,
// overloaded methods registered by signature, README-style option
// initializers. The misuses that must still fail name their fix; those are
// tests/compile_fail.
#include <gtest/gtest.h>

#include <stdexcept>
#include <string>
#include <vector>

#include "conformance/conformance.hpp"

namespace conformance_api {

class Numbers {
 public:
  int seven() { return 7; }
  int fail() { throw std::runtime_error("seven is gone"); }
  long twice(long x) { return 2 * x; }
  double half(double x) const { return x / 2; }
  long sum(long a, long b) { return a + b; }
  // Overloads, registered by signature.
  int scale(int x) { return 10 * x; }
  std::string scale(const std::string& s) const { return s + s; }
};

class Start {
 public:
  explicit Start(long value) : value_(value) {}
  long value() const { return value_; }

 private:
  long value_;
};

#define CONFORMANCE_API_METHOD(i) \
  int m##i() { return i; }
class Wide {
 public:
  CONFORMANCE_API_METHOD(0) CONFORMANCE_API_METHOD(1) CONFORMANCE_API_METHOD(2) CONFORMANCE_API_METHOD(3)
  CONFORMANCE_API_METHOD(4) CONFORMANCE_API_METHOD(5) CONFORMANCE_API_METHOD(6) CONFORMANCE_API_METHOD(7)
  CONFORMANCE_API_METHOD(8) CONFORMANCE_API_METHOD(9) CONFORMANCE_API_METHOD(10) CONFORMANCE_API_METHOD(11)
  CONFORMANCE_API_METHOD(12) CONFORMANCE_API_METHOD(13) CONFORMANCE_API_METHOD(14) CONFORMANCE_API_METHOD(15)
  CONFORMANCE_API_METHOD(16) CONFORMANCE_API_METHOD(17) CONFORMANCE_API_METHOD(18) CONFORMANCE_API_METHOD(19)
  CONFORMANCE_API_METHOD(20) CONFORMANCE_API_METHOD(21) CONFORMANCE_API_METHOD(22) CONFORMANCE_API_METHOD(23)
  CONFORMANCE_API_METHOD(24) CONFORMANCE_API_METHOD(25) CONFORMANCE_API_METHOD(26) CONFORMANCE_API_METHOD(27)
  CONFORMANCE_API_METHOD(28) CONFORMANCE_API_METHOD(29) CONFORMANCE_API_METHOD(30) CONFORMANCE_API_METHOD(31)
  CONFORMANCE_API_METHOD(32) CONFORMANCE_API_METHOD(33) CONFORMANCE_API_METHOD(34) CONFORMANCE_API_METHOD(35)
  CONFORMANCE_API_METHOD(36) CONFORMANCE_API_METHOD(37) CONFORMANCE_API_METHOD(38) CONFORMANCE_API_METHOD(39)
  CONFORMANCE_API_METHOD(40) CONFORMANCE_API_METHOD(41) CONFORMANCE_API_METHOD(42) CONFORMANCE_API_METHOD(43)
  CONFORMANCE_API_METHOD(44) CONFORMANCE_API_METHOD(45) CONFORMANCE_API_METHOD(46) CONFORMANCE_API_METHOD(47)
  CONFORMANCE_API_METHOD(48) CONFORMANCE_API_METHOD(49) CONFORMANCE_API_METHOD(50) CONFORMANCE_API_METHOD(51)
  CONFORMANCE_API_METHOD(52) CONFORMANCE_API_METHOD(53) CONFORMANCE_API_METHOD(54) CONFORMANCE_API_METHOD(55)
  CONFORMANCE_API_METHOD(56) CONFORMANCE_API_METHOD(57) CONFORMANCE_API_METHOD(58) CONFORMANCE_API_METHOD(59)
  CONFORMANCE_API_METHOD(60) CONFORMANCE_API_METHOD(61) CONFORMANCE_API_METHOD(62) CONFORMANCE_API_METHOD(63)
};
#undef CONFORMANCE_API_METHOD

}  // namespace conformance_api

TROUPE_ACTOR(conformance_api::Numbers, (), seven, fail, twice, half, sum, (scale, int(int)),
             (scale, std::string(const std::string&) const));

TROUPE_ACTOR(conformance_api::Start, (long), value);

TROUPE_ACTOR(conformance_api::Wide, (), m0, m1, m2, m3, m4, m5, m6, m7, m8, m9, m10, m11, m12, m13, m14, m15,
             m16, m17, m18, m19, m20, m21, m22, m23, m24, m25, m26, m27, m28, m29, m30, m31, m32, m33, m34, m35,
             m36, m37, m38, m39, m40, m41, m42, m43, m44, m45, m46, m47, m48, m49, m50, m51, m52, m53, m54, m55,
             m56, m57, m58, m59, m60, m61, m62, m63);

namespace {

using conformance_api::Numbers;
using conformance_api::Start;
using conformance_api::Wide;
using namespace troupe::conformance;

TEST(ConformanceApi, WaitWhenAllAndWhenAnyTakeABracedListOfRefs) {
  auto n = troupe::actor<Numbers>();
  auto a = n.call<&Numbers::seven>();
  auto b = n.call<&Numbers::twice>(4L);
  auto c = n.call<&Numbers::twice>(5L);

  auto waited = troupe::wait({b, c}, 2, kWait);
  EXPECT_EQ(waited.ready.size(), 2u) << mode_name();
  EXPECT_TRUE(waited.not_ready.empty()) << mode_name();

  EXPECT_EQ(troupe::when_all({b, c}).get(kWait), (std::vector<long>{8, 10})) << mode_name();
  const std::size_t first = troupe::when_any({a, a}).get(kWait);
  EXPECT_LT(first, 2u) << mode_name();
}

TEST(ConformanceApi, AnObjectRefOfIntIsResolvedThenConvertedForALongParameter) {
  auto n = troupe::actor<Numbers>();
  // Not ready when passed: resolved first, then converted.
  troupe::ObjectRef<int> seven = n.call<&Numbers::seven>();
  EXPECT_EQ(n.call<&Numbers::twice>(seven).get(kWait), 14L) << mode_name();
  // Ready when passed, and mixed with a plain value; int -> double too.
  EXPECT_EQ(n.call<&Numbers::sum>(troupe::make_ready(20), 1L).get(kWait), 21L) << mode_name();
  EXPECT_DOUBLE_EQ(n.call<&Numbers::half>(troupe::make_ready(3)).get(kWait), 1.5) << mode_name();
  // A ref that fails fails the call with its error, as an unconverted one does.
  auto failed = n.call<&Numbers::twice>(n.call<&Numbers::fail>());
  try {
    failed.get(kWait);
    FAIL() << "expected TaskError (" << mode_name() << ")";
  } catch (const troupe::TaskError& e) {
    EXPECT_NE(std::string(e.what()).find("seven is gone"), std::string::npos) << e.what();
  }
}

TEST(ConformanceApi, AnObjectRefOfIntIsConvertedForALongConstructorParameter) {
  auto n = troupe::actor<Numbers>();
  auto start = troupe::actor<Start>(n.call<&Numbers::seven>());
  EXPECT_EQ(start.call<&Start::value>().get(kWait), 7L) << mode_name();
}

TEST(ConformanceApi, AnActorCanRegisterSixtyFourMethods) {
  auto w = troupe::actor<Wide>();
  EXPECT_EQ(w.call<&Wide::m0>().get(kWait), 0) << mode_name();
  EXPECT_EQ(w.call<&Wide::m24>().get(kWait), 24) << mode_name();
  EXPECT_EQ(w.call<&Wide::m63>().get(kWait), 63) << mode_name();
}

TEST(ConformanceApi, OverloadedMethodsAreRegisteredAndCalledBySignature) {
  auto n = troupe::actor<Numbers>();
  auto by_int = n.call<troupe::overload<int(int)>(&Numbers::scale)>(4);
  auto by_string = n.call<troupe::overload<std::string(const std::string&) const>(&Numbers::scale)>(std::string("ab"));
  EXPECT_EQ(by_int.get(kWait), 40) << mode_name();
  EXPECT_EQ(by_string.get(kWait), "abab") << mode_name();
}

TEST(ConformanceApi, ReadmeStyleOptionInitializersCreateActors) {
  auto n = troupe::actor<Numbers>({.max_restarts = 1});
  EXPECT_EQ(n.with_options({.timeout = kWait}).call<&Numbers::seven>().get(kWait), 7) << mode_name();
}

}  // namespace
