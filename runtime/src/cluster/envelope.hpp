// The data plane's object envelope: what a holder publishes under an
// object's key, and the one decoder of it (every byte of it comes from a
// peer). One form byte, then
//   plain:  the value's cereal encoding (nothing for a void result);
//   tensor: u8 dtype, u8 memory type (0 host, 1 cuda), u32 rank, rank x i64
//           extents; the tensor's bytes are published apart, under
//           payload_key(id), straight from its storage;
//   error:  a Cap'n Proto ErrorInfo message (the call failed).
// decode_envelope validates everything before use: the form, the dtype and
// memory type codes, the rank (at most 64), each extent (not negative), the
// element and byte counts (no overflow), the exact length, and for the error
// form the message's framing and fields. A bad envelope is Error(protocol),
// never a crash or a large allocation.
// Stateless; any thread.
#pragma once

#include <cstddef>
#include <cstdint>
#include <exception>
#include <string>
#include <string_view>
#include <vector>

#include "troupe/runtime/ids.hpp"

namespace troupe::detail {

enum class EnvelopeForm : char { plain = 0, tensor = 1, error = 2 };

struct TensorMeta {
  std::uint8_t dtype = 0;   // troupe::DType
  std::uint8_t memory = 0;  // 0 host, 1 cuda
  std::vector<std::int64_t> shape;
  std::size_t nbytes = 0;   // of the tensor's payload, from dtype and shape
};

struct Envelope {
  EnvelopeForm form = EnvelopeForm::plain;
  std::string_view value;    // plain: the encoding, a view into the input (empty: void)
  TensorMeta tensor;         // tensor
  std::exception_ptr error;  // error: the producer's error, rebuilt
};

// Largest rank an envelope may carry (as the cereal encoding's limit).
inline constexpr std::uint32_t kMaxEnvelopeRank = 64;

std::string plain_envelope(std::string_view encoding);
std::string tensor_envelope(const TensorMeta& meta);
std::string error_envelope(const std::exception_ptr& error);

// Throws Error(protocol) for anything malformed (see above).
Envelope decode_envelope(std::string_view bytes);

// A tensor's payload as it arrived: its size must be the envelope's byte
// count, or Error(protocol).
void check_tensor_payload(const TensorMeta& meta, std::size_t payload_bytes);

// The key a tensor's bytes are published under, beside its envelope's.
inline ObjectId payload_key(const ObjectId& id) {
  return ObjectId{id.hi() ^ (std::uint64_t{1} << 63), id.lo()};
}

}  // namespace troupe::detail
