// The control plane's sockets behind small interfaces, so the head, the node
// manager and the CLI never touch ZeroMQ (docs/protocol.md: DEALER clients,
// one ROUTER at the head, one Cap'n Proto message per frame).
//
//  - ControlServer: what the head talks through. Peers are named by their
//    routing identity ("node-<id>", "cli-<id>", a driver's worker id).
//    ZmqControlServer is the real ROUTER; InProcessControlServer keeps both
//    directions in memory so a test can drive a head in one process.
//  - ControlDealer: one DEALER connection to the head with a fixed identity,
//    for the node manager and the CLI's request/reply client.
//
// None of these objects is thread-safe except InProcessControlServer (whose
// queues may be fed and drained from other threads): each belongs to the
// thread that made it.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include <capnp/message.h>

#include "troupe/runtime/error.hpp"
#include "troupe/transport/error.hpp"
#include "troupe/transport/framing.hpp"

namespace troupe::transport {

class ControlServer {
 public:
  virtual ~ControlServer() = default;

  // Waits at most `timeout` for one message from any peer; nullopt when none
  // came. A malformed message is consumed and throws troupe::Error{protocol}.
  [[nodiscard]] virtual std::optional<RoutedMessage> receive(std::chrono::milliseconds timeout) = 0;

  // Queues `message` for the peer `identity` without blocking. A peer that is
  // gone or unknown loses the message silently (as a ROUTER does); a full
  // queue throws troupe::Error{timeout}. The builder is unchanged.
  virtual void send_to(const std::string& identity, capnp::MessageBuilder& message) = 0;

  // "IP:PORT" peers connect to; empty for an in-process server.
  virtual std::string address() const = 0;
};

// The bind failed because another process listens on that port.
class AddressInUseError : public Error {
 public:
  using Error::Error;
};

// A ZeroMQ ROUTER bound on tcp://ip:port (port 0: any free port), with the
// framing limits applied and ROUTER_HANDOVER on, so a peer that reconnects
// with the same identity takes its name over. A CURVE server admitting only
// members when membership() is set at construction (zmq_security.hpp).
class ZmqControlServer final : public ControlServer {
 public:
  // Throws AddressInUseError when the port is taken, troupe::Error{transport}
  // (message: ZeroMQ's reason) when the address cannot be bound otherwise.
  ZmqControlServer(const std::string& ip, int port);
  ~ZmqControlServer() override;

  std::optional<RoutedMessage> receive(std::chrono::milliseconds timeout) override;
  void send_to(const std::string& identity, capnp::MessageBuilder& message) override;
  std::string address() const override;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Both directions in memory. deliver() plays a peer sending to the server;
// take_sent() shows what the server sent, in order. Every message is
// serialized and read back through ReceivedMessage, so the server sees
// exactly the bytes a socket would carry. Thread-safe.
class InProcessControlServer final : public ControlServer {
 public:
  struct Sent {
    std::string identity;
    ReceivedMessage message;
  };

  // Queues `message` as if the peer `identity` had sent it.
  void deliver(const std::string& identity, capnp::MessageBuilder& message);
  // Everything the server sent since the last call, oldest first.
  std::vector<Sent> take_sent();

  std::optional<RoutedMessage> receive(std::chrono::milliseconds timeout) override;
  void send_to(const std::string& identity, capnp::MessageBuilder& message) override;
  std::string address() const override { return {}; }

 private:
  std::mutex mutex_;
  std::condition_variable arrived_;
  std::deque<RoutedMessage> inbound_;
  std::vector<Sent> outbound_;
};

// A DEALER connected to the head at `address` ("IP:PORT" or a full
// endpoint) with the routing identity `identity`; a CURVE client with the
// members' keys when membership() is set at construction.
class ControlDealer {
 public:
  struct Options {
    // Drop, not queue, what is sent while no connection is up (the node
    // manager's choice: it re-registers anyway once the head is back).
    bool immediate = false;
  };

  // Throws troupe::Error{invalid_argument} (message: ZeroMQ's reason) for an
  // address ZeroMQ cannot parse.
  ControlDealer(const std::string& identity, const std::string& address, Options options);
  ControlDealer(const std::string& identity, const std::string& address)
      : ControlDealer(identity, address, Options{}) {}
  ~ControlDealer();
  ControlDealer(const ControlDealer&) = delete;
  ControlDealer& operator=(const ControlDealer&) = delete;

  // Sends without blocking: troupe::Error{timeout} when it would block
  // (with `immediate`: while not connected), {transport} on other failures.
  void send(capnp::MessageBuilder& message);
  // Waits at most `timeout` for one message; nullopt when none came.
  // Throws troupe::Error{protocol} for a malformed one, and
  // {permission_denied} when none came and a handshake with the head failed
  // (a token missing or wrong, or a token for an insecure head): the message
  // says why; once per run of failures, not at every reconnection. A head that only drops the connection (another
  // cluster's keys) is silent: nullopt, and the caller's timeout message
  // should hint at the token (no_reply_message in zmq_security.hpp).
  [[nodiscard]] std::optional<ReceivedMessage> receive(std::chrono::milliseconds timeout);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace troupe::transport
