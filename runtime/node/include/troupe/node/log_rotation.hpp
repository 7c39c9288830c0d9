// Size-capped, rotated log files for the daemons' session directory.
//
// Every process of a cluster writes its output to a file through an fd
// opened with O_APPEND (daemons: logs/<name>.log; actor hosts:
// logs/actor-<id>.log; submitted drivers: jobs/<id>/output.log). A file
// over the cap is rotated in place, the way logrotate's copytruncate does:
// its bytes are copied to <file>.1 (older copies shift to .2 ... .keep,
// the oldest is dropped) and the file is truncated, so the writer, which
// keeps its fd, goes on at offset 0 without knowing. Lines written between
// the copy and the truncation can be lost; nothing else is.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <filesystem>
#include <mutex>
#include <thread>
#include <vector>

namespace troupe::node {

struct LogRotation {
  std::uint64_t max_bytes = 100ull << 20;  // rotate a file larger than this; 0: never
  int keep = 3;                            // rotated copies kept (<file>.1 newest)
};

// Rotates `file` if it is larger than `policy.max_bytes`. Returns whether
// it did. Throws nothing: a file that cannot be copied is left as it is.
bool rotate_log_if_large(const std::filesystem::path& file, const LogRotation& policy);

// Checks every "*.log" file directly under `logs_dir` and every
// "<jobs_dir>/*/output.log" (either may be empty or missing) and rotates
// those over the cap. Daemons sharing a session serialise on a lock file
// in `logs_dir`. Returns the files rotated.
std::vector<std::filesystem::path> rotate_session_logs(const std::filesystem::path& logs_dir,
                                                       const std::filesystem::path& jobs_dir,
                                                       const LogRotation& policy);

// A thread that calls rotate_session_logs every `every` until destroyed.
class LogRotator {
 public:
  LogRotator(std::filesystem::path logs_dir, std::filesystem::path jobs_dir, LogRotation policy,
             std::chrono::milliseconds every = std::chrono::seconds(5));
  ~LogRotator();
  LogRotator(const LogRotator&) = delete;
  LogRotator& operator=(const LogRotator&) = delete;

 private:
  void run();

  std::filesystem::path logs_dir_;
  std::filesystem::path jobs_dir_;
  LogRotation policy_;
  std::chrono::milliseconds every_;
  std::mutex mutex_;
  std::condition_variable wake_;
  bool stop_ = false;
  std::thread thread_;
};

}  // namespace troupe::node
