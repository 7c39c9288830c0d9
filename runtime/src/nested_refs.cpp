#include "nested_refs.hpp"

#include "troupe/runtime/error.hpp"
#include "troupe/runtime/object_ref.hpp"
#include "troupe/runtime/value.hpp"

namespace troupe::detail {
namespace {

thread_local NestedRefEncoder* current_encoder = nullptr;
thread_local const std::vector<StatePtr>* current_decoded = nullptr;

}  // namespace

NestedRefEncoder::NestedRefEncoder() noexcept : previous_(current_encoder) { current_encoder = this; }
NestedRefEncoder::~NestedRefEncoder() { current_encoder = previous_; }

void NestedRefEncoder::add(const StatePtr& state) {
  if (seen_.insert(state->id()).second) refs_.push_back(state);
}

NestedRefDecodeScope::NestedRefDecodeScope(const std::vector<StatePtr>* refs) noexcept : previous_(current_decoded) {
  current_decoded = refs;
}
NestedRefDecodeScope::~NestedRefDecodeScope() { current_decoded = previous_; }

void encode_nested_ref(const StatePtr& state) {
  if (!current_encoder)
    throw_error(Errc::unsupported,
                "a value holding ObjectRefs crosses processes only in a call's arguments or in the reply to its "
                "caller, not when another process fetches it from its holder; get() it before passing it on");
  current_encoder->add(state);
}

StatePtr decode_nested_ref(const ObjectId& id) {
  if (current_decoded) {
    for (const auto& state : *current_decoded)
      if (state && state->id() == id) return state;
  }
  throw_error(Errc::serialization,
              "an ObjectRef inside this value names object " + id.hex() +
                  ", which did not arrive with it (in cluster mode ObjectRefs inside values cross processes "
                  "only in a call's arguments or in the reply to its caller)");
}

std::string EncodedValue::encode() const {
  if (refs)
    for (const auto& state : *refs) encode_nested_ref(state);
  return data;
}

}  // namespace troupe::detail
