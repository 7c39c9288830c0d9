// HeadClient: this process's RPCs to the head over its control channel
// (transport::ControlChannel, a DEALER owned by its own thread): register
// the driver (and upload its binary), create actors and placement groups,
// look actors up, kill them, read the cluster's resources, report the
// hosted actor's state, and send the driver's heartbeats.
//
// Contract: every method may be called from any thread and blocks until
// the head answers, bounded by the request timeout; failures are
// troupe::Error (timeout, cancelled once stopped, or the code of the head's
// `error` reply). Messages the head pushes (actor and placement-group
// updates) go to the handler given at construction, on the channel's
// thread. It holds no runtime state of its own beyond ids and the channel.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <capnp/message.h>

#include "troupe/runtime/actor.hpp"
#include "troupe/runtime/registry.hpp"
#include "troupe/scheduler/placement_group.hpp"
#include "troupe/transport/internal/channels.hpp"
#include "wire_util.hpp"

namespace troupe::detail {

// Sends `message` on `channel` and returns the head's reply; an `error`
// reply is thrown as the troupe::Error it names, a transport failure
// (timeout, closed channel) as the troupe::Error with its code.
transport::ReceivedMessage request_head(transport::ControlChannel& channel, capnp::MallocMessageBuilder& message,
                                        std::chrono::milliseconds timeout);

class HeadClient {
 public:
  using PushHandler = transport::ControlChannel::PushHandler;
  HeadClient(const std::string& head_address, std::string identity, std::chrono::milliseconds request_timeout,
             PushHandler on_push);
  ~HeadClient();

  // request_head() on this client's channel, with its request timeout.
  // issue 12 (persist): a request without an answer is sent again (after 2 s,
  // then 4 s, ...) until the timeout, so one lost with a head that crashed
  // reaches the restarted head; every request is one the head may see
  // twice (creations and kills name their actor or group, lookups are reads).
  transport::ReceivedMessage request(capnp::MallocMessageBuilder& message);
  transport::ReceivedMessage request(capnp::MallocMessageBuilder& message, std::chrono::milliseconds timeout);

  // Registers this driver (worker_id, job from TROUPE_JOB_ID if set),
  // uploads its binary when the head lacks it, and starts heartbeats. A
  // heartbeat the head answers with not_found (it lost this driver: a
  // restarted head without its state) sends the registration again.
  // Returns the job id the head assigned.
  JobId register_driver(const WorkerId& worker_id, const std::string& head_address);
  // Asks the head to create actor `actor_id` of `cls` for `job_id`, owned by
  // `owner_id`; `ctor_args` are the encoded constructor arguments;
  // `group_id` its placement group's id, 0 for none.
  void create_actor(ActorId actor_id, const JobId& job_id, const WorkerId& owner_id, const ClassInfo& cls,
                    const std::vector<std::string>& ctor_args, const ActorOptions& options, PlacementGroupId group_id);
  // Asks the head to reserve placement group `group_id` (its bundles as
  // the scheduler states them; a GPU type travels as "GPU:<type>").
  void create_group(PlacementGroupId group_id, const JobId& job_id, const std::string& name,
                    const std::vector<scheduler::Bundle>& bundles, wire::PlacementStrategy strategy);
  // Kills an actor (no_restart: for good).
  void kill_actor(ActorId actor_id, bool no_restart);
  // The head's answer to a lookup by name (or by id when `name` is empty):
  // an ActorUpdate reply, or nothing when there is no such actor.
  std::optional<transport::ReceivedMessage> get_actor(const JobId& job_id, std::string_view name,
                                                      std::string_view name_space, ActorId actor_id);
  // Sums the resources of the alive nodes: their totals, or what is free.
  std::map<std::string, double> cluster_totals(bool available);
  void remove_group(PlacementGroupId group_id);
  // The job's groups not removed (only the one so named when `name` is not
  // empty), as a clusterState reply; their later updates come as pushes.
  transport::ReceivedMessage get_groups(const JobId& job_id, std::string_view name);
  void stop();

 private:
  void on_message(wire::ControlMessage::Reader message);

  PushHandler on_push_;
  std::unique_ptr<capnp::MallocMessageBuilder> registration_;  // control thread only, once heartbeating
  std::unique_ptr<transport::ControlChannel> channel_;
  std::chrono::milliseconds request_timeout_;
  std::uint64_t heartbeat_seq_ = 0;  // control thread only
};

}  // namespace troupe::detail
