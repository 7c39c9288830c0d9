#include "session.hpp"

#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <ctime>
#include <fstream>
#include <signal.h>
#include <sstream>

#include "troupe/runtime/error.hpp"

namespace troupe::cli {

fs::path temp_root(const std::string& temp_dir_flag) {
  if (!temp_dir_flag.empty()) return fs::absolute(temp_dir_flag);
  if (const char* env = std::getenv("TROUPE_TEMP_DIR"); env != nullptr && *env != '\0') {
    return fs::absolute(env);
  }
  return "/tmp/troupe";
}

void ensure_session_layout(const fs::path& session) {
  node::ensure_private_directory(session);
  for (const char* sub : {"logs", "pids", "binaries", "jobs", "actors"}) {
    node::ensure_private_directory(session / sub);
  }
}

fs::path create_session(const fs::path& root) {
  // The root may be shared (/tmp/troupe): it must be ours and private, or a
  // local user could plant sessions, binaries or tokens in it.
  node::ensure_private_directory(root);
  std::time_t now = std::time(nullptr);
  std::tm local{};
  localtime_r(&now, &local);
  char stamp[64];
  std::strftime(stamp, sizeof stamp, "%Y-%m-%d_%H-%M-%S", &local);
  fs::path session = root / ("session_" + std::string(stamp) + "_" + std::to_string(::getpid()));
  ensure_session_layout(session);
  point_latest(root, session);
  return session;
}

void point_latest(const fs::path& root, const fs::path& session) {
  fs::path link_tmp = root / (".session_latest." + std::to_string(::getpid()));
  std::error_code ignored;
  fs::remove(link_tmp, ignored);
  fs::create_directory_symlink(session.filename(), link_tmp);
  fs::rename(link_tmp, root / "session_latest");
}

std::optional<fs::path> latest_session(const fs::path& root) {
  std::error_code error;
  fs::path link = root / "session_latest";
  if (!fs::is_directory(link, error)) return std::nullopt;
  return fs::canonical(link, error);
}

std::string resolve_head_address(const std::string& address_flag, const fs::path& root) {
  if (!address_flag.empty()) return address_flag;
  if (const char* env = std::getenv("TROUPE_ADDRESS"); env != nullptr && *env != '\0') return env;
  if (auto session = latest_session(root)) {
    if (auto text = read_file(*session / "head_address")) {
      std::string address = *text;
      while (!address.empty() && (address.back() == '\n' || address.back() == ' ')) address.pop_back();
      if (!address.empty()) return address;
    }
  }
  throw Error(Errc::not_found, "no running cluster found; start one with `troupe start --head` (looked in " +
                 (root / "session_latest").string() + ")");
}

std::vector<DaemonRecord> find_daemons(const fs::path& root) {
  std::vector<DaemonRecord> found;
  std::error_code error;
  if (!fs::is_directory(root, error)) return found;
  for (const auto& entry : fs::directory_iterator(root, error)) {
    const std::string name = entry.path().filename().string();
    if (name.rfind("session_", 0) != 0 || name == "session_latest" || entry.is_symlink()) continue;
    fs::path pids = entry.path() / "pids";
    if (!fs::is_directory(pids, error)) continue;
    for (const auto& pid_entry : fs::directory_iterator(pids, error)) {
      if (pid_entry.path().extension() != ".pid") continue;
      auto text = read_file(pid_entry.path());
      if (!text) continue;
      pid_t pid = static_cast<pid_t>(std::atol(text->c_str()));
      if (pid <= 0) continue;
      found.push_back({pid_entry.path(), pid, pid_entry.path().stem().string()});
    }
  }
  return found;
}

bool is_troupe_daemon(pid_t pid) {
  if (pid <= 0 || ::kill(pid, 0) != 0) return false;
  auto cmdline = read_file("/proc/" + std::to_string(pid) + "/cmdline");
  if (!cmdline) return false;
  // A zombie has an empty command line: it is exiting, nothing to stop.
  return cmdline->find("__daemon") != std::string::npos;
}

}  // namespace troupe::cli
