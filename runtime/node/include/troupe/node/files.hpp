// Whole-file reads and writes for the daemons' session directory (binaries,
// actor specs, pid files), shared by the head, the node manager and the CLI.
#pragma once

#include <filesystem>
#include <map>
#include <optional>
#include <string>

namespace troupe::node {

// Writes through a temporary file (created with `mode`, flushed to disk)
// and rename, so readers never see half. Throws Error(invalid_argument)
// naming the file and the system's reason ("No space left on device") when
// it cannot write; nothing partial is left behind.
void write_file_atomic(const std::filesystem::path& path, const std::string& contents, int mode = 0600);
// The whole file, or nullopt when it cannot be opened.
std::optional<std::string> read_file(const std::filesystem::path& path);

// Creates `path` (and its parents) if needed and makes it mode 0700. Throws
// Error(permission_denied) when it is a symbolic link or belongs to another
// user (a directory planted in /tmp), Error(invalid_argument) when it
// cannot be created.
void ensure_private_directory(const std::filesystem::path& path);

// Whether the file at `path` holds the bytes whose content hash
// (transport::content_hash, BLAKE2b-256) is `hash`. Checked before a job
// binary is executed or served; a result is remembered per (file, size,
// mtime, inode) so a binary is hashed once, not at every actor start.
// Thread-safe.
bool file_matches_hash(const std::filesystem::path& path, const std::string& hash);
// What file_matches_hash remembers for this file as it is now, without
// hashing it: nullopt when it has not been hashed (or changed since).
std::optional<bool> known_file_hash_match(const std::filesystem::path& path, const std::string& hash);

// The environment variables that give a child process (an actor host, a
// job's driver) the cluster's membership: TROUPE_TOKEN_FILE=`token_file`,
// or TROUPE_TOKEN=insecure when it is empty; the other one is removed.
void set_membership_env(std::map<std::string, std::string>& env, const std::filesystem::path& token_file);

}  // namespace troupe::node
