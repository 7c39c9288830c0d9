#include "troupe/transport/internal/membership.hpp"

#include <fcntl.h>
#include <sodium.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <mutex>
#include <sstream>
#include <vector>

#include "sodium_util.hpp"
#include "troupe/runtime/error.hpp"

namespace troupe::transport {
namespace fs = std::filesystem;

namespace {

using detail::hex_of;
void init_sodium() { detail::ensure_sodium(); }
std::string to_hex(const std::uint8_t* bytes, std::size_t n) { return hex_of(bytes, n); }

int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

std::string_view trim(std::string_view text) {
  const char* space = " \t\r\n";
  auto first = text.find_first_not_of(space);
  if (first == std::string_view::npos) return {};
  auto last = text.find_last_not_of(space);
  return text.substr(first, last - first + 1);
}

std::mutex membership_mutex;
std::optional<ClusterSecret> current_membership;

std::optional<std::string> read_small_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return std::nullopt;
  std::ostringstream out;
  out << in.rdbuf();
  return out.str();
}

}  // namespace

ClusterSecret ClusterSecret::generate() {
  init_sodium();
  ClusterSecret secret;
  ::randombytes_buf(secret.bytes_.data(), secret.bytes_.size());
  return secret;
}

ClusterSecret ClusterSecret::parse(std::string_view token) {
  token = trim(token);
  if (token.size() != 2 * kBytes)
    throw Error(Errc::invalid_argument, "a cluster token is " + std::to_string(2 * kBytes) + " hex digits; got " +
                                            std::to_string(token.size()) + " characters");
  ClusterSecret secret;
  for (std::size_t i = 0; i < kBytes; ++i) {
    int hi = hex_value(token[2 * i]);
    int lo = hex_value(token[2 * i + 1]);
    if (hi < 0 || lo < 0) throw Error(Errc::invalid_argument, "a cluster token holds only hex digits (0-9, a-f)");
    secret.bytes_[i] = static_cast<std::uint8_t>(hi * 16 + lo);
  }
  return secret;
}

std::string ClusterSecret::token() const { return to_hex(bytes_.data(), bytes_.size()); }

ClusterSecret::Key ClusterSecret::derive(std::string_view label) const {
  init_sodium();
  Key key{};
  ::crypto_generichash(key.data(), key.size(), reinterpret_cast<const unsigned char*>(label.data()), label.size(),
                       bytes_.data(), bytes_.size());
  return key;
}

namespace {
struct KeyPair {
  ClusterSecret::Key public_key{};
  ClusterSecret::Key secret_key{};
};
KeyPair seed_keypair(const ClusterSecret::Key& seed) {
  static_assert(crypto_box_SEEDBYTES == 32 && crypto_box_PUBLICKEYBYTES == 32 && crypto_box_SECRETKEYBYTES == 32);
  KeyPair pair;
  ::crypto_box_seed_keypair(pair.public_key.data(), pair.secret_key.data(), seed.data());
  return pair;
}
}  // namespace

ClusterSecret::Key ClusterSecret::curve_server_public() const {
  return seed_keypair(derive("troupe curve server v1")).public_key;
}
ClusterSecret::Key ClusterSecret::curve_server_secret() const {
  return seed_keypair(derive("troupe curve server v1")).secret_key;
}
ClusterSecret::Key ClusterSecret::curve_client_public() const {
  return seed_keypair(derive("troupe curve client v1")).public_key;
}
ClusterSecret::Key ClusterSecret::curve_client_secret() const {
  return seed_keypair(derive("troupe curve client v1")).secret_key;
}
ClusterSecret::Key ClusterSecret::data_mac_key() const { return derive("troupe data plane mac v1"); }

std::string ClusterSecret::fingerprint() const {
  Key id = derive("troupe fingerprint v1");
  return to_hex(id.data(), 4);
}

bool ClusterSecret::operator==(const ClusterSecret& other) const {
  return ::sodium_memcmp(bytes_.data(), other.bytes_.data(), kBytes) == 0;
}

void set_membership(std::optional<ClusterSecret> secret) {
  std::lock_guard lock(membership_mutex);
  current_membership = std::move(secret);
}

std::optional<ClusterSecret> membership() {
  std::lock_guard lock(membership_mutex);
  return current_membership;
}

bool secure() {
  std::lock_guard lock(membership_mutex);
  return current_membership.has_value();
}

ClusterSecret read_token_file(const fs::path& path) {
  struct stat info{};
  if (::stat(path.c_str(), &info) != 0)
    throw Error(Errc::not_found, "token file " + path.string() + " does not exist or cannot be read");
  if (info.st_uid != ::geteuid())
    throw Error(Errc::permission_denied, "token file " + path.string() + " is owned by another user (uid " +
                                             std::to_string(info.st_uid) + "); refusing to use it");
  if ((info.st_mode & 077) != 0) {
    char mode[8];
    std::snprintf(mode, sizeof mode, "%04o", static_cast<unsigned>(info.st_mode & 07777));
    throw Error(Errc::permission_denied, "token file " + path.string() + " may be read by other users (mode " +
                                             mode + "); run `chmod 600 " + path.string() + "`");
  }
  auto text = read_small_file(path);
  if (!text) throw Error(Errc::not_found, "cannot read token file " + path.string());
  try {
    return ClusterSecret::parse(*text);
  } catch (const Error& error) {
    throw Error(Errc::invalid_argument, "token file " + path.string() + ": " + error.message());
  }
}

void write_token_file(const fs::path& path, const ClusterSecret& secret) {
  fs::path tmp = path;
  tmp += ".tmp." + std::to_string(::getpid());
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) throw Error(Errc::invalid_argument, "cannot create " + tmp.string() + ": " + std::strerror(errno));
  const std::string text = secret.token() + "\n";
  bool ok = ::fchmod(fd, 0600) == 0 && ::write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size()) &&
            ::fsync(fd) == 0;
  int saved = errno;
  ::close(fd);
  if (!ok) {
    ::unlink(tmp.c_str());
    throw Error(Errc::invalid_argument, "cannot write " + tmp.string() + ": " + std::strerror(saved));
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    saved = errno;
    ::unlink(tmp.c_str());
    throw Error(Errc::invalid_argument, "cannot write " + path.string() + ": " + std::strerror(saved));
  }
}

TokenSource find_token(const std::string& head_address) {
  if (const char* env = std::getenv("TROUPE_TOKEN"); env != nullptr) {
    std::string_view text = trim(env);
    if (text.empty() || text == "insecure") return {std::nullopt, "TROUPE_TOKEN"};
    try {
      return {ClusterSecret::parse(text), "TROUPE_TOKEN"};
    } catch (const Error& error) {
      throw Error(Errc::invalid_argument, "TROUPE_TOKEN: " + error.message());
    }
  }
  if (const char* env = std::getenv("TROUPE_TOKEN_FILE"); env != nullptr && *env != '\0') {
    return {read_token_file(env), env};
  }
  std::vector<fs::path> roots;
  if (const char* env = std::getenv("TROUPE_TEMP_DIR"); env != nullptr && *env != '\0') roots.emplace_back(env);
  roots.emplace_back("/tmp/troupe");
  for (const auto& root : roots) {
    std::error_code error;
    fs::path session = fs::canonical(root / "session_latest", error);
    if (error) continue;
    auto address = read_small_file(session / "head_address");
    if (!address || trim(*address) != trim(head_address)) continue;
    if (fs::exists(session / "insecure", error)) return {std::nullopt, (session / "insecure").string()};
    if (fs::exists(session / "token", error)) return {read_token_file(session / "token"), (session / "token").string()};
  }
  return {};
}

std::string random_bytes(std::size_t n) {
  init_sodium();
  std::string out(n, '\0');
  ::randombytes_buf(out.data(), n);
  return out;
}

std::string random_hex(std::size_t n) {
  auto bytes = random_bytes(n);
  return to_hex(reinterpret_cast<const std::uint8_t*>(bytes.data()), n);
}

}  // namespace troupe::transport
