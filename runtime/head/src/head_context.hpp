// What every manager of the head shares: the configuration, the control
// server replies go through, the clock, our own request ids and the flag
// that asks for a placement pass. Owned by Head::Impl; every manager holds a
// reference and runs on the head's one thread.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <memory>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include <capnp/message.h>

#include "troupe/head/head.hpp"
#include "troupe/runtime/error.hpp"
#include "troupe/runtime/ids.hpp"
#include "troupe/scheduler/resources.hpp"
#include "troupe/transport/internal/control_socket.hpp"
#include "troupe/transport/schema/control.capnp.h"

namespace troupe::head {

// A request the head cannot serve throws troupe::Error; the server answers it
// with `error {wire_code(code), message}` (Errc::internal for any other
// exception). Codes go to and come from the wire only through wire_code()
// and errc_from_wire().

// Sums repeated names. Throws scheduler::SpecError (Errc::invalid_argument)
// for a bad name or amount.
scheduler::ResourceSet resources_from_wire(capnp::List<wire::Resource>::Reader list);
void resources_to_wire(capnp::List<wire::Resource>::Builder list, const scheduler::ResourceSet& set);

struct HeadContext {
  HeadConfig config;
  transport::ControlServer* server = nullptr;  // set once bound; outlives the managers' use
  std::uint64_t next_request_id = 1;           // ids of the requests the head itself sends
  bool schedule_needed = false;                // something changed that may let a placement succeed

  // issue 12 (persist): records changed since the last commit (Head::Impl::commit
  // writes them to the state store, then sends what was held), as (kind, key).
  std::set<std::pair<char, std::string>> dirty;
  void touch(char kind, const std::string& key) { dirty.emplace(kind, key); }
  // While true, send_to holds messages until the next commit, so no peer
  // hears of a change before it is stored.
  bool hold_sends = false;
  std::vector<std::pair<std::string, std::unique_ptr<capnp::MallocMessageBuilder>>> held;
  static constexpr std::size_t kMaxHeld = 16384;  // messages; each a few hundred bytes
  std::uint64_t held_dropped = 0;                  // messages dropped at the cap, ever
  // Sends what was held, in order.
  void release_held();

  Clock::time_point now() const { return config.clock ? config.clock() : Clock::now(); }
  // Silence after which a node is suspected (and probed).
  std::chrono::milliseconds suspect_after() const {
    return std::chrono::milliseconds(config.heartbeat_ms * config.heartbeat_misses);
  }
  // Silence after which a node (suspected, probed, still silent) or a driver
  // is declared lost: the detection bound.
  std::chrono::milliseconds node_timeout() const {
    return suspect_after() + std::chrono::milliseconds(config.probe_timeout_ms);
  }
  // How long the head waits for an ack of its startActor / killActor before
  // sending it again.
  std::chrono::milliseconds resend_after() const {
    return std::chrono::milliseconds(std::max<std::uint32_t>(200, 2 * config.heartbeat_ms));
  }
  // The "IP:PORT" the head listens on (given to job drivers).
  std::string address() const { return server != nullptr ? server->address() : std::string(); }

  // Never throws: a failed send is logged (the peer is gone or its queue full).
  void send_to(const std::string& identity, capnp::MallocMessageBuilder& message);
  // `ack` for request_id; nothing for request_id 0 (a notification).
  void reply_ack(const std::string& identity, std::uint64_t request_id);
  void reply_error(const std::string& identity, std::uint64_t request_id, Errc code, const std::string& text);
  // killActor{noRestart} for `actor` (its hosts of `incarnation` or earlier)
  // to the node manager at `identity`; returns the request id. Request id 0
  // sends it as a notification (to an actor host, whose own request ids
  // must not be matched).
  std::uint64_t send_kill(const std::string& identity, const ActorId& actor,
                          std::uint32_t incarnation = 0xffffffffu, bool notification = false);
};

}  // namespace troupe::head
