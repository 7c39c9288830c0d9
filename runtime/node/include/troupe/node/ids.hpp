// 128-bit ids (NodeId, ActorId, JobId, ...) as plain values, with the hex
// form docs/protocol.md fixes: 32 lower-case hex digits, hi then lo.
#pragma once

#include <compare>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace troupe::node {

struct Id128 {
  std::uint64_t hi = 0;
  std::uint64_t lo = 0;

  bool zero() const noexcept { return hi == 0 && lo == 0; }
  std::string hex() const;
  // The first 12 hex digits, for file names and people.
  std::string short_hex() const { return hex().substr(0, 12); }
  static std::optional<Id128> parse(std::string_view hex);
  static Id128 random();

  friend auto operator<=>(const Id128&, const Id128&) = default;
};

// Reads/writes any capnp id struct (hi, lo).
template <typename Reader>
Id128 id_of(Reader reader) {
  return Id128{reader.getHi(), reader.getLo()};
}
template <typename Builder>
void set_id(Builder builder, const Id128& id) {
  builder.setHi(id.hi);
  builder.setLo(id.lo);
}

}  // namespace troupe::node
