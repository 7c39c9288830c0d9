// Fuzz target: the data plane's object envelope (runtime/src/cluster/
// envelope.hpp), as a consumer decodes what a holder sent: the form byte,
// a tensor's dtype, memory type, rank and shape (element and byte counts
// must not overflow), an error's Cap'n Proto message, or a plain value's
// cereal bytes (then decoded as a few argument types). For a tensor, a
// payload of the envelope's byte count (when small) is wrapped as the
// consumer does, and a payload of any other size must be refused.
// Contract checked: decode_envelope gives an Envelope or throws
// troupe::Error(protocol); nothing else escapes, nothing crashes.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <exception>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "cluster/envelope.hpp"
#include "troupe/runtime/error.hpp"
#include "troupe/runtime/logging.hpp"
#include "troupe/runtime/serialization.hpp"
#include "troupe/runtime/tensor.hpp"

namespace {

template <class T>
void decode_value(std::string_view bytes) {
  try {
    (void)troupe::deserialize<T>(bytes);
  } catch (const troupe::Error& e) {
    if (e.code() != troupe::Errc::serialization && e.code() != troupe::Errc::cuda) std::abort();
  }
}

void consume_tensor(const troupe::detail::TensorMeta& meta) {
  // A payload of another size is refused.
  try {
    troupe::detail::check_tensor_payload(meta, meta.nbytes + 1);
    std::abort();
  } catch (const troupe::Error& e) {
    if (e.code() != troupe::Errc::protocol) std::abort();
  }
  constexpr std::size_t kLargestWrapped = 1 << 20;
  if (meta.nbytes > kLargestWrapped) return;
  troupe::detail::check_tensor_payload(meta, meta.nbytes);
  auto buffer = std::make_shared<std::vector<unsigned char>>(meta.nbytes);
  auto storage = troupe::Storage::wrap(buffer->data(), buffer->size(), troupe::Device::cpu(), [buffer](void*) {});
  troupe::Tensor tensor(std::move(storage), meta.shape, static_cast<troupe::DType>(meta.dtype));
  if (tensor.nbytes() != meta.nbytes) std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  troupe::log::set_level("off");
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using troupe::detail::EnvelopeForm;
  troupe::detail::Envelope envelope;
  try {
    envelope = troupe::detail::decode_envelope(std::string_view(reinterpret_cast<const char*>(data), size));
  } catch (const troupe::Error& e) {
    if (e.code() != troupe::Errc::protocol) std::abort();
    return 0;
  }
  switch (envelope.form) {
    case EnvelopeForm::plain:
      decode_value<std::string>(envelope.value);
      decode_value<std::vector<std::vector<std::string>>>(envelope.value);
      decode_value<troupe::Tensor>(envelope.value);
      break;
    case EnvelopeForm::tensor: consume_tensor(envelope.tensor); break;
    case EnvelopeForm::error: {
      // The rebuilt error describes itself like any other.
      if (!envelope.error) std::abort();
      auto info = troupe::describe(envelope.error);
      if (info.code == troupe::Errc::ok) std::abort();
      break;
    }
  }
  return 0;
}
