// LocalRuntime: the actor executor (local mode, or inside an actor host):
// actor creation and placement over this one node, groups, lookups.
#include "local_runtime.hpp"

#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <thread>

#include "troupe/runtime/gpus.hpp"
#include "troupe/runtime/logging.hpp"
#include "troupe/scheduler/error.hpp"
#include "troupe/scheduler/gpu_spec.hpp"

namespace troupe::detail {
namespace {

std::mutex g_runtime_mutex;
std::shared_ptr<Backend> g_runtime;  // guarded by g_runtime_mutex
std::atomic<Backend*> g_runtime_fast{nullptr};

std::uint64_t physical_memory_bytes() {
  long pages = ::sysconf(_SC_PHYS_PAGES);
  long page_size = ::sysconf(_SC_PAGE_SIZE);
  return pages > 0 && page_size > 0 ? static_cast<std::uint64_t>(pages) * static_cast<std::uint64_t>(page_size) : 0;
}

// An exception's text without the "<code>: " prefix a troupe::Error's what() has,
// for messages that wrap it in their own context.
std::string text_of(const std::exception& e) {
  if (const auto* error = dynamic_cast<const Error*>(&e)) return error->message();
  return e.what();
}

std::vector<scheduler::GpuInfo> local_gpus(const std::string& declared) {
  if (!declared.empty()) {
    try {
      return scheduler::parse_gpu_spec(declared);
    } catch (const std::exception& e) {
      throw_error(Errc::invalid_argument, "bad GPU spec: " + text_of(e));
    }
  }
  return detected_gpus();
}

std::map<std::string, double> to_map(const scheduler::ResourceSet& set) {
  std::map<std::string, double> out;
  for (const auto& [name, amount] : set.amounts()) out.emplace(name, amount);
  return out;
}

scheduler::Strategy to_scheduler(PlacementStrategy strategy) {
  switch (strategy) {
    case PlacementStrategy::pack: return scheduler::Strategy::PACK;
    case PlacementStrategy::spread: return scheduler::Strategy::SPREAD;
    case PlacementStrategy::strict_pack: return scheduler::Strategy::STRICT_PACK;
    case PlacementStrategy::strict_spread: return scheduler::Strategy::STRICT_SPREAD;
  }
  return scheduler::Strategy::PACK;
}

}  // namespace

scheduler::ResourceRequest to_request(const ResourceSpec& spec) {
  scheduler::ResourceRequest request;
  try {
    for (const auto& [name, amount] : spec.amounts) request.amounts.set(name, amount);
    request.gpu_type = spec.gpu_type;
    request.gpu_memory_bytes = spec.gpu_memory;
    return scheduler::normalize(request);
  } catch (const std::exception& e) {
    throw_error(Errc::invalid_argument, "bad resource request: " + text_of(e));
  }
}

namespace {
// One process is one job: the job's own namespace is "".
std::string named_key(std::string_view name_space, std::string_view name) {
  std::string key(name_space);
  key += '\0';
  key += name;
  return key;
}
}  // namespace

void validate_actor_options(const ActorOptions& options) {
  for (const auto& [name, value] : options.env) {
    if (name.empty() || name.find('=') != std::string::npos || name.find('\0') != std::string::npos ||
        name.rfind("TROUPE_", 0) == 0 || name == "CUDA_VISIBLE_DEVICES") {
      throw_error(Errc::invalid_argument, "ActorOptions::env: '" + name +
                                              "' cannot be set for an actor (empty, holds '=', or the runtime "
                                              "sets it: TROUPE_*, CUDA_VISIBLE_DEVICES)");
    }
    if (value.find('\0') != std::string::npos) {
      throw_error(Errc::invalid_argument, "ActorOptions::env: the value of '" + name + "' holds a NUL byte");
    }
  }
  if (options.max_concurrency < 1) throw_error(Errc::invalid_argument, "max_concurrency must be at least 1");
  if (options.max_restarts < -1) throw_error(Errc::invalid_argument, "max_restarts must be -1 or more");
  if (options.max_task_retries < -1) throw_error(Errc::invalid_argument, "max_task_retries must be -1 or more");
  if (options.max_pending_calls < 1) throw_error(Errc::invalid_argument, "max_pending_calls must be at least 1");
  if (options.placement_group.valid()) {
    const auto& group = *options.placement_group.core();
    if (options.bundle_index < -1 || options.bundle_index >= static_cast<int>(group.bundles.size())) {
      throw_error(Errc::invalid_argument, "bundle_index " + std::to_string(options.bundle_index) +
                                              " is out of range for a group of " +
                                              std::to_string(group.bundles.size()) + " bundles");
    }
  } else if (options.bundle_index != -1) {
    throw_error(Errc::invalid_argument, "bundle_index given without a placement_group");
  }
  // Validate the request now so bad input is an error at the call, not a
  // forever-pending actor.
  (void)to_request(ResourceSpec{options.resources, options.gpu_type, options.gpu_memory});
}

std::shared_ptr<Backend> backend() noexcept {
  std::lock_guard lock(g_runtime_mutex);
  return g_runtime;
}

GroupCore::GroupCore(PlacementGroupId id, std::string name, std::vector<scheduler::Bundle> bundles,
                     scheduler::Strategy strategy)
    : id(id), name(std::move(name)), bundles(std::move(bundles)), strategy(strategy) {
  ready_ref = ready_promise.ref();
}

static int pool_size(int requested) {
  if (requested > 0) return requested;
  return std::max(2, static_cast<int>(std::thread::hardware_concurrency()));
}

LocalRuntime::LocalRuntime(const InitOptions& options)
    : pool_(pool_size(options.num_threads)), deadlines_(std::make_shared<DeadlineQueue>(pool_.context())) {
  scheduler::NodeInfo node;
  node.node_id = "local";
  std::string declared = options.gpus;
  if (declared.empty()) {
    if (const char* env = std::getenv("TROUPE_GPUS"); env && *env) declared = env;
  }
  node.gpus = local_gpus(declared);
  try {
    node.total.set(scheduler::kCpu, std::max(1u, std::thread::hardware_concurrency()));
    node.total.set(scheduler::kMemory, static_cast<double>(physical_memory_bytes()));
    node.total.set(scheduler::kGpu, static_cast<double>(node.gpus.size()));
    for (const auto& [name, amount] : options.resources) node.total.set(name, amount);
    node.total.set(scheduler::node_resource(node.node_id), scheduler::kNodeResourceCapacity);
    nodes_.emplace_back(std::move(node));
  } catch (const std::exception& e) {
    pool_.stop();
    throw_error(Errc::invalid_argument, "bad local node resources: " + text_of(e));
  }
}

LocalRuntime::~LocalRuntime() {
  deadlines_->stop();
  pool_.stop();
}

std::shared_ptr<ActorCore> LocalRuntime::create_actor(const ClassInfo& cls, std::vector<ArgSlot> ctor_args,
                                                      ActorOptions options) {
  return create_actor_as(ActorId::random(), cls, std::move(ctor_args), std::move(options));
}

std::shared_ptr<LocalActor> LocalRuntime::create_actor_as(ActorId id, const ClassInfo& cls,
                                                          std::vector<ArgSlot> ctor_args, ActorOptions options) {
  if (!running()) throw_error(Errc::cancelled, "the runtime is shut down");
  validate_actor_options(options);

  std::shared_ptr<LocalActor> actor;
  {
    std::lock_guard lock(mutex_);
    if (!options.name.empty() && named_.count(named_key(options.namespace_, options.name))) {
      throw_error(Errc::invalid_argument,
                  "an actor named '" + options.name + "' already exists" +
                      (options.namespace_.empty() ? std::string() : " in namespace '" + options.namespace_ + "'"));
    }
    actor = std::make_shared<LocalActor>(shared_from_this(), id, cls, std::move(ctor_args),
                                         std::move(options));
    by_id_[actor->id()] = actor;
    if (!actor->name().empty()) named_[named_key(actor->options().namespace_, actor->name())] = actor;
    waiting_.push_back(actor);
  }
  retry_waiting();
  return actor;
}

bool LocalRuntime::try_place_locked(LocalActor& actor, Allocation& out, std::string& reason) {
  const auto& options = actor.options();
  ResourceSpec spec{options.resources, options.gpu_type, options.gpu_memory};
  if (options.memory > 0) spec.amounts[std::string(scheduler::kMemory)] += static_cast<double>(options.memory);
  auto request = to_request(spec);
  if (options.placement_group.valid()) {
    auto group = options.placement_group.core();
    if (group->removed) {
      reason = "its placement group was removed";
      return false;
    }
    if (!group->placed) {
      reason = "waiting for placement group " + group->id.short_hex() + ": " + group->reason;
      return false;
    }
    std::vector<int> candidates;
    if (options.bundle_index >= 0) candidates.push_back(options.bundle_index);
    else for (int i = 0; i < static_cast<int>(group->bundle_nodes.size()); ++i) candidates.push_back(i);
    std::string last_reason;
    for (int bundle : candidates) {
      std::span<scheduler::NodeState> node(&group->bundle_nodes[static_cast<std::size_t>(bundle)], 1);
      auto decision = scheduler::place(node, request);
      if (decision.placed()) {
        scheduler::allocate(node, decision);
        out.decision = std::move(decision);
        out.group = group;
        out.bundle = bundle;
        return true;
      }
      last_reason = decision.reason;
    }
    reason = "does not fit its placement-group bundle: " + last_reason;
    return false;
  }
  auto decision = scheduler::place(nodes_, request);
  if (!decision.placed()) {
    reason = decision.reason;
    return false;
  }
  scheduler::allocate(nodes_, decision);
  out.decision = std::move(decision);
  return true;
}

void LocalRuntime::retry_waiting() {
  std::vector<std::pair<std::shared_ptr<LocalActor>, Allocation>> placed;
  std::vector<std::pair<std::shared_ptr<LocalActor>, std::string>> still_waiting;
  {
    std::lock_guard lock(mutex_);
    if (!running()) return;
    std::vector<std::weak_ptr<LocalActor>> keep;
    for (auto& weak : waiting_) {
      auto actor = weak.lock();
      if (!actor || actor->state() == ActorState::dead) continue;
      Allocation allocation;
      std::string reason;
      if (try_place_locked(*actor, allocation, reason)) {
        placed.emplace_back(actor, std::move(allocation));
      } else {
        keep.push_back(weak);
        still_waiting.emplace_back(actor, std::move(reason));
      }
    }
    waiting_.swap(keep);
  }
  for (auto& [actor, reason] : still_waiting) {
    TROUPE_LOG_DEBUG("actor {} pending: {}", actor->id().short_hex(), reason);
    actor->set_pending_reason("pending: " + reason);
  }
  for (auto& [actor, allocation] : placed) actor->placed(std::move(allocation));
}

void LocalRuntime::release(const Allocation& allocation) {
  {
    std::lock_guard lock(mutex_);
    if (allocation.group) {
      if (!allocation.group->removed && allocation.bundle >= 0) {
        std::span<scheduler::NodeState> node(
            &allocation.group->bundle_nodes[static_cast<std::size_t>(allocation.bundle)], 1);
        scheduler::release(node, allocation.decision);
      }
    } else {
      scheduler::release(nodes_, allocation.decision);
    }
    retry_groups_locked();
  }
  retry_waiting();
}

void LocalRuntime::forget(const LocalActor& actor) {
  std::shared_ptr<LocalActor> keep_alive;  // destroyed outside the lock
  std::lock_guard lock(mutex_);
  by_id_.erase(actor.id());
  if (!actor.name().empty()) {
    auto it = named_.find(named_key(actor.options().namespace_, actor.name()));
    if (it != named_.end() && it->second.get() == &actor) {
      keep_alive = std::move(it->second);
      named_.erase(it);
    }
  }
}

std::shared_ptr<ActorCore> LocalRuntime::find(std::string_view name, std::string_view name_space) {
  std::lock_guard lock(mutex_);
  auto it = named_.find(named_key(name_space, name));
  if (it == named_.end()) return nullptr;
  return it->second;
}

std::shared_ptr<ActorCore> LocalRuntime::find(const ActorId& id) {
  std::lock_guard lock(mutex_);
  auto it = by_id_.find(id);
  if (it == by_id_.end()) return nullptr;
  return it->second.lock();
}

PlacementGroup LocalRuntime::create_group(std::vector<ResourceSpec> specs, PlacementStrategy strategy,
                                          std::string name) {
  if (!running()) throw_error(Errc::cancelled, "the runtime is shut down");
  if (specs.empty()) throw_error(Errc::invalid_argument, "a placement group needs at least one bundle");
  std::vector<scheduler::Bundle> bundles;
  for (const auto& spec : specs) {
    auto bundle = to_request(spec);
    double gpus = bundle.amounts.get(scheduler::kGpu);
    if (gpus > 0 && gpus < 1) {
      throw_error(Errc::unsupported, "fractional GPUs in a placement-group bundle are not supported");
    }
    if (bundle.amounts.empty()) {
      throw_error(Errc::invalid_argument, "a placement-group bundle must ask for some resource");
    }
    bundles.push_back(std::move(bundle));
  }
  std::shared_ptr<GroupCore> group;
  {
    std::lock_guard lock(mutex_);
    // groups_ holds the groups not removed: a name is free again once its group is.
    if (!name.empty()) {
      for (const auto& other : groups_) {
        if (other->name == name) {
          throw_error(Errc::invalid_argument, "a placement group named \"" + name + "\" already exists in this job (" +
                                                  other->id.short_hex() + "); remove it first or choose another name");
        }
      }
    }
    group = std::make_shared<GroupCore>(PlacementGroupId::random(), std::move(name), std::move(bundles),
                                        to_scheduler(strategy));
    groups_.push_back(group);
    retry_groups_locked();
  }
  retry_waiting();
  return PlacementGroup(group);
}

void LocalRuntime::retry_groups_locked() {
  for (auto& group : groups_) {
    if (group->placed || group->removed) continue;
    auto placement = scheduler::place_group(nodes_, group->bundles, group->strategy);
    if (!placement.placed()) {
      group->reason = placement.reason;
      continue;
    }
    scheduler::allocate_group(nodes_, placement);
    group->bundle_nodes.clear();
    for (std::size_t i = 0; i < placement.bundles.size(); ++i) {
      const auto& bundle = placement.bundles[i];
      scheduler::NodeInfo info;
      info.node_id = nodes_[static_cast<std::size_t>(bundle.node)].node_id() + "/bundle" + std::to_string(i);
      info.total = bundle.amounts;
      for (int gpu_index : bundle.gpus) {
        const auto& gpus = nodes_[static_cast<std::size_t>(bundle.node)].gpus();
        auto it = std::find_if(gpus.begin(), gpus.end(), [&](const auto& g) { return g.index == gpu_index; });
        if (it != gpus.end()) info.gpus.push_back(*it);
      }
      group->bundle_nodes.emplace_back(std::move(info));
    }
    group->placement = std::move(placement);
    group->placed = true;
    group->reason.clear();
    // Completion callbacks only post; safe under the lock.
    group->ready_promise.set_value();
  }
}

std::vector<PlacementGroup> LocalRuntime::list_groups(std::string_view name) {
  std::lock_guard lock(mutex_);
  std::vector<PlacementGroup> out;
  for (const auto& group : groups_) {
    if (name.empty() || group->name == name) out.emplace_back(group);
  }
  return out;
}

std::string LocalRuntime::group_reason(const GroupCore& group) {
  std::lock_guard lock(mutex_);
  if (group.removed) return "removed";
  return group.placed ? std::string() : group.reason;
}

void LocalRuntime::remove_group(const std::shared_ptr<GroupCore>& group) {
  std::vector<std::shared_ptr<LocalActor>> victims;
  {
    std::lock_guard lock(mutex_);
    if (group->removed) return;
    for (auto& [id, weak] : by_id_) {
      auto actor = weak.lock();
      if (actor && actor->options().placement_group.core() == group) victims.push_back(actor);
    }
  }
  for (auto& actor : victims) actor->terminate(Errc::actor_died, "its placement group was removed");
  {
    std::lock_guard lock(mutex_);
    group->removed = true;
    if (group->placed) scheduler::release_group(nodes_, group->placement);
    group->ready_promise.set_error(make_error(Errc::cancelled, "placement group removed"));
    groups_.erase(std::remove(groups_.begin(), groups_.end(), group), groups_.end());
    for (auto& actor : victims) {
      by_id_.erase(actor->id());
      if (!actor->name().empty()) {
        auto it = named_.find(named_key(actor->options().namespace_, actor->name()));
        if (it != named_.end() && it->second == actor) named_.erase(it);
      }
    }
    retry_groups_locked();
  }
  retry_waiting();
}

std::map<std::string, double> LocalRuntime::total_resources() {
  std::lock_guard lock(mutex_);
  return to_map(nodes_.front().total());
}

std::vector<NodeDescription> LocalRuntime::nodes() {
  std::lock_guard lock(mutex_);
  const scheduler::NodeState& node = nodes_.front();
  NodeDescription description;
  description.id = node.node_id();
  description.name = node.node_id();
  description.gpus = node.gpus();
  description.total = to_map(node.total());
  description.available = to_map(node.available());
  return {std::move(description)};
}

std::map<std::string, double> LocalRuntime::free_resources() {
  std::lock_guard lock(mutex_);
  return to_map(nodes_.front().available());
}

std::size_t LocalRuntime::live_actor_count() {
  std::lock_guard lock(mutex_);
  std::size_t count = 0;
  for (auto& [id, weak] : by_id_) {
    auto actor = weak.lock();
    if (actor && actor->state() != ActorState::dead) ++count;
  }
  return count;
}

void LocalRuntime::shutdown() {
  if (!running_.exchange(false)) return;
  std::vector<std::shared_ptr<LocalActor>> actors;
  std::vector<std::shared_ptr<GroupCore>> groups;
  {
    std::lock_guard lock(mutex_);
    for (auto& [id, weak] : by_id_)
      if (auto actor = weak.lock()) actors.push_back(std::move(actor));
    groups.swap(groups_);
    waiting_.clear();
  }
  for (auto& actor : actors) actor->terminate(Errc::cancelled, "the runtime shut down");
  for (auto& group : groups) group->ready_promise.set_error(make_error(Errc::cancelled, "the runtime shut down"));
  deadlines_->stop();
  pool_.stop();
  std::lock_guard lock(mutex_);
  named_.clear();
  by_id_.clear();
}

// ---- free functions the public API calls -----------------------------------

void post_task(std::function<void()> fn) {
  auto runtime = backend();
  if (runtime && runtime->running()) {
    runtime->pool().post(std::move(fn));
  } else {
    fn();
  }
}

BlockingRegion::BlockingRegion() {
  // The pool of this thread (the runtime's, or an actor host's local one)
  // gets a stand-in for as long as this thread waits.
  if (ThreadPool* pool = ThreadPool::current()) token_ = pool->add_temporary_thread();
}

BlockingRegion::~BlockingRegion() = default;

std::shared_ptr<ActorCore> create_actor(const ClassInfo& cls, std::vector<ArgSlot> ctor_args, ActorOptions options) {
  auto runtime = backend();
  if (!runtime) throw_error(Errc::invalid_argument, "troupe::init() has not been called");
  return runtime->create_actor(cls, std::move(ctor_args), std::move(options));
}

std::shared_ptr<ActorCore> find_actor(std::string_view name, std::string_view name_space) {
  auto runtime = backend();
  if (!runtime) throw_error(Errc::invalid_argument, "troupe::init() has not been called");
  return runtime->find(name, name_space);
}

std::shared_ptr<ActorCore> find_actor(const ActorId& id) {
  auto runtime = backend();
  if (!runtime) throw_error(Errc::invalid_argument, "troupe::init() has not been called");
  return runtime->find(id);
}

void throw_not_registered(const char* what, const std::type_info& type) {
  throw_error(Errc::not_registered,
              std::string(what) + " of " + type_name(type) + " is not registered: list it in TROUPE_ACTOR");
}

void throw_no_actor() { throw_error(Errc::invalid_argument, "use of an empty ActorHandle"); }

void set_backend(std::shared_ptr<Backend> runtime) {
  std::lock_guard lock(g_runtime_mutex);
  g_runtime = std::move(runtime);
  g_runtime_fast.store(g_runtime.get(), std::memory_order_release);
}

}  // namespace troupe::detail
