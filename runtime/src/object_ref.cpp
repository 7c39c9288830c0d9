#include "troupe/runtime/object_ref.hpp"

namespace troupe {

detail::ObjectState& ObjectRefBase::checked() const {
  if (!state_) throw_error(Errc::invalid_argument, "use of an empty ObjectRef");
  return *state_;
}

void ObjectRefBase::throw_timeout(std::chrono::microseconds timeout) const {
  throw TimeoutError("object " + state_->id().hex() + " not ready after " +
                     std::to_string(timeout.count() / 1000.0) + " ms");
}

}  // namespace troupe
