// ActorDirectory: every actor the head knows, by id and by (job, name), who
// watches it, and where it runs; the placement loop for actors and their
// restarts (Ray's GcsActorManager and GcsActorScheduler).
//
// Contract: an actor goes PENDING -> (placed: startActor sent to its node)
// -> ALIVE when its host reports, and to RESTARTING (placed again by the
// next pass) or DEAD when its host exits, its node is lost or it is killed.
// It restarts while maxRestarts allows, its owner (driver or job) lives and
// no kill with noRestart or failed constructor said otherwise. An actor that
// cannot be placed stays PENDING/RESTARTING with the reason in its state
// (code Errc::unschedulable when no node could ever hold it). Every change of
// state or reason goes to the owner and the watchers as an actorUpdate.
// Resources are booked on the node (or the group's bundle) from placement
// until the actor exits.
//
// Delivery to nodes: startActor and killActor are requests the node
// acknowledges; the head resends them every resend_after() until it is
// answered (the node treats a repeat as the same request: it names the
// actor and its incarnation). An actor not ALIVE actor_start_timeout_ms
// after its startActor was sent has failed to start: its host is killed and
// it restarts or dies as maxRestarts says. A kill the node answers notFound
// for the incarnation the head still thinks runs there means the host is
// gone: the actor exits then, even if the node's report of it was lost.
#pragma once

#include <functional>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "head_context.hpp"
#include "troupe/scheduler/placement.hpp"

namespace troupe::head {

class NodeTable;
class PlacementGroupManager;
class JobManager;

struct ActorEntry {
  ActorId id;
  std::unique_ptr<capnp::MallocMessageBuilder> spec;  // CreateActor
  scheduler::ResourceRequest request;
  wire::ActorState state = wire::ActorState::PENDING;
  Errc reason_code = Errc::ok;
  std::string reason;
  bool placed = false;           // startActor sent for the current incarnation
  bool holds_resources = false;
  NodeId node;
  std::vector<int> gpus;
  scheduler::ResourceSet amounts;
  int bundle = -1;               // bundle of its placement group that holds the resources
                                 // (-2: the group was removed with the whole reservation)
  std::uint32_t incarnation = 0;
  int restarts_used = 0;
  std::string address;
  std::string data_address;
  std::string owner_identity;
  // The random key given to the host of each incarnation (StartActor.hostKey):
  // an actorUpdate that does not come from the actor's node must carry it.
  std::map<std::uint32_t, std::string> host_keys;
  std::string host_identity;       // the connection of the verified host of this incarnation
  std::set<std::string> watchers;  // other processes that looked it up: they get its updates too
  WorkerId owner;                  // the driver that created it
  JobId job;
  PlacementGroupId group;          // nil: none
  std::string binary_hash;
  bool no_restart = false;       // a kill with noRestart, or a failed constructor
  // issue 12 (persist), not stored: consecutive reports of its node that did
  // not list its host while the head had it ALIVE there; when it became DEAD.
  int missing_reports = 0;
  Clock::time_point dead_since;
  std::uint64_t sequence = 0;  // creation order (stored): the order placement sees actors in

  wire::CreateActor::Reader create() { return spec->getRoot<wire::CreateActor>(); }
};

class ActorDirectory {
 public:
  ActorDirectory(HeadContext& context, NodeTable& nodes, PlacementGroupManager& groups, JobManager& jobs)
      : context_(context), nodes_(nodes), groups_(groups), jobs_(jobs) {}

  // Requests (each answers `identity`; throws troupe::Error for a bad one).
  void on_create_actor(const std::string& identity, std::uint64_t request_id, wire::CreateActor::Reader create);
  void on_actor_update(const std::string& identity, std::uint64_t request_id, wire::ActorUpdate::Reader update);
  void on_kill_actor(const std::string& identity, std::uint64_t request_id, wire::KillActor::Reader kill);
  // The job a connection acts for: a driver's job, or the job of the actor
  // whose verified host it is; nullopt for any other member (the CLI).
  std::optional<JobId> job_of_identity(const std::string& identity) const;
  void on_get_actor_by_name(const std::string& identity, std::uint64_t request_id,
                            wire::GetActorByName::Reader get);
  // A node's ack or error for a startActor or killActor we sent; an error to
  // a startActor kills the actor for good. Replies to other requests are
  // ignored.
  void on_reply_from_node(std::uint64_t request_id, wire::ControlMessage::Reader reader);
  // Resends startActor/killActor requests not answered within
  // resend_after(); fails starts older than the start timeout.
  void resend_unacknowledged(Clock::time_point now);

  // Whether the head accounts for incarnation `incarnation` of `actor` on `node`.
  bool accounted_for(const ActorId& actor, const NodeId& node, std::uint32_t incarnation) const;
  // Every actor placed on the lost node exits with Errc::node_lost.
  void node_lost(const NodeId& node, const std::string& why);
  // Kills for good every live actor `match` selects.
  void kill_actors_where(const std::function<bool(const ActorEntry&)>& match, const std::string& reason);
  // The group was removed: its actors' bundle resources are dropped with it.
  void detach_group(const PlacementGroupId& group);

  // Tries to place every PENDING/RESTARTING actor not yet placed, in creation order.
  void place_pending();

  // issue 12 (persist): a node's report (registration or heartbeat) of the
  // hosts it runs, as (actor, incarnation). Hosts the head accounts for are
  // adopted; the others are killed; an actor the head has ALIVE on `node`
  // that is missing from two reports in a row died (its exit report was
  // lost): it restarts or is DEAD.
  void reconcile_node(const NodeId& node, const std::string& identity,
                      const std::vector<std::pair<ActorId, std::uint32_t>>& hosts, bool kill_unknown);
  // The stored form of actor `key` (hex id), nullopt when forgotten.
  std::optional<std::string> encode(const std::string& key);
  // Takes a stored actor back (after the nodes and groups): its resources
  // are booked again on its node or bundle.
  void restore(const std::string& value);
  void finish_restore();  // after the last restore()
  // Forgets DEAD actors older than `retention` or beyond the newest `keep`.
  void forget_dead(Clock::time_point now, std::chrono::seconds retention, std::size_t keep);

  void fill_actor_update(wire::ActorUpdate::Builder update, ActorEntry& actor);
  const std::vector<ActorId>& order() const { return order_; }
  ActorEntry& at(const ActorId& id) { return actors_.at(id); }

 private:
  ActorEntry& actor_or_throw(const ActorId& id);
  void notify_watchers(ActorEntry& actor);
  void set_actor_state(ActorEntry& actor, wire::ActorState state, Errc code, std::string reason);
  void set_pending_reason(ActorEntry& actor, Errc code, std::string reason);
  void release_actor_resources(ActorEntry& actor);
  void send_kill_to_node(ActorEntry& actor);
  bool owner_alive(const ActorEntry& actor) const;
  void actor_exited(ActorEntry& actor, Errc code, std::string reason);
  void kill_actor(ActorEntry& actor, const std::string& reason);
  void try_place_actor(ActorEntry& actor);
  void send_start(ActorEntry& actor, const std::string& node_identity, std::uint64_t request_id);

  HeadContext& context_;
  NodeTable& nodes_;
  PlacementGroupManager& groups_;
  JobManager& jobs_;
  std::map<ActorId, ActorEntry> actors_;
  std::vector<ActorId> order_;
  // Live named actors by (scope, name): scope "job:<hex>" for a job's own
  // namespace, "ns:<namespace>" for one shared by every job (issue 13).
  std::map<std::pair<std::string, std::string>, ActorId> names_;
  struct SentRequest {  // a startActor or killActor not yet answered (a start: not yet ALIVE)
    ActorId actor;
    std::uint32_t incarnation = 0;
    NodeId node;
    Clock::time_point sent_at;
    Clock::time_point resend_at;
    bool acked = false;
  };
  std::map<std::uint64_t, SentRequest> start_requests_;  // our startActor request -> actor
  std::map<std::uint64_t, SentRequest> kill_requests_;   // our killActor request -> actor
  std::uint64_t next_sequence_ = 1;
};

}  // namespace troupe::head
