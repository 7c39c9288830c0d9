#include "head.hpp"

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <fstream>
#include <functional>
#include <map>
#include <optional>
#include <set>
#include <vector>

#include <capnp/message.h>
#include <capnp/serialize.h>
#include <zmq.hpp>

#include "cli_error.hpp"
#include "control_client.hpp"
#include "process.hpp"
#include "session.hpp"
#include "troupe/runtime/logging.hpp"
#include "troupe/scheduler/gpu_spec.hpp"
#include "troupe/scheduler/placement.hpp"
#include "troupe/scheduler/placement_group.hpp"
#include "troupe/scheduler/resources.hpp"
#include "troupe/scheduler/wire_gpu.hpp"
#include "troupe/transport/content_hash.hpp"
#include "troupe/transport/framing.hpp"
#include "troupe/transport/schema/control.capnp.h"

namespace troupe::cli {
namespace {

using Clock = std::chrono::steady_clock;
using wire::ActorState;
using wire::ControlMessage;
using wire::JobState;
using wire::PlacementGroupState;

// ErrorInfo codes (numerically troupe::Errc).
constexpr std::uint16_t kOk = 0;
constexpr std::uint16_t kActorDied = 2;
constexpr std::uint16_t kNodeLost = 5;
constexpr std::uint16_t kInvalidArgument = 7;
constexpr std::uint16_t kNotFound = 8;
constexpr std::uint16_t kUnschedulable = 10;
constexpr std::uint16_t kProtocol = 12;
constexpr std::uint16_t kInternal = 16;

constexpr std::size_t kMaxLogChunk = std::size_t{1} << 20;
constexpr auto kStopGrace = std::chrono::seconds(5);

// A request the head cannot serve, answered with `error {code, message}`.
struct RequestError : std::runtime_error {
  RequestError(std::uint16_t code, std::string message)
      : std::runtime_error(std::move(message)), code(code) {}
  std::uint16_t code;
};

scheduler::ResourceSet resources_from_wire(capnp::List<wire::Resource>::Reader list) {
  scheduler::ResourceSet set;
  for (auto resource : list) {
    try {
      set.set(resource.getName().cStr(), set.get(resource.getName().cStr()) + resource.getAmount());
    } catch (const scheduler::SpecError& error) {
      throw RequestError(kInvalidArgument, error.what());
    }
  }
  return set;
}

void resources_to_wire(capnp::List<wire::Resource>::Builder list,
                       const scheduler::ResourceSet& set) {
  unsigned i = 0;
  for (const auto& [name, amount] : set.amounts()) {
    list[i].setName(name);
    list[i].setAmount(amount);
    ++i;
  }
}

struct NodeEntry {
  Id128 id;
  std::string identity;
  std::unique_ptr<capnp::MallocMessageBuilder> registration;  // RegisterNode
  scheduler::NodeState state;
  bool alive = true;
  Clock::time_point last_heartbeat;

  NodeEntry(Id128 id, scheduler::NodeState state) : id(id), state(std::move(state)) {}
  wire::RegisterNode::Reader info() { return registration->getRoot<wire::RegisterNode>(); }
};

struct ActorEntry {
  Id128 id;
  std::unique_ptr<capnp::MallocMessageBuilder> spec;  // CreateActor
  scheduler::ResourceRequest request;
  ActorState state = ActorState::PENDING;
  std::uint16_t reason_code = kOk;
  std::string reason;
  bool placed = false;           // startActor sent for the current incarnation
  bool holds_resources = false;
  Id128 node;
  std::vector<int> gpus;
  scheduler::ResourceSet amounts;
  int bundle = -1;               // bundle of its placement group that holds the resources
  std::uint32_t incarnation = 0;
  int restarts_used = 0;
  std::string address;
  std::string data_address;
  std::string owner_identity;
  std::set<std::string> watchers;  // other processes that looked it up: they get its updates too
  Id128 owner;
  Id128 job;
  Id128 group;
  std::string binary_hash;
  bool no_restart = false;       // a kill with noRestart, or a failed constructor

  wire::CreateActor::Reader create() { return spec->getRoot<wire::CreateActor>(); }
};

struct DriverEntry {
  Id128 worker;
  std::string identity;
  Id128 job;
  std::string binary_hash;
  Clock::time_point last_heartbeat;
  bool alive = true;
};

struct JobEntry {
  Id128 id;
  std::string name;
  JobState state = JobState::PENDING;
  pid_t pid = 0;
  int exit_code = 0;
  std::uint16_t error_code = kOk;
  std::string error;
  std::filesystem::path log_path;
  std::string binary_hash;
  bool stop_requested = false;
  bool killed = false;
  Clock::time_point kill_deadline;
  bool head_started = false;  // false: an interactive driver that registered by itself
};

struct GroupEntry {
  Id128 id;
  Id128 job;
  std::string name;
  std::string owner_identity;
  std::vector<scheduler::Bundle> bundles;
  scheduler::Strategy strategy = scheduler::Strategy::PACK;
  PlacementGroupState state = PlacementGroupState::PENDING;
  std::uint16_t reason_code = kOk;
  std::string reason;
  std::vector<Id128> bundle_nodes;
  std::vector<scheduler::BundlePlacement> placements;
  // One NodeState per reserved bundle: actors of the group are placed inside
  // these exactly as ordinary actors are placed on nodes.
  std::vector<scheduler::NodeState> bundle_states;
  // Bundles whose node was lost, waiting to be reserved again elsewhere (as
  // Ray does); their bundle_nodes entry is zero meanwhile. The group stays
  // CREATED: its other bundles and their actors are untouched.
  std::vector<int> lost_bundles;
};

}  // namespace

struct Head::Impl {
  HeadConfig config;
  zmq::socket_t router{zmq_context(), zmq::socket_type::router};
  std::string bound_address;
  std::uint64_t next_request_id = 1;
  std::map<std::uint64_t, Id128> start_requests;  // our startActor request -> actor

  std::vector<std::unique_ptr<NodeEntry>> nodes;
  std::map<Id128, ActorEntry> actors;
  std::vector<Id128> actor_order;
  std::map<std::pair<Id128, std::string>, Id128> actor_names;
  std::map<Id128, DriverEntry> drivers;
  std::map<Id128, JobEntry> jobs;
  std::vector<Id128> job_order;
  std::map<Id128, GroupEntry> groups;
  std::vector<Id128> group_order;
  bool schedule_needed = false;

  explicit Impl(HeadConfig c) : config(std::move(c)) {}

  std::chrono::milliseconds node_timeout() const {
    return std::chrono::milliseconds(config.heartbeat_ms * config.heartbeat_misses);
  }

  // --- sending -----------------------------------------------------------------

  void send_to(const std::string& identity, capnp::MallocMessageBuilder& message) {
    try {
      transport::send_routed(router, identity, message, zmq::send_flags::dontwait);
    } catch (const transport::TransportError& error) {
      TROUPE_LOG_WARN("head: cannot send to {}: {}", identity, error.what());
    }
  }

  void reply_ack(const std::string& identity, std::uint64_t request_id) {
    if (request_id == 0) return;
    capnp::MallocMessageBuilder message;
    auto root = message.initRoot<ControlMessage>();
    root.setRequestId(request_id);
    root.setAck();
    send_to(identity, message);
  }

  void reply_error(const std::string& identity, std::uint64_t request_id, std::uint16_t code,
                   const std::string& text) {
    capnp::MallocMessageBuilder message;
    auto root = message.initRoot<ControlMessage>();
    root.setRequestId(request_id);
    auto error = root.initError();
    error.setCode(code);
    error.setMessage(text);
    send_to(identity, message);
  }

  // --- lookups -----------------------------------------------------------------

  NodeEntry* find_node(const Id128& id) {
    for (auto& node : nodes) {
      if (node->id == id) return node.get();
    }
    return nullptr;
  }

  ActorEntry& actor_or_throw(const Id128& id) {
    auto it = actors.find(id);
    if (it == actors.end()) throw RequestError(kNotFound, "no actor " + id.hex());
    return it->second;
  }

  JobEntry& job_or_throw(const Id128& id) {
    auto it = jobs.find(id);
    if (it == jobs.end()) throw RequestError(kNotFound, "no job " + id.hex());
    return it->second;
  }

  std::filesystem::path binary_path(const std::string& hash) const {
    return config.session_dir / "binaries" / hash;
  }

  void store_binary(const std::string& hash, kj::ArrayPtr<const kj::byte> data) {
    if (!transport::valid_hash_name(hash)) throw RequestError(kInvalidArgument, "bad binary hash \"" + hash + "\"");
    auto path = binary_path(hash);
    if (std::filesystem::exists(path)) return;
    write_file_atomic(path, std::string(reinterpret_cast<const char*>(data.begin()), data.size()),
                      0755);
  }

  // --- actor updates ---------------------------------------------------------------

  void fill_actor_update(wire::ActorUpdate::Builder update, ActorEntry& actor) {
    set_id(update.initActorId(), actor.id);
    update.setState(actor.state);
    set_id(update.initNodeId(), actor.placed || actor.state == ActorState::ALIVE ? actor.node : Id128{});
    update.setAddress(actor.address);
    update.setDataAddress(kj::arrayPtr(reinterpret_cast<const kj::byte*>(actor.data_address.data()),
                                       actor.data_address.size()));
    update.setIncarnation(actor.incarnation);
    update.setClassName(actor.create().getClassName());
    update.setName(actor.create().getName());
    auto gpus = update.initGpuIndices(static_cast<unsigned>(actor.gpus.size()));
    for (unsigned i = 0; i < actor.gpus.size(); ++i) gpus.set(i, static_cast<std::uint32_t>(actor.gpus[i]));
    auto reason = update.initReason();
    reason.setCode(actor.reason_code);
    reason.setMessage(actor.reason);
  }

  // The owner and every process that looked the actor up learn each change
  // (a caller that is not the owner must see the actor die, or its calls
  // would wait forever). The router drops what is sent to a process that is
  // gone; a dead actor has nothing more to say, so its watchers are dropped.
  void notify_watchers(ActorEntry& actor) {
    if (actor.owner_identity.empty() && actor.watchers.empty()) return;
    capnp::MallocMessageBuilder message;
    auto root = message.initRoot<ControlMessage>();
    root.setRequestId(0);
    fill_actor_update(root.initActorUpdate(), actor);
    if (!actor.owner_identity.empty()) send_to(actor.owner_identity, message);
    for (const auto& watcher : actor.watchers) send_to(watcher, message);
    if (actor.state == ActorState::DEAD) actor.watchers.clear();
  }

  void set_actor_state(ActorEntry& actor, ActorState state, std::uint16_t code, std::string reason) {
    bool changed = actor.state != state || actor.reason != reason || actor.reason_code != code;
    actor.state = state;
    actor.reason_code = code;
    actor.reason = std::move(reason);
    if (state == ActorState::DEAD) {
      auto name = std::string(actor.create().getName().cStr());
      if (!name.empty()) {
        auto it = actor_names.find({actor.job, name});
        if (it != actor_names.end() && it->second == actor.id) actor_names.erase(it);
      }
    }
    if (changed) {
      TROUPE_LOG_INFO("head: actor {} ({}) -> {} {}", actor.id.short_hex(),
                      actor.create().getClassName().cStr(), static_cast<int>(state), actor.reason);
      notify_watchers(actor);
    }
  }

  void release_actor_resources(ActorEntry& actor) {
    if (!actor.holds_resources) return;
    actor.holds_resources = false;
    if (actor.bundle == -2) return;  // its group was removed with the whole reservation
    try {
      if (actor.bundle >= 0) {
        auto it = groups.find(actor.group);
        if (it != groups.end() && actor.bundle < static_cast<int>(it->second.bundle_states.size())) {
          it->second.bundle_states[actor.bundle].release(actor.amounts, actor.gpus);
        }
      } else if (NodeEntry* node = find_node(actor.node)) {
        node->state.release(actor.amounts, actor.gpus);
      }
    } catch (const std::exception& error) {
      TROUPE_LOG_ERROR("head: releasing actor {}: {}", actor.id.hex(), error.what());
    }
    schedule_needed = true;
  }

  void send_kill_to_node(ActorEntry& actor) {
    NodeEntry* node = find_node(actor.node);
    if (node == nullptr || !node->alive) return;
    capnp::MallocMessageBuilder message;
    auto root = message.initRoot<ControlMessage>();
    root.setRequestId(next_request_id++);
    auto kill = root.initKillActor();
    set_id(kill.initActorId(), actor.id);
    kill.setNoRestart(true);
    send_to(node->identity, message);
  }

  bool owner_alive(const ActorEntry& actor) const {
    auto job_it = jobs.find(actor.job);
    if (job_it != jobs.end()) {
      auto state = job_it->second.state;
      if (state != JobState::PENDING && state != JobState::RUNNING) return false;
    }
    auto driver_it = drivers.find(actor.owner);
    return driver_it == drivers.end() || driver_it->second.alive;
  }

  // The actor's process is gone (exited, killed, its node lost, or it never
  // started): restart it if it may, else it is dead.
  void actor_exited(ActorEntry& actor, std::uint16_t code, std::string reason) {
    if (actor.state == ActorState::DEAD) return;
    release_actor_resources(actor);
    actor.placed = false;
    actor.address.clear();
    actor.data_address.clear();
    int max_restarts = actor.create().getMaxRestarts();
    bool may_restart = !actor.no_restart && owner_alive(actor) &&
                       (max_restarts < 0 || actor.restarts_used < max_restarts);
    if (may_restart) {
      ++actor.restarts_used;
      ++actor.incarnation;
      set_actor_state(actor, ActorState::RESTARTING, code, std::move(reason));
      schedule_needed = true;
    } else {
      set_actor_state(actor, ActorState::DEAD, code, std::move(reason));
    }
  }

  // Kills for good: pending actors die at once, placed ones when their node
  // reports the exit.
  void kill_actor(ActorEntry& actor, const std::string& reason) {
    if (actor.state == ActorState::DEAD) return;
    actor.no_restart = true;
    if (actor.placed) {
      actor.reason = reason;
      send_kill_to_node(actor);
      // The node reports the exit; if the node is gone there is nothing to wait for.
      NodeEntry* node = find_node(actor.node);
      if (node == nullptr || !node->alive) actor_exited(actor, kActorDied, reason);
    } else {
      actor_exited(actor, kActorDied, reason);
    }
  }

  void kill_actors_where(const std::function<bool(const ActorEntry&)>& match,
                         const std::string& reason) {
    for (auto& [id, actor] : actors) {
      if (actor.state != ActorState::DEAD && match(actor)) kill_actor(actor, reason);
    }
  }

  // --- scheduling ---------------------------------------------------------------

  void schedule() {
    schedule_needed = false;
    for (const auto& id : group_order) {
      auto& group = groups.at(id);
      if (group.state == PlacementGroupState::PENDING ||
          group.state == PlacementGroupState::INFEASIBLE) {
        try_place_group(group);
      } else if (group.state == PlacementGroupState::CREATED && !group.lost_bundles.empty()) {
        try_replace_lost_bundles(group);
      }
    }
    for (const auto& id : actor_order) {
      auto& actor = actors.at(id);
      if ((actor.state == ActorState::PENDING || actor.state == ActorState::RESTARTING) &&
          !actor.placed) {
        try_place_actor(actor);
      }
    }
  }

  std::vector<NodeEntry*> alive_nodes() {
    std::vector<NodeEntry*> alive;
    for (auto& node : nodes) {
      if (node->alive) alive.push_back(node.get());
    }
    return alive;
  }

  void set_pending_reason(ActorEntry& actor, std::uint16_t code, std::string reason) {
    set_actor_state(actor, actor.state, code, std::move(reason));
  }

  void try_place_actor(ActorEntry& actor) {
    scheduler::PlacementDecision decision;
    NodeEntry* node = nullptr;
    int bundle = -1;
    if (!actor.group.zero()) {
      auto it = groups.find(actor.group);
      if (it == groups.end() || it->second.state == PlacementGroupState::REMOVED) {
        actor.no_restart = true;
        actor_exited(actor, kInvalidArgument, "placement group " + actor.group.hex() + " was removed");
        return;
      }
      auto& group = it->second;
      if (group.state != PlacementGroupState::CREATED) {
        set_pending_reason(actor, kOk, "waiting for placement group " + group.id.short_hex() +
                                           (group.reason.empty() ? "" : " (" + group.reason + ")"));
        return;
      }
      int wanted = actor.create().getBundleIndex();
      std::vector<scheduler::NodeState> candidates;
      std::vector<int> candidate_bundles;
      for (int b = 0; b < static_cast<int>(group.bundle_states.size()); ++b) {
        if (wanted >= 0 && b != wanted) continue;
        NodeEntry* bundle_node = find_node(group.bundle_nodes[b]);
        if (bundle_node == nullptr || !bundle_node->alive) continue;
        candidates.push_back(group.bundle_states[b]);
        candidate_bundles.push_back(b);
      }
      if (candidates.empty() && !group.lost_bundles.empty() &&
          wanted < static_cast<int>(group.bundle_states.size())) {
        set_pending_reason(actor, kOk, "waiting for placement group " + group.id.short_hex() + " (" + group.reason + ")");
        return;
      }
      if (wanted >= static_cast<int>(group.bundle_states.size())) {
        actor.no_restart = true;
        actor_exited(actor, kInvalidArgument,
                     "bundle index " + std::to_string(wanted) + " is out of range for placement group " +
                         group.id.short_hex() + " of " + std::to_string(group.bundles.size()) + " bundles");
        return;
      }
      decision = scheduler::place(candidates, actor.request);
      if (decision.placed()) {
        bundle = candidate_bundles[decision.node];
        group.bundle_states[bundle].allocate(decision.amounts, decision.gpus);
        node = find_node(group.bundle_nodes[bundle]);
      }
    } else {
      auto alive = alive_nodes();
      std::vector<scheduler::NodeState> states;
      for (auto* n : alive) states.push_back(n->state);
      if (alive.empty()) {
        set_pending_reason(actor, kOk, "insufficient: no alive nodes in the cluster");
        return;
      }
      decision = scheduler::place(states, actor.request);
      if (decision.placed()) {
        node = alive[decision.node];
        node->state.allocate(decision.amounts, decision.gpus);
      }
    }
    if (!decision.placed()) {
      set_pending_reason(actor,
                         decision.status == scheduler::PlacementStatus::infeasible ? kUnschedulable : kOk,
                         decision.reason);
      return;
    }
    actor.placed = true;
    actor.holds_resources = true;
    actor.node = node->id;
    actor.gpus = decision.gpus;
    actor.amounts = decision.amounts;
    actor.bundle = bundle;
    std::string where = "starting on node " + node->id.short_hex();
    set_actor_state(actor, actor.state, kOk, where);

    capnp::MallocMessageBuilder message;
    auto root = message.initRoot<ControlMessage>();
    std::uint64_t request_id = next_request_id++;
    root.setRequestId(request_id);
    auto start = root.initStartActor();
    start.setSpec(actor.create());
    start.setIncarnation(actor.incarnation);
    auto gpus = start.initGpuIndices(static_cast<unsigned>(actor.gpus.size()));
    for (unsigned i = 0; i < actor.gpus.size(); ++i) gpus.set(i, static_cast<std::uint32_t>(actor.gpus[i]));
    start.setJobBinaryHash(actor.binary_hash);
    start_requests[request_id] = actor.id;
    send_to(node->identity, message);
  }

  void try_place_group(GroupEntry& group) {
    auto alive = alive_nodes();
    std::vector<scheduler::NodeState> states;
    for (auto* n : alive) states.push_back(n->state);
    scheduler::GroupPlacement placement;
    if (!alive.empty()) {
      placement = scheduler::place_group(states, group.bundles, group.strategy);
    } else {
      placement.status = scheduler::PlacementStatus::insufficient;
      placement.reason = "insufficient: no alive nodes in the cluster";
    }
    if (!placement.placed()) {
      auto state = placement.status == scheduler::PlacementStatus::infeasible
                       ? PlacementGroupState::INFEASIBLE
                       : PlacementGroupState::PENDING;
      if (state != group.state || placement.reason != group.reason) {
        group.state = state;
        group.reason = placement.reason;
        group.reason_code = state == PlacementGroupState::INFEASIBLE ? kUnschedulable : kOk;
        notify_group(group);
      }
      return;
    }
    group.bundle_nodes.clear();
    group.bundle_states.clear();
    group.lost_bundles.clear();
    group.placements = placement.bundles;
    for (std::size_t b = 0; b < placement.bundles.size(); ++b) {
      const auto& bp = placement.bundles[b];
      NodeEntry* node = alive[bp.node];
      group.bundle_nodes.push_back(node->id);
      group.bundle_states.push_back(reserve_bundle(*node, bp));
    }
    group.state = PlacementGroupState::CREATED;
    group.reason.clear();
    group.reason_code = kOk;
    TROUPE_LOG_INFO("head: placement group {} created", group.id.short_hex());
    notify_group(group);
    schedule_needed = true;
  }

  void fill_group_update(wire::PlacementGroupUpdate::Builder update, const GroupEntry& group) {
    set_id(update.initPlacementGroupId(), group.id);
    update.setState(group.state);
    auto nodes_list = update.initBundleNodes(static_cast<unsigned>(group.bundle_nodes.size()));
    for (unsigned i = 0; i < group.bundle_nodes.size(); ++i) set_id(nodes_list[i], group.bundle_nodes[i]);
    auto reason = update.initReason();
    reason.setCode(group.reason_code);
    reason.setMessage(group.reason);
  }

  void notify_group(GroupEntry& group) {
    if (group.owner_identity.empty()) return;
    capnp::MallocMessageBuilder message;
    auto root = message.initRoot<ControlMessage>();
    root.setRequestId(0);
    fill_group_update(root.initPlacementGroupUpdate(), group);
    send_to(group.owner_identity, message);
  }

  // --- nodes ---------------------------------------------------------------------

  void on_register_node(const std::string& identity, std::uint64_t request_id,
                        wire::RegisterNode::Reader reg) {
    if (reg.getProtocolVersion() != wire::PROTOCOL_VERSION) {
      throw RequestError(kProtocol, "protocol version " + std::to_string(reg.getProtocolVersion()) +
                                        " differs from the head's " +
                                        std::to_string(wire::PROTOCOL_VERSION));
    }
    Id128 id = id_of(reg.getNodeId());
    if (id.zero()) throw RequestError(kInvalidArgument, "registerNode without a nodeId");
    scheduler::NodeInfo info;
    info.node_id = id.hex();
    info.address = reg.getAddress().cStr();
    for (auto gpu : reg.getGpus()) info.gpus.push_back(scheduler::gpu_from_wire(gpu));
    info.total = resources_from_wire(reg.getResources());
    try {
      info.total.set(scheduler::kCpu, reg.getNumCpus());
      info.total.set(scheduler::kMemory, static_cast<double>(reg.getMemoryBytes()));
      info.total.set(scheduler::kGpu, static_cast<double>(info.gpus.size()));
    } catch (const scheduler::SpecError& error) {
      throw RequestError(kInvalidArgument, error.what());
    }
    NodeEntry* node = find_node(id);
    if (node != nullptr && node->alive) {
      // A repeated registration (the worker missed our reply): keep the books.
    } else {
      std::unique_ptr<NodeEntry> fresh;
      try {
        fresh = std::make_unique<NodeEntry>(id, scheduler::NodeState(info));
      } catch (const scheduler::SpecError& error) {
        throw RequestError(kInvalidArgument, error.what());
      }
      if (node != nullptr) {
        auto it = std::find_if(nodes.begin(), nodes.end(), [&](auto& n) { return n.get() == node; });
        *it = std::move(fresh);
        node = it->get();
      } else {
        nodes.push_back(std::move(fresh));
        node = nodes.back().get();
      }
      TROUPE_LOG_INFO("head: node {} registered from {} ({} CPUs, GPUs: {})", id.short_hex(),
                      info.address, reg.getNumCpus(),
                      info.gpus.empty() ? std::string("none") : scheduler::format_gpu_spec(info.gpus));
    }
    node->identity = identity;
    node->registration = std::make_unique<capnp::MallocMessageBuilder>();
    node->registration->setRoot(reg);
    node->alive = true;
    node->last_heartbeat = Clock::now();
    schedule_needed = true;

    capnp::MallocMessageBuilder message;
    auto root = message.initRoot<ControlMessage>();
    root.setRequestId(request_id);
    auto reply = root.initRegisterNodeReply();
    set_id(reply.initHeadNodeId(), config.head_node_id);
    reply.setHeartbeatIntervalMs(config.heartbeat_ms);
    reply.setNodeTimeoutMs(static_cast<std::uint32_t>(node_timeout().count()));
    send_to(identity, message);
  }

  void on_heartbeat(const std::string& identity, std::uint64_t request_id,
                    wire::Heartbeat::Reader heartbeat) {
    Id128 id = id_of(heartbeat.getNodeId());
    NodeEntry* node = find_node(id);
    bool known = node != nullptr && node->alive;
    if (known) {
      node->last_heartbeat = Clock::now();
      node->identity = identity;
      // Actor hosts the head does not account for on this node (left over
      // from before a head restart, or killed while the node was away).
      for (auto status : heartbeat.getActors()) {
        Id128 actor_id = id_of(status.getActorId());
        auto it = actors.find(actor_id);
        bool orphan = it == actors.end() || it->second.state == ActorState::DEAD ||
                      !it->second.placed || it->second.node != id ||
                      it->second.incarnation != status.getIncarnation();
        if (orphan) {
          capnp::MallocMessageBuilder message;
          auto root = message.initRoot<ControlMessage>();
          root.setRequestId(next_request_id++);
          auto kill = root.initKillActor();
          set_id(kill.initActorId(), actor_id);
          kill.setNoRestart(true);
          send_to(identity, message);
        }
      }
    }
    capnp::MallocMessageBuilder message;
    auto root = message.initRoot<ControlMessage>();
    root.setRequestId(request_id);
    auto ack = root.initHeartbeatAck();
    ack.setSeq(heartbeat.getSeq());
    ack.setReregister(!known);
    send_to(identity, message);
  }

  void node_lost(NodeEntry& node, const std::string& why) {
    node.alive = false;
    TROUPE_LOG_WARN("head: node {} lost: {}", node.id.short_hex(), why);
    for (auto& [id, actor] : actors) {
      if (actor.state == ActorState::DEAD || !actor.placed || actor.node != node.id) continue;
      actor_exited(actor, kNodeLost, "node " + node.id.short_hex() + " was lost: " + why);
    }
    lose_bundles_on(node.id);
    schedule_needed = true;
  }

  // --- actors --------------------------------------------------------------------

  void on_create_actor(const std::string& identity, std::uint64_t request_id,
                       wire::CreateActor::Reader create) {
    Id128 id = id_of(create.getActorId());
    if (id.zero()) throw RequestError(kInvalidArgument, "createActor without an actorId");
    if (actors.count(id) != 0) {
      reply_ack(identity, request_id);  // a retried request
      return;
    }
    ActorEntry actor;
    actor.id = id;
    actor.spec = std::make_unique<capnp::MallocMessageBuilder>();
    actor.spec->setRoot(create);
    actor.job = id_of(create.getJobId());
    actor.owner = id_of(create.getOwnerId());
    actor.group = id_of(create.getPlacementGroupId());
    actor.owner_identity = identity;
    try {
      scheduler::ResourceRequest request;
      request.amounts = resources_from_wire(create.getResources());
      request.gpu_type = create.getGpuType().cStr();
      request.gpu_memory_bytes = create.getGpuMemoryBytes();
      actor.request = scheduler::normalize(request);
    } catch (const scheduler::SpecError& error) {
      throw RequestError(kInvalidArgument, error.what());
    }
    if (!actor.group.zero() && groups.count(actor.group) == 0) {
      throw RequestError(kNotFound, "no placement group " + actor.group.hex());
    }
    std::string name = create.getName().cStr();
    if (!name.empty()) {
      if (actor_names.count({actor.job, name}) != 0) {
        throw RequestError(kInvalidArgument, "an actor named \"" + name + "\" already exists in this job");
      }
      actor_names[{actor.job, name}] = id;
    }
    if (auto driver = drivers.find(actor.owner); driver != drivers.end()) {
      actor.binary_hash = driver->second.binary_hash;
    }
    if (actor.binary_hash.empty()) {
      if (auto job = jobs.find(actor.job); job != jobs.end()) actor.binary_hash = job->second.binary_hash;
    }
    actor.reason = "waiting to be scheduled";
    actors.emplace(id, std::move(actor));
    actor_order.push_back(id);
    reply_ack(identity, request_id);
    schedule_needed = true;
  }

  void on_actor_update(const std::string& identity, std::uint64_t request_id,
                       wire::ActorUpdate::Reader update) {
    Id128 id = id_of(update.getActorId());
    auto it = actors.find(id);
    if (it == actors.end()) {
      reply_ack(identity, request_id);
      return;
    }
    ActorEntry& actor = it->second;
    bool from_node = identity.rfind("node-", 0) == 0;
    if (update.getIncarnation() != actor.incarnation || actor.state == ActorState::DEAD) {
      // A report about an earlier incarnation, or about an actor already dead.
      if (update.getState() == ActorState::ALIVE && !from_node) {
        capnp::MallocMessageBuilder message;  // tell the host's node to stop it
        NodeEntry* node = find_node(id_of(update.getNodeId()));
        if (node != nullptr && node->alive) {
          auto root = message.initRoot<ControlMessage>();
          root.setRequestId(next_request_id++);
          auto kill = root.initKillActor();
          set_id(kill.initActorId(), id);
          kill.setNoRestart(true);
          send_to(node->identity, message);
        }
      }
      reply_ack(identity, request_id);
      return;
    }
    switch (update.getState()) {
      case ActorState::ALIVE:
        actor.address = update.getAddress().cStr();
        actor.data_address.assign(reinterpret_cast<const char*>(update.getDataAddress().begin()),
                                  update.getDataAddress().size());
        set_actor_state(actor, ActorState::ALIVE, kOk, "");
        break;
      case ActorState::DEAD:
      case ActorState::RESTARTING: {
        std::uint16_t code = update.getReason().getCode();
        std::string reason = update.getReason().getMessage().cStr();
        if (!from_node) {
          actor.no_restart = true;  // the host itself says it cannot run (constructor failed)
        } else if (actor.no_restart && !actor.reason.empty() && actor.state != ActorState::DEAD) {
          reason = actor.reason + " (" + reason + ")";  // killed on request
        }
        if (reason.empty()) reason = "actor host exited";
        actor_exited(actor, code == kOk ? kActorDied : code, reason);
        break;
      }
      case ActorState::PENDING:
        break;
    }
    reply_ack(identity, request_id);
  }

  void on_kill_actor(const std::string& identity, std::uint64_t request_id,
                     wire::KillActor::Reader kill) {
    ActorEntry& actor = actor_or_throw(id_of(kill.getActorId()));
    if (actor.state != ActorState::DEAD) {
      if (kill.getNoRestart()) {
        kill_actor(actor, "killed by request");
      } else if (actor.placed) {
        actor.reason = "";
        send_kill_to_node(actor);
      }
    }
    reply_ack(identity, request_id);
  }

  void on_get_actor_by_name(const std::string& identity, std::uint64_t request_id,
                            wire::GetActorByName::Reader get) {
    ActorEntry* actor = nullptr;
    if (get.getName().size() == 0) {
      auto it = get.hasActorId() ? actors.find(id_of(get.getActorId())) : actors.end();
      if (it == actors.end()) throw RequestError(kNotFound, "no actor with that id");
      actor = &it->second;
    } else {
      auto it = actor_names.find({id_of(get.getJobId()), std::string(get.getName().cStr())});
      if (it == actor_names.end()) {
        throw RequestError(kNotFound, "no actor named \"" + std::string(get.getName().cStr()) + "\"");
      }
      actor = &actors.at(it->second);
    }
    if (identity != actor->owner_identity && actor->state != ActorState::DEAD) actor->watchers.insert(identity);
    capnp::MallocMessageBuilder message;
    auto root = message.initRoot<ControlMessage>();
    root.setRequestId(request_id);
    fill_actor_update(root.initActorUpdate(), *actor);
    send_to(identity, message);
  }

  // --- placement groups --------------------------------------------------------

  void on_create_group(const std::string& identity, std::uint64_t request_id,
                       wire::CreatePlacementGroup::Reader create) {
    Id128 id = id_of(create.getPlacementGroupId());
    if (id.zero()) throw RequestError(kInvalidArgument, "createPlacementGroup without an id");
    if (groups.count(id) != 0) {
      reply_ack(identity, request_id);
      return;
    }
    GroupEntry group;
    group.id = id;
    group.job = id_of(create.getJobId());
    group.name = create.getName().cStr();
    group.owner_identity = identity;
    if (create.getBundles().size() == 0) throw RequestError(kInvalidArgument, "a placement group needs bundles");
    try {
      for (auto bundle : create.getBundles()) {
        scheduler::Bundle request;
        request.amounts = resources_from_wire(bundle.getResources());
        group.bundles.push_back(scheduler::normalize(request));
      }
    } catch (const scheduler::SpecError& error) {
      throw RequestError(kInvalidArgument, error.what());
    }
    switch (create.getStrategy()) {
      case wire::PlacementStrategy::PACK: group.strategy = scheduler::Strategy::PACK; break;
      case wire::PlacementStrategy::SPREAD: group.strategy = scheduler::Strategy::SPREAD; break;
      case wire::PlacementStrategy::STRICT_PACK: group.strategy = scheduler::Strategy::STRICT_PACK; break;
      case wire::PlacementStrategy::STRICT_SPREAD: group.strategy = scheduler::Strategy::STRICT_SPREAD; break;
    }
    group.reason = "waiting to be scheduled";
    groups.emplace(id, std::move(group));
    group_order.push_back(id);
    reply_ack(identity, request_id);
    schedule_needed = true;
  }

  void on_remove_group(const std::string& identity, std::uint64_t request_id,
                       wire::RemovePlacementGroup::Reader remove) {
    Id128 id = id_of(remove.getPlacementGroupId());
    auto it = groups.find(id);
    if (it == groups.end()) throw RequestError(kNotFound, "no placement group " + id.hex());
    remove_group(it->second);
    reply_ack(identity, request_id);
  }

  // Takes a bundle's resources from its node; returns the NodeState that
  // actors of the bundle are placed into.
  scheduler::NodeState reserve_bundle(NodeEntry& node, const scheduler::BundlePlacement& bp) {
    node.state.allocate(bp.amounts, bp.gpus);
    scheduler::NodeInfo info;
    info.node_id = node.id.hex();
    info.total = bp.amounts;
    for (int index : bp.gpus) {
      int slot = node.state.gpu_slot(index);
      if (slot >= 0) info.gpus.push_back(node.state.gpus()[slot]);
    }
    double gpu_amount = bp.amounts.get(scheduler::kGpu);
    bool fractional = gpu_amount > 0 && gpu_amount < 1;
    info.total.set(scheduler::kGpu, static_cast<double>(info.gpus.size()));
    scheduler::NodeState bundle_state(info);
    if (fractional && !info.gpus.empty()) {
      // Only the reserved share of the GPU is usable inside the bundle.
      scheduler::ResourceSet rest{{scheduler::kGpu, 1.0 - gpu_amount}};
      std::vector<int> gpu{info.gpus[0].index};
      bundle_state.allocate(rest, gpu);
    }
    return bundle_state;
  }

  // A node holding bundles of created groups was lost: those bundles are
  // reserved again on the nodes that remain, under the group's strategy.
  void lose_bundles_on(const Id128& node_id) {
    for (const auto& id : group_order) {
      auto& group = groups.at(id);
      if (group.state != PlacementGroupState::CREATED) continue;
      bool lost = false;
      for (int b = 0; b < static_cast<int>(group.bundle_nodes.size()); ++b) {
        if (group.bundle_nodes[b] != node_id) continue;
        group.bundle_nodes[b] = Id128{};
        group.lost_bundles.push_back(b);
        lost = true;
      }
      if (!lost) continue;
      group.reason = "rescheduling " + std::to_string(group.lost_bundles.size()) + " bundle(s) of lost node " +
                     node_id.short_hex();
      TROUPE_LOG_WARN("head: placement group {}: {}", group.id.short_hex(), group.reason);
      notify_group(group);
      schedule_needed = true;
    }
  }

  void try_replace_lost_bundles(GroupEntry& group) {
    // STRICT_SPREAD keeps every bundle on its own node; STRICT_PACK keeps
    // them on the survivors' node (all of them were lost when there are none).
    std::set<Id128> holding;
    for (const auto& node : group.bundle_nodes)
      if (!node.zero()) holding.insert(node);
    std::vector<NodeEntry*> candidates;
    for (auto* node : alive_nodes()) {
      if (group.strategy == scheduler::Strategy::STRICT_SPREAD && holding.count(node->id)) continue;
      if (group.strategy == scheduler::Strategy::STRICT_PACK && !holding.empty() && !holding.count(node->id))
        continue;
      candidates.push_back(node);
    }
    std::vector<scheduler::Bundle> wanted;
    for (int b : group.lost_bundles) wanted.push_back(group.bundles[b]);
    scheduler::GroupPlacement placement;
    if (!candidates.empty()) {
      std::vector<scheduler::NodeState> states;
      for (auto* node : candidates) states.push_back(node->state);
      placement = scheduler::place_group(states, wanted, group.strategy);
    } else {
      placement.status = scheduler::PlacementStatus::insufficient;
      placement.reason = "no alive node may hold them";
    }
    if (!placement.placed()) {
      std::string reason = "rescheduling " + std::to_string(group.lost_bundles.size()) +
                           " bundle(s) of a lost node: " + placement.reason;
      if (reason != group.reason) {
        group.reason = std::move(reason);
        notify_group(group);
      }
      return;
    }
    for (std::size_t i = 0; i < group.lost_bundles.size(); ++i) {
      const int b = group.lost_bundles[i];
      const auto& bp = placement.bundles[i];
      NodeEntry* node = candidates[bp.node];
      group.bundle_nodes[b] = node->id;
      group.placements[b] = bp;
      group.bundle_states[b] = reserve_bundle(*node, bp);
    }
    TROUPE_LOG_INFO("head: placement group {}: {} lost bundle(s) reserved again", group.id.short_hex(),
                    group.lost_bundles.size());
    group.lost_bundles.clear();
    group.reason.clear();
    notify_group(group);
    schedule_needed = true;
  }

  void remove_group(GroupEntry& group) {
    if (group.state == PlacementGroupState::REMOVED) return;
    kill_actors_where([&](const ActorEntry& a) { return a.group == group.id; },
                      "its placement group was removed");
    if (group.state == PlacementGroupState::CREATED) {
      for (std::size_t b = 0; b < group.placements.size(); ++b) {
        NodeEntry* node = find_node(group.bundle_nodes[b]);
        if (node == nullptr || !node->alive) continue;
        try {
          node->state.release(group.placements[b].amounts, group.placements[b].gpus);
        } catch (const std::exception& error) {
          TROUPE_LOG_ERROR("head: releasing bundle {} of group {}: {}", b, group.id.hex(), error.what());
        }
      }
    }
    // Actors still holding bundle resources release into states we drop now.
    for (auto& [id, actor] : actors) {
      if (actor.group == group.id) actor.bundle = actor.holds_resources ? -2 : -1;
    }
    group.bundle_states.clear();
    group.state = PlacementGroupState::REMOVED;
    group.reason = "removed";
    notify_group(group);
    schedule_needed = true;
  }

  // --- drivers and binaries ------------------------------------------------------

  void on_register_driver(const std::string& identity, std::uint64_t request_id,
                          wire::RegisterDriver::Reader reg) {
    if (reg.getProtocolVersion() != wire::PROTOCOL_VERSION) {
      throw RequestError(kProtocol, "protocol version mismatch (driver " +
                                        std::to_string(reg.getProtocolVersion()) + ", head " +
                                        std::to_string(wire::PROTOCOL_VERSION) + ")");
    }
    std::string hash = reg.getBinaryHash().cStr();
    if (!hash.empty() && !transport::valid_hash_name(hash)) throw RequestError(kInvalidArgument, "bad binary hash \"" + hash + "\"");
    DriverEntry driver;
    driver.worker = id_of(reg.getWorkerId());
    if (driver.worker.zero()) throw RequestError(kInvalidArgument, "registerDriver without a workerId");
    driver.identity = identity;
    driver.job = id_of(reg.getJobId());
    driver.binary_hash = hash;
    driver.last_heartbeat = Clock::now();
    if (driver.job.zero()) driver.job = Id128::random();
    auto job_it = jobs.find(driver.job);
    if (job_it == jobs.end()) {
      JobEntry job;
      job.id = driver.job;
      job.name = "driver pid " + std::to_string(reg.getPid()) + " on " + reg.getHostname().cStr();
      job.state = JobState::RUNNING;
      job.binary_hash = hash;
      jobs.emplace(job.id, std::move(job));
      job_order.push_back(driver.job);
    } else if (job_it->second.binary_hash.empty()) {
      job_it->second.binary_hash = hash;
    }
    drivers[driver.worker] = driver;
    TROUPE_LOG_INFO("head: driver {} registered for job {}", driver.worker.short_hex(), driver.job.short_hex());

    capnp::MallocMessageBuilder message;
    auto root = message.initRoot<ControlMessage>();
    root.setRequestId(request_id);
    auto reply = root.initRegisterDriverReply();
    set_id(reply.initJobId(), driver.job);
    reply.setNeedBinary(!hash.empty() && !std::filesystem::exists(binary_path(hash)));
    reply.setHeartbeatIntervalMs(config.heartbeat_ms);
    reply.setDriverTimeoutMs(static_cast<std::uint32_t>(node_timeout().count()));
    send_to(identity, message);
  }

  void on_driver_heartbeat(const std::string& identity, std::uint64_t request_id,
                           wire::DriverHeartbeat::Reader heartbeat) {
    auto it = drivers.find(id_of(heartbeat.getWorkerId()));
    if (it == drivers.end() || !it->second.alive) {
      throw RequestError(kNotFound, "driver " + id_of(heartbeat.getWorkerId()).hex() +
                                        " is not registered (or timed out): register again");
    }
    // The heartbeat may come from another socket than the registration; the
    // driver stays addressed by the identity it registered with.
    it->second.last_heartbeat = Clock::now();
    reply_ack(identity, request_id);
  }

  void driver_lost(DriverEntry& driver, const std::string& why) {
    driver.alive = false;
    TROUPE_LOG_WARN("head: driver {} lost: {}", driver.worker.short_hex(), why);
    kill_actors_where([&](const ActorEntry& a) { return a.owner == driver.worker; },
                      "its driver went away: " + why);
    auto job = jobs.find(driver.job);
    if (job != jobs.end() && !job->second.head_started && job->second.state == JobState::RUNNING) {
      // Nobody waits on an interactive driver's exit status: it just stopped.
      bool other_alive = std::any_of(drivers.begin(), drivers.end(), [&](const auto& entry) {
        return entry.second.alive && entry.second.job == driver.job;
      });
      if (!other_alive) {
        job->second.state = JobState::STOPPED;
        job->second.error_code = kActorDied;
        job->second.error = "driver went away: " + why;
      }
    }
  }

  void on_upload_binary(const std::string& identity, std::uint64_t request_id,
                        wire::UploadBinary::Reader upload) {
    const std::string hash = upload.getBinaryHash().cStr();
    if (!transport::valid_hash_name(hash)) throw RequestError(kInvalidArgument, "bad binary hash \"" + hash + "\"");
    if (!std::filesystem::exists(binary_path(hash))) {
      auto data = upload.getBinary();
      if (transport::content_hash(std::string_view(reinterpret_cast<const char*>(data.begin()), data.size())) != hash)
        throw RequestError(kInvalidArgument, "binary does not match its hash " + hash);
      store_binary(hash, data);
    }
    reply_ack(identity, request_id);
  }

  void on_fetch_binary(const std::string& identity, std::uint64_t request_id,
                       wire::FetchBinary::Reader fetch) {
    std::string hash = fetch.getBinaryHash().cStr();
    if (!transport::valid_hash_name(hash)) throw RequestError(kInvalidArgument, "bad binary hash \"" + hash + "\"");
    auto data = read_file(binary_path(hash));
    if (!data) throw RequestError(kNotFound, "the head has no binary " + hash);
    capnp::MallocMessageBuilder message;
    auto root = message.initRoot<ControlMessage>();
    root.setRequestId(request_id);
    auto reply = root.initBinaryData();
    reply.setBinaryHash(hash);
    reply.setBinary(kj::arrayPtr(reinterpret_cast<const kj::byte*>(data->data()), data->size()));
    send_to(identity, message);
  }

  // --- jobs ----------------------------------------------------------------------

  void fill_job_update(wire::JobUpdate::Builder update, const JobEntry& job) {
    set_id(update.initJobId(), job.id);
    update.setState(job.state);
    update.setName(job.name);
    set_id(update.initDriverNodeId(), job.head_started ? config.head_node_id : Id128{});
    update.setExitCode(job.exit_code);
    auto error = update.initError();
    error.setCode(job.error_code);
    error.setMessage(job.error);
  }

  void reply_job(const std::string& identity, std::uint64_t request_id, const JobEntry& job) {
    capnp::MallocMessageBuilder message;
    auto root = message.initRoot<ControlMessage>();
    root.setRequestId(request_id);
    fill_job_update(root.initJobUpdate(), job);
    send_to(identity, message);
  }

  void on_submit_job(const std::string& identity, std::uint64_t request_id,
                     wire::SubmitJob::Reader submit) {
    if (submit.getProtocolVersion() != wire::PROTOCOL_VERSION) {
      throw RequestError(kProtocol, "protocol version mismatch (CLI " +
                                        std::to_string(submit.getProtocolVersion()) + ", head " +
                                        std::to_string(wire::PROTOCOL_VERSION) + ")");
    }
    if (submit.getArgv().size() == 0) throw RequestError(kInvalidArgument, "submitJob with an empty argv");
    std::string hash = submit.getBinaryHash().cStr();
    if (!transport::valid_hash_name(hash)) throw RequestError(kInvalidArgument, "bad binary hash \"" + hash + "\"");
    if (submit.getBinary().size() > 0) {
      auto data = submit.getBinary();
      std::string_view bytes(reinterpret_cast<const char*>(data.begin()), data.size());
      if (transport::content_hash(bytes) != hash) {
        throw RequestError(kInvalidArgument, "binary does not match its hash " + hash);
      }
      store_binary(hash, data);
    } else if (!std::filesystem::exists(binary_path(hash))) {
      throw RequestError(kNotFound, "the head has no binary " + hash + "; send it with the job");
    }
    JobEntry job;
    job.id = Id128::random();
    job.name = submit.getName().size() > 0 ? submit.getName().cStr()
                                            : std::filesystem::path(submit.getArgv()[0].cStr()).filename().string();
    job.binary_hash = hash;
    job.head_started = true;
    auto job_dir = config.session_dir / "jobs" / job.id.hex();
    std::filesystem::create_directories(job_dir);
    job.log_path = job_dir / "output.log";
    { std::ofstream touch(job.log_path, std::ios::app); }

    SpawnOptions spawn;
    spawn.program = binary_path(hash).string();
    for (auto arg : submit.getArgv()) spawn.argv.emplace_back(arg.cStr());
    spawn.env = current_environment();
    for (const char* name : {"TROUPE_ACTOR_SPEC", "TROUPE_HEAD_ADDRESS", "TROUPE_NODE_ID", "TROUPE_NODE_IP"}) {
      spawn.env.erase(name);
    }
    for (auto var : submit.getEnv()) spawn.env[var.getName().cStr()] = var.getValue().cStr();
    spawn.env["TROUPE_ADDRESS"] = bound_address;
    spawn.env["TROUPE_JOB_ID"] = job.id.hex();
    spawn.output_path = job.log_path.string();
    spawn.new_process_group = true;
    try {
      job.pid = spawn_process(spawn);
      job.state = JobState::RUNNING;
      TROUPE_LOG_INFO("head: job {} ({}) started as pid {}", job.id.short_hex(), job.name, job.pid);
    } catch (const std::exception& error) {
      job.state = JobState::FAILED;
      job.exit_code = 127;
      job.error_code = kInvalidArgument;
      job.error = error.what();
    }
    Id128 id = job.id;
    jobs.emplace(id, std::move(job));
    job_order.push_back(id);
    reply_job(identity, request_id, jobs.at(id));
  }

  void on_stop_job(const std::string& identity, std::uint64_t request_id, wire::StopJob::Reader stop) {
    JobEntry& job = job_or_throw(id_of(stop.getJobId()));
    if (job.state == JobState::RUNNING || job.state == JobState::PENDING) {
      job.stop_requested = true;
      if (job.head_started && job.pid > 0) {
        ::kill(-job.pid, SIGTERM);
        job.kill_deadline = Clock::now() + kStopGrace;
      } else {
        job.state = JobState::STOPPED;
        job.error = "stopped by request";
        kill_actors_where([&](const ActorEntry& a) { return a.job == job.id; }, "its job was stopped");
      }
    }
    reply_job(identity, request_id, job);
  }

  void on_job_logs(const std::string& identity, std::uint64_t request_id, wire::JobLogs::Reader logs) {
    JobEntry& job = job_or_throw(id_of(logs.getJobId()));
    capnp::MallocMessageBuilder message;
    auto root = message.initRoot<ControlMessage>();
    root.setRequestId(request_id);
    auto reply = root.initJobLogsReply();
    // The state first: once it is final the file is complete, so the data
    // read after it holds everything up to the end.
    fill_job_update(reply.initJob(), job);
    std::size_t limit = logs.getMaxBytes() == 0 ? kMaxLogChunk : std::min<std::size_t>(logs.getMaxBytes(), kMaxLogChunk);
    std::string data;
    std::uint64_t offset = logs.getOffset();
    if (!job.log_path.empty()) {
      std::ifstream in(job.log_path, std::ios::binary);
      if (in) {
        in.seekg(0, std::ios::end);
        auto size = static_cast<std::uint64_t>(in.tellg());
        if (offset < size) {
          std::size_t count = std::min<std::uint64_t>(limit, size - offset);
          data.resize(count);
          in.seekg(static_cast<std::streamoff>(offset));
          in.read(data.data(), static_cast<std::streamsize>(count));
          data.resize(static_cast<std::size_t>(in.gcount()));
        }
      }
    }
    reply.setData(kj::arrayPtr(reinterpret_cast<const kj::byte*>(data.data()), data.size()));
    reply.setNextOffset(offset + data.size());
    send_to(identity, message);
  }

  void reap_jobs() {
    auto now = Clock::now();
    for (auto& [id, job] : jobs) {
      if (!job.head_started || job.pid <= 0 || job.state != JobState::RUNNING) continue;
      if (auto status = try_reap(job.pid)) {
        job.exit_code = exit_code_of(*status);
        ::kill(-job.pid, SIGKILL);  // anything the driver left in its group
        if (job.stop_requested) {
          job.state = JobState::STOPPED;
          job.error_code = kOk;
          job.error = "stopped by request (driver " + describe_wait_status(*status) + ")";
        } else if (job.exit_code == 0) {
          job.state = JobState::SUCCEEDED;
        } else {
          job.state = JobState::FAILED;
          job.error_code = 1;
          job.error = "driver " + describe_wait_status(*status);
        }
        TROUPE_LOG_INFO("head: job {} finished: {}", id.short_hex(), describe_wait_status(*status));
        for (auto& [worker, driver] : drivers) {
          if (driver.job == id) driver.alive = false;
        }
        Id128 job_id = id;
        kill_actors_where([&](const ActorEntry& a) { return a.job == job_id; }, "its job's driver exited");
      } else if (job.stop_requested && !job.killed && now >= job.kill_deadline) {
        ::kill(-job.pid, SIGKILL);
        job.killed = true;
      }
    }
  }

  void stop_all_jobs() {
    std::vector<JobEntry*> running;
    for (auto& [id, job] : jobs) {
      if (job.head_started && job.pid > 0 && job.state == JobState::RUNNING) {
        ::kill(-job.pid, SIGTERM);
        running.push_back(&job);
      }
    }
    auto deadline = Clock::now() + std::chrono::seconds(2);
    while (!running.empty() && Clock::now() < deadline) {
      std::erase_if(running, [](JobEntry* job) { return try_reap(job->pid).has_value(); });
      ::usleep(20000);
    }
    for (JobEntry* job : running) {
      ::kill(-job->pid, SIGKILL);
      ::waitpid(job->pid, nullptr, 0);
    }
  }

  // --- cluster state ---------------------------------------------------------------

  void on_get_cluster_state(const std::string& identity, std::uint64_t request_id,
                            wire::GetClusterState::Reader get) {
    bool include_dead = get.getIncludeDead();
    auto now = Clock::now();
    capnp::MallocMessageBuilder message;
    auto root = message.initRoot<ControlMessage>();
    root.setRequestId(request_id);
    auto state = root.initClusterState();

    std::vector<NodeEntry*> shown_nodes;
    for (auto& node : nodes) {
      if (node->alive || include_dead) shown_nodes.push_back(node.get());
    }
    auto node_list = state.initNodes(static_cast<unsigned>(shown_nodes.size()));
    for (unsigned i = 0; i < shown_nodes.size(); ++i) {
      NodeEntry& node = *shown_nodes[i];
      node_list[i].setNode(node.info());
      node_list[i].setState(node.alive ? wire::NodeState::ALIVE : wire::NodeState::DEAD);
      const auto& available = node.state.available();
      resources_to_wire(node_list[i].initAvailable(static_cast<unsigned>(available.amounts().size())), available);
      node_list[i].setLastHeartbeatAgeMs(static_cast<std::uint64_t>(
          std::chrono::duration_cast<std::chrono::milliseconds>(now - node.last_heartbeat).count()));
    }

    std::vector<ActorEntry*> shown_actors;
    for (const auto& id : actor_order) {
      auto& actor = actors.at(id);
      if (actor.state != ActorState::DEAD || include_dead) shown_actors.push_back(&actor);
    }
    auto actor_list = state.initActors(static_cast<unsigned>(shown_actors.size()));
    for (unsigned i = 0; i < shown_actors.size(); ++i) fill_actor_update(actor_list[i], *shown_actors[i]);

    std::vector<GroupEntry*> shown_groups;
    for (const auto& id : group_order) {
      auto& group = groups.at(id);
      if (group.state != PlacementGroupState::REMOVED || include_dead) shown_groups.push_back(&group);
    }
    auto group_list = state.initPlacementGroups(static_cast<unsigned>(shown_groups.size()));
    for (unsigned i = 0; i < shown_groups.size(); ++i) fill_group_update(group_list[i], *shown_groups[i]);

    auto job_list = state.initJobs(static_cast<unsigned>(job_order.size()));
    for (unsigned i = 0; i < job_order.size(); ++i) fill_job_update(job_list[i], jobs.at(job_order[i]));
    send_to(identity, message);
  }

  // --- dispatch ----------------------------------------------------------------------

  void on_reply_from_node(std::uint64_t request_id, ControlMessage::Reader reader) {
    auto it = start_requests.find(request_id);
    if (it == start_requests.end()) return;
    Id128 actor_id = it->second;
    start_requests.erase(it);
    if (!reader.isError()) return;
    auto actor = actors.find(actor_id);
    if (actor == actors.end()) return;
    actor->second.no_restart = true;
    actor_exited(actor->second, reader.getError().getCode() == kOk ? kActorDied : reader.getError().getCode(),
                 std::string("node could not start it: ") + reader.getError().getMessage().cStr());
  }

  void dispatch(const std::string& identity, transport::ReceivedMessage& received) {
    auto reader = received.root<ControlMessage>();
    std::uint64_t request_id = reader.getRequestId();
    try {
      switch (reader.which()) {
        case ControlMessage::REGISTER_NODE: on_register_node(identity, request_id, reader.getRegisterNode()); break;
        case ControlMessage::HEARTBEAT: on_heartbeat(identity, request_id, reader.getHeartbeat()); break;
        case ControlMessage::CREATE_ACTOR: on_create_actor(identity, request_id, reader.getCreateActor()); break;
        case ControlMessage::ACTOR_UPDATE: on_actor_update(identity, request_id, reader.getActorUpdate()); break;
        case ControlMessage::KILL_ACTOR: on_kill_actor(identity, request_id, reader.getKillActor()); break;
        case ControlMessage::GET_ACTOR_BY_NAME: on_get_actor_by_name(identity, request_id, reader.getGetActorByName()); break;
        case ControlMessage::CREATE_PLACEMENT_GROUP: on_create_group(identity, request_id, reader.getCreatePlacementGroup()); break;
        case ControlMessage::REMOVE_PLACEMENT_GROUP: on_remove_group(identity, request_id, reader.getRemovePlacementGroup()); break;
        case ControlMessage::SUBMIT_JOB: on_submit_job(identity, request_id, reader.getSubmitJob()); break;
        case ControlMessage::STOP_JOB: on_stop_job(identity, request_id, reader.getStopJob()); break;
        case ControlMessage::GET_CLUSTER_STATE: on_get_cluster_state(identity, request_id, reader.getGetClusterState()); break;
        case ControlMessage::REGISTER_DRIVER: on_register_driver(identity, request_id, reader.getRegisterDriver()); break;
        case ControlMessage::UPLOAD_BINARY: on_upload_binary(identity, request_id, reader.getUploadBinary()); break;
        case ControlMessage::FETCH_BINARY: on_fetch_binary(identity, request_id, reader.getFetchBinary()); break;
        case ControlMessage::JOB_LOGS: on_job_logs(identity, request_id, reader.getJobLogs()); break;
        case ControlMessage::DRIVER_HEARTBEAT: on_driver_heartbeat(identity, request_id, reader.getDriverHeartbeat()); break;
        case ControlMessage::ACK:
        case ControlMessage::ERROR:
          on_reply_from_node(request_id, reader);
          break;
        default:
          throw RequestError(kProtocol, "the head does not serve this message type (" +
                                            std::to_string(static_cast<int>(reader.which())) + ")");
      }
    } catch (const RequestError& error) {
      if (request_id != 0) reply_error(identity, request_id, error.code, error.what());
    } catch (const transport::TransportError& error) {
      if (request_id != 0) reply_error(identity, request_id, kProtocol, error.what());
    } catch (const std::exception& error) {
      TROUPE_LOG_ERROR("head: serving a request from {}: {}", identity, error.what());
      if (request_id != 0) reply_error(identity, request_id, kInternal, error.what());
    }
  }

  void check_timeouts() {
    auto now = Clock::now();
    for (auto& node : nodes) {
      if (node->alive && now - node->last_heartbeat > node_timeout()) {
        node_lost(*node, "no heartbeat for " + std::to_string(node_timeout().count()) + " ms");
      }
    }
    for (auto& [id, driver] : drivers) {
      if (driver.alive && now - driver.last_heartbeat > node_timeout()) {
        driver_lost(driver, "no heartbeat for " + std::to_string(node_timeout().count()) + " ms");
      }
    }
  }
};

Head::Head(HeadConfig config) : impl_(std::make_unique<Impl>(std::move(config))) {}
Head::~Head() = default;

void Head::bind() {
  auto& impl = *impl_;
  impl.router.set(zmq::sockopt::linger, 0);
  impl.router.set(zmq::sockopt::router_handover, 1);
  transport::apply_socket_limits(impl.router, {});
  std::string endpoint = "tcp://" + impl.config.node_ip + ":" + std::to_string(impl.config.port);
  try {
    impl.router.bind(endpoint);
  } catch (const zmq::error_t& error) {
    if (error.num() == EADDRINUSE) {
      throw CliError("port " + std::to_string(impl.config.port) + " on " + impl.config.node_ip +
                     " is already in use (another head running? try `troupe stop` or --port)");
    }
    throw CliError("cannot listen on " + endpoint + ": " + error.what());
  }
  std::string last = impl.router.get(zmq::sockopt::last_endpoint);
  auto colon = last.rfind(':');
  impl.bound_address = impl.config.node_ip + ":" + last.substr(colon + 1);
}

std::string Head::address() const { return impl_->bound_address; }

void Head::run(const std::atomic<bool>& stop) {
  auto& impl = *impl_;
  auto last_check = Clock::now();
  const auto check_every = std::chrono::milliseconds(std::max<std::uint32_t>(10, impl.config.heartbeat_ms / 4));
  while (!stop.load()) {
    std::optional<transport::RoutedMessage> routed;
    try {
      routed = transport::recv_routed(impl.router, std::chrono::milliseconds(20));
    } catch (const transport::TransportError& error) {
      TROUPE_LOG_WARN("head: dropped a malformed message: {}", error.what());
    }
    for (int batch = 0; routed; ++batch) {
      impl.dispatch(routed->identity, routed->message);
      routed.reset();
      if (batch >= 256) break;  // let the timers run
      try {
        routed = transport::recv_routed(impl.router, std::chrono::milliseconds(0));
      } catch (const transport::TransportError& error) {
        TROUPE_LOG_WARN("head: dropped a malformed message: {}", error.what());
      }
    }
    auto now = Clock::now();
    if (now - last_check >= check_every) {
      last_check = now;
      impl.check_timeouts();
    }
    impl.reap_jobs();
    if (impl.schedule_needed) impl.schedule();
  }
  impl.stop_all_jobs();
}

}  // namespace troupe::cli
