// The scheduler's two error types. troupe_scheduler is a pure library with no
// dependency on the runtime, so it cannot raise troupe::Error itself; the
// runtime converts these at its boundary:
//   SpecError       -> Errc::invalid_argument  (the user wrote something wrong)
//   AllocationError -> Errc::internal          (a caller broke a contract)
// "Nothing fits" is not an error here: place() and place_group() return it as
// a value (PlacementStatus::insufficient / infeasible) because callers plan
// for it; the runtime maps infeasible to Errc::unschedulable.
#pragma once

#include <stdexcept>

namespace troupe::scheduler {

// Bad user input: a malformed GPU spec, an unknown strategy name, a negative
// or non-finite quantity, a fractional GPU count above one. The message names
// the offending token, e.g. `bad GPU spec item "H100:x": count "x" is not a
// whole number`.
class SpecError : public std::invalid_argument {
 public:
  using std::invalid_argument::invalid_argument;
};

// A caller asked a NodeState to allocate what does not fit (or release what it
// does not hold), or passed GPU indexes that disagree with the amounts.
// place()/place_group() only return decisions that allocate cleanly on the
// node states they were computed from, so this signals a bug in the caller
// (e.g. allocating a stale decision).
class AllocationError : public std::logic_error {
 public:
  using std::logic_error::logic_error;
};

}  // namespace troupe::scheduler
