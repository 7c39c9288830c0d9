// Where the C libraries' failures become troupe errors. The transport speaks
// the one error vocabulary of troupe (troupe::Errc, troupe::Error and its
// typed subclasses, <troupe/runtime/error.hpp>); each library's status codes
// are converted in exactly one function below, and nowhere else.
#pragma once

#include <exception>
#include <string>
#include <string_view>

#include "troupe/runtime/error.hpp"

namespace kj {
class Exception;
}
namespace zmq {
class error_t;
}

namespace troupe::transport {

// The one place a Cap'n Proto/KJ exception becomes a troupe::Error. Every
// KJ exception seen while decoding is the peer's fault, so this gives
// `protocol`, except DISCONNECTED/OVERLOADED, which give `transport`.
// `context` says what was being done, e.g. "decoding a message".
[[noreturn]] void throw_from_kj(const kj::Exception& error, std::string_view context);

// The one place a ZeroMQ error becomes a troupe::Error: EAGAIN (a send or
// receive timeout set on the socket, or a dontwait that would block) gives
// `timeout`, EMSGSIZE `protocol`, anything else `transport`.
[[noreturn]] void throw_from_zmq(const zmq::error_t& error, std::string_view context);

// The one place a UCX status (ucs_status_t, passed as its int value so this
// header needs no UCX include) becomes a troupe::Error. Must not be given
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
// The message is "<context>: <ucs_status_string>". The error is the typed
// subclass for its code (TimeoutError, CancelledError), as make_error builds.
[[noreturn]] void throw_from_ucs(int status, std::string_view context);
// The same error as an exception_ptr, for callbacks and futures.
std::exception_ptr make_error_from_ucs(int status, std::string_view context);

}  // namespace troupe::transport
