#include "troupe/node/files.hpp"

#include <unistd.h>

#include <fstream>
#include <sstream>
#include <stdexcept>

#include "troupe/runtime/error.hpp"

namespace troupe::node {

namespace fs = std::filesystem;

void write_file_atomic(const fs::path& path, const std::string& contents, int mode) {
  fs::path tmp = path;
  tmp += ".tmp." + std::to_string(::getpid());
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    out.write(contents.data(), static_cast<std::streamsize>(contents.size()));
    if (!out) throw_error(Errc::invalid_argument, "cannot write " + tmp.string());
  }
  fs::permissions(tmp, static_cast<fs::perms>(mode), fs::perm_options::replace);
  fs::rename(tmp, path);
}

std::optional<std::string> read_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return std::nullopt;
  std::ostringstream out;
  out << in.rdbuf();
  return out.str();
}

}  // namespace troupe::node
