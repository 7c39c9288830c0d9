// DataPlane::Impl (internal to the data plane's files, not installed): the
// object protocol's state and the helpers its files share. The files:
//   ucx_data_plane.cpp    setup, teardown, the tick, the public face
//   ucx_endpoints.cpp     cached endpoints to peers, their failures
//   ucx_holder.cpp        published objects, requests, sending replies/pushes
//   ucx_fetch.cpp         fetches and receiving replies and pushes
//   ucx_push.cpp          pushes and push requests
//   ucx_messages.cpp      ordered byte messages (the runtime's call plane)
//
// Everything below the public methods runs on the worker's progress thread,
// except the published-object table (served_), which publish() fills from
// any thread under served_mutex_ so that "published, then announced" is
// race-free. UCX callbacks (AM handlers, send/receive completions, endpoint
// errors) run inside ucp_worker_progress; work that needs new endpoints is
// deferred to the tick that follows it.
#pragma once

#include "troupe/transport/ucx.hpp"


#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <limits>
#include <list>
#include <map>
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
namespace data_plane_detail {

using Clock = std::chrono::steady_clock;

using namespace ucx_wire;
static_assert(kMaxMetaBytes == kMaxObjectMetaBytes, "one limit for object meta");

inline std::shared_ptr<spdlog::logger> log() {
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

inline std::string hex(ObjectId key) { return key.hex(); }

inline ucs_memory_type_t ucs_memory(MemoryType memory) {
  return memory == MemoryType::cuda ? UCS_MEMORY_TYPE_CUDA : UCS_MEMORY_TYPE_HOST;
}


// Transport names of an endpoint's lanes from ucp_ep_print_info, e.g.
// "posix,cma" (ucx_endpoints.cpp).
std::string lane_transports(ucp_ep_h ep);

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

}  // namespace data_plane_detail
using namespace data_plane_detail;

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
  // Messages: this endpoint's outgoing stream (0 until its hello is sent)
  // and the seq of its next message.
  std::uint64_t stream = 0;
  std::uint64_t next_seq = 1;
  // Messages UCX holds for this endpoint, and when one last completed (or
  // the first of them was handed over): no completion for
  // message_send_timeout while some wait means the endpoint is stuck.
  std::size_t messages_pending = 0;
  std::chrono::steady_clock::time_point messages_progress{};
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
  void enable_messages(std::string name, MessageHandlers handlers);
  void start_send_message(std::string peer, ObjectBuffer bytes, PushCallback done);

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
  static ucs_status_t on_message_am(void* arg, const void* header, size_t header_length, void* data,
                                    size_t length, const ucp_am_recv_param_t* param);
  static void on_message_sent(void* request, ucs_status_t status, void* user_data);

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
  // Peers whose endpoint failed lately: for kReconnectHoldoff, operations
  // to them fail at once instead of each opening (and failing) a new
  // endpoint, which for a dead peer's backlog of messages would keep this
  // thread busy connecting for seconds. Bounded (stale entries go first).
  static constexpr std::chrono::milliseconds kReconnectHoldoff{1000};
  std::unordered_map<std::string, Clock::time_point> recently_failed_;
  void note_failed_peer(const std::string& address);
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

  // Messages (ucx_messages.cpp).
  struct MessageOp {
    Impl* plane;
    std::shared_ptr<Endpoint> ep;
    ObjectBuffer bytes;  // a hello's: the address it announces
    PushCallback done;
    EncodedHeader wire{};
  };
  // Endpoints whose messages made no progress for message_send_timeout
  // fail (looked at every kStuckScan while messages are pending).
  static constexpr std::chrono::milliseconds kStuckScan{100};
  std::size_t messages_pending_ = 0;  // over all endpoints
  Clock::time_point next_stuck_scan_{};
  void fail_stuck_messages(Clock::time_point now);
  struct HeldMessage {
    std::uint8_t kind;
    std::string name;
    ObjectBuffer bytes;
  };
  struct IncomingStream {
    std::uint64_t next_seq = 0;
    std::map<std::uint64_t, HeldMessage> held;  // arrived ahead of next_seq
    std::list<std::uint64_t>::iterator lru;
  };
  void send_message_am(const std::shared_ptr<Endpoint>& ep, const MessageHeader& header, std::string_view name,
                       ObjectBuffer bytes, PushCallback done);
  void receive_message(const MessageHeader& header, std::string_view name, ObjectBuffer bytes);
  void deliver_message(std::uint8_t kind, std::string name, ObjectBuffer bytes);
  std::string message_name_;
  MessageHandlers message_handlers_;
  bool messages_enabled_ = false;
  std::unordered_map<std::uint64_t, IncomingStream> streams_;
  std::list<std::uint64_t> stream_lru_;  // most recently active first
  std::mt19937_64 stream_ids_{std::random_device{}()};
  Clock::time_point last_message_{};

  bool cuda_tried_ = false;
  std::unique_ptr<detail::CudaSupport> cuda_;
  std::shared_ptr<HostPool> host_pool_;
  int slots_used_[2] = {0, 0};  // by SlotUse
  std::deque<std::function<void()>> slot_waiters_[2];
};

}  // namespace troupe::transport
