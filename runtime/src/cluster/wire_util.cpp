#include "wire_util.hpp"

#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <random>

#include "troupe/runtime/error.hpp"
#include "troupe/transport/error.hpp"

namespace troupe::detail {

std::string Id128::hex() const {
  char out[33];
  std::snprintf(out, sizeof out, "%016llx%016llx", static_cast<unsigned long long>(hi),
                static_cast<unsigned long long>(lo));
  return out;
}

std::uint64_t random64() {
  static thread_local std::mt19937_64 rng{std::random_device{}() ^
                                          static_cast<std::uint64_t>(::getpid()) << 32 ^
                                          static_cast<std::uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count())};
  return rng();
}

Id128 parse_hex_id(const std::string& hex) {
  if (hex.size() != 32) throw_error(Errc::invalid_argument, "bad id '" + hex + "'");
  Id128 id;
  id.hi = std::stoull(hex.substr(0, 16), nullptr, 16);
  id.lo = std::stoull(hex.substr(16), nullptr, 16);
  return id;
}

void fill_error(wire::ErrorInfo::Builder builder, const std::exception_ptr& error) {
  auto info = describe(error);
  builder.setCode(static_cast<std::uint16_t>(info.code));
  builder.setRemoteType(info.type);
  builder.setMessage(info.message);
}

std::exception_ptr to_exception(wire::ErrorInfo::Reader error) {
  return make_error(static_cast<Errc>(error.getCode()), error.getMessage(), error.getRemoteType());
}

std::exception_ptr from_transport(std::exception_ptr error) {
  try {
    std::rethrow_exception(error);
  } catch (const transport::TransportError& e) {
    return make_error(static_cast<Errc>(static_cast<int>(e.code())), e.message());
  } catch (...) {
    return std::current_exception();
  }
}

}  // namespace troupe::detail
