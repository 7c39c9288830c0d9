#include "troupe/transport/error.hpp"

#include <cerrno>
#include <utility>

#include <kj/exception.h>
#include <zmq.hpp>

namespace troupe::transport {

std::string_view to_string(TransportErrc code) noexcept {
  switch (code) {
    case TransportErrc::timeout: return "timeout";
    case TransportErrc::protocol: return "protocol";
    case TransportErrc::transport: return "transport";
  }
  return "unknown";
}

TransportError::TransportError(TransportErrc code, std::string message)
    : std::runtime_error(std::string(to_string(code)) + ": " + message),
      code_(code),
      message_(std::move(message)) {}

void throw_from_kj(const kj::Exception& error, std::string_view context) {
  auto code = TransportErrc::protocol;
  switch (error.getType()) {
    case kj::Exception::Type::DISCONNECTED:
    case kj::Exception::Type::OVERLOADED:
      code = TransportErrc::transport;
      break;
    case kj::Exception::Type::FAILED:
    case kj::Exception::Type::UNIMPLEMENTED:
      break;
  }
  // The description alone: file, line and trace point into capnp, not at the peer.
  const auto description = error.getDescription();
  throw TransportError(code, std::string(context) + ": " +
                                 std::string(description.begin(), description.size()));
}

void throw_from_zmq(const zmq::error_t& error, std::string_view context) {
  auto code = TransportErrc::transport;
  switch (error.num()) {
    case EAGAIN: code = TransportErrc::timeout; break;
    case EMSGSIZE: code = TransportErrc::protocol; break;
    default: break;
  }
  throw TransportError(code, std::string(context) + ": " + error.what());
}

}  // namespace troupe::transport
