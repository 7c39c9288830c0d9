// TROUPE_ACTOR inside a user namespace.
// expect-error: TROUPE_ACTOR must be used at global namespace scope
#include <troupe/troupe.hpp>

namespace app {
class A {
 public:
  int f(int x) { return x; }
};
TROUPE_ACTOR(A, (), f);
}  // namespace app
