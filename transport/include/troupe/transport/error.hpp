// Errors raised by troupe::transport. The transport library sits below the
// runtime and cannot use troupe::Error, so it throws TransportError; the
// runtime converts it at its boundary. TransportErrc values are numerically
// equal to the matching troupe::Errc values, so that conversion is a cast.
#pragma once

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
  timeout = 3,     // a send or wait ran past its deadline (troupe::Errc::timeout)
  protocol = 12,   // a peer sent a malformed or oversized message (troupe::Errc::protocol)
  transport = 13,  // a socket operation failed (troupe::Errc::transport)
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

}  // namespace troupe::transport
