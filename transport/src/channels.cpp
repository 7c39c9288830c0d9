#include "troupe/transport/internal/channels.hpp"

#include <sys/eventfd.h>
#include <unistd.h>

#include <boost/asio/post.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/steady_timer.hpp>
#include <capnp/serialize.h>
#include <spdlog/spdlog.h>

#include <cstdio>
#include <cstdlib>

#include "troupe/transport/error.hpp"
#include "troupe/transport/internal/zmq_security.hpp"
#include "troupe/transport/internal/zmq_socket.hpp"

namespace troupe::transport {
namespace {

// The runtime's logger ("troupe") once it exists, else spdlog's default.
std::shared_ptr<spdlog::logger> log() {
  auto logger = spdlog::get("troupe");
  return logger ? logger : spdlog::default_logger();
}

void wake(int fd) {
  std::uint64_t one = 1;
  [[maybe_unused]] auto n = ::write(fd, &one, sizeof one);
}

void drain(int fd) {
  std::uint64_t value = 0;
  [[maybe_unused]] auto n = ::read(fd, &value, sizeof value);
}

zmq::message_t to_frame(kj::Array<capnp::word>& words) {
  auto bytes = words.asBytes();
  return zmq::message_t(bytes.begin(), bytes.size());
}

}  // namespace

// ---- ControlChannel -----------------------------------------------------------

ControlChannel::ControlChannel(std::string head_address, std::string identity, PushHandler on_push)
    : head_endpoint_(to_endpoint(head_address)), identity_(std::move(identity)), on_push_(std::move(on_push)) {
  wake_fd_ = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (wake_fd_ < 0) throw_error(Errc::transport, "eventfd failed");
  thread_ = std::thread([this] { loop(); });
}

ControlChannel::~ControlChannel() {
  stop();
  if (wake_fd_ >= 0) ::close(wake_fd_);
}

void ControlChannel::stop() {
  if (stop_.exchange(true)) return;
  wake(wake_fd_);
  if (thread_.joinable()) thread_.join();
}

void ControlChannel::set_periodic(std::chrono::milliseconds period, std::function<void()> tick) {
  std::lock_guard lock(mutex_);
  period_ = period;
  tick_ = std::move(tick);
  wake(wake_fd_);
}

void ControlChannel::enqueue(kj::Array<capnp::word> words) {
  {
    std::lock_guard lock(mutex_);
    outbox_.push_back(std::move(words));
  }
  wake(wake_fd_);
}

void ControlChannel::send(capnp::MallocMessageBuilder& message) {
  if (stop_.load()) throw_error(Errc::cancelled, "control channel is closed");
  enqueue(capnp::messageToFlatArray(message));
}

ReceivedMessage ControlChannel::request(capnp::MallocMessageBuilder& message, std::chrono::milliseconds timeout) {
  if (stop_.load()) throw_error(Errc::cancelled, "control channel is closed");
  const std::uint64_t id = next_request_.fetch_add(1);
  message.getRoot<wire::ControlMessage>().setRequestId(id);
  auto pending = std::make_shared<Pending>();
  auto future = pending->reply.get_future();
  {
    std::lock_guard lock(mutex_);
    pending_[id] = pending;
  }
  enqueue(capnp::messageToFlatArray(message));
  if (future.wait_for(timeout) != std::future_status::ready) {
    std::string failure;
    {
      std::lock_guard lock(mutex_);
      pending_.erase(id);
      failure = handshake_failure_;
    }
    if (!failure.empty()) throw_error(Errc::permission_denied, handshake_refused_message(head_endpoint_, failure));
    throw_error(Errc::timeout, no_reply_message(head_endpoint_, static_cast<long>(timeout.count())));
  }
  return future.get();
}

void ControlChannel::loop() {
  zmq::socket_t socket(zmq_context(), zmq::socket_type::dealer);
  socket.set(zmq::sockopt::routing_id, identity_);
  socket.set(zmq::sockopt::linger, 0);
  FramingLimits limits;
  apply_socket_limits(socket, limits);
  secure_client(socket);  // CURVE when this process is a member
  HandshakeWatch watch(socket);
  socket.connect(head_endpoint_);
  auto next_tick = std::chrono::steady_clock::now();
  while (!stop_.load()) {
    std::function<void()> tick;
    std::chrono::milliseconds period;
    {
      std::lock_guard lock(mutex_);
      period = period_;
      tick = tick_;
    }
    auto now = std::chrono::steady_clock::now();
    if (tick && period.count() > 0 && now >= next_tick) {
      try {
        tick();
      } catch (const std::exception& e) {
        log()->warn("control tick failed: {}", e.what());
      }
      next_tick = now + period;
    }
    long wait_ms = 100;
    if (tick && period.count() > 0)
      wait_ms = std::max<long>(1, std::chrono::duration_cast<std::chrono::milliseconds>(next_tick - now).count());
    zmq::pollitem_t items[] = {{socket.handle(), 0, ZMQ_POLLIN, 0},
                               {nullptr, wake_fd_, ZMQ_POLLIN, 0},
                               {watch.handle(), 0, ZMQ_POLLIN, 0}};
    try {
      zmq::poll(items, 3, std::chrono::milliseconds(wait_ms));
    } catch (const zmq::error_t& e) {
      if (e.num() == EINTR) continue;
      log()->error("control poll failed: {}", e.what());
      break;
    }
    if (items[1].revents & ZMQ_POLLIN) drain(wake_fd_);
    if (items[2].revents & ZMQ_POLLIN) {
      watch.poll();
      const std::string fresh = watch.take_unreported_failure();
      const std::string current = watch.failure();
      std::vector<std::shared_ptr<Pending>> refused;
      {
        std::lock_guard lock(mutex_);
        handshake_failure_ = current;
        if (!current.empty()) {
          // The head refused us (again: ZeroMQ retries every reconnect
          // interval): waiting requests learn it now, not at their deadline,
          // including those sent after the first refusal was reported.
          for (auto& [id, pending] : pending_) refused.push_back(pending);
          pending_.clear();
        }
      }
      if (!current.empty()) {
        const std::string message = handshake_refused_message(head_endpoint_, current);
        if (!fresh.empty()) log()->error("{}", message);
        for (auto& pending : refused)
          pending->reply.set_exception(std::make_exception_ptr(Error(Errc::permission_denied, message)));
      }
    }
    std::deque<kj::Array<capnp::word>> outgoing;
    {
      std::lock_guard lock(mutex_);
      outgoing.swap(outbox_);
    }
    for (auto& words : outgoing) {
      try {
        auto frame = to_frame(words);
        if (!socket.send(frame, zmq::send_flags::dontwait))
          log()->warn("control: the head's queue is full; dropped a message");
      } catch (const zmq::error_t& e) {
        log()->warn("control send failed: {}", e.what());
      }
    }
    // ZMQ_EVENTS is edge-triggered: read until nothing is left.
    while (socket.get(zmq::sockopt::events) & ZMQ_POLLIN) {
      zmq::message_t frame;
      if (!socket.recv(frame, zmq::recv_flags::dontwait)) break;
      try {
        ReceivedMessage message(std::move(frame), limits);
        auto root = message.root<wire::ControlMessage>();
        const std::uint64_t id = root.getRequestId();
        std::shared_ptr<Pending> pending;
        if (id != 0) {
          std::lock_guard lock(mutex_);
          auto it = pending_.find(id);
          if (it != pending_.end()) {
            pending = std::move(it->second);
            pending_.erase(it);
          }
        }
        if (pending) {
          pending->reply.set_value(std::move(message));
        } else if (on_push_) {
          on_push_(root);
        }
      } catch (const std::exception& e) {
        log()->warn("dropping a bad control message: {}", e.what());
      }
    }
  }
}

// ---- CallPlane ------------------------------------------------------------------

// A peer reached over UCX: its worker address, and its messages not yet
// left (bounded like a DEALER's queue).
struct CallPlane::UcxPeer {
  UcxPeer(std::string address, std::string worker) : address(std::move(address)), worker(std::move(worker)) {}
  const std::string address;
  const std::string worker;
  std::atomic<int> queued{0};
  std::atomic<std::int64_t> last_failure_log_ns{0};
};

// What the context's handlers touch; they hold it by shared_ptr, so it
// outlives a handler still queued when the CallPlane goes away.
struct CallPlane::Core {
  Core(boost::asio::io_context& context, Handler on_message, BatchScope batch_scope)
      : context(context),
        inbound(zmq_context(), zmq::socket_type::router),
        readable(context),
        timer(context),
        on_message(std::move(on_message)),
        batch_scope(std::move(batch_scope)) {}

  boost::asio::io_context& context;
  zmq::socket_t inbound;
  // A duplicate of the socket's ZMQ_FD: readable when the socket's
  // events may have changed (edge-like: only a drain re-arms it).
  boost::asio::posix::stream_descriptor readable;
  boost::asio::steady_timer timer;
  Handler on_message;
  BatchScope batch_scope;
  std::chrono::milliseconds period{20};
  std::function<void()> tick;
  // Held while a handler uses `inbound` or checks `stopped`; stop() takes
  // it to wait out a running drain.
  std::mutex mutex;
  bool stopped = false;
  bool wait_pending = false;  // an async_wait on `readable` is outstanding
  bool post_pending = false;  // a posted on_readable is outstanding
  FramingLimits limits;

  // UCX: the data plane carrying messages to the peers in `ucx_peers`
  // (guarded by ucx_mutex, which is only ever held briefly: the progress
  // thread takes it).
  std::mutex ucx_mutex;
  std::weak_ptr<DataPlane> ucx;
  std::atomic<bool> ucx_attached{false};
  bool ucx_send = true;  // guarded by ucx_mutex
  std::atomic<bool> stopping{false};  // set by stop() first
  bool stopped_flag() const { return stopping.load(); }
  std::unordered_map<std::string, std::shared_ptr<UcxPeer>> ucx_peers;
  std::deque<ObjectBuffer> ucx_inbox;  // received, not yet dispatched
  bool ucx_draining = false;           // a drain_ucx is posted or running
  FastPath ucx_fast_path;              // set before attach_ucx; progress thread

  void note_ucx_peer(const std::string& address, std::string worker_address);
  void on_ucx_message(const std::shared_ptr<Core>& self, ObjectBuffer bytes);
  void drain_ucx(const std::shared_ptr<Core>& self);

  // Watches the fd again (at most one wait outstanding), then looks at the
  // socket once more: an edge that came between the last look and the
  // registration is not reported by Asio's edge-triggered reactor, so a
  // message it announced is drained by a posted handler instead (at most
  // one outstanding too). Called with `mutex` held.
  void arm_locked(const std::shared_ptr<Core>& self) {
    if (!wait_pending) {
      wait_pending = true;
      readable.async_wait(boost::asio::posix::descriptor_base::wait_read,
                          [self](const boost::system::error_code& error) {
                            {
                              std::lock_guard lock(self->mutex);
                              self->wait_pending = false;
                            }
                            if (!error) self->on_readable(self);
                          });
    }
    if (!post_pending && (inbound.get(zmq::sockopt::events) & ZMQ_POLLIN)) post_locked(self);
  }

  void post_locked(const std::shared_ptr<Core>& self) {
    post_pending = true;
    boost::asio::post(context, [self] {
      {
        std::lock_guard lock(self->mutex);
        self->post_pending = false;
      }
      self->on_readable(self);
    });
  }

  void arm_timer(const std::shared_ptr<Core>& self) {
    timer.expires_after(period);
    timer.async_wait([self](const boost::system::error_code& error) {
      if (error) return;
      std::function<void()> fn;
      {
        std::lock_guard lock(self->mutex);
        if (self->stopped) return;
        fn = self->tick;
      }
      if (fn) {
        try {
          fn();
        } catch (const std::exception& e) {
          log()->warn("call plane tick failed: {}", e.what());
        }
      }
      std::lock_guard lock(self->mutex);
      if (!self->stopped) self->arm_timer(self);
    });
  }

  void on_readable(const std::shared_ptr<Core>& self) {
    if (batch_scope) batch_scope([&] { drain(self); });
    else drain(self);
  }

  void drain(const std::shared_ptr<Core>& self) {
    std::lock_guard lock(mutex);
    if (stopped) return;
    // Bounded, so that one busy peer cannot hold this thread forever; a
    // socket with more to read is handed back to the context directly (its
    // fd would not signal again).
    constexpr int kBatch = 256;
    bool more = false;
    for (int n = 0;; ++n) {
      try {
        if (!(inbound.get(zmq::sockopt::events) & ZMQ_POLLIN)) break;
        if (n == kBatch) {
          more = true;
          break;
        }
        auto routed = recv_routed(inbound, std::chrono::milliseconds(0), limits);
        if (!routed) break;
        on_message(routed->message);
      } catch (const std::exception& e) {
        log()->warn("dropping a bad call-plane message: {}", e.what());
      }
    }
    if (more) {
      if (!post_pending) post_locked(self);
    } else {
      arm_locked(self);
    }
  }
};

void CallPlane::Core::note_ucx_peer(const std::string& address, std::string worker_address) {
  if (address.empty() || worker_address.empty()) return;
  std::lock_guard lock(ucx_mutex);
  if (!ucx_send) return;
  auto it = ucx_peers.find(address);
  if (it != ucx_peers.end()) {
    // The same process (a restarted actor has a new call address); a
    // different worker at the same address is a new process on a reused
    // port: its messages go there from now on.
    if (it->second->worker == worker_address) return;
    it->second = std::make_shared<UcxPeer>(address, std::move(worker_address));
    return;
  }
  if (ucx_peers.size() >= kMaxUcxPeers) {
    // Bounded: forget an idle peer (it falls back to ZeroMQ until named again).
    for (auto old = ucx_peers.begin(); old != ucx_peers.end(); ++old) {
      if (old->second->queued.load() == 0) {
        ucx_peers.erase(old);
        break;
      }
    }
    if (ucx_peers.size() >= kMaxUcxPeers) return;
  }
  ucx_peers.emplace(address, std::make_shared<UcxPeer>(address, std::move(worker_address)));
}

// On the UCX progress thread: offer it to the fast path when nothing waits
// before it (only this thread queues, so nothing can slip in meanwhile);
// else queue, and make sure one drain is on its way.
void CallPlane::Core::on_ucx_message(const std::shared_ptr<Core>& self, ObjectBuffer bytes) {
  if (ucx_fast_path) {
    bool idle;
    {
      std::lock_guard lock(ucx_mutex);
      idle = ucx_inbox.empty() && !ucx_draining;
    }
    // `mutex` as a drain holds it (stop() waits for it); busy (a ZeroMQ
    // drain runs): queue instead of blocking this thread.
    std::unique_lock lock(mutex, std::try_to_lock);
    if (idle && lock.owns_lock()) {
      if (stopped) return;
      try {
        // The frame borrows `bytes`, which outlives it here.
        zmq::message_t frame(bytes.data, bytes.size, nullptr, nullptr);
        ReceivedMessage message(std::move(frame), limits);
        if (ucx_fast_path(message)) return;
      } catch (const std::exception& e) {
        log()->warn("dropping a bad call-plane message (UCX): {}", e.what());
        return;
      }
    }
  }
  bool post;
  {
    std::lock_guard lock(ucx_mutex);
    ucx_inbox.push_back(std::move(bytes));
    post = !ucx_draining;
    ucx_draining = true;
  }
  if (post) boost::asio::post(context, [self] { self->drain_ucx(self); });
}

// One drain at a time (ucx_draining), so messages are dispatched in the
// order the data plane delivered them, in batches like the ROUTER's.
void CallPlane::Core::drain_ucx(const std::shared_ptr<Core>& self) {
  auto batch = [&] {
    {
      std::lock_guard lock(mutex);
      if (stopped) return;
      constexpr int kBatch = 256;
      for (int n = 0; n < kBatch; ++n) {
        ObjectBuffer bytes;
        {
          std::lock_guard inbox(ucx_mutex);
          if (ucx_inbox.empty()) break;
          bytes = std::move(ucx_inbox.front());
          ucx_inbox.pop_front();
        }
        try {
          // The frame borrows the buffer (64-byte aligned: read in place).
          auto* owner = new ObjectBuffer(std::move(bytes));
          zmq::message_t frame(
              owner->data, owner->size, [](void*, void* hint) { delete static_cast<ObjectBuffer*>(hint); }, owner);
          ReceivedMessage message(std::move(frame), limits);
          on_message(message);
        } catch (const std::exception& e) {
          log()->warn("dropping a bad call-plane message (UCX): {}", e.what());
        }
      }
    }
    // Hand on before the batch's deferred work (a call run on this thread)
    // starts, so that later messages (another caller's call, a cancel) do
    // not wait for it.
    bool again;
    {
      std::lock_guard lock(ucx_mutex);
      again = !ucx_inbox.empty() && !stopped_flag();
      ucx_draining = again;
    }
    if (again) boost::asio::post(context, [self] { self->drain_ucx(self); });
  };
  if (batch_scope) batch_scope(batch);
  else batch();
}

CallPlane::CallPlane(const std::string& bind_ip, boost::asio::io_context& context, Handler on_message,
                     BatchScope batch_scope)
    : core_(std::make_shared<Core>(context, std::move(on_message), std::move(batch_scope))) {
  auto& inbound = core_->inbound;
  inbound.set(zmq::sockopt::linger, 0);
  apply_socket_limits(inbound, FramingLimits{});
  secure_server(inbound);  // CURVE + ZAP when this process is a member (before bind)
  inbound.bind("tcp://" + bind_ip + ":*");
  address_ = inbound.get(zmq::sockopt::last_endpoint);
  const int fd = ::dup(inbound.get(zmq::sockopt::fd));
  if (fd < 0) throw_error(Errc::transport, "dup of the call plane's ZMQ_FD failed");
  core_->readable.assign(fd);
}

CallPlane::~CallPlane() { stop(); }

void CallPlane::start() {
  std::lock_guard lock(core_->mutex);
  if (core_->stopped) return;
  // Messages may already be queued, and the fd only signals changes.
  core_->arm_locked(core_);
  core_->arm_timer(core_);
}

void CallPlane::stop() {
  if (stopped_.exchange(true)) return;
  core_->stopping.store(true);
  {
    std::lock_guard lock(core_->mutex);
    core_->stopped = true;
    boost::system::error_code ignored;
    core_->readable.cancel(ignored);
    core_->timer.cancel();
    core_->readable.close(ignored);  // the duplicate; zmq keeps its own fd
    core_->inbound.close();
  }
  std::lock_guard lock(out_mutex_);
  outbound_.clear();
  lru_.clear();
  std::lock_guard ucx_lock(core_->ucx_mutex);
  core_->ucx_inbox.clear();
}

void CallPlane::attach_ucx(const std::shared_ptr<DataPlane>& data, bool send) {
  if (!data || core_->ucx_attached.load()) return;
  {
    std::lock_guard lock(core_->ucx_mutex);
    core_->ucx_send = send;
  }
  std::weak_ptr<Core> weak = core_;
  DataPlane::MessageHandlers handlers;
  handlers.on_peer = [weak](std::string name, std::string worker) {
    if (auto core = weak.lock()) core->note_ucx_peer(name, std::move(worker));
  };
  handlers.on_message = [weak](ObjectBuffer bytes) {
    if (auto core = weak.lock(); core && !core->stopping.load()) core->on_ucx_message(core, std::move(bytes));
  };
  data->enable_messages(address_, std::move(handlers));
  {
    std::lock_guard lock(core_->ucx_mutex);
    core_->ucx = data;
  }
  core_->note_ucx_peer(address_, data->address());  // calls to this process's own actors
  core_->ucx_attached.store(true);
}

void CallPlane::set_ucx_fast_path(FastPath fast) {
  if (core_->ucx_attached.load()) throw_error(Errc::invalid_argument, "set_ucx_fast_path after attach_ucx");
  core_->ucx_fast_path = std::move(fast);
}

void CallPlane::note_ucx_peer(const std::string& address, std::string worker_address) {
  core_->note_ucx_peer(address, std::move(worker_address));
}

bool CallPlane::over_ucx(const std::string& address) const {
  if (!core_->ucx_attached.load()) return false;
  std::lock_guard lock(core_->ucx_mutex);
  return !core_->ucx.expired() && core_->ucx_peers.count(address) != 0;
}

void CallPlane::send_over_ucx(const std::shared_ptr<DataPlane>& data, const std::shared_ptr<UcxPeer>& peer,
                              capnp::MallocMessageBuilder& message) {
  if (peer->queued.fetch_add(1) >= kUcxSendHighWaterMark) {
    peer->queued.fetch_sub(1);
    throw_error(Errc::overloaded, "the call plane's UCX queue to " + peer->address + " is full (" +
                                      std::to_string(kUcxSendHighWaterMark) + " messages): not sent");
  }
  auto words = std::make_shared<kj::Array<capnp::word>>(capnp::messageToFlatArray(message));
  auto bytes = words->asBytes();
  auto buffer = ObjectBuffer::wrap(bytes.begin(), bytes.size(), std::shared_ptr<const void>(words, words.get()));
  data->send_message(peer->worker, std::move(buffer), [peer](std::exception_ptr error) {
    peer->queued.fetch_sub(1);
    if (!error) return;
    // The peer is unreachable or died (its calls fail through the head's
    // actorUpdate and their deadlines); say so at most once a second.
    const auto now = std::chrono::steady_clock::now().time_since_epoch().count();
    auto last = peer->last_failure_log_ns.load();
    if (now - last < 1'000'000'000 || !peer->last_failure_log_ns.compare_exchange_strong(last, now)) return;
    try {
      std::rethrow_exception(error);
    } catch (const std::exception& e) {
      log()->warn("call plane: a message to {} over UCX was lost: {}", peer->address, e.what());
    }
  });
}

void CallPlane::set_periodic(std::chrono::milliseconds period, std::function<void()> tick) {
  std::lock_guard lock(core_->mutex);
  core_->period = period;
  core_->tick = std::move(tick);
}

void CallPlane::set_max_outbound_peers(std::size_t peers) {
  std::lock_guard lock(out_mutex_);
  max_outbound_ = std::max<std::size_t>(peers, 1);
  while (outbound_.size() > max_outbound_) evict_oldest_locked();
}

std::size_t CallPlane::outbound_peers() const {
  std::lock_guard lock(out_mutex_);
  return outbound_.size();
}

void CallPlane::evict_oldest_locked() {
  auto& peer = lru_.back();
  // A short positive linger, so that what is still queued for that peer (a
  // reply just sent) goes out: kEvictedLinger after its last send at most.
  // A lingering socket holds its file descriptors and one of ZeroMQ's
  // socket slots (1023 per context), so at most kMaxLingering linger at
  // once; past that an evicted socket closes at once (under a flood of new
  // peers, what was queued for an old one may then be lost).
  const auto now = std::chrono::steady_clock::now();
  while (!lingering_.empty() && now - lingering_.front() >= kEvictedLinger) lingering_.pop_front();
  const auto idle = std::chrono::duration_cast<std::chrono::milliseconds>(now - peer.last_send);
  int linger = 0;
  if (idle < kEvictedLinger && lingering_.size() < kMaxLingering) {
    linger = static_cast<int>((kEvictedLinger - idle).count());
    lingering_.push_back(now);
  }
  peer.socket.set(zmq::sockopt::linger, linger);
  peer.socket.close();
  outbound_.erase(peer.address);
  lru_.pop_back();
}

// Out of sockets or descriptors (EMFILE) while closed sockets wait for the
// reaper: wait for it a little (back-pressure on whoever floods us with new
// peers) before giving up.
zmq::socket_t CallPlane::new_outbound_socket() {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(500);
  for (;;) {
    try {
      return zmq::socket_t(zmq_context(), zmq::socket_type::dealer);
    } catch (const zmq::error_t& e) {
      if (e.num() != EMFILE || std::chrono::steady_clock::now() > deadline)
        throw_error(Errc::transport, std::string("cannot open a call-plane socket: ") + e.what());
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
}

void CallPlane::send(const std::string& address, capnp::MallocMessageBuilder& message) {
  if (core_->ucx_attached.load(std::memory_order_acquire)) {
    std::shared_ptr<UcxPeer> peer;
    std::shared_ptr<DataPlane> data;
    {
      std::lock_guard lock(core_->ucx_mutex);
      if (auto it = core_->ucx_peers.find(address); it != core_->ucx_peers.end()) {
        peer = it->second;
        data = core_->ucx.lock();
      }
    }
    if (data) {
      if (stopped_.load()) throw_error(Errc::cancelled, "call plane is closed");
      return send_over_ucx(data, peer, message);
    }
  }
  std::lock_guard lock(out_mutex_);
  if (stopped_.load()) throw_error(Errc::cancelled, "call plane is closed");
  auto it = outbound_.find(address);
  if (it == outbound_.end()) {
    if (outbound_.size() >= max_outbound_) evict_oldest_locked();
    zmq::socket_t socket = new_outbound_socket();
    socket.set(zmq::sockopt::linger, 0);
    // A finite queue per peer, and sends that never wait on it: a peer
    // that stopped reading fails the send with `overloaded` (below) rather
    // than blocking this thread, and everyone sending, forever.
    socket.set(zmq::sockopt::sndhwm, kSendHighWaterMark);
    secure_client(socket);  // CURVE when this process is a member
    try {
      socket.connect(address);
    } catch (const zmq::error_t& e) {
      throw_error(Errc::invalid_argument, "bad call-plane address \"" + address + "\": " + e.what());
    }
    lru_.push_front(Peer{address, std::move(socket), {}});
    it = outbound_.emplace(address, lru_.begin()).first;
  } else if (it->second != lru_.begin()) {
    lru_.splice(lru_.begin(), lru_, it->second);  // most recently used first
  }
  it->second->last_send = std::chrono::steady_clock::now();
  try {
    send_message(it->second->socket, message, zmq::send_flags::dontwait);
  } catch (const Error& e) {
    if (e.code() == Errc::timeout)  // the peer's queue is full (EAGAIN)
      throw_error(Errc::overloaded, "the call plane's queue to " + address + " is full (" +
                                        std::to_string(kSendHighWaterMark) +
                                        " messages): the peer does not read; not sent");
    throw_error(Errc::transport, std::string("send to ") + address + " failed: " + e.message());
  } catch (const std::exception& e) {
    throw_error(Errc::transport, std::string("send to ") + address + " failed: " + e.what());
  }
}

}  // namespace troupe::transport
