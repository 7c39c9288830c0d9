// Errors raised by troupe::transport. The transport library sits below the
// runtime and cannot use troupe::Error, so it throws TransportError; the
// runtime converts it at its boundary. TransportErrc values are numerically
// equal to the matching troupe::Errc values, so that conversion is a cast.
#pragma once

#include <exception>
#include <stdexcept>
#include <string>
#include <string_view>

namespace kj {
class Exception;
}
namespace zmq {
class error_t;
}

namespace troupe::transport {

enum class TransportErrc : int {
  timeout = 3,            // a send or wait ran past its deadline (troupe::Errc::timeout)
  cancelled = 4,          // the operation was abandoned: its worker or data plane shut down
  object_lost = 6,        // the peer process died or became unreachable while an object was
                          // fetched from (or pushed to) it (troupe::Errc::object_lost)
  invalid_argument = 7,   // bad input from the caller, e.g. malformed worker address bytes
  not_found = 8,          // the peer holds no object with that id (troupe::Errc::not_found)
  protocol = 12,          // a peer sent a malformed or oversized message (troupe::Errc::protocol)
  transport = 13,         // a socket or UCX operation failed (troupe::Errc::transport)
  cuda = 14,              // a CUDA runtime call made while staging device memory failed
  unsupported = 15,       // not available here: no such UCX transport/device, no CUDA in this build
};

// Stable lower-case name of a code, e.g. "protocol".
std::string_view to_string(TransportErrc code) noexcept;

class TransportError : public std::runtime_error {
 public:
  TransportError(TransportErrc code, std::string message);
  TransportErrc code() const noexcept { return code_; }
  // The message without the "<code>: " prefix that what() carries.
  const std::string& message() const noexcept { return message_; }

 private:
  TransportErrc code_;
  std::string message_;
};

// The one place a Cap'n Proto/KJ exception becomes a TransportError. Every
// KJ exception seen while decoding is the peer's fault, so this gives
// `protocol`, except DISCONNECTED/OVERLOADED, which give `transport`.
// `context` says what was being done, e.g. "decoding a message".
[[noreturn]] void throw_from_kj(const kj::Exception& error, std::string_view context);

// The one place a ZeroMQ error becomes a TransportError: EAGAIN (a send or
// receive timeout set on the socket, or a dontwait that would block) gives
// `timeout`, EMSGSIZE `protocol`, anything else `transport`.
[[noreturn]] void throw_from_zmq(const zmq::error_t& error, std::string_view context);

// The one place a UCX status (ucs_status_t, passed as its int value so this
// header needs no UCX include) becomes a TransportError. Must not be given
// UCS_OK or UCS_INPROGRESS (they are not failures). Mapping:
//   UCS_ERR_CONNECTION_RESET, UCS_ERR_ENDPOINT_TIMEOUT, UCS_ERR_NOT_CONNECTED,
//   UCS_ERR_REJECTED, UCS_ERR_UNREACHABLE, UCS_ERR_SHMEM_SEGMENT
//   (the peer died, refuses, or cannot be reached; connecting to a dead
//   peer gives UNREACHABLE over tcp and SHMEM_SEGMENT over shm. Two
//   processes whose UCX_TLS share no transport also get UNREACHABLE: the
//   message keeps UCX's reason)                               -> object_lost
//   UCS_ERR_TIMED_OUT                                         -> timeout
//   UCS_ERR_CANCELED                                          -> cancelled
//   UCS_ERR_INVALID_PARAM, UCS_ERR_INVALID_ADDR               -> invalid_argument
//   UCS_ERR_NO_DEVICE, UCS_ERR_UNSUPPORTED, UCS_ERR_NO_ELEM   -> unsupported
//   UCS_ERR_MESSAGE_TRUNCATED                                 -> protocol
//   anything else (UCS_ERR_NO_MEMORY,
//   UCS_ERR_IO_ERROR, UCS_ERR_EXCEEDS_LIMIT, ...)            -> transport
// The message is "<context>: <ucs_status_string>".
TransportError error_from_ucs(int status, std::string_view context);
[[noreturn]] void throw_from_ucs(int status, std::string_view context);
// The same error as an exception_ptr, for callbacks and futures.
std::exception_ptr make_error_from_ucs(int status, std::string_view context);

}  // namespace troupe::transport
