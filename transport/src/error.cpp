#include "troupe/transport/error.hpp"

#include <cerrno>
#include <utility>

#include <kj/exception.h>
#include <ucs/type/status.h>
#include <zmq.hpp>

namespace troupe::transport {

std::string_view to_string(TransportErrc code) noexcept {
  switch (code) {
    case TransportErrc::timeout: return "timeout";
    case TransportErrc::cancelled: return "cancelled";
    case TransportErrc::object_lost: return "object_lost";
    case TransportErrc::invalid_argument: return "invalid_argument";
    case TransportErrc::not_found: return "not_found";
    case TransportErrc::protocol: return "protocol";
    case TransportErrc::transport: return "transport";
    case TransportErrc::cuda: return "cuda";
    case TransportErrc::unsupported: return "unsupported";
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

TransportError error_from_ucs(int status, std::string_view context) {
  auto code = TransportErrc::transport;
  switch (static_cast<ucs_status_t>(status)) {
    case UCS_ERR_CONNECTION_RESET:
    case UCS_ERR_ENDPOINT_TIMEOUT:
    case UCS_ERR_NOT_CONNECTED:
    case UCS_ERR_REJECTED:
    case UCS_ERR_UNREACHABLE:
    case UCS_ERR_SHMEM_SEGMENT:
      code = TransportErrc::object_lost;
      break;
    case UCS_ERR_TIMED_OUT: code = TransportErrc::timeout; break;
    case UCS_ERR_CANCELED: code = TransportErrc::cancelled; break;
    case UCS_ERR_INVALID_PARAM:
    case UCS_ERR_INVALID_ADDR:
      code = TransportErrc::invalid_argument;
      break;
    case UCS_ERR_NO_DEVICE:
    case UCS_ERR_UNSUPPORTED:
    case UCS_ERR_NO_ELEM:
      code = TransportErrc::unsupported;
      break;
    case UCS_ERR_MESSAGE_TRUNCATED: code = TransportErrc::protocol; break;
    default: break;
  }
  return TransportError(code, std::string(context) + ": " +
                                  ucs_status_string(static_cast<ucs_status_t>(status)));
}

void throw_from_ucs(int status, std::string_view context) {
  throw error_from_ucs(status, context);
}

std::exception_ptr make_error_from_ucs(int status, std::string_view context) {
  return std::make_exception_ptr(error_from_ucs(status, context));
}

}  // namespace troupe::transport
