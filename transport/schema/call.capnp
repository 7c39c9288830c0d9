# Call plane: a caller (driver or actor host) and an actor host talk
# directly, over ZeroMQ (caller DEALER -> host ROUTER) or UCX active messages.
# Each message is one CallMessage in one frame (see framing.hpp).
@0xa917359d253bc3a0;

using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("troupe::wire");

using Common = import "common.capnp";
using ActorId = Common.ActorId;
using ErrorInfo = Common.ErrorInfo;
using ObjectDescriptor = Common.ObjectDescriptor;
using ObjectId = Common.ObjectId;
using WorkerId = Common.WorkerId;

struct Arg {
  union {
    value @0 :Data;               # serialized value, inline
    ref @1 :ObjectDescriptor;     # the host resolves it (fetches the value) before the call runs
    passRef @2 :ObjectDescriptor; # handed to the method as an ObjectRef, unresolved
  }
}

struct CallRequest {
  callId @0 :UInt64;
  # Unique per caller; the reply and any cancel name the call by (callerId, callId).
  actorId @1 :ActorId;
  actorIncarnation @2 :UInt32;
  # The incarnation the caller addressed; a host of another incarnation fails
  # the call with actorDied instead of running it twice across a restart.
  callerId @3 :WorkerId;
  seq @4 :UInt64;
  # Per (caller, actor), starting at 0 and gapless: the host runs a caller's
  # calls in seq order, holding back any that arrive early.
  method @5 :Text;
  args @6 :List(Arg);
  returnTo @7 :Text;              # endpoint the CallReply is pushed to
  resultId @8 :ObjectId;
  # Chosen by the caller, so the result can be passed to other calls (as an
  # ObjectDescriptor owned by this host) before it exists.
}

struct CallReply {
  callId @0 :UInt64;
  actorId @1 :ActorId;
  union {
    value @2 :Data;               # serialized result, inline (small results)
    ref @3 :ObjectDescriptor;     # result kept at the host; fetch over the data plane
    error @4 :ErrorInfo;          # the method threw, or the call could not run
  }
}

struct CancelCall {
  # Cancels a call that has not started; one that has started runs to the end.
  # The call's reply then carries error cancelled (or its normal result).
  callId @0 :UInt64;
  actorId @1 :ActorId;
  callerId @2 :WorkerId;
  resultId @3 :ObjectId;    # the call's result, as its request named it
}

struct ReleaseObjects {
  # The sender dropped its last reference to each object; the owner may free
  # an object once every holder has released it.
  holderId @0 :WorkerId;
  ids @1 :List(ObjectId);
}

struct CallMessage {
  union {
    request @0 :CallRequest;
    reply @1 :CallReply;
    cancel @2 :CancelCall;
    release @3 :ReleaseObjects;
  }
}
