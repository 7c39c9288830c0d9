// Cluster mode. A driver (TROUPE_ADDRESS set) creates actors through the
// head and calls them directly over the call plane; an actor host (the same
// binary started by a node manager with TROUPE_ACTOR_SPEC) runs one actor
// and serves calls. Both are a ClusterRuntime; a host also has an
// ActorHost.
//
// ClusterRuntime is the composition root: it owns the thread pool and the
// parts, wires them together, and answers the public API (Backend):
//   head_client     RPCs to the head (control channel)
//   remote_actor    per-actor submitter (outbox), behind CallSender
//   outbound_calls  calls and fetches in flight from this process
//   object_table    objects this process serves, loans, releases
//   object_transfer inline-or-descriptor rule, data plane, fetches
//   call_server     inbound call-plane messages, replies
//   actor_host      start-up and life of an actor host
// The sockets themselves belong to transport (channels.hpp).
//
// Contract: Backend methods may be called from any thread; the head's
// pushes arrive on the control channel's thread; call-plane messages and
// the 20 ms tick (release batches, fetch deadlines) run on pool threads.
// shutdown() fails what is in flight with `cancelled`, kills the actors
// this driver owns, and stops every thread; it is idempotent.
#pragma once

#include <atomic>
#include <chrono>
#include <map>
#include <set>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "backend.hpp"
#include "call_sender.hpp"
#include "troupe/transport/schema/control.capnp.h"
#include "wire_util.hpp"

namespace troupe::transport {
class CallPlane;
}

namespace troupe::detail {

class ActorHost;
class CallServer;
class DeadlineQueue;
class HeadClient;
class ObjectTable;
class ObjectTransfer;
class OutboundCalls;
class RemoteActor;

class ClusterRuntime final : public Backend, public CallSender, public std::enable_shared_from_this<ClusterRuntime> {
 public:
  struct Config {
    std::string head_address;   // IP:PORT
    bool actor_host = false;
    std::string spec_path;      // actor host: TROUPE_ACTOR_SPEC
    int num_threads = 0;
  };
  explicit ClusterRuntime(Config config);
  ~ClusterRuntime() override;

  // Connects, registers (driver) and, for an actor host, constructs the actor
  // and reports it. Throws Error on failure.
  void start();
  // Actor host: serves calls until SIGTERM/SIGINT or parent death; never returns.
  [[noreturn]] void serve_forever();

  ThreadPool& pool() noexcept override { return *pool_; }
  bool running() const noexcept override { return running_.load(); }
  std::shared_ptr<ActorCore> create_actor(const ClassInfo& cls, std::vector<ArgSlot> ctor_args,
                                          ActorOptions options) override;
  std::shared_ptr<ActorCore> find(std::string_view name, std::string_view name_space) override;
  std::shared_ptr<ActorCore> find(const ActorId& id) override;
  PlacementGroup create_group(std::vector<ResourceSpec> bundles, PlacementStrategy strategy,
                              std::string name) override;
  void remove_group(const std::shared_ptr<GroupCore>& group) override;
  std::string group_reason(const GroupCore& group) override;
  std::vector<PlacementGroup> list_groups(std::string_view name) override;
  std::map<std::string, double> total_resources() override;
  std::map<std::string, double> free_resources() override;
  std::size_t live_actor_count() override;
  void shutdown() override;

  // CallSender (for RemoteActor).
  void post(std::function<void()> fn) override;
  void at_deadline(std::chrono::steady_clock::time_point when, const StatePtr& result,
                   std::function<void()> fn) override;
  void send_call(ActorId actor_id, const std::string& address, std::uint32_t incarnation,
                 std::uint64_t seq, CallSpec& spec, bool keep_for_retry) override;
  std::vector<SentCall> take_sent(ActorId actor_id, std::optional<std::uint32_t> below) override;
  void end_loans(const std::vector<ObjectId>& lent) override;
  bool cancel_sent(ActorId actor_id, const std::string& address, const StatePtr& result) override;
  void withdraw_sent(ActorId actor_id, const std::string& address, const StatePtr& result) override;
  void kill_actor(ActorId actor_id, bool no_restart) override;

  std::string data_plane_info() const;
  // The release hook: `id`, held at `location`, is no longer needed here.
  void queue_release(const ObjectId& id, const std::string& location);

 private:
  void on_control_push(wire::ControlMessage::Reader message);
  void tick();
  std::shared_ptr<RemoteActor> actor_for_update(const ActorId& id);
  // Asks the head for an actor by name, or by id when `name` is empty.
  std::shared_ptr<ActorCore> look_up(std::string_view name, std::string_view name_space, ActorId actor_id);
  // The encodings of resolved constructor arguments; an argument's error
  // is thrown as actor_died ("a constructor argument failed: ...").
  static std::vector<std::string> encode_ctor_args(const std::vector<ArgSlot>& ctor_args);

  Config config_;
  std::shared_ptr<ThreadPool> pool_;
  std::shared_ptr<DeadlineQueue> deadlines_;  // call deadlines, on pool_
  std::atomic<bool> running_{true};
  WorkerId worker_id_;
  JobId job_id_;
  std::chrono::milliseconds request_timeout_{10000};
  std::chrono::milliseconds fetch_timeout_{120000};

  // Set up by start(), torn down by shutdown().
  std::unique_ptr<HeadClient> head_;
  std::shared_ptr<transport::CallPlane> calls_;
  std::shared_ptr<ObjectTable> table_;
  std::shared_ptr<ObjectTransfer> transfer_;
  std::shared_ptr<OutboundCalls> outbound_;
  std::shared_ptr<CallServer> server_;
  std::shared_ptr<ActorHost> host_;  // actor hosts only

  // Guards actors_ and groups_ (and GroupCore's fields). Never held while a
  // RemoteActor is called (its state(), on_update(), ...): copy, then call.
  std::mutex mutex_;
  std::map<ActorId, std::shared_ptr<RemoteActor>> actors_;
  std::set<ActorId> deferred_;  // created here, not yet told to the head (a constructor argument is pending)
  std::map<PlacementGroupId, std::shared_ptr<GroupCore>> groups_;
};

}  // namespace troupe::detail
