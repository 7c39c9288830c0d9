// Log rotation of the session directory (runtime/node/src/log_rotation.cpp):
// a file over the cap is copied to .1 and truncated in place, while its
// writer keeps its O_APPEND fd and goes on at offset 0.
#include "troupe/node/log_rotation.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>

#include <gtest/gtest.h>

namespace fs = std::filesystem;
using troupe::node::LogRotation;

namespace {

class TempDir {
 public:
  TempDir() {
    char tmpl[] = "/tmp/troupe-logrot-XXXXXX";
    path_ = ::mkdtemp(tmpl);
  }
  ~TempDir() {
    std::error_code ignored;
    fs::remove_all(path_, ignored);
  }
  const fs::path& path() const { return path_; }

 private:
  fs::path path_;
};

std::string slurp(const fs::path& file) {
  std::ifstream in(file, std::ios::binary);
  std::stringstream out;
  out << in.rdbuf();
  return out.str();
}

void write_all(int fd, const std::string& bytes) {
  ASSERT_EQ(::write(fd, bytes.data(), bytes.size()), static_cast<ssize_t>(bytes.size()));
}

}  // namespace

TEST(LogRotation, FileOverTheCapIsCopiedAndTruncatedAndItsWriterGoesOnAtZero) {
  TempDir dir;
  const fs::path log = dir.path() / "actor-1.log";
  int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0600);
  ASSERT_GE(fd, 0);
  const std::string first(3000, 'a');
  write_all(fd, first);
  EXPECT_FALSE(troupe::node::rotate_log_if_large(log, LogRotation{4000, 2})) << "under the cap";
  write_all(fd, std::string(2000, 'b'));
  ASSERT_TRUE(troupe::node::rotate_log_if_large(log, LogRotation{4000, 2}));
  EXPECT_EQ(fs::file_size(log), 0u);
  EXPECT_EQ(slurp(fs::path(log.string() + ".1")), first + std::string(2000, 'b'));
  EXPECT_EQ(fs::status(fs::path(log.string() + ".1")).permissions() & fs::perms::all,
            fs::perms::owner_read | fs::perms::owner_write);
  write_all(fd, "after\n");
  EXPECT_EQ(slurp(log), "after\n") << "the writer's O_APPEND fd must go on at the new end";
  ::close(fd);
}

TEST(LogRotation, KeepsOnlyTheNewestCopies) {
  TempDir dir;
  const fs::path log = dir.path() / "head.log";
  int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0600);
  ASSERT_GE(fd, 0);
  for (char round : {'1', '2', '3', '4'}) {
    write_all(fd, std::string(200, round));
    ASSERT_TRUE(troupe::node::rotate_log_if_large(log, LogRotation{100, 2}));
  }
  ::close(fd);
  EXPECT_EQ(slurp(fs::path(log.string() + ".1")), std::string(200, '4'));
  EXPECT_EQ(slurp(fs::path(log.string() + ".2")), std::string(200, '3'));
  EXPECT_FALSE(fs::exists(log.string() + ".3"));
  EXPECT_FALSE(fs::exists(log.string() + ".1.tmp"));
}

TEST(LogRotation, ZeroCapNeverRotates) {
  TempDir dir;
  const fs::path log = dir.path() / "x.log";
  std::ofstream(log) << std::string(1000, 'x');
  EXPECT_FALSE(troupe::node::rotate_log_if_large(log, LogRotation{0, 3}));
  EXPECT_EQ(fs::file_size(log), 1000u);
}

TEST(LogRotation, SessionScanCoversDaemonActorAndJobLogsOnly) {
  TempDir dir;
  const fs::path logs = dir.path() / "logs";
  const fs::path jobs = dir.path() / "jobs";
  fs::create_directories(logs);
  fs::create_directories(jobs / "0123");
  std::ofstream(logs / "worker-abc.log") << std::string(500, 'w');
  std::ofstream(logs / "small.log") << "x";
  std::ofstream(logs / "notes.txt") << std::string(500, 'n');
  std::ofstream(jobs / "0123" / "output.log") << std::string(500, 'j');
  auto rotated = troupe::node::rotate_session_logs(logs, jobs, LogRotation{100, 3});
  EXPECT_EQ(rotated.size(), 2u);
  EXPECT_EQ(fs::file_size(logs / "worker-abc.log"), 0u);
  EXPECT_EQ(fs::file_size(jobs / "0123" / "output.log"), 0u);
  EXPECT_EQ(fs::file_size(logs / "small.log"), 1u);
  EXPECT_EQ(fs::file_size(logs / "notes.txt"), 500u) << "only *.log files are rotated";
  EXPECT_FALSE(troupe::node::rotate_session_logs(fs::path(), dir.path() / "missing", LogRotation{100, 3}).size());
}

TEST(LogRotation, RotatorThreadRotatesWhileAWriterRuns) {
  TempDir dir;
  const fs::path logs = dir.path() / "logs";
  fs::create_directories(logs);
  const fs::path log = logs / "actor-2.log";
  int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0600);
  ASSERT_GE(fd, 0);
  {
    troupe::node::LogRotator rotator(logs, fs::path(), LogRotation{10'000, 2}, std::chrono::milliseconds(10));
    const std::string line(99, 'l');
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
    while (!fs::exists(log.string() + ".1") && std::chrono::steady_clock::now() < deadline) {
      write_all(fd, line + "\n");
      std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
  }
  ::close(fd);
  ASSERT_TRUE(fs::exists(log.string() + ".1")) << "the rotator never rotated a growing file";
  // Between rotations the file never grows far past the cap (a check every 10 ms).
  EXPECT_LT(fs::file_size(log.string() + ".1"), 10'000u + 1'000'000u);
}
