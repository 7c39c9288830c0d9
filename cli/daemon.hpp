// Running a daemon (head or worker) in this process: the hidden
// `troupe __daemon --config FILE` subcommand that `troupe start` re-executes
// in the background, and `troupe start --block` in the foreground.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "troupe/runtime/ids.hpp"
#include "troupe/scheduler/resources.hpp"

namespace troupe::cli {

struct DaemonConfig {
  bool head = false;                      // head (with its own node manager) or worker
  std::filesystem::path session_dir;
  std::string node_ip = "127.0.0.1";
  int port = 6380;                        // head
  std::uint32_t heartbeat_ms = 500;       // head
  std::uint32_t heartbeat_misses = 6;     // head
  std::uint32_t probe_timeout_ms = 3000;  // head
  std::string head_address;               // worker
  NodeId node_id;
  std::uint32_t num_cpus = 1;
  std::uint64_t memory_bytes = 0;
  std::vector<scheduler::GpuInfo> gpus;
  scheduler::ResourceSet resources;       // custom resources
  // The cluster token this daemon presents and requires (a file, mode
  // 0600, in its session directory); empty: an insecure cluster (--insecure).
  std::filesystem::path token_file;
  // issue 12 (persist), head: its state store (HeadConfig::state_store: a
  // directory for SQLite, or redis://...), the Redis key prefix when the URL
  // has none, and how long finished things are kept.
  std::string state_store;
  std::string state_prefix = "troupe";
  std::uint32_t retention_s = 3600;

  // Log files of this session (logs/*.log, jobs/*/output.log) are rotated
  // when larger than this (0: never), keeping this many older copies.
  std::uint64_t log_max_bytes = 100ull << 20;
  int log_keep = 3;

  // "head" or "worker-<node id, 12 hex digits>": names its pid and log files.
  std::string name() const;
};

void to_json(nlohmann::json& j, const DaemonConfig& config);
void from_json(const nlohmann::json& j, DaemonConfig& config);

// Runs the daemon until SIGTERM/SIGINT. Writes pids/<name>.pid (and, for the
// head, head_address once bound); removes them on a clean stop. Returns the
// process exit code; failures (port in use) are printed to stderr.
// `foreground` prints the head's banner once it is ready.
int run_daemon(const DaemonConfig& config, bool foreground);

// What `troupe start --head` prints once the head answers. `token_file`
// empty: the insecure warning instead of how to join.
std::string head_banner(const std::string& address, const std::filesystem::path& session,
                        const std::filesystem::path& token_file);

// The warning an insecure cluster prints in `start` and `status`.
std::string insecure_warning(const std::string& address);

}  // namespace troupe::cli
