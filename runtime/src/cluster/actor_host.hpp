// ActorHost: the start-up and life of an actor host process, the binary a
// node manager started with TROUPE_ACTOR_SPEC. It reads the StartActor
// spec, constructs the one actor in an actor executor (executor/), reports
// it ALIVE (with this process's call and data addresses) or DEAD to the
// head, and then serves until a signal or its node manager's death.
//
// Contract: constructed, started and reported on the thread that calls
// ClusterRuntime::start(); actor_id() and incarnation() are read-only
// from construction, and actor() from the moment start_actor() publishes
// it (a release store that actor()'s acquire load pairs with), so the call
// server may read them from any thread for every request, even one that
// arrives while the actor is still being constructed (it then finds none). A host that failed to start its
// actor reports DEAD and exits the process (code 3): it never serves.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>

#include "head_client.hpp"
#include "wire_util.hpp"

namespace troupe::detail {

class LocalRuntime;
class LocalActor;

class ActorHost {
 public:
  // Reads the spec at `spec_path` (ids and incarnation); the process dies
  // with its node manager (SIGKILL; and a 250 ms check of its parent). Throws if unreadable.
  explicit ActorHost(const std::string& spec_path);
  // Hosts `actor`, already constructed in `runtime`, as incarnation
  // `incarnation` (in-process tests and fuzz targets: no spec, no head).
  ActorHost(ActorId actor_id, std::uint32_t incarnation, std::shared_ptr<LocalRuntime> runtime,
            std::shared_ptr<LocalActor> actor);
  ~ActorHost();

  const ActorId& actor_id() const noexcept { return actor_id_; }
  const JobId& job_id() const noexcept { return job_id_; }
  std::uint32_t incarnation() const noexcept { return incarnation_; }
  // The hosted actor; null until start_actor() succeeded.
  const std::shared_ptr<LocalActor>& actor() const noexcept {
    return published_.load(std::memory_order_acquire) ? hosted_ : no_actor_;
  }

  // Constructs the actor in a new actor executor, then reports the outcome
  // to the head; on failure exits the process.
  void start_actor(HeadClient& head, const std::string& call_address, const std::string& data_address);
  // Stops the actor executor.
  void shutdown();
  // Blocks until SIGINT (SIGTERM: a safe-point SIGKILL, see the constructor),
  // then exits the process; never returns.
  [[noreturn]] static void serve_forever();

 private:
  // Tells the head the actor is DEAD (for good: it is not restarted),
  // or ALIVE at these addresses when `failure` is empty.
  void report(HeadClient& head, const std::string& failure, const std::string& call_address,
              const std::string& data_address);

  std::string spec_bytes_;  // the StartActor message
  ActorId actor_id_;
  JobId job_id_;
  NodeId node_id_;
  std::uint32_t incarnation_ = 0;
  std::shared_ptr<LocalRuntime> host_runtime_;
  std::shared_ptr<LocalActor> hosted_;    // written once, before published_
  std::atomic<bool> published_{false};
  static inline const std::shared_ptr<LocalActor> no_actor_{};
};

}  // namespace troupe::detail
