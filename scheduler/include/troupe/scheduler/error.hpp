// The scheduler's errors, in troupe's one vocabulary (troupe::Errc; the table
// is docs/errors.md). They are typed subclasses of troupe::Error, so a caller
// may catch them by type or as any troupe::Error:
//   SpecError       -> Errc::invalid_argument  (the user wrote something wrong)
//   AllocationError -> Errc::internal          (a caller broke a contract)
// "Nothing fits" is not an error here: place() and place_group() return it as
// a value (PlacementStatus::insufficient / infeasible) because callers plan
// for it; the head answers infeasible requests with Errc::unschedulable.
//
// what() reads "<code>: <message>" like every troupe::Error; message() is the
// text alone, for callers that add their own context.
#pragma once

#include <string>
#include <utility>

#include "troupe/runtime/error.hpp"

namespace troupe::scheduler {

// Bad user input: a malformed GPU spec, an unknown strategy name, a negative
// or non-finite quantity, a fractional GPU count above one. The message names
// the offending token, e.g. `bad GPU spec item "H100:x": count "x" is not a
// whole number`.
class SpecError : public Error {
 public:
  explicit SpecError(std::string message) : Error(Errc::invalid_argument, std::move(message)) {}
};

// A caller asked a NodeState to allocate what does not fit (or release what it
// does not hold), or passed GPU indexes that disagree with the amounts.
// place()/place_group() only return decisions that allocate cleanly on the
// node states they were computed from, so this signals a bug in the caller
// (e.g. allocating a stale decision).
class AllocationError : public Error {
 public:
  explicit AllocationError(std::string message) : Error(Errc::internal, std::move(message)) {}
};

}  // namespace troupe::scheduler
