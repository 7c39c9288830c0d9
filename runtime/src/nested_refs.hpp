// ObjectRefs inside values that cross processes (cluster mode). While a
// NestedRefEncoder lives on a thread, every ObjectRef encoded there (by
// ObjectRef::save, or an EncodedValue passed on as it came) records its
// state with it; the runtime then sends those objects alongside the bytes
// (CallRequest.refs, CallReply.refs), lent like ObjectRef parameters.
// Decoding finds them again by id (NestedRefDecodeScope, value.hpp).
#pragma once

#include <unordered_set>
#include <vector>

#include "troupe/runtime/object_state.hpp"

namespace troupe::detail {

class NestedRefEncoder {
 public:
  NestedRefEncoder() noexcept;
  ~NestedRefEncoder();
  NestedRefEncoder(const NestedRefEncoder&) = delete;
  NestedRefEncoder& operator=(const NestedRefEncoder&) = delete;

  // The states recorded so far, each once, in the order first met.
  const std::vector<StatePtr>& refs() const noexcept { return refs_; }
  void add(const StatePtr& state);

 private:
  NestedRefEncoder* previous_;
  std::vector<StatePtr> refs_;
  std::unordered_set<ObjectId> seen_;
};

}  // namespace troupe::detail
