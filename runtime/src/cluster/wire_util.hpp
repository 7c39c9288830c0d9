// Helpers every part of cluster mode uses to read and write the wire
// schemas (transport/schema/*.capnp): 128-bit ids, errors, byte fields.
// Stateless; any thread.
#pragma once

#include <cstdint>
#include <exception>
#include <string>
#include <string_view>

#include <capnp/common.h>
#include <capnp/blob.h>

#include "troupe/transport/schema/common.capnp.h"

namespace troupe::detail {

// A call message is a few hundred bytes: start small instead of capnp's
// default 8 KiB first segment (calloc'd per message); it grows as needed.
inline constexpr unsigned kFirstSegmentWords = 128;

struct Id128 {
  std::uint64_t hi = 0, lo = 0;
  std::string hex() const;
  friend bool operator==(const Id128&, const Id128&) = default;
  friend bool operator<(const Id128& a, const Id128& b) { return a.hi != b.hi ? a.hi < b.hi : a.lo < b.lo; }
};

template <class Builder>
void set_id(Builder builder, const Id128& id) {
  builder.setHi(id.hi);
  builder.setLo(id.lo);
}
template <class Reader>
Id128 get_id(Reader reader) {
  return Id128{reader.getHi(), reader.getLo()};
}

// A random 64-bit number (per-thread generator, seeded per process).
std::uint64_t random64();
// 32 hex digits -> Id128. Throws Error(invalid_argument).
Id128 parse_hex_id(const std::string& hex);

// Bytes as a capnp Data field, and back.
inline capnp::Data::Reader as_data(std::string_view bytes) {
  return capnp::Data::Reader(reinterpret_cast<const capnp::byte*>(bytes.data()), bytes.size());
}
inline std::string from_data(capnp::Data::Reader data) {
  return std::string(reinterpret_cast<const char*>(data.begin()), data.size());
}

void fill_error(wire::ErrorInfo::Builder builder, const std::exception_ptr& error);
std::exception_ptr to_exception(wire::ErrorInfo::Reader error);
// A TransportError becomes the troupe::Error with the same code (the codes
// are numerically equal); anything else is returned as it is.
std::exception_ptr from_transport(std::exception_ptr error);
// Runs `fn`, rethrowing a TransportError as that troupe::Error.
template <class Fn>
decltype(auto) converting_transport_errors(Fn&& fn) {
  try {
    return fn();
  } catch (...) {
    std::rethrow_exception(from_transport(std::current_exception()));
  }
}

}  // namespace troupe::detail
