#include "cluster_runtime.hpp"

#include <signal.h>
#include <sys/prctl.h>
#include <unistd.h>

#include <capnp/serialize.h>
#include <kj/exception.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <cstdlib>
#include <fstream>
#include <random>
#include <sstream>

#include "local/local_runtime.hpp"
#include "troupe/runtime/cuda.hpp"
#include "troupe/runtime/logging.hpp"
#include "troupe/runtime/tensor.hpp"
#include "troupe/transport/content_hash.hpp"
#include "troupe/transport/error.hpp"
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
const char* const kFetchMethod = "__fetch";
// A call message is a few hundred bytes: start small instead of capnp's
// default 8 KiB first segment (calloc'd per message); it grows as needed.
constexpr unsigned kFirstSegmentWords = 128;

std::uint64_t random64() {
  static thread_local std::mt19937_64 rng{std::random_device{}() ^
                                          static_cast<std::uint64_t>(::getpid()) << 32 ^
                                          static_cast<std::uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count())};
  return rng();
}

template <class Builder>
void set_id(Builder builder, const Id128& id) {
  builder.setHi(id.hi);
  builder.setLo(id.lo);
}
template <class Reader>
Id128 get_id(Reader reader) {
  return Id128{reader.getHi(), reader.getLo()};
}

Id128 parse_hex_id(const std::string& hex) {
  if (hex.size() != 32) throw_error(Errc::invalid_argument, "bad id '" + hex + "'");
  Id128 id;
  id.hi = std::stoull(hex.substr(0, 16), nullptr, 16);
  id.lo = std::stoull(hex.substr(16), nullptr, 16);
  return id;
}

ActorState from_wire(wire::ActorState state) {
  switch (state) {
    case wire::ActorState::PENDING: return ActorState::pending;
    case wire::ActorState::ALIVE: return ActorState::alive;
    case wire::ActorState::RESTARTING: return ActorState::restarting;
    case wire::ActorState::DEAD: return ActorState::dead;
  }
  return ActorState::dead;
}

void fill_error(wire::ErrorInfo::Builder builder, const std::exception_ptr& error) {
  auto info = describe(error);
  builder.setCode(static_cast<std::uint16_t>(info.code));
  builder.setRemoteType(info.type);
  builder.setMessage(info.message);
}

std::exception_ptr to_exception(wire::ErrorInfo::Reader error) {
  return make_error(static_cast<Errc>(error.getCode()), error.getMessage(), error.getRemoteType());
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw_error(Errc::invalid_argument, "cannot read " + path);
  std::ostringstream out;
  out << in.rdbuf();
  return std::move(out).str();
}

std::string host_of(const std::string& address) {
  auto colon = address.rfind(':');
  std::string host = colon == std::string::npos ? address : address.substr(0, colon);
  if (host.rfind("tcp://", 0) == 0) host = host.substr(6);
  return host;
}

std::vector<int> gpus_of(wire::ActorUpdate::Reader update) {
  std::vector<int> gpus;
  for (auto index : update.getGpuIndices()) gpus.push_back(static_cast<int>(index));
  return gpus;
}

ClusterRuntime* g_cluster = nullptr;  // for the release hook; set while running

void release_hook(const ObjectId& id, const std::string& location) {
  if (auto* runtime = g_cluster) runtime->queue_release(id, location);
}

// A value that still lives in another process: fetched on first read.
class RemoteValue final : public Value {
 public:
  RemoteValue(std::weak_ptr<ClusterRuntime> runtime, Id128 id, std::string location)
      : runtime_(std::move(runtime)), id_(id), location_(std::move(location)) {}
  const std::type_info& type() const noexcept override { return typeid(void); }
  std::string encode() const override {
    auto value = resolved();
    return value ? value->encode() : std::string();
  }
  bool is_remote() const noexcept override { return true; }
  std::shared_ptr<Value> resolved() const override {
    std::call_once(once_, [&] {
      auto runtime = runtime_.lock();
      if (!runtime) throw_error(Errc::object_lost, "the runtime is shut down");
      value_ = runtime->fetch_value(id_, location_);
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
  std::weak_ptr<ClusterRuntime> runtime_;
  Id128 id_;
  std::string location_;
  mutable std::once_flag once_;
  mutable std::shared_ptr<Value> value_;
  mutable std::once_flag encoded_once_;
  mutable std::string encoded_;
};

// An ObjectRef parameter as the callee receives it: the state its ObjectRef
// wraps, filled by a fetch from the object's holder (take_arg).
class PassedRef final : public Value {
 public:
  explicit PassedRef(StatePtr state) : state_(std::move(state)) {}
  const std::type_info& type() const noexcept override { return typeid(PassedRef); }
  std::string encode() const override {
    throw_error(Errc::unsupported, "an ObjectRef parameter cannot be re-encoded; pass the ObjectRef on instead");
  }
  std::shared_ptr<ObjectState> passed_state() const override { return state_; }

 private:
  StatePtr state_;
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

transport::ObjectKey object_key(const Id128& id) { return transport::ObjectKey{id.hi, id.lo}; }
transport::ObjectKey payload_key(const Id128& id) { return transport::ObjectKey{id.hi ^ (std::uint64_t{1} << 63), id.lo}; }

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

std::exception_ptr from_transport(std::exception_ptr error) {
  try {
    std::rethrow_exception(error);
  } catch (const transport::TransportError& e) {
    return make_error(static_cast<Errc>(static_cast<int>(e.code())), e.message());
  } catch (...) {
    return std::current_exception();
  }
}

}  // namespace

std::string Id128::hex() const {
  char out[33];
  std::snprintf(out, sizeof out, "%016llx%016llx", static_cast<unsigned long long>(hi),
                static_cast<unsigned long long>(lo));
  return out;
}

// ---- RemoteActor ------------------------------------------------------------------

RemoteActor::RemoteActor(ClusterRuntime& runtime, std::uint64_t id, const ClassInfo& cls, std::string name,
                         bool owned)
    : runtime_(runtime), id_(id), cls_(cls), name_(std::move(name)), owned_(owned) {}

ActorState RemoteActor::state() const {
  std::lock_guard lock(mutex_);
  return state_;
}

std::string RemoteActor::status_message() const {
  std::lock_guard lock(mutex_);
  return status_;
}

int RemoteActor::restarts() const {
  std::lock_guard lock(mutex_);
  return restarts_;
}

void RemoteActor::submit(CallSpec call) {
  std::vector<StatePtr> refs;
  {
    std::unique_lock lock(mutex_);
    if (state_ == ActorState::dead || !runtime_.running()) {
      std::string why = state_ == ActorState::dead ? status_ : "the runtime is shut down";
      lock.unlock();
      call.result->set_error(make_error(runtime_.running() ? Errc::actor_died : Errc::cancelled,
                                        cls_.name + "#" + std::to_string(id_) + " cannot take calls: " + why));
      return;
    }
    for (auto& slot : call.args)
      if (!slot.value && slot.ref && !slot.ref->is_ready() && slot.ref->location().empty()) refs.push_back(slot.ref);
    std::weak_ptr<RemoteActor> weak_self = weak_from_this();
    std::weak_ptr<ObjectState> weak_result = call.result;
    call.result->set_canceller([weak_self, weak_result] {
      auto self = weak_self.lock();
      auto result = weak_result.lock();
      return self && result && self->cancel(result);
    });
    outbox_.push_back(Outgoing{std::move(call), next_seq_++});
  }
  // A ref produced in this process (a Promise, a then()) must be resolved
  // here before the call can be sent; refs produced by actors travel as
  // descriptors and resolve at the callee.
  auto self = shared_from_this();
  for (auto& ref : refs) ref->on_complete([self] { self->runtime_.pool().post([self] { self->pump(); }); });
  pump();
}

bool RemoteActor::cancel(const StatePtr& result) {
  std::string address;
  {
    std::lock_guard lock(mutex_);
    auto it = std::find_if(outbox_.begin(), outbox_.end(),
                           [&](const Outgoing& out) { return out.spec.result == result; });
    if (it == outbox_.end()) {
      address = address_;
    } else {
      const std::string method = it->spec.method->qualified;
      outbox_.erase(it);
      return result->set_error(make_error(Errc::cancelled, method + " was cancelled before it was sent"));
    }
  }
  // Sent already: ask the host to withdraw it. Whether it had started is
  // known only when the reply comes (a CancelledError, or the result).
  runtime_.cancel_sent(id_, address, result);
  return false;
}

bool RemoteActor::ready_to_send(const Outgoing& out) const {
  for (const auto& slot : out.spec.args) {
    if (!slot.value && slot.ref && !slot.ref->is_ready() && slot.ref->location().empty()) return false;
  }
  return true;
}

void RemoteActor::pump() {
  std::unique_lock lock(mutex_);
  while (state_ == ActorState::alive && !outbox_.empty() && ready_to_send(outbox_.front())) {
    Outgoing out = std::move(outbox_.front());
    outbox_.pop_front();
    if (out.spec.result->is_ready()) continue;  // cancelled
    try {
      runtime_.send_call(id_, address_, incarnation_, out.seq, out.spec);
    } catch (...) {
      out.spec.result->set_error(std::current_exception());
    }
  }
}

void RemoteActor::fail_all_locked(std::vector<StatePtr>& failed) {
  for (auto& out : outbox_) failed.push_back(out.spec.result);
  outbox_.clear();
}

std::vector<int> RemoteActor::gpu_ids() const {
  std::lock_guard lock(mutex_);
  return gpus_;
}

void RemoteActor::set_gpus(std::vector<int> gpus) {
  std::lock_guard lock(mutex_);
  gpus_ = std::move(gpus);
}

void RemoteActor::on_update(ActorState state, std::string address, std::uint32_t incarnation, std::string reason) {
  std::vector<StatePtr> failed;
  {
    std::lock_guard lock(mutex_);
    if (state_ == ActorState::dead) return;
    if (state == ActorState::restarting && state_ != ActorState::restarting) ++restarts_;
    state_ = state;
    if (!address.empty()) address_ = std::move(address);
    incarnation_ = incarnation;
    switch (state) {
      case ActorState::alive: status_ = "alive"; break;
      case ActorState::pending: status_ = reason.empty() ? "pending" : "pending: " + reason; break;
      case ActorState::restarting: status_ = "restarting: " + reason; break;
      case ActorState::dead:
        status_ = reason.empty() ? "dead" : reason;
        fail_all_locked(failed);
        break;
    }
  }
  if (state == ActorState::dead) {
    auto error = make_error(Errc::actor_died, cls_.name + "#" + std::to_string(id_) + " died: " + reason);
    for (auto& result : failed) result->set_error(error);
  }
  if (state == ActorState::alive) pump();
}

void RemoteActor::kill(bool no_restart) { runtime_.kill_actor(id_, no_restart); }

// ---- ClusterRuntime ------------------------------------------------------------------

static int pool_threads(int requested) {
  return requested > 0 ? requested : std::max(2, static_cast<int>(std::thread::hardware_concurrency()));
}

ClusterRuntime::ClusterRuntime(Config config) : config_(std::move(config)), pool_(pool_threads(config_.num_threads)) {
  worker_id_ = Id128{random64(), random64()};
  if (const char* ms = std::getenv("TROUPE_REQUEST_TIMEOUT_MS"); ms && *ms)
    request_timeout_ = std::chrono::milliseconds(std::max(100L, std::atol(ms)));
  if (const char* ms = std::getenv("TROUPE_FETCH_TIMEOUT_MS"); ms && *ms)
    fetch_timeout_ = std::chrono::milliseconds(std::max(100L, std::atol(ms)));
}

ClusterRuntime::~ClusterRuntime() {
  shutdown();
}

void ClusterRuntime::start() {
  std::string bind_ip;
  if (const char* ip = std::getenv("TROUPE_NODE_IP"); ip && *ip) bind_ip = ip;
  else bind_ip = local_ip_for(host_of(config_.head_address));
  calls_ = std::make_unique<CallPlane>(bind_ip, pool_, [this](transport::ReceivedMessage& m) { on_call_message(m); });
  calls_->set_periodic(std::chrono::milliseconds(20), [this] { tick(); });
  calls_->start();
  start_data_plane();
  g_cluster = this;
  set_release_hook(&release_hook);
  if (config_.actor_host) {
    start_host();
  } else {
    control_ = std::make_unique<ControlChannel>(config_.head_address, "drv-" + worker_id_.hex(),
                                                [this](wire::ControlMessage::Reader m) { on_control_push(m); });
    register_driver();
  }
}

void ClusterRuntime::register_driver() {
  // Hosts run this very binary: the head keeps it by content hash.
  const std::string bytes = read_file("/proc/self/exe");
  const std::string hash = transport::content_hash(bytes);
  capnp::MallocMessageBuilder message;
  auto reg = message.initRoot<wire::ControlMessage>().initRegisterDriver();
  reg.setProtocolVersion(wire::PROTOCOL_VERSION);
  set_id(reg.initWorkerId(), worker_id_);
  if (const char* job = std::getenv("TROUPE_JOB_ID"); job && *job) set_id(reg.initJobId(), parse_hex_id(job));
  reg.setBinaryHash(hash);
  reg.setPid(static_cast<std::uint32_t>(::getpid()));
  char hostname[256] = {};
  ::gethostname(hostname, sizeof hostname - 1);
  reg.setHostname(hostname);
  auto reply = control_->request(message, request_timeout_);
  auto root = reply.root<wire::ControlMessage>();
  if (!root.isRegisterDriverReply())
    throw_error(Errc::protocol, "head answered registerDriver with an unexpected message");
  auto body = root.getRegisterDriverReply();
  job_id_ = get_id(body.getJobId());
  const auto heartbeat = std::chrono::milliseconds(std::max<std::uint32_t>(50, body.getHeartbeatIntervalMs()));
  if (body.getNeedBinary()) {
    capnp::MallocMessageBuilder upload;
    auto up = upload.initRoot<wire::ControlMessage>().initUploadBinary();
    up.setBinaryHash(hash);
    up.setBinary(capnp::Data::Reader(reinterpret_cast<const capnp::byte*>(bytes.data()), bytes.size()));
    (void)control_->request(upload, std::chrono::milliseconds(std::max<long>(request_timeout_.count(), 60000)));
  }
  control_->set_periodic(heartbeat, [this] {
    capnp::MallocMessageBuilder beat;
    auto hb = beat.initRoot<wire::ControlMessage>().initDriverHeartbeat();
    set_id(hb.initWorkerId(), worker_id_);
    hb.setSeq(++heartbeat_seq_);
    control_->send(beat);
  });
  TROUPE_LOG_INFO("driver {} registered with head {} as job {}", worker_id_.hex(), config_.head_address, job_id_.hex());
}

std::shared_ptr<ActorCore> ClusterRuntime::create_actor(const ClassInfo& cls, std::vector<ArgSlot> ctor_args,
                                                        ActorOptions options) {
  if (!running()) throw_error(Errc::cancelled, "the runtime is shut down");
  validate_actor_options(options);
  std::vector<std::string> encoded;
  for (auto& slot : ctor_args) {
    if (slot.pass_ref) {
      throw_error(Errc::unsupported, cls.name +
                                         ": an ObjectRef constructor parameter cannot cross processes (the actor "
                                         "may restart long after it is gone); take the value, or pass the "
                                         "ObjectRef to a method");
    } else if (slot.value) {
      encoded.push_back(slot.value->encode());
    } else {
      slot.ref->wait();  // constructor arguments are resolved here, then shipped
      slot.ref->rethrow_if_error();
      encoded.push_back(slot.ref->value()->encode());
    }
  }
  const std::uint64_t id = random64() >> 1 | 1;
  capnp::MallocMessageBuilder message;
  auto create = message.initRoot<wire::ControlMessage>().initCreateActor();
  set_id(create.initActorId(), Id128{id, id});
  set_id(create.initJobId(), job_id_);
  set_id(create.initOwnerId(), worker_id_);
  create.setClassName(cls.name);
  create.setName(options.name);
  std::string args = serialize(encoded);
  create.setCtorArgs(capnp::Data::Reader(reinterpret_cast<const capnp::byte*>(args.data()), args.size()));
  auto amounts = options.resources;
  if (options.memory > 0) amounts["memory"] += static_cast<double>(options.memory);
  auto resources = create.initResources(static_cast<unsigned>(amounts.size()));
  unsigned i = 0;
  for (const auto& [name, amount] : amounts) {
    resources[i].setName(name);
    resources[i].setAmount(amount);
    ++i;
  }
  create.setGpuType(options.gpu_type);
  create.setGpuMemoryBytes(options.gpu_memory);
  create.setMaxRestarts(options.max_restarts);
  create.setMaxConcurrency(static_cast<std::uint32_t>(options.max_concurrency));
  create.setBundleIndex(options.bundle_index);
  if (options.placement_group.valid()) set_id(create.initPlacementGroupId(), Id128{options.placement_group.core()->id, options.placement_group.core()->id});
  auto actor = std::make_shared<RemoteActor>(*this, id, cls, options.name, true);
  {
    std::lock_guard lock(mutex_);
    actors_[id] = actor;
  }
  try {
    (void)control_->request(message, request_timeout_);
  } catch (...) {
    std::lock_guard lock(mutex_);
    actors_.erase(id);
    throw;
  }
  return actor;
}

std::shared_ptr<RemoteActor> ClusterRuntime::actor_for_update(std::uint64_t id) {
  std::lock_guard lock(mutex_);
  auto it = actors_.find(id);
  return it == actors_.end() ? nullptr : it->second;
}

void ClusterRuntime::on_control_push(wire::ControlMessage::Reader message) {
  if (message.isPlacementGroupUpdate()) {
    auto update = message.getPlacementGroupUpdate();
    std::shared_ptr<GroupCore> group;
    bool ready = false, failed = false;
    std::string reason = update.hasReason() ? std::string(update.getReason().getMessage()) : std::string();
    {
      std::lock_guard lock(mutex_);
      auto it = groups_.find(get_id(update.getPlacementGroupId()).lo);
      if (it == groups_.end()) return;
      group = it->second;
      switch (update.getState()) {
        case wire::PlacementGroupState::CREATED: group->placed = true; ready = true; break;
        case wire::PlacementGroupState::PENDING: group->reason = reason.empty() ? "pending" : reason; break;
        case wire::PlacementGroupState::INFEASIBLE: group->reason = "infeasible: " + reason; break;
        case wire::PlacementGroupState::REMOVED: group->removed = true; failed = true; break;
      }
    }
    if (ready) group->ready_promise.set_value();
    if (failed) group->ready_promise.set_error(make_error(Errc::cancelled, "placement group removed: " + reason));
    return;
  }
  if (message.isActorUpdate()) {
    auto update = message.getActorUpdate();
    auto actor = actor_for_update(get_id(update.getActorId()).lo);
    if (!actor) return;
    if (update.getState() != wire::ActorState::DEAD) actor->set_gpus(gpus_of(update));
    std::string reason = update.hasReason() ? std::string(update.getReason().getMessage()) : std::string();
    auto state = from_wire(update.getState());
    std::string address = update.getAddress();
    auto incarnation = update.getIncarnation();
    if (!address.empty() && update.getDataAddress().size() > 0)
      note_data_address(address, std::string(reinterpret_cast<const char*>(update.getDataAddress().begin()),
                                             update.getDataAddress().size()));
    if (state == ActorState::dead) {
      // Calls already sent to it will never be answered.
      std::vector<StatePtr> failed;
      {
        std::lock_guard lock(mutex_);
        for (auto it = inflight_.begin(); it != inflight_.end();) {
          if (it->second.actor_id == actor->id()) {
            failed.push_back(it->second.result);
            end_loans_locked(it->second.lent);
            it = inflight_.erase(it);
          } else {
            ++it;
          }
        }
      }
      auto error = make_error(Errc::actor_died, actor->cls().name + "#" + std::to_string(actor->id()) + " died: " + reason);
      for (auto& result : failed) result->set_error(error);
    }
    pool_.post([actor, state, address = std::move(address), incarnation, reason = std::move(reason)]() mutable {
      actor->on_update(state, std::move(address), incarnation, std::move(reason));
    });
  }
}

std::shared_ptr<ActorCore> ClusterRuntime::find(std::string_view name) { return look_up(name, 0); }

std::shared_ptr<ActorCore> ClusterRuntime::find(std::uint64_t id) {
  if (auto known = actor_for_update(id)) return known;
  return look_up({}, id);  // a handle that came from another process
}

std::shared_ptr<ActorCore> ClusterRuntime::look_up(std::string_view name, std::uint64_t actor_id) {
  if (!control_) return nullptr;
  capnp::MallocMessageBuilder message;
  auto get = message.initRoot<wire::ControlMessage>().initGetActorByName();
  set_id(get.initJobId(), job_id_);
  get.setName(std::string(name));
  if (name.empty()) set_id(get.initActorId(), Id128{actor_id, actor_id});
  try {
    auto reply = control_->request(message, request_timeout_);
    auto root = reply.root<wire::ControlMessage>();
    if (!root.isActorUpdate()) return nullptr;
    auto update = root.getActorUpdate();
    const std::uint64_t id = get_id(update.getActorId()).lo;
    if (auto existing = actor_for_update(id)) return existing;
    const ClassInfo* cls = find_class(update.getClassName().cStr());
    if (!cls) throw_error(Errc::not_registered, std::string("actor class ") + update.getClassName().cStr() + " is not registered in this binary");
    const std::string address = update.getAddress();
    if (!address.empty() && update.getDataAddress().size() > 0)
      note_data_address(address, std::string(reinterpret_cast<const char*>(update.getDataAddress().begin()),
                                             update.getDataAddress().size()));
    auto actor = std::make_shared<RemoteActor>(*this, id, *cls, std::string(update.getName().cStr()), false);
    {
      std::lock_guard lock(mutex_);
      auto [it, added] = actors_.emplace(id, actor);
      if (!added) return it->second;  // another thread looked it up meanwhile
    }
    actor->set_gpus(gpus_of(update));
    actor->on_update(from_wire(update.getState()), update.getAddress(), update.getIncarnation(),
                     update.hasReason() ? std::string(update.getReason().getMessage()) : std::string());
    return actor;
  } catch (const Error& e) {
    if (e.code() == Errc::not_found) return nullptr;
    throw;
  }
}

PlacementGroup ClusterRuntime::create_group(std::vector<ResourceSpec> specs, PlacementStrategy strategy,
                                            std::string name) {
  if (!running()) throw_error(Errc::cancelled, "the runtime is shut down");
  if (specs.empty()) throw_error(Errc::invalid_argument, "a placement group needs at least one bundle");
  std::vector<scheduler::Bundle> bundles;
  for (const auto& spec : specs) bundles.push_back(to_request(spec));
  scheduler::Strategy scheduler_strategy = scheduler::Strategy::PACK;
  wire::PlacementStrategy wire_strategy = wire::PlacementStrategy::PACK;
  switch (strategy) {
    case PlacementStrategy::pack: break;
    case PlacementStrategy::spread:
      scheduler_strategy = scheduler::Strategy::SPREAD;
      wire_strategy = wire::PlacementStrategy::SPREAD;
      break;
    case PlacementStrategy::strict_pack:
      scheduler_strategy = scheduler::Strategy::STRICT_PACK;
      wire_strategy = wire::PlacementStrategy::STRICT_PACK;
      break;
    case PlacementStrategy::strict_spread:
      scheduler_strategy = scheduler::Strategy::STRICT_SPREAD;
      wire_strategy = wire::PlacementStrategy::STRICT_SPREAD;
      break;
  }
  const std::uint64_t id = random64() >> 1 | 1;
  auto group = std::make_shared<GroupCore>(id, name, bundles, scheduler_strategy);
  capnp::MallocMessageBuilder message;
  auto create = message.initRoot<wire::ControlMessage>().initCreatePlacementGroup();
  set_id(create.initPlacementGroupId(), Id128{id, id});
  set_id(create.initJobId(), job_id_);
  create.setName(name);
  create.setStrategy(wire_strategy);
  auto list = create.initBundles(static_cast<unsigned>(specs.size()));
  for (unsigned i = 0; i < specs.size(); ++i) {
    // The GPU type travels as Ray's "GPU:<type>" resource.
    auto amounts = bundles[i].amounts.amounts();
    std::vector<std::pair<std::string, double>> items(amounts.begin(), amounts.end());
    if (!bundles[i].gpu_type.empty())
      items.emplace_back("GPU:" + bundles[i].gpu_type, bundles[i].amounts.get(scheduler::kGpu));
    auto resources = list[i].initResources(static_cast<unsigned>(items.size()));
    for (unsigned j = 0; j < items.size(); ++j) {
      resources[j].setName(items[j].first);
      resources[j].setAmount(items[j].second);
    }
  }
  {
    std::lock_guard lock(mutex_);
    group->reason = "waiting for the head";
    groups_[id] = group;
  }
  try {
    (void)control_->request(message, request_timeout_);
  } catch (...) {
    std::lock_guard lock(mutex_);
    groups_.erase(id);
    throw;
  }
  return PlacementGroup(group);
}

void ClusterRuntime::remove_group(const std::shared_ptr<GroupCore>& group) {
  capnp::MallocMessageBuilder message;
  auto remove = message.initRoot<wire::ControlMessage>().initRemovePlacementGroup();
  set_id(remove.initPlacementGroupId(), Id128{group->id, group->id});
  (void)control_->request(message, request_timeout_);
  {
    std::lock_guard lock(mutex_);
    group->removed = true;
    groups_.erase(group->id);
  }
  group->ready_promise.set_error(make_error(Errc::cancelled, "placement group removed"));
}

std::string ClusterRuntime::group_reason(const GroupCore& group) {
  std::lock_guard lock(mutex_);
  if (group.removed) return "removed";
  return group.placed ? std::string() : group.reason;
}

std::map<std::string, double> ClusterRuntime::cluster_totals(bool available) {
  if (!control_) return {};
  capnp::MallocMessageBuilder message;
  message.initRoot<wire::ControlMessage>().initGetClusterState().setIncludeDead(false);
  auto reply = control_->request(message, request_timeout_);
  auto root = reply.root<wire::ControlMessage>();
  if (!root.isClusterState()) throw_error(Errc::protocol, "head answered getClusterState with an unexpected message");
  std::map<std::string, double> sum;
  for (auto node : root.getClusterState().getNodes()) {
    if (node.getState() != wire::NodeState::ALIVE) continue;
    if (available) {
      for (auto r : node.getAvailable()) sum[r.getName()] += r.getAmount();
    } else {
      auto info = node.getNode();
      sum["CPU"] += info.getNumCpus();
      sum["GPU"] += info.getGpus().size();
      sum["memory"] += static_cast<double>(info.getMemoryBytes());
      for (auto r : info.getResources()) sum[r.getName()] += r.getAmount();
    }
  }
  return sum;
}

std::map<std::string, double> ClusterRuntime::total_resources() { return cluster_totals(false); }
std::map<std::string, double> ClusterRuntime::free_resources() { return cluster_totals(true); }

std::size_t ClusterRuntime::live_actor_count() {
  std::lock_guard lock(mutex_);
  std::size_t count = 0;
  for (auto& [id, actor] : actors_)
    if (actor->state() != ActorState::dead) ++count;
  return count;
}

void ClusterRuntime::kill_actor(std::uint64_t actor_id, bool no_restart) {
  if (!control_) throw_error(Errc::unsupported, "not connected to a head");
  capnp::MallocMessageBuilder message;
  auto kill = message.initRoot<wire::ControlMessage>().initKillActor();
  set_id(kill.initActorId(), Id128{actor_id, actor_id});
  kill.setNoRestart(no_restart);
  (void)control_->request(message, request_timeout_);
}

void ClusterRuntime::send_call(std::uint64_t actor_id, const std::string& address, std::uint32_t incarnation,
                               std::uint64_t seq, CallSpec& spec) {
  capnp::MallocMessageBuilder message(kFirstSegmentWords);
  auto request = message.initRoot<wire::CallMessage>().initRequest();
  const std::uint64_t call_id = next_call_.fetch_add(1);
  request.setCallId(call_id);
  set_id(request.initActorId(), Id128{actor_id, actor_id});
  request.setActorIncarnation(incarnation);
  set_id(request.initCallerId(), worker_id_);
  request.setSeq(seq);
  request.setMethod(spec.method->name);
  request.setReturnTo(calls_->address());
  const auto& result_id = spec.result->id();
  set_id(request.initResultId(), Id128{result_id.hi(), result_id.lo()});
  auto args = request.initArgs(static_cast<unsigned>(spec.args.size()));
  std::vector<StatePtr> borrowed;
  std::vector<Id128> lent;
  for (unsigned i = 0; i < spec.args.size(); ++i) {
    auto& slot = spec.args[i];
    const StatePtr& ref = slot.ref;
    if (slot.pass_ref) {
      describe_passed_ref(args[i].initPassRef(), ref, borrowed, lent);
      continue;
    }
    if (ref && ref->has_error()) std::rethrow_exception(ref->error());
    bool by_descriptor = ref && !ref->location().empty() && (!ref->is_ready() || ref->value()->is_remote());
    if (by_descriptor) {
      auto descriptor = args[i].initRef();
      set_id(descriptor.initId(), Id128{ref->id().hi(), ref->id().lo()});
      descriptor.setOwnerAddress(ref->location());
      if (auto data = data_address_of(ref->location()); !data.empty())
        descriptor.setOwnerDataAddress(capnp::Data::Reader(reinterpret_cast<const capnp::byte*>(data.data()), data.size()));
      descriptor.setRemote();
      borrowed.push_back(ref);
    } else {
      const ValuePtr& value = slot.value ? slot.value : ref->value();
      std::string bytes = value ? value->encode() : std::string();
      args[i].setValue(capnp::Data::Reader(reinterpret_cast<const capnp::byte*>(bytes.data()), bytes.size()));
    }
  }
  spec.result->set_location(address);  // the result lives at the callee
  {
    std::lock_guard lock(mutex_);
    inflight_[call_id] = Inflight{spec.result, std::move(borrowed), lent, actor_id,
                                  std::chrono::steady_clock::time_point::max()};
  }
  try {
    calls_->send(address, message);
  } catch (...) {
    std::lock_guard lock(mutex_);
    inflight_.erase(call_id);
    end_loans_locked(lent);
    throw;
  }
}

void ClusterRuntime::cancel_sent(std::uint64_t actor_id, const std::string& address, const StatePtr& result) {
  std::uint64_t call_id = 0;
  {
    std::lock_guard lock(mutex_);
    for (const auto& [id, flight] : inflight_) {
      if (flight.result == result) {
        call_id = id;
        break;
      }
    }
  }
  if (call_id == 0 || address.empty()) return;  // answered already, or its actor is gone
  capnp::MallocMessageBuilder message;
  auto cancel = message.initRoot<wire::CallMessage>().initCancel();
  cancel.setCallId(call_id);
  set_id(cancel.initActorId(), Id128{actor_id, actor_id});
  set_id(cancel.initCallerId(), worker_id_);
  set_id(cancel.initResultId(), Id128{result->id().hi(), result->id().lo()});
  try {
    calls_->send(address, message);
  } catch (const std::exception& e) {
    TROUPE_LOG_WARN("could not send a cancel to {}: {}", address, e.what());
  }
}

void ClusterRuntime::describe_passed_ref(wire::ObjectDescriptor::Builder descriptor, const StatePtr& ref,
                                         std::vector<StatePtr>& borrowed, std::vector<Id128>& lent) {
  const Id128 id{ref->id().hi(), ref->id().lo()};
  set_id(descriptor.initId(), id);
  descriptor.setRemote();
  const bool remote = !ref->location().empty() && (!ref->is_ready() || (ref->value() && ref->value()->is_remote()));
  if (remote) {
    // Held by another process (an actor's result): the callee fetches it
    // from there, as for a resolved argument.
    descriptor.setOwnerAddress(ref->location());
    if (auto data = data_address_of(ref->location()); !data.empty())
      descriptor.setOwnerDataAddress(capnp::Data::Reader(reinterpret_cast<const capnp::byte*>(data.data()), data.size()));
    borrowed.push_back(ref);
    return;
  }
  if (ref->is_ready() && !ref->has_error()) {
    const ValuePtr& value = ref->value();
    const bool big_tensor = value && value->type() == typeid(Tensor) &&
                            static_cast<const TypedValue<Tensor>*>(value.get())->value.nbytes() >
                                (data_ ? kTensorInlineLimit : kInlineLimit);
    if (!big_tensor) {
      std::string bytes = value ? value->encode() : std::string();
      if (bytes.size() <= kInlineLimit) {
        descriptor.setInlineData(capnp::Data::Reader(reinterpret_cast<const capnp::byte*>(bytes.data()), bytes.size()));
        descriptor.setSizeBytes(bytes.size());
        return;
      }
    }
  }
  // Only this process can serve it (pending here, failed, or large): lend it
  // from table_, over the data plane when there is one, until the callee has
  // answered; the callee fetches it before it answers.
  descriptor.setOwnerAddress(calls_->address());
  if (data_) {
    const auto& data = data_->address();
    descriptor.setOwnerDataAddress(capnp::Data::Reader(reinterpret_cast<const capnp::byte*>(data.data()), data.size()));
  }
  bool first = false;
  std::vector<StatePtr> waiting;
  {
    std::lock_guard lock(mutex_);
    first = loans_[id]++ == 0;
    if (first) {
      table_[id] = ref;
      if (auto it = wanted_.find(id); it != wanted_.end()) {
        waiting = std::move(it->second);
        wanted_.erase(it);
      }
    }
  }
  for (auto& parked : waiting) forward_state(ref, parked);
  if (first && data_) {
    auto self = shared_from_this();
    std::weak_ptr<ObjectState> weak = ref;
    ref->on_complete([self, weak, id] {
      auto s = weak.lock();
      if (!s) return;
      {
        std::lock_guard lock(self->mutex_);
        if (!self->loans_.count(id)) return;
      }
      self->publish(id, s);
      std::lock_guard lock(self->mutex_);
      if (!self->loans_.count(id)) {  // the loan ended while this encoded it
        self->data_->unpublish(object_key(id));
        self->data_->unpublish(payload_key(id));
      }
    });
  }
  borrowed.push_back(ref);
  lent.push_back(id);
}

void ClusterRuntime::end_loans_locked(const std::vector<Id128>& lent) {
  for (const auto& id : lent) {
    auto it = loans_.find(id);
    if (it == loans_.end() || --it->second > 0) continue;
    loans_.erase(it);
    table_.erase(id);
    if (data_) {
      data_->unpublish(object_key(id));
      data_->unpublish(payload_key(id));
    }
  }
}

void ClusterRuntime::on_call_message(transport::ReceivedMessage& message) {
  // The frame was bounds-, traversal- and nesting-checked on receipt; the
  // per-field schema walk of root<T>() costs ~3 us a message on the hot
  // path, so read it directly: a malformed field throws kj::Exception on
  // access, converted here into Errc::protocol and the message dropped.
  try {
    dispatch_call_message(message.reader().getRoot<wire::CallMessage>());
  } catch (const kj::Exception& e) {
    transport::throw_from_kj(e, "call-plane message");
  }
}

void ClusterRuntime::dispatch_call_message(wire::CallMessage::Reader root) {
  switch (root.which()) {
    case wire::CallMessage::REPLY: on_reply(root.getReply()); break;
    case wire::CallMessage::REQUEST: {
      auto request = root.getRequest();
      if (request.getMethod() == kFetchMethod) serve_fetch(request);
      else on_request(request);
      break;
    }
    case wire::CallMessage::RELEASE: {
      std::lock_guard lock(mutex_);
      for (auto wire_id : root.getRelease().getIds()) {
        const Id128 id = get_id(wire_id);
        table_.erase(id);
        wanted_.erase(id);
        if (data_) {
          data_->unpublish(object_key(id));
          data_->unpublish(payload_key(id));
        }
      }
      break;
    }
    case wire::CallMessage::CANCEL: {
      StatePtr result;
      {
        std::lock_guard lock(mutex_);
        auto cancel = root.getCancel();
        if (!cancel.hasResultId()) break;
        auto it = table_.find(get_id(cancel.getResultId()));
        if (it != table_.end()) result = it->second;
      }
      // A call not started yet fails with CancelledError, and that is its
      // reply; one that started runs to the end and answers as usual.
      if (result) result->cancel();
      break;
    }
  }
}

void ClusterRuntime::on_reply(wire::CallReply::Reader reply) {
  StatePtr result;
  std::vector<StatePtr> borrowed;  // released when this returns
  {
    std::lock_guard lock(mutex_);
    auto it = inflight_.find(reply.getCallId());
    if (it == inflight_.end()) return;  // timed out or the actor was declared dead
    result = std::move(it->second.result);
    borrowed = std::move(it->second.borrowed);
    end_loans_locked(it->second.lent);
    if (it->second.actor_id == 0 && fetches_in_flight_ > 0) --fetches_in_flight_;
    inflight_.erase(it);
  }
  switch (reply.which()) {
    case wire::CallReply::VALUE: {
      auto data = reply.getValue();
      if (data.size() == 0) result->set_value(nullptr);
      else result->set_value(std::make_shared<EncodedValue>(std::string(reinterpret_cast<const char*>(data.begin()), data.size())));
      break;
    }
    case wire::CallReply::REF: {
      auto descriptor = reply.getRef();
      result->set_value(std::make_shared<RemoteValue>(weak_from_this(), get_id(descriptor.getId()),
                                                      std::string(descriptor.getOwnerAddress())));
      break;
    }
    case wire::CallReply::ERROR: result->set_error(to_exception(reply.getError())); break;
  }
}

StatePtr ClusterRuntime::fetch_async(const Id128& id, const std::string& location) {
  if (data_) {
    if (auto data_address = data_address_of(location); !data_address.empty())
      return fetch_over_data_plane(id, data_address);
  }
  auto state = std::make_shared<ObjectState>();
  capnp::MallocMessageBuilder message;
  auto request = message.initRoot<wire::CallMessage>().initRequest();
  const std::uint64_t call_id = next_call_.fetch_add(1);
  request.setCallId(call_id);
  set_id(request.initCallerId(), worker_id_);
  request.setMethod(kFetchMethod);
  request.setReturnTo(calls_->address());
  auto descriptor = request.initArgs(1)[0].initRef();
  set_id(descriptor.initId(), id);
  descriptor.setOwnerAddress(location);
  descriptor.setRemote();
  {
    std::lock_guard lock(mutex_);
    inflight_[call_id] = Inflight{state, {}, {}, 0, std::chrono::steady_clock::now() + fetch_timeout_};
    ++fetches_in_flight_;
  }
  calls_->send(location, message);
  return state;
}

ValuePtr ClusterRuntime::fetch_value(const Id128& id, const std::string& location) {
  auto state = fetch_async(id, location);
  state->wait();  // bounded: fetches fail past their deadline (tick, or the data plane's timeout)
  state->rethrow_if_error();
  return state->value();
}

// ---- the UCX data plane ------------------------------------------------------------------

void ClusterRuntime::start_data_plane() {
  if (const char* mode = std::getenv("TROUPE_DATA_PLANE"); mode && std::string_view(mode) == "zmq") {
    data_fallback_reason_ = "TROUPE_DATA_PLANE=zmq";
    return;
  }
  try {
    transport::UcxOptions options;
    auto worker = transport::UcxWorker::create(transport::UcxContext::create(options));
    data_ = std::make_shared<transport::DataPlane>(std::move(worker));
    TROUPE_LOG_DEBUG("data plane: UCX {}", data_->worker()->context()->describe());
  } catch (const std::exception& e) {
    TROUPE_LOG_WARN("UCX data plane unavailable ({}); objects will move over the call plane", e.what());
    data_fallback_reason_ = std::string("UCX unavailable: ") + e.what();
    data_.reset();
  }
}

std::string ClusterRuntime::data_plane_info() const {
  if (data_) return "ucx: " + data_->worker()->context()->describe();
  return "call plane: " + data_fallback_reason_;
}

void ClusterRuntime::note_data_address(const std::string& call_address, std::string data_address) {
  std::lock_guard lock(mutex_);
  data_addresses_[call_address] = std::move(data_address);
}

std::string ClusterRuntime::data_address_of(const std::string& call_address) {
  if (data_ && call_address == calls_->address()) return data_->address();
  std::lock_guard lock(mutex_);
  auto it = data_addresses_.find(call_address);
  return it == data_addresses_.end() ? std::string() : it->second;
}

void ClusterRuntime::publish(const Id128& id, const StatePtr& result) {
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
  data_->publish(object_key(id), transport::ObjectBuffer::wrap(data, size, std::move(envelope)));
}

StatePtr ClusterRuntime::fetch_over_data_plane(const Id128& id, const std::string& data_address) {
  auto state = std::make_shared<ObjectState>();
  transport::FetchOptions options;
  options.timeout = fetch_timeout_;
  options.wait_for_publish = true;  // the producing call may still run: the holder answers when it is done
  std::weak_ptr<ClusterRuntime> weak = weak_from_this();
  data_->fetch(data_address, object_key(id), options,
               [weak, state, id, data_address](transport::ObjectBuffer buffer, std::exception_ptr error) {
                 // On the UCX progress thread: decode on the pool instead.
                 auto self = weak.lock();
                 if (!self) {
                   state->set_error(make_error(Errc::cancelled, "the runtime shut down"));
                   return;
                 }
                 if (error) {
                   state->set_error(from_transport(error));
                   return;
                 }
                 self->pool_.post([weak, state, id, data_address, buffer = std::move(buffer)]() mutable {
                   if (auto self = weak.lock()) self->on_envelope(id, data_address, state, buffer);
                 });
               });
  return state;
}

void ClusterRuntime::on_envelope(const Id128& id, const std::string& data_address, const StatePtr& state,
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
    std::weak_ptr<ClusterRuntime> weak = weak_from_this();
    data_->fetch(data_address, payload_key(id), options,
                 [state, meta, to_cuda](transport::ObjectBuffer payload, std::exception_ptr error) {
                   if (error) {
                     state->set_error(from_transport(error));
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

void ClusterRuntime::serve_fetch(wire::CallRequest::Reader request) {
  const std::uint64_t call_id = request.getCallId();
  std::string return_to = request.getReturnTo();
  if (request.getArgs().size() != 1 || !request.getArgs()[0].isRef()) return;
  const Id128 id = get_id(request.getArgs()[0].getRef().getId());
  StatePtr state;
  {
    std::lock_guard lock(mutex_);
    auto it = table_.find(id);
    if (it != table_.end()) {
      state = it->second;
    } else {
      // The call producing it has not arrived yet (it comes on another
      // connection): park the fetch until it does.
      state = std::make_shared<ObjectState>(ObjectId{id.hi, id.lo});
      wanted_[id].push_back(state);
    }
  }
  auto self = shared_from_this();
  std::weak_ptr<ObjectState> weak = state;
  state->on_complete([self, weak, call_id, return_to] {
    if (auto s = weak.lock()) self->reply_to(return_to, call_id, 0, s, /*allow_ref=*/false);
  });
}

StatePtr ClusterRuntime::resolve_descriptor(wire::ObjectDescriptor::Reader descriptor) {
  const Id128 id = get_id(descriptor.getId());
  if (descriptor.isInlineData()) {
    auto data = descriptor.getInlineData();
    auto state = std::make_shared<ObjectState>();
    state->set_value(std::make_shared<EncodedValue>(std::string(reinterpret_cast<const char*>(data.begin()), data.size())));
    return state;
  }
  std::string owner = descriptor.getOwnerAddress();
  if (descriptor.getOwnerDataAddress().size() > 0 && owner != calls_->address())
    note_data_address(owner, std::string(reinterpret_cast<const char*>(descriptor.getOwnerDataAddress().begin()),
                                         descriptor.getOwnerDataAddress().size()));
  if (owner == calls_->address()) {
    std::lock_guard lock(mutex_);
    auto it = table_.find(id);
    if (it != table_.end()) return it->second;
    auto state = std::make_shared<ObjectState>(ObjectId{id.hi, id.lo});
    wanted_[id].push_back(state);
    return state;
  }
  return fetch_async(id, owner);
}

void ClusterRuntime::on_request(wire::CallRequest::Reader request) {
  const std::uint64_t call_id = request.getCallId();
  std::string return_to = request.getReturnTo();
  const Id128 result_id = get_id(request.getResultId());
  auto result = std::make_shared<ObjectState>(ObjectId{result_id.hi, result_id.lo});
  auto fail = [&](Errc code, std::string message) {
    result->set_error(make_error(code, std::move(message)));
    reply_to(return_to, call_id, 0, result, false);
  };
  if (!hosted_) return fail(Errc::not_found, "this process hosts no actor");
  if (get_id(request.getActorId()).lo != hosted_id_.lo)
    return fail(Errc::actor_died, "this host runs actor " + hosted_id_.hex() + ", not the one called");
  const MethodInfo* method = hosted_->cls().find_method(request.getMethod().cStr());
  if (!method) return fail(Errc::not_registered, hosted_->cls().name + " has no registered method '" +
                                                     std::string(request.getMethod().cStr()) + "'");
  if (method->arity != request.getArgs().size())
    return fail(Errc::invalid_argument, method->qualified + " takes " + std::to_string(method->arity) + " arguments");
  CallSpec spec;
  spec.method = method;
  spec.result = result;
  std::vector<StatePtr> passed;  // ObjectRef parameters, fetched from their holders
  for (auto arg : request.getArgs()) {
    ArgSlot slot;
    switch (arg.which()) {
      case wire::Arg::VALUE: {
        auto data = arg.getValue();
        slot.value = std::make_shared<EncodedValue>(std::string(reinterpret_cast<const char*>(data.begin()), data.size()));
        break;
      }
      case wire::Arg::REF: slot.ref = resolve_descriptor(arg.getRef()); break;
      case wire::Arg::PASS_REF: {
        StatePtr state = resolve_descriptor(arg.getPassRef());
        passed.push_back(state);
        slot.value = std::make_shared<PassedRef>(std::move(state));
        slot.pass_ref = true;
        break;
      }
    }
    spec.args.push_back(std::move(slot));
  }
  std::vector<StatePtr> waiting;
  {
    std::lock_guard lock(mutex_);
    table_[result_id] = result;
    auto it = wanted_.find(result_id);
    if (it != wanted_.end()) {
      waiting = std::move(it->second);
      wanted_.erase(it);
    }
  }
  for (auto& parked : waiting) forward_state(result, parked);
  auto self = shared_from_this();
  std::weak_ptr<ObjectState> weak = result;
  const std::uint64_t actor = hosted_id_.lo;
  result->on_complete([self, weak, result_id] {
    if (auto s = weak.lock()) self->publish(result_id, s);  // a consumer may ask as soon as the caller knows
  });
  // The reply waits for the ObjectRef parameters too: the caller lends
  // them until it has the reply, so this process must hold its copies by
  // then, even if the method never read them.
  auto gate = std::make_shared<std::atomic<std::size_t>>(passed.size() + 1);
  auto answer = [self, weak, gate, call_id, return_to, actor] {
    if (gate->fetch_sub(1, std::memory_order_acq_rel) != 1) return;
    if (auto s = weak.lock()) self->reply_to(return_to, call_id, actor, s, /*allow_ref=*/true);
  };
  for (auto& state : passed) state->on_complete(answer);
  result->on_complete(answer);
  hosted_->submit_from(std::move(spec), get_id(request.getCallerId()).lo);
}

void ClusterRuntime::reply_to(const std::string& address, std::uint64_t call_id, std::uint64_t actor_id,
                              const StatePtr& result, bool allow_ref) {
  capnp::MallocMessageBuilder message(kFirstSegmentWords);
  auto reply = message.initRoot<wire::CallMessage>().initReply();
  reply.setCallId(call_id);
  set_id(reply.initActorId(), Id128{actor_id, actor_id});
  if (result->has_error()) {
    fill_error(reply.initError(), result->error());
  } else {
    const ValuePtr& value = result->value();
    // A large tensor is not encoded at all: its bytes go out over the data
    // plane, from its storage, to whoever fetches it.
    std::size_t tensor_bytes = 0;
    if (value && value->type() == typeid(Tensor))
      tensor_bytes = static_cast<const TypedValue<Tensor>*>(value.get())->value.nbytes();
    bool by_ref = allow_ref && tensor_bytes > (data_ ? kTensorInlineLimit : kInlineLimit);
    std::string bytes;
    if (!by_ref) {
      try {
        bytes = value ? value->encode() : std::string();
      } catch (...) {
        fill_error(reply.initError(), std::current_exception());
        calls_->send(address, message);
        return;
      }
      by_ref = allow_ref && bytes.size() > kInlineLimit;
    }
    if (by_ref) {
      auto descriptor = reply.initRef();
      set_id(descriptor.initId(), Id128{result->id().hi(), result->id().lo()});
      descriptor.setOwnerAddress(calls_->address());
      if (data_) {
        const auto& data = data_->address();
        descriptor.setOwnerDataAddress(capnp::Data::Reader(reinterpret_cast<const capnp::byte*>(data.data()), data.size()));
      }
      descriptor.setSizeBytes(tensor_bytes ? tensor_bytes : bytes.size());
      descriptor.setRemote();
    } else {
      reply.setValue(capnp::Data::Reader(reinterpret_cast<const capnp::byte*>(bytes.data()), bytes.size()));
    }
  }
  try {
    calls_->send(address, message);
  } catch (const std::exception& e) {
    TROUPE_LOG_WARN("could not reply to {}: {}", address, e.what());
  }
}

void ClusterRuntime::queue_release(const ObjectId& id, const std::string& location) {
  std::lock_guard lock(mutex_);
  releases_[location].push_back(Id128{id.hi(), id.lo()});
}

void ClusterRuntime::tick() {
  std::map<std::string, std::vector<Id128>> releases;
  std::vector<StatePtr> expired;
  {
    std::lock_guard lock(mutex_);
    releases.swap(releases_);
    const auto now = std::chrono::steady_clock::now();
    // Only fetches have deadlines; calls may run as long as they like.
    for (auto it = inflight_.begin(); fetches_in_flight_ > 0 && it != inflight_.end();) {
      if (it->second.deadline <= now) {
        expired.push_back(std::move(it->second.result));
        --fetches_in_flight_;
        it = inflight_.erase(it);
      } else {
        ++it;
      }
    }
  }
  for (auto& state : expired)
    state->set_error(make_error(Errc::object_lost, "the process holding the object did not answer within " +
                                                       std::to_string(fetch_timeout_.count()) + " ms"));
  for (auto& [location, ids] : releases) {
    capnp::MallocMessageBuilder message;
    auto release = message.initRoot<wire::CallMessage>().initRelease();
    set_id(release.initHolderId(), worker_id_);
    auto list = release.initIds(static_cast<unsigned>(ids.size()));
    for (unsigned i = 0; i < ids.size(); ++i) set_id(list[i], ids[i]);
    try {
      calls_->send(location, message);
    } catch (...) {
    }
  }
}

void ClusterRuntime::start_host() {
  // Die with the node manager that started us.
  ::prctl(PR_SET_PDEATHSIG, SIGTERM);
  std::string bytes = read_file(config_.spec_path);
  auto message = transport::ReceivedMessage::copy_of(bytes.data(), bytes.size());
  auto start = message.root<wire::StartActor>();
  auto spec = start.getSpec();
  hosted_id_ = get_id(spec.getActorId());
  incarnation_ = start.getIncarnation();
  job_id_ = get_id(spec.getJobId());
  if (const char* node = std::getenv("TROUPE_NODE_ID"); node && *node) {
    try {
      node_id_ = parse_hex_id(node);
    } catch (...) {
    }
  }
  control_ = std::make_unique<ControlChannel>(config_.head_address, "act-" + hosted_id_.hex(),
                                              [this](wire::ControlMessage::Reader m) { on_control_push(m); });
  std::string failure;
  const ClassInfo* cls = find_class(spec.getClassName().cStr());
  if (!cls) {
    failure = std::string("actor class '") + spec.getClassName().cStr() + "' is not registered in this binary";
  } else {
    InitOptions local;
    local.num_threads = std::max<int>(2, static_cast<int>(spec.getMaxConcurrency()) + 1);
    const auto gpus = start.getGpuIndices().size();
    if (gpus > 0) local.gpus = "visible:" + std::to_string(gpus);
    host_runtime_ = std::make_shared<LocalRuntime>(local);
    std::vector<ArgSlot> slots;
    try {
      auto args = deserialize<std::vector<std::string>>(
          std::string_view(reinterpret_cast<const char*>(spec.getCtorArgs().begin()), spec.getCtorArgs().size()));
      for (auto& arg : args) slots.push_back(ArgSlot{std::make_shared<EncodedValue>(std::move(arg)), nullptr});
      ActorOptions options;
      options.max_concurrency = static_cast<int>(std::max<std::uint32_t>(1, spec.getMaxConcurrency()));
      if (gpus > 0) options.resources = {{"GPU", static_cast<double>(gpus)}};
      hosted_ = std::static_pointer_cast<LocalActor>(host_runtime_->create_actor(*cls, std::move(slots), options));
      while (hosted_->state() == ActorState::pending) std::this_thread::sleep_for(std::chrono::milliseconds(1));
      if (hosted_->state() == ActorState::dead) failure = hosted_->status_message();
    } catch (const std::exception& e) {
      failure = e.what();
    }
  }
  capnp::MallocMessageBuilder update;
  auto body = update.initRoot<wire::ControlMessage>().initActorUpdate();
  set_id(body.initActorId(), hosted_id_);
  set_id(body.initNodeId(), node_id_);
  body.setIncarnation(incarnation_);
  body.setClassName(spec.getClassName());
  body.setName(spec.getName());
  if (failure.empty()) {
    body.setState(wire::ActorState::ALIVE);
    body.setAddress(calls_->address());
    if (data_) {
      const auto& data = data_->address();
      body.setDataAddress(capnp::Data::Reader(reinterpret_cast<const capnp::byte*>(data.data()), data.size()));
    }
  } else {
    body.setState(wire::ActorState::DEAD);
    auto reason = body.initReason();
    reason.setCode(static_cast<std::uint16_t>(Errc::actor_died));
    reason.setMessage(failure);
  }
  (void)control_->request(update, request_timeout_);
  if (!failure.empty()) {
    TROUPE_LOG_ERROR("actor host failed to start: {}", failure);
    std::fflush(nullptr);
    std::_Exit(3);
  }
  TROUPE_LOG_INFO("actor host for {} serving at {}", hosted_id_.hex(), calls_->address());
}

void ClusterRuntime::serve_forever() {
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  int signal = 0;
  sigwait(&signals, &signal);
  TROUPE_LOG_INFO("actor host exiting on signal {}", signal);
  std::fflush(nullptr);
  std::_Exit(0);
}

void ClusterRuntime::shutdown() {
  if (!running_.exchange(false)) return;
  std::vector<std::shared_ptr<RemoteActor>> owned;
  std::vector<StatePtr> pending;
  {
    std::lock_guard lock(mutex_);
    for (auto& [id, actor] : actors_)
      if (actor->owned() && actor->state() != ActorState::dead) owned.push_back(actor);
    for (auto& [id, flight] : inflight_) pending.push_back(flight.result);
    inflight_.clear();
    fetches_in_flight_ = 0;
  }
  // A driver's actors end with it (Ray's non-detached actors).
  for (auto& actor : owned) {
    try {
      kill_actor(actor->id(), true);
    } catch (const std::exception& e) {
      TROUPE_LOG_WARN("could not kill actor {} at shutdown: {}", actor->id(), e.what());
    }
    actor->on_update(ActorState::dead, {}, 0, "the driver shut down");
  }
  auto error = make_error(Errc::cancelled, "the runtime shut down");
  for (auto& state : pending) state->set_error(error);
  set_release_hook(nullptr);
  g_cluster = nullptr;
  if (control_) control_->stop();
  if (calls_) calls_->stop();
  data_.reset();  // fails fetches still pending with `cancelled`
  if (host_runtime_) host_runtime_->shutdown();
  pool_.stop();
  std::lock_guard lock(mutex_);
  actors_.clear();
  table_.clear();
  wanted_.clear();
}

}  // namespace troupe::detail

namespace troupe {

std::string data_plane_info() {
  if (auto* cluster = detail::g_cluster) return cluster->data_plane_info();
  return "local: in-process";
}

}  // namespace troupe
