// Serialization of values that cross an actor boundary. troupe uses cereal's
// binary archives: arithmetic types, strings, the standard containers,
// std::optional/variant/tuple/pair and troupe::Tensor work out of the box.
// A user type opts in through cereal's customization point, a member
//
//   template <class Archive> void serialize(Archive& ar) { ar(field_a, field_b); }
//
// (or non-member save/load). Every argument and result type of a registered
// actor method is checked at compile time, so a type that could not travel
// to another process fails to compile in local mode too.
//
// Decoding never trusts the bytes: deserialize reads them with
// BoundedInputArchive (bounded_archive.hpp), which refuses any length that
// claims more than the bytes that remain before allocating for it. A user
// type's serialize/load must therefore be a template on the archive (or
// name troupe::BoundedInputArchive), not cereal::BinaryInputArchive.
#pragma once

#include <cereal/archives/binary.hpp>
#include <cereal/types/array.hpp>
#include <cereal/types/chrono.hpp>
#include <cereal/types/complex.hpp>
#include <cereal/types/deque.hpp>
#include <cereal/types/list.hpp>
#include <cereal/types/map.hpp>
#include <cereal/types/memory.hpp>
#include <cereal/types/optional.hpp>
#include <cereal/types/set.hpp>
#include <cereal/types/string.hpp>
#include <cereal/types/tuple.hpp>
#include <cereal/types/unordered_map.hpp>
#include <cereal/types/unordered_set.hpp>
#include <cereal/types/utility.hpp>
#include <cereal/types/variant.hpp>
#include <cereal/types/vector.hpp>

#include <cstddef>
#include <sstream>
#include <string>
#include <string_view>
#include <type_traits>

#include "troupe/runtime/bounded_archive.hpp"
#include "troupe/runtime/error.hpp"
#include "troupe/runtime/tensor.hpp"

namespace troupe {

// The empty value a void method produces.
struct Unit {
  template <class Archive>
  void serialize(Archive&) {}
  friend bool operator==(Unit, Unit) { return true; }
};

template <class T>
inline constexpr bool is_serializable_v =
    cereal::traits::is_output_serializable<T, cereal::BinaryOutputArchive>::value &&
    cereal::traits::is_input_serializable<T, BoundedInputArchive>::value;

// Encodes `value` into bytes. Throws Error(Errc::serialization) on failure.
template <class T>
std::string serialize(const T& value) {
  static_assert(is_serializable_v<T>,
                "troupe: this type cannot be serialized; give it a cereal "
                "`template <class Archive> void serialize(Archive&)` member");
  std::ostringstream out(std::ios::binary);
  try {
    cereal::BinaryOutputArchive archive(out);
    archive(value);
  } catch (const Error&) {
    throw;
  } catch (const std::exception& e) {
    throw_error(Errc::serialization, std::string("encoding failed: ") + e.what());
  }
  return std::move(out).str();
}

// Decodes bytes produced by serialize<T>. Truncated or malformed input, or a
// length that claims more than the bytes hold, gives Error(Errc::serialization)
// before anything is allocated for it, never undefined behaviour.
template <class T>
T deserialize(std::string_view bytes) {
  static_assert(is_serializable_v<T>, "troupe: this type cannot be deserialized");
  T value{};
  try {
    BoundedInputArchive archive(bytes);
    archive(value);
  } catch (const Error&) {
    throw;
  } catch (const std::bad_alloc&) {
    throw_error(Errc::serialization, "decoding failed: out of memory");
  } catch (const std::exception& e) {
    throw_error(Errc::serialization, std::string("decoding failed: ") + e.what());
  }
  return value;
}

}  // namespace troupe
