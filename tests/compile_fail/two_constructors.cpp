// A class registered twice to name two constructors.
// expect-error: TROUPE_ACTOR_is_used_once_per_class_with_one_constructor_signature
#include <string>

#include <troupe/troupe.hpp>

class A {
 public:
  explicit A(int x) : x_(x) {}
  explicit A(std::string s) : x_(static_cast<int>(s.size())) {}
  int get() { return x_; }

 private:
  int x_;
};
TROUPE_ACTOR(A, (int), get);
TROUPE_ACTOR(A, (std::string), get);
