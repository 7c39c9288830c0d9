#include "wire_util.hpp"

#include "troupe/runtime/error.hpp"

namespace troupe::detail {

void fill_error(wire::ErrorInfo::Builder builder, const std::exception_ptr& error) {
  auto info = describe(error);
  builder.setCode(wire_code(info.code));
  builder.setRemoteType(info.type);
  builder.setMessage(info.message);
}

std::exception_ptr to_exception(wire::ErrorInfo::Reader error) {
  return make_error(errc_from_wire(error.getCode()), error.getMessage(), error.getRemoteType());
}

}  // namespace troupe::detail
