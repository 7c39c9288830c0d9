// The data plane: object bytes between processes over UCX active messages,
// with no extra copy of large payloads, in host or CUDA memory.
//
// Three layers, each holding a shared_ptr to the one below, so teardown order
// is fixed (context outlives worker outlives endpoint outlives request):
//
//   UcxContext  one per process: ucp_context with the transports chosen by
//               UcxOptions / UCX_TLS / UCX_NET_DEVICES.
//   UcxWorker   one per process: a ucp_worker and the progress thread that
//               owns it. Every UCX call happens on that thread; other threads
//               post work to it (mutex + queue + eventfd). Between bursts of
//               work the thread sleeps in poll() on the worker's event fd
//               (armed with ucp_worker_arm) and the wake-up eventfd, at
//               most 100 ms at a time; a post writes the eventfd only
//               while it sleeps.
//   DataPlane   the object protocol on one worker: a holder publishes
//               objects by id; a consumer fetches them by (holder worker
//               address, id), or a holder pushes them to a consumer ahead of
//               the fetch. Endpoints (cached per peer address, with
//               UCP_ERR_HANDLING_MODE_PEER) live inside it; a peer whose
//               endpoint failed is not reconnected for 1 s (what is sent
//               or fetched there meanwhile fails at once, object_lost).
//
// Wire protocol (AM ids 116 and 117, all integers in host byte
// order: both ends are troupe of the same build on the same architecture;
// the layouts and the parser are in transport/internal/.../ucx_wire.hpp):
//   request  header {magic, wait_ms, request_id, id}, data = the requester's
//            worker address (the holder answers on its own cached endpoint).
//   data     header {magic, kind reply|push, status ok|not_found|unsupported|
//            busy, transfer_id (= request_id for a reply), id, total size,
//            offset, meta_length}, then the object's meta (ObjectBuffer::
//            meta, on the message at offset 0), data = the
//            bytes [offset, offset + length) of the object. One request
//            brings meta and bytes together (one trip per object: the
//            runtime's tensor envelope is the meta, the tensor's bytes
//            the object). Host objects (and
//            CUDA objects when UCX is CUDA-capable) go as one message; CUDA
//            objects staged through pinned host memory go in chunks.
//   message  (AM 118) the runtime's call plane: ordered byte messages
//            (DataPlane::send_message), a stream per sending endpoint that
//            opens with a hello naming the sender, delivered in the order
//            sent (each carries its stream's seq; UCX itself does not
//            promise order for active messages).
//   In a secure process (membership() set when the DataPlane is made) each
//   header is followed by a keyed BLAKE2b-256 tag (a MAC) keyed by the cluster's
//   data-plane key, over the header with its meta (and a request's requester address),
//   checked before anything else; messages without a valid tag are dropped
//   and counted. Payload bytes are neither encrypted nor authenticated.
//   Messages of `DataPlaneOptions::rndv_threshold` bytes or more are sent
//   with UCP_AM_SEND_FLAG_RNDV, so the receiver gets a rendezvous descriptor
//   and UCX moves the bytes straight into the buffer the receiver's allocator
//   returned (zero-copy on both sides: shm uses CMA/process_vm_readv, tcp
//   reads the socket into the buffer). Smaller ones are left to UCX (eager
//   or rendezvous, its choice); eager bytes are copied once out of UCX's
//   receive buffer.
//
// Errors are troupe::Error values (troupe/runtime/error.hpp), carried in
// the futures or passed to the callbacks as exception_ptr: not_found,
// object_lost (holder died or unreachable), timeout, cancelled (shut down),
// unsupported (e.g. CUDA memory in a build without CUDA), cuda, transport.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <functional>
#include <future>
#include <memory>
#include <span>
#include <string>
#include <string_view>

#include "troupe/runtime/ids.hpp"

struct ucp_context;
struct ucp_worker;

namespace troupe::transport {

enum class MemoryType : std::uint8_t { host = 0, cuda = 1 };

// The most bytes of ObjectBuffer::meta an object may carry.
inline constexpr std::size_t kMaxObjectMetaBytes = 1024;
std::string_view to_string(MemoryType memory) noexcept;

// An object's id on the wire: the runtime's 128-bit ObjectId (hi, lo).
// Objects are named by troupe::ObjectId (<troupe/runtime/ids.hpp>).

// Bytes in host or CUDA memory plus whatever keeps them alive. Copies share
// the storage. The transport never writes to a buffer it was given to
// publish or push; it writes to buffers its allocator returned, and only
// until the fetch that received them completes.
struct ObjectBuffer {
  void* data = nullptr;  // may be null when size is 0
  std::size_t size = 0;
  MemoryType memory = MemoryType::host;
  std::shared_ptr<const void> keepalive;  // owns (or pins) the storage
  // Small bytes that travel with the object in the same message's header
  // (at most kMaxObjectMetaBytes; authenticated in a secure plane, unlike
  // the bytes): what the consumer needs to interpret them, e.g. the
  // runtime's tensor envelope. A fetch or push delivers them beside the
  // bytes, so envelope and payload cost one trip.
  std::string meta;

  // Uninitialised host storage, 64-byte aligned (not zeroed: received bytes
  // overwrite it).
  static ObjectBuffer allocate_host(std::size_t size);
  // A host copy of `bytes` (for small objects and tests).
  static ObjectBuffer copy_of(std::string_view bytes);
  // Wraps existing memory; `keepalive` must keep [data, data + size) valid.
  static ObjectBuffer wrap(const void* data, std::size_t size, std::shared_ptr<const void> keepalive,
                           MemoryType memory = MemoryType::host);

  // The bytes of a host buffer (empty for CUDA memory).
  std::span<const std::byte> bytes() const noexcept;
  std::string_view view() const noexcept;
};

// How one process uses UCX. Empty strings leave UCX's own setting (which
// reads UCX_TLS / UCX_NET_DEVICES / UCX_KEEPALIVE_INTERVAL from the
// environment); a non-empty field overrides the environment for this context
// (applied with ucp_config_modify).
struct UcxOptions {
  std::string tls;          // UCX_TLS syntax, e.g. "posix,sysv,cma,self" or "tcp,self"
  std::string net_devices;  // UCX_NET_DEVICES syntax, e.g. "eth0" or "mlx5_0:1"
  // The node's IP ("10.0.0.5", or an endpoint "tcp://10.0.0.5:4000"): when
  // set, and neither `net_devices` nor UCX_NET_DEVICES is, UCX's network
  // devices are limited to the interface that holds this IP plus any
  // InfiniBand ports (/sys/class/infiniband), so its TCP transport listens
  // only there (shared memory is not a network device and stays). An IP no
  // interface holds (0.0.0.0) leaves UCX's default: every interface.
  std::string listen_ip;
  // How often UCX checks that peers are alive; a dead peer's pending
  // operations fail with object_lost after about this long (TCP notices a
  // closed socket at once). Empty: UCX_KEEPALIVE_INTERVAL if set, else 1s
  // (UCX's own default, 20 s, is longer than troupe's fetch timeout).
  std::string keepalive_interval;
  // Endpoints use UCP_ERR_HANDLING_MODE_PEER, so a dead peer fails their
  // operations (object_lost) instead of leaving them to time out. UCX 1.13
  // offers shared memory (posix, sysv) to such endpoints only with
  // {POSIX,SYSV}_ERROR_HANDLING=y, which troupe then sets unless the
  // environment sets UCX_MM/POSIX/SYSV_ERROR_HANDLING itself. false:
  // UCP_ERR_HANDLING_MODE_NONE (UCX's lightest mode; dead peers surface as
  // timeouts).
  bool detect_peer_failure = true;
  // After any activity the progress thread keeps polling this long before
  // it arms the worker and sleeps: trades a core's time for latency.
  std::chrono::microseconds busy_poll{0};
};

// The UCX_NET_DEVICES value that UcxOptions::listen_ip implies ("eth0",
// "lo", "ib0,mlx5_0:1"), or empty when no interface holds that IP.
std::string net_devices_for_ip(const std::string& ip_or_endpoint);

// The process's UCX context (UCP_FEATURE_AM | UCP_FEATURE_WAKEUP; workers
// are not shared between threads: UCS_THREAD_MODE_SINGLE, each owned by its
// progress thread). Immutable after creation; all methods are thread-safe.
class UcxContext {
 public:
  // Throws troupe::Error (unsupported for an unknown transport or device).
  static std::shared_ptr<UcxContext> create(const UcxOptions& options = {});
  ~UcxContext();
  UcxContext(const UcxContext&) = delete;
  UcxContext& operator=(const UcxContext&) = delete;

  // UCX can send from and receive into CUDA memory itself
  // (UCS_MEMORY_TYPE_CUDA in the context's memory_types). When false, CUDA
  // buffers are staged through pinned host memory (builds with CUDA only).
  bool cuda_native() const noexcept { return cuda_native_; }
  // The transports this context may use, comma-separated, without "self",
  // e.g. "tcp,sysv,posix,cma" (the resources UCX opened, in its order).
  const std::string& transports() const noexcept { return transports_; }
  // e.g. "UCX 1.13.1, transports tcp,sysv,posix,cma, cuda_native no": for
  // `troupe status` / `troupe info`.
  std::string describe() const;
  const UcxOptions& options() const noexcept { return options_; }
  ucp_context* handle() const noexcept { return context_; }

 private:
  UcxContext() = default;
  ucp_context* context_ = nullptr;
  bool cuda_native_ = false;
  std::string transports_;
  UcxOptions options_;
};

// A ucp_worker and its progress thread. The worker is created, progressed
// and destroyed on that thread only.
class UcxWorker : public std::enable_shared_from_this<UcxWorker> {
 public:
  // Starts the progress thread and waits until the worker exists. Throws
  // troupe::Error if UCX cannot create it.
  static std::shared_ptr<UcxWorker> create(std::shared_ptr<UcxContext> context);
  // Stops the thread after running the tasks already posted. Must not run on
  // the progress thread (it would join itself): drop the last reference
  // elsewhere.
  ~UcxWorker();
  UcxWorker(const UcxWorker&) = delete;
  UcxWorker& operator=(const UcxWorker&) = delete;

  // This worker's address (ucp_worker_get_address bytes, ~100-300 bytes):
  // what peers need to reach it. Send it over the control plane as bytes.
  const std::string& address() const noexcept { return address_; }
  const std::shared_ptr<UcxContext>& context() const noexcept { return context_; }

  // Runs `task` on the progress thread, after the tasks posted before it.
  // Thread-safe; never runs it inline. Tasks must not block.
  void post(std::function<void()> task);
  bool on_progress_thread() const noexcept;

  // --- for the layer above; call on the progress thread only --------------
  ucp_worker* handle() const noexcept { return worker_; }
  // Called on every turn of the progress loop, after ucp_worker_progress
  // drained; returns when it next needs to run (time_point::max(): only on
  // activity; time_point::min(): operations are in flight, keep polling).
  // While in flight, the loop polls (yielding the CPU between polls) as long
  // as UCX made progress within the last few milliseconds, then sleeps on
  // the event fd in 1 ms steps: UCX's fragmented and rendezvous protocols
  // stall when each fragment has to wake a sleeping thread. One hook per
  // worker.
  using Tick = std::function<std::chrono::steady_clock::time_point()>;
  void set_tick(Tick tick);

  // --- dying without harming peers ---------------------------------------
  // UCX's shared-memory transports (posix, sysv) deliver through a FIFO in
  // the receiver's memory that every sender writes: a sender claims an
  // element, fills it, then marks it written, and the receiver reads the
  // elements strictly in order. A sender killed between the claim and the
  // mark leaves the receiver waiting on that element for good: it then
  // hears nothing more over shared memory from anyone (wire-up replies
  // included, so even a new peer's first send stays pending). So a process
  // with a worker must not be SIGKILLed while its progress thread is inside
  // UCX. exit_at_safe_points() (async-signal-safe) asks every progress
  // thread of the process to stop at its next safe point (outside any UCX
  // call); once all have, the process SIGKILLs itself (so its exit still
  // reads "killed by signal 9"). Without a worker it SIGKILLs at once.
  // Whoever kills a host this way still SIGKILLs it after a grace period
  // (a stopped process never reaches a safe point).
  static void exit_at_safe_points() noexcept;
  // Installs a handler that calls exit_at_safe_points() on `signal` (the
  // actor host's SIGTERM). Throws if sigaction fails.
  static void exit_at_safe_points_on(int signal);

 private:
  struct Loop;
  explicit UcxWorker(std::shared_ptr<UcxContext> context);
  void run(std::promise<void>& started);

  std::shared_ptr<UcxContext> context_;
  ucp_worker* worker_ = nullptr;
  std::string address_;
  std::unique_ptr<Loop> loop_;
};

// Where a fetched object goes. Called on the progress thread with the
// object's size and the memory type the fetch asked for; returns storage of
// at least that size in that memory type. Must not block for long; may throw
// (the fetch then fails with that exception). The default gives host memory
// from a cache of recently freed blocks (see DataPlaneOptions::
// host_cache_bytes) and CUDA memory from cudaMalloc on the current device
// (builds with CUDA; pass an allocator backed by the runtime's caching
// allocator instead to avoid cudaMalloc per fetch).
using Allocator = std::function<ObjectBuffer(std::size_t size, MemoryType memory)>;

struct DataPlaneOptions {
  // Replies and pushes of this many bytes or more use rendezvous (zero-copy
  // into the receiver's buffer); below, UCX chooses.
  std::size_t rndv_threshold = std::size_t{64} << 10;
  // Pushed objects that no fetch has claimed yet are kept in a bounded
  // inbox. A push that would take it past either bound is refused: the
  // receiver drops it (the pusher's send fails with `transport` for a
  // rendezvous-sized push; a small eager push is dropped silently) and a
  // later fetch goes to the holder as if nothing had been pushed.
  std::size_t inbox_max_bytes = std::size_t{256} << 20;
  std::size_t inbox_max_objects = 4096;
  // A pushed object unclaimed for this long is dropped.
  std::chrono::milliseconds inbox_ttl{60000};
  Allocator allocator;  // empty: the default described above
  // The default allocator keeps host blocks of 64 KiB and more, once their
  // last ObjectBuffer copy is gone, for the next fetch of a similar size
  // (size classes a quarter of a power of two apart), up to this many idle
  // bytes. Fresh memory costs a page fault per 4 KiB on first touch, which
  // for large objects costs more than the transfer itself. 0: no cache.
  std::size_t host_cache_bytes = std::size_t{256} << 20;
  // CUDA objects when UCX is not CUDA-capable go through pinned host
  // memory in chunks of this size, this many chunks in flight per direction.
  std::size_t staging_chunk_bytes = std::size_t{4} << 20;
  int staging_slots = 4;

  // Bounds on what peers can make this process hold (docs/security.md,
  // "Bounds"). Requests waiting for an object to be published: at most this
  // many (more are answered at once with a `transport` error: holder busy),
  // each for at most `max_park_wait` whatever the requester asked.
  std::size_t max_parked_requests = 1024;
  std::chrono::milliseconds max_park_wait{60000};
  // Cached endpoints to peers: past this many, the least recently used idle
  // ones are closed (one still used by an operation stays until it is done).
  std::size_t max_endpoints = 1024;
  // Pushes being received (accepted or refused but not fully arrived): more
  // are dropped; one that stalls longer than `inbox_ttl` is dropped too.
  std::size_t max_incoming_pushes = 1024;

  // Messages (send_message): after a message was sent or received the
  // progress thread keeps polling this long before it arms the worker's
  // event fd and sleeps. A reply that comes within it costs no wake-up; an
  // idle process stops using CPU once it passes.
  std::chrono::microseconds message_poll_window{2000};
  // Incoming message streams remembered (least recently used forgotten
  // first), and messages of one stream held while an earlier one is
  // missing (past it the stream is dropped: a gap UCX never fills).
  std::size_t max_message_streams = 65536;
  std::size_t max_held_messages = 4096;
  // An endpoint whose pending messages see no completion for this long (the
  // peer stopped reading, or the endpoint never finished connecting) fails:
  // everything pending on it completes with `timeout`, and the next message
  // opens a new endpoint and stream. A slow peer that still takes messages
  // keeps its backlog. So no send waits longer than this without progress.
  std::chrono::milliseconds message_send_timeout{5000};
};

struct FetchOptions {
  std::chrono::milliseconds timeout{10000};
  MemoryType destination = MemoryType::host;  // where the bytes should land
  // If the holder has not published the id yet, it keeps the request until
  // it does (or until `timeout`) instead of answering not_found at once:
  // for objects whose producer may still be running.
  bool wait_for_publish = false;
  // Land the bytes in CUDA memory when the holder's copy is in CUDA memory
  // and this process can receive into it (an allocator, or CUDA here),
  // else in `destination`: the consumer asks for the source's memory type
  // without knowing it in advance (one trip: no envelope first).
  bool follow_source = false;
};

// Exactly one call per fetch, on the progress thread: `error` null and the
// object in `buffer`, or `error` set (a troupe::Error) and `buffer` empty.
// Must not block; may call DataPlane methods (they only post).
using FetchCallback = std::function<void(ObjectBuffer buffer, std::exception_ptr error)>;
// Exactly one call per push, on the progress thread: null when the bytes
// left this process (the receiver may still drop them, see inbox_max_bytes).
using PushCallback = std::function<void(std::exception_ptr error)>;

class DataPlane {
 public:
  // Takes over the worker's active-message ids and tick; one per worker.
  explicit DataPlane(std::shared_ptr<UcxWorker> worker, DataPlaneOptions options = {});
  // Fails fetches and pushes still pending with `cancelled`, closes the
  // endpoints, and waits for UCX to give back every buffer it was lent.
  // Not from a FetchCallback/PushCallback (they run on the progress thread).
  ~DataPlane();
  DataPlane(const DataPlane&) = delete;
  DataPlane& operator=(const DataPlane&) = delete;

  const std::string& address() const noexcept;
  const std::shared_ptr<UcxWorker>& worker() const noexcept;

  // --- holder side (thread-safe) -------------------------------------------
  // Makes `id` fetchable until unpublished; replaces an earlier buffer.
  // Throws Error(invalid_argument) for meta over kMaxObjectMetaBytes.
  // Once this returns, every fetch of `id` that reaches this process finds
  // it. Sends in flight keep their own reference to the buffer.
  void publish(ObjectId id, ObjectBuffer buffer);
  // Returns whether `id` was published.
  bool unpublish(ObjectId id);
  std::size_t published_count() const;

  // --- consumer side (thread-safe) -----------------------------------------
  // Fetches `id` from the holder whose worker address is `peer`. A pushed
  // copy waiting in this process's inbox is handed over at once (and leaves
  // the inbox); a push of `id` that completes while the fetch waits also
  // completes it.
  void fetch(std::string_view peer, ObjectId id, FetchOptions options, FetchCallback done);
  [[nodiscard]] std::future<ObjectBuffer> fetch(std::string_view peer, ObjectId id,
                                                FetchOptions options = {});

  // Sends `buffer` as object `id` to the consumer whose worker address is
  // `peer`, before it asks. The consumer keeps it in its inbox for a later
  // fetch. `buffer` stays referenced until the send completed.
  void push(std::string_view peer, ObjectId id, ObjectBuffer buffer, PushCallback done);
  [[nodiscard]] std::future<void> push(std::string_view peer, ObjectId id, ObjectBuffer buffer);

  // Asks the holder whose worker address is `holder` to push `id` to the
  // consumer whose worker address is `consumer` the moment it is published
  // (at once if it is), waiting for the publish at most `wait` (capped by
  // the holder's max_park_wait). Fire and forget: nothing answers it, and a
  // consumer whose push never comes (holder busy, push refused or lost)
  // fetches as usual. A fetch of `id` started while the push is arriving
  // waits for it instead of asking the holder; a consumer whose own fetch
  // request is parked at the holder beside the push request gets the reply
  // only (the bytes go once); a push that arrives after a fetch already
  // brought the object is refused. For activations: the caller that sends
  // a call whose argument another actor produces asks the producer to
  // push it to the callee's host (the runtime's ObjectTransfer).
  void request_push(std::string_view holder, ObjectId id, std::string_view consumer,
                    std::chrono::milliseconds wait);

  // --- messages (thread-safe): the runtime's call plane over UCX -----------
  // Byte messages between workers, on the endpoints objects use. Each
  // endpoint this plane opens is a stream whose first message is a hello
  // naming this process (`name` of enable_messages), so a receiver learns
  // where to answer before the stream's first message; a receiver delivers
  // each stream's messages in the order they were sent, each once. In a
  // secure plane every message is authenticated, its bytes included (not
  // encrypted); unauthenticated ones are dropped and counted.
  struct MessageHandlers {
    // A peer's stream began: `name` is reached at worker address `address`.
    std::function<void(std::string name, std::string address)> on_peer;
    // One message's bytes (host memory, 64-byte aligned, owned by `bytes`).
    std::function<void(ObjectBuffer bytes)> on_message;
  };
  // Handlers run on the progress thread and must not block. Call once,
  // before sending; `name` is 1 to 512 bytes. Messages that arrive before
  // it are dropped.
  void enable_messages(std::string name, MessageHandlers handlers);
  // Sends `bytes` (host memory, kept referenced until sent) to the worker
  // at `peer`; messages to one peer arrive in the order of these calls.
  // `done` (progress thread): null once the message left, else the error
  // (object_lost when the peer is unreachable or died, timeout when it was
  // not sent within DataPlaneOptions::message_send_timeout: the messages
  // queued for it are lost, and the next send opens a new stream; cancelled
  // once shut down; invalid_argument for a bad address or size). A peer
  // that takes nothing for message_send_timeout cannot hold it longer.
  void send_message(std::string_view peer, ObjectBuffer bytes, PushCallback done);

  // The transports of the lanes UCX chose for the endpoint to `peer`
  // (connecting if needed), e.g. "posix,cma" or "tcp".
  [[nodiscard]] std::future<std::string> peer_transports(std::string_view peer);

  struct Stats {
    std::uint64_t fetches_served = 0;   // replies sent with data
    std::uint64_t fetches_from_inbox = 0;
    std::uint64_t pushes_received = 0;  // accepted into the inbox or a waiting fetch
    std::uint64_t pushes_refused = 0;   // inbox full, too many pushes arriving, or already fetched
    std::uint64_t pushes_requested = 0; // holder: pushes started for push requests
    // Secure planes: messages dropped for a missing or wrong authenticator
    // (a stranger, or another cluster's member); any plane: malformed ones.
    std::uint64_t unauthenticated_refused = 0;
    std::uint64_t malformed_refused = 0;
    std::uint64_t requests_busy = 0;    // answered "busy": too many parked requests
    std::uint64_t messages_sent = 0;
    std::uint64_t messages_received = 0;  // delivered to on_message
    std::size_t message_streams = 0;      // incoming streams remembered now
    std::size_t endpoints = 0;          // cached endpoints now
    std::size_t inbox_objects = 0;
    std::size_t inbox_bytes = 0;
  };
  [[nodiscard]] std::future<Stats> stats();

  class Impl;

 private:
  std::shared_ptr<Impl> impl_;
};

}  // namespace troupe::transport
