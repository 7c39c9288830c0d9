// A call that leaves out a parameter that has a default argument.
// expect-error: pass every parameter: default arguments are not part of a method's type
#include <troupe/troupe.hpp>

class A {
 public:
  int f(int x, int y = 2) { return x + y; }
};
TROUPE_ACTOR(A, (), f);

int main() {
  troupe::init();
  auto a = troupe::actor<A>();
  return a.call<&A::f>(1).get();
}
