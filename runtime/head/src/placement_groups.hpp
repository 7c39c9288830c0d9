// PlacementGroupManager: placement groups, their bundle reservations on
// nodes, and the rescheduling of bundles whose node was lost (Ray's
// GcsPlacementGroupManager and GcsPlacementGroupScheduler).
//
// Contract: a group is PENDING (or INFEASIBLE, code Errc::unschedulable, when no
// cluster of these nodes could hold it) until every bundle fits at once under
// its strategy; then CREATED: each bundle's resources are taken from its node
// and become a NodeState that the group's actors are placed into. When a
// node is lost its bundles are reserved again on the nodes that remain under
// the same strategy while the group stays CREATED and its other bundles are
// untouched. Removing a group kills its actors and frees its reservations.
// Every change goes to the creator as a placementGroupUpdate.
#pragma once

#include <map>
#include <optional>
#include <string>
#include <vector>

#include "head_context.hpp"
#include "troupe/scheduler/placement.hpp"
#include "troupe/scheduler/placement_group.hpp"

namespace troupe::head {

class NodeTable;
struct NodeEntry;
class ActorDirectory;

struct GroupEntry {
  PlacementGroupId id;
  JobId job;
  std::string name;
  std::string owner_identity;
  std::vector<scheduler::Bundle> bundles;
  scheduler::Strategy strategy = scheduler::Strategy::PACK;
  wire::PlacementGroupState state = wire::PlacementGroupState::PENDING;
  Errc reason_code = Errc::ok;
  std::string reason;
  std::vector<NodeId> bundle_nodes;
  std::vector<scheduler::BundlePlacement> placements;
  // One NodeState per reserved bundle: actors of the group are placed inside
  // these exactly as ordinary actors are placed on nodes.
  std::vector<scheduler::NodeState> bundle_states;
  // Bundles whose node was lost, waiting to be reserved again elsewhere (as
  // Ray does); their bundle_nodes entry is nil meanwhile. The group stays
  // CREATED: its other bundles and their actors are untouched.
  std::vector<int> lost_bundles;
  std::uint64_t sequence = 0;       // issue 12 (persist): creation order (stored)
  // issue 13 (cluster): connections that looked the group up; they get its
  // updates as its creator does (stored).
  std::vector<std::string> watchers;
  Clock::time_point removed_since;  // when it was removed (not stored: a restart starts it again)
};

class PlacementGroupManager {
 public:
  PlacementGroupManager(HeadContext& context, NodeTable& nodes, ActorDirectory& actors)
      : context_(context), nodes_(nodes), actors_(actors) {}

  void on_create_group(const std::string& identity, std::uint64_t request_id,
                       wire::CreatePlacementGroup::Reader create);
  void on_remove_group(const std::string& identity, std::uint64_t request_id,
                       wire::RemovePlacementGroup::Reader remove);
  // issue 13 (cluster): the job's groups not removed (or the one so named),
  // as a clusterState reply; the asker watches them from now on.
  void on_get_groups(const std::string& identity, std::uint64_t request_id,
                     wire::GetPlacementGroups::Reader get);

  // Places pending groups and reserves lost bundles again, in creation order.
  void place_pending();
  // The node was lost: its bundles of created groups wait to be reserved again.
  void lose_bundles_on(const NodeId& node);

  GroupEntry* find(const PlacementGroupId& id);
  void fill_group_update(wire::PlacementGroupUpdate::Builder update, const GroupEntry& group);

  // issue 12 (persist): the stored form of group `key` (hex id), nullopt
  // when forgotten; restore() (after the nodes, before the actors) reserves
  // a created group's bundles on their nodes again.
  std::optional<std::string> encode(const std::string& key);
  void restore(const std::string& value);
  void finish_restore();
  // Forgets REMOVED groups older than `retention` or beyond the newest `keep`.
  void forget_removed(Clock::time_point now, std::chrono::seconds retention, std::size_t keep);
  const std::vector<PlacementGroupId>& order() const { return order_; }
  GroupEntry& at(const PlacementGroupId& id) { return groups_.at(id); }

 private:
  void try_place_group(GroupEntry& group);
  void try_replace_lost_bundles(GroupEntry& group);
  scheduler::NodeState reserve_bundle(NodeEntry& node, const scheduler::BundlePlacement& bp);
  void remove_group(GroupEntry& group);
  void notify_group(GroupEntry& group);

  HeadContext& context_;
  NodeTable& nodes_;
  ActorDirectory& actors_;
  std::map<PlacementGroupId, GroupEntry> groups_;
  std::vector<PlacementGroupId> order_;
  std::uint64_t next_sequence_ = 1;
};

}  // namespace troupe::head
