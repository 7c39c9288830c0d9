// Fuzz target: cereal decoding of actor method arguments (troupe::deserialize
// with its BoundedInputArchive), as an actor host decodes a call's argument
// bytes. The first input byte picks the argument type — the parameter types
// of the call-plane harness's Probe actor and more shapes (strings,
// vectors, maps, nesting, variants, tensors) — and the rest is decoded as
// it. Contract checked: a decode either succeeds or throws troupe::Error
// with Errc::serialization (or cuda, for a CUDA tensor without a GPU), never
// anything else, never a crash, never a large allocation (-rss_limit_mb,
// -malloc_limit_mb); what decodes re-encodes to a value that decodes
// equal.
#include <array>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <list>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <tuple>
#include <utility>
#include <unordered_map>
#include <variant>
#include <vector>

#include "troupe/runtime/error.hpp"
#include "troupe/runtime/logging.hpp"
#include "troupe/runtime/serialization.hpp"
#include "troupe/runtime/tensor.hpp"
#include "fuzz/argument_types.hpp"

namespace {

using troupe::fuzz::Layer;
using troupe::fuzz::Tree;

// Types whose == is exact (no NaN, no order that depends on history).
template <class T>
inline constexpr bool compared_v =
    std::is_same_v<T, int> || std::is_same_v<T, std::string> || std::is_same_v<T, std::vector<std::string>> ||
    std::is_same_v<T, std::map<std::string, std::vector<std::int64_t>>> ||
    std::is_same_v<T, std::vector<std::vector<std::string>>> || std::is_same_v<T, std::vector<bool>> ||
    std::is_same_v<T, std::set<std::string>> || std::is_same_v<T, Tree>;

bool same(const troupe::Tensor& a, const troupe::Tensor& b) {
  if (a.defined() != b.defined()) return false;
  if (!a.defined()) return true;
  return a.shape() == b.shape() && a.dtype() == b.dtype() && a.nbytes() == b.nbytes() &&
         (a.nbytes() == 0 || std::memcmp(a.raw_data(), b.raw_data(), a.nbytes()) == 0);
}

template <class T>
void decode(std::string_view bytes) {
  T value;
  try {
    value = troupe::deserialize<T>(bytes);
  } catch (const troupe::Error& e) {
    // The codes decoding may give: a CUDA tensor where there is no GPU is `cuda`.
    if (e.code() != troupe::Errc::serialization && e.code() != troupe::Errc::cuda) std::abort();
    return;
  }
  // What decoded must re-encode to bytes that decode (an Error here
  // escapes: a crash), and for these types to an equal value.
  const std::string again = troupe::serialize(value);
  T back = troupe::deserialize<T>(again);
  if constexpr (std::is_same_v<T, troupe::Tensor>) {
    if (!same(value, back)) std::abort();
  } else if constexpr (compared_v<T>) {
    if (!(value == back)) std::abort();
  }
}

using Decoder = void (*)(std::string_view);
template <std::size_t... I>
constexpr auto decoders_for(std::index_sequence<I...>) {
  return std::array<Decoder, sizeof...(I)>{
      &decode<std::tuple_element_t<I, troupe::fuzz::ArgumentSamples>>...};
}
constexpr auto kDecoders =
    decoders_for(std::make_index_sequence<std::tuple_size_v<troupe::fuzz::ArgumentSamples>>{});

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  troupe::log::set_level("off");
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  const auto which = data[0] % kDecoders.size();
  kDecoders[which](std::string_view(reinterpret_cast<const char*>(data + 1), size - 1));
  return 0;
}
