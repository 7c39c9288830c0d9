#include "actor_directory.hpp"

#include <algorithm>

#include <capnp/serialize.h>

#include "state_store.hpp"

#include "job_manager.hpp"
#include "node_table.hpp"
#include "placement_groups.hpp"
#include "troupe/runtime/logging.hpp"
#include "troupe/transport/internal/membership.hpp"

namespace troupe::head {

namespace {
// Where an actor's name lives (ActorDirectory::names_).
std::string name_scope(const JobId& job, std::string_view actor_namespace) {
  return actor_namespace.empty() ? "job:" + job.hex() : "ns:" + std::string(actor_namespace);
}
}  // namespace

namespace {
// 16 bytes from the CSPRNG (ids are predictable, keys must not be).
std::string random_host_key() { return transport::random_bytes(16); }

bool same_key(kj::ArrayPtr<const kj::byte> given, const std::string& expected) {
  if (expected.empty() || given.size() != expected.size()) return false;
  unsigned char diff = 0;
  for (std::size_t i = 0; i < expected.size(); ++i) diff |= static_cast<unsigned char>(given[i] ^ expected[i]);
  return diff == 0;
}
}  // namespace

using wire::ActorState;
using wire::ControlMessage;
using wire::PlacementGroupState;

ActorEntry& ActorDirectory::actor_or_throw(const ActorId& id) {
  auto it = actors_.find(id);
  if (it == actors_.end()) throw Error(Errc::not_found, "no actor " + id.hex());
  return it->second;
}

// --- actor updates ---------------------------------------------------------------

void ActorDirectory::fill_actor_update(wire::ActorUpdate::Builder update, ActorEntry& actor) {
  to_wire(update.initActorId(), actor.id);
  update.setState(actor.state);
  to_wire(update.initNodeId(), actor.placed || actor.state == ActorState::ALIVE ? actor.node : NodeId{});
  update.setAddress(actor.address);
  update.setDataAddress(kj::arrayPtr(reinterpret_cast<const kj::byte*>(actor.data_address.data()),
                                     actor.data_address.size()));
  update.setIncarnation(actor.incarnation);
  update.setClassName(actor.create().getClassName());
  update.setName(actor.create().getName());
  auto gpus = update.initGpuIndices(static_cast<unsigned>(actor.gpus.size()));
  for (unsigned i = 0; i < actor.gpus.size(); ++i) gpus.set(i, static_cast<std::uint32_t>(actor.gpus[i]));
  auto reason = update.initReason();
  reason.setCode(wire_code(actor.reason_code));
  reason.setMessage(actor.reason);
  update.setMaxTaskRetries(actor.create().getMaxTaskRetries());
  update.setMaxPendingCalls(actor.create().getMaxPendingCalls());
  update.setFailWhenOverloaded(actor.create().getFailWhenOverloaded());
}

// The owner and every process that looked the actor up learn each change
// (a caller that is not the owner must see the actor die, or its calls
// would wait forever). The router drops what is sent to a process that is
// gone; a dead actor has nothing more to say, so its watchers are dropped.
void ActorDirectory::notify_watchers(ActorEntry& actor) {
  if (actor.owner_identity.empty() && actor.watchers.empty()) return;
  capnp::MallocMessageBuilder message;
  auto root = message.initRoot<ControlMessage>();
  root.setRequestId(0);
  fill_actor_update(root.initActorUpdate(), actor);
  if (!actor.owner_identity.empty()) context_.send_to(actor.owner_identity, message);
  for (const auto& watcher : actor.watchers) context_.send_to(watcher, message);
  if (actor.state == ActorState::DEAD) actor.watchers.clear();
}

void ActorDirectory::set_actor_state(ActorEntry& actor, ActorState state, Errc code, std::string reason) {
  context_.touch('a', actor.id.hex());
  if (state == ActorState::DEAD && actor.state != ActorState::DEAD) actor.dead_since = context_.now();
  bool changed = actor.state != state || actor.reason != reason || actor.reason_code != code;
  actor.state = state;
  actor.reason_code = code;
  actor.reason = std::move(reason);
  if (state == ActorState::DEAD) {
    auto name = std::string(actor.create().getName().cStr());
    if (!name.empty()) {
      auto it = names_.find({name_scope(actor.job, actor.create().getActorNamespace().cStr()), name});
      if (it != names_.end() && it->second == actor.id) names_.erase(it);
    }
  }
  if (changed) {
    TROUPE_LOG_INFO("head: actor {} ({}) -> {} {}", actor.id.short_hex(), actor.create().getClassName().cStr(),
                    static_cast<int>(state), actor.reason);
    notify_watchers(actor);
  }
}

void ActorDirectory::set_pending_reason(ActorEntry& actor, Errc code, std::string reason) {
  set_actor_state(actor, actor.state, code, std::move(reason));
}

void ActorDirectory::release_actor_resources(ActorEntry& actor) {
  if (!actor.holds_resources) return;
  actor.holds_resources = false;
  if (actor.bundle == -2) return;  // its group was removed with the whole reservation
  try {
    if (actor.bundle >= 0) {
      GroupEntry* group = groups_.find(actor.group);
      if (group != nullptr && actor.bundle < static_cast<int>(group->bundle_states.size())) {
        group->bundle_states[actor.bundle].release(actor.amounts, actor.gpus);
      }
    } else if (NodeEntry* node = nodes_.find(actor.node)) {
      node->state.release(actor.amounts, actor.gpus);
    }
  } catch (const std::exception& error) {
    TROUPE_LOG_ERROR("head: releasing actor {}: {}", actor.id.hex(), error.what());
  }
  context_.schedule_needed = true;
}

void ActorDirectory::send_kill_to_node(ActorEntry& actor) {
  NodeEntry* node = nodes_.find(actor.node);
  if (node == nullptr || !node->alive) return;
  auto now = context_.now();
  std::uint64_t request_id = context_.send_kill(node->identity, actor.id, actor.incarnation);
  kill_requests_[request_id] = {actor.id, actor.incarnation, node->id, now, now + context_.resend_after(), false};
}

bool ActorDirectory::owner_alive(const ActorEntry& actor) const { return jobs_.owner_alive(actor.job, actor.owner); }

// The actor's process is gone (exited, killed, its node lost, or it never
// started): restart it if it may, else it is dead.
void ActorDirectory::actor_exited(ActorEntry& actor, Errc code, std::string reason) {
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
    context_.schedule_needed = true;
  } else {
    set_actor_state(actor, ActorState::DEAD, code, std::move(reason));
  }
}

// Kills for good: pending actors die at once, placed ones when their node
// reports the exit.
void ActorDirectory::kill_actor(ActorEntry& actor, const std::string& reason) {
  if (actor.state == ActorState::DEAD) return;
  context_.touch('a', actor.id.hex());
  actor.no_restart = true;
  if (actor.placed) {
    actor.reason = reason;
    send_kill_to_node(actor);
    // The node reports the exit; if the node is gone there is nothing to wait for.
    NodeEntry* node = nodes_.find(actor.node);
    if (node == nullptr || !node->alive) actor_exited(actor, Errc::actor_died, reason);
  } else {
    actor_exited(actor, Errc::actor_died, reason);
  }
}

void ActorDirectory::kill_actors_where(const std::function<bool(const ActorEntry&)>& match,
                                       const std::string& reason) {
  for (auto& [id, actor] : actors_) {
    if (actor.state != ActorState::DEAD && match(actor)) kill_actor(actor, reason);
  }
}

void ActorDirectory::detach_group(const PlacementGroupId& group) {
  for (auto& [id, actor] : actors_) {
    if (actor.group != group) continue;
    actor.bundle = actor.holds_resources ? -2 : -1;
    context_.touch('a', id.hex());
  }
}

bool ActorDirectory::accounted_for(const ActorId& actor_id, const NodeId& node, std::uint32_t incarnation) const {
  auto it = actors_.find(actor_id);
  return !(it == actors_.end() || it->second.state == ActorState::DEAD || !it->second.placed ||
           it->second.node != node || it->second.incarnation != incarnation);
}

void ActorDirectory::node_lost(const NodeId& node, const std::string& why) {
  for (auto& [id, actor] : actors_) {
    if (actor.state == ActorState::DEAD || !actor.placed || actor.node != node) continue;
    // Fencing from this side: a host the head can still reach (its node
    // manager stopped, not its network) is told to end before the actor
    // runs anywhere else. A notification: the host's own request ids are
    // not ours.
    if (!actor.host_identity.empty()) context_.send_kill(actor.host_identity, actor.id, actor.incarnation, true);
    actor_exited(actor, Errc::node_lost, "node " + node.short_hex() + " was lost: " + why);
  }
}

// --- placement ------------------------------------------------------------------

void ActorDirectory::place_pending() {
  for (const auto& id : order_) {
    auto& actor = actors_.at(id);
    if ((actor.state == ActorState::PENDING || actor.state == ActorState::RESTARTING) && !actor.placed) {
      try_place_actor(actor);
    }
  }
}

void ActorDirectory::try_place_actor(ActorEntry& actor) {
  scheduler::PlacementDecision decision;
  NodeEntry* node = nullptr;
  int bundle = -1;
  if (!actor.group.nil()) {
    GroupEntry* found = groups_.find(actor.group);
    if (found == nullptr || found->state == PlacementGroupState::REMOVED) {
      actor.no_restart = true;
      actor_exited(actor, Errc::invalid_argument, "placement group " + actor.group.hex() + " was removed");
      return;
    }
    auto& group = *found;
    if (group.state != PlacementGroupState::CREATED) {
      set_pending_reason(actor, Errc::ok, "waiting for placement group " + group.id.short_hex() +
                                              (group.reason.empty() ? "" : " (" + group.reason + ")"));
      return;
    }
    int wanted = actor.create().getBundleIndex();
    std::vector<scheduler::NodeState> candidates;
    std::vector<int> candidate_bundles;
    for (int b = 0; b < static_cast<int>(group.bundle_states.size()); ++b) {
      if (wanted >= 0 && b != wanted) continue;
      NodeEntry* bundle_node = nodes_.find(group.bundle_nodes[b]);
      if (bundle_node == nullptr || !bundle_node->alive) continue;
      candidates.push_back(group.bundle_states[b]);
      candidate_bundles.push_back(b);
    }
    if (candidates.empty() && !group.lost_bundles.empty() && wanted < static_cast<int>(group.bundle_states.size())) {
      set_pending_reason(actor, Errc::ok,
                         "waiting for placement group " + group.id.short_hex() + " (" + group.reason + ")");
      return;
    }
    if (wanted >= static_cast<int>(group.bundle_states.size())) {
      actor.no_restart = true;
      actor_exited(actor, Errc::invalid_argument,
                   "bundle index " + std::to_string(wanted) + " is out of range for placement group " +
                       group.id.short_hex() + " of " + std::to_string(group.bundles.size()) + " bundles");
      return;
    }
    decision = scheduler::place(candidates, actor.request);
    if (decision.placed()) {
      bundle = candidate_bundles[decision.node];
      group.bundle_states[bundle].allocate(decision.amounts, decision.gpus);
      node = nodes_.find(group.bundle_nodes[bundle]);
    }
  } else {
    auto alive = nodes_.alive();
    std::vector<scheduler::NodeState> states;
    for (auto* n : alive) states.push_back(n->state);
    if (alive.empty()) {
      set_pending_reason(actor, Errc::ok, "insufficient: no alive nodes in the cluster");
      return;
    }
    decision = scheduler::place(states, actor.request);
    if (decision.placed()) {
      node = alive[decision.node];
      node->state.allocate(decision.amounts, decision.gpus);
    }
  }
  if (!decision.placed()) {
    bool never = decision.status == scheduler::PlacementStatus::infeasible;
    set_pending_reason(actor, never ? Errc::unschedulable : Errc::ok, decision.reason);
    return;
  }
  actor.placed = true;
  actor.holds_resources = true;
  actor.node = node->id;
  actor.gpus = decision.gpus;
  actor.amounts = decision.amounts;
  actor.bundle = bundle;
  std::string where = "starting on node " + node->id.short_hex();
  set_actor_state(actor, actor.state, Errc::ok, where);

  std::uint64_t request_id = context_.next_request_id++;
  actor.host_keys[actor.incarnation] = random_host_key();
  actor.host_identity.clear();
  auto now = context_.now();
  start_requests_[request_id] = {actor.id, actor.incarnation, node->id, now, now + context_.resend_after(), false};
  send_start(actor, node->identity, request_id);
}

// The startActor of the actor's current placement (the same host key and
// request id when it is sent again).
void ActorDirectory::send_start(ActorEntry& actor, const std::string& node_identity, std::uint64_t request_id) {
  capnp::MallocMessageBuilder message;
  auto root = message.initRoot<ControlMessage>();
  root.setRequestId(request_id);
  auto start = root.initStartActor();
  start.setSpec(actor.create());
  start.setIncarnation(actor.incarnation);
  auto gpus = start.initGpuIndices(static_cast<unsigned>(actor.gpus.size()));
  for (unsigned i = 0; i < actor.gpus.size(); ++i) gpus.set(i, static_cast<std::uint32_t>(actor.gpus[i]));
  start.setJobBinaryHash(actor.binary_hash);
  const std::string& key = actor.host_keys[actor.incarnation];
  start.setHostKey(kj::arrayPtr(reinterpret_cast<const kj::byte*>(key.data()), key.size()));
  context_.send_to(node_identity, message);
}

void ActorDirectory::resend_unacknowledged(Clock::time_point now) {
  const auto start_timeout = std::chrono::milliseconds(context_.config.actor_start_timeout_ms);
  // Starts that timed out are ended after the walk: ending one may restart
  // the actor, which changes start_requests_ under the iterator.
  std::vector<std::pair<ActorId, std::uint32_t>> timed_out;
  std::vector<std::string> timed_out_why;
  for (auto it = start_requests_.begin(); it != start_requests_.end();) {
    auto& sent = it->second;
    auto found = actors_.find(sent.actor);
    NodeEntry* node = nodes_.find(sent.node);
    bool current = found != actors_.end() && found->second.placed && found->second.state != ActorState::DEAD &&
                   found->second.incarnation == sent.incarnation && found->second.node == sent.node &&
                   node != nullptr && node->alive;
    if (!current || found->second.state == ActorState::ALIVE) {
      it = start_requests_.erase(it);  // started, superseded, or its node is lost (node_lost did the rest)
      continue;
    }
    ActorEntry& actor = found->second;
    if (now - sent.sent_at >= start_timeout) {
      std::string why = "did not start within " + std::to_string(start_timeout.count() / 1000) + " s on node " +
                        actor.node.short_hex() + (sent.acked ? "" : " (the node never acknowledged startActor)");
      timed_out.emplace_back(actor.id, actor.incarnation);
      timed_out_why.push_back(std::move(why));
      it = start_requests_.erase(it);
      continue;
    }
    if (!sent.acked && now >= sent.resend_at) {
      sent.resend_at = now + context_.resend_after();
      TROUPE_LOG_INFO("head: no ack for startActor of actor {} from node {}; sending it again",
                      actor.id.short_hex(), node->id.short_hex());
      send_start(actor, node->identity, it->first);
    }
    ++it;
  }
  for (std::size_t i = 0; i < timed_out.size(); ++i) {
    auto found = actors_.find(timed_out[i].first);
    if (found == actors_.end() || found->second.state == ActorState::DEAD ||
        found->second.incarnation != timed_out[i].second)
      continue;
    ActorEntry& actor = found->second;
    TROUPE_LOG_WARN("head: actor {} {}", actor.id.short_hex(), timed_out_why[i]);
    send_kill_to_node(actor);  // a host that comes up late is stopped
    actor_exited(actor, Errc::actor_died, timed_out_why[i]);
  }
  for (auto it = kill_requests_.begin(); it != kill_requests_.end();) {
    auto& sent = it->second;
    NodeEntry* node = nodes_.find(sent.node);
    if (node == nullptr || !node->alive || now - sent.sent_at > context_.node_timeout()) {
      it = kill_requests_.erase(it);  // its node is lost, or it had its time
      continue;
    }
    if (now >= sent.resend_at) {
      sent.resend_at = now + context_.resend_after();
      capnp::MallocMessageBuilder message;
      auto root = message.initRoot<ControlMessage>();
      root.setRequestId(it->first);
      auto kill = root.initKillActor();
      to_wire(kill.initActorId(), sent.actor);
      kill.setNoRestart(true);
      kill.setIncarnation(sent.incarnation);
      context_.send_to(node->identity, message);
    }
    ++it;
  }
}

// --- requests -----------------------------------------------------------------------

void ActorDirectory::on_create_actor(const std::string& identity, std::uint64_t request_id,
                                     wire::CreateActor::Reader create) {
  ActorId id = from_wire<ActorId>(create.getActorId());
  if (id.nil()) throw Error(Errc::invalid_argument, "createActor without an actorId");
  if (actors_.count(id) != 0) {
    context_.reply_ack(identity, request_id);  // a retried request
    return;
  }
  ActorEntry actor;
  actor.id = id;
  actor.spec = std::make_unique<capnp::MallocMessageBuilder>();
  actor.spec->setRoot(create);
  actor.job = from_wire<JobId>(create.getJobId());
  actor.owner = from_wire<WorkerId>(create.getOwnerId());
  actor.group = from_wire<PlacementGroupId>(create.getPlacementGroupId());
  actor.owner_identity = identity;
  scheduler::ResourceRequest request;  // a bad one throws SpecError (invalid_argument)
  request.amounts = resources_from_wire(create.getResources());
  request.gpu_type = create.getGpuType().cStr();
  request.gpu_memory_bytes = create.getGpuMemoryBytes();
  actor.request = scheduler::normalize(request);
  if (!actor.group.nil() && groups_.find(actor.group) == nullptr) {
    throw Error(Errc::not_found, "no placement group " + actor.group.hex());
  }
  std::string name = create.getName().cStr();
  if (!name.empty()) {
    const std::string actor_namespace = create.getActorNamespace().cStr();
    const auto key = std::make_pair(name_scope(actor.job, actor_namespace), name);
    if (names_.count(key) != 0) {
      throw Error(Errc::invalid_argument,
                  "an actor named \"" + name + "\" already exists " +
                      (actor_namespace.empty() ? std::string("in this job") : "in namespace \"" + actor_namespace + "\""));
    }
    names_[key] = id;
  }
  actor.binary_hash = jobs_.binary_hash_for(actor.owner, actor.job);
  actor.reason = "waiting to be scheduled";
  actor.sequence = next_sequence_++;
  context_.touch('a', id.hex());
  actors_.emplace(id, std::move(actor));
  order_.push_back(id);
  context_.reply_ack(identity, request_id);
  context_.schedule_needed = true;
}

void ActorDirectory::on_actor_update(const std::string& identity, std::uint64_t request_id,
                                     wire::ActorUpdate::Reader update) {
  ActorId id = from_wire<ActorId>(update.getActorId());
  auto it = actors_.find(id);
  if (it == actors_.end()) {
    context_.reply_ack(identity, request_id);
    return;
  }
  ActorEntry& actor = it->second;
  // Who speaks: the node manager of the node the actor was placed on, or the
  // host that node started (it presents the key of its incarnation). Nobody
  // else may change an actor's state or address.
  NodeEntry* sender_node = nodes_.by_identity(identity);
  auto key = actor.host_keys.find(update.getIncarnation());
  bool from_host = key != actor.host_keys.end() && same_key(update.getHostKey(), key->second);
  bool from_node = sender_node != nullptr && !from_host;
  if (!from_host && !from_node) {
    throw Error(Errc::permission_denied, "actorUpdate for actor " + id.short_hex() +
                                             " from a process that is neither its node nor its host; refused");
  }
  if (update.getIncarnation() != actor.incarnation || actor.state == ActorState::DEAD) {
    // A report about an earlier incarnation, or about an actor already dead:
    // a host that should not run any more is told to stop.
    if (update.getState() == ActorState::ALIVE && from_host) {
      NodeEntry* node = nodes_.find(from_wire<NodeId>(update.getNodeId()));
      if (node != nullptr && node->alive) context_.send_kill(node->identity, id, update.getIncarnation());
    }
    context_.reply_ack(identity, request_id);
    return;
  }
  if (from_node && (!actor.placed || sender_node->id != actor.node)) {
    throw Error(Errc::permission_denied, "actorUpdate for actor " + id.short_hex() + " from node " +
                                             sender_node->id.short_hex() + ", which does not host it; refused");
  }
  if (from_host) actor.host_identity = identity;
  context_.touch('a', id.hex());
  switch (update.getState()) {
    case ActorState::ALIVE:
      actor.address = update.getAddress().cStr();
      actor.data_address.assign(reinterpret_cast<const char*>(update.getDataAddress().begin()),
                                update.getDataAddress().size());
      set_actor_state(actor, ActorState::ALIVE, Errc::ok, "");
      break;
    case ActorState::DEAD:
    case ActorState::RESTARTING: {
      Errc code = errc_from_wire(update.getReason().getCode());
      std::string reason = update.getReason().getMessage().cStr();
      if (!from_node) {
        actor.no_restart = true;  // the host itself says it cannot run (constructor failed)
      } else if (actor.no_restart && !actor.reason.empty() && actor.state != ActorState::DEAD) {
        reason = actor.reason + " (" + reason + ")";  // killed on request
      }
      if (reason.empty()) reason = "actor host exited";
      actor_exited(actor, code == Errc::ok ? Errc::actor_died : code, reason);
      break;
    }
    case ActorState::PENDING:
      break;
  }
  context_.reply_ack(identity, request_id);
}

void ActorDirectory::on_kill_actor(const std::string& identity, std::uint64_t request_id,
                                   wire::KillActor::Reader kill) {
  ActorEntry& actor = actor_or_throw(from_wire<ActorId>(kill.getActorId()));
  if (identity != actor.owner_identity) {
    if (auto own = job_of_identity(identity); own && *own != actor.job) {
      throw Error(Errc::permission_denied, "actor " + actor.id.short_hex() + " belongs to job " +
                                               actor.job.short_hex() + "; job " + own->short_hex() +
                                               " may kill only its own actors");
    }
  }
  context_.touch('a', actor.id.hex());
  if (actor.state != ActorState::DEAD) {
    if (kill.getNoRestart()) {
      kill_actor(actor, "killed by request");
    } else if (actor.placed) {
      actor.reason = "";
      send_kill_to_node(actor);
    }
  }
  context_.reply_ack(identity, request_id);
}

std::optional<JobId> ActorDirectory::job_of_identity(const std::string& identity) const {
  if (auto job = jobs_.driver_job(identity)) return job;
  for (const auto& [id, actor] : actors_) {
    if (actor.state != ActorState::DEAD && actor.host_identity == identity) return actor.job;
  }
  return std::nullopt;
}

void ActorDirectory::on_get_actor_by_name(const std::string& identity, std::uint64_t request_id,
                                          wire::GetActorByName::Reader get) {
  ActorEntry* actor = nullptr;
  if (get.getName().size() == 0) {
    auto it = get.hasActorId() ? actors_.find(from_wire<ActorId>(get.getActorId())) : actors_.end();
    if (it == actors_.end()) throw Error(Errc::not_found, "no actor with that id");
    actor = &it->second;
  } else {
    auto it = names_.find({name_scope(from_wire<JobId>(get.getJobId()), get.getActorNamespace().cStr()),
                           std::string(get.getName().cStr())});
    if (it == names_.end()) {
      throw Error(Errc::not_found, "no actor named \"" + std::string(get.getName().cStr()) + "\"");
    }
    actor = &actors_.at(it->second);
  }
  if (identity != actor->owner_identity && actor->state != ActorState::DEAD && actor->watchers.insert(identity).second) {
    context_.touch('a', actor->id.hex());
  }
  capnp::MallocMessageBuilder message;
  auto root = message.initRoot<ControlMessage>();
  root.setRequestId(request_id);
  fill_actor_update(root.initActorUpdate(), *actor);
  context_.send_to(identity, message);
}

void ActorDirectory::on_reply_from_node(std::uint64_t request_id, ControlMessage::Reader reader) {
  if (auto kill = kill_requests_.find(request_id); kill != kill_requests_.end()) {
    SentRequest sent = kill->second;
    kill_requests_.erase(kill);
    if (!reader.isError() || errc_from_wire(reader.getError().getCode()) != Errc::not_found) return;
    // The node has no host of that incarnation: if the head still thinks it
    // runs there, its exit report was lost (or never came).
    auto actor = actors_.find(sent.actor);
    if (actor != actors_.end() && actor->second.placed && actor->second.node == sent.node &&
        actor->second.incarnation == sent.incarnation && actor->second.state != ActorState::DEAD) {
      std::string reason = actor->second.reason.empty() ? "its actor host is gone" : actor->second.reason;
      actor_exited(actor->second, Errc::actor_died, reason);
    }
    return;
  }
  auto it = start_requests_.find(request_id);
  if (it == start_requests_.end()) return;
  ActorId actor_id = it->second.actor;
  if (!reader.isError()) {
    it->second.acked = true;  // tracked on until ALIVE (the start timeout)
    return;
  }
  start_requests_.erase(it);
  auto actor = actors_.find(actor_id);
  if (actor == actors_.end()) return;
  actor->second.no_restart = true;
  Errc code = errc_from_wire(reader.getError().getCode());
  actor_exited(actor->second, code == Errc::ok ? Errc::actor_died : code,
               std::string("node could not start it: ") + reader.getError().getMessage().cStr());
}

// --- issue 12 (persist): reconciliation, the stored form, retention ------------------

void ActorDirectory::reconcile_node(const NodeId& node, const std::string& identity,
                                    const std::vector<std::pair<ActorId, std::uint32_t>>& hosts, bool kill_unknown) {
  std::set<ActorId> listed;
  for (const auto& [actor_id, incarnation] : hosts) {
    if (!accounted_for(actor_id, node, incarnation)) {
      // Unknown to the head, or an older incarnation: it must not run.
      if (kill_unknown) context_.send_kill(identity, actor_id, incarnation);
      continue;
    }
    listed.insert(actor_id);
    actors_.at(actor_id).missing_reports = 0;  // adopted (after a head restart) or still there
  }
  for (auto& [id, actor] : actors_) {
    if (actor.state != ActorState::ALIVE || !actor.placed || actor.node != node || listed.count(id) != 0) continue;
    // Two reports in a row: one sent before a host started may arrive after
    // the host's own ALIVE report (they travel on different connections).
    if (++actor.missing_reports < 2) continue;
    actor.missing_reports = 0;
    TROUPE_LOG_WARN("head: actor {} is ALIVE here but node {} no longer runs its host: its exit report was lost",
                    id.short_hex(), node.short_hex());
    actor_exited(actor, Errc::actor_died, "its actor host is no longer running on node " + node.short_hex());
  }
}

std::optional<std::string> ActorDirectory::encode(const std::string& key) {
  auto id = ActorId::parse(key);
  auto it = id ? actors_.find(*id) : actors_.end();
  if (it == actors_.end()) return std::nullopt;
  const ActorEntry& actor = it->second;
  auto words = capnp::messageToFlatArray(*actor.spec);
  auto bytes = words.asBytes();
  RecordWriter out;
  out.id(actor.id)
      .u64(actor.sequence)
      .str(std::string_view(reinterpret_cast<const char*>(bytes.begin()), bytes.size()))
      .u64(static_cast<std::uint64_t>(actor.state))
      .u64(wire_code(actor.reason_code))
      .str(actor.reason)
      .u64(actor.placed ? 1 : 0)
      .u64(actor.holds_resources ? 1 : 0)
      .id(actor.node)
      .u64(actor.gpus.size());
  for (int gpu : actor.gpus) out.i64(gpu);
  out.u64(actor.amounts.amounts().size());
  for (const auto& [name, amount] : actor.amounts.amounts()) out.str(name).f64(amount);
  out.i64(actor.bundle).u64(actor.incarnation).i64(actor.restarts_used).str(actor.address).str(actor.data_address);
  out.str(actor.owner_identity).u64(actor.host_keys.size());
  for (const auto& [incarnation, host_key] : actor.host_keys) out.u64(incarnation).str(host_key);
  out.str(actor.host_identity).u64(actor.watchers.size());
  for (const auto& watcher : actor.watchers) out.str(watcher);
  out.id(actor.owner).id(actor.job).id(actor.group).str(actor.binary_hash).u64(actor.no_restart ? 1 : 0);
  return out.take();
}

void ActorDirectory::restore(const std::string& value) {
  RecordReader in(value);
  ActorEntry actor;
  actor.id = in.id<ActorId>();
  actor.sequence = in.u64();
  std::string spec = in.str();
  kj::Array<capnp::word> words = kj::heapArray<capnp::word>(spec.size() / sizeof(capnp::word));
  std::memcpy(words.begin(), spec.data(), words.size() * sizeof(capnp::word));
  capnp::FlatArrayMessageReader reader(words);
  actor.spec = std::make_unique<capnp::MallocMessageBuilder>();
  actor.spec->setRoot(reader.getRoot<wire::CreateActor>());
  actor.state = static_cast<ActorState>(in.u64());
  actor.reason_code = errc_from_wire(static_cast<std::uint16_t>(in.u64()));
  actor.reason = in.str();
  actor.placed = in.u64() != 0;
  actor.holds_resources = in.u64() != 0;
  actor.node = in.id<NodeId>();
  for (auto n = in.u64(); n > 0; --n) actor.gpus.push_back(static_cast<int>(in.i64()));
  for (auto n = in.u64(); n > 0; --n) {
    std::string name = in.str();
    actor.amounts.set(name, in.f64());
  }
  actor.bundle = static_cast<int>(in.i64());
  actor.incarnation = static_cast<std::uint32_t>(in.u64());
  actor.restarts_used = static_cast<int>(in.i64());
  actor.address = in.str();
  actor.data_address = in.str();
  actor.owner_identity = in.str();
  for (auto n = in.u64(); n > 0; --n) {
    auto incarnation = static_cast<std::uint32_t>(in.u64());
    actor.host_keys[incarnation] = in.str();
  }
  actor.host_identity = in.str();
  for (auto n = in.u64(); n > 0; --n) actor.watchers.insert(in.str());
  actor.owner = in.id<WorkerId>();
  actor.job = in.id<JobId>();
  actor.group = in.id<PlacementGroupId>();
  actor.binary_hash = in.str();
  actor.no_restart = in.u64() != 0;
  auto create = actor.create();
  scheduler::ResourceRequest request;
  request.amounts = resources_from_wire(create.getResources());
  request.gpu_type = create.getGpuType().cStr();
  request.gpu_memory_bytes = create.getGpuMemoryBytes();
  actor.request = scheduler::normalize(request);
  actor.dead_since = context_.now();
  // Its resources are booked again where they were.
  if (actor.holds_resources && actor.bundle != -2) {
    try {
      if (actor.bundle >= 0) {
        GroupEntry* group = groups_.find(actor.group);
        if (group != nullptr && actor.bundle < static_cast<int>(group->bundle_states.size())) {
          group->bundle_states[actor.bundle].allocate(actor.amounts, actor.gpus);
        }
      } else if (NodeEntry* node = nodes_.find(actor.node)) {
        node->state.allocate(actor.amounts, actor.gpus);
      }
    } catch (const std::exception& error) {
      TROUPE_LOG_ERROR("head: booking the resources of recovered actor {}: {}", actor.id.hex(), error.what());
    }
  }
  std::string name = create.getName().cStr();
  if (actor.state != ActorState::DEAD && !name.empty())
    names_[{name_scope(actor.job, create.getActorNamespace().cStr()), name}] = actor.id;
  next_sequence_ = std::max(next_sequence_, actor.sequence + 1);
  ActorId id = actor.id;
  actors_.emplace(id, std::move(actor));
  order_.push_back(id);
  context_.schedule_needed = true;
}

void ActorDirectory::finish_restore() {
  // Creation order, whatever order the store gave them back in.
  std::sort(order_.begin(), order_.end(),
            [&](const ActorId& a, const ActorId& b) { return actors_.at(a).sequence < actors_.at(b).sequence; });
}

void ActorDirectory::forget_dead(Clock::time_point now, std::chrono::seconds retention, std::size_t keep) {
  std::vector<ActorEntry*> dead;
  for (auto& [id, actor] : actors_) {
    if (actor.state == ActorState::DEAD) dead.push_back(&actor);
  }
  std::sort(dead.begin(), dead.end(), [](ActorEntry* a, ActorEntry* b) { return a->dead_since > b->dead_since; });
  std::set<ActorId> forget;
  for (std::size_t i = 0; i < dead.size(); ++i) {
    if (i >= keep || now - dead[i]->dead_since > retention) forget.insert(dead[i]->id);
  }
  if (forget.empty()) return;
  for (const auto& id : forget) {
    actors_.erase(id);
    context_.touch('a', id.hex());
  }
  std::erase_if(order_, [&](const ActorId& id) { return forget.count(id) != 0; });
  std::erase_if(start_requests_, [&](const auto& entry) { return forget.count(entry.second.actor) != 0; });
  std::erase_if(kill_requests_, [&](const auto& entry) { return forget.count(entry.second.actor) != 0; });
}

}  // namespace troupe::head
