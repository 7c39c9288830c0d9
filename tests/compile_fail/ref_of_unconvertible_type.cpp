// An ObjectRef whose value does not convert to the parameter's type.
// expect-error: an ObjectRef<T> argument must hold a value that converts to the parameter's type
#include <string>

#include <troupe/troupe.hpp>

class A {
 public:
  int f(int x) { return x; }
};
TROUPE_ACTOR(A, (), f);

int main() {
  troupe::init();
  auto a = troupe::actor<A>();
  return a.call<&A::f>(troupe::make_ready(std::string("1"))).get();
}
