#include "head_context.hpp"

#include "troupe/runtime/logging.hpp"

namespace troupe::head {

scheduler::ResourceSet resources_from_wire(capnp::List<wire::Resource>::Reader list) {
  scheduler::ResourceSet set;
  for (auto resource : list) {
    set.set(resource.getName().cStr(), set.get(resource.getName().cStr()) + resource.getAmount());
  }
  return set;
}

void resources_to_wire(capnp::List<wire::Resource>::Builder list, const scheduler::ResourceSet& set) {
  unsigned i = 0;
  for (const auto& [name, amount] : set.amounts()) {
    list[i].setName(name);
    list[i].setAmount(amount);
    ++i;
  }
}

void HeadContext::send_to(const std::string& identity, capnp::MallocMessageBuilder& message) {
  if (hold_sends) {
    // Bounded: while the store cannot be written (Redis unreachable) the
    // head keeps at most kMaxHeld messages; past that it drops new ones, as
    // a lost message (the peer's request times out and is sent again; a
    // state change is sent again by reconciliation once the store is back).
    if (held.size() >= kMaxHeld) {
      if (++held_dropped % 1000 == 1)
        TROUPE_LOG_WARN("head: {} messages held for the state store; dropped {} so far", held.size(), held_dropped);
      return;
    }
    auto copy = std::make_unique<capnp::MallocMessageBuilder>();
    copy->setRoot(message.getRoot<wire::ControlMessage>().asReader());
    held.emplace_back(identity, std::move(copy));
    return;
  }
  try {
    server->send_to(identity, message);
  } catch (const Error& error) {
    TROUPE_LOG_WARN("head: cannot send to {}: {}", identity, error.what());
  }
}

void HeadContext::reply_ack(const std::string& identity, std::uint64_t request_id) {
  if (request_id == 0) return;
  capnp::MallocMessageBuilder message;
  auto root = message.initRoot<wire::ControlMessage>();
  root.setRequestId(request_id);
  root.setAck();
  send_to(identity, message);
}

void HeadContext::reply_error(const std::string& identity, std::uint64_t request_id, Errc code,
                              const std::string& text) {
  capnp::MallocMessageBuilder message;
  auto root = message.initRoot<wire::ControlMessage>();
  root.setRequestId(request_id);
  auto error = root.initError();
  error.setCode(wire_code(code));
  error.setMessage(text);
  send_to(identity, message);
}

std::uint64_t HeadContext::send_kill(const std::string& identity, const ActorId& actor, std::uint32_t incarnation,
                                     bool notification) {
  capnp::MallocMessageBuilder message;
  auto root = message.initRoot<wire::ControlMessage>();
  std::uint64_t request_id = notification ? 0 : next_request_id++;
  root.setRequestId(request_id);
  auto kill = root.initKillActor();
  to_wire(kill.initActorId(), actor);
  kill.setNoRestart(true);
  kill.setIncarnation(incarnation);
  send_to(identity, message);
  return request_id;
}

}  // namespace troupe::head

namespace troupe::head {

void HeadContext::release_held() {
  auto batch = std::move(held);
  held.clear();
  bool was = hold_sends;
  hold_sends = false;
  for (auto& [identity, message] : batch) send_to(identity, *message);
  hold_sends = was;
}

}  // namespace troupe::head
