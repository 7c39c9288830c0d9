// Cluster mode. A driver (TROUPE_ADDRESS set) creates actors through the
// head and calls them directly over the call plane; an actor host (the same
// binary started by a node manager with TROUPE_ACTOR_SPEC) runs one actor
// and serves calls. Both are a ClusterRuntime; a host also holds its actor.
#pragma once

#include <chrono>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "backend.hpp"
#include "net.hpp"

namespace troupe::transport {
class DataPlane;
struct ObjectBuffer;
}

namespace troupe::detail {

class LocalRuntime;
class LocalActor;
class ClusterRuntime;

struct Id128 {
  std::uint64_t hi = 0, lo = 0;
  std::string hex() const;
  friend bool operator==(const Id128&, const Id128&) = default;
  friend bool operator<(const Id128& a, const Id128& b) { return a.hi != b.hi ? a.hi < b.hi : a.lo < b.lo; }
};

class RemoteActor final : public ActorCore, public std::enable_shared_from_this<RemoteActor> {
 public:
  RemoteActor(ClusterRuntime& runtime, std::uint64_t id, const ClassInfo& cls, std::string name, bool owned);
  std::uint64_t id() const noexcept override { return id_; }
  const std::string& name() const noexcept override { return name_; }
  const ClassInfo& cls() const noexcept override { return cls_; }
  ActorState state() const override;
  std::string status_message() const override;
  int restarts() const override;
  std::vector<int> gpu_ids() const override;
  void submit(CallSpec call) override;
  void kill(bool no_restart) override;

  // From the head (control thread).
  void on_update(ActorState state, std::string address, std::uint32_t incarnation, std::string reason);
  bool owned() const noexcept { return owned_; }
  void set_gpus(std::vector<int> gpus);
  // The canceller of a call's result: withdraws it from the outbox (true),
  // or asks the host to withdraw it (false: the reply says how it ended).
  bool cancel(const StatePtr& result);

 private:
  struct Outgoing {
    CallSpec spec;
    std::uint64_t seq = 0;
  };
  void pump();
  bool ready_to_send(const Outgoing& out) const;
  void fail_all_locked(std::vector<StatePtr>& failed);

  ClusterRuntime& runtime_;
  const std::uint64_t id_;
  const ClassInfo& cls_;
  const std::string name_;
  const bool owned_;
  mutable std::mutex mutex_;
  ActorState state_ = ActorState::pending;
  std::string status_ = "pending";
  std::string address_;
  std::uint32_t incarnation_ = 0;
  int restarts_ = 0;
  std::vector<int> gpus_;  // indices on its node, as CUDA_VISIBLE_DEVICES there
  std::deque<Outgoing> outbox_;
  std::uint64_t next_seq_ = 0;
};

class ClusterRuntime final : public Backend, public std::enable_shared_from_this<ClusterRuntime> {
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

  ThreadPool& pool() noexcept override { return pool_; }
  bool running() const noexcept override { return running_.load(); }
  std::shared_ptr<ActorCore> create_actor(const ClassInfo& cls, std::vector<ArgSlot> ctor_args,
                                          ActorOptions options) override;
  std::shared_ptr<ActorCore> find(std::string_view name) override;
  std::shared_ptr<ActorCore> find(std::uint64_t id) override;
  PlacementGroup create_group(std::vector<ResourceSpec> bundles, PlacementStrategy strategy,
                              std::string name) override;
  void remove_group(const std::shared_ptr<GroupCore>& group) override;
  std::string group_reason(const GroupCore& group) override;
  std::map<std::string, double> total_resources() override;
  std::map<std::string, double> free_resources() override;
  std::size_t live_actor_count() override;
  void shutdown() override;

  // Used by RemoteActor.
  void send_call(std::uint64_t actor_id, const std::string& address, std::uint32_t incarnation,
                 std::uint64_t seq, CallSpec& spec);
  void kill_actor(std::uint64_t actor_id, bool no_restart);
  // Sends a cancel for a call already sent (no-op once it was answered).
  void cancel_sent(std::uint64_t actor_id, const std::string& address, const StatePtr& result);
  const std::string& call_address() const noexcept { return calls_->address(); }
  // Fetches an object held by another process (blocking, bounded): an
  // EncodedValue, or a TypedValue<Tensor> whose storage is the received
  // buffer itself. nullptr for a void result.
  ValuePtr fetch_value(const Id128& id, const std::string& location);
  // Remembers the data-plane (UCX worker) address of the process whose call
  // plane is at `call_address`.
  void note_data_address(const std::string& call_address, std::string data_address);
  std::string data_plane_info() const;
  void queue_release(const ObjectId& id, const std::string& location);

 private:
  struct Inflight {
    StatePtr result;
    // Objects passed by descriptor: kept (not released) until the callee
    // has answered, since it fetches them before it runs.
    std::vector<StatePtr> borrowed;
    // Objects of this process lent to the callee (ObjectRef parameters):
    // served from table_ until the callee has answered.
    std::vector<Id128> lent;
    std::uint64_t actor_id = 0;  // 0 for fetches
    std::chrono::steady_clock::time_point deadline = std::chrono::steady_clock::time_point::max();
  };

  void on_control_push(wire::ControlMessage::Reader message);
  void on_call_message(transport::ReceivedMessage& message);
  void dispatch_call_message(wire::CallMessage::Reader message);
  void on_reply(wire::CallReply::Reader reply);
  void on_request(wire::CallRequest::Reader request);
  void serve_fetch(wire::CallRequest::Reader request);
  void reply_to(const std::string& address, std::uint64_t call_id, std::uint64_t actor_id, const StatePtr& result,
                bool allow_ref);
  StatePtr resolve_descriptor(wire::ObjectDescriptor::Reader descriptor);
  StatePtr fetch_async(const Id128& id, const std::string& location);
  // Over UCX: the object's envelope, then (for a tensor) its bytes.
  StatePtr fetch_over_data_plane(const Id128& id, const std::string& data_address);
  void on_envelope(const Id128& id, const std::string& data_address, const StatePtr& state,
                   transport::ObjectBuffer& buffer);
  // Holder side: makes a finished result fetchable over UCX.
  void publish(const Id128& id, const StatePtr& result);
  // ObjectRef parameters. Caller side: describes `ref` for the callee,
  // lending it from table_ when only this process can serve it.
  void describe_passed_ref(wire::ObjectDescriptor::Builder descriptor, const StatePtr& ref,
                           std::vector<StatePtr>& borrowed, std::vector<Id128>& lent);
  // Ends the loans of a call that was answered, failed or never sent.
  void end_loans_locked(const std::vector<Id128>& lent);
  std::string data_address_of(const std::string& call_address);
  void start_data_plane();
  void tick();
  std::map<std::string, double> cluster_totals(bool available);
  void register_driver();
  void start_host();
  std::shared_ptr<RemoteActor> actor_for_update(std::uint64_t id);
  // Asks the head for an actor by name, or by id when `name` is empty.
  std::shared_ptr<ActorCore> look_up(std::string_view name, std::uint64_t actor_id);

  Config config_;
  ThreadPool pool_;
  std::atomic<bool> running_{true};
  Id128 worker_id_;
  Id128 job_id_;
  Id128 node_id_;
  std::unique_ptr<ControlChannel> control_;
  std::unique_ptr<CallPlane> calls_;
  // UCX data plane for object bytes; null when UCX could not start (or
  // TROUPE_DATA_PLANE=zmq), and then objects move as `__fetch` calls.
  std::shared_ptr<transport::DataPlane> data_;
  std::unordered_map<std::string, std::string> data_addresses_;  // call address -> UCX address
  std::string data_fallback_reason_;
  std::chrono::milliseconds request_timeout_{10000};
  std::chrono::milliseconds fetch_timeout_{120000};

  std::mutex mutex_;
  std::unordered_map<std::uint64_t, Inflight> inflight_;
  std::size_t fetches_in_flight_ = 0;  // entries of inflight_ with a deadline
  std::atomic<std::uint64_t> next_call_{1};
  std::map<std::uint64_t, std::shared_ptr<RemoteActor>> actors_;
  std::map<std::string, std::vector<Id128>> releases_;
  std::map<std::uint64_t, std::shared_ptr<GroupCore>> groups_;
  std::uint64_t heartbeat_seq_ = 0;

  // Actor host only.
  std::shared_ptr<LocalRuntime> host_runtime_;
  std::shared_ptr<LocalActor> hosted_;
  Id128 hosted_id_;
  std::uint32_t incarnation_ = 0;
  // Results held here, by id (actor hosts), and objects lent to callees.
  std::map<Id128, StatePtr> table_;
  std::map<Id128, std::vector<StatePtr>> wanted_;          // fetched before produced
  std::map<Id128, int> loans_;                             // table_ entries lent to callees: count
};

}  // namespace troupe::detail
