// The head's server: owns the control server and the managers, dispatches
// each message to the manager that serves it, answers getClusterState from
// all of them, and runs the timers. Everything runs on the thread that calls
// run() (or handle()/tick() in tests).
#include "troupe/head/head.hpp"

#include <algorithm>
#include <map>
#include <optional>

#include "actor_directory.hpp"
#include "binary_store.hpp"
#include "head_context.hpp"
#include "job_manager.hpp"
#include "node_table.hpp"
#include "placement_groups.hpp"
#include "state_store.hpp"
#include "troupe/runtime/logging.hpp"

namespace troupe::head {

using wire::ActorState;
using wire::ControlMessage;
using wire::PlacementGroupState;

struct Head::Impl {
  HeadContext context;
  std::unique_ptr<transport::ControlServer> server;
  // Construction order matters only for the references each manager keeps
  // (a reference to a later member is bound, not used, at construction).
  BinaryStore binaries{context};
  NodeTable nodes{context};
  ActorDirectory actors{context, nodes, groups, jobs};
  PlacementGroupManager groups{context, nodes, actors};
  JobManager jobs{context, actors, binaries};

  // issue 12 (persist): where the state is kept (null: memory only).
  std::unique_ptr<StateStore> store;
  Clock::time_point last_retention;
  Clock::time_point last_store_warning;

  Impl(HeadConfig config, std::unique_ptr<transport::ControlServer> s) : server(std::move(s)) {
    context.config = std::move(config);
    context.server = server.get();
    if (!context.config.state_store.empty()) {
      store = open_state_store(context.config.state_store, context.config.state_prefix, context.config.state_lease);
      recover();
      // The head's own node keeps its id across restarts, so its node
      // manager comes back as the node it was and its hosts are adopted;
      // that node manager is a new connection (the old one ended with the
      // previous head process), which may take the node over.
      nodes.release_identity(context.config.head_node_id);
      store->apply({{RecordKind::meta, "head_node", context.config.head_node_id.hex()}});
      written[{static_cast<char>(RecordKind::meta), "head_node"}] = context.config.head_node_id.hex();
      context.hold_sends = true;
    }
    last_retention = context.now();
  }

  // Takes back what a previous head stored, unless it stopped cleanly (then
  // the cluster ended: start afresh). Order: nodes, groups (they reserve on
  // nodes), actors (they book on nodes or bundles), jobs, drivers, binaries.
  void recover() {
    auto records = store->load_all();
    bool stopped = std::any_of(records.begin(), records.end(), [](const StateRecord& r) {
      return r.kind == RecordKind::meta && r.key == "stopped";
    });
    if (stopped) {
      TROUPE_LOG_INFO("head: the previous head on {} stopped cleanly; starting afresh", store->describe());
      store->clear();
      return;
    }
    for (const auto& record : records) written[{static_cast<char>(record.kind), record.key}] = record.value;
    for (const auto& record : records) {
      if (record.kind != RecordKind::meta || record.key != "head_node") continue;
      if (auto id = NodeId::parse(record.value)) {
        TROUPE_LOG_INFO("head: its node keeps the id {} it had before the restart", id->short_hex());
        context.config.head_node_id = *id;
      }
    }
    std::size_t counts[5] = {};
    for (RecordKind kind : {RecordKind::node, RecordKind::group, RecordKind::actor, RecordKind::job,
                            RecordKind::driver, RecordKind::binary}) {
      for (const auto& record : records) {
        if (record.kind != kind) continue;
        try {
          switch (kind) {
            case RecordKind::node: nodes.restore(record.value); ++counts[0]; break;
            case RecordKind::group: groups.restore(record.value); ++counts[1]; break;
            case RecordKind::actor: actors.restore(record.value); ++counts[2]; break;
            case RecordKind::job: jobs.restore_job(record.value); ++counts[3]; break;
            case RecordKind::driver: jobs.restore_driver(record.value); ++counts[4]; break;
            case RecordKind::binary: binaries.restore(record.key, record.value); break;
            case RecordKind::meta: break;
          }
        } catch (const std::exception& error) {
          TROUPE_LOG_ERROR("head: skipping a damaged {} record {} in {}: {}", static_cast<char>(kind), record.key,
                           store->describe(), error.what());
        }
      }
    }
    groups.finish_restore();
    actors.finish_restore();
    jobs.finish_restore();
    if (!records.empty()) {
      TROUPE_LOG_INFO("head: recovered {} nodes, {} placement groups, {} actors, {} jobs, {} drivers from {}",
                      counts[0], counts[1], counts[2], counts[3], counts[4], store->describe());
    }
  }

  std::optional<std::string> encode(char kind, const std::string& key) {
    switch (static_cast<RecordKind>(kind)) {
      case RecordKind::node: return nodes.encode(key);
      case RecordKind::actor: return actors.encode(key);
      case RecordKind::group: return groups.encode(key);
      case RecordKind::job: return jobs.encode_job(key);
      case RecordKind::driver: return jobs.encode_driver(key);
      case RecordKind::binary: return binaries.encode(key);
      case RecordKind::meta:
        if (key == "head_node") return context.config.head_node_id.hex();
        return key == "stopped" && stopped_cleanly ? std::optional<std::string>("1") : std::nullopt;
    }
    return std::nullopt;
  }
  bool stopped_cleanly = false;
  // What the store holds, as last written (or recovered): unchanged records are not written again.
  std::map<std::pair<char, std::string>, std::string> written;

  // Writes what changed, in one transaction, then sends what was held back
  // meanwhile (replies and notifications about those changes). When the
  // store cannot be written, both wait for the next try.
  void commit() {
    if (!store) return;
    if (!context.dirty.empty()) {
      std::vector<StateChange> changes;
      changes.reserve(context.dirty.size());
      for (const auto& [kind, key] : context.dirty) {
        auto value = encode(kind, key);
        // Records marked but not changed (a placement pass marks every
        // actor it looks at) cost nothing.
        auto last = written.find({kind, key});
        if (value ? last != written.end() && last->second == *value : last == written.end()) continue;
        changes.push_back({static_cast<RecordKind>(kind), key, std::move(value)});
      }
      try {
        store->apply(changes);
      } catch (const Error& error) {
        if (error.code() == Errc::permission_denied) fenced(error);
        warn_store(changes.size(), error.what());
        return;
      } catch (const std::exception& error) {
        warn_store(changes.size(), error.what());
        return;
      }
      context.dirty.clear();
      for (auto& change : changes) {
        if (change.value) written[{static_cast<char>(change.kind), change.key}] = std::move(*change.value);
        else written.erase({static_cast<char>(change.kind), change.key});
      }
    }
    context.release_held();
  }

  void warn_store(std::size_t changes, const char* what) {
    auto now = context.now();
    if (now - last_store_warning > std::chrono::seconds(5)) {
      last_store_warning = now;
      TROUPE_LOG_ERROR("head: cannot write the state store {} ({} changes, {} replies held): {}", store->describe(),
                       changes, context.held.size(), what);
    }
  }

  // Keeps this head the store's owner (a Redis lease).
  void keep_store() {
    if (!store) return;
    try {
      store->keep_alive();
    } catch (const Error& error) {
      if (error.code() == Errc::permission_denied) fenced(error);
      throw;
    }
  }

  // Another head owns the store: this one must not answer, write or kill
  // anything more (its jobs and hosts are the other head's now). Run()
  // ends with the error; the daemon exits.
  [[noreturn]] void fenced(const Error& error) {
    TROUPE_LOG_ERROR("head: stopping: {}", error.message());
    context.held.clear();
    throw error;
  }

  void forget_old(Clock::time_point now) {
    if (now - last_retention < std::chrono::seconds(1)) return;
    last_retention = now;
    const auto& config = context.config;
    actors.forget_dead(now, config.retention, config.retention_count);
    groups.forget_removed(now, config.retention, config.retention_count);
    jobs.forget_finished(now, config.retention, config.retention_count);
  }

  void on_heartbeat(const std::string& identity, std::uint64_t request_id, wire::Heartbeat::Reader heartbeat) {
    NodeId node = from_wire<NodeId>(heartbeat.getNodeId());
    std::vector<std::pair<ActorId, std::uint32_t>> hosts;
    nodes.on_heartbeat(identity, request_id, heartbeat, [&](const ActorId& actor, std::uint32_t incarnation) {
      hosts.emplace_back(actor, incarnation);
      return actors.accounted_for(actor, node, incarnation);
    });
    // issue 12 (persist): the hosts it runs are adopted; an ALIVE actor it
    // no longer runs died (its exit report was lost).
    NodeEntry* entry = nodes.find(node);
    if (entry != nullptr && entry->alive && entry->identity == identity) {
      actors.reconcile_node(node, identity, hosts, /*kill_unknown=*/false);
    }
  }

  void on_register_node(const std::string& identity, std::uint64_t request_id, wire::RegisterNode::Reader reg) {
    nodes.on_register_node(identity, request_id, reg);
    // issue 12 (persist): a node that comes back to a restarted head lists
    // its live actor hosts: those the head knows are adopted, not killed.
    std::vector<std::pair<ActorId, std::uint32_t>> hosts;
    for (auto status : reg.getActors()) hosts.emplace_back(from_wire<ActorId>(status.getActorId()), status.getIncarnation());
    actors.reconcile_node(from_wire<NodeId>(reg.getNodeId()), identity, hosts, /*kill_unknown=*/true);
  }

  void on_get_cluster_state(const std::string& identity, std::uint64_t request_id,
                            wire::GetClusterState::Reader get) {
    bool include_dead = get.getIncludeDead();
    auto now = context.now();
    capnp::MallocMessageBuilder message;
    auto root = message.initRoot<ControlMessage>();
    root.setRequestId(request_id);
    auto state = root.initClusterState();
    state.setInsecure(context.config.token_file.empty());

    std::vector<NodeEntry*> shown_nodes;
    for (auto& node : nodes.all()) {
      if (node->alive || include_dead) shown_nodes.push_back(node.get());
    }
    auto node_list = state.initNodes(static_cast<unsigned>(shown_nodes.size()));
    for (unsigned i = 0; i < shown_nodes.size(); ++i) {
      NodeEntry& node = *shown_nodes[i];
      node_list[i].setNode(node.info());
      node_list[i].setState(!node.alive      ? wire::NodeState::DEAD
                            : node.suspected ? wire::NodeState::SUSPECTED
                                             : wire::NodeState::ALIVE);
      const auto& available = node.state.available();
      resources_to_wire(node_list[i].initAvailable(static_cast<unsigned>(available.amounts().size())), available);
      node_list[i].setLastHeartbeatAgeMs(static_cast<std::uint64_t>(
          std::chrono::duration_cast<std::chrono::milliseconds>(now - node.last_heartbeat).count()));
    }

    std::vector<ActorEntry*> shown_actors;
    for (const auto& id : actors.order()) {
      auto& actor = actors.at(id);
      if (actor.state != ActorState::DEAD || include_dead) shown_actors.push_back(&actor);
    }
    auto actor_list = state.initActors(static_cast<unsigned>(shown_actors.size()));
    for (unsigned i = 0; i < shown_actors.size(); ++i) actors.fill_actor_update(actor_list[i], *shown_actors[i]);

    std::vector<GroupEntry*> shown_groups;
    for (const auto& id : groups.order()) {
      auto& group = groups.at(id);
      if (group.state != PlacementGroupState::REMOVED || include_dead) shown_groups.push_back(&group);
    }
    auto group_list = state.initPlacementGroups(static_cast<unsigned>(shown_groups.size()));
    for (unsigned i = 0; i < shown_groups.size(); ++i) groups.fill_group_update(group_list[i], *shown_groups[i]);

    const auto& job_order = jobs.order();
    auto job_list = state.initJobs(static_cast<unsigned>(job_order.size()));
    for (unsigned i = 0; i < job_order.size(); ++i) jobs.fill_job_update(job_list[i], jobs.at(job_order[i]));
    context.send_to(identity, message);
  }

  // Any message from a node's or a driver's connection is a sign of life,
  // not only its heartbeats (a probe's ack, a long upload).
  void note_life(const std::string& identity) {
    if (identity.rfind("node-", 0) == 0) nodes.heard_from(identity, context.now());
    else if (identity.rfind("drv-", 0) == 0) jobs.heard_from(identity, context.now());
  }

  void dispatch(const std::string& identity, transport::ReceivedMessage& received) {
    std::uint64_t request_id = 0;
    try {
      note_life(identity);
      auto reader = received.root<ControlMessage>();
      request_id = reader.getRequestId();
      switch (reader.which()) {
        case ControlMessage::REGISTER_NODE: on_register_node(identity, request_id, reader.getRegisterNode()); break;
        case ControlMessage::HEARTBEAT: on_heartbeat(identity, request_id, reader.getHeartbeat()); break;
        case ControlMessage::CREATE_ACTOR: actors.on_create_actor(identity, request_id, reader.getCreateActor()); break;
        case ControlMessage::ACTOR_UPDATE: actors.on_actor_update(identity, request_id, reader.getActorUpdate()); break;
        case ControlMessage::KILL_ACTOR: actors.on_kill_actor(identity, request_id, reader.getKillActor()); break;
        case ControlMessage::GET_ACTOR_BY_NAME: actors.on_get_actor_by_name(identity, request_id, reader.getGetActorByName()); break;
        case ControlMessage::CREATE_PLACEMENT_GROUP: groups.on_create_group(identity, request_id, reader.getCreatePlacementGroup()); break;
        case ControlMessage::REMOVE_PLACEMENT_GROUP: groups.on_remove_group(identity, request_id, reader.getRemovePlacementGroup()); break;
        case ControlMessage::GET_PLACEMENT_GROUPS: groups.on_get_groups(identity, request_id, reader.getGetPlacementGroups()); break;
        case ControlMessage::SUBMIT_JOB: jobs.on_submit_job(identity, request_id, reader.getSubmitJob()); break;
        case ControlMessage::STOP_JOB: jobs.on_stop_job(identity, request_id, reader.getStopJob()); break;
        case ControlMessage::GET_CLUSTER_STATE: on_get_cluster_state(identity, request_id, reader.getGetClusterState()); break;
        case ControlMessage::REGISTER_DRIVER: jobs.on_register_driver(identity, request_id, reader.getRegisterDriver()); break;
        case ControlMessage::UPLOAD_BINARY:
          jobs.upload_arrived(identity);
          binaries.on_upload_binary(identity, request_id, reader.getUploadBinary());
          break;
        case ControlMessage::FETCH_BINARY: binaries.on_fetch_binary(identity, request_id, reader.getFetchBinary()); break;
        case ControlMessage::JOB_LOGS: jobs.on_job_logs(identity, request_id, reader.getJobLogs()); break;
        case ControlMessage::DRIVER_HEARTBEAT: jobs.on_driver_heartbeat(identity, request_id, reader.getDriverHeartbeat()); break;
        case ControlMessage::ACK:
        case ControlMessage::ERROR:
          actors.on_reply_from_node(request_id, reader);
          break;
        default:
          throw Error(Errc::protocol, "the head does not serve this message type (" +
                                          std::to_string(static_cast<int>(reader.which())) + ")");
      }
    } catch (const Error& error) {
      // A request the head refuses, or a message it cannot decode (the
      // transport's Errc::protocol); Errc::internal is a bug of ours.
      if (error.code() == Errc::internal) {
        TROUPE_LOG_ERROR("head: serving a request from {}: {}", identity, error.message());
      }
      if (request_id != 0) context.reply_error(identity, request_id, error.code(), error.message());
    } catch (const std::exception& error) {
      TROUPE_LOG_ERROR("head: serving a request from {}: {}", identity, error.what());
      if (request_id != 0) context.reply_error(identity, request_id, Errc::internal, error.what());
    }
  }

  void check_timeouts(Clock::time_point now) {
    for (NodeEntry* node : nodes.expire(now)) {
      std::string why = "no heartbeat for " + std::to_string(context.node_timeout().count()) +
                        " ms, and no answer to probes";
      actors.node_lost(node->id, why);
      groups.lose_bundles_on(node->id);
      context.schedule_needed = true;
    }
    jobs.expire_drivers(now);
    actors.resend_unacknowledged(now);
  }

  void schedule_if_needed() {
    if (!context.schedule_needed) return;
    context.schedule_needed = false;
    groups.place_pending();
    actors.place_pending();
  }
};

Head::Head(HeadConfig config) : impl_(std::make_unique<Impl>(std::move(config), nullptr)) {}

Head::Head(HeadConfig config, std::unique_ptr<transport::ControlServer> server)
    : impl_(std::make_unique<Impl>(std::move(config), std::move(server))) {}

Head::~Head() = default;

void Head::bind() {
  auto& impl = *impl_;
  const auto& config = impl.context.config;
  try {
    impl.server = std::make_unique<transport::ZmqControlServer>(config.node_ip, config.port);
  } catch (const transport::AddressInUseError&) {
    throw Error(Errc::transport, "port " + std::to_string(config.port) + " on " + config.node_ip +
                    " is already in use (another head running? try `troupe stop` or --port)");
  } catch (const Error& error) {
    throw Error(Errc::transport, "cannot listen on tcp://" + config.node_ip + ":" + std::to_string(config.port) + ": " +
                    error.message());
  }
  impl.context.server = impl.server.get();
}

std::string Head::address() const { return impl_->context.address(); }
NodeId Head::head_node_id() const { return impl_->context.config.head_node_id; }

void Head::handle(const std::string& identity, transport::ReceivedMessage& message) {
  impl_->dispatch(identity, message);
  impl_->commit();
}

void Head::tick() {
  auto now = impl_->context.now();
  impl_->binaries.poll();
  impl_->check_timeouts(now);
  impl_->jobs.reap(now);
  impl_->forget_old(now);
  impl_->schedule_if_needed();
  impl_->keep_store();
  impl_->commit();
}

bool Head::wait_for_background_work(std::chrono::milliseconds timeout) {
  return impl_->binaries.wait_idle(timeout);
}

void Head::run(const std::atomic<bool>& stop) {
  auto& impl = *impl_;
  auto last_check = impl.context.now();
  auto last_turn = last_check;
  const auto check_every =
      std::chrono::milliseconds(std::max<std::uint32_t>(10, impl.context.config.heartbeat_ms / 4));
  // A turn of this loop normally takes at most the 20 ms receive plus the
  // messages it serves; a turn longer than this means the head itself did
  // not run (SIGSTOP, a starved CPU, a long request): that silence is not
  // held against the nodes and drivers.
  constexpr auto kStall = std::chrono::seconds(1);
  // Messages served before the timers run anyway (a flood must not stop
  // them); when the queue was not drained, nobody is declared lost.
  constexpr int kMaxDrain = 100000;
  while (!stop.load()) {
    std::optional<transport::RoutedMessage> routed;
    try {
      routed = impl.server->receive(std::chrono::milliseconds(20));
    } catch (const Error& error) {
      TROUPE_LOG_WARN("head: dropped a malformed message: {}", error.what());
    }
    // Drain the queue: every heartbeat that arrived before the timeout
    // check below is counted before it runs.
    bool drained = true;
    for (int served = 0; routed; ++served) {
      impl.dispatch(routed->identity, routed->message);
      routed.reset();
      if (served % 256 == 255) impl.commit();  // replies wait for their batch's write only
      if (served >= kMaxDrain) {
        drained = false;
        break;
      }
      try {
        routed = impl.server->receive(std::chrono::milliseconds(0));
      } catch (const Error& error) {
        TROUPE_LOG_WARN("head: dropped a malformed message: {}", error.what());
        routed.reset();
        drained = false;  // more may be queued: look again next turn
        break;
      }
    }
    impl.binaries.poll();
    auto now = impl.context.now();
    if (now - last_turn > kStall) {
      TROUPE_LOG_WARN("head: did not run for {} ms; not counting that silence against nodes and drivers",
                      std::chrono::duration_cast<std::chrono::milliseconds>(now - last_turn).count());
      impl.nodes.forgive(now - last_turn, now);
      impl.jobs.forgive(now - last_turn, now);
    }
    last_turn = now;
    if (drained && now - last_check >= check_every) {
      last_check = now;
      impl.check_timeouts(now);
    }
    impl.jobs.reap(now);
    impl.forget_old(now);
    impl.schedule_if_needed();
    impl.keep_store();
    impl.commit();
  }
  impl.jobs.stop_all();
  // A clean stop ends the cluster: the next head on this store starts afresh.
  impl.stopped_cleanly = true;
  impl.context.touch(static_cast<char>(RecordKind::meta), "stopped");
  impl.commit();
}

}  // namespace troupe::head
