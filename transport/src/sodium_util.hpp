// libsodium helpers shared by the transport's sources (private): one
// initialisation, one hex form of bytes.
#pragma once

#include <sodium.h>

#include <cstddef>
#include <string>

#include "troupe/runtime/error.hpp"

namespace troupe::transport::detail {

// sodium_init() once (thread-safe); throws troupe::Error{internal} if it fails.
inline void ensure_sodium() {
  static const int ready = ::sodium_init();
  if (ready < 0) throw Error(Errc::internal, "libsodium could not be initialised");
}

// `n` bytes as 2n lower-case hex digits.
inline std::string hex_of(const void* data, std::size_t n) {
  static const char* digits = "0123456789abcdef";
  const auto* bytes = static_cast<const unsigned char*>(data);
  std::string out;
  out.reserve(2 * n);
  for (std::size_t i = 0; i < n; ++i) {
    out.push_back(digits[bytes[i] >> 4]);
    out.push_back(digits[bytes[i] & 15]);
  }
  return out;
}

}  // namespace troupe::transport::detail
