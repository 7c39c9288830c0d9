// The head daemon: the cluster's single source of truth and its central
// scheduler (docs/protocol.md). One thread owns the control server and all
// the state below it; run() polls the server with a short timeout and runs
// the timers (node and driver heartbeats, job reaping, stop deadlines)
// between polls, so nothing here needs a lock.
//
// The head is split like Ray's GCS into managers that share that one thread
// (runtime/head/src/): NodeTable (nodes, heartbeats), ActorDirectory (actors,
// their placement and restarts), PlacementGroupManager (groups, bundle
// rescheduling), JobManager (jobs and drivers), BinaryStore (job binaries);
// this class is the server that dispatches messages among them.
//
// Tests drive a head without sockets or processes: give it a
// transport::InProcessControlServer and a fake clock, call handle() with a
// message and tick() to run the timers and the placement loop.
#pragma once

#include <atomic>
#include <cstddef>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <string>

#include "troupe/runtime/ids.hpp"
#include "troupe/transport/internal/control_socket.hpp"

namespace troupe::head {

using Clock = std::chrono::steady_clock;

struct HeadConfig {
  std::string node_ip = "127.0.0.1";
  int port = 6380;
  // Failure detection (docs/fault-tolerance.md): a node silent for
  // heartbeat_ms * heartbeat_misses is SUSPECTED and probed; it is declared
  // DEAD only when it stays silent for probe_timeout_ms more. A driver is
  // lost after the same total silence (it is not probed).
  std::uint32_t heartbeat_ms = 500;     // node and driver heartbeat period
  std::uint32_t heartbeat_misses = 6;   // silence of misses * period = suspected
  std::uint32_t probe_timeout_ms = 3000;  // a suspected node that stays silent this long more is dead
  // A startActor not acknowledged is resent; an actor not ALIVE this long
  // after its startActor was sent has failed to start (restart or DEAD).
  std::uint32_t actor_start_timeout_ms = 120000;
  std::filesystem::path session_dir;    // binaries/, jobs/ live here
  NodeId head_node_id;                  // the node manager in the head's process
  // The cluster token file (drivers of submitted jobs are given it); empty:
  // an insecure cluster (--insecure), which getClusterState reports.
  std::filesystem::path token_file;
  // The head's notion of now (heartbeat ages, timeouts, stop deadlines);
  // empty = steady_clock::now. Tests step a fake clock instead of sleeping.
  std::function<Clock::time_point()> clock;
  // issue 12 (persist): where the head keeps its state (docs/fault-tolerance.md,
  // "The head's state and recovery"): empty = memory only (lost with the
  // process); "redis://HOST:PORT[/prefix]"; else a directory (or
  // "sqlite:DIR") holding the SQLite store. A head started on a store that
  // another head wrote (and did not stop cleanly) recovers that state.
  std::string state_store;
  // The Redis key prefix when the URL names none: two clusters can share a server.
  std::string state_prefix = "troupe";
  // A Redis store's owner lease (zero: 10 s): a head that dies leaves the
  // store to the next head after this long (at once on the same host).
  std::chrono::milliseconds state_lease{0};
  // Finished jobs, gone drivers, DEAD actors and REMOVED groups are
  // forgotten once they are older than `retention` or beyond the newest
  // `retention_count` of their kind (Ray keeps 1000 dead actors).
  std::chrono::seconds retention{3600};
  std::size_t retention_count = 1000;
};

class Head {
 public:
  // A head that listens on tcp://node_ip:port once bind() is called.
  explicit Head(HeadConfig config);
  // A head that talks through `server` (bind() must not be called).
  Head(HeadConfig config, std::unique_ptr<transport::ControlServer> server);
  ~Head();
  Head(const Head&) = delete;
  Head& operator=(const Head&) = delete;

  // Binds the ROUTER on tcp://node_ip:port. Throws troupe::Error
  // (Errc::transport) when the port is in use or the address cannot be
  // bound; its message() says which, for people.
  void bind();
  // "IP:PORT" once bound (empty with an in-process server).
  std::string address() const;
  // The id of the node manager in the head's process: the configured one,
  // or, on a recovered store, the one the head's node had before (start
  // that node manager with this id).
  NodeId head_node_id() const;
  // Serves requests until `stop` becomes true, then stops running job
  // drivers (SIGTERM, SIGKILL after 2 s). Call from the thread that bound.
  void run(const std::atomic<bool>& stop);

  // One message from the peer `identity`, answered through the server as
  // run() would answer it. Does not run the placement loop: tick() does.
  void handle(const std::string& identity, transport::ReceivedMessage& message);
  // The timers at the clock's now: nodes silent for longer than
  // heartbeat_ms * heartbeat_misses are suspected and probed, and lost once
  // silent for probe_timeout_ms more; drivers silent for that whole time are
  // lost; unacknowledged startActor and killActor requests are resent;
  // finished job drivers are reaped; then pending actors and groups are
  // placed if anything changed.
  void tick();
  // Waits (real time, at most `timeout`) until the head's background work
  // (hashing, writing and reading binaries) is done; its answers go out at
  // the next tick(). For tests.
  bool wait_for_background_work(std::chrono::milliseconds timeout);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace troupe::head
