// A TROUPE_ACTOR that lists an overloaded method by its bare name: the
// diagnostic says how to name one overload.
// expect-error: lists 'f', which is not exactly one public member function of A
// expect-error: list an overload as (f, signature)
#include <troupe/troupe.hpp>

class A {
 public:
  int f(int x) { return x; }
  int f(long x) { return static_cast<int>(x); }
};
TROUPE_ACTOR(A, (), f);
