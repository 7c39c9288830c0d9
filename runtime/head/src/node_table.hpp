// NodeTable: the nodes that registered, their resources as the scheduler
// books them, and their heartbeats (Ray's GcsNodeManager).
//
// Contract: a node is alive from its registerNode until it is silent for
// longer than node_timeout(); a repeated registration of an alive node keeps
// its books; one of a lost node starts them afresh. A heartbeat of an unknown
// or lost node is answered with reregister. The table never kills actors
// itself: expire() returns the nodes just lost and the server tells the
// actor directory and the placement groups.
#pragma once

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "head_context.hpp"
#include "troupe/scheduler/placement.hpp"

namespace troupe::head {

struct NodeEntry {
  NodeId id;
  std::string identity;
  std::unique_ptr<capnp::MallocMessageBuilder> registration;  // RegisterNode
  scheduler::NodeState state;
  bool alive = true;
  Clock::time_point last_heartbeat;

  NodeEntry(NodeId id, scheduler::NodeState state) : id(id), state(std::move(state)) {}
  wire::RegisterNode::Reader info() { return registration->getRoot<wire::RegisterNode>(); }
};

class NodeTable {
 public:
  explicit NodeTable(HeadContext& context) : context_(context) {}

  // Answers registerNodeReply. Throws troupe::Error for a protocol mismatch
  // (Errc::protocol) or a malformed registration (Errc::invalid_argument).
  void on_register_node(const std::string& identity, std::uint64_t request_id,
                        wire::RegisterNode::Reader reg);
  // Answers heartbeatAck. For an alive node, first sends killActor for every
  // actor it reports that `accounted_for(actor, incarnation)` denies.
  void on_heartbeat(const std::string& identity, std::uint64_t request_id,
                    wire::Heartbeat::Reader heartbeat,
                    const std::function<bool(const ActorId& actor, std::uint32_t incarnation)>& accounted_for);

  // Marks every alive node silent since before now - node_timeout() lost
  // (logging why) and returns them, in registration order.
  std::vector<NodeEntry*> expire(Clock::time_point now);

  NodeEntry* find(const NodeId& id);
  // The alive node whose node manager is connected as `identity`, if any.
  NodeEntry* by_identity(const std::string& identity);
  // Alive nodes in registration order: the order placement sees them in.
  std::vector<NodeEntry*> alive();
  const std::vector<std::unique_ptr<NodeEntry>>& all() const { return nodes_; }

  // issue 12 (persist): the stored form of node `key` (its hex id), nullopt
  // when unknown; restore() takes one back after a head restart: a node
  // alive then awaits its node manager (a heartbeat or a registration)
  // for node_timeout() from now, like a node that just registered.
  std::optional<std::string> encode(const std::string& key);
  void restore(const std::string& value);

 private:
  HeadContext& context_;
  std::vector<std::unique_ptr<NodeEntry>> nodes_;
};

}  // namespace troupe::head
