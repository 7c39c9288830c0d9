// troupe::actor<A> for a class no TROUPE_ACTOR registered.
// expect-error: register the class with TROUPE_ACTOR(A, (constructor args), methods...) at global scope
#include <troupe/troupe.hpp>

class A {
 public:
  int f(int x) { return x; }
};

int main() {
  troupe::init();
  auto a = troupe::actor<A>();
  return a.call<&A::f>(1).get();
}
