// The content hash that names job binaries (binaries/<hash>), computed by
// `troupe submit`, by a driver started directly, and checked by the head:
// 128 bits as 32
// lower-case hex digits. Stable across runs and machines (little-endian
// word reads, fixed seeds); not cryptographic.
#pragma once

#include <string>
#include <string_view>

namespace troupe::transport {

std::string content_hash(std::string_view data);

// Whether `hash` is safe as a file name in binaries/: 1..128 characters of
// [0-9a-zA-Z_-]. Hashes from peers are checked with this before any use.
bool valid_hash_name(std::string_view hash);

}  // namespace troupe::transport
