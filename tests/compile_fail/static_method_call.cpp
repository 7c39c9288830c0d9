// A static member function called through an actor handle.
// expect-error: static member functions cannot be actor methods
#include <troupe/troupe.hpp>

class A {
 public:
  static int s() { return 1; }
  int f(int x) { return x; }
};
TROUPE_ACTOR(A, (), f);

int main() {
  troupe::init();
  auto a = troupe::actor<A>();
  return a.call<&A::s>().get();
}
