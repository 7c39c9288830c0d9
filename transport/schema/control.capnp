# Control plane: workers, drivers and the CLI talk to the head over
# ZeroMQ (DEALER -> head ROUTER for requests, head PUB -> SUB for events).
# Each message is one ControlMessage in one frame (see framing.hpp).
@0xb47237359563fb10;

using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("troupe::wire");

using Common = import "common.capnp";
using ActorId = Common.ActorId;
using ErrorInfo = Common.ErrorInfo;
using GpuInfo = Common.GpuInfo;
using JobId = Common.JobId;
using NodeId = Common.NodeId;
using PlacementGroupId = Common.PlacementGroupId;
using Resource = Common.Resource;
using WorkerId = Common.WorkerId;

# --- nodes --------------------------------------------------------------------

struct RegisterNode {
  # worker -> head, on start and whenever the head answers a heartbeat with
  # reregister. Reply: registerNodeReply, or error.
  protocolVersion @0 :UInt32;    # Common.protocolVersion of the sender
  nodeId @1 :NodeId;             # chosen by the worker; stable across re-registration
  address @2 :Text;              # node manager's ZeroMQ endpoint
  hostname @3 :Text;
  numCpus @4 :UInt32;
  memoryBytes @5 :UInt64;
  gpus @6 :List(GpuInfo);
  resources @7 :List(Resource);  # custom resources, beyond CPU/GPU/memory
  ucxAddress @8 :Data;           # node manager's UCX worker address
  transports @9 :List(Text);     # data-plane transports available, e.g. "shm", "tcp", "rc", "cuda_ipc"
  cudaStaging @10 :Bool;         # CUDA buffers are staged through pinned host memory
  # issue 12 (persist)
  actors @11 :List(ActorStatus);  # the actor hosts this node runs now: a restarted head adopts
                                  # those it knows (same incarnation) and has the others killed
}

struct RegisterNodeReply {
  headNodeId @0 :NodeId;
  heartbeatIntervalMs @1 :UInt32;  # how often the worker must send a Heartbeat
  nodeTimeoutMs @2 :UInt32;        # silence after which the head declares the node lost
  eventsAddress @3 :Text;          # head's PUB endpoint for actorUpdate/nodeUpdate/jobUpdate
  # issue 12 (detect)
  declaredDead @4 :Bool;           # the head had declared this node dead: stop every actor host first (fencing)
}

enum ActorState {
  pending @0;     # accepted, not yet placed or not yet started
  alive @1;
  restarting @2;  # its process died and a restart is under way
  dead @3;        # final
}

struct ActorStatus {
  actorId @0 :ActorId;
  state @1 :ActorState;
  incarnation @2 :UInt32;
  pid @3 :UInt32;
}

struct Heartbeat {
  # worker -> head every heartbeatIntervalMs. Reply: heartbeatAck.
  nodeId @0 :NodeId;
  seq @1 :UInt64;                  # increases by one per heartbeat from this node
  actors @2 :List(ActorStatus);    # every actor host this node runs
  available @3 :List(Resource);    # resources not held by any actor or bundle
}

struct HeartbeatAck {
  seq @0 :UInt64;
  reregister @1 :Bool;  # the head does not know this node (it restarted): send RegisterNode
  # issue 12 (detect)
  declaredDead @2 :Bool;  # the head declared this node dead: stop every actor host (fencing), then register again
}

enum NodeState {
  alive @0;
  dead @1;  # stopped heartbeating or was stopped; final for this nodeId
  # issue 12 (detect)
  suspected @2;  # missed heartbeats: probed, declared dead unless it answers
}

struct NodeUpdate {
  # head -> subscribers when a node joins or is lost.
  nodeId @0 :NodeId;
  state @1 :NodeState;
  address @2 :Text;
  reason @3 :ErrorInfo;  # why it died (nodeLost), else code ok
}

struct NodeInfo {
  node @0 :RegisterNode;
  state @1 :NodeState;
  available @2 :List(Resource);
  lastHeartbeatAgeMs @3 :UInt64;
}

# --- actors -------------------------------------------------------------------

struct CreateActor {
  # driver -> head. Reply: actorUpdate (state pending), or error
  # (unschedulable, invalidArgument for a duplicate name).
  actorId @0 :ActorId;            # chosen by the driver so calls can be queued at once
  jobId @1 :JobId;
  ownerId @2 :WorkerId;           # the driver; the actor dies with its job
  className @3 :Text;             # registered actor class
  name @4 :Text;                  # unique within its namespace (actorNamespace), or empty
  ctorArgs @5 :Data;              # serialized constructor arguments
  resources @6 :List(Resource);
  gpuType @7 :Text;               # required GPU model substring, or empty for any
  gpuMemoryBytes @8 :UInt64;      # minimum free GPU memory, or 0
  maxRestarts @9 :Int32;          # -1 = unlimited
  maxConcurrency @10 :UInt32;     # 1 = one call at a time (the default)
  placementGroupId @11 :PlacementGroupId;  # zero = none
  bundleIndex @12 :Int32;         # -1 = any bundle of the group
  # issue 12 (calls)
  maxPendingCalls @13 :UInt64;    # the host's bound on the calls queued from one caller (0 = default); past it a call is answered error overloaded
  detached @14 :Bool;             # the actor runs on maxConcurrency threads of its own (ActorOptions::detached)
  # issue 13 (cluster)
  env @15 :List(EnvVar);          # set in the actor host's environment (ActorOptions::env over the job's --env)
  actorNamespace @16 :Text;       # where `name` lives: empty = the job's own, else shared by every job
  # issue 12 (calls): the creator's caller-side policy, kept so that a
  # handle looked up by name or id calls the actor the same way
  maxTaskRetries @17 :Int32;      # ActorOptions::max_task_retries (-1 = no limit)
  failWhenOverloaded @18 :Bool;   # ActorOptions::backpressure == fail
}

struct StartActor {
  # head -> worker: start (or restart) one actor host. Reply: ack or error;
  # progress is reported by the worker as actorUpdate.
  spec @0 :CreateActor;
  incarnation @1 :UInt32;         # 0 at creation, +1 per restart
  gpuIndices @2 :List(UInt32);    # devices for CUDA_VISIBLE_DEVICES, in order
  jobBinaryHash @3 :Text;         # the job binary to run in worker mode (from the node's cache)
  hostKey @4 :Data;               # 16 random bytes for this placement: the host presents them in its actorUpdates
}

struct ActorUpdate {
  # worker -> head on every state change; head -> subscribers and as the
  # reply to createActor/getActorByName.
  actorId @0 :ActorId;
  state @1 :ActorState;
  nodeId @2 :NodeId;
  address @3 :Text;               # actor host's call-plane endpoint, once alive
  dataAddress @4 :Data;           # actor host's UCX worker address, once alive
  incarnation @5 :UInt32;
  className @6 :Text;
  name @7 :Text;
  reason @8 :ErrorInfo;           # why it is restarting or dead, else code ok
  gpuIndices @9 :List(UInt32);    # the node's GPUs assigned to it, once placed
  hostKey @10 :Data;              # actor host -> head only: StartActor.hostKey, proving it is the host the head started
  # issue 12 (calls): the creator's caller-side policy (CreateActor), for a
  # handle made from this update by a lookup
  maxTaskRetries @11 :Int32;
  maxPendingCalls @12 :UInt64;    # 0 = the default
  failWhenOverloaded @13 :Bool;
}

struct KillActor {
  # driver -> head, head -> worker. Reply: ack, or error notFound.
  actorId @0 :ActorId;
  noRestart @1 :Bool;             # true: dead for good; false: restart if restarts remain
  # issue 12 (detect)
  incarnation @2 :UInt32 = 0xffffffff;  # head -> worker: kill hosts of this incarnation or earlier (default: any)
}

struct GetActorByName {
  # driver or actor host -> head. Reply: actorUpdate, or error notFound.
  # With an empty name, looks the actor up by actorId instead (an
  # ActorHandle received from another process). The asker then gets the
  # actor's later actorUpdates too, as its owner does.
  jobId @0 :JobId;
  name @1 :Text;
  actorId @2 :ActorId;
  # issue 13 (cluster)
  actorNamespace @3 :Text;        # empty: the job's own
}

# --- placement groups ---------------------------------------------------------

struct Bundle {
  resources @0 :List(Resource);
}

enum PlacementStrategy {
  pack @0;          # as few nodes as possible, spread if it must
  spread @1;        # as many nodes as possible, pack if it must
  strictPack @2;    # all bundles on one node, or fail
  strictSpread @3;  # each bundle on a different node, or fail
}

struct CreatePlacementGroup {
  # driver -> head. Reply: placementGroupUpdate, or error.
  placementGroupId @0 :PlacementGroupId;
  jobId @1 :JobId;
  name @2 :Text;                  # unique among the job's groups not removed, or empty
  bundles @3 :List(Bundle);
  strategy @4 :PlacementStrategy;
}

enum PlacementGroupState {
  pending @0;     # waiting for resources
  created @1;     # every bundle reserved
  infeasible @2;  # no cluster of the current nodes can ever satisfy it
  removed @3;
}

struct PlacementGroupUpdate {
  placementGroupId @0 :PlacementGroupId;
  state @1 :PlacementGroupState;
  bundleNodes @2 :List(NodeId);   # node of each bundle, in bundle order, once created
  reason @3 :ErrorInfo;
  # issue 13 (cluster): what a lookup by name needs to rebuild the group's handle
  name @4 :Text;
  bundles @5 :List(Bundle);
  strategy @6 :PlacementStrategy;
}

# issue 13 (cluster)
struct GetPlacementGroups {
  # driver or actor host -> head. Reply: clusterState holding only the
  # job's placement groups that are not removed (only the one named `name`
  # when it is not empty). The asker then gets those groups' later
  # placementGroupUpdates too, as their creator does.
  jobId @0 :JobId;
  name @1 :Text;
}

struct RemovePlacementGroup {
  # driver -> head. Reply: ack. Actors placed in the group are killed.
  placementGroupId @0 :PlacementGroupId;
}

# --- jobs ---------------------------------------------------------------------

struct EnvVar {
  name @0 :Text;
  value @1 :Text;
}

struct SubmitJob {
  # CLI -> head. Reply: jobUpdate (state pending) with the assigned jobId, or error.
  protocolVersion @0 :UInt32;
  name @1 :Text;
  argv @2 :List(Text);            # argv[0] is the binary's file name
  env @3 :List(EnvVar);
  binaryHash @4 :Text;            # content hash; workers cache binaries by it
  binary @5 :Data;                # the executable, or empty when the head already has binaryHash
  resources @6 :List(Resource);   # for the driver process
}

enum JobState {
  pending @0;
  running @1;
  succeeded @2;
  failed @3;
  stopped @4;
}

struct JobUpdate {
  # head -> CLI/subscribers on every state change.
  jobId @0 :JobId;
  state @1 :JobState;
  name @2 :Text;
  driverNodeId @3 :NodeId;
  exitCode @4 :Int32;             # meaningful once succeeded/failed
  error @5 :ErrorInfo;            # why it failed or was stopped, else code ok
}

struct StopJob {
  # CLI -> head. Reply: jobUpdate, or error notFound. Kills the driver and its actors.
  jobId @0 :JobId;
}

# --- cluster state ------------------------------------------------------------

struct GetClusterState {
  # CLI -> head (`troupe status`). Reply: clusterState.
  includeDead @0 :Bool;
}

struct ClusterState {
  nodes @0 :List(NodeInfo);
  actors @1 :List(ActorUpdate);
  placementGroups @2 :List(PlacementGroupUpdate);
  jobs @3 :List(JobUpdate);
  insecure @4 :Bool;              # the head runs without a cluster secret (--insecure)
}

# --- envelope -----------------------------------------------------------------

# A driver (the job's main process) announces itself; the head replies with
# a RegisterDriverReply. Actors it creates belong to jobId and die with it.
struct RegisterDriver {
  protocolVersion @0 :UInt32;
  workerId @1 :WorkerId;          # the driver's id; also its ZeroMQ identity at the head
  jobId @2 :JobId;                # from TROUPE_JOB_ID when started by `troupe submit`, else zero (head assigns)
  binaryHash @3 :Text;            # content hash of the driver's executable
  pid @4 :UInt32;
  hostname @5 :Text;
}
struct RegisterDriverReply {
  jobId @0 :JobId;
  needBinary @1 :Bool;            # the head lacks binaryHash: send UploadBinary
  heartbeatIntervalMs @2 :UInt32; # drivers heartbeat too; a silent driver's actors are cleaned up
  driverTimeoutMs @3 :UInt32;
}
struct UploadBinary {
  binaryHash @0 :Text;
  binary @1 :Data;
}
# Node manager -> head: fetch a job binary by hash (reply: binaryData),
# in chunks (maxBytes > 0) so that the head's other messages to the node
# (heartbeat acks) never wait behind tens of MB; maxBytes 0 asks for the
# whole binary in one message.
struct FetchBinary {
  binaryHash @0 :Text;
  offset @1 :UInt64;
  maxBytes @2 :UInt32;
}
# Head -> node: bytes [offset, offset + binary.size()) of a binary of
# totalBytes bytes (totalBytes 0: the whole binary).
struct BinaryData {
  binaryHash @0 :Text;
  binary @1 :Data;
  offset @2 :UInt64;
  totalBytes @3 :UInt64;
}
# CLI -> head: read a job's combined stdout/stderr from byte `offset`.
struct JobLogs {
  jobId @0 :JobId;
  offset @1 :UInt64;
  maxBytes @2 :UInt32;
}
struct JobLogsReply {
  data @0 :Data;
  nextOffset @1 :UInt64;
  job @2 :JobUpdate;              # current state; logs are complete once state is final
}
# Driver -> head, periodically.
struct DriverHeartbeat {
  workerId @0 :WorkerId;
  seq @1 :UInt64;
}
# issue 12 (detect)
# Head -> node manager: a node that missed heartbeats is probed before it is
# declared dead. Reply: ack (any message from the node counts as an answer).
struct ProbeNode {
  nodeId @0 :NodeId;
}

struct ControlMessage {
  requestId @0 :UInt64;
  # A request carries a sender-chosen non-zero id; its reply (or error) carries
  # the same id. Zero marks a message that expects no reply (events).
  union {
    registerNode @1 :RegisterNode;
    registerNodeReply @2 :RegisterNodeReply;
    heartbeat @3 :Heartbeat;
    heartbeatAck @4 :HeartbeatAck;
    nodeUpdate @5 :NodeUpdate;
    createActor @6 :CreateActor;
    startActor @7 :StartActor;
    actorUpdate @8 :ActorUpdate;
    killActor @9 :KillActor;
    getActorByName @10 :GetActorByName;
    createPlacementGroup @11 :CreatePlacementGroup;
    placementGroupUpdate @12 :PlacementGroupUpdate;
    removePlacementGroup @13 :RemovePlacementGroup;
    submitJob @14 :SubmitJob;
    jobUpdate @15 :JobUpdate;
    stopJob @16 :StopJob;
    getClusterState @17 :GetClusterState;
    clusterState @18 :ClusterState;
    ack @19 :Void;                # success reply with nothing to say
    error @20 :ErrorInfo;         # failure reply to any request
    registerDriver @21 :RegisterDriver;
    registerDriverReply @22 :RegisterDriverReply;
    uploadBinary @23 :UploadBinary;
    fetchBinary @24 :FetchBinary;
    binaryData @25 :BinaryData;
    jobLogs @26 :JobLogs;
    jobLogsReply @27 :JobLogsReply;
    driverHeartbeat @28 :DriverHeartbeat;
    # issue 12 (detect)
    probeNode @29 :ProbeNode;
    # issue 13 (cluster)
    getPlacementGroups @30 :GetPlacementGroups;
  }
}
