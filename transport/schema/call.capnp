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
  # The incarnation the caller addressed (from its latest actorUpdate); a
  # host of another incarnation answers error actorDied without running the
  # call, so no call runs twice across a restart.
  callerId @3 :WorkerId;
  seq @4 :UInt64;
  # Per (caller, actor incarnation): 0 for the first call the caller sends
  # to an incarnation, then +1 per call sent (a call withdrawn before it was
  # sent takes no number). Calls from one caller arrive in order on its
  # connection, so the host expects exactly the next seq: a duplicate or
  # late call, or one after a gap, is answered with error protocol and not
  # run (after a gap the host expects the seq after that call's).
  method @5 :Text;
  args @6 :List(Arg);
  returnTo @7 :Text;              # endpoint the CallReply is pushed to
  resultId @8 :ObjectId;
  # Chosen by the caller, so the result can be passed to other calls (as an
  # ObjectDescriptor owned by this host) before it exists.
  # issue 12 (calls)
  timeoutMs @9 :UInt64;
  # issue 13 (refs)
  refs @10 :List(ObjectDescriptor);
  # The objects named by ObjectRefs inside the arguments' values (a
  # parameter std::vector<ObjectRef<T>>, ObjectRef<ObjectRef<T>>, ...), by
  # id; lent like passRef arguments.
  # The time left to the call's deadline when the caller sent it, in ms
  # (0 = no deadline). The host withdraws the call, answering error timeout
  # unrun, if it has not started by then (the caller has failed it already).
}

struct CallReply {
  callId @0 :UInt64;
  actorId @1 :ActorId;
  union {
    value @2 :Data;               # serialized result, inline (small results)
    ref @3 :ObjectDescriptor;     # result kept at the host; fetch over the data plane
    error @4 :ErrorInfo;          # the method threw, or the call could not run
  }
  # issue 13 (refs)
  loansKept @5 :Bool;
  # The callee still fetches objects the call lent it (ObjectRef
  # parameters, and refs nested in arguments): the caller keeps them served
  # until a ReturnLoans names this call (or a bounded time passes: every
  # fetch ends within the fetch timeout). False: the loans end with this reply.
  refs @6 :List(ObjectDescriptor);
  # The objects named by ObjectRefs inside an inline `value` (a result of
  # type std::vector<ObjectRef<T>>, ...), by id. The caller fetches them at
  # once and then sends ReturnLoans (the host lends them until it does).
}

struct ReturnLoans {
  # The callee of call `callId` has every object that call lent it (or gave
  # up on it): the lender may stop serving them.
  callId @0 :UInt64;
  actorId @1 :ActorId;   # the callee (nil: the reply's receiver returns a reply's loans)
  callerId @2 :WorkerId; # the sender of this message
}

struct CancelCall {
  # Cancels a call that has not started; one that has started runs to the end.
  # The call's reply then carries error cancelled (or its normal result).
  callId @0 :UInt64;
  actorId @1 :ActorId;
  callerId @2 :WorkerId;
  resultId @3 :ObjectId;    # the call's result, as its request named it
  # issue 13
  returnTo @4 :Text;
  # Where the host pushes a CancelAnswer, after the call's reply if the
  # cancel withdrew it; empty: no answer wanted.
}

struct CancelAnswer {
  # host -> caller: whether a CancelCall withdrew the call before it started
  # (what ObjectRef::cancel() returns).
  callId @0 :UInt64;
  actorId @1 :ActorId;      # the hosted actor; zero if this process hosts none
  withdrawn @2 :Bool;
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
    cancelAnswer @4 :CancelAnswer;
    returnLoans @5 :ReturnLoans;
  }
}
