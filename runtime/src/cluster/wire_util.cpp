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
  Errc code = errc_from_wire(error.getCode());
  if (code == Errc::ok) code = Errc::protocol;  // an error that says "ok" is not one
  return make_error(code, error.getMessage(), error.getRemoteType());
}

std::string check_peer_address(std::string_view address) {
  constexpr std::string_view kScheme = "tcp://";
  if (address.empty()) return "no address";
  if (address.size() > kMaxPeerAddressBytes)
    return "an address of " + std::to_string(address.size()) + " bytes (at most " +
           std::to_string(kMaxPeerAddressBytes) + ")";
  for (const char c : address) {
    if (c < 0x21 || c > 0x7e) return "an address with a byte that is not printable ASCII";
  }
  if (address.substr(0, kScheme.size()) != kScheme || address.find(':', kScheme.size()) == std::string_view::npos)
    return "'" + std::string(address) + "' is not a tcp://host:port address";
  return {};
}

}  // namespace troupe::detail
