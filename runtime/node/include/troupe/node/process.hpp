// Starting and reaping child processes: daemons, job drivers, actor hosts.
// posix_spawn, not fork, because the head's process has several threads.
#pragma once

#include <sys/types.h>

#include <map>
#include <optional>
#include <string>
#include <vector>

namespace troupe::node {

struct SpawnOptions {
  std::string program;                      // path to execute; empty = argv[0]
  std::vector<std::string> argv;            // argv[0] as the program sees it
  std::map<std::string, std::string> env;   // the whole environment of the child
  std::string output_path;                  // stdout and stderr appended here; empty = inherit
  bool new_session = false;                 // setsid(): detach from the terminal
  bool new_process_group = false;           // its own group, so signals to ours skip it
};

// Starts the process. Throws Error(invalid_argument) naming the program and
// errno.
pid_t spawn_process(const SpawnOptions& options);

// The wait status of `pid` if it has exited (reaping it), else nullopt.
std::optional<int> try_reap(pid_t pid);

// "exited with code 3", "killed by signal 9 (Killed)".
std::string describe_wait_status(int status);
// The exit code a shell would report: the code, or 128 + signal.
int exit_code_of(int status);

// This process's environment as a map.
std::map<std::string, std::string> current_environment();

// Path of the running executable (/proc/self/exe).
std::string self_executable();

}  // namespace troupe::node
