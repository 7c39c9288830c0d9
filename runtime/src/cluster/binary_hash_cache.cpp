#include "binary_hash_cache.hpp"

#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string_view>
#include <vector>

#include "wire_util.hpp"
#include "troupe/runtime/logging.hpp"
#include "troupe/transport/content_hash.hpp"

namespace troupe::detail {
namespace {

namespace fs = std::filesystem;

constexpr std::size_t kMaxEntries = 64;

bool cache_disabled() {
  const char* value = std::getenv("TROUPE_BINARY_HASH_CACHE");
  if (!value) return false;
  const std::string_view v(value);
  return v == "0" || v == "off" || v == "false" || v == "no";
}

fs::path cache_directory() {
  if (const char* dir = std::getenv("TROUPE_CACHE_DIR"); dir && *dir) return dir;
  if (const char* xdg = std::getenv("XDG_CACHE_HOME"); xdg && *xdg) return fs::path(xdg) / "troupe";
  if (const char* home = std::getenv("HOME"); home && *home) return fs::path(home) / ".cache" / "troupe";
  return {};
}

// "dev ino size mtime_ns ctime_ns": the key of the file as it is now.
std::string file_key(const struct stat& info) {
  auto ns = [](const timespec& t) { return static_cast<long long>(t.tv_sec) * 1000000000LL + t.tv_nsec; };
  std::ostringstream key;
  key << info.st_dev << ' ' << info.st_ino << ' ' << info.st_size << ' ' << ns(info.st_mtim) << ' '
      << ns(info.st_ctim);
  return key.str();
}

// Lines "<key> <hash>", newest last.
std::vector<std::pair<std::string, std::string>> read_entries(const fs::path& file) {
  std::vector<std::pair<std::string, std::string>> entries;
  std::ifstream in(file);
  std::string line;
  while (std::getline(in, line)) {
    const auto space = line.rfind(' ');
    if (space == std::string::npos) continue;
    std::string hash = line.substr(space + 1);
    if (!transport::valid_hash_name(hash)) continue;
    entries.emplace_back(line.substr(0, space), std::move(hash));
  }
  return entries;
}

// The directory exists, is ours and no one else's: a cache another user
// could write would let them name the binary our hosts run.
bool private_directory(const fs::path& dir) {
  std::error_code error;
  fs::create_directories(dir, error);
  struct stat info{};
  if (::lstat(dir.c_str(), &info) != 0 || !S_ISDIR(info.st_mode) || info.st_uid != ::geteuid()) return false;
  if ((info.st_mode & 077) != 0 && ::chmod(dir.c_str(), 0700) != 0) return false;
  return true;
}

void remember(const fs::path& dir, const fs::path& file, const std::string& key, const std::string& hash) {
  auto entries = read_entries(file);
  std::erase_if(entries, [&](const auto& entry) { return entry.first == key; });
  entries.emplace_back(key, hash);
  if (entries.size() > kMaxEntries) entries.erase(entries.begin(), entries.end() - kMaxEntries);
  const fs::path temp = dir / ("binary-hashes." + std::to_string(::getpid()) + ".tmp");
  {
    std::ofstream out(temp, std::ios::trunc);
    for (const auto& [k, h] : entries) out << k << ' ' << h << '\n';
    if (!out.flush()) {
      std::error_code ignored;
      fs::remove(temp, ignored);
      return;
    }
  }
  std::error_code error;
  fs::rename(temp, file, error);
  if (error) fs::remove(temp, error);
}

}  // namespace

SelfBinary self_binary_hash() {
  const char* self = "/proc/self/exe";
  struct stat info{};
  const bool use_cache = !cache_disabled() && ::stat(self, &info) == 0 && S_ISREG(info.st_mode);
  const fs::path dir = use_cache ? cache_directory() : fs::path{};
  const bool have_dir = !dir.empty() && private_directory(dir);
  const fs::path file = dir / "binary-hashes";
  const std::string key = use_cache ? file_key(info) : std::string{};
  if (have_dir) {
    for (const auto& [k, hash] : read_entries(file))
      if (k == key) return {hash, true};
  }
  std::string hash = transport::content_hash(read_whole_file(self));
  if (have_dir) {
    // The file may have changed while we read it: remember the hash only
    // under the key it has now if that is still the key we started with.
    struct stat after{};
    if (::stat(self, &after) == 0 && file_key(after) == key) remember(dir, file, key, hash);
    else TROUPE_LOG_DEBUG("binary changed while it was hashed; its hash is not cached");
  }
  return {std::move(hash), false};
}

}  // namespace troupe::detail
