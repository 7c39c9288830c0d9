// CURVE on troupe's ZeroMQ sockets (internal: not installed). Every socket
// troupe opens goes through these functions, so one place decides how a
// socket is secured (docs/security.md):
//
//  - secure_server(): a ROUTER that peers connect to (the head's control
//    server, a process's call-plane inbound socket) becomes a CURVE server
//    presenting the members' server key pair, with a ZAP domain naming that
//    key, before it binds. The process's ZAP handler (a thread serving
//    inproc://zeromq.zap.01 on zmq_context(), started by the first
//    secure_server) admits a client only if its CURVE public key is the
//    members' client key (constant-time compare); everything else gets
//    status 400. Without a ZAP handler libzmq would admit any CURVE client.
//  - secure_client(): a DEALER that connects (control dealers, the control
//    channel, call-plane outbound sockets) becomes a CURVE client that
//    expects the members' server key and presents the members' client pair.
//
// Both read the secret given, or the process's membership() when called
// without one; with none they leave the socket plain (an insecure cluster).
// A secure server socket is also watched by the ZAP thread through a socket
// monitor, so that handshakes that fail before ZAP is asked (a plain client,
// a client with another cluster's keys) are counted as refusals too.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include <zmq.hpp>

#include "troupe/transport/internal/membership.hpp"

namespace troupe::transport {

// Throws troupe::Error{unsupported} when this libzmq was built without
// CURVE (zmq_has("curve")); a secure process cannot run without it.
void require_curve();

// Makes `socket` (not yet bound) a CURVE server for `secret`'s members and
// starts the ZAP handler. Returns false (socket untouched) when `secret` is
// empty. Throws troupe::Error{unsupported} without CURVE.
bool secure_server(zmq::socket_t& socket, const std::optional<ClusterSecret>& secret);
inline bool secure_server(zmq::socket_t& socket) { return secure_server(socket, membership()); }

// Makes `socket` (not yet connected) a CURVE client of `secret`'s members.
// Returns false (socket untouched) when `secret` is empty.
bool secure_client(zmq::socket_t& socket, const std::optional<ClusterSecret>& secret);
inline bool secure_client(zmq::socket_t& socket) { return secure_client(socket, membership()); }

// What the ZAP handler and the server monitors saw in this process (since
// it started; monotonic). Refusals are logged at most once per second.
struct ZapCounters {
  std::uint64_t admitted = 0;           // CURVE clients with the members' key
  std::uint64_t refused = 0;            // ZAP answered 400: a CURVE client with another key
  std::uint64_t handshakes_failed = 0;  // secure servers: handshakes that failed before or at ZAP
};
ZapCounters zap_counters();

// Watches a client socket's handshakes (a socket monitor on an inproc PAIR),
// so that a caller that got no reply can say why. Owned by the socket's
// thread; create it before the socket connects, destroy it before the socket.
class HandshakeWatch {
 public:
  explicit HandshakeWatch(zmq::socket_t& socket);
  ~HandshakeWatch();
  HandshakeWatch(const HandshakeWatch&) = delete;
  HandshakeWatch& operator=(const HandshakeWatch&) = delete;

  // Reads the events that came so far (never blocks).
  void poll();
  // The last handshake's failure in words, or empty when the last handshake
  // succeeded or none failed yet. Call poll() first.
  const std::string& failure() const noexcept { return failure_; }
  // failure() the first time it is asked for after a failed handshake;
  // empty again until a handshake succeeds and another fails (so that a
  // client retrying every few ms reports a refusal once, not each time).
  std::string take_unreported_failure();
  // For zmq::poll: readable when events are waiting.
  void* handle() noexcept { return monitor_.handle(); }

 private:
  void* socket_;  // the watched socket (outlives this)
  zmq::socket_t monitor_;
  std::string failure_;
  bool reported_ = false;
};

// The message a client prints when the head did not answer in time:
// "no reply from the head at X within N ms (...hint about the token...)".
std::string no_reply_message(const std::string& endpoint, long timeout_ms);
// The message of the permission_denied error a client raises when its
// handshake with `endpoint` failed (`why`: HandshakeWatch::failure()).
std::string handshake_refused_message(const std::string& endpoint, const std::string& why);

}  // namespace troupe::transport
