#include "wire_util.hpp"

#include <fstream>
#include <sstream>

#include "troupe/runtime/error.hpp"

namespace troupe::detail {

std::string read_whole_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw_error(Errc::invalid_argument, "cannot read " + path);
  std::ostringstream out;
  out << in.rdbuf();
  return std::move(out).str();
}

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
