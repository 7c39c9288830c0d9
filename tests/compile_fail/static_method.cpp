// A static member function listed as an actor method.
// expect-error: static member functions cannot be actor methods
#include <troupe/troupe.hpp>

class A {
 public:
  static int s() { return 1; }
  int f(int x) { return x; }
};
TROUPE_ACTOR(A, (), f, s);
