// `troupe stop [--force]`: stops the daemons this machine started, found
// through the pid files of every session under the temp root. SIGTERM, then
// SIGKILL for those still running after --grace seconds; --force SIGKILLs at
// once, together with the daemons' children (actor hosts, job drivers).
#include <signal.h>

#include <chrono>
#include <iostream>
#include <memory>
#include <set>
#include <thread>

#include "cluster_commands.hpp"
#include "session.hpp"

namespace troupe::cli {
namespace {

struct StopOptions {
  bool force = false;
  double grace_s = 10;
  std::string temp_dir;
};

// Children of every thread of `pid` (/proc/PID/task/TID/children).
std::vector<pid_t> children_of(pid_t pid) {
  std::vector<pid_t> children;
  std::error_code error;
  fs::path tasks = "/proc/" + std::to_string(pid) + "/task";
  for (const auto& task : fs::directory_iterator(tasks, error)) {
    auto text = read_file(task.path() / "children").value_or("");
    std::size_t pos = 0;
    while (pos < text.size()) {
      std::size_t end = text.find(' ', pos);
      if (end == std::string::npos) end = text.size();
      if (end > pos) children.push_back(static_cast<pid_t>(std::atol(text.substr(pos, end - pos).c_str())));
      pos = end + 1;
    }
  }
  return children;
}

void kill_hard(pid_t pid) {
  for (pid_t child : children_of(pid)) {
    ::kill(-child, SIGKILL);  // actor hosts and drivers lead their own process groups
    ::kill(child, SIGKILL);
  }
  ::kill(pid, SIGKILL);
}

int stop(const StopOptions& options) {
  const fs::path root = temp_root(options.temp_dir);
  auto records = find_daemons(root);
  std::vector<DaemonRecord> running;
  std::error_code ignored;
  for (auto& record : records) {
    if (is_troupe_daemon(record.pid)) running.push_back(record);
    else fs::remove(record.pid_file, ignored);  // stale
  }
  if (running.empty()) {
    std::cout << "no troupe daemons running on this machine (looked under " << root.string() << ")\n";
    return kExitOk;
  }
  // Workers first, so they do not spend their last moments retrying the head.
  std::stable_partition(running.begin(), running.end(), [](const DaemonRecord& r) { return r.name != "head"; });
  for (const auto& record : running) {
    if (options.force) kill_hard(record.pid);
    else ::kill(record.pid, SIGTERM);
  }
  auto deadline = std::chrono::steady_clock::now() +
                  std::chrono::milliseconds(static_cast<long>(options.grace_s * 1000));
  std::set<pid_t> left;
  for (const auto& record : running) left.insert(record.pid);
  while (!left.empty() && std::chrono::steady_clock::now() < deadline) {
    std::erase_if(left, [](pid_t pid) { return !is_troupe_daemon(pid); });
    if (!left.empty()) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  for (const auto& record : running) {
    bool forced = left.count(record.pid) != 0;
    if (forced) kill_hard(record.pid);
    fs::remove(record.pid_file, ignored);
    std::cout << "stopped " << record.name << " (pid " << record.pid << ")"
              << (forced ? " with SIGKILL after " + std::to_string(static_cast<int>(options.grace_s)) + " s" : "")
              << "\n";
    if (record.name == "head") fs::remove(record.pid_file.parent_path().parent_path() / "head_address", ignored);
  }
  return kExitOk;
}

}  // namespace

void add_stop_command(CLI::App& app) {
  auto options = std::make_shared<StopOptions>();
  auto* command = app.add_subcommand("stop", "Stop the troupe daemons (head, workers) this machine started");
  command->add_flag("--force", options->force, "SIGKILL at once (with their actor hosts and drivers)");
  command->add_option("--grace", options->grace_s, "Seconds to wait after SIGTERM before SIGKILL")
      ->capture_default_str();
  command->add_option("--temp-dir", options->temp_dir,
                      "Root of session directories (default $TROUPE_TEMP_DIR or /tmp/troupe)");
  set_action(*command, [options] { return stop(*options); });
}

}  // namespace troupe::cli
