// The session directory (docs/protocol.md, "Session directory"):
//   <root>/session_latest -> <root>/session_<date>_<pid>/
//     head_address, logs/*.log, pids/*.pid, binaries/<hash>,
//     jobs/<jobId hex>/output.log, actors/<actorId hex>.spec
// <root> is --temp-dir, else $TROUPE_TEMP_DIR, else /tmp/troupe.
#pragma once

#include <sys/types.h>

#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "troupe/node/files.hpp"

namespace troupe::cli {

namespace fs = std::filesystem;

// --temp-dir if given, else $TROUPE_TEMP_DIR, else /tmp/troupe.
fs::path temp_root(const std::string& temp_dir_flag);

// Creates a fresh session directory with its subfolders and points
// session_latest at it (atomically: a new symlink renamed over the old).
fs::path create_session(const fs::path& root);

// Points session_latest at `session` (a directory under `root`).
void point_latest(const fs::path& root, const fs::path& session);

// The directory session_latest points to, if it exists.
std::optional<fs::path> latest_session(const fs::path& root);

// Creates the subfolders of a session directory that already exists.
void ensure_session_layout(const fs::path& session);

// The head's IP:PORT: `address_flag` when not empty, else the head_address of
// the latest session. Throws troupe::Error (Errc::not_found) "no running
// cluster found; start one with `troupe start --head`" when neither exists.
std::string resolve_head_address(const std::string& address_flag, const fs::path& root);

// Whole-file helpers shared with the daemons (troupe/node/files.hpp).
using node::read_file;
using node::write_file_atomic;

// A daemon this machine started, as recorded in some session's pids/.
struct DaemonRecord {
  fs::path pid_file;
  pid_t pid = 0;
  std::string name;  // "head", "worker-<node>"
};
// Every pid file of every session under `root` (not only the latest: a head
// restarted into a new session leaves its workers' pid files in the old one).
std::vector<DaemonRecord> find_daemons(const fs::path& root);

// Whether `pid` is alive and is a troupe daemon (its command line holds the
// hidden daemon subcommand), so a recycled pid is never signalled.
bool is_troupe_daemon(pid_t pid);

}  // namespace troupe::cli
