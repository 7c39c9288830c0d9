#include "cluster_runtime.hpp"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <thread>

#include "actor_host.hpp"
#include "call_server.hpp"
#include "deadline_queue.hpp"
#include "executor/local_runtime.hpp"
#include "head_client.hpp"
#include "object_table.hpp"
#include "object_transfer.hpp"
#include "outbound_calls.hpp"
#include "remote_actor.hpp"
#include "troupe/runtime/logging.hpp"
#include "troupe/transport/internal/channels.hpp"
#include "troupe/transport/internal/membership.hpp"
#include "troupe/transport/internal/zmq_socket.hpp"

namespace troupe::detail {
namespace {

std::string host_of(const std::string& address) {
  auto colon = address.rfind(':');
  std::string host = colon == std::string::npos ? address : address.substr(0, colon);
  if (host.rfind("tcp://", 0) == 0) host = host.substr(6);
  return host;
}

ActorState from_wire(wire::ActorState state) {
  switch (state) {
    case wire::ActorState::PENDING: return ActorState::pending;
    case wire::ActorState::ALIVE: return ActorState::alive;
    case wire::ActorState::RESTARTING: return ActorState::restarting;
    case wire::ActorState::DEAD: return ActorState::dead;
  }
  return ActorState::dead;
}

std::vector<int> gpus_of(wire::ActorUpdate::Reader update) {
  std::vector<int> gpus;
  for (auto index : update.getGpuIndices()) gpus.push_back(static_cast<int>(index));
  return gpus;
}

ClusterRuntime* g_cluster = nullptr;  // for the release hook; set while running

void release_hook(const ObjectId& id, const std::string& location) {
  if (auto* runtime = g_cluster) runtime->queue_release(id, location);
}

int pool_threads(int requested) {
  return requested > 0 ? requested : std::max(2, static_cast<int>(std::thread::hardware_concurrency()));
}

}  // namespace

ClusterRuntime::ClusterRuntime(Config config)
    : config_(std::move(config)),
      pool_(std::make_shared<ThreadPool>(pool_threads(config_.num_threads))),
      deadlines_(std::make_shared<DeadlineQueue>(pool_->context())) {
  worker_id_ = WorkerId::random();
  if (const char* ms = std::getenv("TROUPE_REQUEST_TIMEOUT_MS"); ms && *ms)
    request_timeout_ = std::chrono::milliseconds(std::max(100L, std::atol(ms)));
  if (const char* ms = std::getenv("TROUPE_FETCH_TIMEOUT_MS"); ms && *ms)
    fetch_timeout_ = std::chrono::milliseconds(std::max(100L, std::atol(ms)));
}

ClusterRuntime::~ClusterRuntime() { shutdown(); }

void ClusterRuntime::start() {
  // This process's membership, before its first socket: the token a node
  // manager or the head gave it (TROUPE_TOKEN_FILE / TROUPE_TOKEN), else
  // this machine's session of the same head (transport::find_token).
  auto token = transport::find_token(config_.head_address);
  transport::set_membership(token.secret);
  if (!token.secret) {
    TROUPE_LOG_DEBUG("cluster: no cluster token found for {}; connecting without one", config_.head_address);
  }
  std::string bind_ip;
  if (const char* ip = std::getenv("TROUPE_NODE_IP"); ip && *ip) bind_ip = ip;
  else bind_ip = transport::local_ip_for(host_of(config_.head_address));
  // The table's entries leave the data plane with it.
  auto transfer_slot = std::make_shared<std::weak_ptr<ObjectTransfer>>();
  table_ = std::make_shared<ObjectTable>([transfer_slot](const ObjectId& id) {
    if (auto transfer = transfer_slot->lock()) transfer->unpublish(id);
  });
  transfer_ = std::make_shared<ObjectTransfer>(pool_, table_, fetch_timeout_);
  *transfer_slot = transfer_;
  // Calls received while a batch is dispatched may run on the receiving
  // thread once the batch is done (ThreadPool::post_or_defer).
  auto pool = pool_;
  auto batch_scope = [pool](const std::function<void()>& batch) {
    DeferScope defer(*pool);
    batch();
    defer.run();
  };
  calls_ = std::make_shared<transport::CallPlane>(
      bind_ip, pool_->context(), [this](transport::ReceivedMessage& m) { server_->on_call_message(m); }, batch_scope);
  outbound_ = std::make_shared<OutboundCalls>(worker_id_, calls_, table_, transfer_);
  server_ = std::make_shared<CallServer>(
      [calls = calls_](const std::string& address, capnp::MallocMessageBuilder& message) {
        calls->send(address, message);
      },
      table_, transfer_, outbound_);
  calls_->set_periodic(std::chrono::milliseconds(20), [this] { tick(); });
  if (config_.actor_host) {
    // The call server knows its host before the plane takes any message
    // (the plane's threads start after this write, so they see it).
    host_ = std::make_shared<ActorHost>(config_.spec_path);
    job_id_ = host_->job_id();
    server_->set_host(host_);
  }
  calls_->start();
  // Weak: outbound_ holds transfer_ already.
  std::weak_ptr<OutboundCalls> weak_outbound = outbound_;
  transfer_->start(calls_->address(), [weak_outbound](const ObjectId& id, const std::string& location) {
    auto outbound = weak_outbound.lock();
    if (!outbound) throw_error(Errc::cancelled, "the runtime shut down");
    return outbound->fetch_by_call(id, location);
  });
  // Calls over UCX active messages on the data plane's worker are opt-in
  // for now (TROUPE_CALL_PLANE=ucx: this process sends its calls, replies
  // and releases over UCX to peers with a data plane); by default it sends
  // over ZeroMQ. Either way it takes the calls of peers that send over UCX
  // (docs/architecture.md, "Planes").
  // TODO(perf): make UCX the default once its async throughput is above
  // ZeroMQ's and its calls are encrypted (docs/protocol.md, "Call plane").
  if (auto data = transfer_->data_plane()) {
    // Replies received over UCX complete their call's result on the
    // progress thread: get() wakes from there, one thread hand-off fewer.
    // Completion callbacks are short and never block (they post real work:
    // ObjectState::set_value), so they may run there too.
    calls_->set_ucx_fast_path([this](transport::ReceivedMessage& message) {
      try {
        if (message.reader().getRoot<wire::CallMessage>().which() != wire::CallMessage::REPLY) return false;
      } catch (...) {
        return false;  // malformed: the pool's path reports it
      }
      server_->on_call_message(message);
      return true;
    });
    const char* mode = std::getenv("TROUPE_CALL_PLANE");
    const std::string_view plane = mode != nullptr ? mode : "";
    if (!plane.empty() && plane != "ucx" && plane != "zmq")
      TROUPE_LOG_WARN("TROUPE_CALL_PLANE={} is neither ucx nor zmq: calls go over ZeroMQ", plane);
    calls_->attach_ucx(data, plane == "ucx");
  }
  g_cluster = this;
  set_release_hook(&release_hook);
  auto on_push = [this](wire::ControlMessage::Reader m) { on_control_push(m); };
  if (config_.actor_host) {
    head_ = std::make_unique<HeadClient>(config_.head_address, "act-" + host_->actor_id().hex(), request_timeout_,
                                         on_push);
    host_->start_actor(*head_, calls_->address(), transfer_->own_data_address());
  } else {
    head_ = std::make_unique<HeadClient>(config_.head_address, "drv-" + worker_id_.hex(), request_timeout_, on_push);
    job_id_ = head_->register_driver(worker_id_, config_.head_address);
  }
}

std::shared_ptr<ActorCore> ClusterRuntime::create_actor(const ClassInfo& cls, std::vector<ArgSlot> ctor_args,
                                                        ActorOptions options) {
  if (!running()) throw_error(Errc::cancelled, "the runtime is shut down");
  validate_actor_options(options);
  std::vector<StatePtr> unresolved;
  for (auto& slot : ctor_args) {
    if (slot.pass_ref) {
      throw_error(Errc::unsupported, cls.name +
                                         ": an ObjectRef constructor parameter cannot cross processes (the actor "
                                         "may restart long after it is gone); take the value, or pass the "
                                         "ObjectRef to a method");
    }
    if (!slot.value && !slot.ref->is_ready()) unresolved.push_back(slot.ref);
  }
  // issue 13 (cluster): the job's own variables (`troupe submit --env`, named
  // by the head in TROUPE_JOB_ENV_NAMES) go to every actor of the job, with
  // the list itself, so the actors' actors get them too; the actor's own win.
  if (const char* names = std::getenv("TROUPE_JOB_ENV_NAMES"); names && *names) {
    std::map<std::string, std::string> env;
    std::string list = names;
    for (std::size_t start = 0; start <= list.size();) {
      const std::size_t comma = std::min(list.find(',', start), list.size());
      const std::string var = list.substr(start, comma - start);
      if (const char* value = var.empty() ? nullptr : std::getenv(var.c_str())) env[var] = value;
      start = comma + 1;
    }
    env["TROUPE_JOB_ENV_NAMES"] = list;
    for (auto& [var, value] : options.env) env[var] = value;
    options.env = std::move(env);
  }
  const ActorId id = ActorId::random();
  const PlacementGroupId group_id = options.placement_group.valid() ? options.placement_group.core()->id : PlacementGroupId{};
  RemoteActor::Policy policy{options.max_task_retries, options.max_pending_calls, options.backpressure};
  auto actor = std::make_shared<RemoteActor>(*this, id, cls, options.name, true, policy);
  {
    std::lock_guard lock(mutex_);
    actors_[id] = actor;
  }
  if (unresolved.empty()) {
    try {
      head_->create_actor(id, job_id_, worker_id_, cls, encode_ctor_args(ctor_args), options, group_id);
    } catch (...) {
      std::lock_guard lock(mutex_);
      actors_.erase(id);
      throw;
    }
    return actor;
  }
  // Creation is asynchronous (as in local mode): the head hears of the
  // actor once every constructor argument is there; until then it is
  // pending here and its calls wait in its outbox. A failure from then on
  // (an argument's error, a refusal by the head) kills it.
  {
    std::lock_guard lock(mutex_);
    deferred_.insert(id);
  }
  struct Creation {
    std::vector<ArgSlot> args;
    ActorOptions options;
    std::atomic<std::size_t> left;
  };
  auto creation = std::make_shared<Creation>();
  creation->args = std::move(ctor_args);
  creation->options = std::move(options);
  creation->left = unresolved.size();
  std::weak_ptr<ClusterRuntime> weak = weak_from_this();
  std::weak_ptr<RemoteActor> weak_actor = actor;
  const ClassInfo* cls_ptr = &cls;
  auto ready = [weak, weak_actor, creation, id, cls_ptr, group_id] {
    if (creation->left.fetch_sub(1, std::memory_order_acq_rel) != 1) return;
    auto self = weak.lock();
    if (!self) return;
    self->pool_->post([weak, weak_actor, creation, id, cls_ptr, group_id] {
      auto self = weak.lock();
      if (!self || !self->running()) return;
      {
        std::lock_guard lock(self->mutex_);
        if (!self->deferred_.erase(id)) return;  // killed before it was created
      }
      std::string failure;
      try {
        auto encoded = encode_ctor_args(creation->args);
        creation->args.clear();  // the refs: no longer needed here
        self->head_->create_actor(id, self->job_id_, self->worker_id_, *cls_ptr, encoded, creation->options,
                                  group_id);
        return;
      } catch (const std::exception& e) {
        failure = e.what();
      }
      TROUPE_LOG_WARN("actor {} of class {} could not be created: {}", id.short_hex(), cls_ptr->name, failure);
      if (auto actor = weak_actor.lock()) actor->on_update(ActorState::dead, {}, 0, failure);
    });
  };
  for (auto& state : unresolved) state->on_complete(ready);
  return actor;
}

std::vector<std::string> ClusterRuntime::encode_ctor_args(const std::vector<ArgSlot>& ctor_args) {
  std::vector<std::string> encoded;
  for (const auto& slot : ctor_args) {
    if (slot.value) {
      encoded.push_back(slot.value->encode());
      continue;
    }
    if (slot.ref->has_error()) {
      auto info = describe(slot.ref->error());
      throw_error(Errc::actor_died, "a constructor argument failed: " + info.type + ": " + info.message);
    }
    const ValuePtr& value = slot.ref->value();
    encoded.push_back(value ? value->encode() : std::string());
  }
  return encoded;
}

std::shared_ptr<RemoteActor> ClusterRuntime::actor_for_update(const ActorId& id) {
  std::lock_guard lock(mutex_);
  auto it = actors_.find(id);
  return it == actors_.end() ? nullptr : it->second;
}

void ClusterRuntime::on_control_push(wire::ControlMessage::Reader message) {
  if (message.isKillActor() && host_ &&
      troupe::from_wire<ActorId>(message.getKillActor().getActorId()) == host_->actor_id() &&
      message.getKillActor().getIncarnation() >= host_->incarnation()) {
    // The head declared this host's node dead (its node manager stopped
    // answering) and restarts the actor elsewhere: this copy must not run on.
    TROUPE_LOG_ERROR("actor host for {}: the head stopped it (its node was declared dead); exiting",
                     host_->actor_id().hex());
    std::fflush(nullptr);
    std::_Exit(1);
  }
  if (message.isPlacementGroupUpdate()) {
    auto update = message.getPlacementGroupUpdate();
    std::shared_ptr<GroupCore> group;
    bool ready = false, failed = false;
    std::string reason = update.hasReason() ? std::string(update.getReason().getMessage()) : std::string();
    {
      std::lock_guard lock(mutex_);
      auto it = groups_.find(troupe::from_wire<PlacementGroupId>(update.getPlacementGroupId()));
      if (it == groups_.end()) return;
      group = it->second;
      switch (update.getState()) {
        case wire::PlacementGroupState::CREATED: group->placed = true; ready = true; break;
        case wire::PlacementGroupState::PENDING: group->reason = reason.empty() ? "pending" : reason; break;
        case wire::PlacementGroupState::INFEASIBLE: group->reason = "infeasible: " + reason; break;
        case wire::PlacementGroupState::REMOVED: group->removed = true; failed = true; break;
      }
    }
    if (ready) group->ready_promise.set_value();
    if (failed) group->ready_promise.set_error(make_error(Errc::cancelled, "placement group removed: " + reason));
    return;
  }
  if (message.isActorUpdate()) {
    auto update = message.getActorUpdate();
    auto actor = actor_for_update(troupe::from_wire<ActorId>(update.getActorId()));
    if (!actor) return;
    if (update.getState() != wire::ActorState::DEAD) actor->set_gpus(gpus_of(update));
    std::string reason = update.hasReason() ? std::string(update.getReason().getMessage()) : std::string();
    auto state = from_wire(update.getState());
    std::string address = update.getAddress();
    if (auto why = check_peer_address(address); !address.empty() && !why.empty()) {
      // Calls would be sent there: only a call-plane address will do.
      TROUPE_LOG_WARN("ignoring an update of actor {} with a bad address: {}", actor->id().short_hex(), why);
      return;
    }
    auto incarnation = update.getIncarnation();
    if (!address.empty() && update.getDataAddress().size() > 0) {
      // Before the actor learns its address below: its first call goes over UCX.
      calls_->note_ucx_peer(address, from_data(update.getDataAddress()));
      transfer_->note_data_address(address, from_data(update.getDataAddress()));
    }
    // The actor fails or resends the calls a restart or death leaves
    // unanswered (RemoteActor::on_update); updates handled out of order
    // are recognised there.
    pool_->post([actor, state, address = std::move(address), incarnation, reason = std::move(reason)]() mutable {
      actor->on_update(state, std::move(address), incarnation, std::move(reason));
    });
  }
}

std::shared_ptr<ActorCore> ClusterRuntime::find(std::string_view name, std::string_view name_space) {
  return look_up(name, name_space, ActorId{});
}

std::shared_ptr<ActorCore> ClusterRuntime::find(const ActorId& id) {
  if (auto known = actor_for_update(id)) return known;
  return look_up({}, {}, id);  // a handle that came from another process
}

std::shared_ptr<ActorCore> ClusterRuntime::look_up(std::string_view name, std::string_view name_space,
                                                   ActorId actor_id) {
  if (!head_) return nullptr;
  auto reply = head_->get_actor(job_id_, name, name_space, actor_id);
  if (!reply) return nullptr;
  auto update = reply->root<wire::ControlMessage>().getActorUpdate();
  const ActorId id = troupe::from_wire<ActorId>(update.getActorId());
  if (auto existing = actor_for_update(id)) return existing;
  const ClassInfo* cls = find_class(update.getClassName().cStr());
  if (!cls) throw_error(Errc::not_registered, std::string("actor class ") + update.getClassName().cStr() + " is not registered in this binary");
  const std::string address = update.getAddress();
  if (auto why = check_peer_address(address); !address.empty() && !why.empty())
    throw_error(Errc::protocol, "the head named actor " + id.short_hex() + " at a bad address: " + why);
  if (!address.empty() && update.getDataAddress().size() > 0) {
    calls_->note_ucx_peer(address, from_data(update.getDataAddress()));
    transfer_->note_data_address(address, from_data(update.getDataAddress()));
  }
  // The handle calls the actor as its creator's do (Ray keeps
  // max_task_retries with the actor too): the head returns the creator's
  // caller-side policy with the actor.
  RemoteActor::Policy policy;
  policy.max_task_retries = update.getMaxTaskRetries();
  if (update.getMaxPendingCalls() > 0) policy.max_pending_calls = update.getMaxPendingCalls();
  policy.backpressure = update.getFailWhenOverloaded() ? Backpressure::fail : Backpressure::block;
  auto actor = std::make_shared<RemoteActor>(*this, id, *cls, std::string(update.getName().cStr()), false, policy);
  {
    std::lock_guard lock(mutex_);
    auto [it, added] = actors_.emplace(id, actor);
    if (!added) return it->second;  // another thread looked it up meanwhile
  }
  actor->set_gpus(gpus_of(update));
  actor->on_update(from_wire(update.getState()), update.getAddress(), update.getIncarnation(),
                   update.hasReason() ? std::string(update.getReason().getMessage()) : std::string());
  return actor;
}

PlacementGroup ClusterRuntime::create_group(std::vector<ResourceSpec> specs, PlacementStrategy strategy,
                                            std::string name) {
  if (!running()) throw_error(Errc::cancelled, "the runtime is shut down");
  if (specs.empty()) throw_error(Errc::invalid_argument, "a placement group needs at least one bundle");
  std::vector<scheduler::Bundle> bundles;
  for (const auto& spec : specs) bundles.push_back(to_request(spec));
  scheduler::Strategy scheduler_strategy = scheduler::Strategy::PACK;
  wire::PlacementStrategy wire_strategy = wire::PlacementStrategy::PACK;
  switch (strategy) {
    case PlacementStrategy::pack: break;
    case PlacementStrategy::spread:
      scheduler_strategy = scheduler::Strategy::SPREAD;
      wire_strategy = wire::PlacementStrategy::SPREAD;
      break;
    case PlacementStrategy::strict_pack:
      scheduler_strategy = scheduler::Strategy::STRICT_PACK;
      wire_strategy = wire::PlacementStrategy::STRICT_PACK;
      break;
    case PlacementStrategy::strict_spread:
      scheduler_strategy = scheduler::Strategy::STRICT_SPREAD;
      wire_strategy = wire::PlacementStrategy::STRICT_SPREAD;
      break;
  }
  const PlacementGroupId id = PlacementGroupId::random();
  auto group = std::make_shared<GroupCore>(id, name, bundles, scheduler_strategy);
  {
    std::lock_guard lock(mutex_);
    group->reason = "waiting for the head";
    groups_[id] = group;
  }
  try {
    head_->create_group(id, job_id_, name, bundles, wire_strategy);
  } catch (...) {
    std::lock_guard lock(mutex_);
    groups_.erase(id);
    throw;
  }
  return PlacementGroup(group);
}

void ClusterRuntime::remove_group(const std::shared_ptr<GroupCore>& group) {
  head_->remove_group(group->id);
  {
    std::lock_guard lock(mutex_);
    group->removed = true;
    groups_.erase(group->id);
  }
  group->ready_promise.set_error(make_error(Errc::cancelled, "placement group removed"));
}

std::vector<PlacementGroup> ClusterRuntime::list_groups(std::string_view name) {
  if (!running() || !head_) throw_error(Errc::cancelled, "the runtime is shut down");
  auto reply = head_->get_groups(job_id_, name);
  std::vector<PlacementGroup> out;
  for (auto update : reply.root<wire::ControlMessage>().getClusterState().getPlacementGroups()) {
    const PlacementGroupId id = troupe::from_wire<PlacementGroupId>(update.getPlacementGroupId());
    std::shared_ptr<GroupCore> group;
    bool ready = false;
    {
      std::lock_guard lock(mutex_);
      if (auto it = groups_.find(id); it != groups_.end()) {
        out.emplace_back(it->second);  // created or looked up here before: its updates arrive already
        continue;
      }
      // A group created by another process of the job: its handle is
      // rebuilt from the head's record, and its updates come here from now on.
      std::vector<scheduler::Bundle> bundles;
      for (auto bundle : update.getBundles()) {
        scheduler::Bundle request;
        for (auto resource : bundle.getResources()) {
          std::string resource_name = resource.getName();
          if (resource_name.rfind("GPU:", 0) == 0) request.gpu_type = resource_name.substr(4);
          else request.amounts.set(resource_name, resource.getAmount());
        }
        bundles.push_back(std::move(request));
      }
      scheduler::Strategy strategy = scheduler::Strategy::PACK;
      switch (update.getStrategy()) {
        case wire::PlacementStrategy::PACK: break;
        case wire::PlacementStrategy::SPREAD: strategy = scheduler::Strategy::SPREAD; break;
        case wire::PlacementStrategy::STRICT_PACK: strategy = scheduler::Strategy::STRICT_PACK; break;
        case wire::PlacementStrategy::STRICT_SPREAD: strategy = scheduler::Strategy::STRICT_SPREAD; break;
      }
      group = std::make_shared<GroupCore>(id, std::string(update.getName().cStr()), std::move(bundles), strategy);
      const std::string reason = update.hasReason() ? std::string(update.getReason().getMessage()) : std::string();
      switch (update.getState()) {
        case wire::PlacementGroupState::CREATED: group->placed = true; ready = true; break;
        case wire::PlacementGroupState::PENDING: group->reason = reason.empty() ? "pending" : reason; break;
        case wire::PlacementGroupState::INFEASIBLE: group->reason = "infeasible: " + reason; break;
        case wire::PlacementGroupState::REMOVED: continue;  // not listed by the head
      }
      groups_[id] = group;
    }
    if (ready) group->ready_promise.set_value();
    out.emplace_back(group);
  }
  return out;
}

std::string ClusterRuntime::group_reason(const GroupCore& group) {
  std::lock_guard lock(mutex_);
  if (group.removed) return "removed";
  return group.placed ? std::string() : group.reason;
}

std::map<std::string, double> ClusterRuntime::total_resources() {
  return head_ ? head_->cluster_totals(false) : std::map<std::string, double>{};
}
std::map<std::string, double> ClusterRuntime::free_resources() {
  return head_ ? head_->cluster_totals(true) : std::map<std::string, double>{};
}

std::size_t ClusterRuntime::live_actor_count() {
  std::vector<std::shared_ptr<RemoteActor>> actors;
  {
    std::lock_guard lock(mutex_);
    for (auto& [id, actor] : actors_) actors.push_back(actor);
  }
  std::size_t count = 0;
  for (auto& actor : actors)
    if (actor->state() != ActorState::dead) ++count;
  return count;
}

void ClusterRuntime::post(std::function<void()> fn) { pool_->post(std::move(fn)); }

void ClusterRuntime::at_deadline(std::chrono::steady_clock::time_point when, const StatePtr& result,
                                 std::function<void()> fn) {
  deadlines_->add(when, result, std::move(fn));
}

void ClusterRuntime::send_call(ActorId actor_id, const std::string& address, std::uint32_t incarnation,
                               std::uint64_t seq, CallSpec& spec, bool keep_for_retry) {
  outbound_->send_call(actor_id, address, incarnation, seq, spec, keep_for_retry);
}

std::vector<SentCall> ClusterRuntime::take_sent(ActorId actor_id, std::optional<std::uint32_t> below) {
  return outbound_ ? outbound_->take_sent(actor_id, below) : std::vector<SentCall>{};
}

void ClusterRuntime::end_loans(const std::vector<ObjectId>& lent) {
  if (outbound_) outbound_->end_loans(lent);
}

bool ClusterRuntime::cancel_sent(ActorId actor_id, const std::string& address, const StatePtr& result) {
  return outbound_->cancel_sent(actor_id, address, result);
}

void ClusterRuntime::withdraw_sent(ActorId actor_id, const std::string& address, const StatePtr& result) {
  if (outbound_) outbound_->withdraw(actor_id, address, result);
}

void ClusterRuntime::kill_actor(ActorId actor_id, bool no_restart) {
  bool deferred = false;
  {
    std::lock_guard lock(mutex_);
    deferred = deferred_.erase(actor_id) > 0;
  }
  if (deferred) {
    // Not created yet (a constructor argument is pending): it never will be.
    if (auto actor = actor_for_update(actor_id)) actor->on_update(ActorState::dead, {}, 0, "killed before it was created");
    return;
  }
  if (!head_) throw_error(Errc::unsupported, "not connected to a head");
  head_->kill_actor(actor_id, no_restart);
}

std::string ClusterRuntime::data_plane_info() const { return transfer_->info(); }

void ClusterRuntime::queue_release(const ObjectId& id, const std::string& location) {
  table_->queue_release(id, location);
}

void ClusterRuntime::tick() {
  auto releases = table_->take_releases();
  outbound_->expire_fetches();
  table_->expire_waits(fetch_timeout_);  // a fetch of what never comes waits no longer than a fetch
  table_->expire_loans(std::chrono::steady_clock::now());
  for (auto& [location, ids] : releases) {
    capnp::MallocMessageBuilder message;
    auto release = message.initRoot<wire::CallMessage>().initRelease();
    troupe::to_wire(release.initHolderId(), worker_id_);
    auto list = release.initIds(static_cast<unsigned>(ids.size()));
    for (unsigned i = 0; i < ids.size(); ++i) troupe::to_wire(list[i], ids[i]);
    try {
      calls_->send(location, message);
    } catch (...) {
    }
  }
}

void ClusterRuntime::serve_forever() { ActorHost::serve_forever(); }

void ClusterRuntime::shutdown() {
  if (!running_.exchange(false)) return;
  std::vector<std::shared_ptr<RemoteActor>> actors, owned;
  {
    std::lock_guard lock(mutex_);
    for (auto& [id, actor] : actors_) actors.push_back(actor);
  }
  for (auto& actor : actors)
    if (actor->owned() && actor->state() != ActorState::dead) owned.push_back(actor);
  deadlines_->stop();
  std::vector<StatePtr> pending;
  if (outbound_) pending = outbound_->take_all();
  // A driver's actors end with it (Ray's non-detached actors).
  for (auto& actor : owned) {
    try {
      kill_actor(actor->id(), true);
    } catch (const std::exception& e) {
      TROUPE_LOG_WARN("could not kill actor {} at shutdown: {}", actor->id().short_hex(), e.what());
    }
    actor->on_update(ActorState::dead, {}, 0, "the driver shut down");
  }
  for (auto& actor : actors) actor->close();  // what waits in outboxes, or for room
  auto error = make_error(Errc::cancelled, "the runtime shut down");
  for (auto& state : pending) state->set_error(error);
  set_release_hook(nullptr);
  g_cluster = nullptr;
  if (head_) head_->stop();
  if (calls_) calls_->stop();
  if (transfer_) transfer_->stop();  // fails fetches still pending with `cancelled`
  if (host_) host_->shutdown();
  pool_->stop();
  {
    std::lock_guard lock(mutex_);
    actors_.clear();
  }
  if (table_) table_->clear();
}

}  // namespace troupe::detail

namespace troupe {

std::string data_plane_info() {
  if (auto* cluster = detail::g_cluster) return cluster->data_plane_info();
  return "local: in-process";
}

}  // namespace troupe
