// Cluster membership (internal: not installed). A secure cluster has one
// secret: 32 random bytes made by `troupe start --head`, kept in the head's
// session directory (file `token`, mode 0600) and shown to people as its
// token, 64 lower-case hex digits. Every process of the cluster (head, node
// managers, drivers, actor hosts, the CLI) presents it:
//
//  - ZeroMQ sockets (control and call planes) use CURVE with keys derived
//    from the secret; a ZAP handler admits only clients whose key is the
//    members' key (transport/src/zmq_security.cpp);
//  - UCX data-plane requests and pushes carry a message authenticator keyed
//    by a key derived from the secret (no encryption: docs/security.md).
//
// An insecure cluster (`troupe start --head --insecure`) has no secret and
// uses plain sockets. All cryptography is libsodium's; nothing here invents
// any.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>

namespace troupe::transport {

class ClusterSecret {
 public:
  static constexpr std::size_t kBytes = 32;
  using Key = std::array<std::uint8_t, 32>;

  // A new random secret (libsodium's randombytes).
  static ClusterSecret generate();
  // From its token (64 hex digits; surrounding white space is ignored).
  // Throws troupe::Error{invalid_argument} naming what is wrong, never
  // echoing the text it was given.
  static ClusterSecret parse(std::string_view token);

  // The token: 64 lower-case hex digits.
  std::string token() const;

  // Keys derived from the secret with BLAKE2b (keyed by the secret, one
  // label per use), so that no key is used for two purposes.
  // CURVE key pairs (Curve25519, as crypto_box_seed_keypair makes them):
  // the one every member's ZeroMQ server presents, and the one every
  // member's ZeroMQ client presents (the ZAP handler admits only it).
  Key curve_server_public() const;
  Key curve_server_secret() const;
  Key curve_client_public() const;
  Key curve_client_secret() const;
  // The data plane's message-authenticator key (keyed BLAKE2b tags).
  Key data_mac_key() const;
  // A short public fingerprint of the secret (8 hex digits of a hash): says
  // which cluster a token belongs to without revealing it.
  std::string fingerprint() const;

  bool operator==(const ClusterSecret& other) const;

 private:
  ClusterSecret() = default;
  Key derive(std::string_view label) const;
  std::array<std::uint8_t, kBytes> bytes_{};
};

// The process's membership: the secret every socket and data-plane message
// of this process presents and requires, or none (insecure: plain sockets).
// Set it once, before the first socket is made (the CLI and troupe::init()
// do); sockets read it when they are created. Thread-safe.
void set_membership(std::optional<ClusterSecret> secret);
std::optional<ClusterSecret> membership();
bool secure();

// Reads a token file. Refuses (troupe::Error{permission_denied}) a file
// that group or others may read or write, or that another user owns, like
// ssh does with its keys; {not_found} when missing; {invalid_argument} when
// it holds no valid token.
ClusterSecret read_token_file(const std::filesystem::path& path);

// Writes `secret`'s token to `path` atomically with mode 0600.
void write_token_file(const std::filesystem::path& path, const ClusterSecret& secret);

// Where a process that is not told finds the secret of the head at
// `head_address` ("IP:PORT"), in this order:
//   1. TROUPE_TOKEN (the token itself; "insecure" or empty means none)
//   2. TROUPE_TOKEN_FILE (a token file)
//   3. the session directories of this machine whose head_address file
//      names `head_address`: <root>/session_latest/ for root in
//      $TROUPE_TEMP_DIR and /tmp/troupe; its `token` file, or none when it
//      holds an `insecure` marker file instead.
// nullopt when nothing is found (the process then connects without one; a
// secure head does not answer it). Errors of a named source (bad token, a
// token file with loose permissions) are thrown, not skipped.
struct TokenSource {
  std::optional<ClusterSecret> secret;
  std::string from;  // "TROUPE_TOKEN", a file's path, or "" when none found
};
TokenSource find_token(const std::string& head_address);

// `n` bytes from libsodium's CSPRNG (keys, unguessable names), raw or as
// 2n lower-case hex digits. Ids (troupe/runtime/ids.hpp) are unique, not
// secret: never use them where guessing matters.
std::string random_bytes(std::size_t n);
std::string random_hex(std::size_t n);

}  // namespace troupe::transport
