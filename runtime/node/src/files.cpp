#include "troupe/node/files.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <mutex>
#include <tuple>
#include <sstream>

#include "troupe/runtime/error.hpp"
#include "troupe/transport/content_hash.hpp"

namespace troupe::node {

namespace fs = std::filesystem;

void write_file_atomic(const fs::path& path, const std::string& contents, int mode) {
  fs::path tmp = path;
  tmp += ".tmp." + std::to_string(::getpid());
  // Created with its final mode (never wider for a moment), written and
  // flushed whole, then renamed: readers see the old file or the new one,
  // and a failure (a full disk) leaves neither a partial file nor the
  // temporary behind.
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, static_cast<mode_t>(mode));
  if (fd < 0) throw_error(Errc::invalid_argument, "cannot create " + tmp.string() + ": " + std::strerror(errno));
  auto fail = [&](const std::string& what) {
    int saved = errno;
    ::close(fd);
    ::unlink(tmp.c_str());
    throw_error(Errc::invalid_argument, "cannot write " + path.string() + " (" + what + "): " + std::strerror(saved));
  };
  if (::fchmod(fd, static_cast<mode_t>(mode)) != 0) fail("chmod");
  const char* data = contents.data();
  std::size_t left = contents.size();
  while (left > 0) {
    ssize_t n = ::write(fd, data, left);
    if (n < 0) {
      if (errno == EINTR) continue;
      fail("write");
    }
    data += n;
    left -= static_cast<std::size_t>(n);
  }
  if (::fsync(fd) != 0) fail("fsync");
  if (::close(fd) != 0) {
    int saved = errno;
    ::unlink(tmp.c_str());
    throw_error(Errc::invalid_argument, "cannot write " + path.string() + ": " + std::strerror(saved));
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    int saved = errno;
    ::unlink(tmp.c_str());
    throw_error(Errc::invalid_argument, "cannot write " + path.string() + ": " + std::strerror(saved));
  }
}

std::optional<std::string> read_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return std::nullopt;
  std::ostringstream out;
  out << in.rdbuf();
  return out.str();
}

void ensure_private_directory(const fs::path& path) {
  std::error_code error;
  fs::create_directories(path, error);
  struct stat info{};
  if (::lstat(path.c_str(), &info) != 0)
    throw_error(Errc::invalid_argument, "cannot create directory " + path.string() + ": " + std::strerror(errno));
  if (S_ISLNK(info.st_mode))
    throw_error(Errc::permission_denied, path.string() + " is a symbolic link; refusing to use it as a session directory");
  if (!S_ISDIR(info.st_mode)) throw_error(Errc::invalid_argument, path.string() + " exists and is not a directory");
  if (info.st_uid != ::geteuid())
    throw_error(Errc::permission_denied, path.string() + " belongs to another user (uid " + std::to_string(info.st_uid) +
                                             "); refusing to use it: pick your own with --temp-dir or TROUPE_TEMP_DIR");
  if ((info.st_mode & 07777) != 0700 && ::chmod(path.c_str(), 0700) != 0)
    throw_error(Errc::permission_denied, "cannot make " + path.string() + " private (chmod 700): " + std::strerror(errno));
}

namespace {

using HashKey = std::tuple<std::string, std::string, off_t, long, long, ino_t>;
std::mutex g_hash_mutex;
std::map<HashKey, bool> g_known_hashes;

std::optional<HashKey> hash_key(const fs::path& path, const std::string& hash) {
  struct stat info{};
  if (::stat(path.c_str(), &info) != 0 || !S_ISREG(info.st_mode)) return std::nullopt;
  return HashKey{path.string(), hash, info.st_size, info.st_mtim.tv_sec, info.st_mtim.tv_nsec, info.st_ino};
}

}  // namespace

std::optional<bool> known_file_hash_match(const fs::path& path, const std::string& hash) {
  auto key = hash_key(path, hash);
  if (!key) return false;
  std::lock_guard lock(g_hash_mutex);
  if (auto it = g_known_hashes.find(*key); it != g_known_hashes.end()) return it->second;
  return std::nullopt;
}

bool file_matches_hash(const fs::path& path, const std::string& hash) {
  auto key = hash_key(path, hash);
  if (!key) return false;
  {
    std::lock_guard lock(g_hash_mutex);
    if (auto it = g_known_hashes.find(*key); it != g_known_hashes.end()) return it->second;
  }
  auto actual = transport::content_hash_of_file(path);
  bool ok = actual && *actual == hash;
  std::lock_guard lock(g_hash_mutex);
  if (g_known_hashes.size() > 4096) g_known_hashes.clear();
  g_known_hashes[*key] = ok;
  return ok;
}

void set_membership_env(std::map<std::string, std::string>& env, const fs::path& token_file) {
  if (token_file.empty()) {
    env.erase("TROUPE_TOKEN_FILE");
    env["TROUPE_TOKEN"] = "insecure";
  } else {
    env.erase("TROUPE_TOKEN");
    env["TROUPE_TOKEN_FILE"] = token_file.string();
  }
}

}  // namespace troupe::node
