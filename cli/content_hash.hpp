// The content hash that names job binaries (binaries/<hash>): 128 bits as 32
// lower-case hex digits. Stable across runs and machines (little-endian
// word reads, fixed seeds); not cryptographic.
#pragma once

#include <string>
#include <string_view>

namespace troupe::cli {

std::string content_hash(std::string_view data);

// Whether `hash` is safe as a file name in binaries/: 1..128 characters of
// [0-9a-zA-Z_-]. Hashes from peers are checked with this before any use.
bool valid_hash_name(std::string_view hash);

}  // namespace troupe::cli
