// What every manager of the head shares: the configuration, the control
// server replies go through, the clock, our own request ids and the flag
// that asks for a placement pass. Owned by Head::Impl; every manager holds a
// reference and runs on the head's one thread.
#pragma once

#include <chrono>
#include <cstdint>
#include <stdexcept>
#include <string>

#include <capnp/message.h>

#include "troupe/head/head.hpp"
#include "troupe/scheduler/resources.hpp"
#include "troupe/transport/control_socket.hpp"
#include "troupe/transport/schema/control.capnp.h"

namespace troupe::head {

using node::id_of;
using node::set_id;

// ErrorInfo codes (numerically troupe::Errc).
constexpr std::uint16_t kOk = 0;
constexpr std::uint16_t kActorDied = 2;
constexpr std::uint16_t kNodeLost = 5;
constexpr std::uint16_t kInvalidArgument = 7;
constexpr std::uint16_t kNotFound = 8;
constexpr std::uint16_t kUnschedulable = 10;
constexpr std::uint16_t kProtocol = 12;
constexpr std::uint16_t kInternal = 16;

// A request the head cannot serve, answered with `error {code, message}`.
struct RequestError : std::runtime_error {
  RequestError(std::uint16_t code, std::string message)
      : std::runtime_error(std::move(message)), code(code) {}
  std::uint16_t code;
};

// Sums repeated names. Throws RequestError{kInvalidArgument} for a bad name or amount.
scheduler::ResourceSet resources_from_wire(capnp::List<wire::Resource>::Reader list);
void resources_to_wire(capnp::List<wire::Resource>::Builder list, const scheduler::ResourceSet& set);

struct HeadContext {
  HeadConfig config;
  transport::ControlServer* server = nullptr;  // set once bound; outlives the managers' use
  std::uint64_t next_request_id = 1;           // ids of the requests the head itself sends
  bool schedule_needed = false;                // something changed that may let a placement succeed

  Clock::time_point now() const { return config.clock ? config.clock() : Clock::now(); }
  std::chrono::milliseconds node_timeout() const {
    return std::chrono::milliseconds(config.heartbeat_ms * config.heartbeat_misses);
  }
  // The "IP:PORT" the head listens on (given to job drivers).
  std::string address() const { return server != nullptr ? server->address() : std::string(); }

  // Never throws: a failed send is logged (the peer is gone or its queue full).
  void send_to(const std::string& identity, capnp::MallocMessageBuilder& message);
  // `ack` for request_id; nothing for request_id 0 (a notification).
  void reply_ack(const std::string& identity, std::uint64_t request_id);
  void reply_error(const std::string& identity, std::uint64_t request_id, std::uint16_t code,
                   const std::string& text);
  // killActor{noRestart} for `actor` to the node manager at `identity`.
  void send_kill(const std::string& identity, const Id128& actor);
};

}  // namespace troupe::head
