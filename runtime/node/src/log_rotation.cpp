#include "troupe/node/log_rotation.hpp"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <system_error>

#include "troupe/runtime/logging.hpp"

namespace troupe::node {

namespace fs = std::filesystem;

namespace {

fs::path numbered(const fs::path& file, int n) { return fs::path(file.string() + "." + std::to_string(n)); }

// Copies `from` to `to` (created 0600, replaced if present) through the
// kernel; returns false if anything fails, leaving no partial `to`.
bool copy_file_private(const fs::path& from, const fs::path& to) {
  const fs::path tmp = to.string() + ".tmp";
  int in = ::open(from.c_str(), O_RDONLY | O_CLOEXEC);
  if (in < 0) return false;
  int out = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
  if (out < 0) {
    ::close(in);
    return false;
  }
  bool ok = true;
  char buffer[1 << 16];
  for (;;) {
    ssize_t n = ::read(in, buffer, sizeof buffer);
    if (n == 0) break;
    if (n < 0) {
      ok = false;
      break;
    }
    for (ssize_t done = 0; done < n;) {
      ssize_t w = ::write(out, buffer + done, static_cast<size_t>(n - done));
      if (w <= 0) {
        ok = false;
        break;
      }
      done += w;
    }
    if (!ok) break;
  }
  ::close(in);
  if (::close(out) != 0) ok = false;
  std::error_code error;
  if (ok) fs::rename(tmp, to, error);
  if (!ok || error) {
    fs::remove(tmp, error);
    return false;
  }
  return true;
}

}  // namespace

bool rotate_log_if_large(const fs::path& file, const LogRotation& policy) {
  if (policy.max_bytes == 0) return false;
  std::error_code error;
  if (fs::is_symlink(file, error) || !fs::is_regular_file(file, error)) return false;
  const auto size = fs::file_size(file, error);
  if (error || size <= policy.max_bytes) return false;
  const int keep = policy.keep < 1 ? 1 : policy.keep;
  fs::remove(numbered(file, keep), error);
  for (int n = keep - 1; n >= 1; --n) {
    if (fs::exists(numbered(file, n), error)) fs::rename(numbered(file, n), numbered(file, n + 1), error);
  }
  if (!copy_file_private(file, numbered(file, 1))) return false;
  // The writers hold O_APPEND fds: after the truncation they go on at 0.
  if (::truncate(file.c_str(), 0) != 0) return false;
  return true;
}

std::vector<fs::path> rotate_session_logs(const fs::path& logs_dir, const fs::path& jobs_dir,
                                          const LogRotation& policy) {
  std::vector<fs::path> rotated;
  if (policy.max_bytes == 0) return rotated;
  std::error_code error;
  std::vector<fs::path> candidates;
  if (!logs_dir.empty() && fs::is_directory(logs_dir, error)) {
    for (const auto& entry : fs::directory_iterator(logs_dir, error)) {
      if (entry.path().extension() == ".log") candidates.push_back(entry.path());
    }
  }
  if (!jobs_dir.empty() && fs::is_directory(jobs_dir, error)) {
    for (const auto& entry : fs::directory_iterator(jobs_dir, error)) {
      if (entry.is_directory(error)) candidates.push_back(entry.path() / "output.log");
    }
  }
  bool any_large = false;
  for (const auto& file : candidates) {
    auto size = fs::file_size(file, error);
    if (!error && size > policy.max_bytes) any_large = true;
  }
  if (!any_large) return rotated;
  // Several daemons of one machine share a session: one rotates at a time,
  // and the others then see the file small.
  int lock = -1;
  if (!logs_dir.empty()) {
    lock = ::open((logs_dir / ".rotate.lock").c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (lock >= 0 && ::flock(lock, LOCK_EX) != 0) {
      ::close(lock);
      lock = -1;
    }
  }
  for (const auto& file : candidates) {
    if (rotate_log_if_large(file, policy)) rotated.push_back(file);
  }
  if (lock >= 0) ::close(lock);
  return rotated;
}

LogRotator::LogRotator(fs::path logs_dir, fs::path jobs_dir, LogRotation policy, std::chrono::milliseconds every)
    : logs_dir_(std::move(logs_dir)), jobs_dir_(std::move(jobs_dir)), policy_(policy), every_(every) {
  if (policy_.max_bytes != 0) thread_ = std::thread([this] { run(); });
}

LogRotator::~LogRotator() {
  {
    std::lock_guard lock(mutex_);
    stop_ = true;
  }
  wake_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void LogRotator::run() {
  std::unique_lock lock(mutex_);
  while (!stop_) {
    if (wake_.wait_for(lock, every_, [this] { return stop_; })) break;
    lock.unlock();
    for (const auto& file : rotate_session_logs(logs_dir_, jobs_dir_, policy_)) {
      TROUPE_LOG_INFO("rotated {} (over {} bytes; {} older copies kept)", file.string(), policy_.max_bytes,
                      policy_.keep);
    }
    lock.lock();
  }
}

}  // namespace troupe::node
