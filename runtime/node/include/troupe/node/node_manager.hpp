// The node manager (worker daemon; the head's process runs one too): registers
// this machine's resources with the head, heartbeats, and runs one actor host
// process per actor the head starts here (docs/protocol.md, flows 1, 3, 4).
// It never exits because the head is away: it keeps re-registering with
// backoff until the head answers again.
#pragma once

#include <atomic>
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "troupe/runtime/ids.hpp"
#include "troupe/scheduler/resources.hpp"

namespace troupe::node {

struct NodeManagerConfig {
  std::string head_address;               // IP:PORT
  std::string node_ip = "127.0.0.1";
  NodeId node_id;
  std::uint32_t num_cpus = 1;
  std::uint64_t memory_bytes = 0;
  std::vector<scheduler::GpuInfo> gpus;   // detected or declared
  scheduler::ResourceSet resources;       // custom resources
  std::filesystem::path session_dir;      // binaries/, actors/, logs/
  // The cluster token file its actor hosts are given (TROUPE_TOKEN_FILE);
  // empty: an insecure cluster (they get TROUPE_TOKEN=insecure).
  std::filesystem::path token_file;
};

// Runs until `stop` becomes true, then SIGKILLs and reaps its actor hosts.
// Call from the thread that should own the node manager's socket.
void run_node_manager(const NodeManagerConfig& config, const std::atomic<bool>& stop);

}  // namespace troupe::node
