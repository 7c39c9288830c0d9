#include "troupe/transport/error.hpp"

#include <cerrno>
#include <string>

#include <kj/exception.h>
#include <ucs/type/status.h>
#include <zmq.hpp>

namespace troupe::transport {

void throw_from_kj(const kj::Exception& error, std::string_view context) {
  auto code = Errc::protocol;
  switch (error.getType()) {
    case kj::Exception::Type::DISCONNECTED:
    case kj::Exception::Type::OVERLOADED:
      code = Errc::transport;
      break;
    case kj::Exception::Type::FAILED:
    case kj::Exception::Type::UNIMPLEMENTED:
      break;
  }
  // The description alone: file, line and trace point into capnp, not at the peer.
  const auto description = error.getDescription();
  throw_error(code, std::string(context) + ": " + std::string(description.begin(), description.size()));
}

void throw_from_zmq(const zmq::error_t& error, std::string_view context) {
  auto code = Errc::transport;
  switch (error.num()) {
    case EAGAIN: code = Errc::timeout; break;
    case EMSGSIZE: code = Errc::protocol; break;
    default: break;
  }
  throw_error(code, std::string(context) + ": " + error.what());
}

std::exception_ptr make_error_from_ucs(int status, std::string_view context) {
  auto code = Errc::transport;
  switch (static_cast<ucs_status_t>(status)) {
    case UCS_ERR_CONNECTION_RESET:
    case UCS_ERR_ENDPOINT_TIMEOUT:
    case UCS_ERR_NOT_CONNECTED:
    case UCS_ERR_REJECTED:
    case UCS_ERR_UNREACHABLE:
    case UCS_ERR_SHMEM_SEGMENT:
      code = Errc::object_lost;
      break;
    case UCS_ERR_TIMED_OUT: code = Errc::timeout; break;
    case UCS_ERR_CANCELED: code = Errc::cancelled; break;
    case UCS_ERR_INVALID_PARAM:
    case UCS_ERR_INVALID_ADDR:
      code = Errc::invalid_argument;
      break;
    case UCS_ERR_NO_DEVICE:
    case UCS_ERR_UNSUPPORTED:
    case UCS_ERR_NO_ELEM:
      code = Errc::unsupported;
      break;
    case UCS_ERR_MESSAGE_TRUNCATED: code = Errc::protocol; break;
    default: break;
  }
  return make_error(code, std::string(context) + ": " + ucs_status_string(static_cast<ucs_status_t>(status)));
}

void throw_from_ucs(int status, std::string_view context) {
  std::rethrow_exception(make_error_from_ucs(status, context));
}

}  // namespace troupe::transport
