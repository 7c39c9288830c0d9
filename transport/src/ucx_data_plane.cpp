// DataPlane: fetch / push / publish of objects over UCX active messages.
//
// Everything below the public methods runs on the worker's progress thread,
// except the published-object table (served_), which publish() fills from
// any thread under served_mutex_ so that "published, then announced" is
// race-free. UCX callbacks (AM handlers, send/receive completions, endpoint
// errors) run inside ucp_worker_progress; work that needs new endpoints is
// deferred to the tick that follows it.
#include "troupe/transport/ucx.hpp"

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <limits>
#include <list>
#include <optional>
#include <mutex>
#include <random>
#include <set>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

#include <ucp/api/ucp.h>

#include <spdlog/spdlog.h>

#include "troupe/transport/error.hpp"
#include "troupe/transport/internal/membership.hpp"
#include "troupe/transport/internal/ucx_wire.hpp"
#include "ucx_cuda.hpp"

namespace troupe::transport {
namespace {

using Clock = std::chrono::steady_clock;

using namespace ucx_wire;
static_assert(kMaxMetaBytes == kMaxObjectMetaBytes, "one limit for object meta");

std::shared_ptr<spdlog::logger> log() {
  auto logger = spdlog::get("troupe");
  return logger ? logger : spdlog::default_logger();
}

// Runs `fn`, logging what it throws: for code called from UCX's C frames
// and for user callbacks, so that no exception ends the progress thread.
template <class Fn>
void guarded(const char* what, Fn&& fn) noexcept {
  try {
    fn();
  } catch (const std::exception& e) {
    try {
      log()->error("data plane: {} threw: {}", what, e.what());
    } catch (...) {
    }
  } catch (...) {
    try {
      log()->error("data plane: {} threw a non-standard exception", what);
    } catch (...) {
    }
  }
}

std::string hex(ObjectId key) { return key.hex(); }

ucs_memory_type_t ucs_memory(MemoryType memory) {
  return memory == MemoryType::cuda ? UCS_MEMORY_TYPE_CUDA : UCS_MEMORY_TYPE_HOST;
}


// Transport names of an endpoint's lanes from ucp_ep_print_info, e.g.
// "lane[0]:  4:posix/memory.0 md[3] ..." -> "posix"; each once, in lane order.
std::string lane_transports(ucp_ep_h ep) {
  char* text = nullptr;
  std::size_t size = 0;
  FILE* stream = ::open_memstream(&text, &size);
  if (stream == nullptr) return {};
  ucp_ep_print_info(ep, stream);
  std::fclose(stream);
  const std::string info(text != nullptr ? text : "", size);
  std::free(text);
  std::vector<std::string> names;
  std::size_t pos = 0;
  while ((pos = info.find("lane[", pos)) != std::string::npos) {
    const auto colon = info.find(':', pos);
    pos += 5;
    if (colon == std::string::npos) break;
    const auto start = info.find_first_not_of(" 0123456789:", colon);
    const auto slash = start == std::string::npos ? std::string::npos : info.find('/', start);
    if (slash == std::string::npos) continue;
    std::string name = info.substr(start, slash - start);
    bool seen = false;
    for (const auto& n : names) seen = seen || n == name;
    if (!seen) names.push_back(std::move(name));
  }
  std::string out;
  for (const auto& name : names) out += (out.empty() ? "" : ",") + name;
  return out;
}

// The default allocator's host blocks: freed blocks of 64 KiB and more wait
// here (by size class) for the next allocation of their class. Thread-safe:
// a block comes back from whichever thread drops its last ObjectBuffer.
class HostPool : public std::enable_shared_from_this<HostPool> {
 public:
  explicit HostPool(std::size_t capacity) : capacity_(capacity) {}
  ~HostPool() {
    for (auto& [size, blocks] : idle_)
      for (void* block : blocks) release(block);
  }

  ObjectBuffer allocate(std::size_t size) {
    if (size < kMinPooled || capacity_ == 0) return ObjectBuffer::allocate_host(size);
    const std::size_t block_size = size_class(size);
    void* block = nullptr;
    {
      std::lock_guard lock(mutex_);
      auto it = idle_.find(block_size);
      if (it != idle_.end() && !it->second.empty()) {
        block = it->second.back();
        it->second.pop_back();
        idle_bytes_ -= block_size;
      }
    }
    if (block == nullptr) block = ::operator new(block_size, std::align_val_t{64});
    ObjectBuffer buffer;
    buffer.data = block;
    buffer.size = size;
    buffer.keepalive = std::shared_ptr<const void>(
        block, [pool = weak_from_this(), block_size](const void* p) {
          if (auto self = pool.lock()) self->give_back(const_cast<void*>(p), block_size);
          else release(const_cast<void*>(p));
        });
    return buffer;
  }

 private:
  static constexpr std::size_t kMinPooled = std::size_t{64} << 10;

  // Rounds up to a multiple of a quarter of the largest power of two not
  // above `size`: at most 25% slack.
  static std::size_t size_class(std::size_t size) {
    std::size_t power = std::size_t{1} << (63 - __builtin_clzll(size));
    const std::size_t step = power / 4;
    return (size + step - 1) / step * step;
  }
  static void release(void* block) { ::operator delete(block, std::align_val_t{64}); }

  void give_back(void* block, std::size_t block_size) {
    {
      std::lock_guard lock(mutex_);
      if (idle_bytes_ + block_size <= capacity_) {
        idle_[block_size].push_back(block);
        idle_bytes_ += block_size;
        return;
      }
    }
    release(block);
  }

  const std::size_t capacity_;
  std::mutex mutex_;
  std::unordered_map<std::size_t, std::vector<void*>> idle_;  // guarded by mutex_
  std::size_t idle_bytes_ = 0;                                 // guarded by mutex_
};

}  // namespace

// A cached endpoint to one peer worker. Holds the worker, so the worker
// outlives every endpoint; operations hold the endpoint.
struct Endpoint {
  Endpoint(std::shared_ptr<UcxWorker> w, std::string peer) : worker(std::move(w)), address(std::move(peer)) {}
  std::shared_ptr<UcxWorker> worker;
  std::string address;
  ucp_ep_h ep = nullptr;  // null once closed
  bool failed = false;
  ucs_status_t failure = UCS_OK;
  DataPlane::Impl* plane = nullptr;
};

class DataPlane::Impl {
 public:
  Impl(std::shared_ptr<UcxWorker> worker, DataPlaneOptions options);

  void start();                  // progress thread
  void close();                  // progress thread: phase 1 of teardown
  std::size_t drain_outstanding();  // progress thread: progresses; returns UCX operations left

  // --- public operations (progress thread) -------------------------------
  void start_fetch(std::string peer, ObjectId id, FetchOptions options, FetchCallback done);
  void start_push(std::string peer, ObjectId id, ObjectBuffer buffer, PushCallback done);
  void start_push_request(std::string holder, ObjectId id, std::string consumer, std::chrono::milliseconds wait);
  void wake_parked(ObjectId id);
  std::string peer_transports(const std::string& peer);
  Stats stats() const;

  // --- published objects (any thread) -------------------------------------
  void publish(ObjectId id, ObjectBuffer buffer);
  bool unpublish(ObjectId id);
  std::size_t published_count() const;

  std::shared_ptr<UcxWorker> worker_;
  std::string address_;

 private:
  // Receive state of one object (a fetch reply or a push).
  struct Transfer {
    std::uint64_t id = 0;  // request id (reply) or pusher's transfer id (push)
    bool push = false;
    ObjectId key;
    MemoryType destination = MemoryType::host;
    bool staged = false;  // CUDA destination through pinned slots
    ObjectBuffer buffer;
    std::string meta;  // from the message at offset 0
    bool allocated = false;
    std::uint64_t total = 0;
    std::uint64_t landed = 0;  // bytes in their final place
    std::uint64_t seen = 0;    // bytes of messages that arrived (refused pushes count too)
    int in_flight = 0;         // receives and device copies not finished
    bool refused = false;      // a push the inbox had no room for
    bool counted = false;      // a push holding an inbox place (pushes_accepted_in_flight_)
    std::size_t reserved = 0;  // inbox bytes held for it
    bool finished = false;
    bool waiting_for_slot = false;
    Clock::time_point last_message{};  // pushes: stalled ones are dropped after inbox_ttl
    std::exception_ptr error;
    struct Waiting {  // a rendezvous message waiting for a staging slot
      void* descriptor;
      std::uint64_t offset;
      std::size_t length;
    };
    std::deque<Waiting> waiting;
  };
  using TransferPtr = std::shared_ptr<Transfer>;

  struct Fetch {
    ObjectId key;
    FetchCallback done;
    Clock::time_point deadline;
    MemoryType destination = MemoryType::host;
    bool follow_source = false;
    std::shared_ptr<Endpoint> ep;
    TransferPtr transfer;
    std::uint32_t wait_ms = 0;  // wait-for-publish time the holder was asked for
    bool awaiting_push = false;  // no request sent: a push of the object is arriving
  };

  // Send state of one object (a reply or a push).
  struct Outgoing {
    std::shared_ptr<Endpoint> ep;
    ObjectBuffer buffer;
    DataHeader header;  // offset filled per message
    bool push = false;
    PushCallback done;
    bool staged = false;  // CUDA source through pinned slots
    std::uint64_t next_offset = 0;
    int in_flight = 0;
    std::exception_ptr error;
    bool finished = false;
    bool waiting_for_slot = false;
  };
  using OutgoingPtr = std::shared_ptr<Outgoing>;

  // user_data of UCX requests; freed in their callbacks.
  struct SendOp {
    Impl* plane;
    OutgoingPtr out;
    DataHeader header;
    void* slot = nullptr;  // staging slot to give back
    EncodedHeader wire{};  // what UCX sends (the header and its tag); lives until the send completes
  };
  struct RequestOp {
    Impl* plane;
    std::uint64_t request_id;
    RequestHeader header;
    std::string address;
    std::shared_ptr<Endpoint> ep;
    EncodedHeader wire{};
  };
  struct RecvOp {
    Impl* plane;
    TransferPtr transfer;
    std::uint64_t offset;
    std::size_t length;
    void* slot = nullptr;  // staged: the bytes land here first
  };

  struct Parked {
    std::uint64_t request_id;
    std::string address;  // the requester, or for a push request the consumer
    Clock::time_point deadline;
    bool push = false;    // a push request: never answered
  };
  struct InboxEntry {
    ObjectBuffer buffer;
    Clock::time_point expires;
  };

  // UCX callbacks
  static ucs_status_t on_request_am(void* arg, const void* header, size_t header_length, void* data,
                                    size_t length, const ucp_am_recv_param_t* param);
  static ucs_status_t on_data_am(void* arg, const void* header, size_t header_length, void* data,
                                 size_t length, const ucp_am_recv_param_t* param);
  static void on_ep_error(void* arg, ucp_ep_h ep, ucs_status_t status);
  static void on_send_done(void* request, ucs_status_t status, void* user_data);
  static void on_request_sent(void* request, ucs_status_t status, void* user_data);
  void send_request_am(ucp_ep_h ep, RequestOp* op, const ucp_request_param_t& param);
  static void on_recv_done(void* request, ucs_status_t status, size_t length, void* user_data);

  Clock::time_point tick();
  const MessageKey* key() const { return mac_ ? &*mac_ : nullptr; }
  // A message refused before it was acted on: counted, logged at most once a second.
  void refuse(const char* what, bool unauthenticated);
  void drop_stalled_pushes(Clock::time_point now);
  std::shared_ptr<Endpoint> endpoint(const std::string& address, std::exception_ptr& error);
  void evict_idle_endpoints();
  void close_endpoint(Endpoint& ep);
  void handle_failed_endpoints();
  void handle_request(RequestHeader header, std::string address, bool push);
  void send_request(std::uint64_t request_id);
  // Fetches that waited for a push of `key` in flight ask the holder after all.
  void unwait_push(ObjectId key);
  void reply_status(const std::shared_ptr<Endpoint>& ep, std::uint64_t request_id, ObjectId key, Status status);
  void start_send(const OutgoingPtr& out);
  void pump_staged(const OutgoingPtr& out);
  // Pinned staging slots, split between sends and receives so that a
  // process fetching from itself (or sending and receiving at once) cannot
  // have all of them held by sends waiting on its own receives.
  enum class SlotUse { send, receive };
  void* take_slot(SlotUse use);
  void give_slot(void* slot, SlotUse use);
  void wait_for_slot(SlotUse use, std::function<void()> resume);
  void send_message(const OutgoingPtr& out, std::uint64_t offset, std::size_t length, const void* data,
                    MemoryType memory, void* slot);
  void send_finished(const OutgoingPtr& out);

  ucs_status_t on_data(const DataHeader& header, std::string_view meta, void* data, std::size_t length, bool rndv);
  // Where a fetch's bytes land when its holder's copy is in `source`.
  MemoryType destination_for(MemoryType asked, bool follow_source, MemoryType source);
  void receive_rndv(const TransferPtr& t, void* descriptor, std::uint64_t offset, std::size_t length, void* slot);
  void start_waiting_receives(const TransferPtr& t);
  void landed(const TransferPtr& t, std::size_t length);
  void transfer_failed(const TransferPtr& t, std::exception_ptr error);
  void maybe_finish(const TransferPtr& t);
  bool inbox_has_room(std::size_t bytes) const;
  void release_inbox_place(Transfer& t);

  void complete_fetch(std::uint64_t request_id, ObjectBuffer buffer, std::exception_ptr error);
  void erase_fetch(std::unordered_map<std::uint64_t, Fetch>::iterator it);
  ObjectBuffer allocate(std::size_t size, MemoryType memory);
  detail::CudaSupport* cuda();

  DataPlaneOptions options_;
  std::optional<MessageKey> mac_;  // set: a secure plane (membership() at construction)
  ucp_worker_h ucp_worker_ = nullptr;
  Clock::time_point last_refusal_log_{};
  Clock::time_point next_stall_scan_{};

  mutable std::mutex served_mutex_;
  std::unordered_map<ObjectId, ObjectBuffer> served_;  // guarded
  std::atomic<std::size_t> parked_count_{0};  // changed under served_mutex_

  // Progress thread only from here on.
  bool closed_ = false;
  // Cached endpoints, most recently used first in endpoint_lru_.
  struct CachedEndpoint {
    std::shared_ptr<Endpoint> ep;
    std::list<std::string>::iterator lru;
  };
  std::unordered_map<std::string, CachedEndpoint> endpoints_;
  std::list<std::string> endpoint_lru_;
  std::vector<std::shared_ptr<Endpoint>> failed_endpoints_;
  std::vector<std::function<void()>> deferred_;

  std::uint64_t next_request_id_ = 1;
  std::uint64_t next_push_id_ = 0;
  std::unordered_map<std::uint64_t, Fetch> fetches_;
  std::set<std::pair<Clock::time_point, std::uint64_t>> fetch_deadlines_;
  std::unordered_multimap<ObjectId, std::uint64_t> fetches_by_key_;

  std::unordered_map<std::uint64_t, TransferPtr> pushes_in_;
  std::unordered_map<ObjectId, InboxEntry> inbox_;
  std::deque<std::pair<Clock::time_point, ObjectId>> inbox_order_;
  std::size_t inbox_bytes_ = 0;
  std::size_t inbox_reserved_ = 0;
  std::size_t pushes_accepted_in_flight_ = 0;

  // Objects a fetch received lately (FIFO, bounded, inbox_ttl): a push of
  // one that arrives afterwards (it crossed the fetch's reply) is refused
  // rather than left in the inbox unclaimed.
  std::unordered_map<ObjectId, Clock::time_point> recently_fetched_;
  std::deque<std::pair<Clock::time_point, ObjectId>> recently_fetched_order_;
  void note_fetched(ObjectId key);

  std::unordered_map<ObjectId, std::vector<Parked>> parked_;
  Clock::time_point next_parked_deadline_ = Clock::time_point::max();

  std::size_t outstanding_ = 0;  // UCX requests and CUDA copies whose callbacks have not run
  Stats stats_;

  bool cuda_tried_ = false;
  std::unique_ptr<detail::CudaSupport> cuda_;
  std::shared_ptr<HostPool> host_pool_;
  int slots_used_[2] = {0, 0};  // by SlotUse
  std::deque<std::function<void()>> slot_waiters_[2];
};

// --- setup and teardown ------------------------------------------------------

DataPlane::Impl::Impl(std::shared_ptr<UcxWorker> worker, DataPlaneOptions options)
    : worker_(std::move(worker)), address_(worker_->address()), options_(std::move(options)) {
  std::random_device random;
  next_push_id_ = (static_cast<std::uint64_t>(random()) << 32 ^ random()) & ~std::uint64_t{0xffff};
  if (options_.staging_chunk_bytes == 0) options_.staging_chunk_bytes = std::size_t{4} << 20;
  options_.staging_slots = std::max(options_.staging_slots, 2);
  host_pool_ = std::make_shared<HostPool>(options_.host_cache_bytes);
  options_.max_parked_requests = std::max<std::size_t>(options_.max_parked_requests, 1);
  options_.max_endpoints = std::max<std::size_t>(options_.max_endpoints, 1);
  options_.max_incoming_pushes = std::max<std::size_t>(options_.max_incoming_pushes, 1);
  if (auto secret = membership()) mac_.emplace(secret->data_mac_key());
}

void DataPlane::Impl::refuse(const char* what, bool unauthenticated) {
  if (unauthenticated) ++stats_.unauthenticated_refused;
  else ++stats_.malformed_refused;
  const auto now = Clock::now();
  if (now - last_refusal_log_ < std::chrono::seconds(1)) return;
  last_refusal_log_ = now;
  log()->warn("data plane: refused a {} ({} unauthenticated, {} malformed so far)", what,
              stats_.unauthenticated_refused, stats_.malformed_refused);
}

void DataPlane::Impl::start() {
  ucp_worker_ = worker_->handle();
  for (unsigned id : {kRequestAm, kDataAm}) {
    ucp_am_handler_param_t handler{};
    handler.field_mask = UCP_AM_HANDLER_PARAM_FIELD_ID | UCP_AM_HANDLER_PARAM_FIELD_FLAGS |
                         UCP_AM_HANDLER_PARAM_FIELD_CB | UCP_AM_HANDLER_PARAM_FIELD_ARG;
    handler.id = id;
    handler.flags = UCP_AM_FLAG_WHOLE_MSG;
    handler.cb = id == kRequestAm ? &Impl::on_request_am : &Impl::on_data_am;
    handler.arg = this;
    if (ucs_status_t status = ucp_worker_set_am_recv_handler(ucp_worker_, &handler); status != UCS_OK)
      throw_from_ucs(status, "ucp_worker_set_am_recv_handler");
  }
  worker_->set_tick([this] { return tick(); });
}

void DataPlane::Impl::close() {
  closed_ = true;
  // No handler may reference this object once it is gone.
  for (unsigned id : {kRequestAm, kDataAm}) {
    ucp_am_handler_param_t handler{};
    handler.field_mask = UCP_AM_HANDLER_PARAM_FIELD_ID | UCP_AM_HANDLER_PARAM_FIELD_CB;
    handler.id = id;
    handler.cb = nullptr;
    ucp_worker_set_am_recv_handler(ucp_worker_, &handler);
  }
  auto cancelled = [](const char* what) { return make_error(Errc::cancelled, what); };
  while (!fetches_.empty()) {
    complete_fetch(fetches_.begin()->first, {}, cancelled("the data plane shut down before the fetch completed"));
  }
  parked_.clear();
  parked_count_ = 0;
  for (auto& [address, cached] : endpoints_) close_endpoint(*cached.ep);
  endpoints_.clear();
  endpoint_lru_.clear();
  for (auto& ep : failed_endpoints_) close_endpoint(*ep);
  failed_endpoints_.clear();
  for (auto& [id, transfer] : pushes_in_) {
    for (auto& waiting : transfer->waiting) ucp_am_data_release(ucp_worker_, waiting.descriptor);
    transfer->waiting.clear();
  }
  pushes_in_.clear();
  for (auto& waiters : slot_waiters_) waiters.clear();
  inbox_.clear();
  inbox_order_.clear();
  inbox_bytes_ = 0;
}

std::size_t DataPlane::Impl::drain_outstanding() {
  deferred_.clear();  // nothing new starts after close()
  while (ucp_worker_progress(ucp_worker_) != 0) {
  }
  if (outstanding_ == 0) worker_->set_tick(nullptr);
  return outstanding_;
}

// --- endpoints -----------------------------------------------------------------

std::shared_ptr<Endpoint> DataPlane::Impl::endpoint(const std::string& address, std::exception_ptr& error) {
  auto it = endpoints_.find(address);
  if (it != endpoints_.end() && !it->second.ep->failed) {
    endpoint_lru_.splice(endpoint_lru_.begin(), endpoint_lru_, it->second.lru);
    return it->second.ep;
  }
  // UCX trusts a worker address's contents; its length at least is checked
  // here (a request's was checked by parse_request, after its tag).
  if (address.size() < kMinAddressBytes || address.size() > kMaxAddressBytes) {
    error = make_error(Errc::invalid_argument, "a UCX worker address of " + std::to_string(address.size()) +
                                                   " bytes (expected " + std::to_string(kMinAddressBytes) + " to " +
                                                   std::to_string(kMaxAddressBytes) + ")");
    return nullptr;
  }
  auto ep = std::make_shared<Endpoint>(worker_, address);
  ep->plane = this;
  ucp_ep_params_t params{};
  params.field_mask = UCP_EP_PARAM_FIELD_REMOTE_ADDRESS | UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE |
                      UCP_EP_PARAM_FIELD_ERR_HANDLER;
  params.address = reinterpret_cast<const ucp_address_t*>(address.data());
  // A dead peer fails this endpoint's operations (on_ep_error) instead of
  // leaving them pending until their deadlines.
  params.err_mode = worker_->context()->options().detect_peer_failure ? UCP_ERR_HANDLING_MODE_PEER
                                                                      : UCP_ERR_HANDLING_MODE_NONE;
  params.err_handler.cb = &Impl::on_ep_error;
  params.err_handler.arg = ep.get();
  if (ucs_status_t status = ucp_ep_create(ucp_worker_, &params, &ep->ep); status != UCS_OK) {
    error = make_error_from_ucs(status, "connecting to a peer worker");
    return nullptr;
  }
  if (it != endpoints_.end()) {  // a failed one: replaced
    endpoint_lru_.erase(it->second.lru);
    endpoints_.erase(it);
  }
  endpoint_lru_.push_front(address);
  endpoints_[address] = CachedEndpoint{ep, endpoint_lru_.begin()};
  if (endpoints_.size() > options_.max_endpoints) evict_idle_endpoints();
  return ep;
}

// Closes the least recently used endpoints that no operation holds until the
// cache is back within its bound (in-use ones stay: they are few, since
// fetches, parked requests and pushes are bounded).
void DataPlane::Impl::evict_idle_endpoints() {
  for (auto lru = endpoint_lru_.end(); lru != endpoint_lru_.begin() && endpoints_.size() > options_.max_endpoints;) {
    --lru;
    auto it = endpoints_.find(*lru);
    if (it == endpoints_.end() || it->second.ep.use_count() > 1) continue;
    close_endpoint(*it->second.ep);
    endpoints_.erase(it);
    lru = endpoint_lru_.erase(lru);
  }
}

void DataPlane::Impl::close_endpoint(Endpoint& ep) {
  if (ep.ep == nullptr) return;
  ucp_request_param_t param{};
  param.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS;
  param.flags = UCP_EP_CLOSE_FLAG_FORCE;  // pending operations complete with an error now
  ucs_status_ptr_t request = ucp_ep_close_nbx(ep.ep, &param);
  if (request != nullptr && !UCS_PTR_IS_ERR(request)) ucp_request_free(request);  // completes on its own
  ep.ep = nullptr;
}

void DataPlane::Impl::on_ep_error(void* arg, ucp_ep_h, ucs_status_t status) {
  guarded("on_ep_error", [&] {
    auto* ep = static_cast<Endpoint*>(arg);
    if (ep->failed) return;
    ep->failed = true;
    ep->failure = status;
    auto* self = ep->plane;
    auto it = self->endpoints_.find(ep->address);
    if (it != self->endpoints_.end() && it->second.ep.get() == ep) {
      self->failed_endpoints_.push_back(it->second.ep);
      self->endpoint_lru_.erase(it->second.lru);
      self->endpoints_.erase(it);
    }
  });
}

void DataPlane::Impl::handle_failed_endpoints() {
  auto failed = std::move(failed_endpoints_);
  failed_endpoints_.clear();
  for (auto& ep : failed) {
    std::vector<std::uint64_t> doomed;
    for (auto& [request_id, fetch] : fetches_)
      if (fetch.ep == ep) doomed.push_back(request_id);
    for (auto request_id : doomed) {
      auto it = fetches_.find(request_id);
      complete_fetch(request_id, {},
                     make_error_from_ucs(ep->failure, "fetching object " + hex(it->second.key) + ": the holder"));
    }
    close_endpoint(*ep);
  }
}

// --- the tick: deferred work and deadlines --------------------------------------

Clock::time_point DataPlane::Impl::tick() {
  if (!deferred_.empty()) {
    auto work = std::move(deferred_);
    deferred_.clear();
    for (auto& task : work) task();
  }
  if (!failed_endpoints_.empty()) handle_failed_endpoints();
  const auto now = Clock::now();
  auto next = Clock::time_point::max();

  while (!fetch_deadlines_.empty() && fetch_deadlines_.begin()->first <= now) {
    const auto request_id = fetch_deadlines_.begin()->second;
    auto it = fetches_.find(request_id);
    if (it == fetches_.end()) {
      fetch_deadlines_.erase(fetch_deadlines_.begin());
      continue;
    }
    std::string what = it == fetches_.end() ? std::string() : "fetching object " + hex(it->second.key);
    complete_fetch(request_id, {}, make_error(Errc::timeout, what + ": no answer before the deadline"));
  }
  if (!fetch_deadlines_.empty()) next = std::min(next, fetch_deadlines_.begin()->first);

  if (next_parked_deadline_ <= now) {
    next_parked_deadline_ = Clock::time_point::max();
    for (auto it = parked_.begin(); it != parked_.end();) {
      auto& list = it->second;
      for (auto p = list.begin(); p != list.end();) {
        if (p->deadline <= now) {
          std::exception_ptr error;
          if (p->push) {
          } else if (auto ep = endpoint(p->address, error)) {
            reply_status(ep, p->request_id, it->first, kNotFound);
          }
          p = list.erase(p);
          --parked_count_;
        } else {
          next_parked_deadline_ = std::min(next_parked_deadline_, p->deadline);
          ++p;
        }
      }
      it = list.empty() ? parked_.erase(it) : std::next(it);
    }
  }
  next = std::min(next, next_parked_deadline_);

  while (!inbox_order_.empty() && inbox_order_.front().first <= now) {
    const auto [expires, key] = inbox_order_.front();
    inbox_order_.pop_front();
    auto it = inbox_.find(key);
    if (it != inbox_.end() && it->second.expires == expires) {
      inbox_bytes_ -= it->second.buffer.size;
      inbox_.erase(it);
    }
  }
  if (!inbox_order_.empty()) next = std::min(next, inbox_order_.front().first);
  if (!pushes_in_.empty()) {
    if (now >= next_stall_scan_) {
      drop_stalled_pushes(now);
      next_stall_scan_ = now + std::chrono::seconds(1);
    }
    if (!pushes_in_.empty()) next = std::min(next, next_stall_scan_);
  }
  // Rendezvous and fragmented transfers move only while both sides
  // progress: keep polling while any is in flight (see UcxWorker::Tick).
  if (outstanding_ > 0) return Clock::time_point::min();
  return next;
}

// Pushes whose next message has not come for inbox_ttl (a pusher that died
// or lied about the size) give back their inbox place.
void DataPlane::Impl::drop_stalled_pushes(Clock::time_point now) {
  std::vector<TransferPtr> stalled;
  for (auto& [id, t] : pushes_in_)
    if (t->in_flight == 0 && now - t->last_message > options_.inbox_ttl) stalled.push_back(t);
  for (auto& t : stalled) {
    if (t->refused) pushes_in_.erase(t->id);
    else transfer_failed(t, make_error(Errc::timeout, "a push stalled"));
  }
}

// --- holder side -------------------------------------------------------------------

void DataPlane::Impl::publish(ObjectId id, ObjectBuffer buffer) {
  if (buffer.meta.size() > kMaxMetaBytes)
    throw_error(Errc::invalid_argument, "object meta of " + std::to_string(buffer.meta.size()) + " bytes (at most " +
                                            std::to_string(kMaxMetaBytes) + ")");
  bool wake;
  {
    std::lock_guard lock(served_mutex_);
    served_[id] = std::move(buffer);
    wake = parked_count_.load() > 0;
  }
  if (wake) worker_->post([this, id] { wake_parked(id); });
}

bool DataPlane::Impl::unpublish(ObjectId id) {
  std::lock_guard lock(served_mutex_);
  return served_.erase(id) > 0;
}

std::size_t DataPlane::Impl::published_count() const {
  std::lock_guard lock(served_mutex_);
  return served_.size();
}

ucs_status_t DataPlane::Impl::on_request_am(void* arg, const void* header, size_t header_length, void* data,
                                            size_t length, const ucp_am_recv_param_t* param) {
  auto* self = static_cast<Impl*>(arg);
  // No exception may cross UCX's C frames.
  try {
    if (self->closed_) return UCS_OK;
    if ((param->recv_attr & UCP_AM_RECV_ATTR_FLAG_RNDV) != 0) {
      // A request is small; a rendezvous one is not ours (UCX releases it).
      self->refuse("request sent by rendezvous", false);
      return UCS_OK;
    }
    const auto parsed = parse_request(std::span(static_cast<const std::byte*>(header), header_length),
                                      std::span(static_cast<const std::byte*>(data), length), self->key());
    if (parsed.error != nullptr) {
      self->refuse(parsed.error, parsed.unauthenticated);
      return UCS_OK;
    }
    // Connecting to the requester may need UCX calls not allowed inside a
    // callback: answer in the tick right after this progress call.
    self->deferred_.push_back([self, request = parsed.header, address = std::string(parsed.requester),
                               push = parsed.push] { self->handle_request(request, address, push); });
  } catch (const std::exception& e) {
    log()->warn("data plane: a request failed: {}", e.what());
  }
  return UCS_OK;
}

void DataPlane::Impl::handle_request(RequestHeader request, std::string address, bool push) {
  std::exception_ptr error;
  auto ep = endpoint(address, error);
  if (!ep) return;  // cannot answer; the requester times out or sees our failure
  const ObjectId key{request.id_hi, request.id_lo};
  ObjectBuffer buffer;
  bool found = false;
  bool busy = false;
  {
    std::lock_guard lock(served_mutex_);
    auto it = served_.find(key);
    if (it != served_.end()) {
      buffer = it->second;
      found = true;
    } else if (request.wait_ms > 0 && parked_count_.load() >= options_.max_parked_requests) {
      busy = true;  // bounded: answered at once instead of parked
    } else if (request.wait_ms > 0) {
      // Counted under the lock, so a publish() racing with this sees it.
      ++parked_count_;
      const auto wait = std::min<std::chrono::milliseconds>(std::chrono::milliseconds(request.wait_ms),
                                                             options_.max_park_wait);
      const auto deadline = Clock::now() + wait;
      parked_[key].push_back(Parked{request.request_id, address, deadline, push});
      next_parked_deadline_ = std::min(next_parked_deadline_, deadline);
      return;
    }
  }
  if (busy) {
    ++stats_.requests_busy;
    if (push) return;  // the consumer pulls instead
    return reply_status(ep, request.request_id, key, kBusy);
  }
  if (push) {
    // Pushed to the consumer the moment it exists (now, or when published);
    // nothing answers a push request: a consumer whose push does not come
    // fetches as usual.
    if (!found) return;
    ++stats_.pushes_requested;
    // Its failure (refused by a consumer that has the object already, or
    // whose inbox is full) needs no action here: the consumer pulls.
    return start_push(address, key, std::move(buffer), [](std::exception_ptr) {});
  }
  if (!found) return reply_status(ep, request.request_id, key, kNotFound);
  if (buffer.memory == MemoryType::cuda && !worker_->context()->cuda_native() && cuda() == nullptr)
    return reply_status(ep, request.request_id, key, kUnsupported);
  auto out = std::make_shared<Outgoing>();
  out->ep = ep;
  out->buffer = std::move(buffer);
  out->header.kind = kReply;
  out->header.transfer_id = request.request_id;
  out->header.id_hi = key.hi();
  out->header.id_lo = key.lo();
  ++stats_.fetches_served;
  start_send(out);
}

void DataPlane::Impl::wake_parked(ObjectId id) {
  auto it = parked_.find(id);
  if (it == parked_.end()) return;
  auto list = std::move(it->second);
  parked_.erase(it);
  parked_count_ -= list.size();
  for (auto& p : list) {
    // A consumer that asked for the object itself gets the reply; the push
    // to it would carry the same bytes a second time.
    if (p.push && std::any_of(list.begin(), list.end(), [&](const Parked& o) { return !o.push && o.address == p.address; }))
      continue;
    RequestHeader request;
    request.request_id = p.request_id;
    request.id_hi = id.hi();
    request.id_lo = id.lo();
    request.wait_ms = 0;  // published now; if unpublished again meanwhile: not_found
    handle_request(request, p.address, p.push);
  }
}

void DataPlane::Impl::reply_status(const std::shared_ptr<Endpoint>& ep, std::uint64_t request_id, ObjectId key,
                                   Status status) {
  auto out = std::make_shared<Outgoing>();
  out->ep = ep;
  out->header.kind = kReply;
  out->header.status = status;
  out->header.transfer_id = request_id;
  out->header.id_hi = key.hi();
  out->header.id_lo = key.lo();
  start_send(out);
}

// --- sending -------------------------------------------------------------------------

void DataPlane::Impl::start_send(const OutgoingPtr& out) {
  out->header.total = out->buffer.size;
  out->header.memory = static_cast<std::uint8_t>(out->buffer.memory);
  const bool device = out->buffer.memory == MemoryType::cuda && out->buffer.size > 0;
  if (device && !worker_->context()->cuda_native()) {
    if (cuda() == nullptr) {
      out->error = make_error(Errc::unsupported, "CUDA memory, but this build or process has no CUDA");
      return send_finished(out);
    }
    out->staged = true;
    return pump_staged(out);
  }
  out->next_offset = out->buffer.size;
  send_message(out, 0, out->buffer.size, out->buffer.data,
               out->buffer.size == 0 ? MemoryType::host : out->buffer.memory, nullptr);
}

// Staging a CUDA source: each free pinned slot takes the next chunk
// (device -> host copy on the stream); a chunk is sent as soon as its copy
// finished, and its slot takes the next chunk once that send completed.
void DataPlane::Impl::pump_staged(const OutgoingPtr& out) {
  auto* staging = cuda();
  if (closed_ && !out->error) out->error = make_error(Errc::cancelled, "the data plane shut down");
  while (!out->error && out->next_offset < out->buffer.size) {
    void* slot = take_slot(SlotUse::send);
    if (slot == nullptr) {
      if (!out->waiting_for_slot) {
        out->waiting_for_slot = true;
        wait_for_slot(SlotUse::send, [this, out] {
          out->waiting_for_slot = false;
          pump_staged(out);
        });
      }
      return;
    }
    const std::uint64_t offset = out->next_offset;
    const std::size_t length =
        static_cast<std::size_t>(std::min<std::uint64_t>(staging->chunk_bytes(), out->buffer.size - offset));
    out->next_offset += length;
    ++out->in_flight;
    ++outstanding_;
    staging->device_to_host(slot, static_cast<const char*>(out->buffer.data) + offset, length,
                            [this, out, slot, offset, length](std::exception_ptr error) {
                              --outstanding_;
                              --out->in_flight;
                              if (error || closed_) {
                                give_slot(slot, SlotUse::send);
                                if (!out->error) out->error = error ? error : make_error(Errc::cancelled, "shut down");
                                if (out->in_flight == 0) send_finished(out);
                                return;
                              }
                              send_message(out, offset, length, slot, MemoryType::host, slot);
                            });
  }
}

void DataPlane::Impl::send_message(const OutgoingPtr& out, std::uint64_t offset, std::size_t length,
                                   const void* data, MemoryType memory, void* slot) {
  if (out->ep->ep == nullptr || out->ep->failed) {
    if (slot != nullptr) give_slot(slot, SlotUse::send);
    if (!out->error)
      out->error = out->ep->failed ? make_error_from_ucs(out->ep->failure, "sending an object")
                                   : make_error(Errc::cancelled, "the endpoint was closed");
    if (out->in_flight == 0) send_finished(out);
    return;
  }
  auto* op = new SendOp{this, out, out->header, slot};
  op->header.offset = offset;
  op->wire = encode_data(op->header, key(), offset == 0 ? std::string_view(out->buffer.meta) : std::string_view());
  ucp_request_param_t param{};
  param.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA | UCP_OP_ATTR_FIELD_FLAGS |
                       UCP_OP_ATTR_FIELD_MEMORY_TYPE;
  param.cb.send = &Impl::on_send_done;
  param.user_data = op;
  param.flags = length >= options_.rndv_threshold ? UCP_AM_SEND_FLAG_RNDV : 0;
  param.memory_type = ucs_memory(memory);
  ++out->in_flight;
  ucs_status_ptr_t request =
      ucp_am_send_nbx(out->ep->ep, kDataAm, op->wire.bytes.data(), op->wire.size, data, length, &param);
  if (request == nullptr) {
    on_send_done(nullptr, UCS_OK, op);
  } else if (UCS_PTR_IS_ERR(request)) {
    on_send_done(nullptr, UCS_PTR_STATUS(request), op);
  } else {
    ++outstanding_;
  }
}

void DataPlane::Impl::on_send_done(void* request, ucs_status_t status, void* user_data) {
  guarded("on_send_done", [&] {
    std::unique_ptr<SendOp> op(static_cast<SendOp*>(user_data));
    Impl* self = op->plane;
    if (request != nullptr) {
      --self->outstanding_;
      ucp_request_free(request);
    }
    auto& out = op->out;
    --out->in_flight;
    if (status != UCS_OK && !out->error)
      out->error = make_error_from_ucs(status, (out->push ? "pushing object " : "sending object ") +
                                                   hex(ObjectId{out->header.id_hi, out->header.id_lo}));
    if (op->slot != nullptr) self->give_slot(op->slot, SlotUse::send);  // resumes a staged send
    if (out->in_flight == 0 && (out->error || out->next_offset >= out->buffer.size)) self->send_finished(out);
  });
}

void DataPlane::Impl::send_finished(const OutgoingPtr& out) {
  if (out->finished) return;
  out->finished = true;
  if (out->done) guarded("a push callback", [&] { out->done(out->error); });
  out->buffer = {};  // the sender's reference goes as soon as UCX is done with it
}

// --- consumer side: fetch ----------------------------------------------------------

void DataPlane::Impl::start_fetch(std::string peer, ObjectId id, FetchOptions options, FetchCallback done) {
  if (closed_) return done({}, make_error(Errc::cancelled, "the data plane is shut down"));
  if (options.destination == MemoryType::cuda && !options_.allocator && cuda() == nullptr)
    return done({}, make_error(Errc::unsupported, "fetch into CUDA memory, but this build or process has no CUDA"));
  if (auto it = inbox_.find(id); it != inbox_.end()) {
    ObjectBuffer buffer = std::move(it->second.buffer);
    inbox_bytes_ -= buffer.size;
    inbox_.erase(it);  // its inbox_order_ entry expires harmlessly
    if (buffer.memory == destination_for(options.destination, options.follow_source, buffer.memory) ||
        buffer.size == 0) {
      ++stats_.fetches_from_inbox;
      return done(std::move(buffer), nullptr);
    }
    // Pushed in the other memory type: fetch it from the holder instead.
  }
  std::exception_ptr error;
  auto ep = endpoint(peer, error);
  if (!ep) return done({}, error);
  const std::uint64_t request_id = next_request_id_++;
  const auto timeout = std::max(options.timeout, std::chrono::milliseconds(0));
  Fetch fetch;
  fetch.key = id;
  fetch.done = std::move(done);
  fetch.deadline = Clock::now() + timeout;
  fetch.destination = options.destination;
  fetch.follow_source = options.follow_source;
  fetch.ep = ep;
  fetch.wait_ms = options.wait_for_publish
                      ? static_cast<std::uint32_t>(std::min<std::int64_t>(timeout.count(), 0xffffffff))
                      : 0;
  // A push of this object already arriving (one the holder was asked for)
  // completes the fetch: asking the holder too would send the bytes twice.
  for (const auto& [transfer_id, t] : pushes_in_) {
    if (t->key == id && !t->refused && !t->finished && !t->error &&
        (destination_for(options.destination, options.follow_source, t->destination) == t->destination || t->total == 0)) {
      fetch.awaiting_push = true;
      break;
    }
  }
  const bool awaiting_push = fetch.awaiting_push;
  fetch_deadlines_.emplace(fetch.deadline, request_id);
  fetches_by_key_.emplace(id, request_id);
  fetches_.emplace(request_id, std::move(fetch));
  if (!awaiting_push) send_request(request_id);
}

void DataPlane::Impl::send_request(std::uint64_t request_id) {
  const Fetch& fetch = fetches_.at(request_id);
  const ObjectId id = fetch.key;
  auto* op = new RequestOp{this, request_id, {}, address_, fetch.ep};
  op->header.request_id = request_id;
  op->header.id_hi = id.hi();
  op->header.id_lo = id.lo();
  op->header.wait_ms = fetch.wait_ms;
  op->wire = encode_request(op->header, op->address, key());
  ucp_request_param_t param{};
  param.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA | UCP_OP_ATTR_FIELD_MEMORY_TYPE;
  param.cb.send = &Impl::on_request_sent;
  param.user_data = op;
  param.memory_type = UCS_MEMORY_TYPE_HOST;
  if (fetch.ep->ep == nullptr || fetch.ep->failed) {
    const auto status = fetch.ep->failed ? fetch.ep->failure : UCS_ERR_CANCELED;
    return on_request_sent(nullptr, status, op);
  }
  send_request_am(fetch.ep->ep, op, param);
}

void DataPlane::Impl::on_request_sent(void* request, ucs_status_t status, void* user_data) {
  guarded("on_request_sent", [&] {
    std::unique_ptr<RequestOp> op(static_cast<RequestOp*>(user_data));
    Impl* self = op->plane;
    if (request != nullptr) {
      --self->outstanding_;
      ucp_request_free(request);
    }
    if (status != UCS_OK) {
      const ObjectId key{op->header.id_hi, op->header.id_lo};
      self->complete_fetch(op->request_id, {}, make_error_from_ucs(status, "asking the holder for object " + hex(key)));
    }
  });
}

void DataPlane::Impl::erase_fetch(std::unordered_map<std::uint64_t, Fetch>::iterator it) {
  fetch_deadlines_.erase({it->second.deadline, it->first});
  auto [begin, end] = fetches_by_key_.equal_range(it->second.key);
  for (auto k = begin; k != end; ++k) {
    if (k->second == it->first) {
      fetches_by_key_.erase(k);
      break;
    }
  }
  fetches_.erase(it);
}

void DataPlane::Impl::note_fetched(ObjectId key) {
  const auto now = Clock::now();
  while (!recently_fetched_order_.empty() &&
         (recently_fetched_order_.front().first + options_.inbox_ttl <= now || recently_fetched_order_.size() >= 4096)) {
    auto [when, old] = recently_fetched_order_.front();
    recently_fetched_order_.pop_front();
    if (auto f = recently_fetched_.find(old); f != recently_fetched_.end() && f->second == when) recently_fetched_.erase(f);
  }
  recently_fetched_[key] = now;
  recently_fetched_order_.emplace_back(now, key);
}

void DataPlane::Impl::unwait_push(ObjectId key) {
  std::vector<std::uint64_t> waiting;
  auto [begin, end] = fetches_by_key_.equal_range(key);
  for (auto it = begin; it != end; ++it) {
    auto fetch = fetches_.find(it->second);
    if (fetch != fetches_.end() && fetch->second.awaiting_push) {
      fetch->second.awaiting_push = false;
      waiting.push_back(it->second);
    }
  }
  for (auto request_id : waiting) send_request(request_id);
}

void DataPlane::Impl::complete_fetch(std::uint64_t request_id, ObjectBuffer buffer, std::exception_ptr error) {
  auto it = fetches_.find(request_id);
  if (it == fetches_.end()) return;
  if (!error) note_fetched(it->second.key);
  auto done = std::move(it->second.done);
  auto transfer = std::move(it->second.transfer);
  erase_fetch(it);
  if (transfer && error) {
    // Rendezvous messages still waiting for a staging slot are dropped.
    for (auto& waiting : transfer->waiting) ucp_am_data_release(ucp_worker_, waiting.descriptor);
    transfer->waiting.clear();
    transfer->finished = true;
  }
  guarded("a fetch callback", [&] { done(std::move(buffer), std::move(error)); });
}

// --- consumer side: receiving ----------------------------------------------------

ucs_status_t DataPlane::Impl::on_data_am(void* arg, const void* header, size_t header_length, void* data,
                                         size_t length, const ucp_am_recv_param_t* param) {
  auto* self = static_cast<Impl*>(arg);
  const bool rndv = (param->recv_attr & UCP_AM_RECV_ATTR_FLAG_RNDV) != 0;
  // No exception may cross UCX's C frames. A refused rendezvous message is
  // released by UCX when we return anything but UCS_INPROGRESS.
  try {
    if (self->closed_) return UCS_OK;
    // For rendezvous, `length` is the announced size (the bytes are not here yet).
    const auto parsed = parse_data(std::span(static_cast<const std::byte*>(header), header_length), length, self->key());
    if (parsed.error != nullptr) {
      self->refuse(parsed.error, parsed.unauthenticated);
      return rndv ? UCS_ERR_REJECTED : UCS_OK;
    }
    return self->on_data(parsed.header, parsed.meta, data, length, rndv);
  } catch (const std::exception& e) {
    log()->warn("data plane: receiving a message failed: {}", e.what());
    return rndv ? UCS_ERR_REJECTED : UCS_OK;
  }
}

MemoryType DataPlane::Impl::destination_for(MemoryType asked, bool follow_source, MemoryType source) {
  if (!follow_source) return asked;
  return source == MemoryType::cuda && (options_.allocator || cuda() != nullptr) ? MemoryType::cuda : asked;
}

ucs_status_t DataPlane::Impl::on_data(const DataHeader& header, std::string_view meta, void* data, std::size_t length,
                                      bool rndv) {
  const ObjectId key{header.id_hi, header.id_lo};
  if (closed_) return UCS_OK;
  TransferPtr t;
  if (header.kind == kReply) {
    auto it = fetches_.find(header.transfer_id);
    if (it == fetches_.end()) return UCS_OK;  // timed out, or a push answered it: drop
    if (header.status != kOk) {
      if (header.status == kNotFound && it->second.wait_ms > 0) {
        // The holder parked the request and its wait ran out: for the
        // consumer that is its own deadline passing (the two timers race).
        complete_fetch(header.transfer_id, {},
                       make_error(Errc::timeout, "fetching object " + hex(key) + ": not published within " +
                                                              std::to_string(it->second.wait_ms) + " ms"));
        return UCS_OK;
      }
      const auto code = header.status == kNotFound  ? Errc::not_found
                        : header.status == kBusy    ? Errc::transport
                                                    : Errc::unsupported;
      const char* why = header.status == kNotFound ? ": the holder has no such object"
                        : header.status == kBusy
                            ? ": the holder has too many requests waiting for objects (busy); try again"
                            : ": the holder cannot read its memory (no CUDA there)";
      complete_fetch(header.transfer_id, {}, make_error(code, "fetching object " + hex(key) + why));
      return UCS_OK;
    }
    if (!it->second.transfer) {
      // A push of this object is already arriving (the holder was asked to
      // push it here): the reply is dropped before its bytes move (a
      // rendezvous reply's bytes never leave the holder), and the fetch
      // waits for the push (asking again if the push fails). One message
      // replies only: a staged reply's later chunks would find no transfer.
      if (header.offset == 0 && length == header.total) {
        for (const auto& [transfer_id, push] : pushes_in_) {
          if (push->key == key && !push->refused && !push->finished && !push->error &&
              push->destination == destination_for(it->second.destination, it->second.follow_source, push->destination)) {
            it->second.awaiting_push = true;
            return UCS_OK;
          }
        }
      }
      t = std::make_shared<Transfer>();
      t->id = header.transfer_id;
      t->key = key;
      t->destination = destination_for(it->second.destination, it->second.follow_source,
                                       static_cast<MemoryType>(header.memory));
      it->second.transfer = t;
    } else {
      t = it->second.transfer;
    }
  } else if (header.kind == kPush) {
    auto it = pushes_in_.find(header.transfer_id);
    if (it != pushes_in_.end()) {
      t = it->second;
    } else if (pushes_in_.size() >= options_.max_incoming_pushes) {
      ++stats_.pushes_refused;  // untracked: its later messages are dropped as unknown
      return rndv ? UCS_ERR_EXCEEDS_LIMIT : UCS_OK;
    } else {
      t = std::make_shared<Transfer>();
      t->id = header.transfer_id;
      t->push = true;
      t->key = key;
      t->total = header.total;
      const auto source = static_cast<MemoryType>(header.memory);
      t->destination = source == MemoryType::cuda && (options_.allocator || cuda() != nullptr) ? MemoryType::cuda
                                                                                               : MemoryType::host;
      bool reply_arriving = false;  // a fetch of it whose reply's bytes are already coming
      auto [begin, end] = fetches_by_key_.equal_range(key);
      for (auto f = begin; f != end; ++f) {
        auto fetch = fetches_.find(f->second);
        reply_arriving = reply_arriving || (fetch != fetches_.end() && fetch->second.transfer != nullptr);
      }
      if (reply_arriving) {
        t->refused = true;  // the same bytes are on their way as the reply
        ++stats_.pushes_refused;
      } else if (fetches_by_key_.count(key) == 0) {
        if (recently_fetched_.count(key) != 0) {
          t->refused = true;  // it crossed the reply that brought the object
          ++stats_.pushes_refused;
        } else if (!inbox_has_room(header.total)) {
          t->refused = true;
          ++stats_.pushes_refused;
        } else {
          t->counted = true;
          t->reserved = header.total;
          inbox_reserved_ += t->reserved;
          ++pushes_accepted_in_flight_;
        }
      }
      pushes_in_.emplace(t->id, t);
    }
    t->last_message = Clock::now();
    if (t->refused) {
      t->seen += length;
      if (t->seen >= t->total) pushes_in_.erase(t->id);
      // A rendezvous push learns of the refusal: its send completes with this.
      return rndv ? UCS_ERR_EXCEEDS_LIMIT : UCS_OK;
    }
  } else {
    return UCS_OK;
  }

  if (t->finished || t->error) return UCS_OK;
  if (header.total != (t->allocated ? t->total : header.total) || header.offset > header.total ||
      length > header.total - header.offset) {
    transfer_failed(t, make_error(Errc::protocol, "object " + hex(key) + ": a message outside the object"));
    return UCS_OK;
  }
  t->seen += length;
  if (!meta.empty()) t->meta.assign(meta);
  if (!t->allocated) {
    t->total = header.total;
    try {
      t->buffer = allocate(static_cast<std::size_t>(t->total), t->destination);
    } catch (...) {
      transfer_failed(t, std::current_exception());
      return rndv ? UCS_ERR_NO_MEMORY : UCS_OK;
    }
    t->allocated = true;
    t->staged = t->destination == MemoryType::cuda && !worker_->context()->cuda_native();
    if (t->destination == MemoryType::cuda && cuda() == nullptr) {
      // A user allocator gave device memory, but nothing here can copy into it.
      transfer_failed(t, make_error(Errc::unsupported, "no CUDA in this build or process to receive into device memory"));
      return rndv ? UCS_ERR_UNSUPPORTED : UCS_OK;
    }
  }
  if (rndv) {
    if (t->staged) {
      t->waiting.push_back({data, header.offset, length});
      start_waiting_receives(t);
    } else {
      receive_rndv(t, data, header.offset, length, nullptr);
    }
    return UCS_INPROGRESS;  // the descriptor is ours (received now or when a slot frees)
  }
  // Eager: the bytes are in UCX's buffer until we return; one copy.
  if (length > 0) {
    char* destination = static_cast<char*>(t->buffer.data) + header.offset;
    if (t->destination == MemoryType::cuda) {
      try {
        cuda()->copy_to_device(destination, data, length);  // not null: checked at allocation
      } catch (...) {
        transfer_failed(t, std::current_exception());
        return UCS_OK;
      }
    } else {
      std::memcpy(destination, data, length);
    }
  }
  landed(t, length);
  return UCS_OK;
}

void DataPlane::Impl::receive_rndv(const TransferPtr& t, void* descriptor, std::uint64_t offset, std::size_t length,
                                   void* slot) {
  auto* op = new RecvOp{this, t, offset, length, slot};
  void* destination = static_cast<char*>(t->buffer.data) + offset;
  MemoryType memory = t->destination;
  if (slot != nullptr) {  // staged: into pinned host memory first
    destination = slot;
    memory = MemoryType::host;
  }
  ucp_request_param_t param{};
  param.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA | UCP_OP_ATTR_FIELD_MEMORY_TYPE;
  param.cb.recv_am = &Impl::on_recv_done;
  param.user_data = op;
  param.memory_type = ucs_memory(memory);
  ++t->in_flight;
  ucs_status_ptr_t request = ucp_am_recv_data_nbx(ucp_worker_, descriptor, destination, length, &param);
  if (request == nullptr) {
    on_recv_done(nullptr, UCS_OK, length, op);
  } else if (UCS_PTR_IS_ERR(request)) {
    on_recv_done(nullptr, UCS_PTR_STATUS(request), 0, op);
  } else {
    ++outstanding_;
  }
}

void DataPlane::Impl::start_waiting_receives(const TransferPtr& t) {
  while (!t->waiting.empty() && !t->finished && !t->error) {
    void* slot = take_slot(SlotUse::receive);
    if (slot == nullptr) {
      if (!t->waiting_for_slot) {
        t->waiting_for_slot = true;
        wait_for_slot(SlotUse::receive, [this, t] {
          t->waiting_for_slot = false;
          start_waiting_receives(t);
        });
      }
      return;
    }
    const auto next = t->waiting.front();
    t->waiting.pop_front();
    receive_rndv(t, next.descriptor, next.offset, next.length, slot);
  }
}

void* DataPlane::Impl::take_slot(SlotUse use) {
  const int sends = std::max(1, options_.staging_slots / 2);
  const int quota = use == SlotUse::send ? sends : options_.staging_slots - sends;
  auto& used = slots_used_[static_cast<int>(use)];
  if (used >= quota) return nullptr;
  void* slot = cuda()->acquire_slot();
  if (slot != nullptr) ++used;
  return slot;
}

void DataPlane::Impl::give_slot(void* slot, SlotUse use) {
  cuda()->release_slot(slot);
  --slots_used_[static_cast<int>(use)];
  // Resume waiters until one takes the slot (a waiter whose transfer ended
  // meanwhile takes nothing); one that still lacks slots queues itself again.
  auto& waiters = slot_waiters_[static_cast<int>(use)];
  const int before = slots_used_[static_cast<int>(use)];
  while (!waiters.empty() && slots_used_[static_cast<int>(use)] == before) {
    auto resume = std::move(waiters.front());
    waiters.pop_front();
    resume();
  }
}

void DataPlane::Impl::wait_for_slot(SlotUse use, std::function<void()> resume) {
  slot_waiters_[static_cast<int>(use)].push_back(std::move(resume));
}

void DataPlane::Impl::on_recv_done(void* request, ucs_status_t status, size_t, void* user_data) {
  guarded("on_recv_done", [&] {
    std::unique_ptr<RecvOp> op(static_cast<RecvOp*>(user_data));
    Impl* self = op->plane;
    if (request != nullptr) {
      --self->outstanding_;
      ucp_request_free(request);
    }
    const TransferPtr t = op->transfer;
    if (status != UCS_OK) {
      --t->in_flight;
      if (op->slot != nullptr) self->give_slot(op->slot, SlotUse::receive);
      self->transfer_failed(t, make_error_from_ucs(status, "receiving object " + hex(t->key)));
      return;
    }
    if (op->slot == nullptr) {
      --t->in_flight;
      self->landed(t, op->length);
      return;
    }
    // Staged: pinned slot -> device, then the slot takes the next message.
    void* slot = op->slot;
    const std::size_t length = op->length;
    ++self->outstanding_;
    self->cuda()->host_to_device(static_cast<char*>(t->buffer.data) + op->offset, slot, length,
                                 [self, t, slot, length](std::exception_ptr error) {
                                   --self->outstanding_;
                                   --t->in_flight;
                                   self->give_slot(slot, SlotUse::receive);  // resumes a waiting receive
                                   if (error) return self->transfer_failed(t, error);
                                   self->landed(t, length);
                                 });
  });
}

void DataPlane::Impl::landed(const TransferPtr& t, std::size_t length) {
  t->landed += length;
  maybe_finish(t);
}

void DataPlane::Impl::maybe_finish(const TransferPtr& t) {
  if (t->finished || t->error || t->landed < t->total || t->in_flight > 0) return;
  t->finished = true;
  t->buffer.meta = std::move(t->meta);
  if (!t->push) return complete_fetch(t->id, std::move(t->buffer), nullptr);

  pushes_in_.erase(t->id);
  const bool reserved = t->counted;  // accepted with an inbox place (no fetch was waiting then)
  release_inbox_place(*t);
  ++stats_.pushes_received;
  // Fetches of this id (into this memory type) that are waiting for the
  // holder's reply take it now; the reply, when it comes, is dropped.
  std::vector<std::uint64_t> waiting;
  auto [begin, end] = fetches_by_key_.equal_range(t->key);
  for (auto it = begin; it != end; ++it) {
    auto fetch = fetches_.find(it->second);
    if (fetch != fetches_.end() &&
        (destination_for(fetch->second.destination, fetch->second.follow_source, t->buffer.memory) ==
             t->buffer.memory ||
         t->total == 0))
      waiting.push_back(it->second);
  }
  if (!waiting.empty()) {
    for (auto request_id : waiting) complete_fetch(request_id, t->buffer, nullptr);
    unwait_push(t->key);  // any left wanted another memory type
    return;
  }
  unwait_push(t->key);
  if (closed_) return;
  // Accepted for a fetch that the holder's reply completed meanwhile (the
  // two crossed), or without an inbox place: nobody will claim it, and it
  // must not hold memory beyond the inbox's bounds.
  if (recently_fetched_.count(t->key) != 0 || (!reserved && !inbox_has_room(t->buffer.size))) {
    ++stats_.pushes_refused;
    return;
  }
  const auto expires = Clock::now() + options_.inbox_ttl;
  auto& entry = inbox_[t->key];
  inbox_bytes_ -= entry.buffer.size;  // a second push of the same id replaces the first
  entry = InboxEntry{std::move(t->buffer), expires};
  inbox_bytes_ += entry.buffer.size;
  inbox_order_.emplace_back(expires, t->key);
}

void DataPlane::Impl::transfer_failed(const TransferPtr& t, std::exception_ptr error) {
  if (t->finished) return;
  if (!t->error) t->error = error;
  for (auto& waiting : t->waiting) ucp_am_data_release(ucp_worker_, waiting.descriptor);
  t->waiting.clear();
  if (t->push) {
    pushes_in_.erase(t->id);
    release_inbox_place(*t);
    t->finished = true;
    if (!closed_) unwait_push(t->key);  // fetches that counted on it ask the holder
    return;
  }
  t->finished = true;
  complete_fetch(t->id, {}, t->error);
}

void DataPlane::Impl::release_inbox_place(Transfer& t) {
  if (!t.counted) return;
  t.counted = false;
  inbox_reserved_ -= t.reserved;
  t.reserved = 0;
  --pushes_accepted_in_flight_;
}

bool DataPlane::Impl::inbox_has_room(std::size_t bytes) const {
  return inbox_.size() + pushes_accepted_in_flight_ < options_.inbox_max_objects &&
         inbox_bytes_ + inbox_reserved_ + bytes <= options_.inbox_max_bytes;
}

ObjectBuffer DataPlane::Impl::allocate(std::size_t size, MemoryType memory) {
  ObjectBuffer buffer;
  if (options_.allocator) {
    buffer = options_.allocator(size, memory);
  } else if (memory == MemoryType::cuda) {
    if (cuda() == nullptr) throw_error(Errc::unsupported, "no CUDA to allocate device memory");
    buffer = cuda()->allocate_device(size);
  } else {
    buffer = host_pool_->allocate(size);
  }
  if (buffer.size < size || buffer.memory != memory || (size > 0 && buffer.data == nullptr))
    throw_error(Errc::invalid_argument, "the allocator returned a buffer of the wrong size or memory type");
  buffer.size = size;
  return buffer;
}

detail::CudaSupport* DataPlane::Impl::cuda() {
  if (!cuda_tried_) {
    cuda_tried_ = true;
    cuda_ = detail::CudaSupport::create([worker = worker_.get()](std::function<void()> task) { worker->post(std::move(task)); },
                                        options_.staging_chunk_bytes, options_.staging_slots);
  }
  return cuda_.get();
}

// --- push -------------------------------------------------------------------------

void DataPlane::Impl::start_push(std::string peer, ObjectId id, ObjectBuffer buffer, PushCallback done) {
  if (closed_) return done(make_error(Errc::cancelled, "the data plane is shut down"));
  if (buffer.meta.size() > kMaxMetaBytes)
    return done(make_error(Errc::invalid_argument, "object meta of " + std::to_string(buffer.meta.size()) + " bytes (at most " +
                                                       std::to_string(kMaxMetaBytes) + ")"));
  std::exception_ptr error;
  auto ep = endpoint(peer, error);
  if (!ep) return done(error);
  auto out = std::make_shared<Outgoing>();
  out->ep = ep;
  out->buffer = std::move(buffer);
  out->push = true;
  out->done = std::move(done);
  out->header.kind = kPush;
  out->header.transfer_id = next_push_id_++;
  out->header.id_hi = id.hi();
  out->header.id_lo = id.lo();
  start_send(out);
}

void DataPlane::Impl::start_push_request(std::string holder, ObjectId id, std::string consumer,
                                         std::chrono::milliseconds wait) {
  if (closed_) return;
  if (consumer.size() < kMinAddressBytes || consumer.size() > kMaxAddressBytes) return;
  std::exception_ptr error;
  auto ep = endpoint(holder, error);
  if (!ep || ep->ep == nullptr) return;  // the consumer pulls instead
  auto* op = new RequestOp{this, 0, {}, std::move(consumer), ep};
  op->header.magic = kPushRequestMagic;
  op->header.id_hi = id.hi();
  op->header.id_lo = id.lo();
  op->header.wait_ms = static_cast<std::uint32_t>(std::clamp<std::int64_t>(wait.count(), 0, 0xffffffff));
  op->wire = encode_request(op->header, op->address, key());
  ucp_request_param_t param{};
  param.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA | UCP_OP_ATTR_FIELD_MEMORY_TYPE;
  param.cb.send = &Impl::on_request_sent;  // request id 0: no fetch to fail
  param.user_data = op;
  param.memory_type = UCS_MEMORY_TYPE_HOST;
  send_request_am(ep->ep, op, param);
}

// Sends a request's header and the asker's address as one active message;
// on_request_sent runs when it left (at once when it left inline or failed).
void DataPlane::Impl::send_request_am(ucp_ep_h ep, RequestOp* op, const ucp_request_param_t& param) {
  ucs_status_ptr_t request = ucp_am_send_nbx(ep, kRequestAm, op->wire.bytes.data(), op->wire.size,
                                             op->address.data(), op->address.size(), &param);
  if (request == nullptr) {
    on_request_sent(nullptr, UCS_OK, op);
  } else if (UCS_PTR_IS_ERR(request)) {
    on_request_sent(nullptr, UCS_PTR_STATUS(request), op);
  } else {
    ++outstanding_;
  }
}

std::string DataPlane::Impl::peer_transports(const std::string& peer) {
  std::exception_ptr error;
  auto ep = endpoint(peer, error);
  if (!ep) std::rethrow_exception(error);
  return lane_transports(ep->ep);
}

DataPlane::Stats DataPlane::Impl::stats() const {
  Stats stats = stats_;
  stats.inbox_objects = inbox_.size();
  stats.inbox_bytes = inbox_bytes_;
  stats.endpoints = endpoints_.size();
  return stats;
}

// --- DataPlane: the public face ------------------------------------------------------

namespace {
// Runs `fn` on the progress thread and waits for its result.
template <class Fn>
auto run_on(UcxWorker& worker, Fn fn) -> decltype(fn()) {
  std::packaged_task<decltype(fn())()> task(std::move(fn));
  auto result = task.get_future();
  if (worker.on_progress_thread()) {
    task();
  } else {
    worker.post([&task] { task(); });
  }
  return result.get();
}
}  // namespace

DataPlane::DataPlane(std::shared_ptr<UcxWorker> worker, DataPlaneOptions options) {
  if (!worker) throw_error(Errc::invalid_argument, "DataPlane: no worker");
  impl_ = std::make_shared<Impl>(std::move(worker), std::move(options));
  run_on(*impl_->worker_, [impl = impl_.get()] { impl->start(); });
}

DataPlane::~DataPlane() {
  auto& worker = *impl_->worker_;
  run_on(worker, [impl = impl_.get()] { impl->close(); });
  // Buffers lent to UCX (receives, sends, staging copies) come back through
  // callbacks that reference impl_: wait for all of them.
  const auto deadline = Clock::now() + std::chrono::seconds(10);
  for (;;) {
    const std::size_t left = run_on(worker, [impl = impl_.get()] { return impl->drain_outstanding(); });
    if (left == 0) return;
    if (Clock::now() > deadline) {
      // Never free what a callback may still touch: leak it instead.
      std::fprintf(stderr, "troupe: DataPlane closed with %zu UCX operations still pending; leaking its state\n", left);
      new std::shared_ptr<Impl>(impl_);
      return;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
}

const std::string& DataPlane::address() const noexcept { return impl_->address_; }
const std::shared_ptr<UcxWorker>& DataPlane::worker() const noexcept { return impl_->worker_; }

void DataPlane::publish(ObjectId id, ObjectBuffer buffer) { impl_->publish(id, std::move(buffer)); }
bool DataPlane::unpublish(ObjectId id) { return impl_->unpublish(id); }
std::size_t DataPlane::published_count() const { return impl_->published_count(); }

void DataPlane::fetch(std::string_view peer, ObjectId id, FetchOptions options, FetchCallback done) {
  impl_->worker_->post([impl = impl_.get(), peer = std::string(peer), id, options, done = std::move(done)]() mutable {
    impl->start_fetch(std::move(peer), id, options, std::move(done));
  });
}

std::future<ObjectBuffer> DataPlane::fetch(std::string_view peer, ObjectId id, FetchOptions options) {
  auto promise = std::make_shared<std::promise<ObjectBuffer>>();
  auto future = promise->get_future();
  fetch(peer, id, options, [promise](ObjectBuffer buffer, std::exception_ptr error) {
    if (error) promise->set_exception(error);
    else promise->set_value(std::move(buffer));
  });
  return future;
}

void DataPlane::push(std::string_view peer, ObjectId id, ObjectBuffer buffer, PushCallback done) {
  impl_->worker_->post([impl = impl_.get(), peer = std::string(peer), id, buffer = std::move(buffer),
                        done = std::move(done)]() mutable {
    impl->start_push(std::move(peer), id, std::move(buffer), std::move(done));
  });
}

std::future<void> DataPlane::push(std::string_view peer, ObjectId id, ObjectBuffer buffer) {
  auto promise = std::make_shared<std::promise<void>>();
  auto future = promise->get_future();
  push(peer, id, std::move(buffer), [promise](std::exception_ptr error) {
    if (error) promise->set_exception(error);
    else promise->set_value();
  });
  return future;
}

void DataPlane::request_push(std::string_view holder, ObjectId id, std::string_view consumer,
                             std::chrono::milliseconds wait) {
  impl_->worker_->post([impl = impl_.get(), holder = std::string(holder), id, consumer = std::string(consumer), wait] {
    impl->start_push_request(holder, id, consumer, wait);
  });
}

std::future<std::string> DataPlane::peer_transports(std::string_view peer) {
  auto promise = std::make_shared<std::promise<std::string>>();
  auto future = promise->get_future();
  impl_->worker_->post([impl = impl_.get(), peer = std::string(peer), promise] {
    try {
      promise->set_value(impl->peer_transports(peer));
    } catch (...) {
      promise->set_exception(std::current_exception());
    }
  });
  return future;
}

std::future<DataPlane::Stats> DataPlane::stats() {
  auto promise = std::make_shared<std::promise<Stats>>();
  auto future = promise->get_future();
  impl_->worker_->post([impl = impl_.get(), promise] { promise->set_value(impl->stats()); });
  return future;
}

}  // namespace troupe::transport
