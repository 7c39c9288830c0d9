// BoundedInputArchive: the cereal input archive troupe decodes every value
// with that crossed a process boundary (method and constructor arguments,
// results, ObjectRef payloads). It reads cereal's binary format (the bytes
// cereal::BinaryOutputArchive writes), from a byte view, and never trusts a
// length it reads:
//   - a container or string that claims more elements than bytes remain is
//     refused before anything is allocated (every element of every type
//     troupe or cereal encodes takes at least one byte, except empty types,
//     which are not worth sending in numbers);
//   - vectors, deques and lists of non-arithmetic elements grow as their
//     elements decode, so memory follows the bytes actually read, whatever
//     the size of one element in memory;
//   - a tensor's byte count (troupe::load for Tensor) is checked against the
//     bytes that remain before its storage is allocated;
//   - containers nest at most kMaxNesting deep (a recursive user type
//     cannot run the decoding thread out of stack).
// Each refusal throws Error(Errc::serialization) with what was claimed and
// what remained, so a 30-byte argument that claims 2^40 elements costs
// nothing but its error. Memory is at most a small multiple of the input's
// size (the in-memory size of an element over its smallest encoding).
#pragma once

#include <cereal/cereal.hpp>
#include <cereal/archives/binary.hpp>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <deque>
#include <list>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include "troupe/runtime/error.hpp"

namespace troupe {

class BoundedInputArchive : public cereal::InputArchive<BoundedInputArchive, cereal::AllowEmptyClassElision> {
 public:
  // Deepest nesting of containers decoded (a vector of vectors is 2).
  static constexpr int kMaxNesting = 200;

  explicit BoundedInputArchive(std::string_view bytes)
      : cereal::InputArchive<BoundedInputArchive, cereal::AllowEmptyClassElision>(this),
        next_(bytes.data()),
        remaining_(bytes.size()) {}

  // Copies the next `size` bytes out; Error(serialization) past the end.
  void loadBinary(void* data, std::size_t size) {
    if (size > remaining_) {
      throw Error(Errc::serialization, "truncated value: " + std::to_string(size) + " bytes needed, " +
                                           std::to_string(remaining_) + " remain");
    }
    if (size > 0) std::memcpy(data, next_, size);
    next_ += size;
    remaining_ -= size;
  }

  std::size_t remaining_bytes() const noexcept { return remaining_; }

  // A length read from the input: `count` items of at least `item_bytes`
  // each must fit in what remains, or Error(serialization).
  void check_claim(std::uint64_t count, std::size_t item_bytes, const char* what) const {
    const std::uint64_t fits = item_bytes == 0 ? remaining_ : remaining_ / item_bytes;
    if (count > fits) {
      throw Error(Errc::serialization, std::string("length bomb refused: a ") + what + " claims " +
                                           std::to_string(count) + " elements (" +
                                           std::to_string(item_bytes ? item_bytes : 1) +
                                           "+ bytes each) but only " + std::to_string(remaining_) +
                                           " bytes remain");
    }
  }

  // Scoped: one more level of container nesting.
  class Nest {
   public:
    explicit Nest(BoundedInputArchive& archive) : archive_(archive) {
      if (++archive_.depth_ > kMaxNesting) {
        --archive_.depth_;
        throw Error(Errc::serialization,
                    "containers nested deeper than " + std::to_string(kMaxNesting) + " levels");
      }
    }
    ~Nest() { --archive_.depth_; }
    Nest(const Nest&) = delete;
    Nest& operator=(const Nest&) = delete;

   private:
    BoundedInputArchive& archive_;
  };

 private:
  const char* next_;
  std::size_t remaining_;
  int depth_ = 0;
};

// ---- the binary format's primitives (as cereal/archives/binary.hpp) ----------

template <class T>
inline std::enable_if_t<std::is_arithmetic_v<T>> CEREAL_LOAD_FUNCTION_NAME(BoundedInputArchive& ar, T& t) {
  if constexpr (std::is_same_v<T, bool>) {
    // A bool is one byte, 0 or 1: any other byte is not a bool (and
    // reading it as one is undefined behaviour).
    unsigned char byte = 0;
    ar.loadBinary(&byte, 1);
    if (byte > 1) throw Error(Errc::serialization, "a bool encoded as " + std::to_string(byte));
    t = byte != 0;
  } else {
    ar.loadBinary(std::addressof(t), sizeof(t));
  }
}

template <class T>
inline void CEREAL_SERIALIZE_FUNCTION_NAME(BoundedInputArchive& ar, cereal::NameValuePair<T>& t) {
  ar(t.value);
}

// Every length cereal reads goes through here: at least one byte per element.
template <class T>
inline void CEREAL_SERIALIZE_FUNCTION_NAME(BoundedInputArchive& ar, cereal::SizeTag<T>& t) {
  ar(t.size);
  ar.check_claim(static_cast<std::uint64_t>(t.size), 1, "container or string");
}

template <class T>
inline void CEREAL_LOAD_FUNCTION_NAME(BoundedInputArchive& ar, cereal::BinaryData<T>& bd) {
  ar.loadBinary(bd.data, static_cast<std::size_t>(bd.size));
}

// ---- sequences that grow as they decode ---------------------------------------
// More specialised than cereal's (which resize to the claimed length first).

namespace detail {
template <class Sequence>
void load_sequence_growing(BoundedInputArchive& ar, Sequence& sequence) {
  using T = typename Sequence::value_type;
  BoundedInputArchive::Nest nest(ar);
  cereal::size_type count = 0;
  ar(cereal::make_size_tag(count));  // checked: at most one element per remaining byte
  sequence.clear();
  if constexpr (requires { sequence.reserve(std::size_t{}); }) {
    // Never more than the remaining bytes' worth of memory up front.
    sequence.reserve(std::min<std::size_t>(static_cast<std::size_t>(count), ar.remaining_bytes() / sizeof(T) + 1));
  }
  for (cereal::size_type i = 0; i < count; ++i) {
    sequence.emplace_back();
    ar(sequence.back());
  }
}
}  // namespace detail

template <class T, class A>
inline void CEREAL_LOAD_FUNCTION_NAME(BoundedInputArchive& ar, std::vector<T, A>& vector) {
  if constexpr (std::is_arithmetic_v<T>) {
    BoundedInputArchive::Nest nest(ar);
    cereal::size_type count = 0;
    ar(cereal::make_size_tag(count));
    ar.check_claim(static_cast<std::uint64_t>(count), sizeof(T), "vector");
    vector.resize(static_cast<std::size_t>(count));
    ar(cereal::binary_data(vector.data(), static_cast<std::size_t>(count) * sizeof(T)));
  } else {
    detail::load_sequence_growing(ar, vector);
  }
}

template <class A>
inline void CEREAL_LOAD_FUNCTION_NAME(BoundedInputArchive& ar, std::vector<bool, A>& vector) {
  BoundedInputArchive::Nest nest(ar);
  cereal::size_type count = 0;
  ar(cereal::make_size_tag(count));  // one byte per bool on the wire
  vector.resize(static_cast<std::size_t>(count));
  for (auto&& bit : vector) {
    bool value = false;
    ar(value);
    bit = value;
  }
}

template <class T, class A>
inline void CEREAL_LOAD_FUNCTION_NAME(BoundedInputArchive& ar, std::deque<T, A>& deque) {
  detail::load_sequence_growing(ar, deque);
}

template <class T, class A>
inline void CEREAL_LOAD_FUNCTION_NAME(BoundedInputArchive& ar, std::list<T, A>& list) {
  detail::load_sequence_growing(ar, list);
}

}  // namespace troupe

// Traits that pair an input archive with its output archive (load_minimal).
namespace cereal::traits::detail {
template <>
struct get_output_from_input<troupe::BoundedInputArchive> {
  using type = cereal::BinaryOutputArchive;
};
}  // namespace cereal::traits::detail

CEREAL_REGISTER_ARCHIVE(troupe::BoundedInputArchive)
