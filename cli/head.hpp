// The head daemon: the cluster's single source of truth and its central
// scheduler (docs/protocol.md). One thread owns the ROUTER socket and all the
// state below it; run() polls the socket with a short timeout and runs the
// timers (node and driver heartbeats, job reaping, stop deadlines) between
// polls, so nothing here needs a lock.
#pragma once

#include <atomic>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>

#include "ids.hpp"

namespace troupe::cli {

struct HeadConfig {
  std::string node_ip = "127.0.0.1";
  int port = 6380;
  std::uint32_t heartbeat_ms = 500;     // node and driver heartbeat period
  std::uint32_t heartbeat_misses = 6;   // silence of misses * period = lost
  std::filesystem::path session_dir;    // binaries/, jobs/ live here
  Id128 head_node_id;                   // the node manager in the head's process
};

class Head {
 public:
  explicit Head(HeadConfig config);
  ~Head();
  Head(const Head&) = delete;
  Head& operator=(const Head&) = delete;

  // Binds the ROUTER on tcp://node_ip:port. Throws CliError when the port is
  // in use or the address cannot be bound.
  void bind();
  // "IP:PORT" once bound.
  std::string address() const;
  // Serves requests until `stop` becomes true, then stops running job
  // drivers (SIGTERM, SIGKILL after 2 s). Call from the thread that bound.
  void run(const std::atomic<bool>& stop);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace troupe::cli
