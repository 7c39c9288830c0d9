// troupe's one error vocabulary. Every failure a caller must plan for is an
// Errc value carried by a troupe::Error (or one of its typed subclasses)
// inside an ObjectRef, or thrown from a synchronous API. docs/errors.md lists
// each code with when it happens and what to do about it.
#pragma once

#include <cstdint>
#include <exception>
#include <stdexcept>
#include <string>
#include <string_view>

namespace troupe {

enum class Errc : int {
  ok = 0,
  task_failed,       // the actor method (or constructor) threw; remote type and message kept
  actor_died,        // the actor was killed, its process or node died, or its constructor failed
  timeout,           // a wait ran past its deadline (the object itself is unaffected)
  cancelled,         // the call was cancelled before it started, or the runtime shut down
  node_lost,         // the node holding an object or actor stopped heartbeating
  object_lost,       // the process holding an object died before the value was fetched
  invalid_argument,  // bad input from the caller: malformed spec, wrong type, unknown name
  not_found,         // no actor/object/job with that name or id
  not_registered,    // actor class, constructor or method was not registered
  unschedulable,     // no node can ever satisfy the resource request
  serialization,     // a value could not be encoded or decoded
  protocol,          // a malformed or oversized message arrived from a peer
  transport,         // a socket or UCX operation failed
  cuda,              // a CUDA runtime or library call failed
  unsupported,       // the feature is not available in this build or mode
  internal,          // a broken invariant inside troupe (a bug: please report)
  permission_denied, // not a member of the cluster (no or wrong token), or not the owner of that actor or job
  overloaded,        // a bound was reached: an actor's pending calls (max_pending_calls), a host's queue for one caller, a peer's send queue
};

// Stable lower-case name of a code, e.g. "actor_died".
std::string_view to_string(Errc code) noexcept;

// The wire form of a code (ErrorInfo.code, a UInt16 in the schemas): the
// numbers above, which never change. errc_from_wire is the one place a number
// from a peer becomes an Errc; a number this build does not know becomes
// Errc::protocol (a newer or broken peer), never an out-of-range enum.
constexpr std::uint16_t wire_code(Errc code) noexcept { return static_cast<std::uint16_t>(code); }
Errc errc_from_wire(std::uint16_t code) noexcept;

// Base of every error troupe raises. `remote_type` names the exception type
// thrown in another actor/process when the error crossed one (else empty).
class Error : public std::runtime_error {
 public:
  Error(Errc code, std::string message, std::string remote_type = {});
  Errc code() const noexcept { return code_; }
  const std::string& message() const noexcept { return message_; }
  const std::string& remote_type() const noexcept { return remote_type_; }

 private:
  Errc code_;
  std::string message_;
  std::string remote_type_;
};

// Typed subclasses for the codes callers most often catch by type.
class TaskError : public Error {
 public:
  TaskError(std::string message, std::string remote_type)
      : Error(Errc::task_failed, std::move(message), std::move(remote_type)) {}
};
class ActorDiedError : public Error {
 public:
  explicit ActorDiedError(std::string message) : Error(Errc::actor_died, std::move(message)) {}
};
class TimeoutError : public Error {
 public:
  explicit TimeoutError(std::string message) : Error(Errc::timeout, std::move(message)) {}
};
class CancelledError : public Error {
 public:
  explicit CancelledError(std::string message) : Error(Errc::cancelled, std::move(message)) {}
};
class OverloadedError : public Error {
 public:
  explicit OverloadedError(std::string message) : Error(Errc::overloaded, std::move(message)) {}
};

// Builds the most specific exception for `code` (TaskError for task_failed,
// ActorDiedError for actor_died, ...), as an exception_ptr for futures.
std::exception_ptr make_error(Errc code, std::string message, std::string remote_type = {});
[[noreturn]] void throw_error(Errc code, std::string message, std::string remote_type = {});

// Describes an arbitrary exception_ptr as (code, type name, message); used to
// carry an exception across a process boundary and rebuild it with make_error.
struct ErrorInfo {
  Errc code = Errc::internal;
  std::string type;     // demangled C++ type of the original exception
  std::string message;  // its what()
};
ErrorInfo describe(const std::exception_ptr& error);

namespace detail {
[[noreturn]] void check_failed(const char* expr, const char* file, int line, std::string_view why);
}  // namespace detail

}  // namespace troupe

// TROUPE_CHECK(cond, why): a broken invariant is a bug in troupe; it throws
// Error(Errc::internal) naming the condition, the place and the reason.
#define TROUPE_CHECK(cond, why)                                          \
  do {                                                                   \
    if (!(cond)) ::troupe::detail::check_failed(#cond, __FILE__, __LINE__, (why)); \
  } while (0)
