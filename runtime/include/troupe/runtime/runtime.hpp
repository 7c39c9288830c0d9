// Starting and stopping the runtime in a process.
//
// init() with no address runs in local mode: actors are objects in this
// process, each on its own serial executor of a thread pool. An address
// (InitOptions::address or TROUPE_ADDRESS) selects a cluster; the calls a
// program makes are the same in both modes.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "troupe/runtime/ids.hpp"

namespace troupe {

struct InitOptions {
  std::string address{};        // "" = TROUPE_ADDRESS, else local mode
  std::string log_level{};      // "" = TROUPE_LOG_LEVEL, else "warn"
  int num_threads = 0;          // local mode pool size; 0 = max(2, hardware threads)
  std::string gpus{};           // declared GPUs for local mode, e.g. "H100-80GB:2" ("" = TROUPE_GPUS, else detect)
  std::map<std::string, double> resources{};  // extra custom resources of the local node
};

enum class Mode { none, local, cluster };

// Starts the runtime. Throws Error(invalid_argument) on bad options and
// Error(invalid_argument) if already initialised.
void init(InitOptions options = {});
// As init(), reading --troupe-address=, --troupe-log-level=, --troupe-gpus=
// and --troupe-threads= from argv and removing them from it.
void init(int& argc, char** argv);
// Kills every actor (their pending calls fail with CancelledError) and stops
// the pool. Refs stay valid. Safe to call twice.
void shutdown();
bool is_initialized() noexcept;
Mode mode() noexcept;

// Inside an actor method: the GPUs assigned to this actor (indices as the
// process sees them). Elsewhere: empty. Same as visible_gpu_ids().
std::vector<int> get_gpu_ids();
// Inside an actor method, the GPUs assigned to this actor, in two views:
//  - visible_gpu_ids(): device ordinals as this process sees them, the ones
//    to pass to cudaSetDevice. In a cluster the node manager starts the
//    actor's host with CUDA_VISIBLE_DEVICES set to its GPUs, so they are
//    0..n-1; in local mode the process sees every GPU of the machine and
//    they equal the node indices.
//  - node_gpu_ids(): the GPUs' indices on their node (what `troupe gpus`
//    and nvidia-smi list, and what ActorHandle::gpu_ids() returns).
// Elsewhere both are empty.
std::vector<int> visible_gpu_ids();
std::vector<int> node_gpu_ids();
// The id of the actor whose method runs on this thread; the nil ActorId
// (ActorId{}, false as a bool) outside actors.
ActorId current_actor_id() noexcept;
// Inside an actor's constructor or method: which instance of the actor this
// is, 0 for the first and n after n restarts (Ray's restart count as the
// actor sees it; the handle's ActorHandle::restarts() is the same number as
// the caller last heard it). Throws Error(invalid_argument) outside actors.
int actor_incarnation();
// Inside an actor method: ends the actor once this method returns (Ray's
// ExitActor). exit_actor() itself returns; the method's result is delivered
// as usual. Calls queued behind it and every later call fail with
// ActorDiedError saying the actor exited, and the actor is not restarted,
// whatever its max_restarts. Calls running beside it (max_concurrency > 1)
// fail as calls running when an actor is killed do. In a cluster the
// actor's host process then exits. A method that throws after calling it
// still ends the actor. Throws Error(invalid_argument) outside an actor
// method (also in a constructor).
void exit_actor();

// Resources of the cluster (local mode: this node) in total and free now.
std::map<std::string, double> cluster_resources();
std::map<std::string, double> available_resources();

// Number of actors not yet dead.
std::size_t live_actors();

// How objects move between this process and others: "ucx: <transports>"
// when the UCX data plane runs (cluster mode), "call plane: <why>" when
// objects fall back to ZeroMQ, "local: in-process" in local mode.
std::string data_plane_info();

}  // namespace troupe
