// The content hash of the running binary (/proc/self/exe), remembered
// between runs so a driver restarted with an unchanged binary does not read
// and hash its 40 MB again (issue 13: cluster init() under 200 ms).
//
// The cache is one small file per user, $TROUPE_CACHE_DIR or
// $XDG_CACHE_HOME/troupe or ~/.cache/troupe, `binary-hashes`, in a
// directory only its owner may enter. An entry is keyed by what changes
// whenever the file's bytes do: device, inode, size, modification and
// status-change times (the last cannot be set back by a user), so a
// rebuilt or copied binary is hashed afresh. TROUPE_BINARY_HASH_CACHE=0
// turns the cache off. A cache that cannot be read or written is ignored
// (the hash is computed, as without one). The head still checks an
// uploaded binary against its hash, and every node before it runs one.
// Any thread; concurrent drivers may race on the file, the loser's entry
// is dropped, never a wrong one kept (writes are whole-file renames).
#pragma once

#include <string>

namespace troupe::detail {

struct SelfBinary {
  std::string hash;   // BLAKE2b-256 hex of the binary's bytes
  bool from_cache;    // true: read from the cache, the bytes were not read
};

// The running binary's content hash. Throws Error(invalid_argument) when
// the binary cannot be read.
SelfBinary self_binary_hash();

}  // namespace troupe::detail
