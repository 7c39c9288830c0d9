// ObjectTransfer: how object bytes move between processes.
//   - the one rule deciding whether a value travels inline (in the call or
//     reply) or stays at its holder and travels as an ObjectDescriptor
//     (encode_for_transfer);
//   - publishing what this process holds on the UCX data plane, and
//     fetching from another process over it; without a data plane (UCX
//     unavailable, or TROUPE_DATA_PLANE=zmq) a fetch is a `__fetch` call on
//     the call plane instead (the CallFetch given to start());
//   - describing and resolving ObjectDescriptors (arguments passed by
//     reference, ObjectRef parameters, results left at their producer).
//
// Contract: start() once, before any other use; then every method may be
// called from any thread. Fetches complete their state on a pool thread
// (data-plane envelopes are decoded there, not on the UCX progress
// thread) or on the thread that answers a `__fetch`. A fetch is bounded by
// the fetch timeout. stop() drops the data plane: fetches still pending
// fail with `cancelled`.
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "nested_refs.hpp"
#include "object_table.hpp"
#include "thread_pool.hpp"
#include "troupe/runtime/value.hpp"
#include "troupe/transport/schema/common.capnp.h"
#include "wire_util.hpp"

namespace troupe::transport {
class DataPlane;
struct ObjectBuffer;
}  // namespace troupe::transport

namespace troupe::detail {

// The call plane's fallback fetch: a call with this method name and one
// `ref` argument is answered with the object (or its error).
inline constexpr const char* kFetchMethod = "__fetch";

class ObjectTransfer final : public std::enable_shared_from_this<ObjectTransfer> {
 public:
  // Fetches an object over the call plane (a `__fetch` call) when there is
  // no data plane, or the holder has none.
  using CallFetch = std::function<StatePtr(const ObjectId& id, const std::string& location)>;

  ObjectTransfer(std::shared_ptr<ThreadPool> pool, std::shared_ptr<ObjectTable> table, std::chrono::milliseconds fetch_timeout);

  // Starts the data plane (unless TROUPE_DATA_PLANE=zmq or UCX fails);
  // `own_address` is this process's call-plane address.
  void start(std::string own_address, CallFetch call_fetch);
  // Drops the data plane: fetches still pending fail with `cancelled`.
  void stop();
  // "ucx: <transports>" or "call plane: <why there is no data plane>".
  std::string info() const;
  // This process's data-plane (UCX worker) address; empty without one.
  std::string own_data_address() const;
  // The UCX data plane, or null (UCX unavailable, TROUPE_DATA_PLANE=zmq):
  // the call plane carries its messages over it too (CallPlane::attach_ucx).
  std::shared_ptr<transport::DataPlane> data_plane() const { return data_; }
  std::chrono::milliseconds fetch_timeout() const noexcept { return fetch_timeout_; }

  // The one rule for a value leaving this process: inline when its
  // encoding is at most 1 MiB, except that a tensor over the data plane's
  // rendezvous threshold (64 KiB; 1 MiB without a data plane) is never
  // encoded at all and goes by descriptor (the next stage pulls its bytes
  // straight from its storage). Encoding errors are thrown.
  struct Encoding {
    bool by_descriptor = false;
    std::string bytes;          // the encoding, when inline
    std::size_t size_bytes = 0;  // of the tensor's bytes or of the encoding
  };
  Encoding encode_for_transfer(const ValuePtr& value) const;
  // Whether `ref` is (or will be) held by another process: then it is
  // passed by descriptor naming that holder, not by value.
  static bool held_elsewhere(const StatePtr& ref);

  // A descriptor of object `id` held at `location` (another process).
  void describe_elsewhere(wire::ObjectDescriptor::Builder descriptor, const ObjectId& id, const std::string& location);
  // A descriptor of object `id` held here.
  void describe_here(wire::ObjectDescriptor::Builder descriptor, const ObjectId& id, std::size_t size_bytes);
  // An ObjectRef parameter, caller side: describes `ref` for the callee,
  // inline when the rule allows, else lending it from the table (and
  // publishing it once ready) when only this process can serve it. Adds
  // to `borrowed` what must stay alive until the reply and to `lent` the
  // loans to end then.
  void describe_passed_ref(wire::ObjectDescriptor::Builder descriptor, const StatePtr& ref,
                           std::vector<StatePtr>& borrowed, std::vector<ObjectId>& lent);
  // describe_passed_ref in two steps, for the refs inside values (the
  // `refs` of a request or reply, whose number is known only once every
  // value is encoded): plan() encodes an inline value (recording the refs
  // inside it with this thread's NestedRefEncoder, or, with
  // `nested_inline` false, going by reference when it holds any), write()
  // fills the descriptor and lends.
  struct PassedRefPlan {
    StatePtr ref;
    enum class Kind { elsewhere, inline_value, lent } kind = Kind::lent;
    std::string bytes;  // inline_value
  };
  PassedRefPlan plan_passed_ref(const StatePtr& ref, bool nested_inline) const;
  void write_passed_ref(wire::ObjectDescriptor::Builder descriptor, const PassedRefPlan& plan,
                        std::vector<StatePtr>& borrowed, std::vector<ObjectId>& lent);
  // Describes into `list` (sized here) the refs recorded by `encoder` while
  // the message's values were encoded, and those their inline values name.
  template <class ListInit>
  void describe_nested(NestedRefEncoder& encoder, ListInit init_list, std::vector<StatePtr>& borrowed,
                       std::vector<ObjectId>& lent) {
    std::vector<PassedRefPlan> plans;
    for (std::size_t i = 0; i < encoder.refs().size(); ++i) plans.push_back(plan_passed_ref(encoder.refs()[i], false));
    if (plans.empty()) return;
    auto list = init_list(static_cast<unsigned>(plans.size()));
    for (unsigned i = 0; i < plans.size(); ++i) write_passed_ref(list[i], plans[i], borrowed, lent);
  }
  // Empty when a descriptor a peer sent may be resolved: it names an
  // object (id not nil), its kind is known, inline bytes match sizeBytes
  // (when set), a remote one names a tcp://host:port owner and a data
  // address of at most 64 KiB. Else why not. Reads its text fields: a
  // malformed one raises kj::Exception.
  static std::string check_descriptor(wire::ObjectDescriptor::Reader descriptor);
  // Callee side: the state a descriptor (checked by check_descriptor)
  // names, filled inline, from this process's table, or by a fetch from
  // its holder. Never throws: a failure to start the fetch fails the state.
  // `nested`: the objects the message's `refs` named, for the ObjectRefs
  // inside an inline value.
  StatePtr resolve(wire::ObjectDescriptor::Reader descriptor, std::shared_ptr<const std::vector<StatePtr>> nested = nullptr);
  // The message's `refs`, each resolved (fetched at once from its holder).
  std::shared_ptr<const std::vector<StatePtr>> resolve_nested(capnp::List<wire::ObjectDescriptor>::Reader refs);
  // `state`, or a state completed with it that bears `id` (the id the
  // sender's ObjectRef has: the receiver's copy keeps it).
  static StatePtr same_id(StatePtr state, const ObjectId& id);

  // Starts fetching object `id` from the process whose call plane is at
  // `location`: over UCX when both have a data plane, else by `__fetch`.
  StatePtr fetch(const ObjectId& id, const std::string& location);
  // fetch(), waited for (bounded): an EncodedValue, or a TypedValue<Tensor>
  // whose storage is the received buffer itself; nullptr for a void result.
  ValuePtr fetch_value(const ObjectId& id, const std::string& location);
  // A value still held at `location`, fetched on first read.
  ValuePtr remote_value(const ObjectId& id, const std::string& location);

  // Caller side, once a call went to the host at `consumer` with object
  // `id` (held at `holder`) as an argument: asks the holder's data plane to
  // push it there as soon as it exists (DataPlane::request_push). No-op
  // without a data plane or either data-plane address, or when holder and
  // consumer are one process; the consumer's fetch is the fallback.
  void request_push(const ObjectId& id, const std::string& holder, const std::string& consumer);
  // Holder side: makes a finished result fetchable over UCX (no-op
  // without a data plane).
  void publish(const ObjectId& id, const StatePtr& result);
  void unpublish(const ObjectId& id);

  // Remembers the data-plane address of the process whose call plane is at
  // `call_address`; and looks it up ("" when unknown).
  void note_data_address(const std::string& call_address, std::string data_address);
  std::string data_address_of(const std::string& call_address);

 private:
  // Over UCX: the object's envelope, then (for a tensor) its bytes.
  StatePtr fetch_over_data_plane(const ObjectId& id, const std::string& data_address);
  void on_envelope(const ObjectId& id, const std::string& data_address, const StatePtr& state,
                   transport::ObjectBuffer& buffer);

  const std::shared_ptr<ThreadPool> pool_;
  const std::shared_ptr<ObjectTable> table_;
  const std::chrono::milliseconds fetch_timeout_;
  std::string own_address_;  // set by start()
  CallFetch call_fetch_;     // set by start()
  // Null when UCX could not start (or TROUPE_DATA_PLANE=zmq): objects then
  // move as `__fetch` calls. Set by start(), reset by stop().
  std::shared_ptr<transport::DataPlane> data_;
  std::string data_fallback_reason_;
  std::mutex mutex_;
  std::unordered_map<std::string, std::string> data_addresses_;  // call address -> UCX address
};

}  // namespace troupe::detail
