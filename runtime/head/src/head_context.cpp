#include "head_context.hpp"

#include "troupe/runtime/logging.hpp"

namespace troupe::head {

scheduler::ResourceSet resources_from_wire(capnp::List<wire::Resource>::Reader list) {
  scheduler::ResourceSet set;
  for (auto resource : list) {
    try {
      set.set(resource.getName().cStr(), set.get(resource.getName().cStr()) + resource.getAmount());
    } catch (const scheduler::SpecError& error) {
      throw RequestError(kInvalidArgument, error.what());
    }
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
  try {
    server->send_to(identity, message);
  } catch (const transport::TransportError& error) {
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

void HeadContext::reply_error(const std::string& identity, std::uint64_t request_id, std::uint16_t code,
                              const std::string& text) {
  capnp::MallocMessageBuilder message;
  auto root = message.initRoot<wire::ControlMessage>();
  root.setRequestId(request_id);
  auto error = root.initError();
  error.setCode(code);
  error.setMessage(text);
  send_to(identity, message);
}

void HeadContext::send_kill(const std::string& identity, const Id128& actor) {
  capnp::MallocMessageBuilder message;
  auto root = message.initRoot<wire::ControlMessage>();
  root.setRequestId(next_request_id++);
  auto kill = root.initKillActor();
  set_id(kill.initActorId(), actor);
  kill.setNoRestart(true);
  send_to(identity, message);
}

}  // namespace troupe::head
