// A real cluster on loopback for tests: the `troupe` executable started as
// head and workers in a private temp dir on a free port, and always stopped
// (`troupe stop --force`, then any pid left in a pid file) when the
// TestCluster goes away, also when a test fails, and also when the test
// process dies without unwinding (killed by ctest's timeout, a crash): a
// reaper process outside the test's process tree stops the cluster then.
#pragma once

#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "troupe/transport/internal/membership.hpp"
#include <nlohmann/json.hpp>

extern char** environ;

namespace troupe::testing {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

struct RunResult {
  int exit_code = -1;  // 128 + signal when killed; -1 when it timed out
  std::string out;
  std::string err;
  std::string all() const { return out + err; }
};

// Runs `program args...` with `env_extra` added to this process's
// environment, collects stdout/stderr, and kills it after `timeout`.
inline RunResult run_process(const std::string& program, const std::vector<std::string>& args,
                             const std::map<std::string, std::string>& env_extra,
                             std::chrono::milliseconds timeout = 30s) {
  int out_pipe[2], err_pipe[2];
  if (::pipe2(out_pipe, O_CLOEXEC) != 0 || ::pipe2(err_pipe, O_CLOEXEC) != 0) return {};
  std::vector<std::string> argv_strings{program};
  argv_strings.insert(argv_strings.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (auto& a : argv_strings) argv.push_back(a.data());
  argv.push_back(nullptr);
  std::map<std::string, std::string> env;
  for (char** e = environ; *e != nullptr; ++e) {
    std::string entry(*e);
    auto eq = entry.find('=');
    if (eq != std::string::npos) env[entry.substr(0, eq)] = entry.substr(eq + 1);
  }
  for (const auto& [k, v] : env_extra) env[k] = v;
  std::vector<std::string> env_strings;
  for (const auto& [k, v] : env) env_strings.push_back(k + "=" + v);
  std::vector<char*> envp;
  for (auto& e : env_strings) envp.push_back(e.data());
  envp.push_back(nullptr);

  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, out_pipe[1], 1);
  posix_spawn_file_actions_adddup2(&actions, err_pipe[1], 2);
  posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
  pid_t pid = 0;
  int rc = ::posix_spawn(&pid, program.c_str(), &actions, nullptr, argv.data(), envp.data());
  posix_spawn_file_actions_destroy(&actions);
  ::close(out_pipe[1]);
  ::close(err_pipe[1]);
  RunResult result;
  if (rc != 0) {
    ::close(out_pipe[0]);
    ::close(err_pipe[0]);
    result.err = "cannot start " + program;
    return result;
  }
  auto deadline = std::chrono::steady_clock::now() + timeout;
  bool out_open = true, err_open = true, timed_out = false;
  while (out_open || err_open) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) {
      timed_out = true;
      ::kill(pid, SIGKILL);
      break;
    }
    pollfd fds[2] = {{out_pipe[0], POLLIN, 0}, {err_pipe[0], POLLIN, 0}};
    ::poll(fds, 2, static_cast<int>(std::min<long>(left.count(), 100)));
    char buffer[4096];
    for (int i = 0; i < 2; ++i) {
      bool& open = i == 0 ? out_open : err_open;
      if (!open || !(fds[i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
      ssize_t n = ::read(fds[i].fd, buffer, sizeof buffer);
      if (n <= 0) open = false;
      else (i == 0 ? result.out : result.err).append(buffer, static_cast<std::size_t>(n));
    }
  }
  ::close(out_pipe[0]);
  ::close(err_pipe[0]);
  int status = 0;
  ::waitpid(pid, &status, 0);
  if (timed_out) result.exit_code = -1;
  else if (WIFEXITED(status)) result.exit_code = WEXITSTATUS(status);
  else if (WIFSIGNALED(status)) result.exit_code = 128 + WTERMSIG(status);
  return result;
}

// A TCP port nothing listens on right now.
inline int free_port() {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
  socklen_t len = sizeof addr;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  int port = ntohs(addr.sin_port);
  ::close(fd);
  return port;
}

inline std::string read_text(const fs::path& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

// Polls `condition` every 20 ms until it holds or `timeout` passes.
inline bool eventually(const std::function<bool()>& condition, std::chrono::milliseconds timeout) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < deadline) {
    if (condition()) return true;
    std::this_thread::sleep_for(20ms);
  }
  return condition();
}

class TestCluster {
 public:
  // Detection: suspected after heartbeat_ms * heartbeat_misses of silence,
  // dead after probe_timeout_ms more (docs/fault-tolerance.md).
  explicit TestCluster(int heartbeat_ms = 100, int heartbeat_misses = 5, int probe_timeout_ms = 500)
      : heartbeat_ms_(heartbeat_ms), heartbeat_misses_(heartbeat_misses), probe_timeout_ms_(probe_timeout_ms) {
    std::string pattern = (fs::temp_directory_path() / "troupe-cluster-test-XXXXXX").string();
    root_ = ::mkdtemp(pattern.data());
    port_ = free_port();
    start_reaper();
  }
  ~TestCluster() { teardown(); }
  TestCluster(const TestCluster&) = delete;
  TestCluster& operator=(const TestCluster&) = delete;

  static std::string cli() { return TROUPE_CLI_PATH; }

  RunResult troupe(const std::vector<std::string>& args, std::chrono::milliseconds timeout = 30s) const {
    return run_process(cli(), args, {{"TROUPE_TEMP_DIR", root_.string()}}, timeout);
  }

  RunResult start_head(const std::vector<std::string>& extra = std::vector<std::string>{"--gpus", ""}) {
    std::vector<std::string> args{"start", "--head", "--port", std::to_string(port_), "--num-cpus", "2",
                                  "--heartbeat-ms", std::to_string(heartbeat_ms_),
                                  "--heartbeat-misses", std::to_string(heartbeat_misses_),
                                  "--probe-timeout-ms", std::to_string(probe_timeout_ms_)};
    args.insert(args.end(), extra.begin(), extra.end());
    return troupe(args);
  }

  // Starts a worker and returns its full node id (empty on failure).
  std::string add_worker(const std::string& gpus, const std::vector<std::string>& extra = {}) {
    std::vector<std::string> args{"start", "--address", address(), "--gpus", gpus, "--num-cpus", "2"};
    args.insert(args.end(), extra.begin(), extra.end());
    auto before = node_ids();
    auto result = troupe(args);
    EXPECT_EQ(result.exit_code, 0) << result.all();
    for (const auto& id : node_ids()) {
      if (std::find(before.begin(), before.end(), id) == before.end()) return id;
    }
    return "";
  }

  nlohmann::json list(const std::string& what) const {
    auto result = troupe({"list", what, "--json"});
    if (result.exit_code != 0) return nlohmann::json::array();
    return nlohmann::json::parse(result.out, nullptr, false);
  }

  std::vector<std::string> node_ids() const {
    std::vector<std::string> ids;
    for (const auto& node : list("nodes")) ids.push_back(node["node_id"]);
    return ids;
  }

  nlohmann::json node(const std::string& id) const {
    for (const auto& node : list("nodes")) {
      if (node["node_id"] == id) return node;
    }
    return nullptr;
  }

  fs::path session() const { return fs::canonical(root_ / "session_latest"); }
  // The cluster's token file (the head's session), and its secret; none for
  // a head started with --insecure.
  fs::path token_file() const { return session() / "token"; }
  std::optional<transport::ClusterSecret> secret() const {
    if (!fs::exists(token_file())) return std::nullopt;
    return transport::read_token_file(token_file());
  }
  pid_t pid_of(const std::string& daemon_name) const {
    return static_cast<pid_t>(std::atol(read_text(session() / "pids" / (daemon_name + ".pid")).c_str()));
  }
  // "worker-<first 12 hex digits>"
  static std::string worker_name(const std::string& node_id) { return "worker-" + node_id.substr(0, 12); }

  std::string address() const { return "127.0.0.1:" + std::to_string(port_); }
  int port() const { return port_; }
  const fs::path& root() const { return root_; }
  // The detection time: a node (or driver) silent this long is lost.
  std::chrono::milliseconds node_timeout() const {
    return std::chrono::milliseconds(heartbeat_ms_ * heartbeat_misses_ + probe_timeout_ms_);
  }

  void teardown() {
    if (root_.empty()) return;
    troupe({"stop", "--force"}, 20s);
    // Anything a pid file still names (a stop that failed half-way).
    std::error_code error;
    for (const auto& session : fs::directory_iterator(root_, error)) {
      fs::path pids = session.path() / "pids";
      if (!fs::is_directory(pids, error)) continue;
      for (const auto& file : fs::directory_iterator(pids, error)) {
        pid_t pid = static_cast<pid_t>(std::atol(read_text(file.path()).c_str()));
        if (pid > 0) ::kill(pid, SIGKILL);
      }
    }
    if (std::getenv("TROUPE_KEEP_TEST_DIRS") == nullptr) fs::remove_all(root_, error);
    root_.clear();
    if (reaper_fd_ >= 0) {  // stood down: the cluster is gone
      (void)::send(reaper_fd_, "done\n", 5, MSG_NOSIGNAL);
      ::close(reaper_fd_);
      reaper_fd_ = -1;
    }
  }

 private:
  // The daemons detach from this process (`troupe start` daemonizes), so
  // nothing ends them if this process is killed before teardown() runs; a
  // test killed by ctest's timeout used to leave its whole cluster running.
  // The reaper: a shell in its own session, reparented away from this
  // process (so that killing this process tree leaves it), blocked reading
  // a socket whose only other end is this process. teardown() writes "done" and
  // it exits; if this process dies first, the read sees end-of-file and the
  // reaper stops the cluster as teardown() would.
  void start_reaper() {
    int fds[2];  // a socket pair, not a pipe: a send to a reaper that is gone must not raise SIGPIPE
    if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) != 0) return;
    static const char* const kScript =
        "if read -r _; then exit 0; fi; "
        "TROUPE_TEMP_DIR=\"$1\" \"$0\" stop --force; "
        "for f in \"$1\"/session_*/pids/*.pid; do [ -f \"$f\" ] && kill -9 \"$(cat \"$f\")\"; done; "
        "[ -n \"$2\" ] || rm -rf \"$1\"";
    const std::string cli_path = cli();
    const std::string root = root_.string();
    const char* keep = std::getenv("TROUPE_KEEP_TEST_DIRS");
    const std::string keep_flag = keep != nullptr ? "keep" : "";
    // The outer shell starts the reaper in the background and exits at once.
    // The socket is its fd 3: a background command's standard input is
    // /dev/null unless redirected explicitly.
    const std::string outer =
        std::string("setsid /bin/sh -c '") + kScript + "' \"$0\" \"$1\" \"$2\" <&3 3<&- &";
    std::vector<std::string> argv_strings{"/bin/sh", "-c", outer, cli_path, root, keep_flag};
    std::vector<char*> argv;
    for (auto& a : argv_strings) argv.push_back(a.data());
    argv.push_back(nullptr);
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_adddup2(&actions, fds[0], 3);
    // Not ctest's output pipe: ctest waits for every writer of it to close.
    posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0);
    posix_spawn_file_actions_addopen(&actions, 2, "/dev/null", O_WRONLY, 0);
    pid_t pid = 0;
    const int rc = ::posix_spawn(&pid, "/bin/sh", &actions, nullptr, argv.data(), environ);
    posix_spawn_file_actions_destroy(&actions);
    ::close(fds[0]);
    if (rc != 0) {
      ::close(fds[1]);
      return;
    }
    int status = 0;
    ::waitpid(pid, &status, 0);
    reaper_fd_ = fds[1];
  }

  int reaper_fd_ = -1;
  int heartbeat_ms_;
  int heartbeat_misses_;
  int probe_timeout_ms_;
  fs::path root_;
  int port_ = 0;
};

}  // namespace troupe::testing
