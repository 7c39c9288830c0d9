// troupe's one id layer. Every entity that crosses a process has a 128-bit
// id of its own type, so an ActorId cannot be passed where a NodeId is meant.
// Hex formatting, parsing, hashing and the Cap'n Proto wire conversion live
// here and nowhere else.
//
// Text form (docs/protocol.md): 32 lower-case hex digits, `hi` then `lo`;
// `short_hex()` is its first 12 digits, for file names and people. The wire
// form is any Cap'n Proto struct with `hi` and `lo` UInt64 fields
// (transport/schema/common.capnp); `to_wire`/`from_wire` read and write it
// without this header needing Cap'n Proto.
#pragma once

#include <compare>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <iosfwd>
#include <optional>
#include <string>
#include <string_view>

namespace troupe {

namespace detail {
// Fills 128 bits from a process-wide generator seeded from the OS. Never
// returns the nil id. Thread-safe.
void random_id_bits(std::uint64_t& hi, std::uint64_t& lo) noexcept;
std::string id_hex(std::uint64_t hi, std::uint64_t lo);
// Parses exactly 32 hex digits (either case); false on anything else.
bool parse_id_hex(std::string_view text, std::uint64_t& hi, std::uint64_t& lo) noexcept;
}  // namespace detail

// A 128-bit id whose type is fixed by `Tag`. Value type: trivially copyable,
// ordered, hashable. The default value is the nil id (all zero), which no
// entity ever has; `random()` never returns it.
template <typename Tag>
class BasicId {
 public:
  constexpr BasicId() noexcept = default;
  constexpr BasicId(std::uint64_t hi, std::uint64_t lo) noexcept : hi_(hi), lo_(lo) {}

  static BasicId random() noexcept {
    BasicId id;
    detail::random_id_bits(id.hi_, id.lo_);
    return id;
  }
  // The id `hex()` wrote, or nullopt for anything that is not 32 hex digits.
  static std::optional<BasicId> parse(std::string_view hex) noexcept {
    BasicId id;
    if (!detail::parse_id_hex(hex, id.hi_, id.lo_)) return std::nullopt;
    return id;
  }

  constexpr std::uint64_t hi() const noexcept { return hi_; }
  constexpr std::uint64_t lo() const noexcept { return lo_; }
  constexpr bool nil() const noexcept { return hi_ == 0 && lo_ == 0; }
  explicit constexpr operator bool() const noexcept { return !nil(); }

  std::string hex() const { return detail::id_hex(hi_, lo_); }
  std::string short_hex() const { return hex().substr(0, 12); }

  friend constexpr auto operator<=>(const BasicId&, const BasicId&) noexcept = default;

 private:
  std::uint64_t hi_ = 0;
  std::uint64_t lo_ = 0;
};

template <typename Tag>
std::ostream& operator<<(std::ostream& out, const BasicId<Tag>& id) {
  return out << id.hex();
}

namespace id_tags {
struct Actor;
struct Object;
struct Node;
struct Job;
struct Worker;
struct PlacementGroup;
}  // namespace id_tags

// An actor, chosen by its creator (a driver or an actor) at creation.
using ActorId = BasicId<id_tags::Actor>;
// An object (an ObjectRef's value): hi is the producing process's worker id
// (its hi word), lo a counter of that process, so ids made in one process
// never repeat and need no coordination.
using ObjectId = BasicId<id_tags::Object>;
// A machine's node manager; stable across re-registration with a head.
using NodeId = BasicId<id_tags::Node>;
// A job: one driver and every actor it created.
using JobId = BasicId<id_tags::Job>;
// A process that calls or hosts actors (a driver or an actor host).
using WorkerId = BasicId<id_tags::Worker>;
using PlacementGroupId = BasicId<id_tags::PlacementGroup>;

// Cap'n Proto conversion for any struct with hi/lo fields.
template <typename Id, typename Reader>
Id from_wire(Reader reader) {
  return Id{reader.getHi(), reader.getLo()};
}
template <typename Builder, typename Tag>
void to_wire(Builder builder, const BasicId<Tag>& id) {
  builder.setHi(id.hi());
  builder.setLo(id.lo());
}

}  // namespace troupe

template <typename Tag>
struct std::hash<troupe::BasicId<Tag>> {
  std::size_t operator()(const troupe::BasicId<Tag>& id) const noexcept {
    // The words are random (or a random word and a counter): mixing them is enough.
    return static_cast<std::size_t>(id.hi() ^ (id.lo() * 0x9e3779b97f4a7c15ULL));
  }
};
