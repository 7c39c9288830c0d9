// NodeTable: the nodes that registered, their resources as the scheduler
// books them, and their heartbeats (Ray's GcsNodeManager).
//
// Contract: a node is alive from its registerNode until it is silent for
// longer than node_timeout(); any message from its connection counts, not
// only heartbeats. Silent for suspect_after() it is SUSPECTED: it stays
// alive (its actors keep running) but gets no new placements, and the head
// sends it probeNode every heartbeat period; it is declared dead only when
// it stays silent for the probe timeout after the suspicion too. A repeated
// registration of an alive node keeps its books; one of a lost node starts
// them afresh and tells the node it had been declared dead (it stops its
// actor hosts: fencing). A heartbeat of an unknown or lost node is answered
// with reregister (and declaredDead for a lost one). The table never kills
// actors itself: expire() returns the nodes just lost and the server tells
// the actor directory and the placement groups.
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
  Clock::time_point last_heartbeat;  // last message from its connection
  bool suspected = false;            // silent for suspect_after(): probed
  Clock::time_point suspected_since;
  Clock::time_point next_probe;

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

  // Suspects (and probes) every alive node silent since before
  // now - suspect_after(); marks lost (logging why) every suspected node
  // still silent since before now - node_timeout() and suspected for at
  // least the probe timeout, and returns those, in registration order.
  std::vector<NodeEntry*> expire(Clock::time_point now);
  // A message came from `identity`: if it is an alive node's connection,
  // it is heard from (and no longer suspected).
  void heard_from(const std::string& identity, Clock::time_point now);
  // The head itself did not run for `gap` (stopped, or starved of CPU): the
  // silence of that time is not the nodes' (their clocks move on by it).
  void forgive(Clock::duration gap, Clock::time_point now);

  NodeEntry* find(const NodeId& id);
  // The alive node whose node manager is connected as `identity`, if any.
  NodeEntry* by_identity(const std::string& identity);
  // Alive nodes that are not suspected, in registration order: the nodes
  // placement may use, in the order it sees them.
  std::vector<NodeEntry*> alive();
  const std::vector<std::unique_ptr<NodeEntry>>& all() const { return nodes_; }

  // issue 12 (persist): the stored form of node `key` (its hex id), nullopt
  // when unknown; restore() takes one back after a head restart: a node
  // alive then awaits its node manager (a heartbeat or a registration)
  // for node_timeout() from now, like a node that just registered.
  std::optional<std::string> encode(const std::string& key);
  void restore(const std::string& value);
  // The recovered node `id` (the head's own, whose node manager ended with
  // the previous head process) may be registered again by a new connection.
  void release_identity(const NodeId& id);

 private:
  HeadContext& context_;
  std::vector<std::unique_ptr<NodeEntry>> nodes_;
};

}  // namespace troupe::head
