// The content hash that names job binaries (binaries/<hash>), computed by
// `troupe submit` and by a driver started directly, and checked by the head
// when a binary arrives and by every node (and the head) before it executes
// one: BLAKE2b-256 (libsodium's crypto_generichash), as 64 lower-case hex
// digits. Cryptographic: a file planted under another binary's name is
// refused.
#pragma once

#include <filesystem>
#include <optional>
#include <string>
#include <string_view>

namespace troupe::transport {

std::string content_hash(std::string_view data);

// The content hash of a file's bytes, read in chunks; nullopt when it cannot
// be opened or read.
std::optional<std::string> content_hash_of_file(const std::filesystem::path& path);

// Whether `hash` has the form of a content hash (64 lower-case hex digits),
// so it is also safe as a file name in binaries/. Hashes from peers are
// checked with this before any use.
bool valid_hash_name(std::string_view hash);

}  // namespace troupe::transport
