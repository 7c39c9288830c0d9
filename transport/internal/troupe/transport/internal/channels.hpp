// The sockets of a cluster-mode process (driver or actor host); internal
// to troupe (not installed), used by the runtime's cluster mode.
//
// ControlChannel: a DEALER to the head, owned by its own thread; request()
// may be called from any thread and waits (bounded) for the reply; pushed
// messages go to a handler on that thread.
//
// CallPlane: this process's inbound ROUTER for the call plane, watched from
// an Asio io_context the caller runs (the runtime's thread pool: no I/O
// thread of its own); outbound DEALERs, one per peer address, used directly
// by the sending thread under a mutex (no hand-off to another thread on the
// send path). At most max_outbound_peers() of them (default 256) are kept:
// sending to one more closes the least recently used, lingering until 500 ms
// after its last send so that what was queued for it still goes out (at
// most 256 linger at once; more close at once); a later send to that peer
// opens a new socket. So any number of callers leaves the file descriptors
// bounded. Each DEALER queues at most kSendHighWaterMark messages; a send
// to a peer whose queue is full fails with `overloaded` at once. With
// membership() set at construction, the ROUTER is a CURVE server admitting
// members only and the DEALERs are CURVE clients.
//
// Over UCX (attach_ucx): once the process's data plane is up, messages to a
// peer whose UCX worker address is known go as UCX active messages on the
// data plane's worker (DataPlane::send_message: one endpoint per peer, the
// messages of each endpoint delivered in the order sent, authenticated in a
// secure cluster) instead of ZeroMQ. A peer's address is known from the
// head's actorUpdate (note_ucx_peer, before the first call to that actor)
// or from the hello that opens every UCX stream, so a callee answers over
// UCX whoever called it over UCX (when it may send over UCX: see
// attach_ucx's `send`; the runtime's default is not to, unless
// TROUPE_CALL_PLANE=ucx). Peers without one (no UCX, TROUPE_DATA_PLANE=zmq)
// keep ZeroMQ; the ROUTER stays bound either way. A peer is moved to UCX at most
// once (when its address becomes known) and never back while the plane
// runs, so the messages of one caller to one peer keep their order.
//
// Both throw troupe::Error (timeout, cancelled once stopped, transport);
// the runtime converts it at its boundary.
#pragma once

#include <atomic>
#include <chrono>
#include <deque>
#include <functional>
#include <future>
#include <list>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include <utility>  // before Asio: Boost 1.74's awaitable.hpp needs std::exchange

#include <boost/asio/io_context.hpp>
#include <capnp/message.h>
#include <zmq.hpp>

#include "troupe/transport/framing.hpp"
#include "troupe/transport/schema/call.capnp.h"
#include "troupe/transport/schema/control.capnp.h"
#include "troupe/transport/ucx.hpp"

namespace troupe::transport {

class ControlChannel {
 public:
  using PushHandler = std::function<void(wire::ControlMessage::Reader)>;
  ControlChannel(std::string head_address, std::string identity, PushHandler on_push);
  ~ControlChannel();

  // Sends `message` (its requestId is set here) and waits for the reply,
  // which may be an `error` reply: the caller reads it. Throws
  // TimeoutError if none comes in time (its message hints at the token),
  // Error(permission_denied) when the head refused this process's
  // handshake (no token, or a token where the head has none), Error(cancelled)
  // once stopped. The DEALER is a CURVE client when membership() is set.
  ReceivedMessage request(capnp::MallocMessageBuilder& message, std::chrono::milliseconds timeout);
  // Sends without waiting for a reply.
  void send(capnp::MallocMessageBuilder& message);
  // Runs `tick` on the channel thread every `period` (heartbeats).
  void set_periodic(std::chrono::milliseconds period, std::function<void()> tick);
  void stop();

 private:
  struct Pending {
    std::promise<ReceivedMessage> reply;
  };
  void loop();
  void enqueue(kj::Array<capnp::word> words);

  std::string head_endpoint_;
  std::string identity_;
  PushHandler on_push_;
  int wake_fd_ = -1;
  std::mutex mutex_;
  std::deque<kj::Array<capnp::word>> outbox_;
  std::unordered_map<std::uint64_t, std::shared_ptr<Pending>> pending_;
  std::string handshake_failure_;  // the last handshake's failure; empty once one succeeds
  std::atomic<std::uint64_t> next_request_{1};
  std::chrono::milliseconds period_{0};
  std::function<void()> tick_;
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

class CallPlane {
 public:
  using Handler = std::function<void(ReceivedMessage&)>;
  // Wraps one receive batch: must call `batch` once, on the calling thread,
  // and may run work of its own after it (the runtime opens a DeferScope
  // around it, so that a call handed to an idle actor during the batch
  // runs on this same thread once the batch is dispatched: one wake-up
  // fewer per call than a separate I/O thread). Empty: just the batch.
  using BatchScope = std::function<void(const std::function<void()>& batch)>;
  // Binds tcp://bind_ip:* . Nothing is received until start(). Every
  // handler runs on a thread running `context`, which must outlive this.
  CallPlane(const std::string& bind_ip, boost::asio::io_context& context, Handler on_message,
            BatchScope batch_scope = {});
  ~CallPlane();

  const std::string& address() const noexcept { return address_; }  // tcp://ip:port
  // Starts receiving: the inbound socket is watched from `context`, and
  // `on_message` runs on one of its threads inside `batch_scope`. One
  // thread at a time receives; messages are dispatched in arrival order.
  void start();
  // Sends to the inbound socket of the process at `address`. Any thread;
  // never waits: at most kSendHighWaterMark messages queue per peer (in
  // ZeroMQ, beside what the kernel's socket buffers hold), and a send
  // past that fails with Error(overloaded).
  void send(const std::string& address, capnp::MallocMessageBuilder& message);
  static constexpr int kSendHighWaterMark = 1 << 18;
  // The bound on outbound sockets (LRU); at least 1. Any thread.
  static constexpr std::size_t kDefaultMaxOutboundPeers = 256;
  static constexpr std::chrono::milliseconds kEvictedLinger{500};
  static constexpr std::size_t kMaxLingering = 256;
  void set_max_outbound_peers(std::size_t peers);
  std::size_t outbound_peers() const;
  // Runs `tick` on a thread of `context` about every `period` (batched
  // releases, deadlines). Set before start().
  void set_periodic(std::chrono::milliseconds period, std::function<void()> tick);
  // Stops receiving; on return no handler runs `on_message` or `tick` again.
  void stop();

  // Carries messages over `data`'s worker from now on (see above): this
  // plane's address becomes its name there; received messages go to
  // `on_message` in each stream's order, one batch at a time, like the
  // ROUTER's. Once; the plane keeps a weak reference (the data plane's
  // owner decides when it goes; after that, ZeroMQ again). `send` false:
  // receive over UCX (peers that chose it) but send over ZeroMQ only
  // (the runtime's default; TROUPE_CALL_PLANE=ucx sends over UCX).
  void attach_ucx(const std::shared_ptr<DataPlane>& data, bool send = true);
  // Over UCX: the progress thread offers each message it receives to
  // `fast` first, on its own thread, when no earlier message waits for the
  // pool (so the order holds); `fast` returns whether it took the message
  // (else it goes to `on_message` on the pool as usual). It must be quick
  // and never block: the runtime takes call replies this way, one thread
  // hand-off (a kernel wake-up) fewer per call. Set before attach_ucx.
  using FastPath = std::function<bool(ReceivedMessage&)>;
  void set_ucx_fast_path(FastPath fast);
  // The peer whose call-plane address is `address` has its UCX worker at
  // `worker_address` (from the head's actorUpdate). Any thread.
  void note_ucx_peer(const std::string& address, std::string worker_address);
  // Whether messages to `address` go over UCX now (for tests and `info`).
  bool over_ucx(const std::string& address) const;
  // Messages per UCX peer that may wait to leave; past it a send fails
  // with `overloaded`, as on ZeroMQ.
  static constexpr int kUcxSendHighWaterMark = kSendHighWaterMark;
  static constexpr std::size_t kMaxUcxPeers = 65536;

 private:
  struct Core;
  std::shared_ptr<Core> core_;
  std::string address_;
  struct UcxPeer;
  void send_over_ucx(const std::shared_ptr<DataPlane>& data, const std::shared_ptr<UcxPeer>& peer,
                     capnp::MallocMessageBuilder& message);
  void evict_oldest_locked();
  static zmq::socket_t new_outbound_socket();
  mutable std::mutex out_mutex_;
  struct Peer {
    std::string address;
    zmq::socket_t socket;
    std::chrono::steady_clock::time_point last_send;
  };
  // Most recently used first; outbound_ indexes it by address.
  std::list<Peer> lru_;
  std::unordered_map<std::string, std::list<Peer>::iterator> outbound_;
  std::deque<std::chrono::steady_clock::time_point> lingering_;  // evictions still lingering
  std::size_t max_outbound_ = kDefaultMaxOutboundPeers;
  std::atomic<bool> stopped_{false};
};

}  // namespace troupe::transport
