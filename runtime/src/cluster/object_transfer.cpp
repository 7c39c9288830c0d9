#include "object_transfer.hpp"

#include <capnp/message.h>
#include <capnp/serialize.h>

#include <cstdlib>
#include <cstring>

#include "troupe/runtime/cuda.hpp"
#include "troupe/runtime/logging.hpp"
#include "troupe/runtime/tensor.hpp"
#include "troupe/transport/ucx.hpp"

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

// ---- the data plane's object forms ----------------------------------------------------
//
// What a holder publishes under an object's key (its envelope): one tag
// byte, then
//   kPlainForm:  the value's encoding (nothing for a void result);
//   kTensorForm: the tensor's dtype, memory type and shape (TensorMeta);
//                its bytes are published apart, under payload_key(id),
//                straight from the tensor's storage, so they cross with no
//                copy on either side (the consumer's Tensor wraps the
//                buffer UCX received into, in host or CUDA memory);
//   kErrorForm:  an ErrorInfo message (the call failed).
constexpr char kPlainForm = 0;
constexpr char kTensorForm = 1;
constexpr char kErrorForm = 2;

ObjectId payload_key(const ObjectId& id) { return ObjectId{id.hi() ^ (std::uint64_t{1} << 63), id.lo()}; }

struct TensorMeta {
  std::uint8_t dtype = 0;
  std::uint8_t memory = 0;  // 0 host, 1 cuda
  std::vector<std::int64_t> shape;
};

void put_tensor_meta(std::string& out, const TensorMeta& meta) {
  out.push_back(static_cast<char>(meta.dtype));
  out.push_back(static_cast<char>(meta.memory));
  const auto dims = static_cast<std::uint32_t>(meta.shape.size());
  out.append(reinterpret_cast<const char*>(&dims), sizeof dims);
  out.append(reinterpret_cast<const char*>(meta.shape.data()), dims * sizeof(std::int64_t));
}

TensorMeta get_tensor_meta(std::string_view in) {
  TensorMeta meta;
  std::uint32_t dims = 0;
  if (in.size() < 2 + sizeof dims) throw_error(Errc::protocol, "truncated tensor envelope");
  meta.dtype = static_cast<std::uint8_t>(in[0]);
  meta.memory = static_cast<std::uint8_t>(in[1]);
  std::memcpy(&dims, in.data() + 2, sizeof dims);
  if (in.size() != 2 + sizeof dims + std::size_t{dims} * sizeof(std::int64_t) || meta.dtype > 5 || meta.memory > 1)
    throw_error(Errc::protocol, "malformed tensor envelope");
  meta.shape.resize(dims);
  std::memcpy(meta.shape.data(), in.data() + 2 + sizeof dims, std::size_t{dims} * sizeof(std::int64_t));
  return meta;
}

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
    data_ = std::make_shared<transport::DataPlane>(std::move(worker));
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
  std::lock_guard lock(mutex_);
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
  const ObjectId id = ref->id();
  if (held_elsewhere(ref)) {
    // Held by another process (an actor's result): the callee fetches it
    // from there, as for a resolved argument.
    describe_elsewhere(descriptor, id, ref->location());
    borrowed.push_back(ref);
    return;
  }
  if (ref->is_ready() && !ref->has_error()) {
    auto encoding = encode_for_transfer(ref->value());
    if (!encoding.by_descriptor) {
      troupe::to_wire(descriptor.initId(), id);
      descriptor.setRemote();
      descriptor.setInlineData(as_data(encoding.bytes));
      descriptor.setSizeBytes(encoding.bytes.size());
      return;
    }
  }
  // Only this process can serve it (pending here, failed, or large): lend it
  // from the table, over the data plane when there is one, until the callee
  // has answered; the callee fetches it before it answers.
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

StatePtr ObjectTransfer::resolve(wire::ObjectDescriptor::Reader descriptor) {
  const ObjectId id = troupe::from_wire<ObjectId>(descriptor.getId());
  if (descriptor.isInlineData()) {
    auto state = std::make_shared<ObjectState>();
    auto data = descriptor.getInlineData();
    if (descriptor.getSizeBytes() != 0 && descriptor.getSizeBytes() != data.size())
      state->set_error(make_error(Errc::protocol, "inline object " + id.hex() + " has " + std::to_string(data.size()) +
                                                      " bytes, its descriptor says " +
                                                      std::to_string(descriptor.getSizeBytes())));
    else
      state->set_value(std::make_shared<EncodedValue>(from_data(data)));
    return state;
  }
  std::string owner = descriptor.getOwnerAddress();
  if (descriptor.getOwnerDataAddress().size() > 0 && owner != own_address_)
    note_data_address(owner, from_data(descriptor.getOwnerDataAddress()));
  if (owner == own_address_) return table_->find_or_wait(id);
  return fetch(id, owner);
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
      capnp::MallocMessageBuilder message;
      fill_error(message.initRoot<wire::ErrorInfo>(), result->error());
      auto words = capnp::messageToFlatArray(message);
      envelope->push_back(kErrorForm);
      envelope->append(reinterpret_cast<const char*>(words.asBytes().begin()), words.asBytes().size());
    } else if (const ValuePtr& value = result->value(); value && value->type() == typeid(Tensor)) {
      const Tensor& tensor = static_cast<const TypedValue<Tensor>*>(value.get())->value;
      TensorMeta meta{static_cast<std::uint8_t>(tensor.dtype()),
                      static_cast<std::uint8_t>(tensor.device().is_cuda() ? 1 : 0), tensor.shape()};
      // The bytes go out straight from the tensor's storage, kept alive by
      // the published buffer until every send of it completed.
      auto keep = std::make_shared<Tensor>(tensor);
      data_->publish(payload_key(id),
                     transport::ObjectBuffer::wrap(tensor.nbytes() ? keep->raw_data() : nullptr, tensor.nbytes(), keep,
                                                   meta.memory ? transport::MemoryType::cuda : transport::MemoryType::host));
      envelope->push_back(kTensorForm);
      put_tensor_meta(*envelope, meta);
    } else {
      envelope->push_back(kPlainForm);
      if (value) envelope->append(value->encode());
    }
  } catch (...) {
    // The value could not be encoded: consumers get that error.
    capnp::MallocMessageBuilder message;
    fill_error(message.initRoot<wire::ErrorInfo>(), std::current_exception());
    auto words = capnp::messageToFlatArray(message);
    envelope->assign(1, kErrorForm);
    envelope->append(reinterpret_cast<const char*>(words.asBytes().begin()), words.asBytes().size());
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
    std::string_view envelope = buffer.view();
    if (envelope.empty()) throw_error(Errc::protocol, "empty object envelope from the data plane");
    const char form = envelope[0];
    envelope.remove_prefix(1);
    if (form == kPlainForm) {
      if (envelope.empty()) state->set_value(nullptr);
      else state->set_value(std::make_shared<EncodedValue>(std::string(envelope)));
      return;
    }
    if (form == kErrorForm) {
      kj::Array<capnp::word> words = kj::heapArray<capnp::word>(envelope.size() / sizeof(capnp::word));
      std::memcpy(words.begin(), envelope.data(), words.size() * sizeof(capnp::word));
      capnp::FlatArrayMessageReader reader(words);
      state->set_error(to_exception(reader.getRoot<wire::ErrorInfo>()));
      return;
    }
    if (form != kTensorForm) throw_error(Errc::protocol, "unknown object form " + std::to_string(int(form)));
    auto meta = std::make_shared<TensorMeta>(get_tensor_meta(envelope));
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
