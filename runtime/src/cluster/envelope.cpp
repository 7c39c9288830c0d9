#include "envelope.hpp"

#include <capnp/message.h>
#include <capnp/serialize.h>
#include <kj/exception.h>

#include <cstring>

#include "troupe/runtime/error.hpp"
#include "troupe/runtime/tensor.hpp"
#include "troupe/transport/error.hpp"
#include "wire_util.hpp"

namespace troupe::detail {
namespace {

constexpr std::size_t kTensorHeaderBytes = 2 + sizeof(std::uint32_t);
// An error envelope is a few hundred bytes; far more is not an error.
constexpr std::size_t kMaxErrorEnvelopeBytes = 1 << 20;

[[noreturn]] void malformed(const std::string& why) { throw Error(Errc::protocol, "malformed object envelope: " + why); }

TensorMeta decode_tensor_meta(std::string_view in) {
  if (in.size() < kTensorHeaderBytes)
    malformed("a tensor header needs " + std::to_string(kTensorHeaderBytes) + " bytes, " + std::to_string(in.size()) +
              " given");
  TensorMeta meta;
  meta.dtype = static_cast<std::uint8_t>(in[0]);
  meta.memory = static_cast<std::uint8_t>(in[1]);
  std::uint32_t rank = 0;
  std::memcpy(&rank, in.data() + 2, sizeof rank);
  if (meta.dtype > static_cast<std::uint8_t>(DType::u8)) malformed("unknown dtype code " + std::to_string(meta.dtype));
  if (meta.memory > 1) malformed("unknown memory type code " + std::to_string(meta.memory));
  if (rank > kMaxEnvelopeRank)
    malformed("rank " + std::to_string(rank) + " exceeds the limit of " + std::to_string(kMaxEnvelopeRank));
  const std::size_t expected = kTensorHeaderBytes + std::size_t{rank} * sizeof(std::int64_t);
  if (in.size() != expected)
    malformed("a rank-" + std::to_string(rank) + " tensor header is " + std::to_string(expected) + " bytes, not " +
              std::to_string(in.size()));
  meta.shape.resize(rank);
  if (rank) std::memcpy(meta.shape.data(), in.data() + kTensorHeaderBytes, std::size_t{rank} * sizeof(std::int64_t));
  // Counted as Tensor counts them (signed, in order), so that every shape
  // accepted here is one a Tensor accepts.
  std::int64_t elements = 1;
  for (const std::int64_t extent : meta.shape) {
    if (extent < 0) malformed("negative extent " + std::to_string(extent));
    if (__builtin_mul_overflow(elements, extent, &elements)) malformed("the shape's element count overflows");
  }
  if (__builtin_mul_overflow(static_cast<std::size_t>(elements), element_size(static_cast<DType>(meta.dtype)),
                             &meta.nbytes))
    malformed("the shape's byte count overflows");
  return meta;
}

std::exception_ptr decode_error(std::string_view in) {
  if (in.empty() || in.size() % sizeof(capnp::word) != 0 || in.size() > kMaxErrorEnvelopeBytes)
    malformed("an error of " + std::to_string(in.size()) + " bytes is not a whole message");
  try {
    kj::Array<capnp::word> words = kj::heapArray<capnp::word>(in.size() / sizeof(capnp::word));
    std::memcpy(words.begin(), in.data(), in.size());
    capnp::ReaderOptions options;
    options.traversalLimitInWords = words.size() * 2;
    options.nestingLimit = 8;
    capnp::FlatArrayMessageReader reader(words, options);
    auto info = reader.getRoot<wire::ErrorInfo>();
    Errc code = errc_from_wire(info.getCode());
    if (code == Errc::ok) code = Errc::protocol;  // an error that says "ok" is not one
    return make_error(code, info.getMessage(), info.getRemoteType());
  } catch (const kj::Exception& e) {
    transport::throw_from_kj(e, "decoding an error envelope");
  }
}

}  // namespace

std::string plain_envelope(std::string_view encoding) {
  std::string out;
  out.reserve(1 + encoding.size());
  out.push_back(static_cast<char>(EnvelopeForm::plain));
  out.append(encoding);
  return out;
}

std::string tensor_envelope(const TensorMeta& meta) {
  std::string out;
  out.push_back(static_cast<char>(EnvelopeForm::tensor));
  out.push_back(static_cast<char>(meta.dtype));
  out.push_back(static_cast<char>(meta.memory));
  const auto rank = static_cast<std::uint32_t>(meta.shape.size());
  out.append(reinterpret_cast<const char*>(&rank), sizeof rank);
  out.append(reinterpret_cast<const char*>(meta.shape.data()), rank * sizeof(std::int64_t));
  return out;
}

std::string error_envelope(const std::exception_ptr& error) {
  capnp::MallocMessageBuilder message;
  fill_error(message.initRoot<wire::ErrorInfo>(), error);
  auto words = capnp::messageToFlatArray(message);
  std::string out(1, static_cast<char>(EnvelopeForm::error));
  out.append(reinterpret_cast<const char*>(words.asBytes().begin()), words.asBytes().size());
  return out;
}

Envelope decode_envelope(std::string_view bytes) {
  if (bytes.empty()) malformed("empty");
  Envelope out;
  const char form = bytes[0];
  bytes.remove_prefix(1);
  switch (form) {
    case static_cast<char>(EnvelopeForm::plain):
      out.form = EnvelopeForm::plain;
      out.value = bytes;
      break;
    case static_cast<char>(EnvelopeForm::tensor):
      out.form = EnvelopeForm::tensor;
      out.tensor = decode_tensor_meta(bytes);
      break;
    case static_cast<char>(EnvelopeForm::error):
      out.form = EnvelopeForm::error;
      out.error = decode_error(bytes);
      break;
    default: malformed("unknown form " + std::to_string(static_cast<int>(static_cast<unsigned char>(form))));
  }
  return out;
}

void check_tensor_payload(const TensorMeta& meta, std::size_t payload_bytes) {
  if (payload_bytes != meta.nbytes)
    throw Error(Errc::protocol, "tensor payload of " + std::to_string(payload_bytes) + " bytes, its envelope says " +
                                    std::to_string(meta.nbytes));
}

}  // namespace troupe::detail
