#include "placement_groups.hpp"

#include <algorithm>
#include <set>

#include "actor_directory.hpp"
#include "node_table.hpp"
#include "state_store.hpp"
#include "troupe/runtime/logging.hpp"

namespace troupe::head {

using wire::ControlMessage;
using wire::PlacementGroupState;

GroupEntry* PlacementGroupManager::find(const PlacementGroupId& id) {
  auto it = groups_.find(id);
  return it == groups_.end() ? nullptr : &it->second;
}

void PlacementGroupManager::place_pending() {
  for (const auto& id : order_) {
    auto& group = groups_.at(id);
    if (group.state == PlacementGroupState::PENDING || group.state == PlacementGroupState::INFEASIBLE) {
      try_place_group(group);
    } else if (group.state == PlacementGroupState::CREATED && !group.lost_bundles.empty()) {
      try_replace_lost_bundles(group);
    }
  }
}

void PlacementGroupManager::try_place_group(GroupEntry& group) {
  auto alive = nodes_.alive();
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
    auto state = placement.status == scheduler::PlacementStatus::infeasible ? PlacementGroupState::INFEASIBLE
                                                                             : PlacementGroupState::PENDING;
    if (state != group.state || placement.reason != group.reason) {
      group.state = state;
      group.reason = placement.reason;
      group.reason_code = state == PlacementGroupState::INFEASIBLE ? Errc::unschedulable : Errc::ok;
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
  group.reason_code = Errc::ok;
  TROUPE_LOG_INFO("head: placement group {} created", group.id.short_hex());
  notify_group(group);
  context_.schedule_needed = true;
}

void PlacementGroupManager::fill_group_update(wire::PlacementGroupUpdate::Builder update, const GroupEntry& group) {
  to_wire(update.initPlacementGroupId(), group.id);
  update.setState(group.state);
  auto nodes_list = update.initBundleNodes(static_cast<unsigned>(group.bundle_nodes.size()));
  for (unsigned i = 0; i < group.bundle_nodes.size(); ++i) to_wire(nodes_list[i], group.bundle_nodes[i]);
  auto reason = update.initReason();
  reason.setCode(wire_code(group.reason_code));
  reason.setMessage(group.reason);
  update.setName(group.name);
  auto bundles = update.initBundles(static_cast<unsigned>(group.bundles.size()));
  for (unsigned b = 0; b < group.bundles.size(); ++b) {
    // As drivers send them: a GPU type travels as Ray's "GPU:<type>".
    const auto& bundle = group.bundles[b];
    std::vector<std::pair<std::string, double>> items(bundle.amounts.amounts().begin(),
                                                      bundle.amounts.amounts().end());
    if (!bundle.gpu_type.empty()) items.emplace_back("GPU:" + bundle.gpu_type, bundle.amounts.get(scheduler::kGpu));
    auto resources = bundles[b].initResources(static_cast<unsigned>(items.size()));
    for (unsigned i = 0; i < items.size(); ++i) {
      resources[i].setName(items[i].first);
      resources[i].setAmount(items[i].second);
    }
  }
  switch (group.strategy) {
    case scheduler::Strategy::PACK: update.setStrategy(wire::PlacementStrategy::PACK); break;
    case scheduler::Strategy::SPREAD: update.setStrategy(wire::PlacementStrategy::SPREAD); break;
    case scheduler::Strategy::STRICT_PACK: update.setStrategy(wire::PlacementStrategy::STRICT_PACK); break;
    case scheduler::Strategy::STRICT_SPREAD: update.setStrategy(wire::PlacementStrategy::STRICT_SPREAD); break;
  }
}

void PlacementGroupManager::notify_group(GroupEntry& group) {
  context_.touch('g', group.id.hex());  // every change of a group is notified
  if (group.owner_identity.empty() && group.watchers.empty()) return;
  capnp::MallocMessageBuilder message;
  auto root = message.initRoot<ControlMessage>();
  root.setRequestId(0);
  fill_group_update(root.initPlacementGroupUpdate(), group);
  if (!group.owner_identity.empty()) context_.send_to(group.owner_identity, message);
  for (const auto& watcher : group.watchers) context_.send_to(watcher, message);
}

void PlacementGroupManager::on_get_groups(const std::string& identity, std::uint64_t request_id,
                                          wire::GetPlacementGroups::Reader get) {
  const JobId job = from_wire<JobId>(get.getJobId());
  const std::string name = get.getName().cStr();
  std::vector<GroupEntry*> shown;
  for (const auto& id : order_) {
    auto& group = groups_.at(id);
    if (group.job != job || group.state == PlacementGroupState::REMOVED) continue;
    if (!name.empty() && group.name != name) continue;
    shown.push_back(&group);
    if (identity != group.owner_identity &&
        std::find(group.watchers.begin(), group.watchers.end(), identity) == group.watchers.end()) {
      group.watchers.push_back(identity);
      context_.touch('g', group.id.hex());
    }
  }
  capnp::MallocMessageBuilder message;
  auto root = message.initRoot<ControlMessage>();
  root.setRequestId(request_id);
  auto list = root.initClusterState().initPlacementGroups(static_cast<unsigned>(shown.size()));
  for (unsigned i = 0; i < shown.size(); ++i) fill_group_update(list[i], *shown[i]);
  context_.send_to(identity, message);
}

void PlacementGroupManager::on_create_group(const std::string& identity, std::uint64_t request_id,
                                            wire::CreatePlacementGroup::Reader create) {
  PlacementGroupId id = from_wire<PlacementGroupId>(create.getPlacementGroupId());
  if (id.nil()) throw Error(Errc::invalid_argument, "createPlacementGroup without an id");
  if (groups_.count(id) != 0) {
    context_.reply_ack(identity, request_id);
    return;
  }
  GroupEntry group;
  group.id = id;
  group.job = from_wire<JobId>(create.getJobId());
  group.name = create.getName().cStr();
  // issue 13 (cluster): as Ray, a name names one group (of the job) until it is removed.
  if (!group.name.empty()) {
    for (const auto& [other_id, other] : groups_) {
      if (other.job == group.job && other.name == group.name && other.state != PlacementGroupState::REMOVED) {
        throw Error(Errc::invalid_argument, "a placement group named \"" + group.name +
                                                "\" already exists in this job (" + other_id.short_hex() +
                                                "); remove it first or choose another name");
      }
    }
  }
  group.owner_identity = identity;
  if (create.getBundles().size() == 0) throw Error(Errc::invalid_argument, "a placement group needs bundles");
  // A list of empty structs costs its sender nothing per element (found by
  // fuzz_head: a small frame made the head allocate 700 MB).
  constexpr unsigned kMaxBundles = 1024;
  if (create.getBundles().size() > kMaxBundles)
    throw Error(Errc::invalid_argument, "a placement group of " + std::to_string(create.getBundles().size()) +
                                            " bundles (at most " + std::to_string(kMaxBundles) + ")");
  for (auto bundle : create.getBundles()) {  // a bad one throws SpecError (invalid_argument)
    scheduler::Bundle request;
    request.amounts = resources_from_wire(bundle.getResources());
    group.bundles.push_back(scheduler::normalize(request));
  }
  switch (create.getStrategy()) {
    case wire::PlacementStrategy::PACK: group.strategy = scheduler::Strategy::PACK; break;
    case wire::PlacementStrategy::SPREAD: group.strategy = scheduler::Strategy::SPREAD; break;
    case wire::PlacementStrategy::STRICT_PACK: group.strategy = scheduler::Strategy::STRICT_PACK; break;
    case wire::PlacementStrategy::STRICT_SPREAD: group.strategy = scheduler::Strategy::STRICT_SPREAD; break;
  }
  group.reason = "waiting to be scheduled";
  group.sequence = next_sequence_++;
  context_.touch('g', id.hex());
  groups_.emplace(id, std::move(group));
  order_.push_back(id);
  context_.reply_ack(identity, request_id);
  context_.schedule_needed = true;
}

void PlacementGroupManager::on_remove_group(const std::string& identity, std::uint64_t request_id,
                                            wire::RemovePlacementGroup::Reader remove) {
  PlacementGroupId id = from_wire<PlacementGroupId>(remove.getPlacementGroupId());
  auto it = groups_.find(id);
  if (it == groups_.end()) throw Error(Errc::not_found, "no placement group " + id.hex());
  remove_group(it->second);
  context_.reply_ack(identity, request_id);
}

// Takes a bundle's resources from its node; returns the NodeState that
// actors of the bundle are placed into.
scheduler::NodeState PlacementGroupManager::reserve_bundle(NodeEntry& node, const scheduler::BundlePlacement& bp) {
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
void PlacementGroupManager::lose_bundles_on(const NodeId& node_id) {
  for (const auto& id : order_) {
    auto& group = groups_.at(id);
    if (group.state != PlacementGroupState::CREATED) continue;
    bool lost = false;
    for (int b = 0; b < static_cast<int>(group.bundle_nodes.size()); ++b) {
      if (group.bundle_nodes[b] != node_id) continue;
      group.bundle_nodes[b] = NodeId{};
      group.lost_bundles.push_back(b);
      lost = true;
    }
    if (!lost) continue;
    group.reason =
        "rescheduling " + std::to_string(group.lost_bundles.size()) + " bundle(s) of lost node " + node_id.short_hex();
    TROUPE_LOG_WARN("head: placement group {}: {}", group.id.short_hex(), group.reason);
    notify_group(group);
    context_.schedule_needed = true;
  }
}

void PlacementGroupManager::try_replace_lost_bundles(GroupEntry& group) {
  // STRICT_SPREAD keeps every bundle on its own node; STRICT_PACK keeps
  // them on the survivors' node (all of them were lost when there are none).
  std::set<NodeId> holding;
  for (const auto& node : group.bundle_nodes)
    if (!node.nil()) holding.insert(node);
  std::vector<NodeEntry*> candidates;
  for (auto* node : nodes_.alive()) {
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
  context_.schedule_needed = true;
}

void PlacementGroupManager::remove_group(GroupEntry& group) {
  if (group.state == PlacementGroupState::REMOVED) return;
  actors_.kill_actors_where([&](const ActorEntry& a) { return a.group == group.id; },
                            "its placement group was removed");
  if (group.state == PlacementGroupState::CREATED) {
    for (std::size_t b = 0; b < group.placements.size(); ++b) {
      NodeEntry* node = nodes_.find(group.bundle_nodes[b]);
      if (node == nullptr || !node->alive) continue;
      try {
        node->state.release(group.placements[b].amounts, group.placements[b].gpus);
      } catch (const std::exception& error) {
        TROUPE_LOG_ERROR("head: releasing bundle {} of group {}: {}", b, group.id.hex(), error.what());
      }
    }
  }
  // Actors still holding bundle resources release into states we drop now.
  actors_.detach_group(group.id);
  group.bundle_states.clear();
  group.state = PlacementGroupState::REMOVED;
  group.removed_since = context_.now();
  group.reason = "removed";
  notify_group(group);
  context_.schedule_needed = true;
}

// --- issue 12 (persist): the stored form, retention ---------------------------------

namespace {
void write_amounts(RecordWriter& out, const scheduler::ResourceSet& set) {
  out.u64(set.amounts().size());
  for (const auto& [name, amount] : set.amounts()) out.str(name).f64(amount);
}
scheduler::ResourceSet read_amounts(RecordReader& in) {
  scheduler::ResourceSet set;
  for (auto n = in.u64(); n > 0; --n) {
    std::string name = in.str();
    set.set(name, in.f64());
  }
  return set;
}
}  // namespace

std::optional<std::string> PlacementGroupManager::encode(const std::string& key) {
  auto id = PlacementGroupId::parse(key);
  GroupEntry* found = id ? find(*id) : nullptr;
  if (found == nullptr) return std::nullopt;
  const GroupEntry& group = *found;
  RecordWriter out;
  out.id(group.id).u64(group.sequence).id(group.job).str(group.name).str(group.owner_identity);
  out.u64(group.bundles.size());
  for (const auto& bundle : group.bundles) {
    write_amounts(out, bundle.amounts);
    out.str(bundle.gpu_type).u64(bundle.gpu_memory_bytes);
  }
  out.u64(static_cast<std::uint64_t>(group.strategy))
      .u64(static_cast<std::uint64_t>(group.state))
      .u64(wire_code(group.reason_code))
      .str(group.reason);
  out.u64(group.bundle_nodes.size());
  for (const auto& node : group.bundle_nodes) out.id(node);
  out.u64(group.placements.size());
  for (const auto& placement : group.placements) {
    out.i64(placement.node).u64(placement.gpus.size());
    for (int gpu : placement.gpus) out.i64(gpu);
    write_amounts(out, placement.amounts);
  }
  out.u64(group.lost_bundles.size());
  for (int b : group.lost_bundles) out.i64(b);
  out.u64(group.watchers.size());  // issue 13 (cluster)
  for (const auto& watcher : group.watchers) out.str(watcher);
  return out.take();
}

void PlacementGroupManager::restore(const std::string& value) {
  RecordReader in(value);
  GroupEntry group;
  group.id = in.id<PlacementGroupId>();
  group.sequence = in.u64();
  group.job = in.id<JobId>();
  group.name = in.str();
  group.owner_identity = in.str();
  for (auto n = in.u64(); n > 0; --n) {
    scheduler::Bundle bundle;
    bundle.amounts = read_amounts(in);
    bundle.gpu_type = in.str();
    bundle.gpu_memory_bytes = in.u64();
    group.bundles.push_back(std::move(bundle));
  }
  group.strategy = static_cast<scheduler::Strategy>(in.u64());
  group.state = static_cast<PlacementGroupState>(in.u64());
  group.reason_code = errc_from_wire(static_cast<std::uint16_t>(in.u64()));
  group.reason = in.str();
  for (auto n = in.u64(); n > 0; --n) group.bundle_nodes.push_back(in.id<NodeId>());
  for (auto n = in.u64(); n > 0; --n) {
    scheduler::BundlePlacement placement;
    placement.node = static_cast<int>(in.i64());
    for (auto g = in.u64(); g > 0; --g) placement.gpus.push_back(static_cast<int>(in.i64()));
    placement.amounts = read_amounts(in);
    group.placements.push_back(std::move(placement));
  }
  for (auto n = in.u64(); n > 0; --n) group.lost_bundles.push_back(static_cast<int>(in.i64()));
  if (!in.done()) {  // issue 13 (cluster); absent from records of an older head
    for (auto n = in.u64(); n > 0; --n) group.watchers.push_back(in.str());
  }
  group.removed_since = context_.now();
  if (group.state == PlacementGroupState::CREATED) {
    // Its reservations are taken from its nodes again, as when it was placed.
    for (std::size_t b = 0; b < group.placements.size(); ++b) {
      NodeEntry* node = b < group.bundle_nodes.size() ? nodes_.find(group.bundle_nodes[b]) : nullptr;
      if (node == nullptr) {
        group.bundle_states.emplace_back(scheduler::NodeInfo{});  // a lost bundle: replaced when reserved again
        continue;
      }
      try {
        group.bundle_states.push_back(reserve_bundle(*node, group.placements[b]));
      } catch (const std::exception& error) {
        TROUPE_LOG_ERROR("head: reserving bundle {} of recovered group {}: {}", b, group.id.hex(), error.what());
        group.bundle_states.emplace_back(scheduler::NodeInfo{});
      }
    }
  }
  next_sequence_ = std::max(next_sequence_, group.sequence + 1);
  PlacementGroupId id = group.id;
  groups_.emplace(id, std::move(group));
  order_.push_back(id);
  context_.schedule_needed = true;
}

void PlacementGroupManager::finish_restore() {
  std::sort(order_.begin(), order_.end(), [&](const PlacementGroupId& a, const PlacementGroupId& b) {
    return groups_.at(a).sequence < groups_.at(b).sequence;
  });
}

void PlacementGroupManager::forget_removed(Clock::time_point now, std::chrono::seconds retention, std::size_t keep) {
  std::vector<GroupEntry*> removed;
  for (auto& [id, group] : groups_) {
    if (group.state == PlacementGroupState::REMOVED) removed.push_back(&group);
  }
  std::sort(removed.begin(), removed.end(),
            [](GroupEntry* a, GroupEntry* b) { return a->removed_since > b->removed_since; });
  std::set<PlacementGroupId> forget;
  for (std::size_t i = 0; i < removed.size(); ++i) {
    if (i >= keep || now - removed[i]->removed_since > retention) forget.insert(removed[i]->id);
  }
  if (forget.empty()) return;
  for (const auto& id : forget) {
    groups_.erase(id);
    context_.touch('g', id.hex());
  }
  std::erase_if(order_, [&](const PlacementGroupId& id) { return forget.count(id) != 0; });
}

}  // namespace troupe::head
