# Types shared by every troupe plane: identifiers, errors, resources, GPUs and
# object descriptors. Field numbers are the wire contract: append new fields,
# never renumber or retype existing ones.
@0xf3f24e403bcaa0fb;

using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("troupe::wire");

const protocolVersion :UInt32 = 1;
# Bumped on any change a peer of the previous version cannot read. Sent in
# RegisterNode and SubmitJob; the head refuses a mismatch with `protocol`.

# Identifiers are 128-bit random values, unique across the cluster's lifetime.
# All-zero means "none" wherever an id is optional.
struct ObjectId { hi @0 :UInt64; lo @1 :UInt64; }
struct ActorId { hi @0 :UInt64; lo @1 :UInt64; }
struct NodeId { hi @0 :UInt64; lo @1 :UInt64; }
struct JobId { hi @0 :UInt64; lo @1 :UInt64; }
struct PlacementGroupId { hi @0 :UInt64; lo @1 :UInt64; }
struct WorkerId { hi @0 :UInt64; lo @1 :UInt64; }
# A process that calls actors or owns objects: a driver or an actor host.

struct ErrorInfo {
  # A failure crossing a process boundary, rebuilt on the other side as the
  # matching troupe::Error subclass.
  code @0 :UInt16;
  # Numerically equal to troupe::Errc: ok=0, taskFailed=1, actorDied=2,
  # timeout=3, cancelled=4, nodeLost=5, objectLost=6, invalidArgument=7,
  # notFound=8, notRegistered=9, unschedulable=10, serialization=11,
  # protocol=12, transport=13, cuda=14, unsupported=15, internal=16,
  # permissionDenied=17, overloaded=18.
  # A receiver maps codes it does not know to internal.
  remoteType @1 :Text;  # demangled C++ type of the original exception, or empty
  message @2 :Text;
}

struct Resource {
  # A named quantity: "CPU", "GPU", "memory" (bytes), "GPU:H100", or custom.
  name @0 :Text;
  amount @1 :Float64;
}

struct GpuInfo {
  index @0 :UInt32;        # CUDA device ordinal on its node
  model @1 :Text;          # e.g. "NVIDIA H100 80GB HBM3"
  memoryBytes @2 :UInt64;
  smCount @3 :UInt32;
  ccMajor @4 :UInt16;      # compute capability
  ccMinor @5 :UInt16;
  declared @6 :Bool;       # given on the command line, not found through CUDA
  peers @7 :List(UInt32);  # indices this GPU has peer access (NVLink/PCIe P2P) to
}

enum MemoryType {
  host @0;
  cuda @1;
}

struct ObjectDescriptor {
  # Names one immutable object and says where to fetch it. The producer's
  # host owns the value until the last reference is released.
  id @0 :ObjectId;
  ownerAddress @1 :Text;   # call-plane endpoint of the process that holds the value
  sizeBytes @2 :UInt64;
  # With inlineData: its length, checked by the receiver (a mismatch is a
  # protocol error). With remote: the object's size where the holder knows
  # it (the tensor's bytes, or the encoding's), else 0; informative only.
  obsoleteMemoryType @3 :MemoryType;
  # Removed: never set nor read (the data plane's envelope says whether a
  # tensor's bytes are in host or CUDA memory). Renamed, not deleted, so the
  # ordinal is never reused.
  ownerDataAddress @4 :Data;  # owner's UCX worker address for the data plane, or empty
  union {
    remote @5 :Void;       # fetch from the owner over the data plane
    inlineData @6 :Data;   # the whole serialized value, for small objects
  }
}
