#include "object_transfer.hpp"

#include <capnp/message.h>
#include <capnp/serialize.h>

#include <cstdlib>
#include <cstring>

#include "troupe/runtime/cuda.hpp"
#include "troupe/runtime/logging.hpp"
#include "troupe/runtime/tensor.hpp"
#include "troupe/transport/ucx.hpp"
#include "envelope.hpp"
#include "troupe/runtime/object_ref.hpp"

namespace troupe::detail {
namespace {

// Results up to this size travel inline in the reply to the caller; larger
// ones stay at the producer until fetched (or pulled by the next stage).
constexpr std::size_t kInlineLimit = 1 << 20;
// A tensor (an activation) above this stays at its producer whenever the
// data plane is up: the next stage pulls it over UCX, and the caller (the
// driver, in a pipeline) gets only a descriptor and fetches the bytes if
// it ever reads them. The data plane's rendezvous threshold.
constexpr std::size_t kTensorInlineLimit = 64 << 10;

// A value that still lives in another process: fetched on first read.
class RemoteValue final : public Value {
 public:
  RemoteValue(std::weak_ptr<ObjectTransfer> transfer, ObjectId id, std::string location)
      : transfer_(std::move(transfer)), id_(id), location_(std::move(location)) {}
  const std::type_info& type() const noexcept override { return typeid(void); }
  std::string encode() const override {
    auto value = resolved();
    return value ? value->encode() : std::string();
  }
  bool is_remote() const noexcept override { return true; }
  std::shared_ptr<Value> resolved() const override {
    std::call_once(once_, [&] {
      auto transfer = transfer_.lock();
      if (!transfer) throw_error(Errc::object_lost, "the runtime is shut down");
      value_ = transfer->fetch_value(id_, location_);
    });
    return value_;
  }
  const std::string* bytes() const override {
    auto value = resolved();
    if (value && value->bytes()) return value->bytes();
    std::call_once(encoded_once_, [&] { encoded_ = value ? value->encode() : std::string(); });
    return &encoded_;
  }

 private:
  std::weak_ptr<ObjectTransfer> transfer_;
  ObjectId id_;
  std::string location_;
  mutable std::once_flag once_;
  mutable std::shared_ptr<Value> value_;
  mutable std::once_flag encoded_once_;
  mutable std::string encoded_;
};

std::size_t tensor_bytes_of(const ValuePtr& value) {
  if (value && value->type() == typeid(Tensor)) return static_cast<const TypedValue<Tensor>*>(value.get())->value.nbytes();
  return 0;
}

}  // namespace

ObjectTransfer::ObjectTransfer(std::shared_ptr<ThreadPool> pool, std::shared_ptr<ObjectTable> table,
                               std::chrono::milliseconds fetch_timeout)
    : pool_(std::move(pool)), table_(std::move(table)), fetch_timeout_(fetch_timeout) {}

void ObjectTransfer::start(std::string own_address, CallFetch call_fetch) {
  own_address_ = std::move(own_address);
  call_fetch_ = std::move(call_fetch);
  if (const char* mode = std::getenv("TROUPE_DATA_PLANE"); mode && std::string_view(mode) == "zmq") {
    data_fallback_reason_ = "TROUPE_DATA_PLANE=zmq";
    return;
  }
  try {
    transport::UcxOptions options;
    options.listen_ip = own_address_;  // tcp://IP:port of the call plane: UCX listens on IP's interface only
    auto worker = transport::UcxWorker::create(transport::UcxContext::create(options));
    transport::DataPlaneOptions plane_options;
    // An activation pushed here ahead of its call waits at most as long as
    // a fetch would: one whose call never comes is dropped then.
    plane_options.inbox_ttl = std::min<std::chrono::milliseconds>(fetch_timeout_, std::chrono::seconds(60));
    data_ = std::make_shared<transport::DataPlane>(std::move(worker), plane_options);
    TROUPE_LOG_DEBUG("data plane: UCX {}", data_->worker()->context()->describe());
  } catch (const std::exception& e) {
    TROUPE_LOG_WARN("UCX data plane unavailable ({}); objects will move over the call plane", e.what());
    data_fallback_reason_ = std::string("UCX unavailable: ") + e.what();
    data_.reset();
  }
}

void ObjectTransfer::stop() { data_.reset(); }

std::string ObjectTransfer::info() const {
  if (data_) return "ucx: " + data_->worker()->context()->describe();
  return "call plane: " + data_fallback_reason_;
}

std::string ObjectTransfer::own_data_address() const { return data_ ? data_->address() : std::string(); }

void ObjectTransfer::note_data_address(const std::string& call_address, std::string data_address) {
  // Peers name these: bounded, forgetting an arbitrary one when full (a
  // forgotten holder is reached by `__fetch` until it is named again).
  constexpr std::size_t kMaxDataAddresses = 4096;
  std::lock_guard lock(mutex_);
  if (data_addresses_.size() >= kMaxDataAddresses && !data_addresses_.count(call_address))
    data_addresses_.erase(data_addresses_.begin());
  data_addresses_[call_address] = std::move(data_address);
}

std::string ObjectTransfer::data_address_of(const std::string& call_address) {
  if (data_ && call_address == own_address_) return data_->address();
  std::lock_guard lock(mutex_);
  auto it = data_addresses_.find(call_address);
  return it == data_addresses_.end() ? std::string() : it->second;
}

// ---- what travels inline ------------------------------------------------------------

ObjectTransfer::Encoding ObjectTransfer::encode_for_transfer(const ValuePtr& value) const {
  Encoding out;
  // A large tensor is not encoded at all: its bytes go out over the data
  // plane, from its storage, to whoever fetches it.
  const std::size_t tensor_bytes = tensor_bytes_of(value);
  if (tensor_bytes > (data_ ? kTensorInlineLimit : kInlineLimit)) {
    out.by_descriptor = true;
    out.size_bytes = tensor_bytes;
    return out;
  }
  out.bytes = value ? value->encode() : std::string();
  out.by_descriptor = out.bytes.size() > kInlineLimit;
  out.size_bytes = tensor_bytes ? tensor_bytes : out.bytes.size();
  if (out.by_descriptor) out.bytes.clear();
  return out;
}

bool ObjectTransfer::held_elsewhere(const StatePtr& ref) {
  return ref && !ref->location().empty() && (!ref->is_ready() || (ref->value() && ref->value()->is_remote()));
}

void ObjectTransfer::describe_elsewhere(wire::ObjectDescriptor::Builder descriptor, const ObjectId& id,
                                        const std::string& location) {
  troupe::to_wire(descriptor.initId(), id);
  descriptor.setOwnerAddress(location);
  if (auto data = data_address_of(location); !data.empty()) descriptor.setOwnerDataAddress(as_data(data));
  descriptor.setRemote();
}

void ObjectTransfer::describe_here(wire::ObjectDescriptor::Builder descriptor, const ObjectId& id,
                                   std::size_t size_bytes) {
  troupe::to_wire(descriptor.initId(), id);
  descriptor.setOwnerAddress(own_address_);
  if (data_) descriptor.setOwnerDataAddress(as_data(data_->address()));
  if (size_bytes) descriptor.setSizeBytes(size_bytes);
  descriptor.setRemote();
}

void ObjectTransfer::describe_passed_ref(wire::ObjectDescriptor::Builder descriptor, const StatePtr& ref,
                                         std::vector<StatePtr>& borrowed, std::vector<ObjectId>& lent) {
  write_passed_ref(descriptor, plan_passed_ref(ref, true), borrowed, lent);
}

ObjectTransfer::PassedRefPlan ObjectTransfer::plan_passed_ref(const StatePtr& ref, bool nested_inline) const {
  PassedRefPlan plan;
  plan.ref = ref;
  if (held_elsewhere(ref)) {
    // Held by another process (an actor's result): the callee fetches it
    // from there, as for a resolved argument.
    plan.kind = PassedRefPlan::Kind::elsewhere;
    return plan;
  }
  if (ref->is_ready() && !ref->has_error()) {
    Encoding encoding;
    bool holds_refs = false;
    if (nested_inline) {
      encoding = encode_for_transfer(ref->value());
    } else {
      // An inline value that names refs of its own would need them beside
      // it; it goes by reference instead (fetched from this process).
      NestedRefEncoder probe;
      try {
        encoding = encode_for_transfer(ref->value());
      } catch (const Error& e) {
        if (e.code() != Errc::unsupported) throw;
        encoding.by_descriptor = true;
      }
      holds_refs = !probe.refs().empty();
    }
    if (!encoding.by_descriptor && !holds_refs) {
      plan.kind = PassedRefPlan::Kind::inline_value;
      plan.bytes = std::move(encoding.bytes);
      return plan;
    }
  }
  // Only this process can serve it (pending here, failed, or large): lend it.
  plan.kind = PassedRefPlan::Kind::lent;
  return plan;
}

void ObjectTransfer::write_passed_ref(wire::ObjectDescriptor::Builder descriptor, const PassedRefPlan& plan,
                                      std::vector<StatePtr>& borrowed, std::vector<ObjectId>& lent) {
  const StatePtr& ref = plan.ref;
  const ObjectId id = ref->id();
  switch (plan.kind) {
    case PassedRefPlan::Kind::elsewhere:
      describe_elsewhere(descriptor, id, ref->location());
      borrowed.push_back(ref);
      return;
    case PassedRefPlan::Kind::inline_value:
      troupe::to_wire(descriptor.initId(), id);
      descriptor.setRemote();
      descriptor.setInlineData(as_data(plan.bytes));
      descriptor.setSizeBytes(plan.bytes.size());
      return;
    case PassedRefPlan::Kind::lent: break;
  }
  // Lent from the table, over the data plane when there is one, until the
  // callee has it (its ReturnLoans, or the reply when it had it by then);
  // the callee fetches it at once.
  describe_here(descriptor, id, 0);
  const bool first = table_->lend(id, ref);
  if (first && data_) {
    auto self = shared_from_this();
    std::weak_ptr<ObjectState> weak = ref;
    ref->on_complete([self, weak, id] {
      auto s = weak.lock();
      if (!s) return;
      if (!self->table_->is_lent(id)) return;
      self->publish(id, s);
      self->table_->drop_unless_lent(id);  // the loan ended while this encoded it
    });
  }
  borrowed.push_back(ref);
  lent.push_back(id);
}

std::string ObjectTransfer::check_descriptor(wire::ObjectDescriptor::Reader descriptor) {
  constexpr std::size_t kMaxDataAddressBytes = 64 << 10;
  if (!descriptor.hasId() || troupe::from_wire<ObjectId>(descriptor.getId()).nil()) return "a descriptor names no object";
  switch (descriptor.which()) {
    case wire::ObjectDescriptor::INLINE_DATA: {
      const auto size = descriptor.getInlineData().size();
      if (descriptor.getSizeBytes() != 0 && descriptor.getSizeBytes() != size)
        return "an inline object has " + std::to_string(size) + " bytes, its descriptor says " +
               std::to_string(descriptor.getSizeBytes());
      return {};
    }
    case wire::ObjectDescriptor::REMOTE: {
      if (auto why = check_peer_address(descriptor.getOwnerAddress().cStr()); !why.empty())
        return "the object's owner: " + why;
      if (descriptor.getOwnerDataAddress().size() > kMaxDataAddressBytes)
        return "a data-plane address of " + std::to_string(descriptor.getOwnerDataAddress().size()) + " bytes";
      return {};
    }
  }
  return "a descriptor of unknown kind " + std::to_string(static_cast<int>(descriptor.which()));
}

std::shared_ptr<const std::vector<StatePtr>> ObjectTransfer::resolve_nested(
    capnp::List<wire::ObjectDescriptor>::Reader refs) {
  if (refs.size() == 0) return nullptr;
  auto out = std::make_shared<std::vector<StatePtr>>();
  out->reserve(refs.size());
  for (auto descriptor : refs) out->push_back(same_id(resolve(descriptor), troupe::from_wire<ObjectId>(descriptor.getId())));
  return out;
}

StatePtr ObjectTransfer::same_id(StatePtr state, const ObjectId& id) {
  if (state->id() == id) return state;
  auto named = std::make_shared<ObjectState>(id);
  forward_state(state, named);
  return named;
}

StatePtr ObjectTransfer::resolve(wire::ObjectDescriptor::Reader descriptor,
                                 std::shared_ptr<const std::vector<StatePtr>> nested) {
  const ObjectId id = troupe::from_wire<ObjectId>(descriptor.getId());
  if (descriptor.isInlineData()) {
    // Under the sender's id: a nested ref that names it finds it by that id.
    auto state = std::make_shared<ObjectState>(id);
    auto data = descriptor.getInlineData();
    if (descriptor.getSizeBytes() != 0 && descriptor.getSizeBytes() != data.size())
      state->set_error(make_error(Errc::protocol, "inline object " + id.hex() + " has " + std::to_string(data.size()) +
                                                      " bytes, its descriptor says " +
                                                      std::to_string(descriptor.getSizeBytes())));
    else
      state->set_value(std::make_shared<EncodedValue>(from_data(data), std::move(nested)));
    return state;
  }
  try {
    std::string owner = descriptor.getOwnerAddress();
    if (descriptor.getOwnerDataAddress().size() > 0 && owner != own_address_)
      note_data_address(owner, from_data(descriptor.getOwnerDataAddress()));
    if (owner == own_address_) return table_->find_or_wait(id);
    return fetch(id, owner);
  } catch (...) {
    auto state = std::make_shared<ObjectState>(id);
    state->set_error(std::current_exception());
    return state;
  }
}

// ---- fetching ------------------------------------------------------------------------

StatePtr ObjectTransfer::fetch(const ObjectId& id, const std::string& location) {
  if (data_) {
    if (auto data_address = data_address_of(location); !data_address.empty())
      return fetch_over_data_plane(id, data_address);
  }
  return call_fetch_(id, location);
}

ValuePtr ObjectTransfer::fetch_value(const ObjectId& id, const std::string& location) {
  auto state = fetch(id, location);
  state->wait();  // bounded: fetches fail past their deadline (tick, or the data plane's timeout)
  state->rethrow_if_error();
  return state->value();
}

ValuePtr ObjectTransfer::remote_value(const ObjectId& id, const std::string& location) {
  return std::make_shared<RemoteValue>(weak_from_this(), id, location);
}

void ObjectTransfer::request_push(const ObjectId& id, const std::string& holder, const std::string& consumer) {
  auto data = data_;
  if (!data || holder.empty() || consumer.empty() || holder == consumer) return;
  const std::string holder_data = data_address_of(holder);
  const std::string consumer_data = data_address_of(consumer);
  if (holder_data.empty() || consumer_data.empty()) return;
  data->request_push(holder_data, id, consumer_data, fetch_timeout_);
}

void ObjectTransfer::unpublish(const ObjectId& id) {
  if (!data_) return;
  data_->unpublish(id);
  data_->unpublish(payload_key(id));
}

void ObjectTransfer::publish(const ObjectId& id, const StatePtr& result) {
  if (!data_) return;
  auto envelope = std::make_shared<std::string>();
  try {
    if (result->has_error()) {
      *envelope = error_envelope(result->error());
    } else if (const ValuePtr& value = result->value(); value && value->type() == typeid(Tensor)) {
      const Tensor& tensor = static_cast<const TypedValue<Tensor>*>(value.get())->value;
      TensorMeta meta{static_cast<std::uint8_t>(tensor.dtype()),
                      static_cast<std::uint8_t>(tensor.device().is_cuda() ? 1 : 0), tensor.shape(), tensor.nbytes()};
      // The bytes go out straight from the tensor's storage, kept alive by
      // the published buffer until every send of it completed.
      auto keep = std::make_shared<Tensor>(tensor);
      auto payload = transport::ObjectBuffer::wrap(tensor.nbytes() ? keep->raw_data() : nullptr, tensor.nbytes(), keep,
                                                   meta.memory ? transport::MemoryType::cuda : transport::MemoryType::host);
      *envelope = tensor_envelope(meta);
      if (envelope->size() <= transport::kMaxObjectMetaBytes) {
        // One trip: the envelope rides as the payload's meta, in the reply's
        // header; the bytes follow in the same message (eager) or by
        // rendezvous into the consumer's buffer.
        payload.meta = std::move(*envelope);
        data_->publish(id, std::move(payload));
        return;
      }
      data_->publish(payload_key(id), std::move(payload));  // a rank too large for meta: two trips
    } else {
      *envelope = plain_envelope(value ? value->encode() : std::string());
    }
  } catch (...) {
    // The value could not be encoded: consumers get that error.
    *envelope = error_envelope(std::current_exception());
  }
  const void* data = envelope->data();
  const std::size_t size = envelope->size();
  data_->publish(id, transport::ObjectBuffer::wrap(data, size, std::move(envelope)));
}

StatePtr ObjectTransfer::fetch_over_data_plane(const ObjectId& id, const std::string& data_address) {
  auto state = std::make_shared<ObjectState>();
  transport::FetchOptions options;
  options.timeout = fetch_timeout_;
  options.wait_for_publish = true;  // the producing call may still run: the holder answers when it is done
  // A CUDA tensor lands in CUDA memory where this process has a GPU.
  options.follow_source = troupe::cuda::device_count() > 0;
  std::weak_ptr<ObjectTransfer> weak = weak_from_this();
  data_->fetch(data_address, id, options,
               [weak, state, id, data_address](transport::ObjectBuffer buffer, std::exception_ptr error) {
                 // On the UCX progress thread: decode on the pool instead.
                 auto self = weak.lock();
                 if (!self) {
                   state->set_error(make_error(Errc::cancelled, "the runtime shut down"));
                   return;
                 }
                 if (error) {
                   state->set_error(error);
                   return;
                 }
                 self->pool_->post([weak, state, id, data_address, buffer = std::move(buffer)]() mutable {
                   if (auto self = weak.lock()) self->on_envelope(id, data_address, state, buffer);
                 });
               });
  return state;
}

void ObjectTransfer::on_envelope(const ObjectId& id, const std::string& data_address, const StatePtr& state,
                                 transport::ObjectBuffer& buffer) {
  try {
    if (!buffer.meta.empty()) {
      // One trip: a tensor's envelope as the meta, its bytes as the object.
      Envelope envelope = decode_envelope(buffer.meta);  // every field checked: it is a peer's
      if (envelope.form != EnvelopeForm::tensor)
        throw_error(Errc::protocol, "object " + id.hex() + ": a payload whose envelope is not a tensor's");
      check_tensor_payload(envelope.tensor, buffer.size);
      const bool on_cuda = buffer.memory == transport::MemoryType::cuda;
      auto keep = buffer.keepalive;
      auto storage = Storage::wrap(buffer.data, buffer.size, on_cuda ? Device::cuda(0) : Device::cpu(), [keep](void*) {});
      state->set_value(make_value<Tensor>(Tensor(std::move(storage), envelope.tensor.shape,
                                                 static_cast<DType>(envelope.tensor.dtype))));
      return;
    }
    if (buffer.memory != transport::MemoryType::host)
      throw_error(Errc::protocol, "object " + id.hex() + ": an envelope in device memory");
    Envelope envelope = decode_envelope(buffer.view());  // every field checked: it is a peer's
    if (envelope.form == EnvelopeForm::plain) {
      if (envelope.value.empty()) state->set_value(nullptr);
      else state->set_value(std::make_shared<EncodedValue>(std::string(envelope.value)));
      return;
    }
    if (envelope.form == EnvelopeForm::error) {
      state->set_error(envelope.error);
      return;
    }
    auto meta = std::make_shared<TensorMeta>(std::move(envelope.tensor));
    // A CUDA tensor lands in CUDA memory where this process has a GPU.
    const bool to_cuda = meta->memory == 1 && troupe::cuda::device_count() > 0;
    transport::FetchOptions options;
    options.timeout = fetch_timeout_;
    options.destination = to_cuda ? transport::MemoryType::cuda : transport::MemoryType::host;
    data_->fetch(data_address, payload_key(id), options,
                 [state, meta, to_cuda](transport::ObjectBuffer payload, std::exception_ptr error) {
                   if (error) {
                     state->set_error(error);
                     return;
                   }
                   try {
                     // The payload must be exactly the bytes its envelope's shape needs.
                     check_tensor_payload(*meta, payload.size);
                     auto keep = payload.keepalive;
                     auto storage = Storage::wrap(payload.data, payload.size, to_cuda ? Device::cuda(0) : Device::cpu(),
                                                  [keep](void*) {});
                     Tensor tensor(std::move(storage), meta->shape, static_cast<DType>(meta->dtype));
                     state->set_value(make_value<Tensor>(std::move(tensor)));
                   } catch (...) {
                     state->set_error(std::current_exception());
                   }
                 });
  } catch (...) {
    state->set_error(std::current_exception());
  }
}

}  // namespace troupe::detail
