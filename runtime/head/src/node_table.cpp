#include "node_table.hpp"

#include <algorithm>

#include <capnp/serialize.h>

#include "state_store.hpp"

#include "troupe/runtime/logging.hpp"
#include "troupe/scheduler/gpu_spec.hpp"
#include "troupe/scheduler/wire_gpu.hpp"

namespace troupe::head {

namespace {
// The scheduler's view of a registration. Throws troupe::Error
// (Errc::invalid_argument) or scheduler::SpecError for a bad one.
scheduler::NodeInfo node_info_from(wire::RegisterNode::Reader reg) {
  NodeId id = from_wire<NodeId>(reg.getNodeId());
  scheduler::NodeInfo info;
  info.node_id = id.hex();
  info.address = reg.getAddress().cStr();
  // A list of empty structs costs its sender nothing per element: bounded.
  constexpr unsigned kMaxGpus = 1024;
  if (reg.getGpus().size() > kMaxGpus)
    throw Error(Errc::invalid_argument, "registerNode with " + std::to_string(reg.getGpus().size()) + " GPUs");
  for (auto gpu : reg.getGpus()) info.gpus.push_back(scheduler::gpu_from_wire(gpu));
  info.total = resources_from_wire(reg.getResources());
  // A bad amount throws SpecError (invalid_argument).
  info.total.set(scheduler::kCpu, reg.getNumCpus());
  info.total.set(scheduler::kMemory, static_cast<double>(reg.getMemoryBytes()));
  info.total.set(scheduler::kGpu, static_cast<double>(info.gpus.size()));
  return info;
}
}  // namespace

NodeEntry* NodeTable::find(const NodeId& id) {
  for (auto& node : nodes_) {
    if (node->id == id) return node.get();
  }
  return nullptr;
}

NodeEntry* NodeTable::by_identity(const std::string& identity) {
  for (auto& node : nodes_) {
    if (node->alive && node->identity == identity) return node.get();
  }
  return nullptr;
}

std::vector<NodeEntry*> NodeTable::alive() {
  std::vector<NodeEntry*> alive;
  for (auto& node : nodes_) {
    if (node->alive && !node->suspected) alive.push_back(node.get());
  }
  return alive;
}

void NodeTable::heard_from(const std::string& identity, Clock::time_point now) {
  NodeEntry* node = by_identity(identity);
  if (node == nullptr) return;
  node->last_heartbeat = std::max(node->last_heartbeat, now);
  if (node->suspected) {
    node->suspected = false;
    context_.schedule_needed = true;
    TROUPE_LOG_INFO("head: node {} answered after {} ms of suspicion; alive", node->id.short_hex(),
                    std::chrono::duration_cast<std::chrono::milliseconds>(now - node->suspected_since).count());
  }
}

void NodeTable::forgive(Clock::duration gap, Clock::time_point now) {
  for (auto& node : nodes_) {
    if (!node->alive) continue;
    node->last_heartbeat = std::min(now, node->last_heartbeat + gap);
    if (node->suspected) node->suspected_since = std::min(now, node->suspected_since + gap);
  }
}

void NodeTable::release_identity(const NodeId& id) {
  if (NodeEntry* node = find(id)) node->identity.clear();
}

void NodeTable::on_register_node(const std::string& identity, std::uint64_t request_id,
                                 wire::RegisterNode::Reader reg) {
  if (reg.getProtocolVersion() != wire::PROTOCOL_VERSION) {
    throw Error(Errc::protocol, "protocol version " + std::to_string(reg.getProtocolVersion()) +
                                      " differs from the head's " + std::to_string(wire::PROTOCOL_VERSION));
  }
  NodeId id = from_wire<NodeId>(reg.getNodeId());
  if (id.nil()) throw Error(Errc::invalid_argument, "registerNode without a nodeId");
  scheduler::NodeInfo info = node_info_from(reg);
  NodeEntry* node = find(id);
  // A node the head declared dead must stop its actor hosts (they were, or
  // are being, restarted elsewhere) before it serves again.
  bool declared_dead = node != nullptr && !node->alive;
  if (node != nullptr && node->alive && !node->identity.empty() && node->identity != identity) {
    // A node id is public (getClusterState lists it): only the connection
    // that registered it may speak for it while it is alive.
    throw Error(Errc::permission_denied,
                "node " + id.short_hex() + " is registered by another connection; a node id cannot be taken over");
  }
  if (node != nullptr && node->alive) {
    // A repeated registration (the worker missed our reply): keep the books.
  } else {
    auto fresh = std::make_unique<NodeEntry>(id, scheduler::NodeState(info));  // or SpecError
    if (node != nullptr) {
      auto it = std::find_if(nodes_.begin(), nodes_.end(), [&](auto& n) { return n.get() == node; });
      *it = std::move(fresh);
      node = it->get();
    } else {
      nodes_.push_back(std::move(fresh));
      node = nodes_.back().get();
    }
    TROUPE_LOG_INFO("head: node {} registered from {} ({} CPUs, GPUs: {})", id.short_hex(), info.address,
                    reg.getNumCpus(),
                    info.gpus.empty() ? std::string("none") : scheduler::format_gpu_spec(info.gpus));
  }
  node->identity = identity;
  node->registration = std::make_unique<capnp::MallocMessageBuilder>();
  node->registration->setRoot(reg);
  node->alive = true;
  node->suspected = false;
  node->last_heartbeat = context_.now();
  context_.schedule_needed = true;
  context_.touch('n', id.hex());

  capnp::MallocMessageBuilder message;
  auto root = message.initRoot<wire::ControlMessage>();
  root.setRequestId(request_id);
  auto reply = root.initRegisterNodeReply();
  to_wire(reply.initHeadNodeId(), context_.config.head_node_id);
  reply.setHeartbeatIntervalMs(context_.config.heartbeat_ms);
  reply.setNodeTimeoutMs(static_cast<std::uint32_t>(context_.node_timeout().count()));
  reply.setDeclaredDead(declared_dead);
  context_.send_to(identity, message);
}

void NodeTable::on_heartbeat(const std::string& identity, std::uint64_t request_id,
                             wire::Heartbeat::Reader heartbeat,
                             const std::function<bool(const ActorId&, std::uint32_t)>& accounted_for) {
  NodeId id = from_wire<NodeId>(heartbeat.getNodeId());
  NodeEntry* node = find(id);
  bool known = node != nullptr && node->alive;
  if (known && node->identity != identity) {
    throw Error(Errc::permission_denied, "heartbeat for node " + id.short_hex() +
                                             " from a connection other than the one that registered it; refused");
  }
  if (known) {
    heard_from(identity, context_.now());
    // Actor hosts the head does not account for on this node (left over
    // from before a head restart, or killed while the node was away).
    for (auto status : heartbeat.getActors()) {
      ActorId actor_id = from_wire<ActorId>(status.getActorId());
      if (!accounted_for(actor_id, status.getIncarnation()))
        context_.send_kill(identity, actor_id, status.getIncarnation());
    }
  }
  capnp::MallocMessageBuilder message;
  auto root = message.initRoot<wire::ControlMessage>();
  root.setRequestId(request_id);
  auto ack = root.initHeartbeatAck();
  ack.setSeq(heartbeat.getSeq());
  ack.setReregister(!known);
  ack.setDeclaredDead(!known && node != nullptr);  // it was declared dead: it must fence
  context_.send_to(identity, message);
}

std::vector<NodeEntry*> NodeTable::expire(Clock::time_point now) {
  std::vector<NodeEntry*> lost;
  const auto probe_timeout = std::chrono::milliseconds(context_.config.probe_timeout_ms);
  for (auto& node : nodes_) {
    if (!node->alive) continue;
    auto silence = now - node->last_heartbeat;
    if (!node->suspected) {
      if (silence <= context_.suspect_after()) continue;
      node->suspected = true;
      node->suspected_since = now;
      node->next_probe = now;
      TROUPE_LOG_WARN("head: node {} suspected: no heartbeat for {} ms; probing it", node->id.short_hex(),
                      std::chrono::duration_cast<std::chrono::milliseconds>(silence).count());
    }
    if (silence > context_.node_timeout() && now - node->suspected_since >= probe_timeout) {
      node->alive = false;
      context_.touch('n', node->id.hex());
      node->suspected = false;
      TROUPE_LOG_WARN("head: node {} lost: no heartbeat for {} ms and no answer to probes for {} ms",
                      node->id.short_hex(), std::chrono::duration_cast<std::chrono::milliseconds>(silence).count(),
                      std::chrono::duration_cast<std::chrono::milliseconds>(now - node->suspected_since).count());
      lost.push_back(node.get());
      continue;
    }
    if (now >= node->next_probe) {
      node->next_probe = now + std::chrono::milliseconds(context_.config.heartbeat_ms);
      capnp::MallocMessageBuilder message;
      auto root = message.initRoot<wire::ControlMessage>();
      root.setRequestId(context_.next_request_id++);
      to_wire(root.initProbeNode().initNodeId(), node->id);
      context_.send_to(node->identity, message);
    }
  }
  return lost;
}

// --- issue 12 (persist): the stored form ------------------------------------------

std::optional<std::string> NodeTable::encode(const std::string& key) {
  auto id = NodeId::parse(key);
  NodeEntry* node = id ? find(*id) : nullptr;
  if (node == nullptr) return std::nullopt;
  auto words = capnp::messageToFlatArray(*node->registration);
  auto bytes = words.asBytes();
  return RecordWriter()
      .id(node->id)
      .str(node->identity)
      .u64(node->alive ? 1 : 0)
      .str(std::string_view(reinterpret_cast<const char*>(bytes.begin()), bytes.size()))
      .take();
}

void NodeTable::restore(const std::string& value) {
  RecordReader in(value);
  NodeId id = in.id<NodeId>();
  std::string identity = in.str();
  bool alive = in.u64() != 0;
  std::string registration = in.str();
  kj::Array<capnp::word> words = kj::heapArray<capnp::word>(registration.size() / sizeof(capnp::word));
  std::memcpy(words.begin(), registration.data(), words.size() * sizeof(capnp::word));
  capnp::FlatArrayMessageReader reader(words);
  auto reg = reader.getRoot<wire::RegisterNode>();
  auto entry = std::make_unique<NodeEntry>(id, scheduler::NodeState(node_info_from(reg)));
  entry->identity = std::move(identity);
  entry->registration = std::make_unique<capnp::MallocMessageBuilder>();
  entry->registration->setRoot(reg);
  entry->alive = alive;
  entry->last_heartbeat = context_.now();
  if (alive) TROUPE_LOG_INFO("head: node {} recovered; awaiting its node manager", id.short_hex());
  nodes_.push_back(std::move(entry));
}

}  // namespace troupe::head
