// The sockets of a cluster-mode process (driver or actor host).
//
// ControlChannel: a DEALER to the head, owned by its own thread; request()
// may be called from any thread and waits (bounded) for the reply; pushed
// messages go to a handler on that thread.
//
// CallPlane: this process's inbound ROUTER for the call plane, watched from
// the runtime's thread pool (no I/O thread of its own); outbound DEALERs,
// one per peer address, used directly by the sending thread under a mutex
// (no hand-off to another thread on the send path).
#pragma once

#include <sys/eventfd.h>

#include <atomic>
#include <chrono>
#include <deque>
#include <functional>
#include <future>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include <capnp/message.h>
#include <zmq.hpp>

#include "../thread_pool.hpp"
#include "troupe/transport/framing.hpp"
#include "troupe/transport/schema/call.capnp.h"
#include "troupe/transport/schema/control.capnp.h"

namespace troupe::detail {

zmq::context_t& zmq_context();

// "127.0.0.1:6380" -> "tcp://127.0.0.1:6380" (an endpoint stays as it is).
std::string to_endpoint(const std::string& address);
// The local IP this host uses to reach `host` (for binding and advertising).
std::string local_ip_for(const std::string& host);

class ControlChannel {
 public:
  using PushHandler = std::function<void(wire::ControlMessage::Reader)>;
  ControlChannel(std::string head_address, std::string identity, PushHandler on_push);
  ~ControlChannel();

  // Sends `message` (its requestId is set here) and waits for the reply.
  // Throws Error(timeout) if none comes in time, Error(code) for an `error` reply.
  transport::ReceivedMessage request(capnp::MallocMessageBuilder& message, std::chrono::milliseconds timeout);
  // Sends without waiting for a reply.
  void send(capnp::MallocMessageBuilder& message);
  // Runs `tick` on the channel thread every `period` (heartbeats).
  void set_periodic(std::chrono::milliseconds period, std::function<void()> tick);
  void stop();

 private:
  struct Pending {
    std::promise<transport::ReceivedMessage> reply;
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
  std::atomic<std::uint64_t> next_request_{1};
  std::chrono::milliseconds period_{0};
  std::function<void()> tick_;
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

class CallPlane {
 public:
  using Handler = std::function<void(transport::ReceivedMessage&)>;
  // Binds tcp://bind_ip:* . Nothing is received until start().
  CallPlane(const std::string& bind_ip, ThreadPool& pool, Handler on_message);
  ~CallPlane();

  const std::string& address() const noexcept { return address_; }  // tcp://ip:port
  // Starts receiving: the inbound socket is watched from the pool's
  // io_context, and `on_message` runs on a pool thread inside a DeferScope,
  // so that a call it hands to an idle actor runs on that same thread once
  // the batch is dispatched (one wake-up fewer per call than a separate I/O
  // thread). One thread at a time receives; messages are dispatched in
  // arrival order.
  void start();
  // Sends to the inbound socket of the process at `address`. Any thread.
  void send(const std::string& address, capnp::MallocMessageBuilder& message);
  // Runs `tick` on a pool thread about every `period` (batched releases,
  // deadlines). Set before start().
  void set_periodic(std::chrono::milliseconds period, std::function<void()> tick);
  // Stops receiving; on return no handler runs `on_message` or `tick` again.
  void stop();

 private:
  struct Core;
  std::shared_ptr<Core> core_;
  std::string address_;
  std::mutex out_mutex_;
  std::map<std::string, zmq::socket_t> outbound_;
  std::atomic<bool> stopped_{false};
};

}  // namespace troupe::detail
